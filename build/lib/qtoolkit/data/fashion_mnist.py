"""Fashion-MNIST from the four standard IDX ``.gz`` files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from qtoolkit.errors import QtkError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-pixel mean and std of the training split, after scaling to [0, 1].
MEAN, STD = 0.2860, 0.3530
INSTALL_HINT = "install it with: sudo apt-get install -y dataset-fashion-mnist (or pass data.root=DIR)"


def _read_idx(path: Path, header_bytes: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes)


def load_arrays(root: str | os.PathLike[str] | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of ``split`` (``train`` or ``test``).

    IDX layout: images have a 16-byte header (magic, count, rows, cols), labels an 8-byte one.
    """
    if split not in FILES:
        raise QtkError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    paths = [root / name for name in FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise QtkError(f"Fashion-MNIST files missing in {root}: {', '.join(missing)}; {INSTALL_HINT}")
    images = _read_idx(paths[0], 16)
    labels = _read_idx(paths[1], 8).astype(np.int64)
    if images.size != labels.size * 28 * 28:
        raise QtkError(f"Fashion-MNIST files in {root} are inconsistent or truncated; reinstall the package")
    return images.reshape(-1, 28, 28), labels


class ImageArrayDataset(Dataset):
    """uint8 grey images as normalised float tensors [1, H, W]: x = (pixel / 255 - MEAN) / STD."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float = MEAN, std: float = STD) -> None:
        self.images = torch.from_numpy(np.array(images, copy=True))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0).sub_(self.mean).div_(self.std)
        return image.unsqueeze(0), int(self.labels[index])


def fashion_mnist(root: str | os.PathLike[str] | None, split: str) -> ImageArrayDataset:
    """The Fashion-MNIST ``split`` as a dataset of normalised [1, 28, 28] tensors and int labels."""
    images, labels = load_arrays(root, split)
    return ImageArrayDataset(images, labels)
