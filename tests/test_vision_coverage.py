"""Any torchvision classifier family exports to INT8 ONNX through the public API (tiny configs).

Per family: export, full ``onnx.checker``, parity with torch INT8, and op counts of the graph ONNX
Runtime actually runs (``optimized_model_filepath``): attention MatMuls and Linear layers in
integer kernels, LayerNorm / BatchNorm-after-concat float between DequantizeLinear and QuantizeLinear.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import qtoolkit as qtk
from qtoolkit.evaluate.graph_quality import optimized_op_counts
from qtoolkit.evaluate.noise_floor import ort_fusion_floor
from qtoolkit.evaluate.parity import SIMULATION, TORCH_INT8
from qtoolkit.export import grid_passes, qdq_passes, to_reference
from qtoolkit.quantize.attention import rewrite_attention
from qtoolkit.runtime.ort import make_session

torchvision = pytest.importorskip("torchvision")
M = torchvision.models
INTEGER_MATMULS = ("QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QGemm")


def _vit() -> nn.Module:
    model = M.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision zero-inits it: constant logits
    return model


def _swin(window: int = 4) -> nn.Module:  # 8x8 map, window 4: the second block is shifted
    return M.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[window, window],
        num_classes=10,
    )  # fmt: skip


def _swin_v2() -> nn.Module:  # Swin V2 blocks: cosine attention, post-norm, CPB-MLP position bias
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    return M.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
        num_classes=10, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2,
    )  # fmt: skip


def _densenet() -> nn.Module:
    return M.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)


def _convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig

    return M.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def _warmed(model: nn.Module, size: int = 32) -> nn.Module:
    """Random init with BatchNorm statistics from random batches (train mode), then eval."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def _batches(count: int, seed: int, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, size, size, generator=generator) for _ in range(count)]


def _export(model: nn.Module, tmp_path, size: int = 32) -> tuple[qtk.QuantizedModel, object, Counter]:
    calibration = _batches(4, seed=1, size=size)
    quantized = qtk.quantize_model(
        _warmed(model, size),
        qtk.StaticQuantConfig(),
        calibration=calibration,
        example_input=calibration[0][:1],
    )
    path = tmp_path / "int8.onnx"
    qtk.export_int8_onnx(quantized.int8_model, calibration[0][:1], path)
    onnx.checker.check_model(str(path), full_check=True)
    optimized = tmp_path / "optimized.onnx"
    make_session(path, optimized_model_path=optimized)
    return quantized, path, Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


def _dequantized_reads(path, op_type: str) -> int:
    """How many ``op_type`` nodes read their data input from a DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return sum(
        node.op_type == op_type and bool(node.input) and producer.get(node.input[0]) == "DequantizeLinear"
        for node in graph.node
    )


def _float_between_qdq(path, op_type: str) -> int:
    """How many ``op_type`` nodes read only DequantizeLinear/initializers and feed only QuantizeLinear."""
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    count = 0
    for node in graph.node:
        if node.op_type != op_type:
            continue
        reads = [producer[i] for i in node.input if i in producer]
        feeds = consumers.get(node.output[0], [])
        count += bool(reads) and set(reads) == {"DequantizeLinear"} and set(feeds) == {"QuantizeLinear"}
    return count


def _parity(quantized: qtk.QuantizedModel, path) -> dict:
    parity = qtk.check_parity(quantized.int8_model, path, _batches(4, seed=2))
    assert parity["samples"] == 32
    # 32 random inputs of a random net: near-tied logits. onnxruntime's fused integer kernels round a
    # few values 1 LSB off the QDQ graph as written (the kernel floor: the same file unfused vs fused)
    # and the flips that causes are not the export's; the export itself is held to the floor
    floor = ort_fusion_floor(path, _batches(4, seed=2))
    assert parity["agreement"] >= min(0.96, floor["agreement"] - 1 / 32), (parity, floor)
    assert floor["agreement"] >= 0.9, floor
    return parity


def test_vit_attention_and_linear_run_in_integer(tmp_path) -> None:
    quantized, path, ops = _export(_vit(), tmp_path)
    parity = _parity(quantized, path)
    # torch's INT8 model and its QDQ simulation agree exactly: the class-token cat (unequal input
    # qparams) rounds onto its first input's grid in both (int8_rules.cat_on_int8; before: 0.19 off)
    inputs = torch.cat(_batches(4, seed=2))
    with torch.no_grad():
        simulated = to_reference(quantized.int8_model)(inputs)
        assert (simulated - quantized.int8_model(inputs)).abs().max() < 1e-4
    # logit std ~0.5; ORT's fused kernels round a few values 1 LSB off the float simulation and the
    # LayerNorms amplify that (measured 0.18-0.31 over 32 inputs)
    assert parity["max_abs_diff"] < 0.4
    assert ops["QLinearConcat"] == 1  # class token + patch tokens, on the first input's grid
    # 2 layers x (q·kᵀ, attn·v) activation MatMuls and (qkv, out_proj, 2 MLP) Linear layers + head
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0
    assert ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] + ops["QGemm"] == 2 * 2 + 2 * 4 + 1
    assert ops["QLinearMatMul"] >= 4  # the attention MatMuls: both inputs and the output quantized
    # Linear layers on [batch, tokens, C]: one QGemm each with its int32 bias (qdq_passes.LINEAR_TO_GEMM;
    # no float bias Add), and the head; the first MLP Linear feeds only GELU: MatMulIntegerToFloat with
    # its float bias fused (linear_passes.linear_to_float_output)
    assert ops["QGemm"] == 2 * 3 + 1 and ops["MatMulIntegerToFloat"] == 2 and ops.get("Add", 0) == 0
    assert ops["LayerNormalization"] == 5 == _float_between_qdq(path, "LayerNormalization")
    assert parity["reference"]["MatMul"] == TORCH_INT8
    assert parity["reference"]["LayerNormalization"] == TORCH_INT8
    assert any("LayerNorm" in name for name in quantized.details["float_ops"])
    assert any("GELU" in name for name in quantized.details["float_modules"])
    # residual stream on the INT8 grid: 2 layers x 2 residual Adds + the position embedding, each a
    # QLinearAdd (torch's quantized::add; both inputs and the output quantized), none left float
    assert ops["QLinearAdd"] == 2 * 2 + 1
    # q, k, v are picked out of the in-projection on the integers and only then requantized onto
    # their own grids (grid_passes.select_on_integers; before: 7 Gathers each dequantizing all of qkv)
    assert _dequantized_reads(tmp_path / "optimized.onnx", "Gather") == 0


# full run only (~9 s): test_vit_attention_and_linear_run_in_integer stays in the fast subset
@pytest.mark.slow
def test_vit_q_k_v_share_the_in_projection_grid_and_scale_folds(tmp_path, monkeypatch) -> None:
    quantized, _, ops = _export(_vit(), tmp_path)
    graph = quantized.int8_model.graph
    # q, k, v are picked out of the INT8 in-projection and stay on its grid (int8_rules.select_on_int8):
    # no quantize reads a pick, and no dequantize feeds one
    picks = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.getitem]
    assert not any(u.target is torch.quantize_per_tensor for p in picks for u in p.users)
    assert sum(p.args[0].op == "call_method" and p.args[0].target == "dequantize" for p in picks) == 0
    # 1/√d is applied in the softmax and folds into its DequantizeLinear: QLinearSoftmax per layer
    assert ops["QLinearSoftmax"] == 2 and ops.get("Softmax", 0) == 0 and ops.get("Mul", 0) == 0
    monkeypatch.setattr(grid_passes, "fold_scale_into_dequantize", lambda model: 0)
    changes = qtk.export_int8_onnx(quantized.int8_model, _batches(1, seed=1)[0][:1], tmp_path / "plain.onnx")
    assert changes["scales_folded_into_dequantize"] == 0
    x = _batches(1, seed=3)[0].numpy()
    runs = [make_session(tmp_path / n, optimization="disabled") for n in ("int8.onnx", "plain.onnx")]
    folded, plain = (r.run(None, {r.get_inputs()[0].name: x})[0] for r in runs)
    np.testing.assert_allclose(folded, plain, atol=1e-5)  # (x − zp)·s·c either way


def test_swin_window_attention_runs_in_integer(tmp_path) -> None:
    quantized, path, ops = _export(_swin(), tmp_path)
    parity = _parity(quantized, path)
    assert parity["max_abs_diff"] < 0.05
    # 4 blocks x (2 attention MatMuls + qkv, proj, 2 MLP) + patch merging + head
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0
    assert sum(ops[k] for k in INTEGER_MATMULS) == 4 * 6 + 1 + 1
    assert ops["QLinearMatMul"] >= 8
    # softmax(s + position bias [+ shift mask]) stays a float island in every window (OpenVINO cannot
    # compile the integer bias Add: attention.py)
    assert ops["Softmax"] == 4 and ops.get("QLinearSoftmax", 0) == 0
    # Linear layers on windows/tokens: one QGemm each (LINEAR_TO_GEMM), and the head, but the first MLP
    # Linear (feeds only GELU: MatMulIntegerToFloat); the only float Adds are the 4 softmax position biases
    assert ops["QGemm"] == 4 * 3 + 1 and ops["MatMulIntegerToFloat"] == 4 and ops["Add"] == 4
    assert _float_between_qdq(path, "LayerNormalization") >= 9
    assert sum("softmax" in name for name in quantized.details["float_ops"]) == 4
    assert ops["QLinearAdd"] == 4 * 2  # both residual Adds of the 4 blocks
    assert _dequantized_reads(tmp_path / "optimized.onnx", "Gather") == 0  # q, k, v picked in int8


@pytest.mark.slow  # two exports (~18 s); the fast subset keeps the V1 window-attention test
def test_swin_v2_window_attention_projections_run_in_integer(tmp_path, monkeypatch) -> None:
    """torchvision's ShiftedWindowAttentionV2 is rewritten too: its qkv/proj Linears and attn·V run as
    integer kernels (before: one fx.wrap-ed float function, 36 float MatMuls in swin_v2_t); only
    the scaled cosine scores, the bias Add and softmax stay float."""
    torch.manual_seed(0)
    model = _warmed(_swin_v2(), 32)
    x = _batches(1, seed=7, size=32)[0]
    rewritten = copy.deepcopy(model)
    assert len(rewrite_attention(rewritten, x[:1])) == 4  # every block's attention
    with torch.no_grad():  # the rewrite is the same function in float
        torch.testing.assert_close(rewritten(x), model(x), atol=1e-5, rtol=1e-4)
    quantized, path, ops = _export(model, tmp_path)
    # Post-norm blocks: proj and the second MLP Linear feed a LayerNorm, so they keep a float output
    # (linear_to_float_output, one rounding earlier than torch's INT8 model, which these LayerNorms
    # amplify on a random net); without that rule the file is held to torch's INT8 model as usual.
    assert qtk.check_parity(quantized, path, _batches(4, seed=2))["max_abs_diff"] < 0.05
    monkeypatch.setattr(qdq_passes, "LINEAR_FLOAT_OUTPUT", False)
    qtk.export_int8_onnx(quantized, _batches(1, seed=1)[0][:1], tmp_path / "exact.onnx")
    assert _parity(quantized, tmp_path / "exact.onnx")["max_abs_diff"] < 0.05
    blocks = 4
    # per block qkv, proj and 2 MLP Linears, the patch merging, the head: each an integer kernel
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0
    assert ops["QGemm"] + ops["MatMulIntegerToFloat"] == blocks * 4 + 1 + 1
    assert ops["QLinearMatMul"] == blocks  # attn · V
    assert ops["FusedMatMul"] == blocks and ops["ReduceL2"] == 2 * blocks  # cosine scores, float
    assert ops["Softmax"] == blocks and ops["Add"] == blocks  # softmax(s + bias [+ mask])


def test_densenet_batchnorm_after_concat_stays_float(tmp_path) -> None:
    quantized, path, ops = _export(_densenet(), tmp_path)
    _parity(quantized, path)
    convs = sum(isinstance(m, nn.Conv2d) for m in _densenet().modules())
    # The stem ReLU's output shares qparams with every concatenation it joins (torch.ao's cat rule:
    # zero point != 0), so ORT cannot drop it; qdq_passes.relu_on_integers applies it to the uint8
    # tensor (Clip at zp) after the max-pool. Before: FusedConv + float MaxPool (densenet121 b8 1.13x).
    assert ops["QLinearConv"] == convs and ops["FusedConv"] == 0 and ops["Conv"] == 0
    assert ops["NhwcMaxPool"] == 1 and ops["MaxPool"] == 0 and ops["Clip"] == 1
    counted = optimized_op_counts(path)  # that Clip reads uint8: integer work, not a float island
    assert counted["Clip(int)"] == 1 and "Clip" not in counted
    assert ops["QGemm"] == 1
    bn_relu = [n for n in quantized.details["float_ops"] if "BNReLU2d" in n or "BatchNorm" in n]
    assert len(bn_relu) == 2 * 2 + 1 + 1  # norm1 of each dense layer, the transition, norm5


def test_convnext_layer_norm_stays_float(tmp_path) -> None:
    quantized, path, ops = _export(_convnext(), tmp_path)
    parity = _parity(quantized, path)
    assert ops["QLinearConv"] == sum(isinstance(m, nn.Conv2d) for m in _convnext().modules())
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0 and ops["Conv"] == 0
    # channels-last MLP Linear layers and the head: one QGemm each with its int32 bias
    # (qdq_passes.LINEAR_TO_GEMM: no float bias Add), but the expanding Linear before GELU, which is a
    # MatMulIntegerToFloat with its float bias fused (linear_passes.linear_to_float_output)
    linears = sum(isinstance(m, nn.Linear) for m in _convnext().modules())
    blocks = sum(type(m).__name__ == "CNBlock" for m in _convnext().modules())
    assert (
        ops["QGemm"] == linears - blocks and ops["MatMulIntegerToFloat"] == blocks and ops.get("Add", 0) == 0
    )
    norms = sum(isinstance(m, nn.LayerNorm) for m in _convnext().modules())
    assert ops["LayerNormalization"] == norms == _float_between_qdq(path, "LayerNormalization")
    assert parity["reference"]["LayerNormalization"] == TORCH_INT8
    assert ops["QLinearAdd"] == blocks and ops["QLinearMul"] == blocks  # residual Add, layer scale


@pytest.mark.parametrize(
    ("build", "size"),
    [(_vit, 32), (_swin, 32), (lambda: _swin(window=3), 40)],
    ids=["vit", "swin", "swin_pad"],
)
def test_attention_rewrite_is_exact_in_float(build, size) -> None:
    model = build().eval()
    inputs = torch.randn(3, 3, size, size)
    rewritten = copy.deepcopy(model)
    assert rewrite_attention(rewritten, inputs[:1])
    with torch.no_grad():
        torch.testing.assert_close(rewritten(inputs), model(inputs), atol=1e-5, rtol=1e-5)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python control flow on a tensor value: FX cannot trace it
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_model_gets_one_line_naming_the_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), _DataDependent())).eval()
    data = [torch.randn(2, 3, 8, 8)]
    with pytest.raises(qtk.QtkError) as caught:
        qtk.quantize_model(model, qtk.StaticQuantConfig(mode="fx"), calibration=data, example_input=data[0])
    message = str(caught.value)
    assert "\n" not in message
    assert "module '1.1' (_DataDependent)" in message
    assert "make that forward traceable" in message and "QuantStub/DeQuantStub" in message
    assert "mode: eager" in message


def test_parity_names_simulated_op_kinds(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 5)).eval()
    data = _batches(2, seed=3)
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=data, example_input=data[0][:1]
    )
    path = tmp_path / "m.onnx"
    qtk.export_int8_onnx(quantized.int8_model, data[0][:1], path)
    assert qtk.check_parity(quantized.int8_model, path, data)["reference"] == {
        "Conv": TORCH_INT8,
        "Gemm": TORCH_INT8,
    }
    quantized.int8_model.qtk_simulated_ops = {"Gemm"}
    parity = qtk.check_parity(quantized.int8_model, path, data)
    assert parity["reference"] == {"Conv": TORCH_INT8, "Gemm": SIMULATION}
    assert parity["agreement"] == 1.0


class _ScaledBranches(nn.Module):
    """Python-number products of quantized tensors (swin_v2's ``16 * sigmoid(bias)``): quantized::mul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # output straight after the products: a mean or head would add 1-LSB ties
        return (16 * torch.sigmoid(y) + y * -0.5).flatten(1)


def test_product_with_a_python_number_exports_exactly(tmp_path) -> None:
    model = _ScaledBranches().eval()
    data = _batches(2, seed=4)
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=data, example_input=data[0][:1]
    )
    scalar_muls = [
        n for n in quantized.int8_model.graph.nodes if "quantized.mul" in str(n.target) and len(n.args) == 2
    ]
    assert len(scalar_muls) == 2  # before: "not enough values to unpack" in to_reference
    path = tmp_path / "scaled.onnx"
    qtk.export_int8_onnx(quantized.int8_model, data[0][:1], path)
    onnx.checker.check_model(str(path), full_check=True)
    inputs = torch.cat(data)
    with torch.no_grad():  # the float reference (what is exported) computes torch's INT8 exactly
        simulated = to_reference(quantized.int8_model)(inputs)
        assert (simulated - quantized.int8_model(inputs)).abs().max() < 1e-5
    assert qtk.check_parity(quantized.int8_model, path, data)["agreement"] == 1.0


def test_prelu_stays_float_and_matches_torch(tmp_path) -> None:
    # torch.ao's quantized PReLU was wrong on positive inputs (1.16 off float) and crashed with
    # per-channel weight observers; it now stays a float F.prelu between DQ and Q
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8), nn.Flatten()).eval()
    with torch.no_grad():
        model[2].weight.uniform_(-0.5, 0.5)
    data = _batches(2, seed=5)
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=data, example_input=data[0][:1]
    )
    assert quantized.details["float_modules"] == ["2 (PReLU)"]
    inputs = torch.cat(data)
    with torch.no_grad():
        int8 = quantized.int8_model(inputs)
        off = (to_reference(quantized.int8_model)(inputs) - int8).abs()
        conv_lsb = quantized.int8_model.get_submodule("0").scale  # fbgemm vs float rounding ties only
        assert off.max() <= conv_lsb * 1.01 and (off > 1e-6).float().mean() < 0.01
        # torch's quantized PReLU put most positive outputs many LSBs off (up to 1.16); the histogram
        # observer's clipped tails aside, INT8 now sits within an LSB of float
        assert (int8 - model(inputs)).abs().median() < conv_lsb
    path = tmp_path / "prelu.onnx"
    qtk.export_int8_onnx(quantized.int8_model, data[0][:1], path)
    onnx.checker.check_model(str(path), full_check=True)
    assert qtk.check_parity(quantized.int8_model, path, data)["agreement"] == 1.0


def test_conv_transpose_stays_float_not_a_crash() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.Flatten()).eval()
    data = _batches(1, seed=6)
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=data, example_input=data[0][:1]
    )
    assert quantized.details["float_modules"] == ["1 (ConvTranspose2d: no INT8 ONNX export yet)"]


@pytest.mark.slow  # two video networks (~15 s)
@pytest.mark.parametrize("arch", ["r3d_18", "r2plus1d_18"])
def test_video_classifiers_run_conv3d_in_integer(arch: str, tmp_path) -> None:
    """torchvision's video classifiers (Conv3d stems and blocks, (2+1)-D factorised convs): every
    conv an integer QLinearConv in ORT's graph, no float op left, parity with torch INT8."""
    from torchvision.models import video

    torch.manual_seed(0)
    model = getattr(video, arch)(num_classes=5)
    generator = torch.Generator().manual_seed(1)
    clips = [torch.randn(4, 3, 4, 32, 32, generator=generator) for _ in range(4)]  # [batch, C, T, H, W]
    with torch.no_grad():  # BatchNorm statistics from random clips, as _warmed does for images
        model.train()
        for clip in clips[:2]:
            model(clip)
    model.eval()
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=clips, example_input=clips[0][:1]
    )
    path = tmp_path / "int8.onnx"
    qtk.export_int8_onnx(quantized, clips[0][:1], path)
    counts = optimized_op_counts(path)
    convs = sum(isinstance(m, nn.Conv3d) for m in model.modules())
    assert counts["QLinearConv"] == convs and counts["QGemm"] == 1, counts
    assert not {"Conv", "FusedConv", "Gemm", "Add", "Relu"} & set(counts), counts
    assert counts["DequantizeLinear"] == 1, counts  # the logits only
    parity = qtk.check_parity(quantized, path, clips)
    print(f"{arch}: QLinearConv {counts['QLinearConv']}, parity {parity['agreement']:.1%}")
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 0.01


def test_submodule_named_like_a_graph_module_attribute_is_one_clear_line() -> None:
    """A metadata branch called ``meta`` clashes with GraphModule.meta (FX's error blamed control flow)."""

    class WithMeta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.meta = nn.Conv2d(3, 4, 3), nn.Linear(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)) + self.meta(x[:, 0, 0, :2])

    data = [torch.randn(2, 3, 8, 8)]
    with pytest.raises(qtk.QtkError, match="its submodule 'meta' is named like an attribute") as caught:
        qtk.quantize_model(
            WithMeta().eval(), qtk.StaticQuantConfig(), calibration=data, example_input=data[0]
        )
    assert "\n" not in str(caught.value) and "self.meta_net" in str(caught.value)
