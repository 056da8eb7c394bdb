"""The one pipeline every recipe runs: data → model → quantize → export → evaluate → report.

Artifacts are built in a staging directory inside the output directory and moved into place only
when the whole run succeeded, so a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.compare import LatencySettings, compare_variants
from qtoolkit.export import export_int8_onnx, export_onnx, onnx_op_counts
from qtoolkit.paths import default_cache_dir
from qtoolkit.quantize.api import QuantizedModel, quantize
from qtoolkit.quantize.qconfig import ObserverSpec
from qtoolkit.quantize.static import StaticQuantConfig
from qtoolkit.recipe import Recipe
from qtoolkit.report.environment import collect_environment
from qtoolkit.report.writer import checks, write_report
from qtoolkit.tasks.base import PreparedTask, prepare_task

log = logging.getLogger("qtoolkit")

FP32_ONNX, INT8_ONNX = "model_fp32.onnx", "model_int8.onnx"


def static_config(recipe: Recipe) -> StaticQuantConfig:
    section = recipe.quantize
    observers = ObserverSpec(
        activation=section.activation_observer,
        weight=section.weight_observer,
        weight_bits=section.weight_bits,
        reduce_range=section.reduce_range,
    )
    observers.validate()
    return StaticQuantConfig(section.backend, observers, section.mode, tuple(section.skip_modules))


def _static(recipe: Recipe, task: PreparedTask, cache_dir: Path) -> QuantizedModel:
    return quantize(
        task.fp32_model, static_config(recipe), calibration=task.calibration, example_input=task.example_input
    )


def _qat(recipe: Recipe, task: PreparedTask, cache_dir: Path) -> QuantizedModel:
    from qtoolkit.quantize.qat_method import checkpoint_dir_for, qat_configs, remove_checkpoints

    if task.train_dataset is None:
        raise QtkError(
            f"{recipe.source}: quantize.method qat needs a training split for task {recipe.task!r}"
        )
    qat_config, train_config = qat_configs(recipe, task.fp32_model)
    checkpoints = checkpoint_dir_for(cache_dir, task.baseline_info, qat_config, train_config)
    quantized = quantize(
        task.fp32_model,
        qat_config,
        train_dataset=task.train_dataset,
        train_config=train_config,
        example_input=task.example_input,
        checkpoint_dir=checkpoints,
    )
    remove_checkpoints(checkpoints)  # finished: a rerun starts a fresh fine-tune
    return quantized


def _dynamic(recipe: Recipe, task: PreparedTask, cache_dir: Path) -> QuantizedModel:
    from qtoolkit.quantize.dynamic import DynamicQuantConfig

    section = recipe.quantize
    config = DynamicQuantConfig(
        per_channel=section.weight_observer == "per_channel",
        reduce_range=bool(section.reduce_range),
        embeddings=section.embeddings,
        exclude=tuple(section.skip_modules),
        engine=section.backend,
    )
    return quantize(task.fp32_model, config)


def _export_qdq(quantized: QuantizedModel, example: Any, path: Path, opset: int) -> dict[str, Any]:
    return export_int8_onnx(quantized.int8_model, example, path, opset=opset)


def _export_dynamic(quantized: QuantizedModel, example: Any, path: Path, opset: int) -> dict[str, Any]:
    from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx

    result = export_dynamic_int8_onnx(
        quantized.int8_model, example, path, opset=opset, metadata=quantized.details
    )
    return {"integer_matmuls": len(result.linears), "uint8_embeddings": len(result.embeddings)}


@dataclass(frozen=True)
class Method:
    """How the pipeline gets torch's INT8 model for a quantize.method, and how it exports it."""

    quantize: Callable[[Recipe, PreparedTask, Path], QuantizedModel]
    export: Callable[[QuantizedModel, Any, Path, int], dict[str, Any]]


METHODS: dict[str, Method] = {
    "static": Method(_static, _export_qdq),
    "qat": Method(_qat, _export_qdq),
    "dynamic": Method(_dynamic, _export_dynamic),
}


def _staging_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".qtk-staging-", dir=out_dir))
    except OSError as error:
        raise QtkError(
            f"output directory {out_dir} is not writable ({error.strerror}); choose another --out"
        ) from error


def _publish(staging: Path, out_dir: Path) -> None:
    for item in sorted(staging.iterdir()):
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    staging.rmdir()


def run_recipe(recipe: Recipe, out_dir: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``recipe`` end to end; write artifacts and ``report.json``/``report.md`` into ``out_dir``."""
    if recipe.quantize.method not in METHODS:
        raise QtkError(
            f"{recipe.source}: quantize.method {recipe.quantize.method!r} is not available for this task; "
            f"choose one of {', '.join(METHODS)}"
        )
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    staging = _staging_dir(out_dir)
    started = time.perf_counter()
    try:
        task = prepare_task(recipe, cache_dir)
        method = METHODS[recipe.quantize.method]
        quantized = method.quantize(recipe, task, cache_dir)
        fp32_path, int8_path = staging / FP32_ONNX, staging / INT8_ONNX
        export_onnx(task.fp32_model, task.example_input, fp32_path, opset=recipe.export.opset)
        passes = method.export(quantized, task.example_input, int8_path, recipe.export.opset)
        ev = recipe.evaluate
        settings = LatencySettings(ev.threads, ev.latency_batch_size, ev.warmup, ev.repeats)
        metrics, parity = compare_variants(
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
            "export": {"opset": recipe.export.opset, "passes": passes, "int8_ops": onnx_op_counts(int8_path)},
            "metrics": metrics,
            "parity": parity,
            "latency": {"batch_size": ev.latency_batch_size, "warmup": ev.warmup, "repeats": ev.repeats},
            "size_ratio_fp32_over_int8_onnx": round(
                metrics["fp32_onnx"]["size_mb"] / metrics["int8_onnx"]["size_mb"], 3
            ),
            "environment": collect_environment(ev.threads),
        }
        report["checks"] = checks(report)
        report["passed"] = all(c["passed"] for c in report["checks"].values())
        report["seconds"] = round(time.perf_counter() - started, 1)
        if task.write_deploy is not None:
            task.write_deploy(staging, int8_path)
        write_report(report, staging)
        _publish(staging, out_dir)
        return report
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
