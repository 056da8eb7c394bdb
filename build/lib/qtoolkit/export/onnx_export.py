"""Trace torch modules to ONNX with the dynamo exporter, and save ONNX models atomically.

One tracing path for every exporter in qtoolkit: a single tensor input (images; dynamic batch) or
keyword tensors (``input_ids``, ``attention_mask``, …; dynamic batch and sequence axes).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes.common import ClearMetadataAndDocStringPass
from torch import nn

from qtoolkit.atomic import atomic_path
from qtoolkit.errors import QtkError
from qtoolkit.export.qdq_passes import make_ort_friendly

DEFAULT_OPSET = 21  # opset 21 has INT4 QuantizeLinear and per-axis DQ everywhere ORT needs it
_TWO_GB = 2**31 - 1
_AXIS_NAMES = ("batch", "seq")

ExampleInput = torch.Tensor | Mapping[str, torch.Tensor]


def _first_arg_name(module: nn.Module) -> str:
    names = [name for name in inspect.signature(module.forward).parameters if name != "self"]
    return names[0] if names else "x"


@contextlib.contextmanager
def _eager_attention(module: nn.Module) -> Iterator[None]:
    """Trace Hugging Face models with their "eager" attention, then restore the original.

    ``sdpa`` attention exports NaN guards for fully masked rows (IsNaN → Where) and shape slicing
    that ORT cannot fuse; on MiniLM-L6 they eat a large share of the INT8 speed-up
    (``bench/bert_dynamic.py --compare-sdpa`` times both traces). Eager attention is the same math
    (MatMul → Softmax → MatMul) without them.
    """
    # the outermost Hugging Face model (modules() is pre-order), also when a user wrapper holds it
    hf_model = next((m for m in module.modules() if hasattr(m, "set_attn_implementation")), None)
    original = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
    switch = hf_model is not None and original not in (None, "eager")
    if switch:
        hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            hf_model.set_attn_implementation(original)


def trace_to_ir(
    module: nn.Module,
    example_input: ExampleInput,
    *,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_names: Sequence[str] = ("logits",),
) -> ir.Model:
    """Export ``module`` on ``example_input`` with ``torch.onnx.export(dynamo=True)``; return the IR.

    A tensor input becomes ONNX input ``input_name`` with a dynamic ``batch`` axis; keyword inputs keep
    their names, with axes 0 and 1 dynamic (``batch``, ``seq``).
    """
    module = module.eval()
    if isinstance(example_input, Mapping):
        args, kwargs = (), dict(example_input)
        axes = {key: {i: _AXIS_NAMES[i] for i in range(min(v.dim(), 2))} for key, v in kwargs.items()}
        shapes: Any = {key: {i: torch.export.Dim.DYNAMIC for i in axes[key]} for key in kwargs}
        input_names = list(kwargs)
    else:
        # torch.export specialises a size-1 batch in some graphs (FX: view(x.size(0), -1)); trace with 2
        batch = example_input if example_input.shape[0] > 1 else torch.cat([example_input] * 2)
        args, kwargs = (batch,), {}
        axes = {input_name: {0: "batch"}}
        shapes = {_first_arg_name(module): {0: torch.export.Dim("batch", min=1, max=4096)}}
        input_names = [input_name]
    try:
        with (
            torch.no_grad(),
            _eager_attention(module),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=shapes,
                input_names=input_names,
                output_names=list(output_names),
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; keep its first line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QtkError(f"ONNX export of {type(module).__name__} failed: {first_line}") from error
    model: ir.Model = program.model
    for value in model.graph.inputs:  # readable symbolic axes
        named = axes.get(value.name, {})
        if value.shape is not None and named:
            value.shape = ir.Shape([named.get(i, dim) for i, dim in enumerate(value.shape)])
    model.producer_name = "qtoolkit"
    return model


def save_model(model: ir.Model, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` atomically and check it: one file below 2 GB, else weights in ``NAME.onnx.data``."""
    path = Path(path)
    kept = dict(model.metadata_props)  # ours (e.g. the quantization config); the exporter's go
    ClearMetadataAndDocStringPass()(model)  # exporter stack traces: debugging aid, not deployment payload
    model.metadata_props.update(kept)
    total = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    with atomic_path(path) as tmp:
        if total < _TWO_GB:
            ir.save(model, tmp)
            onnx.checker.check_model(str(tmp), full_check=True)
        else:  # the side file is written under its final name; the .onnx rename commits it
            ir.save(model, tmp, external_data=f"{path.name}.data")
    return path


def export_onnx(
    module: nn.Module,
    example_input: ExampleInput,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_names: Sequence[str] = ("logits",),
) -> dict[str, Any]:
    """Export ``module`` (FP32, or the QDQ reference of an INT8 model) to one checked ONNX file.

    QDQ graphs go through :func:`make_ort_friendly`; returns what its passes changed.
    """
    model = trace_to_ir(module, example_input, opset=opset, input_name=input_name, output_names=output_names)
    changes = make_ort_friendly(model)
    save_model(model, path)
    return changes


def onnx_op_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many nodes of each op type the graph at ``path`` has (for reports and tests)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(Path(path)), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
