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
from qtoolkit.export.onnx_export import DEFAULT_OPSET, save_model, trace_to_ir
from qtoolkit.quantize.dynamic import activation_reduce_range  # layering: export reads quantize's Linears

__all__ = [
    "DynamicExportResult",
    "ReferenceEmbedding",
    "ReferenceLinear",
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
    if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale = np.array(weight.q_scale(), np.float32)
        zero_point = np.array(weight.q_zero_point(), np.int8)
    else:
        if weight.q_per_channel_axis() != 0:
            raise QtkError(f"per-channel axis {weight.q_per_channel_axis()} is not supported; use axis 0.")
        scale = weight.q_per_channel_scales().numpy().astype(np.float32, copy=True)
        zero_point = weight.q_per_channel_zero_points().numpy().astype(np.int8, copy=True)
    spec = LinearQuant(
        weight_q=weight.int_repr().numpy().astype(np.int8, copy=True),
        scale=scale,
        zero_point=zero_point,
        reduce_range=activation_reduce_range(module),
    )
    return spec, bias


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


def build_reference_model(
    qmodel: nn.Module,
) -> tuple[nn.Module, dict[str, LinearQuant], dict[str, EmbeddingQuant]]:
    """Float copy of ``qmodel`` plus the INT8 tables keyed by the ONNX initializer names to rewrite."""
    reference = copy.deepcopy(qmodel).eval()
    linears: dict[str, LinearQuant] = {}
    embeddings: dict[str, EmbeddingQuant] = {}
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
    return reference, linears, embeddings


@dataclass
class DynamicExportResult:
    """What ``export_dynamic_int8_onnx`` wrote."""

    path: Path
    size_mb: float
    sha256: str
    linears: list[str] = field(default_factory=list)  # rewritten modules (MatMulInteger)
    embeddings: list[str] = field(default_factory=list)  # rewritten modules (uint8 Gather)
    reduce_range: bool = False


def export_dynamic_int8_onnx(
    qmodel: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    output_names: Sequence[str] = ("logits",),
    metadata: Mapping[str, object] | None = None,
    opset: int = DEFAULT_OPSET,
) -> DynamicExportResult:
    """Export a ``quantize_dynamic`` model to INT8 ONNX carrying torch's own int8 weights and scales.

    Raises QtkError if a quantized module could not be located in the exported graph (it would
    otherwise silently stay float).
    """
    reference, linears, embeddings = build_reference_model(qmodel)
    if not linears and not embeddings:
        raise QtkError("model has no dynamically quantized module; run qtoolkit.quantize.dynamic first.")
    onnx_model = trace_to_ir(reference, inputs, opset=opset, output_names=output_names)
    done_linear = quantize_linear_matmuls(onnx_model, linears)
    done_embedding = quantize_embedding_gathers(onnx_model, embeddings)
    missing = sorted((set(linears) - set(done_linear)) | (set(embeddings) - set(done_embedding)))
    if missing:
        raise QtkError(
            f"quantized weights {missing[:3]} were not found as MatMul/Gather inputs in the "
            "exported graph; this model layout is not supported by the dynamic exporter."
        )
    if metadata:
        onnx_model.metadata_props["qtoolkit"] = json.dumps(dict(metadata), sort_keys=True, default=str)
    final = save_model(onnx_model, path)
    reduce = {spec.reduce_range for spec in linears.values()}
    return DynamicExportResult(
        path=final,
        size_mb=final.stat().st_size / 1e6,
        sha256=sha256_file(final),
        linears=[name.removesuffix(".weight_t") for name in done_linear],
        embeddings=[name.removesuffix(".weight") for name in done_embedding],
        reduce_range=reduce == {True},
    )
