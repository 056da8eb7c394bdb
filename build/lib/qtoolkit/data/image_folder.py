"""Users' own images in ImageNet layout (``ROOT/<class>/<image>``) with torchvision transforms."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from qtoolkit.errors import QtkError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image_folder(root: str | os.PathLike[str], image_size: int = 224, resize: int | None = None) -> Dataset:
    """An ImageFolder dataset: resize (short side to ``resize``, default 256/224 of ``image_size``),
    centre crop ``image_size``, ImageNet normalisation. Class indices follow sorted folder names."""
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise QtkError(f"image folder {root} does not exist; point data.root at ROOT/<class>/<image> files")
    resize = resize or round(image_size * 256 / 224)
    transform = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    try:
        return datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise QtkError(f"image folder {root}: {error}") from error
