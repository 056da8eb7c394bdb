"""Recipe-level drivers for ``qtk analyze`` and ``qtk compare-ort`` (the CLI stays thin)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from qtoolkit.analyze.layerwise import format_table, layerwise_sqnr, plot_sqnr
from qtoolkit.atomic import write_text_atomic
from qtoolkit.errors import QtkError
from qtoolkit.export import export_int8_onnx
from qtoolkit.paths import default_cache_dir
from qtoolkit.pipeline import static_config
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import prepare_task


def _static_only(recipe: Recipe) -> None:
    if recipe.quantize.method != "static":
        raise QtkError(f"{recipe.source}: analyze/compare-ort need quantize.method: static")


def analyze_recipe(
    recipe: Recipe, out_dir: str | Path, batches: int = 2, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Quantize as the recipe says, export INT8 ONNX, and write layerwise.{json,md,png} to ``out_dir``.

    SQNR is measured on the first ``batches`` calibration batches.
    """
    from qtoolkit.quantize.static import quantize_static

    _static_only(recipe)
    task = prepare_task(recipe, Path(cache_dir) if cache_dir else default_cache_dir())
    result = quantize_static(
        task.fp32_model, static_config(recipe), task.calibration, task.example_input, keep_observed=True
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model_int8.onnx"
    export_int8_onnx(result.int8_model, task.example_input, onnx_path, opset=recipe.export.opset)
    sample = list(itertools.islice(task.calibration, batches))
    rows = layerwise_sqnr(result.observed_model, result.int8_model, sample, onnx_path)
    table = format_table(rows)
    write_text_atomic(out / "layerwise.md", f"### per-layer SQNR, {recipe.name} (worst first)\n\n{table}")
    payload = {"recipe": recipe.name, "rules": result.rules, "layers": [r.to_dict() for r in rows]}
    write_text_atomic(out / "layerwise.json", json.dumps(payload, indent=2) + "\n")
    plot_sqnr(rows, out / "layerwise.png", f"{recipe.name}: worst layers")
    return {"rows": rows, "table": table, "rules": result.rules}


def compare_ort_recipe(
    recipe: Recipe,
    methods: tuple[str, ...] = ("minmax", "entropy", "percentile"),
    work_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """qtoolkit's INT8 ONNX for ``recipe`` vs onnxruntime's quantize_static on the same data."""
    from qtoolkit.peers.ort_compare import CompareSettings, compare_with_ort
    from qtoolkit.quantize.api import quantize

    _static_only(recipe)
    task = prepare_task(recipe, Path(cache_dir) if cache_dir else default_cache_dir())
    int8 = quantize(
        task.fp32_model, static_config(recipe), calibration=task.calibration, example_input=task.example_input
    ).int8_model
    settings = CompareSettings(methods, recipe.evaluate.threads, recipe.evaluate.repeats, rounds)
    return compare_with_ort(
        task.fp32_model, int8, task.calibration, task.eval_batches, task.example_input, settings, work_dir
    )
