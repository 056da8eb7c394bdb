"""What a task hands the shared pipeline, and the registry of tasks by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from qtoolkit.errors import QtkError


def repeat_example(example: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """Latency input of batch size b: the example sample repeated b times."""
    return lambda batch_size: example.repeat(batch_size, *([1] * (example.dim() - 1)))


@dataclass
class PreparedTask:
    """Everything the pipeline needs after the data and model stages.

    Model inputs are a tensor (images) or a mapping of named tensors (text: input_ids, ...).
    """

    fp32_model: nn.Module
    example_input: Any  # one batch of model inputs, used to trace the export
    calibration: Iterable[Any]  # batches (input, label) or inputs, in a fixed order
    calibration_info: dict[str, Any]
    eval_batches: Iterable[tuple[Any, torch.Tensor]]  # held-out (inputs, labels) batches
    train_dataset: Dataset | None = None  # for QAT fine-tuning
    data_info: dict[str, Any] = field(default_factory=dict)
    baseline_info: dict[str, Any] = field(default_factory=dict)
    latency_input: Callable[[int], Any] | None = None  # batch size -> inputs; default repeats example
    write_deploy: Callable[[Path, Path], None] | None = None  # (out dir, INT8 ONNX) -> deploy files
    # Held-out (inputs, labels) batches disjoint from test, for choices (``qtk tune``); never test data.
    val_batches: Iterable[tuple[Any, torch.Tensor]] | None = None
    val_info: dict[str, Any] = field(default_factory=dict)  # source, size, sha256 of the validation split

    def latency_batch(self, batch_size: int) -> Any:
        make = self.latency_input or repeat_example(self.example_input)
        return make(batch_size)


TaskPreparer = Callable[..., PreparedTask]
_TASKS: dict[str, TaskPreparer] = {}
# Built-in tasks by name -> module that registers them (imported only when a recipe asks for it).
_TASK_MODULES = {
    "image-classification": "qtoolkit.tasks.image_classification",
    "photo-agreement": "qtoolkit.tasks.photo_agreement",
    "text-classification": "qtoolkit.tasks.text_classification",
}


def register_task(name: str) -> Callable[[TaskPreparer], TaskPreparer]:
    def decorate(preparer: TaskPreparer) -> TaskPreparer:
        _TASKS[name] = preparer
        return preparer

    return decorate


def prepare_task(recipe: Any, cache_dir: Path) -> PreparedTask:
    import importlib

    if recipe.task in _TASK_MODULES and recipe.task not in _TASKS:
        importlib.import_module(_TASK_MODULES[recipe.task])  # registers itself; heavy deps load lazily
    if recipe.task not in _TASKS:
        raise QtkError(
            f"{recipe.source}: unknown task {recipe.task!r}; available: {', '.join(sorted(set(_TASKS) | set(_TASK_MODULES)))}"
        )
    return _TASKS[recipe.task](recipe, cache_dir)
