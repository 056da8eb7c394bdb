"""Label-free image task: fidelity of INT8 to FP32 on deterministic photo crops.

The eval "labels" are the FP32 torch model's own top-1 predictions on the eval crops, so the
pipeline's unchanged accuracy column reads as *top-1 agreement with FP32* (FP32 torch = 100% by
construction) and the recipe's ``tolerance_pp`` bounds the agreement lost to INT8. FP32 logits are
cached under ``$QTK_CACHE/agreement`` keyed by model, weights, crops sha256 and torch version.

The validation split (``qtk tune``'s) is ``data.val_size`` crops (default 1024) of another stream,
seed = calibration seed + 1, labelled the same way: no crop is shared with calibration or eval.
``bench/ptq_algorithms.py`` chooses settings on the first 256 of the same stream (``--val-seed 1
--val-size 256`` for calibration seed 0). It is built (crops rendered, FP32 labels) on first
iteration only, so ``qtk run`` does not pay for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qtoolkit.cache import cache_key, get_or_build
from qtoolkit.data.photos import PhotoCrops, PhotoCropSpec, build_photo_crops
from qtoolkit.errors import QtkError
from qtoolkit.models import create_model
from qtoolkit.models.efficientnet import lite_normalize
from qtoolkit.models.weights import load_weights
from qtoolkit.recipe import Recipe
from qtoolkit.runtime.batches import logits_of
from qtoolkit.runtime.torch_runner import torch_runner
from qtoolkit.tasks.base import PreparedTask, register_task

log = logging.getLogger("qtoolkit")
Preprocess = Callable[[torch.Tensor], torch.Tensor]
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def imagenet_normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """torchvision's ImageNet input: (x/255 − mean) / std per channel."""
    return (images_uint8.float() / 255.0 - _MEAN) / _STD


# model name -> how uint8 RGB crops become its input (default: torchvision's ImageNet normalisation).
PREPROCESS: dict[str, Preprocess] = {"efficientnet_lite2": lite_normalize}
# default data.val_size. 1024, not 256: crops of ten photos are correlated, and on 256 the lite2 tune
# winner's drop read 4.30 pp against 7.81 pp on the 512 test crops; on 1024 it read 7.13 pp
VAL_SIZE = 1024


class CropDataset(Dataset):
    """uint8 NCHW crops, preprocessed on access; with ``labels``, items are (input, label)."""

    def __init__(self, images: np.ndarray, preprocess: Preprocess, labels: np.ndarray | None = None) -> None:
        self.images, self.preprocess, self.labels = images, preprocess, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        x = self.preprocess(torch.from_numpy(self.images[index]))
        return x if self.labels is None else (x, int(self.labels[index]))


def _fp32_model(recipe: Recipe) -> torch.nn.Module:
    spec = recipe.model
    if spec.weights == "package":
        return create_model(spec.name).eval()
    if spec.weights in ("train", "torchvision"):
        raise QtkError(
            f"{recipe.source}: photo-agreement needs pretrained weights: model.weights: package or a path"
        )
    return load_weights(create_model(spec.name, pretrained=False), spec.weights).eval()


def fp32_logits(model: torch.nn.Module, recipe: Recipe, crops: PhotoCrops, cache_dir: Path) -> np.ndarray:
    """FP32 torch logits on the eval crops, cached (see module docstring)."""
    weights = recipe.model.weights
    key_data = {
        "model": recipe.model.name,
        "weights": weights,
        "crops": crops.sha256,
        "torch": torch.__version__,
    }
    path = cache_dir / "agreement" / f"{recipe.model.name}-{cache_key(key_data)}.npy"

    def build(tmp: Path) -> np.ndarray:
        preprocess = PREPROCESS.get(recipe.model.name, imagenet_normalize)
        loader = DataLoader(CropDataset(crops.eval, preprocess), batch_size=recipe.evaluate.batch_size)
        logits = logits_of(torch_runner(model), loader, progress=True)
        with open(tmp, "wb") as handle:
            np.save(handle, logits)
        return logits

    logits, cached = get_or_build(path, build)
    return np.load(path) if cached else logits


class _ValidationCrops:
    """(input, FP32 top-1) batches of the validation stream, built on first iteration (module docstring)."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, cache_dir: Path, info: dict[str, Any]) -> None:
        self.model, self.recipe, self.cache_dir, self.info = model, recipe, cache_dir, info
        self.loader: DataLoader | None = None

    def _build(self) -> DataLoader:
        recipe, section = self.recipe, self.recipe.quantize.calibration
        size = VAL_SIZE if recipe.data.val_size is None else recipe.data.val_size
        spec = PhotoCropSpec(size=recipe.data.image_size, seed=section.seed + 1, calibration=0, eval=size)
        crops = build_photo_crops(spec)
        labels = fp32_logits(self.model, recipe, crops, self.cache_dir).argmax(1)
        preprocess = PREPROCESS.get(recipe.model.name, imagenet_normalize)
        self.info.update(size=len(crops.eval), sha256=crops.sha256, seed=spec.seed)  # report's val_info
        return DataLoader(CropDataset(crops.eval, preprocess, labels), batch_size=recipe.evaluate.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            self.loader = self._build()
        return iter(self.loader)


@register_task("photo-agreement")
def prepare_photo_agreement(recipe: Recipe, cache_dir: Path) -> PreparedTask:
    """Photo crops (calibration + eval), FP32 model, and eval labels = FP32 top-1."""
    if recipe.data.name != "photo-crops":
        raise QtkError(f"{recipe.source}: task photo-agreement needs data.name: photo-crops")
    section = recipe.quantize.calibration
    spec = PhotoCropSpec(size=recipe.data.image_size, seed=section.seed, calibration=section.size)
    crops = build_photo_crops(spec)
    if recipe.data.test_limit is not None:
        crops.eval = crops.eval[: recipe.data.test_limit]
    model = _fp32_model(recipe)
    preprocess = PREPROCESS.get(recipe.model.name, imagenet_normalize)
    labels = fp32_logits(model, recipe, crops, cache_dir)[: len(crops.eval)].argmax(1)
    calibration = DataLoader(CropDataset(crops.calibration, preprocess), batch_size=section.batch_size)
    val_info: dict[str, Any] = {
        "source": "photo crops of stream seed calibration.seed + 1 (labels: FP32 top-1)"
    }
    return PreparedTask(
        fp32_model=model,
        example_input=preprocess(torch.from_numpy(crops.calibration[:1])),
        calibration=calibration,
        calibration_info=crops.describe(),
        eval_batches=DataLoader(
            CropDataset(crops.eval, preprocess, labels), batch_size=recipe.evaluate.batch_size
        ),
        data_info={
            "name": "photo-crops",
            "metric": "top-1 agreement with FP32 torch (eval labels are FP32 predictions)",
            "eval_size": len(crops.eval),
            "eval_sha256": crops.sha256,
        },
        baseline_info={"source": recipe.model.weights, "model": recipe.model.name},
        val_batches=_ValidationCrops(model, recipe, cache_dir, val_info),
        val_info=val_info,
    )
