"""``qtk compare-ort``: qtoolkit's INT8 ONNX next to onnxruntime's ``quantize_static`` on the same
FP32 ONNX, the same calibration batches and the same eval set.

Every INT8 model is judged by :func:`qtoolkit.evaluate.metrics.agreement_metrics` against the FP32
ONNX model's logits (top-1 agreement, top-5 overlap, logit cosine); latency is the best of
``rounds`` medians at batch 1, models interleaved within each round
(:func:`qtoolkit.evaluate.latency.interleaved_latency`), with the per-round medians and the paired
ratio qtoolkit / each ORT model in the JSON; size is on disk. Inputs may be one tensor or named.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.evaluate.metrics import agreement_metrics
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.batches import collect_logits, split_batch
from qtoolkit.runtime.ort import make_session, model_size_mb, ort_call, ort_feed, ort_runner


@dataclass(frozen=True)
class CompareSettings:
    ort_methods: tuple[str, ...] = ("minmax", "entropy", "percentile")
    threads: int = 2
    repeats: int = 30
    rounds: int = 3


def compare_with_ort(
    fp32_model: torch.nn.Module,
    int8_model: torch.nn.Module,
    calibration: Any,
    eval_batches: Any,
    example_input: Any,
    settings: CompareSettings,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Export FP32 and qtoolkit INT8 ONNX, quantize the FP32 ONNX with ORT per method, compare all."""
    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(work_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"fp32_onnx": out / "fp32.onnx", "qtoolkit_int8": out / "qtoolkit_int8.onnx"}
        export_onnx(fp32_model, example_input, paths["fp32_onnx"])
        export_int8_onnx(int8_model, example_input, paths["qtoolkit_int8"])
        fp32_session = make_session(paths["fp32_onnx"], settings.threads)
        arity = len(fp32_session.get_inputs())
        calib = [ort_feed(fp32_session, split_batch(batch, arity)[0]) for batch in calibration]
        for method in settings.ort_methods:
            paths[f"ort_{method}"] = out / f"ort_{method}_int8.onnx"
            ort_quantize_static(paths["fp32_onnx"], paths[f"ort_{method}"], calib, None, method)
        sessions = {k: make_session(p, settings.threads) for k, p in paths.items()}
        runners = {k: ort_runner(s) for k, s in sessions.items()}
        logits = collect_logits(runners, eval_batches, arity=arity, desc="compare with ORT").logits
        reference = logits["fp32_onnx"]
        calls = {k: ort_call(s, example_input) for k, s in sessions.items()}
        per_round = interleaved_latency(calls, rounds=settings.rounds, warmup=5, repeats=settings.repeats)
        best = best_of_rounds(per_round)
        rows = {
            key: {
                **agreement_metrics(reference, logits[key]).to_dict(),
                "latency_ms": round(best[key], 3),
                "size_mb": round(model_size_mb(paths[key]), 3),
            }
            for key in paths
        }
    return {
        "reference": "fp32_onnx",
        "rows": rows,
        "latency_ms_per_round": per_round,
        "qtoolkit_over_ort_latency": {
            key: paired_ratio(per_round, "qtoolkit_int8", key) for key in per_round if key.startswith("ort_")
        },
        "settings": {
            "ort_methods": list(settings.ort_methods),
            "rounds": settings.rounds,
            "repeats": settings.repeats,
        },
        "environment": collect_environment(settings.threads),
    }


def format_comparison(results: dict[str, Any], title: str = "") -> str:
    """Markdown table: agreement with FP32 ONNX, latency (batch 1) and size per model."""
    env = results["environment"]
    rows = results["rows"]
    ort_best = max((v["top1"] for k, v in rows.items() if k.startswith("ort_")), default=float("nan"))
    lines = [
        f"### {title or 'INT8 ONNX: qtoolkit vs onnxruntime quantize_static'} — {env['threads']} threads, "
        f"{env['cpu']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}",
        "",
        "| model | top-1 agreement | top-5 overlap | logit cosine | latency ms (batch 1) | size MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, v in rows.items():
        lines.append(
            f"| {key} | {100 * v['top1']:.2f}% | {100 * v['top5_overlap']:.2f}% | {v['cosine']:.4f} | "
            f"{v['latency_ms']:.2f} | {v['size_mb']:.2f} |"
        )
    q = rows["qtoolkit_int8"]
    ort_latency = min(
        (v["latency_ms"] for k, v in rows.items() if k.startswith("ort_")), default=float("nan")
    )
    lines += [
        "",
        f"- qtoolkit − best ORT top-1 agreement: {100 * (q['top1'] - ort_best):+.2f} pp; "
        f"qtoolkit / fastest ORT latency: {q['latency_ms'] / ort_latency:.2f}×",
        f"- agreement is against the FP32 ONNX model's logits on {q['samples']} eval samples",
    ]
    return "\n".join(lines) + "\n"
