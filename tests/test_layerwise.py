"""Per-layer SQNR diagnostic, FX canonicalization, clamp-aware observers and the qnnpack guard."""

from __future__ import annotations

import math

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qtoolkit.analyze import format_table, layerwise_sqnr, plot_sqnr
from qtoolkit.errors import QtkError
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.export import export_int8_onnx
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig
from qtoolkit.quantize.kernel_check import kernel_sqnr_db, verify_int8_kernels
from qtoolkit.quantize.static import quantize_static


class SameConv(nn.Conv2d):
    """TF-style 'same' conv that calls F.conv2d itself (FX traces through it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0]
        self.pad = (
            nn.ZeroPad2d((k // 2 - 1, k // 2, k // 2 - 1, k // 2))
            if self.stride[0] == 2
            else nn.ZeroPad2d(k // 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class MobileBlockNet(nn.Module):
    """Stem, depthwise-separable block with ReLU6 and a residual add, head: an EfficientNet-lite in small."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = SameConv(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn1 = SameConv(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8)
        self.pw, self.bn2 = SameConv(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(8, 5)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for bn in (self.bn0, self.bn1, self.bn2):  # channels of very different scales, as in trained nets
                bn.running_var.copy_(10 ** (torch.rand(8, generator=generator) * 6 - 4))  # 1e-4 .. 1e2
                bn.weight.copy_(torch.rand(8, generator=generator) * 3 + 0.1)
                bn.bias.copy_(torch.rand(8, generator=generator) * 2 - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.stem(x)))
        y = self.act(self.bn1(self.dw(x)))
        x = self.bn2(self.pw(y)) + x
        return self.fc(x.mean((2, 3)))


def _data(count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 16, 16, generator=generator) for _ in range(count)]


def _quantize(model: nn.Module, **flags) -> object:
    config = StaticQuantConfig(observers=ObserverSpec(activation="minmax", reduce_range=False), **flags)
    data = _data()
    return quantize_static(model, config, data, data[0][:1], keep_observed=True)


def test_canonicalization_folds_batchnorm_into_functional_convs():
    model = MobileBlockNet().eval()
    raw = _quantize(model, canonicalize=False, clamp_aware=False).int8_model
    fixed = _quantize(model).int8_model
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    assert "BatchNorm2d" in kinds(raw)  # torch.ao alone quantizes BN on its own after a functional conv
    assert "BatchNorm2d" not in kinds(fixed) and "Conv2d" in kinds(fixed)
    x = _data(1)[0]
    model.requires_grad_(False)
    error = lambda q: float((model(x) - q(x)).pow(2).mean() / model(x).pow(2).mean())  # noqa: E731
    assert error(fixed) < error(raw)


def test_clamp_aware_observer_keeps_conv_output_inside_relu6():
    result = _quantize(MobileBlockNet().eval())
    assert result.rules["clamp_aware_observers"]
    conv = result.int8_model.get_submodule("dw.qtk_conv2d")
    low, high = -conv.zero_point * conv.scale, (255 - conv.zero_point) * conv.scale
    assert low >= -1e-6 and high <= 6.0 + conv.scale


def test_layerwise_sqnr_rows_map_to_onnx_nodes(tmp_path):
    result = _quantize(MobileBlockNet().eval())
    path = tmp_path / "int8.onnx"
    passes = export_int8_onnx(result.int8_model, _data(1)[0][:1], path)
    assert passes["dropped_clips"] >= 1  # ReLU6 after a clamp-aware conv is the identity in ONNX
    assert check_parity(result.int8_model, path, _data(2))["agreement"] >= 0.99
    rows = layerwise_sqnr(result.observed_model, result.int8_model, _data(2), path)
    modules = {r.module for r in rows}
    assert {"stem.qtk_conv2d", "dw.qtk_conv2d", "pw.qtk_conv2d", "fc"} <= modules
    assert [r.sqnr_db for r in rows] == sorted(r.sqnr_db for r in rows)
    assert all(math.isfinite(r.sqnr_db) and r.sqnr_db > 10 for r in rows)
    names = {n.name for n in onnx.load(str(path)).graph.node}
    assert all(r.onnx_node in names for r in rows if r.kind in ("Conv2d", "Linear"))
    assert "| 1 |" in format_table(rows)
    assert plot_sqnr(rows, tmp_path / "sqnr.png").stat().st_size > 1000


def test_layerwise_sqnr_detects_a_corrupted_layer():
    result = _quantize(MobileBlockNet().eval())
    clean = {r.module: r.sqnr_db for r in layerwise_sqnr(result.observed_model, result.int8_model, _data(1))}
    conv = result.int8_model.get_submodule("pw.qtk_conv2d")
    conv.scale = conv.scale * 16  # coarse output grid: that layer (and what follows) must drop
    broken = {r.module: r.sqnr_db for r in layerwise_sqnr(result.observed_model, result.int8_model, _data(1))}
    assert broken["pw.qtk_conv2d"] < clean["pw.qtk_conv2d"] - 6


def test_kernel_guard_refuses_wrong_kernels_and_accepts_x86():
    result = _quantize(MobileBlockNet().eval())
    batch = _data(1)[0]
    assert kernel_sqnr_db(result.int8_model, batch) > 30
    assert verify_int8_kernels(result.int8_model, batch, "x86") is None  # reference engine: unchecked
    assert verify_int8_kernels(result.int8_model, batch, "qnnpack") > 15
    conv = result.int8_model.get_submodule("pw.qtk_conv2d")
    kernel = conv.forward

    def wrong_kernel(x: torch.Tensor) -> torch.Tensor:  # what a broken engine does: plausible garbage
        y = kernel(x)
        return torch.quantize_per_tensor(y.dequantize().roll(1, 1), y.q_scale(), y.q_zero_point(), y.dtype)

    conv.forward = wrong_kernel
    with pytest.raises(QtkError, match="qnnpack INT8 kernels disagree"):
        verify_int8_kernels(result.int8_model, batch, "qnnpack")
