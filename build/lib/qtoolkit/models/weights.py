"""Loading FP32 weights: a user checkpoint, or torchvision weights already on local disk.

Nothing is downloaded: torchvision weights must already sit in torch hub's checkpoint directory.
Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from qtoolkit.errors import QtkError

# torchvision's file names for its ImageNet weights (IMAGENET1K_V1), as put in torch hub's cache.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (a plain state dict, or a dict with ``model``/``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise QtkError(f"checkpoint {path} does not exist; give the path of a saved state_dict")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise QtkError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({str(error).splitlines()[0][:120]}); "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from error
    except Exception as error:  # pickle.UnpicklingError when it holds arbitrary objects
        raise QtkError(
            f"checkpoint {path} holds objects that weights_only loading refuses; save a plain state_dict"
        ) from error
    for key in ("model", "state_dict", "model_state"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise QtkError(f"checkpoint {path} does not contain a state_dict of tensors")
    return data


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a state dict into ``model`` strictly, with a one-line error on mismatch."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise QtkError(f"checkpoint {path} does not fit the model: {detail}") from error
    return model


def torchvision_weights_path(name: str) -> Path:
    """The local torch hub file for torchvision's weights of ``name`` (error if absent)."""
    if name not in TORCHVISION_FILES:
        raise QtkError(
            f"no torchvision weights are known for {name!r}; use weights: train or a checkpoint path"
        )
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[name]
    if not path.is_file():
        raise QtkError(
            f"torchvision weights for {name} are not on this machine ({path}); "
            "copy the file there, or use weights: train / a checkpoint path"
        )
    return path
