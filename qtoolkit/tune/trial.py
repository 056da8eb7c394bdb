"""One tuning trial: quantize with a setting, export INT8 ONNX, judge the ONNX on the validation split.

The trial's accuracy is that of the exported INT8 ONNX model run by onnxruntime (what ships), on
the task's validation batches; its drop is measured against FP32 torch on the same batches:

    drop_pp = 100 · (acc_val(FP32 torch) − acc_val(INT8 ONNX))
    val_kl  = mean_i KL(softmax(FP32 torch logits_i) ‖ softmax(INT8 ONNX logits_i))

and the trial meets the goal when drop_pp ≤ threshold_pp (the tolerance less its margin). The KL
sees every logit, where accuracy moves only when a prediction flips (a few samples either way on a
small split): ``qtk tune --judge kl`` ranks the trials that meet the goal by it. Latency
is the median of ``repeats`` onnxruntime calls at batch 1 (a ranking figure; the final model is
timed properly).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qtoolkit.configs import quant_config, quant_inputs
from qtoolkit.evaluate.latency import measure_latency
from qtoolkit.evaluate.metrics import accuracy, kl_divergence, predictions
from qtoolkit.export import export_int8_onnx
from qtoolkit.quantize.api import QuantizedModel, quantize
from qtoolkit.recipe import Recipe
from qtoolkit.runtime.batches import Collected, collect_logits
from qtoolkit.runtime.ort import make_session, model_size_mb, ort_call, ort_runner
from qtoolkit.runtime.torch_runner import torch_runner
from qtoolkit.tasks.base import PreparedTask
from qtoolkit.tune.space import Setting, recipe_values


@dataclass
class Trial:
    """What one trial tried and what its INT8 ONNX scored on the validation split."""

    index: int
    phase: str  # plain (the recipe as written) | settings | fallback
    settings: Setting
    float_modules: list[str] = field(default_factory=list)
    val_accuracy: float | None = None
    drop_pp: float | None = None
    val_kl: float | None = None  # mean KL(FP32 torch ‖ INT8 ONNX) of the softmax on validation, nats
    meets: bool = False
    latency_ms: float | None = None
    size_mb: float | None = None
    seconds: float = 0.0
    error: str | None = None  # a trial that failed (e.g. a fallback torch cannot run) is kept, unranked

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def with_setting(recipe: Recipe, settings: Setting, float_modules: Iterable[str] = ()) -> Recipe:
    """``recipe`` with ``settings`` applied to its quantize section and ``float_modules`` kept in float
    (static: ``skip_modules`` by module name; dynamic: the same key becomes exclude patterns)."""
    values = recipe_values(recipe.quantize, settings)
    skip = list(dict.fromkeys([*recipe.quantize.skip_modules, *float_modules]))  # the recipe's own stay
    section = dataclasses.replace(recipe.quantize, **values, skip_modules=skip)
    return dataclasses.replace(recipe, quantize=section)


def quantize_recipe(recipe: Recipe, task: PreparedTask, cache_dir: Path) -> QuantizedModel:
    """The recipe's method applied to the task's (cached) FP32 model, as ``qtk run`` does it."""
    config = quant_config(recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecations and float-leftover notes, per trial
        return quantize(task.fp32_model, config, **quant_inputs(recipe, task, config, cache_dir))


def val_reference(task: PreparedTask) -> Collected:
    """FP32 torch logits and labels on the validation split (what every trial is judged against)."""
    return collect_logits({"fp32": torch_runner(task.fp32_model)}, task.val_batches, progress=False)


def onnx_logits(path: Path, batches: Iterable[Any], threads: int) -> Collected:
    """Logits (key ``onnx``) and labels of an ONNX classifier run by onnxruntime over (inputs, labels)."""
    return collect_logits({"onnx": ort_runner(make_session(path, threads))}, batches, progress=False)


def onnx_accuracy(path: Path, batches: Iterable[Any], threads: int) -> float:
    """Top-1 accuracy of an ONNX classifier run by onnxruntime over (inputs, labels) batches."""
    collected = onnx_logits(path, batches, threads)
    return accuracy(predictions(collected.logits["onnx"]), collected.labels)


def run_trial(
    trial: Trial,
    recipe: Recipe,
    task: PreparedTask,
    onnx_path: Path,
    fp32_val: float,
    threshold_pp: float,
    cache_dir: Path,
    latency_repeats: int = 10,
    reference_logits: np.ndarray | None = None,
) -> Trial:
    """Quantize, export to ``onnx_path`` and score ``trial`` (filled in and returned); with
    ``reference_logits`` (FP32 torch on the validation split, in order) also its ``val_kl``.

    A trial whose quantization or export raises is recorded with its error instead of ending the run.
    """
    started = time.perf_counter()
    tried = with_setting(recipe, trial.settings, trial.float_modules)
    threads = recipe.evaluate.threads
    torch.set_num_threads(threads)
    try:
        quantized = quantize_recipe(tried, task, cache_dir)
        export_int8_onnx(quantized, task.example_input, onnx_path, opset=recipe.export.opset)
        scored = onnx_logits(onnx_path, task.val_batches, threads)
        trial.val_accuracy = accuracy(predictions(scored.logits["onnx"]), scored.labels)
        if reference_logits is not None:
            trial.val_kl = round(kl_divergence(reference_logits, scored.logits["onnx"]), 8)
        trial.drop_pp = round(100.0 * (fp32_val - trial.val_accuracy), 4)
        trial.meets = trial.drop_pp <= threshold_pp
        call = ort_call(make_session(onnx_path, threads), task.latency_batch(1))
        trial.latency_ms = round(measure_latency(call, warmup=3, repeats=latency_repeats).median_ms, 3)
        trial.size_mb = round(model_size_mb(onnx_path), 3)
    except Exception as error:  # any failure of one setting is that trial's result
        trial.error = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    trial.seconds = round(time.perf_counter() - started, 1)
    return trial
