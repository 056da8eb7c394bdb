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


@dataclass
class PreparedTask:
    """Everything the pipeline needs after the data and model stages."""

    fp32_model: nn.Module
    example_input: torch.Tensor  # one sample with a batch dimension of 1
    calibration: Iterable[Any]  # batches (input, label) or inputs, in a fixed order
    calibration_info: dict[str, Any]
    eval_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]  # held-out (input, label) batches
    train_dataset: Dataset | None = None  # for QAT fine-tuning
    data_info: dict[str, Any] = field(default_factory=dict)
    baseline_info: dict[str, Any] = field(default_factory=dict)


TaskPreparer = Callable[..., PreparedTask]
_TASKS: dict[str, TaskPreparer] = {}


def register_task(name: str) -> Callable[[TaskPreparer], TaskPreparer]:
    def decorate(preparer: TaskPreparer) -> TaskPreparer:
        _TASKS[name] = preparer
        return preparer

    return decorate


def prepare_task(recipe: Any, cache_dir: Path) -> PreparedTask:
    from qtoolkit.tasks import image_classification, photo_agreement  # noqa: F401  (they register)

    if recipe.task not in _TASKS:
        raise QtkError(
            f"{recipe.source}: unknown task {recipe.task!r}; available: {', '.join(sorted(_TASKS))}"
        )
    return _TASKS[recipe.task](recipe, cache_dir)
