"""Dynamic INT8 for user models through the public verbs: MLP, LSTM, GRU, several inputs.

torch's dynamic INT8 model is the reference. Parity bounds (max |Δ| printed with -s):
- MLP and GRU run torch's integer arithmetic op for op: ≤ 1e-5 (GRU: or one 8-bit rounding of h
  flipped by float summation order, ≤ 5% of max |INT8 − FP32|).
- LSTM runs in ORT's DynamicQuantizeLSTM: ≤ 1e-5 with one thread. With two threads ORT splits the
  batch of a step across threads and quantizes h_{t−1} per chunk (a finer activation range than
  torch's one range per step), so the logits differ by up to the order of the quantization error
  itself; bounded by max |INT8 − FP32| (measured 0.2–0.65 of it on these tiny models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qtoolkit import DynamicQuantConfig, export_int8_onnx, quantize_model
from qtoolkit.runtime.ort import make_session

EXACT = 1e-5


class SeqClassifier(nn.Module):
    """Embedding → LSTM/GRU → Linear on the last step (the textbook dynamic-INT8 model)."""

    def __init__(
        self, cell: type[nn.Module], bidirectional: bool, batch_first: bool, layers: int = 2
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(50, 12)
        self.rnn = cell(12, 16, layers, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(32 if bidirectional else 16, 3)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        x = x if self.batch_first else x.transpose(0, 1)
        y, _ = self.rnn(x)
        return self.head(y[:, -1] if self.batch_first else y[-1])


def _run(path: Path, feeds: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    return make_session(path, threads).run(None, feeds)[0]


def _optimized_ops(path: Path, tmp_path: Path) -> tuple[list[str], list[list[str]]]:
    """Op types of the graph ORT runs, Scan bodies included, and each Scan body's ops."""
    optimized = tmp_path / "optimized.onnx"
    make_session(path, optimized_model_path=optimized)
    proto = onnx.load(str(optimized))
    ops, bodies = [node.op_type for node in proto.graph.node], []
    for node in proto.graph.node:  # Scan bodies
        for attribute in node.attribute:
            if attribute.g.node:
                bodies.append([n.op_type for n in attribute.g.node])
                ops += bodies[-1]
    return ops, bodies


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize(("bidirectional", "batch_first"), [(False, True), (True, False), (True, True)])
def test_recurrent_quantize_export_parity(
    cell: type[nn.Module], bidirectional: bool, batch_first: bool, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = SeqClassifier(cell, bidirectional, batch_first).eval()
    quantized = quantize_model(model, DynamicQuantConfig())
    kinds = quantized.details["modules"]
    assert kinds["rnn"] == cell.__name__.lower() and kinds["head"] == "linear"
    schemes = {w.qscheme() for w in quantized.int8_model.rnn.get_weight().values()}
    assert schemes == {torch.per_tensor_affine}  # recurrent_per_channel=False, the default
    result = export_int8_onnx(quantized, {"input_ids": torch.randint(0, 50, (2, 7))}, tmp_path / "m.onnx")
    assert result.recurrent == ["rnn.l0", "rnn.l1"]
    for batch, seq, threads in [(1, 5, 2), (4, 11, 1), (4, 11, 2)]:
        ids = torch.randint(0, 50, (batch, seq))
        with torch.no_grad():
            int8, fp32 = quantized.int8_model(ids).numpy(), model(ids).numpy()
        got = _run(result.path, {"input_ids": ids.numpy()}, threads)
        diff, quant_error = float(np.abs(got - int8).max()), float(np.abs(int8 - fp32).max())
        print(
            f"{cell.__name__} bi={bidirectional} bf={batch_first} b{batch} s{seq} t{threads}: "
            f"max|onnx-int8| {diff:.2e}, max|int8-fp32| {quant_error:.2e}"
        )
        assert quant_error > 20 * EXACT  # quantization is visible
        loose = cell is nn.LSTM and threads > 1 and batch > 1
        # GRU: h is re-quantized at every step, so a float-order difference of 1 ulp can move one
        # value across an 8-bit rounding boundary (seen once in 9 per-tensor cases: 2.3e-5, 2% of
        # the quantization error); a wrong export differs by the quantization error itself
        flip = 0.05 * quant_error if cell is nn.GRU else EXACT
        assert diff <= (quant_error if loose else max(EXACT, flip))
    ops, bodies = _optimized_ops(result.path, tmp_path)
    if cell is nn.LSTM:
        assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
    else:  # one input projection per layer outside the Scan, one recurrent GEMM per direction inside
        directions = 2 if bidirectional else 1
        assert ops.count("Scan") == 2 * directions and "GRU" not in ops
        integer = [
            op for op in ops if op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger")
        ]
        assert len(integer) == 1 + 2 + 2 * directions  # head + 2 projections + recurrences
        # each step runs 12 nodes: the fused integer GEMM, one Add + Sigmoid for r and z together, ...
        assert [len(body) for body in bodies] == [12] * 2 * directions
        assert all(body.count("DynamicQuantizeMatMul") == 1 and body.count("Sigmoid") == 1 for body in bodies)
    rnn_weights = sum(p.numel() for n, p in model.named_parameters() if n.startswith("rnn.weight"))
    assert _int8_values(onnx.load(str(result.path)).graph) > rnn_weights  # + the head's


def _int8_values(graph: onnx.GraphProto) -> int:
    """INT8 initializer values in ``graph`` and its subgraphs (Scan bodies hold W_hh)."""
    count = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8)
    return count + sum(_int8_values(a.g) for node in graph.node for a in node.attribute if a.g.node)


class FinalState(nn.Module):
    """Classifies from h_n (LSTM: (h_n, c_n)) and takes an explicit initial state."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.lstm = cell is nn.LSTM  # (after quantization the module is no longer an nn.LSTM)
        self.rnn = cell(6, 10, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        state = (h0, torch.zeros_like(h0)) if self.lstm else h0
        _, last = self.rnn(x, state)
        h_n = last[0] if isinstance(last, tuple) else last
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=-1))


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_final_state_and_initial_state_through_check_parity(cell: type[nn.Module], tmp_path: Path) -> None:
    """Also the per-row weight scales (``recurrent_per_channel=True``) of both cells."""
    from qtoolkit import check_parity

    torch.manual_seed(2)
    quantized = quantize_model(FinalState(cell).eval(), DynamicQuantConfig(recurrent_per_channel=True))
    schemes = {w.qscheme() for w in quantized.int8_model.rnn.get_weight().values()}
    assert schemes == {torch.per_channel_affine}
    example = (torch.randn(3, 5, 6), torch.randn(4, 3, 10))
    result = export_int8_onnx(quantized, example, tmp_path / "h.onnx")
    batches = [(torch.randn(b, s, 6), torch.randn(4, b, 10)) for b, s in ((2, 4), (1, 9))]
    parity = check_parity(quantized.int8_model, result.path, batches, threads=1)
    print(f"{cell.__name__} h_n: max|onnx-int8| {parity['max_abs_diff']:.2e}")
    assert parity["samples"] == 3 and parity["max_abs_diff"] <= EXACT
