"""Models from timm (the other common source of vision models) through the public API, random init.

timm code adds Python numbers to quantized tensors and calls functional dropout
(``export/scalar_ops.py``, ``export/reference.py``). timm's ``Attention`` calls
``F.scaled_dot_product_attention``, which torch.ao leaves float: its Linear layers are INT8, q·kᵀ and
attn·v stay float (integer attention MatMuls measured slower there; README, "timm").
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import qtoolkit as qtk
from qtoolkit.evaluate.graph_quality import optimized_op_counts

timm = pytest.importorskip("timm")


def _batches(count: int, seed: int, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, size, size, generator=generator) for _ in range(count)]


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8, depth=2,
        embed_dim=32, num_heads=2,
    )  # fmt: skip
    nn.init.normal_(model.head.weight, std=0.1)  # timm zero-inits the head: constant, tied logits
    return model.eval()


@pytest.mark.slow  # ~5 s
def test_timm_vit_linear_layers_run_in_integer_attention_float(tmp_path) -> None:
    calibration = _batches(4, seed=1)
    quantized = qtk.quantize_model(
        _tiny_vit(), qtk.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
    )
    path = tmp_path / "int8.onnx"
    qtk.export_int8_onnx(quantized, calibration[0][:1], path)
    onnx.checker.check_model(str(path), full_check=True)
    ops = optimized_op_counts(path)
    assert ops.get("Gemm", 0) == 0 and ops["QGemm"] + ops.get("MatMulIntegerToFloat", 0) == 2 * 4 + 1, ops
    assert ops.get("QLinearMatMul", 0) == 0  # q·kᵀ and attn·v: float scaled_dot_product_attention
    parity = qtk.check_parity(quantized, path, _batches(4, seed=2))
    # near-tied random logits and LayerNorms amplifying 1-LSB kernel rounding: as the torchvision ViT test
    assert parity["agreement"] >= 0.9 and parity["max_abs_diff"] < 0.4, parity


@pytest.mark.slow  # 10-25 s each; the ops themselves: tests/test_export_static.py (_ScalarOps)
@pytest.mark.parametrize("name", ["ghostnet_050", "fastvit_t8"])
def test_timm_models_with_dropout_and_number_adds_export(name: str, tmp_path) -> None:
    """GhostNet calls F.dropout on quantized tensors, FastViT sums branches from `0 + x`: both raised
    "quantized op ... has no ONNX reference yet" before."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    calibration = _batches(2, seed=1)
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
    )
    qtk.export_int8_onnx(quantized, calibration[0][:1], tmp_path / "int8.onnx")
    ops = optimized_op_counts(tmp_path / "int8.onnx")
    assert ops["QLinearConv"] >= 40 and ops.get("Conv", 0) == 0, ops
    parity = qtk.check_parity(quantized, tmp_path / "int8.onnx", _batches(2, seed=2))
    assert parity["agreement"] >= 0.9 and parity["max_abs_diff"] < 0.05, parity
