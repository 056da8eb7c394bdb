"""ONNX graph passes that give the float LSTM / GRU nodes of an export torch's dynamic-INT8 weights.

torch's dynamic LSTM/GRU layer (one direction; gates stacked along rows, torch order i,f,g,o for
LSTM and r,z,n for GRU) computes, on the CPU,

    P   = W_ih · x + b_ih    for all time steps at once: x quantized per tensor over the sequence
    G_t = P_t + W_hh · h_{t−1} + b_hh                    h_{t−1} quantized per tensor at every step

with int8 weights W ≈ s_w · W_q (per tensor or per output row) and uint8 activations.

**LSTM** → ``com.microsoft.DynamicQuantizeLSTM``: the same two integer GEMMs (X over the whole
sequence, H per step), weights as ``[D, in, 4H]`` int8 in ONNX gate order i,o,f,c, scales and zero
points ``[D]`` (per tensor) or ``[D, 4H]`` (per row), bias ``[D, 8H]`` = [b_ih, b_hh].

**GRU**: onnxruntime has no integer GRU, so the layer becomes integer GEMMs around a ``Scan``:
P = one DynamicQuantizeLinear → MatMulInteger over all steps (ORT fuses it into
DynamicQuantizeMatMul) outside the recurrence; per direction, a Scan whose body does the integer
W_hh · h_{t−1} and the gates (``linear_before_reset``, torch's GRU)::

    r = σ(P_r + H_r),  z = σ(P_z + H_z),  n = tanh(P_n + r ⊙ H_n),  h_t = n + z ⊙ (h_{t−1} − n)

where H = W_hh · h_{t−1} + b_hh. Layers are matched to torch modules by name, via placeholder nodes that the reference model writes (``torch.onnx.ops.symbolic``): torch.export
specialises the sequence length of a traced ``nn.LSTM``/``nn.GRU``, a placeholder keeps it dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qtoolkit.errors import QtkError
from qtoolkit.export.dynamic_passes import LinearQuant, _const, _unique

__all__ = ["PLACEHOLDER", "DirectionQuant", "RecurrentQuant", "quantize_recurrent_nodes"]

# rows of torch's stacked gates, in ONNX's gate order
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
MS_DOMAIN = "com.microsoft"


@dataclass
class DirectionQuant:
    """One layer, one direction of a quantized LSTM/GRU: torch's int8 W_ih, W_hh and float biases."""

    w_ih: LinearQuant  # int8 [G·H, in]
    w_hh: LinearQuant  # int8 [G·H, H]
    b_ih: np.ndarray  # float32 [G·H]
    b_hh: np.ndarray  # float32 [G·H]


@dataclass
class RecurrentQuant:
    """One layer of a quantized LSTM/GRU module: its directions (forward, then reverse)."""

    mode: str  # "LSTM" | "GRU"
    name: str  # "<module>.l<layer>", for messages and node names
    hidden_size: int
    directions: list[DirectionQuant]

    def _reorder(self, rows: np.ndarray) -> np.ndarray:
        """Reorder the gate blocks along axis 0 from torch's order to ONNX's."""
        order = _GATE_ORDER[self.mode]
        blocks = rows.reshape(len(order), self.hidden_size, *rows.shape[1:])
        return np.ascontiguousarray(blocks[list(order)].reshape(rows.shape))


def _dequantize(spec: LinearQuant) -> np.ndarray:
    """s_w · (W_q − z_w) as float32, rows = output channels."""
    zero = spec.zero_point.astype(np.float32)
    scale = spec.scale.astype(np.float32)
    if spec.scale.ndim:
        zero, scale = zero.reshape(-1, 1), scale.reshape(-1, 1)
    return ((spec.weight_q.astype(np.float32) - zero) * scale).astype(np.float32)


PLACEHOLDER = ("qtoolkit", "RecurrentLayer")


def quantize_recurrent_nodes(model: ir.Model, table: dict[str, RecurrentQuant]) -> list[str]:
    """Replace each ``qtoolkit.RecurrentLayer`` placeholder by the integer graph of its layer.

    The placeholder (written by the reference model, attribute ``layer`` = a key of ``table``) takes
    X [seq, batch, in], h0 [D, batch, H] (and c0 for an LSTM) and gives Y [seq, D, batch, H], Y_h
    (and Y_c), the ONNX LSTM/GRU output layout. Returns the layers rewritten, once per node.
    """
    done: list[str] = []
    for node in list(model.graph):
        if (node.domain, node.op_type) != PLACEHOLDER:
            continue
        key = node.attributes.get_string("layer")
        spec = table.get(key or "")
        if spec is None:
            raise QtkError(
                f"recurrent layer {key!r} in the exported graph has no INT8 weights; re-quantize the model."
            )
        outputs = _REWRITERS[spec.mode](model, node, spec)
        _take_over(model.graph, node, outputs)
        done.append(spec.name)
    model.opset_imports.pop(PLACEHOLDER[0], None)
    return done


def _direction_const(graph: ir.Graph, name: str, arrays: list[np.ndarray]) -> ir.Value:
    return _const(graph, _unique(graph, name), np.stack(arrays))


def _lstm(model: ir.Model, node: ir.Node, spec: RecurrentQuant) -> list[ir.Value]:
    """Replace the float LSTM ``node`` by DynamicQuantizeLSTM with torch's int8 weights."""
    graph = model.graph
    tag = spec.name

    def weights(kind: str) -> list[ir.Value]:
        quants = [getattr(d, kind) for d in spec.directions]
        per_row = quants[0].scale.ndim > 0
        w = [spec._reorder(q.weight_q).T for q in quants]  # [in, 4H]
        s = [spec._reorder(q.scale) if per_row else q.scale for q in quants]
        z = [spec._reorder(q.zero_point) if per_row else q.zero_point for q in quants]
        return [
            _direction_const(graph, f"{tag}.{kind}_quantized", w),
            _direction_const(graph, f"{tag}.{kind}_scale", [a.astype(np.float32) for a in s]),
            _direction_const(graph, f"{tag}.{kind}_zero_point", [a.astype(np.int8) for a in z]),
        ]

    w, w_scale, w_zero = weights("w_ih")
    r, r_scale, r_zero = weights("w_hh")
    bias = _direction_const(
        graph,
        f"{tag}.bias",
        [
            np.concatenate([spec._reorder(d.b_ih), spec._reorder(d.b_hh)]).astype(np.float32)
            for d in spec.directions
        ],
    )
    x, h0, c0 = node.inputs
    lstm = ir.node(
        "DynamicQuantizeLSTM",
        [x, w, r, bias, None, h0, c0, None, w_scale, w_zero, r_scale, r_zero],
        {
            "hidden_size": spec.hidden_size,
            "direction": "bidirectional" if len(spec.directions) == 2 else "forward",
        },
        domain=MS_DOMAIN,
        num_outputs=len(node.outputs),
        name=f"{tag}/DynamicQuantizeLSTM",
    )
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    graph.insert_before(node, lstm)
    return list(lstm.outputs)


def _take_over(graph: ir.Graph, old: ir.Node, new: list[ir.Value]) -> None:
    """Move the uses and names of ``old``'s outputs to ``new``; remove ``old`` and its weights."""
    for before, after in zip(old.outputs, new, strict=True):
        name = before.name
        after.shape, after.type = before.shape, before.type
        ir.convenience.replace_all_uses_with(before, after, replace_graph_outputs=True)
        before.name = None
        after.name = name
    inputs = [v for v in old.inputs if v is not None]
    graph.remove(old, safe=True)
    for value in inputs:
        if not value.uses() and value.name in graph.initializers and value not in graph.outputs:
            del graph.initializers[value.name]


def _gru(model: ir.Model, node: ir.Node, spec: RecurrentQuant) -> list[ir.Value]:
    from qtoolkit.export.gru_scan import build_gru  # the GRU graph is long enough for its own module

    return build_gru(model, node, spec)


_REWRITERS = {"LSTM": _lstm, "GRU": _gru}
