"""A user's own model built from ``nn.TransformerEncoder``/``Decoder`` layers, through the public API.

torch.nn's transformer modules are FX leaves whose fast-path checks read the original attention's
attributes: before ``quantize/transformer_layers.py`` a model with ``nn.TransformerEncoderLayer``
crashed in calibration ("'QuantizableSelfAttention' object has no attribute 'in_proj_bias'").
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import onnx
import pytest
import torch
from torch import nn

import qtoolkit as qtk
from qtoolkit.quantize.attention import rewrite_attention
from qtoolkit.quantize.transformer_layers import make_transformers_traceable
from qtoolkit.runtime.ort import make_session

WIDTH, HEADS = 32, 2


class TokenNet(nn.Module):
    """Conv patches, a class token, a stack of encoder layers, a Linear head on the class token."""

    def __init__(self, layers: int = 2, norm_first: bool = False, activation: str = "relu") -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, WIDTH))
        layer = nn.TransformerEncoderLayer(
            WIDTH,
            HEADS,
            2 * WIDTH,
            dropout=0.0,
            batch_first=True,
            norm_first=norm_first,
            activation=activation,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, 10)
        nn.init.normal_(self.head.weight, std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1)
        return self.head(self.encoder(tokens)[:, 0])


class Seq2SeqNet(nn.Module):
    """``nn.Transformer`` (encoder + decoder; cross-attention stays float) on patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, 8, 8)
        self.transformer = nn.Transformer(
            WIDTH, HEADS, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=2 * WIDTH,
            dropout=0.0, batch_first=True,
        )  # fmt: skip
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.transformer(tokens, tokens[:, :4]).mean(1))


def _batches(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 32, 32, generator=generator) for _ in range(count)]


def _quantize_and_export(model: nn.Module, tmp_path) -> tuple[qtk.QuantizedModel, dict, Counter]:
    torch.manual_seed(0)
    calibration = _batches(4, seed=1)
    quantized = qtk.quantize_model(
        model.eval(), qtk.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
    )
    path = tmp_path / "int8.onnx"
    qtk.export_int8_onnx(quantized.int8_model, calibration[0][:1], path)
    onnx.checker.check_model(str(path), full_check=True)
    parity = qtk.check_parity(quantized.int8_model, path, _batches(4, seed=2))
    optimized = tmp_path / "optimized.onnx"
    make_session(path, optimized_model_path=optimized)
    return quantized, parity, Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


@pytest.mark.parametrize(
    ("norm_first", "activation"), [(False, "relu"), (True, "gelu")], ids=["post_norm_relu", "pre_norm_gelu"]
)
def test_encoder_layers_quantize_and_export(tmp_path, norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    model = TokenNet(norm_first=norm_first, activation=activation)
    quantized, parity, ops = _quantize_and_export(model, tmp_path)
    assert parity["samples"] == 32 and parity["agreement"] >= 0.96, parity
    assert parity["max_abs_diff"] < 0.3, parity
    # every Linear (2 layers x qkv, out_proj, linear1, linear2, and the head) and both attention
    # MatMuls per layer run in integer kernels; nothing of the encoder stays a float MatMul/Gemm
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0
    integer = ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] + ops["QGemm"]
    assert integer == 2 * (4 + 2) + 1
    assert ops["QLinearConv"] == 1
    assert not quantized.details["float_modules"]  # nothing kept float but LayerNorm/GELU (float ops)
    float_ops = " ".join(quantized.details["float_ops"])
    assert float_ops.count("LayerNorm") == 2 * 2
    assert ("GELU" in float_ops or "gelu" in float_ops) == (activation == "gelu")


# full run only (~9 s): the encoder-layer tests cover the same rewrite in the fast subset
@pytest.mark.slow
def test_encoder_decoder_quantizes_with_cross_attention_float(tmp_path) -> None:
    torch.manual_seed(0)
    quantized, parity, ops = _quantize_and_export(Seq2SeqNet(), tmp_path)
    assert parity["agreement"] >= 0.96, parity
    # self-attention of encoder and decoder in integer; the cross-attention (query != key) stays a
    # float MultiheadAttention, named in the warning
    assert ops["QLinearMatMul"] >= 2 * 2
    assert (
        "transformer.decoder.layers.0.multihead_attn (MultiheadAttention)"
        in quantized.details["float_modules"]
    )
    assert not any("self_attn" in name for name in quantized.details["float_modules"])


@pytest.mark.parametrize("build", [TokenNet, lambda: TokenNet(norm_first=True), Seq2SeqNet])
def test_traceable_transformers_are_exact_in_float(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    inputs = torch.randn(3, 3, 32, 32)
    rewritten = copy.deepcopy(model)
    assert make_transformers_traceable(rewritten)
    assert rewrite_attention(rewritten, inputs[:1])
    with torch.no_grad():
        torch.testing.assert_close(rewritten(inputs), model(inputs), atol=1e-5, rtol=1e-5)


def test_attention_inside_a_leaf_module_is_left_alone() -> None:
    class Leafy(nn.TransformerEncoderLayer):  # a torch.nn-namespaced subclass stays an FX leaf
        __module__ = "torch.nn.modules.user"

    model = nn.Sequential(Leafy(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, batch_first=True)).eval()
    assert rewrite_attention(model, torch.randn(1, 5, WIDTH)) == {}
    assert isinstance(model[0].self_attn, nn.MultiheadAttention)


class TextEncoder(nn.Module):
    """Feature frames -> Linear -> nn.TransformerEncoder -> mean -> Linear (a dynamic-PTQ user model)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        for weight in self.encoder.parameters():  # distinct layers, as after training
            if weight.dim() > 1:
                nn.init.xavier_uniform_(weight)
        self.head = nn.Linear(WIDTH, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.proj(x)).mean(1))


@pytest.mark.parametrize("with_example", [True, False], ids=["attention_rewritten", "attention_float"])
def test_dynamic_encoder_exports_with_parity(tmp_path, with_example: bool) -> None:
    torch.manual_seed(0)
    example = torch.randn(1, 9, 12)
    inputs = {"example_input": example} if with_example else {}
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        quantized = qtk.quantize_model(TextEncoder().eval(), qtk.DynamicQuantConfig(), **inputs)
    floated = [str(w.message) for w in said if "MultiheadAttention" in str(w.message)]
    assert len(floated) == (0 if with_example else 1) and all("example_input=" in m for m in floated)
    path = tmp_path / "dynamic.onnx"
    qtk.export_int8_onnx(quantized, example, path)
    onnx.checker.check_model(str(path), full_check=True)
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 9, 12, generator=generator), torch.randn(3, 17, 12, generator=generator)]
    parity = qtk.check_parity(quantized.int8_model, path, batches)
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 0.02, parity
    optimized = tmp_path / "optimized.onnx"
    make_session(path, optimized_model_path=optimized)
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    # proj + head + 2 layers x (linear1, linear2) [+ qkv and out_proj once attention is rewritten]
    assert ops["DynamicQuantizeMatMul"] == 2 + 2 * 2 + (2 * 2 if with_example else 0)


def test_unexpected_quantize_input_is_one_line() -> None:
    with pytest.raises(
        qtk.QtkError,
        match=r"DynamicQuantConfig does not take train_dataset \(it takes: example_input, calibration\)",
    ):
        qtk.quantize_model(TextEncoder(), qtk.DynamicQuantConfig(), train_dataset=[torch.randn(1, 9, 12)])
