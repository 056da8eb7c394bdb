"""Which modules to keep in float first: a registry of rankings (:data:`RANKINGS`), worst first.

``sqnr`` (static and dynamic): the per-layer SQNR analysis (``qtk analyze``). The INT8 model and an
FP32 reference run the same validation batches and every quantized module gets
SQNR_dB = 10 · log10(Σ f² / Σ (f − q)²) of its output
(:func:`qtoolkit.analyze.layerwise.layerwise_sqnr`). Static: the reference is the calibrated
observed model (BatchNorm folded, same module names); dynamic: the FP32 model itself (every
quantized Linear/Embedding keeps its name). Ascending SQNR. The error is accumulated: a module
downstream of a bad one looks bad too, and a noisy module whose output barely reaches the logits
looks as bad as one that decides them.

``own_effect`` (dynamic): each module's own effect on the task's output. For every module the
recipe quantizes, a model with *only that module* quantized runs the validation batches, and

    KL_m = (1/N) · Σ_n Σ_c p_n,c · (log p_n,c − log q_n,c),   p = softmax(FP32 logits),
                                                               q = softmax(logits, only m INT8)

ranks it (descending KL): no accumulated error, and only error that reaches the logits counts.
Cost: one dynamic quantization of one module and one pass over the batches per module (static
would need a calibration per module, so it is not offered there).

Ties are broken by name, so the same data and setting always give the same list.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from qtoolkit.analyze.layerwise import layerwise_sqnr
from qtoolkit.configs import quant_config, quant_inputs
from qtoolkit.errors import QtkError
from qtoolkit.evaluate.metrics import kl_divergence
from qtoolkit.quantize.api import quantize
from qtoolkit.recipe import Recipe
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.torch_runner import torch_runner
from qtoolkit.tasks.base import PreparedTask
from qtoolkit.tune.trial import quantize_recipe


@dataclass(frozen=True)
class Ranked:
    """One module of a fallback ranking and the figure that placed it."""

    module: str
    kind: str
    metric: str  # sqnr_db (lower is worse) | kl (higher is worse)
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "kind": self.kind, self.metric: float(f"{self.value:.6g}")}


RankFn = Callable[[Recipe, PreparedTask, Path, list[Any]], list[Ranked]]


@dataclass(frozen=True)
class Ranking:
    rank: RankFn  # (recipe with the setting, task, cache dir, validation batches) -> worst first
    methods: tuple[str, ...]  # quantize.method values it supports


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


PAIRS: dict[str, Callable[[Recipe, PreparedTask, Path], tuple[nn.Module, nn.Module]]] = {
    "static": _static_pair,
    "dynamic": _dynamic_pair,
}  # -> (FP32 reference, INT8 model)


def _by_sqnr(recipe: Recipe, task: PreparedTask, cache_dir: Path, sample: list[Any]) -> list[Ranked]:
    reference, int8_model = PAIRS[recipe.quantize.method](recipe, task, cache_dir)
    rows = [
        Ranked(r.module, r.kind, "sqnr_db", r.sqnr_db) for r in layerwise_sqnr(reference, int8_model, sample)
    ]
    return sorted(rows, key=lambda r: (r.value, r.module))


def _by_own_effect(recipe: Recipe, task: PreparedTask, cache_dir: Path, sample: list[Any]) -> list[Ranked]:
    from qtoolkit.quantize.dynamic import quantized_modules

    config = quant_config(recipe)
    inputs = quant_inputs(recipe, task, config, cache_dir)
    reference = collect_logits({"fp32": torch_runner(task.fp32_model)}, sample, progress=False).logits["fp32"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = quantized_modules(quantize(task.fp32_model, config, **inputs).int8_model)
        rows = []
        for name, kind in tqdm(sorted(modules.items()), desc="own effect", unit="module", leave=False):
            only = dataclasses.replace(config, include=(glob.escape(name),))  # this module alone INT8
            model = quantize(task.fp32_model, only, **inputs).int8_model
            logits = collect_logits({"q": torch_runner(model)}, sample, progress=False).logits["q"]
            rows.append(Ranked(name, kind, "kl", kl_divergence(reference, logits)))
    return sorted(rows, key=lambda r: (-r.value, r.module))


RANKINGS: dict[str, Ranking] = {
    "sqnr": Ranking(_by_sqnr, ("static", "dynamic")),
    "own_effect": Ranking(_by_own_effect, ("dynamic",)),
}


def check_ranking(name: str, method: str) -> None:
    """Refuse an unknown ranking, or one ``method`` has not, before any work."""
    if name not in RANKINGS:
        raise QtkError(f"--ranking must be one of {', '.join(RANKINGS)}, not {name!r}")
    if method not in RANKINGS[name].methods:
        supported = ", ".join(n for n, r in RANKINGS.items() if method in r.methods)
        raise QtkError(
            f"--ranking {name} works for {' and '.join(RANKINGS[name].methods)} only; {method}: {supported}"
        )


def rank_modules(
    recipe: Recipe, task: PreparedTask, cache_dir: Path, batches: int = 2, ranking: str = "sqnr"
) -> list[Ranked]:
    """Quantized modules of ``recipe``'s INT8 model, the worst first by ``ranking`` (module
    docstring), measured on the first ``batches`` validation batches (never test data)."""
    check_ranking(ranking, recipe.quantize.method)
    sample: list[Any] = list(itertools.islice(task.val_batches, batches))
    return RANKINGS[ranking].rank(recipe, task, cache_dir, sample)
