"""The one pipeline every recipe runs: data → model → quantize → export → evaluate → report.

The recipe becomes typed configs in ``qtoolkit.configs``; the method (static, dynamic, qat) is a
name in the one method registry, ``qtoolkit.quantize.METHODS``, whose config class also says how its
INT8 model exports. Artifacts are built in a staging directory inside the output directory and
moved into place only when the whole run succeeded, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from qtoolkit.cache import publish, staging_dir
from qtoolkit.configs import check_training, quant_config, quant_inputs
from qtoolkit.deploy import DEPLOY_DIR, record_validation
from qtoolkit.errors import QtkError
from qtoolkit.evaluate.compare import LatencySettings, compare_variants
from qtoolkit.export import export_int8_onnx, export_onnx, export_summary, onnx_op_counts
from qtoolkit.paths import default_cache_dir
from qtoolkit.quantize.api import QuantizedModel, quantize
from qtoolkit.recipe import Recipe
from qtoolkit.report.environment import collect_environment
from qtoolkit.report.writer import checks, validated_runtimes, write_report
from qtoolkit.runtime.onnx_runtimes import require_runtimes
from qtoolkit.runtime.ort import model_size_mb
from qtoolkit.tasks.base import PreparedTask, prepare_task

log = logging.getLogger("qtoolkit")

FP32_ONNX, INT8_ONNX, REPORT = "model_fp32.onnx", "model_int8.onnx", "report.json"


def _missing_dirs(out_dir: Path) -> list[Path]:
    """``out_dir`` and its missing parents, deepest first; QtkError when they cannot be created."""
    missing, existing = [], out_dir.absolute()
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a directory" if not existing.is_dir() else "is not writable"
        raise QtkError(
            f"output directory {out_dir} is not writable ({existing} {reason}); choose another --out"
        )
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    for path in created:  # deepest first
        try:
            path.rmdir()
        except OSError:
            return


def run_recipe(recipe: Recipe, out_dir: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``recipe`` end to end; write artifacts and ``report.json``/``report.md`` into ``out_dir``.

    Nothing is created in ``out_dir`` before the input has proven valid (recipe, data, FP32 model,
    quantization); artifacts are then built in a staging directory inside it and published at the
    end, ``report.json`` last. A failed run removes its staging directory, and ``out_dir`` itself
    when the run created it; one killed outright leaves its staging directory to the next run.
    """
    config = quant_config(recipe)
    check_training(recipe)
    require_runtimes(recipe.evaluate.runtimes)  # before anything is written: a missing runtime is bad input
    out_dir = Path(out_dir)
    created = _missing_dirs(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    started = time.perf_counter()
    task = prepare_task(recipe, cache_dir)
    quantized = quantize(task.fp32_model, config, **quant_inputs(recipe, task, config, cache_dir))
    try:
        with staging_dir(out_dir) as staging:
            report = _export_evaluate_report(recipe, task, quantized, staging, started)
            publish(staging, out_dir, last=REPORT)
        return report
    except BaseException:
        _remove_if_empty(created)
        raise


def _train_section(task: PreparedTask, quantized: QuantizedModel) -> dict[str, Any]:
    """Training runs behind this report (FP32 baseline or fine-tune, QAT): optimizer, state bytes,
    peak memory, time per step; a cached baseline keeps the record of the run that trained it."""
    runs = {"baseline": task.baseline_info.get("train"), "qat": quantized.details.get("train")}
    return {name: run for name, run in runs.items() if run}


def _export_evaluate_report(
    recipe: Recipe, task: PreparedTask, quantized: QuantizedModel, staging: Path, started: float
) -> dict[str, Any]:
    fp32_path, int8_path = staging / FP32_ONNX, staging / INT8_ONNX
    export_onnx(task.fp32_model, task.example_input, fp32_path, opset=recipe.export.opset)
    passes = export_summary(export_int8_onnx(quantized, task.example_input, int8_path, recipe.export.opset))
    ev = recipe.evaluate
    settings = LatencySettings(
        ev.threads,
        ev.latency_batch_size,
        ev.warmup,
        ev.repeats,
        runtimes=require_runtimes(ev.runtimes),
        strict_fp32=ev.strict_fp32,
        runtime_batch_sizes=tuple(ev.runtime_batch_sizes),
        rounds=ev.latency_rounds,
    )
    metrics, parity, runtimes = compare_variants(
        task.fp32_model,
        quantized.int8_model,
        fp32_path,
        int8_path,
        task.eval_batches,
        task.latency_batch,
        settings,
    )
    report: dict[str, Any] = {
        "recipe": recipe.name,
        "recipe_file": recipe.source,
        "method": quantized.method,
        "tolerance_pp": ev.tolerance_pp,
        "min_agreement": ev.min_agreement,
        "parity_noise_factor": ev.parity_noise_factor,
        "calibration": task.calibration_info,
        "data": task.data_info,
        "baseline": task.baseline_info,
        "quantization": {**quantized.details, "config": recipe.to_dict()["quantize"]},
        "train": _train_section(task, quantized),
        "export": {"opset": recipe.export.opset, "passes": passes, "int8_ops": onnx_op_counts(int8_path)},
        "metrics": metrics,
        "parity": parity,
        "latency": {"batch_size": ev.latency_batch_size, "warmup": ev.warmup, "repeats": ev.repeats},
        "onnx_runtimes": runtimes,
        "size_ratio_fp32_over_int8_onnx": round(model_size_mb(fp32_path) / model_size_mb(int8_path), 3),
        "environment": collect_environment(ev.threads),
    }
    report["checks"] = checks(report)
    report["passed"] = all(c["passed"] for c in report["checks"].values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    if task.write_deploy is not None:
        task.write_deploy(staging, int8_path)
        record_validation(staging / DEPLOY_DIR, validated_runtimes(report))
    write_report(report, staging)
    return report
