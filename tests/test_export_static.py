"""The exported INT8 QDQ ONNX computes what torch's INT8 model computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from models_for_tests import PlainNet, StubbedNet, calibration_batches
from torch import nn
from torchvision.models.quantization.resnet import QuantizableBasicBlock

from qtoolkit.export import export_int8_onnx, export_onnx, onnx_op_counts, to_reference
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize
from qtoolkit.runtime.ort import make_session, model_size_mb


def _static(model, mode="auto", **observer_args):
    config = StaticQuantConfig(observers=ObserverSpec(reduce_range=False, **observer_args), mode=mode)
    batches = calibration_batches()
    return quantize(model.eval(), config, calibration=batches, example_input=batches[0][:1]).int8_model


def _run(path, x):
    session = make_session(path, threads=1)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("model_cls", [StubbedNet, PlainNet])
def test_int8_onnx_matches_torch_int8_within_one_lsb(tmp_path, model_cls):
    int8 = _static(model_cls())
    path = tmp_path / "int8.onnx"
    export_int8_onnx(int8, torch.randn(1, 3, 16, 16), path)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = int8(x).numpy()
    got = _run(path, x)
    # The last quantized op's output scale is one LSB of the logits. Rounding differences of the
    # two kernels (float vs int32 bias) can meet in a residual add: at most 2 LSB, nearly all <= 1.
    output_scale = [m for m in to_reference(int8).modules() if hasattr(m, "scale")][-1].scale
    diff = np.abs(got - expected)
    assert diff.max() <= 2 * output_scale * 1.01
    assert np.mean(diff <= output_scale * 1.01) >= 0.95


def test_fused_resnet_block_exports_without_batchnorm_and_with_int8_weights(tmp_path):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
            self.block = QuantizableBasicBlock(3, 3)

        def forward(self, x):
            return self.dequant(self.block(self.quant(x)))

        def fuse_model(self, is_qat=False):
            self.block.fuse_model(is_qat)

    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    model = Block().eval()
    export_onnx(model, torch.randn(1, 3, 16, 16), fp32_path)
    export_int8_onnx(_static(model), torch.randn(1, 3, 16, 16), int8_path)
    ops = onnx_op_counts(int8_path)
    assert "BatchNormalization" not in ops
    assert ops["Conv"] == 2 and ops["QuantizeLinear"] >= 3
    graph = onnx.load(str(int8_path)).graph
    conv_weights = [i for i in graph.initializer if i.name.endswith("int_weight")]
    assert conv_weights and all(i.data_type == onnx.TensorProto.INT8 for i in conv_weights)
    onnx.checker.check_model(str(int8_path), full_check=True)


def test_int8_onnx_has_dynamic_batch_and_int32_biases(tmp_path):
    int8 = _static(StubbedNet())
    path = tmp_path / "int8.onnx"
    export_int8_onnx(int8, torch.randn(1, 3, 16, 16), path)
    for batch in (1, 5):
        assert _run(path, torch.randn(batch, 3, 16, 16)).shape == (batch, 5)
    graph = onnx.load(str(path)).graph
    assert any(i.data_type == onnx.TensorProto.INT32 for i in graph.initializer)  # quantized biases


def test_fx_mode_keeps_unquantizable_op_in_float_with_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"kept in float.*act \(GELU\)"):
        int8 = _static(PlainNet(), mode="fx")
    path = tmp_path / "int8.onnx"
    export_int8_onnx(int8, torch.randn(1, 3, 16, 16), path)
    assert "Gelu" in onnx_op_counts(path) or "Erf" in onnx_op_counts(path)


def test_per_tensor_weights_and_minmax_export(tmp_path):
    int8 = _static(StubbedNet(), activation="minmax", weight="per_tensor")
    path = tmp_path / "int8.onnx"
    export_int8_onnx(int8, torch.randn(1, 3, 16, 16), path)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = int8(x).numpy()
    assert np.argmax(_run(path, x), 1).tolist() == np.argmax(expected, 1).tolist()


def test_int8_file_is_much_smaller(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3)).eval()
    int8 = _static(model, mode="fx")
    export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "fp32.onnx")
    export_int8_onnx(int8, torch.randn(1, 3, 16, 16), tmp_path / "int8.onnx")
    # 4 bytes -> 1 byte per weight; biases (int32) and per-channel scales stay 4 bytes.
    assert model_size_mb(tmp_path / "fp32.onnx") / model_size_mb(tmp_path / "int8.onnx") > 3.3


def test_export_verb_takes_the_quantized_model_or_its_int8_module(tmp_path):
    """One verb: a static QuantizedModel and its int8_model export the same graph; bad types are one line."""
    from qtoolkit import QtkError

    batches = calibration_batches()
    config = StaticQuantConfig(observers=ObserverSpec(reduce_range=False))
    quantized = quantize(PlainNet().eval(), config, calibration=batches, example_input=batches[0][:1])
    x = torch.randn(2, 3, 16, 16)
    export_int8_onnx(quantized, x, tmp_path / "a.onnx")
    export_int8_onnx(quantized.int8_model, x, tmp_path / "b.onnx")
    assert onnx_op_counts(tmp_path / "a.onnx") == onnx_op_counts(tmp_path / "b.onnx")
    np.testing.assert_array_equal(_run(tmp_path / "a.onnx", x), _run(tmp_path / "b.onnx", x))
    with pytest.raises(QtkError, match="takes a QuantizedModel or a torch INT8 module"):
        export_int8_onnx("model.pt", x, tmp_path / "c.onnx")
    from qtoolkit.evaluate.parity import check_parity  # takes either as well

    both = [check_parity(m, tmp_path / "a.onnx", [x]) for m in (quantized, quantized.int8_model)]
    assert both[0]["max_abs_diff"] == both[1]["max_abs_diff"] and both[0]["agreement"] == both[1]["agreement"]
    with pytest.raises(QtkError, match="check_parity takes a QuantizedModel or a torch INT8 module"):
        check_parity("model.pt", tmp_path / "a.onnx", [x])


class _StemAndChannelsLastMLP(nn.Module):
    """DenseNet's stem (conv, BN, ReLU, max-pool joining a concatenation with a signed branch, so the
    ReLU output's zero point is not 0) and ConvNeXt's channels-last Linear on a 4-D tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool, self.branch = nn.MaxPool2d(2), nn.Conv2d(8, 8, 1)
        self.mlp, self.fc = nn.Linear(16, 12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = torch.cat([x, self.branch(x)], 1)
        x = self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


class _GeluMLPs(nn.Module):
    """Linear -> GELU on a 3-D token tensor (MatMul + Add in ONNX) and on a 2-D one (Gemm), and a
    Linear whose output feeds GELU and a residual Add (the Add is quantized: its output stays INT8)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.up, self.down, self.shared = nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 8)
        self.head_up, self.head = nn.Linear(8, 16), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.down(nn.functional.gelu(self.up(tokens)))
        shared = self.shared(tokens)
        tokens = shared + nn.functional.gelu(shared)
        return self.head(nn.functional.gelu(self.head_up(tokens.mean(1))))


def test_linear_read_only_by_gelu_keeps_a_float_output(tmp_path, monkeypatch):
    """linear_to_float_output: a Linear whose INT8 output only feeds GELU runs as one
    MatMulIntegerToFloat (float bias fused) with no QuantizeLinear/DequantizeLinear pass before GELU;
    a Linear with an integer reader too is left alone. One rounding fewer than torch's INT8 model."""
    from qtoolkit.evaluate.graph_quality import optimized_op_counts
    from qtoolkit.evaluate.parity import check_parity
    from qtoolkit.export import qdq_passes

    int8 = _static(_GeluMLPs(), mode="fx")
    example = torch.randn(1, 3, 16, 16)
    changes = export_int8_onnx(int8, example, tmp_path / "float_out.onnx")
    assert changes["linear_float_outputs"] == 2  # up (MatMul + Add) and head_up (Gemm); not shared
    onnx.checker.check_model(str(tmp_path / "float_out.onnx"), full_check=True)
    assert onnx_op_counts(tmp_path / "float_out.onnx")["MatMulIntegerToFloat"] == 2
    monkeypatch.setattr(qdq_passes, "LINEAR_FLOAT_OUTPUT", False)
    assert export_int8_onnx(int8, example, tmp_path / "plain.onnx")["linear_float_outputs"] == 0

    ours, plain = (optimized_op_counts(tmp_path / f"{n}.onnx") for n in ("float_out", "plain"))
    assert ours["MatMulIntegerToFloat"] == 2 and plain.get("MatMulIntegerToFloat", 0) == 0
    assert ours["QGemm"] == plain["QGemm"] - 2 and ours["Gelu"] == plain["Gelu"] == 3
    assert ours["DequantizeLinear"] <= plain["DequantizeLinear"] - 2  # QGemm's uint8 output read back

    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    rewritten, reference = _run(tmp_path / "float_out.onnx", x), _run(tmp_path / "plain.onnx", x)
    assert np.abs(rewritten - reference).max() < 0.05 * np.abs(reference).max()
    parity = check_parity(int8, tmp_path / "float_out.onnx", [x])
    assert parity["agreement"] >= 0.9, parity


def test_relu_and_linear_rewrites_keep_the_numbers(tmp_path, monkeypatch):
    """relu_on_integers and linear_to_gemm change the ops, not the QDQ arithmetic: run unfused
    (ORT optimizations off), the rewritten file equals the file without them."""
    from qtoolkit.export import linear_passes, qdq_passes

    monkeypatch.setattr(qdq_passes, "LINEAR_TO_GEMM", True)  # the default; a switch for A/B runs
    int8 = _static(_StemAndChannelsLastMLP())
    changes = export_int8_onnx(int8, torch.randn(1, 3, 16, 16), tmp_path / "rewritten.onnx")
    assert changes["relu_on_integers"] == 1 and changes["linear_to_gemm"] == 1
    ops = onnx_op_counts(tmp_path / "rewritten.onnx")
    assert ops.get("Relu", 0) == 0 and ops["Clip"] == 1 and ops.get("MatMul", 0) == 0 and ops["Gemm"] == 2
    monkeypatch.setattr(qdq_passes, "relu_on_integers", lambda model: 0)
    monkeypatch.setattr(linear_passes, "linear_to_gemm", lambda model: 0)
    export_int8_onnx(int8, torch.randn(1, 3, 16, 16), tmp_path / "plain.onnx")
    assert onnx_op_counts(tmp_path / "plain.onnx")["Relu"] == 1

    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3)).numpy()
    runs = [make_session(tmp_path / f"{n}.onnx", 1, optimization="disabled") for n in ("rewritten", "plain")]
    rewritten, plain = (s.run(None, {"input": x})[0] for s in runs)
    np.testing.assert_allclose(rewritten, plain, atol=1e-6)
    fused = _run(tmp_path / "rewritten.onnx", torch.from_numpy(x))  # with QLinearConv, NhwcMaxPool, QGemm
    assert fused.shape == (6, 5) and np.abs(fused - plain).max() < 0.05 * np.abs(plain).max()


class _ScalarOps(nn.Module):
    """timm-style code: functional dropout, `x + eps`, offsets within and beyond the grid's range and
    `total = 0; total += x`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.dropout(torch.relu(self.conv1(x)), p=0.2, training=self.training)
        x = self.conv2(x + 1e-6) + 0.3  # within the range: same integers, shifted zero point
        total = 0
        total += self.conv3(x) + 50.0  # beyond the range: torch requantizes
        return self.head(total.flatten(2).mean(2))


def test_dropout_and_adding_a_number_export_with_parity(tmp_path):
    """quantized::dropout (eval) and quantized::add(x, number) have references: without them the
    export raised "has no ONNX reference yet" (timm's GhostNet, FastViT, EdgeNeXt)."""
    from qtoolkit.evaluate.parity import check_parity

    int8 = _static(_ScalarOps().eval(), mode="fx")
    ops = {str(n.target) for n in int8.graph.nodes if n.op == "call_function"}
    assert {"quantized.dropout", "quantized.add"} <= ops  # the forms this test is about
    x = torch.randn(1, 3, 16, 16)
    export_int8_onnx(int8, x, tmp_path / "m.onnx")
    held_out = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    parity = check_parity(int8, tmp_path / "m.onnx", [held_out])
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4, parity


def test_saturating_torch_depthwise_kernel_is_detected_and_parity_uses_the_simulation(tmp_path):
    """torch's x86 depthwise conv (128 channels or more on this torch) sums u8·s8 products in int16
    pairs with saturation: with inputs and weights at full range its output is not the INT8 math that
    onnxruntime computes (exactly). The conv is named, parity is checked against the exact QDQ
    simulation and is then exact."""
    from qtoolkit.evaluate.parity import SIMULATION, check_parity

    model = nn.Sequential(
        nn.Conv2d(3, 128, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1, groups=128), nn.Flatten(),
        nn.Linear(128 * 8 * 8, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():  # every product at full range: 255 · 127 · 2 > 32767
        for conv in (model[0], model[2]):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    generator = torch.Generator().manual_seed(0)
    data = [torch.rand(4, 3, 8, 8, generator=generator) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"depthwise INT8 conv kernel saturates \(int16 pair sums\) in 2 "):
        quantized = quantize(model, StaticQuantConfig(), calibration=data, example_input=data[0][:1])
    assert quantized.details["torch_saturated_convs"] == ["2"]
    export_int8_onnx(quantized, data[0][:1], tmp_path / "m.onnx")
    held_out = torch.rand(16, 3, 8, 8, generator=generator)
    parity = check_parity(quantized, tmp_path / "m.onnx", [held_out])
    assert parity["reference"]["Conv"] == SIMULATION
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4, parity
    with torch.no_grad():  # torch's own INT8 output is far from that exact math
        torch_gap = (
            (quantized.int8_model(held_out) - to_reference(quantized.int8_model)(held_out)).abs().max()
        )
    assert torch_gap > 0.5
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
    ).eval()
    calm = quantize(
        plain, StaticQuantConfig(), calibration=[torch.randn(4, 3, 8, 8)], example_input=data[0][:1]
    )
    assert calm.details["torch_saturated_convs"] == []  # random weights, signed inputs: exact
