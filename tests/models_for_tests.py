"""Small models shared by tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn.quantized import FloatFunctional


class StubbedNet(nn.Module):
    """Eager-mode net with QuantStub/DeQuantStub, Conv-BN-ReLU, a residual add, pools and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.skip = FloatFunctional()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial BN statistics so folding changes weights and bias
            self.bn1.running_mean.uniform_(-0.2, 0.2)
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn1.weight.uniform_(0.5, 1.5)
            self.bn1.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.skip.add_relu(self.conv2(y), y)
        y = self.avg(self.pool(y)).flatten(1)
        return self.dequant(self.fc(y))

    def fuse_model(self, is_qat: bool = False) -> None:
        fuse = tq.fuse_modules_qat if is_qat else tq.fuse_modules
        fuse(self, [["conv1", "bn1", "relu1"]], inplace=True)


class PlainNet(nn.Module):
    """An unmodified model (no stubs) for FX mode, with an op torch cannot quantize (GELU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = self.act(self.conv2(y)) + y
        return self.fc(y.mean(dim=(2, 3)))


def calibration_batches(count: int = 4, shape: tuple[int, ...] = (8, 3, 16, 16)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=generator) for _ in range(count)]
