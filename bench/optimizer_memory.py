"""AdamW vs AdamW8bit on the recipes' own training: optimizer state, peak memory, accuracy, step time.

For each recipe (MiniLM fine-tune + dynamic INT8, ResNet-18 QAT) and each optimizer, one fresh
``python -m qtoolkit run`` subprocess (so the peak RSS of one run does not include another's) with
``train.optimizer`` (MiniLM) or ``quantize.qat.optimizer`` (QAT) set. Each run gets an empty cache
except ``baselines/``, shared per recipe and filled by a separate prepare subprocess first, so the QAT
runs fine-tune the same FP32 baseline and no run's peak includes training it. Figures come from each
run's report.json ``train`` section (:meth:`qtoolkit.train.TrainResult.summary`):

    state ratio   = optimizer_state_bytes(adamw) / optimizer_state_bytes(adamw8bit)
    step ratio    = seconds_per_step(adamw8bit) / seconds_per_step(adamw)
    Δ accuracy pp = 100 (acc(adamw8bit) − acc(adamw)), for the trained FP32 (MiniLM) / QAT INT8 torch
                    model and for the INT8 ONNX model.

    nice -n 10 python bench/optimizer_memory.py --out runs/optimizer_memory        # recipes' own budgets
    nice -n 10 python bench/optimizer_memory.py --out runs/om --qat-set train.epochs=1 \\
        --qat-set quantize.qat.max_steps=200   # shorter (state what you shortened)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = {  # name -> (recipe file, override key that selects the optimizer of the measured training)
    "minilm": ("recipes/minilm_rotten_tomatoes_dynamic.yaml", "train.optimizer", "baseline"),
    "qat": ("recipes/resnet18_fmnist_qat.yaml", "quantize.qat.optimizer", "qat"),
}
OPTIMIZERS = ("adamw", "adamw8bit")


def _prepare(recipe_file: str, overrides: list[str], cache: str) -> None:
    """Subprocess entry: train (or find) the FP32 baseline of a QAT recipe in ``cache``."""
    from qtoolkit.recipe import load_recipe
    from qtoolkit.tasks.base import prepare_task

    prepare_task(load_recipe(recipe_file, overrides), Path(cache))


def _python(args: list[str], log: Path, report: Path | None = None) -> None:
    """Run ``python args`` (log to ``log``); a run whose checks failed still wrote ``report``: keep it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0 and not (report is not None and report.is_file()):
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"optimizer_memory: {' '.join(args[:4])} failed (see {log}):\n" + "\n".join(tail))


def run_recipe(name: str, overrides: list[str], out: Path) -> dict:
    recipe_file, key, section = RECIPES[name]
    shared = out / f"{name}-baselines"
    shared.mkdir(parents=True, exist_ok=True)
    sets = [x for o in overrides for x in ("--set", o)]
    if section == "qat":  # the FP32 baseline, trained once outside the measured runs
        prep_cache = out / f"{name}-prepare-cache"
        shutil.rmtree(prep_cache, ignore_errors=True)
        prep_cache.mkdir()
        (prep_cache / "baselines").symlink_to(shared.resolve())
        qat_sets = [x for o in overrides for x in ("--qat-set", o)]
        _python(
            [__file__, "--prepare", recipe_file, "--out", str(prep_cache), *qat_sets],
            out / f"{name}-prepare.log",
        )
    rows = {}
    for optimizer in OPTIMIZERS:
        cache, run_dir = out / f"{name}-{optimizer}-cache", out / f"{name}-{optimizer}"
        for path in (cache, run_dir):
            shutil.rmtree(path, ignore_errors=True)
        cache.mkdir()
        (cache / "baselines").symlink_to(shared.resolve())
        args = ["-m", "qtoolkit", "run", recipe_file, "--out", str(run_dir), "--cache", str(cache)]
        log = out / f"{name}-{optimizer}.log"
        _python([*args, *sets, "--set", f"{key}={optimizer}"], log, run_dir / "report.json")
        report = json.loads((run_dir / "report.json").read_text())
        train = report["train"][section]
        metrics = report["metrics"]
        trained = "fp32_torch" if section == "baseline" else "int8_torch"
        rows[optimizer] = {
            **train,
            "trained_model": trained,
            "accuracy": metrics[trained]["accuracy"],
            "int8_onnx_accuracy": metrics["int8_onnx"]["accuracy"],
            "int8_drop_pp": report["checks"]["accuracy_drop"]["value_pp"],
            "tolerance_pp": report["tolerance_pp"],
            "passed": report["passed"],
        }
    a, b = rows["adamw"], rows["adamw8bit"]
    return {
        "recipe": recipe_file,
        "overrides": overrides,
        "runs": rows,
        "state_ratio": round(a["optimizer_state_bytes"] / b["optimizer_state_bytes"], 3),
        "peak_memory_ratio": round(a["peak_memory_bytes"] / b["peak_memory_bytes"], 3),
        "step_time_ratio": round(b["seconds_per_step"] / a["seconds_per_step"], 3),
        "accuracy_delta_pp": round(100 * (b["accuracy"] - a["accuracy"]), 2),
        "int8_onnx_delta_pp": round(100 * (b["int8_onnx_accuracy"] - a["int8_onnx_accuracy"]), 2),
    }


def markdown(results: dict) -> str:
    lines = [
        "| recipe | optimizer | state MB | peak RSS MB | ms/step | trained acc | INT8 ONNX acc | drop vs FP32 (tol) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        for opt, r in res["runs"].items():
            lines.append(
                f"| {name} | {opt} | {r['optimizer_state_bytes'] / 1e6:.1f} | {r['peak_memory_bytes'] / 1e6:.0f} | "
                f"{1000 * r['seconds_per_step']:.0f} | {100 * r['accuracy']:.2f}% ({r['trained_model']}) | "
                f"{100 * r['int8_onnx_accuracy']:.2f}% | {r['int8_drop_pp']:.2f} pp ({r['tolerance_pp']}) |"
            )
        lines.append(
            f"| {name} | **8bit vs fp32 states** | **{res['state_ratio']:.2f}× smaller** | "
            f"{res['peak_memory_ratio']:.3f}× | {res['step_time_ratio']:.2f}× | "
            f"{res['accuracy_delta_pp']:+.2f} pp | {res['int8_onnx_delta_pp']:+.2f} pp | |"
        )
    return "\n".join(lines)


def _write(results: dict, out: Path, started: float) -> dict:
    from qtoolkit.report.environment import collect_environment

    summary = {
        "results": results,
        "load_average": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "environment": collect_environment(2),
    }
    (out / "optimizer_memory.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "optimizer_memory.md").write_text(markdown(results) + "\n")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/optimizer_memory", help="run directories, logs, results")
    parser.add_argument("--recipes", default="minilm,qat", help=f"comma list of {sorted(RECIPES)}")
    parser.add_argument("--minilm-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--qat-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: baseline only
    args = parser.parse_args()
    if args.prepare:
        _prepare(args.prepare, args.qat_set, args.out)
        return 0
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        print('optimizer_memory: needs bitsandbytes: pip install -e ".[lowmem]"', file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {}
    summary: dict = {}
    for name in [n.strip() for n in args.recipes.split(",") if n.strip()]:
        if name not in RECIPES:
            print(
                f"optimizer_memory: unknown recipe {name!r}; choose from {sorted(RECIPES)}", file=sys.stderr
            )
            return 2
        results[name] = run_recipe(name, getattr(args, f"{name}_set"), out)
        summary = _write(results, out, started)  # after each recipe: a long run keeps what it finished
    print(json.dumps(summary, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
