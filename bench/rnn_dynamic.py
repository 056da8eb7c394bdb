"""Dynamic INT8 LSTM/GRU text classifiers beside onnxruntime's ``quantize_dynamic``, in one run.

    python bench/rnn_dynamic.py                              # the two recipes + the anchor shape
    python bench/rnn_dynamic.py --subjects recipe-lstm --rounds 5
    python bench/rnn_dynamic.py --subjects anchor-lstm anchor-gru

Subjects:
- ``recipe-lstm`` / ``recipe-gru``: the models of ``recipes/{lstm,gru}_rotten_tomatoes_dynamic.yaml``
  (trained, or loaded from ``$QTK_CACHE``), with top-1 on the recipe's held-out split.
- ``anchor-lstm`` / ``anchor-gru``: FIELD_NOTES' anchor shape, Embedding 20k×256 → 2-layer
  LSTM/GRU 512 → Linear, random weights (speed and size only).

Each subject: FP32 ONNX, qtoolkit INT8 ONNX (``quantize_model`` + ``export_int8_onnx``) and
onnxruntime's ``quantize_dynamic`` of the same FP32 ONNX after ORT's ``quant_pre_process`` (the
peer), plus torch FP32 and torch
dynamic INT8, timed at batch 1 and 8 on seq-64 inputs without padding, in interleaved rounds (the
BERT bench's statistic: ``qtoolkit.evaluate.latency.interleaved_latency`` and ``paired_ratio``, a
speed-up is the median over rounds of the per-round ratio, with its range). Writes
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit import DynamicQuantConfig, export_int8_onnx, export_onnx, quantize_model
from qtoolkit.atomic import write_text_atomic
from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.evaluate.metrics import accuracy, agreement, predictions
from qtoolkit.export import onnx_op_counts
from qtoolkit.models import create_model
from qtoolkit.paths import default_cache_dir
from qtoolkit.peers.ort_quantizer import ort_quantize_dynamic
from qtoolkit.recipe import load_recipe
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.ort import make_session, model_size_mb, ort_runner
from qtoolkit.runtime.torch_runner import call_model, torch_runner

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "recipe-lstm": "lstm_rotten_tomatoes_dynamic.yaml",
    "recipe-gru": "gru_rotten_tomatoes_dynamic.yaml",
}
ANCHOR = {"vocab_size": 20000, "embed_dim": 256, "hidden_size": 512, "num_layers": 2}
ONNX_VARIANTS = ("fp32_onnx", "int8_onnx", "ort_peer")


def subject(name: str, seq: int) -> dict[str, Any]:
    """Model, example input, latency inputs (batch → feeds) and held-out batches of a subject."""
    if name in RECIPES:
        from qtoolkit.tasks.base import prepare_task

        task = prepare_task(load_recipe(REPO / "recipes" / RECIPES[name]), default_cache_dir())
        return {"model": task.fp32_model, "example": task.example_input, "latency": task.latency_batch,
                "eval": task.eval_batches, "baseline": task.baseline_info}  # fmt: skip
    cell = name.removeprefix("anchor-")
    torch.manual_seed(0)
    model = create_model(f"{cell}-text", **ANCHOR).eval()

    def latency(batch: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.random.default_rng(batch).integers(1, ANCHOR["vocab_size"], (batch, seq)))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return {"model": model, "example": latency(2), "latency": latency, "eval": None, "baseline": ANCHOR}


def run_subject(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    spec = subject(name, args.seq)
    model, example = spec["model"], spec["example"]
    config = DynamicQuantConfig()
    if args.per_tensor is not None:
        config = replace(config, recurrent_per_channel=not args.per_tensor)
    quantized = quantize_model(model, config)
    variants = (*ONNX_VARIANTS, *(["int8_onnx_other_scales"] if args.compare_scales else []))
    paths = {variant: out / f"{name}_{variant}.onnx" for variant in variants}
    export_onnx(model, example, paths["fp32_onnx"])
    export_int8_onnx(quantized, example, paths["int8_onnx"])
    if args.compare_scales:  # the same model with the other recurrent weight granularity, same rounds
        other = replace(config, recurrent_per_channel=not config.recurrent_per_channel)
        export_int8_onnx(quantize_model(model, other), example, paths["int8_onnx_other_scales"])
    # ORT's recommended pre-processing folds the exporter's weight Slice/Concat chains into plain
    # LSTM/GRU initializers; without it ORT's quantizer leaves every LSTM in float
    prepared = out / f"{name}_fp32_preprocessed.onnx"
    quant_pre_process(str(paths["fp32_onnx"]), str(prepared), skip_symbolic_shape=True)
    ort_quantize_dynamic(prepared, paths["ort_peer"])
    sessions = {variant: make_session(path, args.threads) for variant, path in paths.items()}
    result: dict[str, Any] = {
        "baseline": spec["baseline"],
        "recurrent_per_channel": config.recurrent_per_channel,
        "size_mb": {variant: model_size_mb(path) for variant, path in paths.items()},
        "ops": {variant: onnx_op_counts(path) for variant, path in paths.items() if variant != "fp32_onnx"},
    }
    if spec["eval"] is not None:
        runners = {"fp32_torch": torch_runner(model), "int8_torch": torch_runner(quantized.int8_model)}
        runners.update({variant: ort_runner(session) for variant, session in sessions.items()})
        collected = collect_logits(runners, spec["eval"], desc=f"evaluate {name}")
        predicted = {variant: predictions(logits) for variant, logits in collected.logits.items()}
        result["accuracy"] = {variant: accuracy(p, collected.labels) for variant, p in predicted.items()}
        result["agreement_int8_onnx_vs_int8_torch"] = agreement(
            predicted["int8_onnx"], predicted["int8_torch"]
        )
        result["max_abs_logit_diff_int8_onnx_vs_int8_torch"] = float(
            np.abs(collected.logits["int8_onnx"] - collected.logits["int8_torch"]).max()
        )
    result["latency_ms"], result["speedup_over_fp32_onnx"], result["per_round_ms"] = {}, {}, {}
    for batch in args.batch_sizes:
        inputs = spec["latency"](batch)
        feeds = {key: value.numpy() for key, value in inputs.items()}
        calls = {variant: partial(session.run, None, feeds) for variant, session in sessions.items()}
        with torch.no_grad():
            calls["fp32_torch"] = partial(call_model, model, inputs)
            calls["int8_torch"] = partial(call_model, quantized.int8_model, inputs)
            per_round = interleaved_latency(calls, rounds=args.rounds, warmup=3, repeats=args.repeats)
        key = f"batch{batch}"
        result["per_round_ms"][key] = per_round
        result["latency_ms"][key] = best_of_rounds(per_round)
        result["speedup_over_fp32_onnx"][key] = {
            variant: paired_ratio(per_round, "fp32_onnx", variant) for variant in variants[1:]
        }
        result["speedup_over_fp32_onnx"][key]["int8_torch_over_fp32_torch"] = paired_ratio(
            per_round, "fp32_torch", "int8_torch"
        )
    return result


def checks(name: str, result: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals for this subject."""
    speed = result["speedup_over_fp32_onnx"]
    found: dict[str, bool] = {
        "size_ratio>=3.5": result["size_mb"]["fp32_onnx"] / result["size_mb"]["int8_onnx"] >= 3.5
    }
    if "lstm" in name:
        for key, ratios in speed.items():
            found[f"{key}: speed-up>=ort_peer"] = (
                ratios["int8_onnx"]["median"] >= ratios["ort_peer"]["median"]
            )
    if "gru" in name and "batch8" in speed:
        found["batch8: speed-up>=1.5"] = speed["batch8"]["int8_onnx"]["median"] >= 1.5
    if "accuracy" in result:
        drop = result["accuracy"]["fp32_torch"] - result["accuracy"]["int8_onnx"]
        found["int8_onnx_drop<=0.5pp"] = drop <= 0.005
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    choices = [*RECIPES, "anchor-lstm", "anchor-gru"]
    parser.add_argument("--subjects", nargs="+", default=choices, choices=choices)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq", type=int, default=64, help="tokens per input of the anchor subjects")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    scales = parser.add_mutually_exclusive_group()  # default: DynamicQuantConfig's recurrent_per_channel
    scales.add_argument("--per-tensor", dest="per_tensor", action="store_true", default=None,
                        help="one LSTM/GRU weight scale per tensor (as ORT)")  # fmt: skip
    scales.add_argument("--per-channel", dest="per_tensor", action="store_false",
                        help="one LSTM/GRU weight scale per gate row")  # fmt: skip
    parser.add_argument("--compare-scales", action="store_true",
                        help="also time INT8 ONNX with the other LSTM/GRU weight granularity, same rounds")  # fmt: skip
    parser.add_argument("--out", default="runs/rnn_dynamic")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_subject(name, args, out) for name in args.subjects}
    for name, result in results.items():
        result["checks"] = checks(name, result)
    report = {"environment": collect_environment(args.threads), "args": vars(args), "subjects": results}
    write_text_atomic(out / "results.json", json.dumps(report, indent=2, default=str) + "\n")

    for name, result in results.items():
        sizes = result["size_mb"]
        print(f"\n{name}: size MB FP32 {sizes['fp32_onnx']:.2f}, qtoolkit {sizes['int8_onnx']:.2f} "
              f"({sizes['fp32_onnx'] / sizes['int8_onnx']:.2f}x), ORT {sizes['ort_peer']:.2f}")  # fmt: skip
        if "accuracy" in result:
            acc = "  ".join(f"{k} {100 * v:.2f}%" for k, v in result["accuracy"].items())
            print(f"  top-1: {acc}; INT8 ONNX vs torch INT8 agreement "
                  f"{100 * result['agreement_int8_onnx_vs_int8_torch']:.2f}%")  # fmt: skip
        for key, best in result["latency_ms"].items():
            print(f"  {key} ms: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()))
            print(f"  {key} speed-up: " + ", ".join(
                f"{k} {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
                for k, r in result["speedup_over_fp32_onnx"][key].items()))  # fmt: skip
        for check, ok in result["checks"].items():
            print(f"  {'PASS' if ok else 'FAIL'}  {check}")


if __name__ == "__main__":
    main()
