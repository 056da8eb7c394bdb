"""Export a ``torch.ao`` dynamically quantized model to an INT8 ONNX model that onnxruntime runs fast.

No torch exporter handles ``quantized::linear_dynamic`` / ``quantized::embedding_byte``. The route:

1. ``build_reference_model``: copy the quantized model, replacing each dynamic Linear by a float
   ``ReferenceLinear`` computing ``x @ W_t + b`` with ``W_t = (s_w · (W_q − z_w))ᵀ`` (torch's own
   dequantized weight, stored under the parameter name ``<module>.weight_t``) and each quantized
   Embedding by a float table ``q · s + o``. The parameter names survive export as initializer names,
   which is how the ONNX nodes are matched back to torch modules.
2. Export that float model with ``torch.onnx.export(dynamo=True)`` (dynamic batch and sequence axes).
3. ``dynamic_passes`` rewrites each matched MatMul into DynamicQuantizeLinear → MatMulInteger → Cast
   → Mul with torch's int8 weight and scales as initializers, and each matched Gather into a uint8
   row lookup + per-row dequantization. The float weights are dropped, so the file holds INT8 only.

Parity: the ONNX graph performs the same integer arithmetic as fbgemm (same activation range, scale,
zero point and rounding), so logits agree with torch's dynamic INT8 model to float rounding, apart
from rare round-half ties.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qtoolkit.atomic import sha256_file
from qtoolkit.errors import QtkError
from qtoolkit.export.dynamic_passes import (
    EmbeddingQuant,
    LinearQuant,
    quantize_embedding_gathers,
    quantize_linear_matmuls,
)
from qtoolkit.export.onnx_export import DEFAULT_OPSET, ExampleInput, save_model, trace_to_ir
from qtoolkit.export.recurrent_passes import (
    PLACEHOLDER,
    DirectionQuant,
    RecurrentQuant,
    quantize_recurrent_nodes,
)
from qtoolkit.quantize.dynamic import (  # layering: export reads quantize's modules
    activation_reduce_range,
    cell_reduce_range,
)

__all__ = [
    "DynamicExportResult",
    "ReferenceEmbedding",
    "ReferenceLinear",
    "ReferenceTables",
    "build_reference_model",
    "export_dynamic_int8_onnx",
]


class ReferenceLinear(nn.Module):
    """Float stand-in for a dynamic Linear: ``x @ weight_t + bias`` with torch's dequantized weight."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight_t.contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


class ReferenceEmbedding(nn.Module):
    """Float stand-in for a weight-only quantized Embedding (dequantized table)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


def linear_quant(module: torch.ao.nn.quantized.dynamic.Linear) -> tuple[LinearQuant, torch.Tensor | None]:
    """torch's int8 weight, scales and zero points of a dynamic Linear, plus its float bias."""
    weight, bias = module._weight_bias()
    return weight_quant(weight, activation_reduce_range(module)), bias


def weight_quant(weight: torch.Tensor, reduce_range: bool) -> LinearQuant:
    """int8 values, scales and zero points of a quantized weight tensor [N, K] (rows = outputs)."""
    if weight.dtype != torch.qint8:
        raise QtkError(f"a weight is quantized to {weight.dtype}; only qint8 exports to INT8 ONNX.")
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale = np.array(weight.q_scale(), np.float32)
        zero_point = np.array(weight.q_zero_point(), np.int8)
    else:
        if weight.q_per_channel_axis() != 0:
            raise QtkError(f"per-channel axis {weight.q_per_channel_axis()} is not supported; use axis 0.")
        scale = weight.q_per_channel_scales().numpy().astype(np.float32, copy=True)
        zero_point = weight.q_per_channel_zero_points().numpy().astype(np.int8, copy=True)
    return LinearQuant(
        weight_q=weight.int_repr().numpy().astype(np.int8, copy=True),
        scale=scale,
        zero_point=zero_point,
        reduce_range=reduce_range,
    )


class ReferenceRecurrent(nn.Module):
    """Export-only stand-in for a dynamic LSTM/GRU: torch's layout handling around one ONNX
    placeholder per layer (``qtoolkit.RecurrentLayer``) that the recurrent pass replaces.

    Same call signature and outputs as ``nn.LSTM``/``nn.GRU`` (padded tensors, not packed sequences).
    Run eagerly it returns zeros: it exists to be traced.
    """

    def __init__(self, module: nn.Module, layer_names: list[str]) -> None:
        super().__init__()
        self.mode: str = module.mode
        self.hidden_size: int = module.hidden_size
        self.batch_first: bool = module.batch_first
        self.directions = 2 if module.bidirectional else 1
        self.layer_names = layer_names

    def forward(
        self, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        lstm = self.mode == "LSTM"
        if x.dim() != 3:
            raise QtkError(f"{self.mode} export needs a batched 3-D input, got shape {tuple(x.shape)}.")
        if self.batch_first:
            x = x.transpose(0, 1)
        seq, batch = x.shape[0], x.shape[1]
        d, hidden = self.directions, self.hidden_size
        states = [x.new_zeros(len(self.layer_names) * d, batch, hidden)] * (2 if lstm else 1)
        if hx is not None:
            if lstm != isinstance(hx, tuple | list) or (lstm and len(hx) != 2):
                raise QtkError(
                    f"{self.mode} initial state must be {'(h0, c0)' if lstm else 'one tensor h0'}."
                )
            states = list(hx) if lstm else [hx]
        finals: list[list[torch.Tensor]] = [[] for _ in states]
        for index, name in enumerate(self.layer_names):
            window = slice(index * d, (index + 1) * d)
            outputs = torch.onnx.ops.symbolic_multi_out(
                "::".join(PLACEHOLDER),
                [x] + [state[window] for state in states],
                {"layer": name},
                dtypes=[x.dtype] * (1 + len(states)),
                shapes=[[seq, d, batch, hidden]] + [[d, batch, hidden]] * len(states),
            )
            x = outputs[0].permute(0, 2, 1, 3).reshape(seq, batch, d * hidden)  # directions side by side
            for kept, final in zip(finals, outputs[1:], strict=True):
                kept.append(final)
        y = x.transpose(0, 1) if self.batch_first else x
        last = [torch.cat(kept) for kept in finals]
        return y, (last[0], last[1]) if lstm else last[0]


def recurrent_quant(
    module: torch.ao.nn.quantized.dynamic.modules.rnn.RNNBase, name: str
) -> tuple[nn.Module, list[RecurrentQuant]]:
    """The export stand-in of a dynamic LSTM/GRU, and each layer's INT8 tables."""
    if module.dtype != torch.qint8:
        raise QtkError(
            f"module {name} is a dynamic {module.mode} in {module.dtype}; only qint8 exports to INT8 ONNX."
        )
    reduce_range = cell_reduce_range(module)
    params = module._weight_bias()
    directions = 2 if module.bidirectional else 1
    layers: list[RecurrentQuant] = []
    for layer in range(module.num_layers):
        parts = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            parts.append(
                DirectionQuant(
                    w_ih=weight_quant(params["weight"][f"weight_ih{suffix}"], reduce_range),
                    w_hh=weight_quant(params["weight"][f"weight_hh{suffix}"], reduce_range),
                    b_ih=params["bias"][f"bias_ih{suffix}"].detach().numpy().astype(np.float32, copy=True),
                    b_hh=params["bias"][f"bias_hh{suffix}"].detach().numpy().astype(np.float32, copy=True),
                )
            )
        layers.append(RecurrentQuant(module.mode, f"{name}.l{layer}", module.hidden_size, parts))
    return ReferenceRecurrent(module, [layer.name for layer in layers]), layers


def embedding_quant(module: torch.ao.nn.quantized.Embedding) -> EmbeddingQuant:
    """uint8 rows, per-row float scale and offset (−zero_point · scale) of a quantized Embedding."""
    weight = module.weight()
    # clone: the qparams tensors are views into ``weight``, which is freed when this returns
    scale = weight.q_per_channel_scales().to(torch.float32).clone()
    offset = -weight.q_per_channel_zero_points().to(torch.float32) * scale
    return EmbeddingQuant(weight.int_repr().numpy().copy(), scale.numpy(), offset.numpy())


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


@dataclass
class ReferenceTables:
    """INT8 tables of a reference model: Linear/Embedding keyed by the ONNX initializer names to
    rewrite, LSTM/GRU layers by name (``<module>.l<layer>``)."""

    linears: dict[str, LinearQuant] = field(default_factory=dict)
    embeddings: dict[str, EmbeddingQuant] = field(default_factory=dict)
    recurrent: dict[str, RecurrentQuant] = field(default_factory=dict)


def build_reference_model(qmodel: nn.Module) -> tuple[nn.Module, ReferenceTables]:
    """Float copy of ``qmodel`` (torch's dequantized weights) plus the INT8 tables to put back."""
    reference = copy.deepcopy(qmodel).eval()
    tables = ReferenceTables()
    linears, embeddings = tables.linears, tables.embeddings
    for name, module in list(reference.named_modules()):
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            if module._packed_params.dtype != torch.qint8:
                raise QtkError(
                    f"module {name} is dynamically quantized to {module._packed_params.dtype}; "
                    "only qint8 exports to INT8 ONNX."
                )
            spec, bias = linear_quant(module)
            dequant = (
                spec.weight_q.astype(np.float32) - spec.zero_point.astype(np.float32).reshape(-1, 1)
                if spec.zero_point.ndim
                else spec.weight_q.astype(np.float32) - float(spec.zero_point)
            )
            dequant *= spec.scale.reshape(-1, 1) if spec.scale.ndim else float(spec.scale)
            _set_submodule(reference, name, ReferenceLinear(torch.from_numpy(dequant).t(), bias))
            linears[f"{name}.weight_t"] = spec
        elif isinstance(module, torch.ao.nn.quantized.Embedding):
            spec = embedding_quant(module)
            table = spec.weight_q.astype(np.float32) * spec.scale[:, None] + spec.offset[:, None]
            _set_submodule(reference, name, ReferenceEmbedding(torch.from_numpy(table)))
            embeddings[f"{name}.weight"] = spec
        elif isinstance(module, torch.ao.nn.quantized.dynamic.modules.rnn.RNNBase):
            stand_in, layers = recurrent_quant(module, name)
            _set_submodule(reference, name, stand_in)
            tables.recurrent.update({layer.name: layer for layer in layers})
    return reference, tables


@dataclass
class DynamicExportResult:
    """What ``export_dynamic_int8_onnx`` wrote."""

    path: Path
    size_mb: float
    sha256: str
    linears: list[str] = field(default_factory=list)  # rewritten modules (MatMulInteger)
    embeddings: list[str] = field(default_factory=list)  # rewritten modules (uint8 Gather)
    recurrent: list[str] = field(default_factory=list)  # rewritten LSTM/GRU layers ("<module>.l<k>")
    reduce_range: bool = False


def export_dynamic_int8_onnx(
    qmodel: nn.Module,
    inputs: ExampleInput,
    path: str | os.PathLike[str],
    *,
    output_names: Sequence[str] = ("logits",),
    metadata: Mapping[str, object] | None = None,
    opset: int = DEFAULT_OPSET,
) -> DynamicExportResult:
    """Export a ``quantize_dynamic`` model to INT8 ONNX carrying torch's own int8 weights and scales.

    ``inputs``: a tensor, a tuple (positional) or a dict (keyword) of example inputs; batch and
    sequence axes are dynamic. Raises QtkError if a quantized module could not be located in the
    exported graph (it would otherwise silently stay float).
    """
    reference, tables = build_reference_model(qmodel)
    linears, embeddings = tables.linears, tables.embeddings
    if not linears and not embeddings and not tables.recurrent:
        raise QtkError(
            "model has no dynamically quantized module; quantize it first: "
            "qtoolkit.quantize_model(model, DynamicQuantConfig())."
        )
    onnx_model = trace_to_ir(reference, inputs, opset=opset, output_names=output_names, sequence=True)
    done_linear = quantize_linear_matmuls(onnx_model, linears)
    done_embedding = quantize_embedding_gathers(onnx_model, embeddings)
    done_recurrent = quantize_recurrent_nodes(onnx_model, tables.recurrent)
    missing = sorted(
        (set(linears) - set(done_linear))
        | (set(embeddings) - set(done_embedding))
        | ({layer.name for layer in tables.recurrent.values()} - set(done_recurrent))
    )
    if missing:
        raise QtkError(
            f"quantized weights {missing[:3]} were not found as MatMul/Gather/LSTM/GRU inputs in the "
            "exported graph; this model layout is not supported by the dynamic exporter."
        )
    if metadata:
        onnx_model.metadata_props["qtoolkit"] = json.dumps(dict(metadata), sort_keys=True, default=str)
    final = save_model(onnx_model, path)
    reduce = {spec.reduce_range for spec in linears.values()} | {
        layer.directions[0].w_ih.reduce_range for layer in tables.recurrent.values()
    }
    return DynamicExportResult(
        path=final,
        size_mb=final.stat().st_size / 1e6,
        sha256=sha256_file(final),
        linears=[name.removesuffix(".weight_t") for name in done_linear],
        embeddings=[name.removesuffix(".weight") for name in done_embedding],
        recurrent=done_recurrent,
        reduce_range=reduce == {True},
    )
