"""Batches -> (inputs, labels), and the one loop that runs models over eval batches.

A batch is model inputs (a tensor, a tuple of tensors, a mapping of named tensors) or inputs with
a label: ``(inputs, label)``, or ``(x_1, …, x_k, label)`` for a model with k positional inputs.
No torch here: tensors are converted with :func:`qtoolkit.runtime.ort.to_numpy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qtoolkit.errors import QtkError
from qtoolkit.runtime.ort import to_numpy

Runner = Callable[[Any], np.ndarray]


def split_batch(batch: Any, arity: int = 1) -> tuple[Any, Any | None]:
    """(inputs, label or None) of one batch, for a model with ``arity`` positional inputs.

    A mapping or a bare tensor is inputs alone. For a tuple or list: ``(mapping or tuple, label)`` is
    inputs and label; with one model input, the first element is the input and the second (if any)
    the label; with k > 1 inputs, k elements are the inputs and k + 1 are inputs then label.
    """
    if isinstance(batch, Mapping) or not isinstance(batch, tuple | list):
        return batch, None
    if not batch:
        raise QtkError("an empty batch; each batch needs the model's inputs.")
    if isinstance(batch[0], Mapping | tuple | list):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if arity == 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if len(batch) == arity:
        return tuple(batch), None
    if len(batch) == arity + 1:
        return tuple(batch[:arity]), batch[arity]
    raise QtkError(
        f"a batch of {len(batch)} tensors for a model with {arity} inputs; pass the {arity} inputs, "
        "optionally followed by the label, or a mapping of named inputs."
    )


@dataclass(frozen=True)
class Collected:
    """Logits per runner (N, C) over the same samples, and their labels when the batches had them."""

    logits: dict[str, np.ndarray]
    labels: np.ndarray | None


def collect_logits(
    runners: Mapping[str, Runner],
    batches: Iterable[Any],
    *,
    arity: int = 1,
    desc: str = "evaluate",
    progress: bool = True,
) -> Collected:
    """Run every runner on every batch, in one pass over ``batches`` (which may be a generator)."""
    logits: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    labels: list[np.ndarray] = []
    if progress:  # tqdm only when asked: the deploy runtime predicts without it
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for batch in batches:
        inputs, label = split_batch(batch, arity)
        for name, run in runners.items():
            logits[name].append(np.asarray(run(inputs)))
        if label is not None:
            labels.append(to_numpy(label).reshape(-1))
    if not any(logits.values()) and runners:
        raise QtkError("no batches to evaluate; check the data path and split.")
    if labels and len(labels) != len(next(iter(logits.values()), labels)):
        raise QtkError("some batches have labels and some do not; give every batch a label or none.")
    return Collected(
        {name: np.concatenate(parts) for name, parts in logits.items()},
        np.concatenate(labels) if labels else None,
    )


def logits_of(run: Runner, batches: Iterable[Any], *, arity: int = 1, progress: bool = False) -> np.ndarray:
    """Logits (N, C) of one runner over ``batches``, concatenated in order."""
    return collect_logits({"logits": run}, batches, arity=arity, progress=progress).logits["logits"]


def first_rows(inputs: Any, count: int) -> Any:
    """The first ``count`` samples of model inputs (a tensor or array, a tuple or a mapping of them)."""
    if isinstance(inputs, Mapping):
        return {name: first_rows(value, count) for name, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(first_rows(value, count) for value in inputs)
    return inputs[:count]


def row_count(inputs: Any) -> int:
    """Samples in model inputs: the length of the first tensor (a tuple's first, a mapping's first value)."""
    if isinstance(inputs, Mapping):
        return row_count(next(iter(inputs.values())))
    if isinstance(inputs, tuple | list):
        return row_count(inputs[0])
    return len(inputs)
