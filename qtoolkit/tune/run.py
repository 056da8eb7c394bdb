"""``qtk tune`` / :func:`tune`: search, write the winning recipe, reproduce it with ``qtk run``, report.

OUT after a run (published together, ``report.json`` last; nothing when the run fails):

* ``recipe_tuned.yaml`` -- the recipe with the winning quantize settings and float modules;
* ``final/`` -- ``qtk run`` of that recipe (INT8/FP32 ONNX, its own report.json with *test* figures);
* ``report.json``, ``report.md`` -- every trial (settings, validation accuracy, latency, size,
  seconds), the fallback ranking, and the final test accuracy vs FP32 and vs plain PTQ (the
  recipe as written, its INT8 ONNX evaluated on the same test batches), with the final INT8 ONNX's
  speed-up over FP32 ONNX at each latency batch size (paired ratios over interleaved rounds).

Test data is only read after the search has chosen, for these figures.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from qtoolkit.atomic import write_text_atomic
from qtoolkit.cache import publish, staging_dir
from qtoolkit.configs import quant_config
from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio
from qtoolkit.paths import default_cache_dir
from qtoolkit.pipeline import FP32_ONNX, INT8_ONNX, run_recipe
from qtoolkit.recipe import Recipe
from qtoolkit.runtime.ort import make_session, ort_call
from qtoolkit.tasks.base import PreparedTask, prepare_task
from qtoolkit.tune.report import write_tune_report
from qtoolkit.tune.search import SearchResult, TuneSettings, search
from qtoolkit.tune.sensitivity import check_ranking
from qtoolkit.tune.space import candidate_settings
from qtoolkit.tune.trial import onnx_accuracy, with_setting

TUNED_RECIPE, FINAL_DIR, REPORT = "recipe_tuned.yaml", "final", "report.json"


def tuned_recipe(recipe: Recipe, result: SearchResult) -> Recipe:
    """``recipe`` with the winner's settings and float modules, renamed ``<name>-tuned``."""
    winner = result.winner
    tuned = with_setting(recipe, winner.settings, winner.float_modules)
    note = (
        f"qtk tune: validation drop {winner.drop_pp:.2f} pp, trial {winner.index} of "
        f"{len(result.trials)}, {len(winner.float_modules)} modules in float"
    )
    return dataclasses.replace(
        tuned, name=f"{recipe.name}-tuned", description=f"{recipe.description} [{note}]".strip()
    )


def _write_recipe(recipe: Recipe, path: Path, header: str) -> None:
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=False)
    write_text_atomic(path, f"# {header}\n{text}")


def _speedups(final_dir: Path, task: PreparedTask, recipe: Recipe, batch_sizes: tuple[int, ...]) -> dict:
    """Paired INT8-over-FP32 ONNX speed-up per batch size, interleaved rounds in one process."""
    ev = recipe.evaluate
    sessions = {
        n: make_session(final_dir / f, ev.threads) for n, f in (("fp32", FP32_ONNX), ("int8", INT8_ONNX))
    }
    out: dict[str, Any] = {}
    for batch_size in batch_sizes:
        batch = task.latency_batch(batch_size)
        calls = {name: ort_call(session, batch) for name, session in sessions.items()}
        rounds = interleaved_latency(calls, rounds=3, warmup=ev.warmup, repeats=ev.repeats)
        best = best_of_rounds(rounds)
        out[str(batch_size)] = {
            "fp32_onnx_ms": round(best["fp32"], 3),
            "int8_onnx_ms": round(best["int8"], 3),
            "speedup": {k: round(v, 3) for k, v in paired_ratio(rounds, "fp32", "int8").items()},
        }
    return out


def tune(
    recipe: Recipe,
    tolerance_pp: float,
    out_dir: str | Path,
    *,
    max_trials: int = 20,
    time_budget_s: float | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    speed_batch_sizes: tuple[int, ...] = (1, 8),
    max_fallback: int | None = None,
    setting_trials: int | None = None,
    ranking: str = "sqnr",
    rank_batches: int = 2,
    margin_pp: float = 0.0,
    judge: str = "accuracy",
) -> dict[str, Any]:
    """Tune ``recipe`` toward an INT8 ONNX validation drop ≤ ``tolerance_pp``; returns report.json's
    content (``report["met"]`` says whether any trial met the tolerance; the best one is exported
    either way). ``ranking`` orders the float fallback (:data:`qtoolkit.tune.sensitivity.RANKINGS`),
    measured on the first ``rank_batches`` validation batches. A trial meets the goal when its
    validation drop is at most ``tolerance_pp − margin_pp``: the margin allows for the validation
    split being a sample (a drop measured on it carries over to test only within its noise).
    ``judge="kl"``: every setting trial runs, and of those meeting the goal the one with the lowest
    validation KL from FP32 wins (:mod:`qtoolkit.tune.search`)."""
    settings = TuneSettings(
        tolerance_pp,
        margin_pp=margin_pp,
        max_trials=max_trials,
        time_budget_s=time_budget_s,
        seed=seed,
        max_fallback=max_fallback,
        setting_trials=setting_trials,
        ranking=ranking,
        sensitivity_batches=rank_batches,
        judge=judge,
    )
    quant_config(recipe)  # bad settings fail before any work
    candidate_settings(recipe.quantize)  # and so does a method tuning cannot vary
    check_ranking(ranking, recipe.quantize.method)  # or a ranking it has not
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    started = time.perf_counter()
    task = prepare_task(recipe, cache_dir)
    with staging_dir(out_dir) as work, staging_dir(out_dir) as staging:
        result = search(recipe, task, settings, work, cache_dir)
        tuned = tuned_recipe(recipe, result)
        tuned.source = str(out_dir / TUNED_RECIPE)
        _write_recipe(
            tuned, staging / TUNED_RECIPE, f"written by qtk tune from {recipe.source or recipe.name}"
        )
        final = run_recipe(tuned, staging / FINAL_DIR, cache_dir=cache_dir)
        metrics, samples = final["metrics"], final["parity"]["samples"]
        plain = result.trials[0]
        if result.winner.index == plain.index:
            plain_test = metrics["int8_onnx"]["accuracy"]
        else:
            plain_test = onnx_accuracy(
                work / f"trial_{plain.index}.onnx", task.eval_batches, recipe.evaluate.threads
            )
        report = _report(recipe, tuned, settings, result, task, metrics, plain_test)
        report["test"]["samples"] = samples
        report["speed"] = _speedups(staging / FINAL_DIR, task, recipe, speed_batch_sizes)
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_tune_report(report, staging)
        publish(staging, out_dir, last=REPORT)
    return report


def _report(
    recipe: Recipe,
    tuned: Recipe,
    settings: TuneSettings,
    result: SearchResult,
    task: PreparedTask,
    metrics: dict[str, Any],
    plain_test: float,
) -> dict[str, Any]:
    winner = result.winner
    fp32, int8 = metrics["fp32_torch"]["accuracy"], metrics["int8_onnx"]["accuracy"]
    goal = f"{settings.tolerance_pp:g} pp" + (
        f" (margin {settings.margin_pp:g} pp: drop ≤ {settings.threshold_pp:g} pp)"
        if settings.margin_pp
        else ""
    )
    if result.met:
        kl = f", KL {winner.val_kl:.3g}" if winner.val_kl is not None and settings.judge == "kl" else ""
        message = (
            f"tolerance {goal} met on validation by trial {winner.index} "
            f"(drop {winner.drop_pp:.2f} pp{kl}, {len(winner.float_modules)} modules in float)"
        )
    else:
        message = (
            f"no trial met the tolerance of {goal} on validation "
            f"({len(result.trials)} trials, {result.stopped}); exported the best, trial {winner.index} "
            f"(drop {winner.drop_pp:.2f} pp)"
        )
    return {
        "recipe": recipe.name,
        "recipe_file": recipe.source,
        "tuned_recipe": TUNED_RECIPE,
        "final_dir": FINAL_DIR,
        "method": recipe.quantize.method,
        "tolerance_pp": settings.tolerance_pp,
        "margin_pp": settings.margin_pp,
        "judge": settings.judge,
        "met": result.met,
        "message": message,
        "budget": {
            "max_trials": settings.max_trials,
            "time_budget_s": settings.time_budget_s,
            "trials_run": len(result.trials),
            "stopped": result.stopped,
        },
        "seed": settings.seed,
        "fallback_ranking": {"name": settings.ranking, "batches": settings.sensitivity_batches},
        "validation": {**task.val_info, "fp32_torch_accuracy": result.fp32_val_accuracy},
        "winner": {
            "trial": winner.index,
            "settings": winner.settings,
            "float_modules": winner.float_modules,
            "val_accuracy": winner.val_accuracy,
            "drop_pp": winner.drop_pp,
            "val_kl": winner.val_kl,
        },
        "ranking": result.ranking,
        "trials": [t.to_dict() for t in result.trials],
        "test": {
            "samples": None,
            "fp32_torch": fp32,
            "int8_onnx": int8,
            "plain_ptq_int8_onnx": plain_test,
            "drop_vs_fp32_pp": round(100 * (fp32 - int8), 3),
            "plain_drop_vs_fp32_pp": round(100 * (fp32 - plain_test), 3),
            "gain_vs_plain_pp": round(100 * (int8 - plain_test), 3),
            "int8_onnx_size_mb": metrics["int8_onnx"]["size_mb"],
            "fp32_onnx_size_mb": metrics["fp32_onnx"]["size_mb"],
        },
        "quantize": tuned.to_dict()["quantize"],
    }
