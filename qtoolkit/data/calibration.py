"""Calibration data: a tiny ``get_next()`` protocol, deterministic subsets and their fingerprints.

Any source plugs in: a reader yields batches of model inputs (a tensor, a tuple of tensors, a dict
of named tensors) until it returns ``None``; ``rewind()`` starts over. Subsets are class-balanced,
drawn with a fixed seed from the *train* split, and identified by a sha256 over their indices and
bytes, which the report records. ``calibration_data/`` ships manifests (indices + sha256) that are verified on load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from qtoolkit.atomic import write_text_atomic
from qtoolkit.errors import QtkError
from qtoolkit.runtime.batches import split_batch
from qtoolkit.runtime.torch_runner import to_float32

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "calibration_data"


@runtime_checkable
class CalibrationReader(Protocol):
    """onnxruntime-style calibration source: ``get_next()`` returns a batch of model inputs (a tensor,
    a tuple of tensors for a model with several positional inputs, or a dict of named tensors), or
    None when done."""

    def get_next(self) -> Any: ...

    def rewind(self) -> None: ...


class IterableReader:
    """Adapts a re-iterable of batches (a DataLoader, a list of tensors) to :class:`CalibrationReader`.

    A batch is the model's inputs, optionally followed by a label, as
    :func:`qtoolkit.runtime.batches.split_batch` reads it for a model with ``arity`` positional
    inputs: ``x`` or ``(x, label)`` for one input, ``(x_1, …, x_k[, label])`` for k, or a dict.
    """

    def __init__(self, batches: Iterable[object], arity: int = 1) -> None:
        self._batches = batches
        self._arity = arity
        self._iterator: Iterator[object] | None = None

    def get_next(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._batches)
        batch = next(self._iterator, None)
        return None if batch is None else split_batch(batch, self._arity)[0]

    def rewind(self) -> None:
        self._iterator = None


def as_reader(source: CalibrationReader | Iterable[object], arity: int = 1) -> CalibrationReader:
    return source if isinstance(source, CalibrationReader) else IterableReader(source, arity)


def _as_tensors(inputs: Any) -> Any:
    """``inputs`` with arrays as tensors and half/double floats as float32, keeping the structure."""
    if isinstance(inputs, Mapping):
        return {name: _as_tensors(value) for name, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(_as_tensors(value) for value in inputs)
    return to_float32(inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs)))


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, Mapping):
        return [t for value in inputs.values() for t in _tensors(value)]
    if isinstance(inputs, tuple | list):
        return [t for value in inputs for t in _tensors(value)]
    return [inputs]


def checked_batches(source: CalibrationReader | Iterable[object], arity: int = 1) -> Iterator[Any]:
    """Yield the model inputs of every batch of ``source`` (see :class:`IterableReader`), as tensors;
    refuse an empty set and batches with NaN/Inf."""
    reader = as_reader(source, arity)
    reader.rewind()
    count = 0
    while (batch := reader.get_next()) is not None:
        batch = _as_tensors(batch)
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in _tensors(batch)):
            raise QtkError(
                f"calibration batch {count} contains NaN or Inf values; clean or normalise the calibration data"
            )
        count += 1
        yield batch
    if count == 0:
        raise QtkError("the calibration set is empty; give at least one batch (calibration.size > 0)")


def balanced_indices(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``size`` indices, as equal per class as possible, drawn without replacement with ``seed``.

    Each class c gets floor(size / C) indices plus one for the first (size mod C) classes; the
    result is sorted so that it does not depend on the order classes were visited.
    """
    if size <= 0:
        raise QtkError(f"calibration size must be positive, not {size}")
    classes = np.unique(labels)
    if size > len(labels):
        raise QtkError(f"calibration size {size} exceeds the {len(labels)} images of the split")
    rng = np.random.default_rng(seed)
    base, extra = divmod(size, len(classes))
    chosen = []
    for rank, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        take = min(len(members), base + (1 if rank < extra else 0))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen))


def holdout_indices(labels: np.ndarray, size: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """A validation subset: :func:`balanced_indices` over the indices not in ``exclude``.

    Drawn from a train split minus its calibration subset (so calibration and validation never share
    an image), with its own seed stream (``seed + 1``); sorted, deterministic for (labels, size, seed).
    """
    rest = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=np.int64))
    return rest[balanced_indices(labels[rest], min(size, len(rest)), seed + 1)]


def fingerprint(indices: np.ndarray, images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the subset's indices, then its image bytes and labels in index order."""
    digest = hashlib.sha256()
    digest.update(np.asarray(indices, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(images[indices]).tobytes())
    digest.update(np.asarray(labels[indices], dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CalibrationSet:
    """A deterministic calibration subset of a dataset's train split."""

    name: str
    indices: np.ndarray
    fingerprint: str
    source: str  # "manifest:<file>" or "generated"

    @property
    def size(self) -> int:
        return len(self.indices)

    def loader(self, dataset: Dataset, batch_size: int = 64) -> DataLoader:
        """Batches of ``dataset`` restricted to the subset, in index order (no shuffling)."""
        return DataLoader(Subset(dataset, self.indices.tolist()), batch_size=batch_size, shuffle=False)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "fingerprint": self.fingerprint, "source": self.source}


def manifest_path(name: str, size: int, seed: int) -> Path:
    return MANIFEST_DIR / f"{name}_train_{size}_seed{seed}.json"


def calibration_set(
    name: str, images: np.ndarray, labels: np.ndarray, size: int = 512, seed: int = 0
) -> CalibrationSet:
    """The balanced subset of ``size`` train images for dataset ``name``.

    When ``calibration_data/`` has a manifest for (name, size, seed), its indices are used and its
    sha256 must match the data on this machine; otherwise the subset is drawn with
    :func:`balanced_indices` (same algorithm, so same result) and fingerprinted.
    """
    path = manifest_path(name, size, seed)
    if path.is_file():
        manifest = json.loads(path.read_text())
        indices = np.asarray(manifest["indices"], dtype=np.int64)
        digest = fingerprint(indices, images, labels)
        if digest != manifest["sha256"]:
            raise QtkError(
                f"calibration manifest {path} does not match the {name} data here (sha256 {digest[:12]}…); "
                "the dataset files differ from the ones the manifest was made from"
            )
        return CalibrationSet(name, indices, digest, f"manifest:{path.name}")
    indices = balanced_indices(labels, size, seed)
    return CalibrationSet(name, indices, fingerprint(indices, images, labels), "generated")


def write_manifest(name: str, images: np.ndarray, labels: np.ndarray, size: int, seed: int = 0) -> Path:
    """Write ``calibration_data/<name>_train_<size>_seed<seed>.json`` (indices, class counts, sha256)."""
    indices = balanced_indices(labels, size, seed)
    counts = np.bincount(labels[indices], minlength=int(labels.max()) + 1)
    manifest = {
        "dataset": name,
        "split": "train",
        "size": size,
        "seed": seed,
        "algorithm": "qtoolkit.data.calibration.balanced_indices",
        "class_counts": counts.tolist(),
        "sha256": fingerprint(indices, images, labels),
        "indices": indices.tolist(),
    }
    path = manifest_path(name, size, seed)
    write_text_atomic(path, json.dumps(manifest, indent=None) + "\n")
    return path
