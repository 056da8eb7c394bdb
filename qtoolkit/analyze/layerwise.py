"""Per-layer SQNR of torch's INT8 model against the FP32 model it came from.

Every quantized module of the converted model (eager or FX) keeps the module path of the float
module it replaced in the calibrated ("observed") model, which computes the FP32 values at the
same points (BatchNorm folded, ReLU fused: same maths). Both models run the same batches; for each
quantized module the FP32 output f and the dequantized INT8 output q give

    SQNR_dB = 10 · log10( Σ f² / Σ (f − q)² )

In FX models the FP32 value is taken where the module's output observer sees it (after a
clamp-aware clamp, see ``qtoolkit.quantize.canonical``), so a conv whose INT8 output saturates
exactly where the following ReLU6 clamps is not charged for it. Accumulated over all samples (errors of earlier layers included: this is where the INT8 model
*is*, not the error of the layer alone). Low SQNR marks where accuracy goes. Each module is mapped
to the ONNX node it became in the exported INT8 graph by its INT8 weight bytes (Conv/Gemm) or by
its output (scale, zero point).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm.auto import tqdm

from qtoolkit.atomic import atomic_path
from qtoolkit.runtime.torch_runner import call_model


@dataclass
class LayerSQNR:
    module: str  # torch module path
    kind: str  # quantized module type
    sqnr_db: float
    onnx_node: str | None = None
    signal_power: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _is_quantized(module: nn.Module) -> bool:
    """A torch.ao quantized module, or a subclass of one (e.g. qtoolkit's full-range dynamic Linear)."""
    names = (cls.__module__ for cls in type(module).__mro__)
    return hasattr(module, "scale") and any(n.startswith("torch.ao.nn.") and ".quantized" in n for n in names)


def quantized_modules(int8_model: nn.Module) -> dict[str, nn.Module]:
    """Quantized modules with their own output qparams (conv, linear, activations), by path."""
    return {name: m for name, m in int8_model.named_modules() if name and _is_quantized(m)}


def _weight_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array.astype(np.int8)).tobytes()).hexdigest()


def onnx_node_index(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[tuple[float, int], str]]:
    """(INT8 weight digest -> node name, (output scale, zero point) -> node name) of an INT8 ONNX graph."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_weight, by_qparams = {}, {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            dq = producer.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                by_weight[_weight_digest(numpy_helper.to_array(inits[dq.input[0]]))] = node.name
        out, hops = node.output[0], 0
        while hops < 3 and len(consumers.get(out, [])) == 1:
            nxt = consumers[out][0]
            if nxt.op_type == "QuantizeLinear" and nxt.input[1] in inits:
                scale = float(numpy_helper.to_array(inits[nxt.input[1]]).reshape(()))
                zp = int(numpy_helper.to_array(inits[nxt.input[2]]).reshape(())) if len(nxt.input) > 2 else 0
                by_qparams.setdefault((round(scale, 9), zp), node.name)
                break
            if nxt.op_type not in ("Relu", "Clip"):
                break
            out, hops = nxt.output[0], hops + 1
    return by_weight, by_qparams


def _onnx_name(module: nn.Module, index: tuple[dict[str, str], dict[tuple[float, int], str]]) -> str | None:
    weight = getattr(module, "weight", None)
    if callable(weight):
        try:
            w = weight()
            if isinstance(w, torch.Tensor) and w.is_quantized:
                name = index[0].get(_weight_digest(w.int_repr().numpy()))
                if name:
                    return name
        except (RuntimeError, TypeError):
            pass
    return index[1].get((round(float(module.scale), 9), int(module.zero_point)))


def _fp32_probe(observed_model: nn.Module, name: str) -> nn.Module:
    """The module whose output is the FP32 value of quantized module ``name`` (module docstring)."""
    from torch import fx
    from torch.ao.quantization.observer import ObserverBase

    module = observed_model.get_submodule(name)
    if isinstance(observed_model, fx.GraphModule):
        for node in observed_model.graph.nodes:
            if node.op == "call_module" and node.target == name and len(node.users) == 1:
                user = next(iter(node.users))
                probe = observed_model.get_submodule(str(user.target)) if user.op == "call_module" else None
                return probe if isinstance(probe, ObserverBase) else module
    return module


def layerwise_sqnr(
    observed_model: nn.Module,
    int8_model: nn.Module,
    batches: Iterable[torch.Tensor],
    onnx_path: str | os.PathLike[str] | None = None,
) -> list[LayerSQNR]:
    """SQNR of every quantized module's output, worst first (see module docstring)."""
    targets = quantized_modules(int8_model)
    float_modules = dict(observed_model.named_modules())
    names = [n for n in targets if n in float_modules]
    fp32_out: dict[str, torch.Tensor] = {}
    power = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)

    def keep(name: str):  # first call per batch wins: observers may be shared by several nodes
        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            fp32_out.setdefault(name, out.detach().float())

        return hook

    def compare(name: str):
        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            q = out.dequantize() if out.is_quantized else out.float()
            f = fp32_out.pop(name, None)
            if f is None or f.shape != q.shape:
                return
            power[name] += float((f.double() ** 2).sum())
            noise[name] += float(((f - q).double() ** 2).sum())

        return hook

    handles = [_fp32_probe(observed_model, n).register_forward_hook(keep(n)) for n in names]
    handles += [targets[n].register_forward_hook(compare(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="layerwise SQNR", unit="batch", leave=False):
                x = batch[0] if isinstance(batch, tuple | list) else batch
                fp32_out.clear()
                call_model(observed_model, x)  # a tensor, or named inputs (text models)
                call_model(int8_model, x)
    finally:
        for handle in handles:
            handle.remove()
    index = onnx_node_index(onnx_path) if onnx_path is not None else ({}, {})
    rows = []
    for name in names:
        if power[name] == 0.0 and noise[name] == 0.0:
            continue
        sqnr = math.inf if noise[name] == 0.0 else 10.0 * math.log10(max(power[name], 1e-30) / noise[name])
        onnx_name = _onnx_name(targets[name], index) if onnx_path is not None else None
        rows.append(LayerSQNR(name, type(targets[name]).__name__, sqnr, onnx_name, power[name]))
    return sorted(rows, key=lambda r: r.sqnr_db)


def format_table(rows: list[LayerSQNR], limit: int | None = None) -> str:
    """Markdown table, worst first."""
    lines = ["| rank | torch module | type | ONNX node | SQNR dB |", "|---:|---|---|---|---:|"]
    for rank, row in enumerate(rows[:limit] if limit else rows, 1):
        lines.append(f"| {rank} | {row.module} | {row.kind} | {row.onnx_node or '-'} | {row.sqnr_db:.2f} |")
    return "\n".join(lines) + "\n"


def plot_sqnr(rows: list[LayerSQNR], path: str | os.PathLike[str], title: str = "", worst: int = 40) -> Path:
    """Horizontal bar chart of the ``worst`` layers' SQNR (worst at the top), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:worst][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(shown) + 1.2))
    ax.barh([r.module for r in shown], [r.sqnr_db for r in shown], color="tab:red")
    ax.set_xlabel("SQNR of INT8 output vs FP32 (dB)")
    ax.set_title(title or "worst layers (lowest SQNR)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path
