"""Dynamic INT8 with SmoothQuant-style smoothing: which α, judged on validation; test and speed in one run.

    python bench/smoothing_sweep.py                                    # MiniLM recipe, α none/0.5/0.75/0.85/1
    python bench/smoothing_sweep.py --alphas none 0.85 --set train.seed=1   # another fine-tune

For the recipe's task (its cached FP32 fine-tune, seeded split): quantize with the recipe's settings
and each smoothing α (``none`` = off), export INT8 ONNX, and score every file with onnxruntime on the
validation split (accuracy, top-1 agreement with FP32 ONNX, mean KL(FP32 ‖ INT8) of the softmax) and
the test split. α is chosen on validation by the lowest KL: accuracy differences of a few snippets
are noise there (the INT8 model flips ~2% of predictions either way), the KL of the whole logit
distribution is not. onnxruntime's ``quantize_dynamic`` of the FP32 ONNX is scored as the peer.
Latency: FP32 ONNX, each INT8 file and the peer at seq = max length, batch 1 and 8, interleaved
rounds; a speed-up is the median of per-round ratios, printed with their range (min–max).
Writes ``OUT/report.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit.atomic import write_text_atomic
from qtoolkit.configs import dynamic_config
from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.evaluate.metrics import kl_divergence
from qtoolkit.export import export_int8_onnx, export_onnx
from qtoolkit.paths import default_cache_dir
from qtoolkit.peers.ort_quantizer import ort_quantize_dynamic
from qtoolkit.quantize import quantize
from qtoolkit.recipe import load_recipe
from qtoolkit.report.environment import collect_environment
from qtoolkit.runtime.ort import make_session
from qtoolkit.tasks.base import prepare_task


def _logits(session, batches) -> tuple[np.ndarray, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    out, labels = [], []
    for inputs, y in batches:
        out.append(session.run(None, {n: inputs[n].numpy() for n in names})[0])
        labels.append(y.numpy())
    return np.concatenate(out), np.concatenate(labels)


def _scores(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Accuracy, agreement with the reference's top-1, mean KL(reference ‖ logits)."""
    return {
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "kl": kl_divergence(reference, logits),
    }


def _speedup(ratio: dict[str, float] | None) -> str:
    """Median speed-up and, in brackets, the range of the per-round ratios (this host's timer noise)."""
    if ratio is None:
        return "1.00×"
    return f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="recipes/minilm_rotten_tomatoes_dynamic.yaml")
    parser.add_argument("--alphas", nargs="+", default=["none", "0.5", "0.75", "0.85", "1.0"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--out", default="runs/smoothing_sweep")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(args.recipe, args.set)
    task = prepare_task(recipe, default_cache_dir())
    alphas = [None if a == "none" else float(a) for a in args.alphas]

    files = {"fp32": out / "model_fp32.onnx"}
    export_onnx(task.fp32_model, task.example_input, files["fp32"], opset=recipe.export.opset)
    base = dynamic_config(recipe)
    for alpha in alphas:
        name = "int8" if alpha is None else f"int8_smooth{alpha:g}"
        quantized = quantize(task.fp32_model, replace(base, smoothing=alpha), calibration=task.calibration)
        files[name] = out / f"model_{name}.onnx"
        export_int8_onnx(quantized, task.example_input, files[name], recipe.export.opset)
        print(f"exported {files[name]}", flush=True)
    files["ort_peer"] = ort_quantize_dynamic(files["fp32"], out / "model_ort_dynamic.onnx")

    sessions = {name: make_session(path, args.threads) for name, path in files.items()}
    splits = {"val": task.val_batches, "test": task.eval_batches}
    results: dict[str, dict] = {name: {} for name in files}
    for split, batches in splits.items():
        reference, _ = _logits(sessions["fp32"], batches)
        for name, session in sessions.items():
            logits, labels = _logits(session, batches)
            results[name][split] = _scores(logits, labels, reference)
    candidates = [n for n in files if n.startswith("int8")]
    chosen = min(candidates, key=lambda n: results[n]["val"]["kl"])

    latency: dict[str, dict] = {}
    for batch in (1, 8):
        feed = task.latency_batch(batch)
        calls = {}
        for name, session in sessions.items():
            names = [i.name for i in session.get_inputs()]
            calls[name] = lambda s=session, n=names, f=feed: s.run(None, {k: f[k].numpy() for k in n})
        per_round = interleaved_latency(calls, rounds=args.rounds, warmup=3, repeats=10 if batch == 1 else 4)
        latency[f"batch_{batch}"] = {
            "best_ms": best_of_rounds(per_round),
            "speedup_over_fp32": {n: paired_ratio(per_round, "fp32", n) for n in files if n != "fp32"},
            "per_round_ms": per_round,
        }

    fp32_test = results["fp32"]["test"]["accuracy"]
    print(f"\nchosen on validation (lowest KL): {chosen}\n")
    print(
        "| model | val acc | val agree | val KL ×1e4 | test acc | test Δ pp | test agree | b1 ×FP32 | b8 ×FP32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in files:
        val, test = results[name]["val"], results[name]["test"]
        speed = [_speedup(latency[f"batch_{b}"]["speedup_over_fp32"].get(name)) for b in (1, 8)]
        print(
            f"| {name} | {100 * val['accuracy']:.2f}% | {100 * val['agreement']:.2f}% | {1e4 * val['kl']:.2f} "
            f"| {100 * test['accuracy']:.2f}% | {100 * (test['accuracy'] - fp32_test):+.2f} "
            f"| {100 * test['agreement']:.2f}% | {speed[0]} | {speed[1]} |"
        )
    report = {
        "recipe": args.recipe,
        "command": " ".join(sys.argv),
        "chosen_on_validation": chosen,
        "rule": "lowest mean KL(FP32 || INT8) on the validation split",
        "calibration": task.calibration_info,
        "results": results,
        "latency": latency,
        "sizes": {"val": task.val_info, "test": task.data_info.get("test_evaluated")},
        "environment": collect_environment(args.threads),
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=str))
    print(f"\nreport: {out / 'report.json'}")


if __name__ == "__main__":
    main()
