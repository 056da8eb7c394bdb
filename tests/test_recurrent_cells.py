"""LSTMCell / GRUCell / RNNCell stepped by the user's own loop: dynamic INT8 through the public verbs.

torch's dynamic cells run quantized cell ops that no exporter handles, so qtoolkit rewrites each cell
into two Linears and its gates (``qtoolkit/quantize/recurrent_cells.py``). Checked here: the rewrite
is the cell's math in float; every step's two products run as integer kernels in onnxruntime; the
ONNX model matches torch's INT8 model (h is re-quantized at every step, so a float-order difference
may move one value across an 8-bit rounding boundary: bound as for the GRU in
test_dynamic_recurrent.py); and the step axis comes out static, because the user's loop unrolls for
the example's length (a dynamic axis there would silently run too few steps on longer inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qtoolkit import DynamicQuantConfig, export_int8_onnx, quantize_model
from qtoolkit.quantize.recurrent_cells import CELL_REWRITES, rewrite_cells
from qtoolkit.runtime.ort import make_session

EXACT = 1e-5
STEPS = 5
CELLS = [nn.LSTMCell, nn.GRUCell, nn.RNNCell]


def _cell(kind: type[nn.Module], bias: bool = True, nonlinearity: str = "tanh") -> nn.Module:
    extra = {"nonlinearity": nonlinearity} if kind is nn.RNNCell else {}
    return kind(12, 16, bias=bias, **extra)


class CellLoop(nn.Module):
    """Embedding → a cell stepped over the sequence by a Python loop → Linear on the last h."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.lstm = isinstance(cell, nn.LSTMCell)  # (the cell is replaced when quantized)
        self.embed = nn.Embedding(50, 12)
        self.cell = cell
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x, state = self.embed(input_ids), None
        for step in range(input_ids.shape[1]):
            state = self.cell(x[:, step], state)
        return self.head(state[0] if self.lstm else state)


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_rewritten_cell_is_the_cells_math(kind: type[nn.Module], bias: bool) -> None:
    torch.manual_seed(0)
    for nonlinearity in ("tanh", "relu") if kind is nn.RNNCell else ("tanh",):
        cell = _cell(kind, bias, nonlinearity)
        holder = nn.Sequential(cell)
        assert rewrite_cells(holder) == ["0"]
        rewritten = holder[0]
        assert type(rewritten) is CELL_REWRITES[kind]
        x = torch.randn(4, 12)
        h = torch.randn(4, 16)
        state = (h, torch.randn(4, 16)) if kind is nn.LSTMCell else h
        with torch.no_grad():
            for args in [(x,), (x, state), (x[0],)]:  # no state, a state, unbatched
                expected, got = cell(*args), rewritten(*args)
                pairs = zip(expected, got, strict=True) if kind is nn.LSTMCell else [(expected, got)]
                for want, have in pairs:
                    assert have.shape == want.shape
                    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "nonlinearity"), [(nn.LSTMCell, "tanh"), (nn.GRUCell, "tanh"), (nn.RNNCell, "relu")]
)
def test_cell_loop_quantizes_and_exports_integer_steps(
    kind: type[nn.Module], nonlinearity: str, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    model = CellLoop(_cell(kind, nonlinearity=nonlinearity)).eval()
    quantized = quantize_model(model, DynamicQuantConfig())
    kinds = quantized.details["modules"]
    assert kinds == {"cell.ih": "linear", "cell.hh": "linear", "head": "linear", "embed": "embedding"}
    # the loop unrolls for the example's steps: the step axis must come out static, not a "seq" that
    # would silently run only STEPS steps of a longer input
    with pytest.warns(
        UserWarning, match=f"axis 1 of input 'input_ids' is fixed by the model at size {STEPS}"
    ):
        result = export_int8_onnx(
            quantized, {"input_ids": torch.randint(0, 50, (2, STEPS))}, tmp_path / "m.onnx"
        )
    session = make_session(result.path, threads=1, optimized_model_path=tmp_path / "optimized.onnx")
    assert session.get_inputs()[0].shape == ["batch", STEPS]
    with pytest.raises(Exception, match="invalid dimensions"):
        session.run(None, {"input_ids": np.zeros((1, STEPS + 3), np.int64)})
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    integer = [op for op in ops if op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")]
    assert len(integer) == 2 * STEPS + 1  # ih and hh at every step, and the head
    assert not {"Gemm", "MatMul", "FusedGemm", "FusedMatMul"} & set(ops)  # no float product left
    for batch in (1, 4):
        ids = torch.randint(0, 50, (batch, STEPS))
        with torch.no_grad():
            int8, fp32 = quantized.int8_model(ids).numpy(), model(ids).numpy()
        got = session.run(None, {"input_ids": ids.numpy()})[0]
        diff, quant_error = float(np.abs(got - int8).max()), float(np.abs(int8 - fp32).max())
        print(f"{kind.__name__} b{batch}: max|onnx-int8| {diff:.2e}, max|int8-fp32| {quant_error:.2e}")
        assert quant_error > 20 * EXACT  # quantization is visible
        assert diff <= max(EXACT, 0.05 * quant_error)


def test_excluded_cell_stays_float() -> None:
    torch.manual_seed(2)
    model = CellLoop(_cell(nn.GRUCell)).eval()
    quantized = quantize_model(model, DynamicQuantConfig(exclude=("cell",)))
    assert type(quantized.int8_model.cell) is nn.GRUCell
    assert quantized.details["modules"] == {"head": "linear", "embed": "embedding"}
    quantized = quantize_model(model, DynamicQuantConfig(include=("cell",), embeddings=False))
    assert quantized.details["modules"] == {
        "cell.ih": "linear",
        "cell.hh": "linear",
    }  # the cell's name selects both
