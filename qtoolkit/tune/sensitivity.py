"""Which modules to keep in float first: the per-layer SQNR analysis (``qtk analyze``), worst first.

For a setting, the INT8 model and an FP32 reference run the same validation batches and every
quantized module gets SQNR_dB = 10 · log10(Σ f² / Σ (f − q)²) of its output
(:func:`qtoolkit.analyze.layerwise.layerwise_sqnr`). Static: the reference is the calibrated
observed model (BatchNorm folded, same module names); dynamic: the FP32 model itself (every
quantized Linear/Embedding keeps its name). The fallback order is ascending SQNR, ties broken by
name, so the same data and setting always give the same list.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from qtoolkit.analyze.layerwise import LayerSQNR, layerwise_sqnr
from qtoolkit.configs import quant_config
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import PreparedTask
from qtoolkit.tune.trial import quantize_recipe

Pair = Callable[[Recipe, PreparedTask, Path], tuple[nn.Module, nn.Module]]  # -> (reference, INT8)


def _static_pair(recipe: Recipe, task: PreparedTask, cache_dir: Path) -> tuple[nn.Module, nn.Module]:
    from qtoolkit.quantize.static import quantize_static

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = quantize_static(
            task.fp32_model, quant_config(recipe), task.calibration, task.example_input, keep_observed=True
        )
    return result.observed_model, result.int8_model


def _dynamic_pair(recipe: Recipe, task: PreparedTask, cache_dir: Path) -> tuple[nn.Module, nn.Module]:
    return task.fp32_model, quantize_recipe(recipe, task, cache_dir).int8_model


PAIRS: dict[str, Pair] = {"static": _static_pair, "dynamic": _dynamic_pair}


def rank_modules(recipe: Recipe, task: PreparedTask, cache_dir: Path, batches: int = 2) -> list[LayerSQNR]:
    """Quantized modules of ``recipe``'s INT8 model, lowest SQNR first, measured on the first
    ``batches`` validation batches (never test data)."""
    reference, int8_model = PAIRS[recipe.quantize.method](recipe, task, cache_dir)
    sample: list[Any] = list(itertools.islice(task.val_batches, batches))
    rows = layerwise_sqnr(reference, int8_model, sample)
    return sorted(rows, key=lambda r: (r.sqnr_db, r.module))
