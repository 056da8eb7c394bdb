"""Graph quality per model family: after onnxruntime's optimizer, qtoolkit's INT8 graph has no more
float compute ops, DequantizeLinear nodes and layout Transposes than onnxruntime's own
``quantize_static`` (QDQ, per-channel, MinMax) gives on the same FP32 ONNX, and fuses the same
integer kernels. Small nets built from torchvision's own blocks, 32x32 inputs: a regression in
Q/DQ placement shows up as op counts, without timing anything.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torchvision.models.efficientnet import MBConv, MBConvConfig
from torchvision.models.googlenet import Inception
from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
from torchvision.models.mobilenetv3 import InvertedResidual as V3Block
from torchvision.models.mobilenetv3 import InvertedResidualConfig
from torchvision.models.resnet import BasicBlock
from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleUnit
from torchvision.models.squeezenet import Fire

import qtoolkit
from qtoolkit.evaluate.graph_quality import graph_quality, optimized_op_counts
from qtoolkit.peers.ort_quantizer import ort_quantize_static


def _stem(channels: int, act: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    return [nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), act()]


def _head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]


class _FunctionalPoolHead(nn.Module):
    """torchvision MobileNetV2's head: functional ``adaptive_avg_pool2d(x, (1, 1))``, flatten, Linear."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1))


class _ResNetHead(nn.Module):
    """torchvision ResNet's head: AdaptiveAvgPool2d module, ``torch.flatten(x, 1)``, Linear."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


FAMILIES = {  # name -> (builder, integer kernels both graphs must have)
    "resnet_basic_block": (
        lambda: nn.Sequential(*_stem(16), nn.MaxPool2d(3, 2, 1), BasicBlock(16, 16), _ResNetHead(16)),
        {"QLinearAdd": 1, "QGemm": 1},
    ),
    "mobilenetv2_functional_pool": (  # the pool must not become as_strided/Gather index arithmetic
        lambda: nn.Sequential(*_stem(16, nn.ReLU6), nn.Conv2d(16, 16, 3, 2, 1), V2Block(16, 24, 2, 6),
                              V2Block(24, 24, 1, 6), nn.Conv2d(24, 32, 1), nn.BatchNorm2d(32), nn.ReLU6(),
                              _FunctionalPoolHead(32)),
        {"QLinearAdd": 1, "QGemm": 1},
    ),
    "squeezenet_fire": (
        lambda: nn.Sequential(*_stem(16), Fire(16, 8, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
                              Fire(32, 8, 16, 16), nn.Conv2d(32, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        {"QLinearConcat": 2, "NhwcMaxPool": 1},
    ),
    "googlenet_inception": (
        lambda: nn.Sequential(*_stem(16), nn.MaxPool2d(3, 2, ceil_mode=True), Inception(16, 8, 8, 16, 4, 8, 8),
                              Inception(40, 8, 8, 16, 4, 8, 8), *_head(40)),
        {"QLinearConcat": 2, "NhwcMaxPool": 3},
    ),
    "shufflenet_unit": (
        lambda: nn.Sequential(*_stem(16), ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1), *_head(32)),
        {"QLinearConcat": 2, "Split": 1},
    ),
    "efficientnet_mbconv_se_silu": (
        lambda: nn.Sequential(*_stem(16, nn.SiLU), MBConv(MBConvConfig(4, 3, 1, 16, 16, 1), 0.2, nn.BatchNorm2d),
                              MBConv(MBConvConfig(4, 3, 2, 16, 24, 1), 0.0, nn.BatchNorm2d), *_head(24)),
        {"QLinearSigmoid": 9, "QLinearMul": 9, "QLinearAdd": 1},
    ),
    "mobilenetv3_hardswish_se": (
        lambda: nn.Sequential(*_stem(16, nn.Hardswish),
                              V3Block(InvertedResidualConfig(16, 3, 64, 24, True, "HS", 1, 1, 1.0), nn.BatchNorm2d),
                              V3Block(InvertedResidualConfig(24, 3, 72, 24, True, "RE", 1, 1, 1.0), nn.BatchNorm2d),
                              *_head(24)),
        {"QLinearMul": 5, "QLinearAdd": 1},
    ),
}  # fmt: skip


def _build(name: str) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = FAMILIES[name][0]().train()
    with torch.no_grad():  # BatchNorm statistics of random data, as a user's warmed-up model has
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32, generator=generator))
    return model.eval(), [torch.randn(8, 3, 32, 32, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_optimized_graph_no_worse_than_ort_quantizer(name: str, tmp_path) -> None:
    model, calibration = _build(name)
    example = calibration[0][:1]
    config = qtoolkit.StaticQuantConfig(observers=qtoolkit.ObserverSpec(activation="minmax"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = qtoolkit.quantize_model(model, config, calibration=calibration, example_input=example)
    int8 = result.int8_model
    assert result.details["float_modules"] == []  # SiLU, Hardswish, sigmoid gates: all run on INT8
    qtoolkit.export_onnx(model, example, tmp_path / "fp32.onnx")
    qtoolkit.export_int8_onnx(int8, example, tmp_path / "int8.onnx")
    ort_quantize_static(
        tmp_path / "fp32.onnx", tmp_path / "ort.onnx", [b.numpy() for b in calibration], "input"
    )

    for path in (tmp_path / "int8.onnx", tmp_path / "fp32.onnx"):
        _assert_shape_free_and_batch_dynamic(path)

    ours, peer = optimized_op_counts(tmp_path / "int8.onnx"), optimized_op_counts(tmp_path / "ort.onnx")
    assert not {"Gather", "Range"} & ours.keys(), ours  # global pools: one ReduceMean, no index math
    mine, theirs = graph_quality(ours), graph_quality(peer)
    for key in ("float_ops", "dequantize", "layout"):
        assert mine[key] <= theirs[key], f"{name}: {key} {mine[key]} > ORT's {theirs[key]}\n{ours}\n{peer}"
    assert ours.get("QLinearConv", 0) >= peer.get("QLinearConv", 0) > 0, (ours, peer)
    for op, count in FAMILIES[name][1].items():
        assert ours.get(op, 0) >= count and peer.get(op, 0) >= count, (op, ours, peer)

    parity = qtoolkit.check_parity(
        int8, tmp_path / "int8.onnx", [torch.randn(16, 3, 32, 32) for _ in range(2)]
    )
    assert parity["agreement"] >= 0.98, parity  # torch's INT8 model runs every rewritten op itself


def _assert_shape_free_and_batch_dynamic(path) -> None:
    """Every Reshape/Flatten reads a constant shape (no Shape -> Gather -> Concat subgraph: OpenVINO runs
    that as shape math at run time, and it kept mobilenet_v2 1.75x ORT-quantizer's file there), and
    the batch axis stays dynamic: batch 3 gives the three batch-1 results."""
    from qtoolkit.runtime.ort import make_session

    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    assert not {"Shape", "Size", "Range"} & {n.op_type for n in graph.node}, path.name
    for node in graph.node:
        if node.op_type == "Reshape":
            assert node.input[1] in constants, f"{path.name}: {node.name} reshapes to a computed shape"
    session = make_session(path, 1)
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    together = session.run(None, {"input": batch})[0]
    alone = np.concatenate([session.run(None, {"input": batch[i : i + 1]})[0] for i in range(3)])
    assert together.shape == (3, 10)
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_functional_global_pool_becomes_one_mean() -> None:
    """``F.adaptive_avg_pool2d(x, (1, 1))`` (MobileNetV2's head) is a mean in the QDQ reference: at
    mobilenet_v2's 7x7 map torch.export decomposed the pool into as_strided/Gather index math
    (float Add/Mul/Range in the graph ORT runs)."""
    from qtoolkit.export import to_reference
    from qtoolkit.export.reference import global_mean

    model, calibration = _build("mobilenetv2_functional_pool")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = qtoolkit.quantize_model(
            model, qtoolkit.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
        ).int8_model
    pools = [n for n in int8.graph.nodes if "adaptive_avg_pool" in str(n.target)]
    assert pools, "the converted graph calls the functional pool"
    targets = [n.target for n in to_reference(int8).graph.nodes if n.op == "call_function"]
    assert global_mean in targets and not any("adaptive_avg_pool" in str(t) for t in targets)


def _with_and_without(family, tmp_path, monkeypatch, module, pass_name: str):
    """torch INT8 model of ``family`` exported twice, with ``module.pass_name`` and with it off: the INT8
    model, the export changes, and the optimized op counts of both files (int8.onnx, plain.onnx)."""
    model, calibration = _build(family)
    example = calibration[0][:1]
    config = qtoolkit.StaticQuantConfig(observers=qtoolkit.ObserverSpec(activation="minmax"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = qtoolkit.quantize_model(
            model, config, calibration=calibration, example_input=example
        ).int8_model
    changes = qtoolkit.export_int8_onnx(int8, example, tmp_path / "int8.onnx")
    monkeypatch.setattr(module, pass_name, lambda model: 0)
    qtoolkit.export_int8_onnx(int8, example, tmp_path / "plain.onnx")
    return (
        int8,
        changes,
        optimized_op_counts(tmp_path / "int8.onnx"),
        optimized_op_counts(tmp_path / "plain.onnx"),
    )


def _unfused_outputs(tmp_path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8.onnx and plain.onnx run with onnxruntime's optimizations off (the QDQ arithmetic as written)."""
    from qtoolkit.runtime.ort import make_session

    sessions = [make_session(tmp_path / n, 1, optimization="disabled") for n in ("int8.onnx", "plain.onnx")]
    rewritten, plain = (s.run(None, {"input": x})[0] for s in sessions)
    return rewritten, plain


def test_hardsigmoid_runs_as_an_integer_add(tmp_path, monkeypatch) -> None:
    """hardsigmoid on torch's fixed [0, 1] grid (squeeze-excite gates, and Hardswish's gate) becomes one
    QLinearAdd in onnxruntime (activation_passes.hardsigmoid_on_integers), where onnxruntime's own
    quantizer leaves every one a float island; the integers are the float island's."""
    from qtoolkit.export import activation_passes

    int8, changes, ours, plain = _with_and_without(
        "mobilenetv3_hardswish_se", tmp_path, monkeypatch, activation_passes, "hardsigmoid_on_integers"
    )
    gates = plain["HardSigmoid"]
    assert gates >= 5 and changes["hardsigmoids_as_integer_adds"] == gates, (changes, plain)
    assert ours.get("HardSigmoid", 0) == 0 and ours["QLinearAdd"] == plain["QLinearAdd"] + gates, ours
    assert graph_quality(ours)["float_ops"] == graph_quality(plain)["float_ops"] - gates == 0

    x = np.random.default_rng(4).standard_normal((16, 3, 32, 32)).astype(np.float32)
    rewritten, island = _unfused_outputs(tmp_path, x)
    # same integers but where (x + 3)·256/6 lands within float rounding of a .5: a rare 1-LSB gate step
    assert np.abs(rewritten - island).max() < 0.02 * np.abs(island).max()
    parity = qtoolkit.check_parity(int8, tmp_path / "int8.onnx", [torch.from_numpy(x)])
    assert parity["agreement"] >= 0.98, parity


def test_global_means_run_as_integer_global_pools(tmp_path, monkeypatch) -> None:
    """Squeeze-excite's squeeze and the head's pool (ReduceMean over H, W in torch's export) become
    GlobalAveragePool (grid_passes.spatial_means_as_global_pools), which onnxruntime fuses into
    QLinearGlobalAveragePool on the uint8 map; as ReduceMean the whole map was dequantized to float
    (onnxruntime's own quantizer's file too). The same mean: unfused, both files give the same logits."""
    from qtoolkit.export import grid_passes

    int8, changes, ours, plain = _with_and_without(
        "efficientnet_mbconv_se_silu", tmp_path, monkeypatch, grid_passes, "spatial_means_as_global_pools"
    )
    means = plain["ReduceMean"]
    assert means == 3 and changes["means_as_global_pools"] == means, (changes, plain)  # 2 SE squeezes + head
    assert ours.get("ReduceMean", 0) == 0 and ours["QLinearGlobalAveragePool"] == means, ours
    assert ours["DequantizeLinear"] <= plain["DequantizeLinear"] - means, (ours, plain)

    x = np.random.default_rng(6).standard_normal((8, 3, 32, 32)).astype(np.float32)
    pooled, reduced = _unfused_outputs(tmp_path, x)
    np.testing.assert_allclose(pooled, reduced, atol=1e-5)
    parity = qtoolkit.check_parity(int8, tmp_path / "int8.onnx", [torch.from_numpy(x)])
    assert parity["agreement"] >= 0.98, parity


def test_model_ending_in_a_global_pool_exports(tmp_path) -> None:
    """A pool that is the graph output stays a ReduceMean (spatial_means_as_global_pools keeps graph
    outputs as they are; before, the export failed there)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1)).eval()
    calibration = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = qtoolkit.quantize_model(
            model, qtoolkit.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
        )
    changes = qtoolkit.export_int8_onnx(quantized, calibration[0][:1], tmp_path / "int8.onnx")
    assert changes["means_as_global_pools"] == 0
    parity = qtoolkit.check_parity(quantized, tmp_path / "int8.onnx", calibration)
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 0.05, parity


def test_clip_on_uint8_counts_as_integer_work(tmp_path) -> None:
    """A Clip that reads a uint8 tensor (a ReLU at the zero point, as densenet's stem keeps it) is
    counted as ``Clip(int)``, not as a float island; a Clip on a float tensor still is one."""
    from onnx import TensorProto, helper, numpy_helper

    scalar = {"s": np.float32(0.1), "zp": np.uint8(128), "lo": np.uint8(128), "flo": np.float32(0.0)}
    inits = [numpy_helper.from_array(np.array(v), k) for k, v in scalar.items()]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("Reshape", ["xq", "shape"], ["xr"]),
        helper.make_node("Clip", ["xr", "lo"], ["xc"]),  # integer: uint8 in, uint8 out
        helper.make_node("DequantizeLinear", ["xc", "s", "zp"], ["xd"]),
        helper.make_node("Clip", ["xd", "flo"], ["y"]),  # float
    ]
    inits.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    counts = optimized_op_counts(path)
    assert counts["Clip(int)"] == 1 and counts["Clip"] == 1, counts
    assert graph_quality(counts)["float_ops"] == 1


def test_scan_bodies_are_counted(tmp_path) -> None:
    """A dynamic INT8 GRU runs its recurrent GEMM and gates in a Scan body at every step: the
    counts include them (else a GRU model would look like two integer GEMMs and no gates)."""

    class GRUHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.GRU(6, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    quantized = qtoolkit.quantize_model(GRUHead().eval(), qtoolkit.DynamicQuantConfig())
    path = tmp_path / "gru.onnx"
    qtoolkit.export_int8_onnx(quantized, torch.randn(2, 5, 6), path)
    counts = optimized_op_counts(path)
    assert counts["Scan"] == 1
    # the head, the input projection of all steps (outside) and the recurrent GEMM (in the body)
    assert counts["DynamicQuantizeMatMul"] + counts.get("MatMulIntegerToFloat", 0) == 3, counts
    assert counts["Sigmoid"] >= 1 and counts["Tanh"] >= 1, counts  # the gates, in the body
