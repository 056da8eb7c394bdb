"""Models from timm (the other common source of vision models) through the public API, random init.

timm's ``Attention`` calls ``F.scaled_dot_product_attention``, which torch.ao leaves float: it is
rewritten (``quantize.attention.QuantizableTimmAttention``) so that q·kᵀ and attn·v run as integer
MatMuls, as torchvision's ViT does. timm code also adds Python numbers to quantized tensors and
calls functional dropout (``export/scalar_ops.py``, ``export/reference.py``).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import qtoolkit as qtk
from qtoolkit.evaluate.graph_quality import optimized_op_counts
from qtoolkit.quantize.attention import QuantizableTimmAttention, rewrite_attention

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
    return model.eval()


def test_timm_attention_rewrite_is_exact_in_float() -> None:
    model, x = _tiny_vit(), _batches(1, seed=0)[0]
    with torch.no_grad():
        expected = model(x)
        done = rewrite_attention(model, x[:1])
        assert sorted(done) == ["blocks.0.attn", "blocks.1.attn"]
        assert all(isinstance(m, QuantizableTimmAttention) for m in done.values())
        assert (model(x) - expected).abs().max() < 1e-5


def test_timm_attention_called_with_a_mask_stays_float() -> None:
    attention = timm.layers.Attention(16, num_heads=2).eval()

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attention

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, attn_mask=torch.zeros(x.shape[1], x.shape[1]))

    assert rewrite_attention(Masked(), torch.randn(1, 5, 16)) == {}


@pytest.mark.slow  # ~5 s; the rewrite's exactness runs in the fast subset
def test_timm_vit_attention_runs_in_integer(tmp_path) -> None:
    """Before the rewrite: 2 float MatMuls per block (scaled_dot_product_attention)."""
    calibration = _batches(4, seed=1)
    quantized = qtk.quantize_model(
        _tiny_vit(), qtk.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
    )
    path = tmp_path / "int8.onnx"
    qtk.export_int8_onnx(quantized, calibration[0][:1], path)
    onnx.checker.check_model(str(path), full_check=True)
    ops = optimized_op_counts(path)
    assert ops.get("MatMul", 0) == 0 and ops.get("FusedMatMul", 0) == 0, ops
    assert ops["QLinearMatMul"] >= 2 * 2  # q·kᵀ and attn·v in both blocks
    parity = qtk.check_parity(quantized, path, _batches(4, seed=2))
    assert parity["max_abs_diff"] < 0.4, parity  # random net, near-tied logits: see the ViT test


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
