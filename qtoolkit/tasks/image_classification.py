"""Image classification: data, calibration subset and FP32 baseline for a recipe.

The baseline is a user checkpoint, local torchvision weights, or the recipe's own SGD training
(:func:`qtoolkit.train.baselines.image_baseline`), cached under ``$QTK_CACHE/baselines`` keyed by
everything that determines it (model, data files, training settings, torch version) so that a
second run loads instead of retraining.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from qtoolkit.configs import baseline_train_config
from qtoolkit.data import fashion_mnist
from qtoolkit.data.calibration import calibration_set, fingerprint, holdout_indices
from qtoolkit.data.image_folder import image_folder
from qtoolkit.errors import QtkError
from qtoolkit.models import create_model
from qtoolkit.models.weights import load_weights, torchvision_weights_path
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import PreparedTask, register_task
from qtoolkit.train.baselines import image_baseline

VAL_SIZE = 2000  # default data.val_size: train images outside the calibration subset


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))


def _load_datasets(recipe: Recipe) -> tuple[Dataset, Dataset, dict[str, object], np.ndarray, np.ndarray]:
    """(train, test, description, calibration images, calibration labels) of the recipe's data."""
    data = recipe.data
    if data.name == "fashion-mnist":
        train_images, train_labels = fashion_mnist.load_arrays(data.root, "train")
        test_images, test_labels = fashion_mnist.load_arrays(data.root, "test")
        train = fashion_mnist.ImageArrayDataset(train_images, train_labels)
        test = fashion_mnist.ImageArrayDataset(test_images, test_labels)
        info = {
            "name": "fashion-mnist",
            "root": str(data.root or fashion_mnist.DEFAULT_ROOT),
            "test_sha256": fingerprint(np.arange(len(test_labels)), test_images, test_labels),
        }
        return train, test, info, train_images, train_labels
    if data.name == "image-folder":
        if not data.root:
            raise QtkError(f"{recipe.source}: data.root is required for image-folder (ROOT/train, ROOT/val)")
        root = Path(data.root)
        train = image_folder(root / "train", data.image_size)
        test = image_folder(root / "val", data.image_size)
        labels = np.asarray(train.targets)
        # Images are decoded lazily: the calibration fingerprint covers each file's sha256 instead.
        digests = np.stack(
            [np.frombuffer(hashlib.sha256(Path(p).read_bytes()).digest(), np.uint8) for p, _ in train.samples]
        )
        return train, test, {"name": "image-folder", "root": str(root)}, digests, labels
    raise QtkError(f"{recipe.source}: unknown image dataset {data.name!r}; use fashion-mnist or image-folder")


def _determining(recipe: Recipe, data_info: dict[str, object]) -> dict[str, object]:
    """Everything that determines a trained baseline (its cache key)."""
    return {
        # options only when given: keys of baselines cached before model.options existed stay valid
        "model": {k: v for k, v in asdict(recipe.model).items() if k != "options" or v},
        "data": {
            "name": recipe.data.name,
            "test": data_info.get("test_sha256"),
            "train_limit": recipe.data.train_limit,
        },
        "train": asdict(recipe.train),
        "torch": torch.__version__.split("+")[0],
    }


def _baseline(
    recipe: Recipe, train: Dataset, data_info: dict, cache_dir: Path
) -> tuple[torch.nn.Module, dict]:
    spec = recipe.model

    def build() -> torch.nn.Module:
        return create_model(
            spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels, **spec.options
        )

    if spec.weights == "torchvision":
        path = torchvision_weights_path(spec.name)
        return load_weights(build(), path).eval(), {"source": "torchvision", "path": str(path)}
    if spec.weights != "train":
        return load_weights(build(), spec.weights).eval(), {"source": "checkpoint", "path": spec.weights}
    name = f"{spec.name}-{recipe.data.name}"
    config = baseline_train_config(recipe)
    return image_baseline(build, train, config, cache_dir, name, _determining(recipe, data_info))


@register_task("image-classification")
def prepare_image_classification(recipe: Recipe, cache_dir: Path) -> PreparedTask:
    """Datasets, calibration subset and FP32 model for an image-classification recipe."""
    train, test, data_info, calib_images, calib_labels = _load_datasets(recipe)
    train = _limit(train, recipe.data.train_limit)
    test = _limit(test, recipe.data.test_limit)
    section = recipe.quantize.calibration
    calib = calibration_set(recipe.data.name, calib_images, calib_labels, section.size, section.seed)
    model, baseline_info = _baseline(recipe, train, data_info, cache_dir)
    full_train = train.dataset if isinstance(train, Subset) else train  # calibration indexes the full split
    # Validation (for choices such as qtk tune's): train images outside the calibration subset.
    val_size = VAL_SIZE if recipe.data.val_size is None else recipe.data.val_size
    val_indices = holdout_indices(calib_labels, val_size, section.seed, calib.indices)
    return PreparedTask(
        fp32_model=model,
        example_input=full_train[int(calib.indices[0])][0].unsqueeze(0),
        calibration=calib.loader(full_train, batch_size=section.batch_size),
        calibration_info=calib.describe(),
        eval_batches=DataLoader(test, batch_size=recipe.evaluate.batch_size, shuffle=False),
        train_dataset=train,
        data_info={**data_info, "train_size": len(train), "test_size": len(test)},
        baseline_info=baseline_info,
        val_batches=DataLoader(
            Subset(full_train, val_indices.tolist()), batch_size=recipe.evaluate.batch_size, shuffle=False
        ),
        val_info={
            "source": "train split minus calibration subset",
            "size": len(val_indices),
            "sha256": fingerprint(val_indices, calib_images, calib_labels),
        },
    )
