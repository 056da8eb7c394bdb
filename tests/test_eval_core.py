"""The one evaluation core: runners (torch, ORT) over any batch shape, pure metrics, check_parity
with tuple and named inputs, and the ORT-quantizer wrapper with named calibration feeds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.metrics import accuracy, agreement, agreement_metrics, max_abs_diff, mcnemar
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.peers.ort_quantizer import ort_quantize_static
from qtoolkit.runtime.batches import collect_logits, split_batch
from qtoolkit.runtime.ort import make_session, ort_runner
from qtoolkit.runtime.torch_runner import torch_runner

FEATURES, CLASSES = 6, 4


class TwoInputs(nn.Module):
    """logits = a @ Wa + b @ Wb: a model with two positional (or named) inputs."""

    def __init__(self, wa: np.ndarray, wb: np.ndarray) -> None:
        super().__init__()
        self.wa, self.wb = torch.from_numpy(wa), torch.from_numpy(wb)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ self.wa + b @ self.wb


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((FEATURES, CLASSES)).astype(np.float32),
            rng.standard_normal((FEATURES, CLASSES)).astype(np.float32))  # fmt: skip


def _two_input_onnx(path, wa: np.ndarray, wb: np.ndarray) -> None:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", FEATURES]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])
    nodes = [
        helper.make_node("MatMul", ["a", "wa"], ["ya"]),
        helper.make_node("MatMul", ["b", "wb"], ["yb"]),
        helper.make_node("Add", ["ya", "yb"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")]
    graph = helper.make_graph(nodes, "two_inputs", inputs, [output], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _batches(n: int = 3, size: int = 5) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, FEATURES, generator=generator), torch.randn(size, FEATURES, generator=generator),
         torch.randint(0, CLASSES, (size,), generator=generator))
        for _ in range(n)
    ]  # fmt: skip


def test_split_batch_shapes() -> None:
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert split_batch(x) == (x, None)
    assert split_batch((x, y))[1] is y
    named = {"a": x, "b": x}
    assert split_batch(named) == (named, None)
    assert split_batch((named, y)) == (named, y)
    assert split_batch((x, x), arity=2) == ((x, x), None)
    assert split_batch((x, x, y), arity=2) == ((x, x), y)
    assert split_batch(((x, x), y), arity=2) == ((x, x), y)
    with pytest.raises(QtkError, match="2 inputs"):
        split_batch((x, x, y, y), arity=2)


@pytest.mark.parametrize("shape", ["tuple", "dict", "tuple+label", "dict+label", "nested+label"])
def test_check_parity_with_several_named_inputs(tmp_path, shape: str) -> None:
    wa, wb = _weights()
    path = tmp_path / "two.onnx"
    _two_input_onnx(path, wa, wb)
    make = {
        "tuple": lambda a, b, y: (a, b),
        "dict": lambda a, b, y: {"a": a, "b": b},
        "tuple+label": lambda a, b, y: (a, b, y),
        "dict+label": lambda a, b, y: ({"b": b, "a": a}, y),
        "nested+label": lambda a, b, y: ((a, b), y),
    }[shape]
    batches = (make(*batch) for batch in _batches())  # a generator: check_parity makes one pass
    parity = check_parity(TwoInputs(wa, wb), path, batches)
    assert parity["samples"] == 15
    assert parity["agreement"] == 1.0
    assert parity["max_abs_diff"] < 1e-5


def test_check_parity_sees_a_different_model(tmp_path) -> None:
    wa, wb = _weights()
    path = tmp_path / "two.onnx"
    _two_input_onnx(path, wa, -wb)  # the ONNX file is not the torch model
    parity = check_parity(TwoInputs(wa, wb), path, [{"a": a, "b": b} for a, b, _ in _batches()])
    assert parity["max_abs_diff"] > 0.5
    assert parity["agreement"] < 0.9


def test_runners_collect_logits_and_labels(tmp_path) -> None:
    wa, wb = _weights()
    path = tmp_path / "two.onnx"
    _two_input_onnx(path, wa, wb)
    session = make_session(path, threads=1)
    batches = [(a, b, y) for a, b, y in _batches()]
    got = collect_logits(
        {"torch": torch_runner(TwoInputs(wa, wb)), "ort": ort_runner(session)}, batches, arity=2
    )
    labels = np.concatenate([y.numpy() for *_, y in batches])
    np.testing.assert_array_equal(got.labels, labels)
    expected = np.concatenate([a.numpy() @ wa + b.numpy() @ wb for a, b, _ in batches])
    np.testing.assert_allclose(got.logits["torch"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.logits["ort"], expected, rtol=0, atol=1e-5)
    with pytest.raises(QtkError, match="no batches"):
        collect_logits({"ort": ort_runner(session)}, [])
    with pytest.raises(QtkError, match=r"has no \['b'\]"):
        ort_runner(session)({"a": batches[0][0]})


def test_metrics_are_exact() -> None:
    assert accuracy(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0])) == 0.75
    assert agreement(np.array([1, 1]), np.array([1, 0])) == 0.5
    assert max_abs_diff(np.array([[1.0, 2.0]]), np.array([[1.5, -1.0]])) == 3.0
    same = agreement_metrics(np.eye(6), np.eye(6))
    assert (same.top1, same.top5_overlap, same.samples) == (1.0, 1.0, 6)
    assert same.cosine == pytest.approx(1.0)
    flipped = agreement_metrics(np.eye(6), -np.eye(6))
    assert flipped.cosine == pytest.approx(-1.0)
    a = np.array([True] * 10 + [False] * 2)
    b = np.array([False] * 10 + [True] * 2)
    test = mcnemar(a, b)  # 10 vs 2 discordant: p = 2 * P[Bin(12, 1/2) <= 2] = 2 * 79 / 4096
    assert (test["only_a"], test["only_b"]) == (10, 2)
    assert test["p_value"] == pytest.approx(2 * 79 / 4096)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_ort_quantize_static_with_named_feeds(tmp_path) -> None:
    wa, wb = _weights()
    fp32, int8 = tmp_path / "two.onnx", tmp_path / "two_int8.onnx"
    _two_input_onnx(fp32, wa, wb)
    calibration = [{"a": a.numpy(), "b": b.numpy()} for a, b, _ in _batches(4)]
    ort_quantize_static(fp32, int8, calibration, None, per_channel=False)
    ops = [node.op_type for node in onnx.load(int8).graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    assert not (tmp_path / "two_int8_preprocessed.onnx").exists()
    feeds = calibration[0]
    got = make_session(int8, threads=1).run(None, feeds)[0]
    expected = feeds["a"] @ wa + feeds["b"] @ wb
    assert max_abs_diff(got, expected) < 0.1 * np.abs(expected).max()
    with pytest.raises(QtkError, match="input_name"):
        ort_quantize_static(fp32, int8, [feeds["a"]], None)


def test_check_parity_takes_one_batch_as_well_as_an_iterable(tmp_path):
    """A bare tensor is one batch (iterating it would feed the model rows without a batch axis)."""
    from qtoolkit import DynamicQuantConfig, check_parity, export_int8_onnx, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    quantized = quantize_model(model, DynamicQuantConfig())
    x = torch.randn(8, 16)
    export_int8_onnx(quantized, x, tmp_path / "m.onnx")
    one = check_parity(quantized.int8_model, tmp_path / "m.onnx", x)
    listed = check_parity(quantized.int8_model, tmp_path / "m.onnx", [x])
    assert one["samples"] == listed["samples"] == 8
    assert one["max_abs_diff"] == listed["max_abs_diff"]
