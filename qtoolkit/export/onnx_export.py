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
import re
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

ExampleInput = torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]


def _grow(tensor: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Repeat size-1 ``axes`` to 2: torch.export specialises a size-1 axis (FX: view(x.size(0), -1))."""
    for axis in axes:
        if tensor.shape[axis] == 1:
            tensor = torch.cat([tensor, tensor], dim=axis)
    return tensor


def _dynamic_axes(tensor: torch.Tensor, sequence: bool) -> list[int]:
    """Axes exported as dynamic: the batch (0), and with ``sequence`` axis 1 of token ids/masks
    (integer, rank ≥ 2) and of float sequences [batch, time, features] (rank 3); feature and
    channel axes stay fixed (axis 1 of an image batch is its channels)."""
    if tensor.dim() == 0:
        return []
    if sequence and tensor.dim() >= 2 and (tensor.dim() == 3 or not tensor.is_floating_point()):
        return [0, 1]
    return [0]


def bind_inputs(
    module: nn.Module, example_input: ExampleInput
) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """(args, kwargs, parameter names) for ``module.forward`` from a tensor, a tuple or a dict.

    Raises QtkError, naming the signature, when the inputs do not fit it.
    """
    args, kwargs = _split_inputs(example_input)
    signature = inspect.signature(module.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise QtkError(
            f"example inputs do not match {type(module).__name__}.forward{signature}: {error}; "
            "pass a tensor, a tuple in parameter order or a dict keyed by parameter name."
        ) from None
    positional = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < len(args):  # forward(*args): no names to borrow
        positional = [f"input_{i}" for i in range(len(args))]
    del bound
    return args, kwargs, positional[: len(args)] + list(kwargs)


def _split_inputs(example_input: ExampleInput) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    if isinstance(example_input, Mapping):
        return (), dict(example_input)
    if isinstance(example_input, tuple | list):
        return tuple(example_input), {}
    raise QtkError(
        f"example input is a {type(example_input).__name__}; pass a tensor, a tuple of tensors or a dict of "
        "named tensors."
    )


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


def _export(
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    sequence: bool,
    opset: int,
    output_names: Sequence[str],
    tensor_input: bool,
) -> tuple[Any, dict[str, dict[int, str]]]:
    """``torch.onnx.export(dynamo=True)`` with dynamic batch (and, with ``sequence``, axis-1) axes;
    the exporter's program and the named dynamic axes per input. QtkError on failure.

    An axis the model's code fixes (a Python loop over the sequence unrolls for the example's
    length) is exported again as static, with a warning: the ONNX file would otherwise declare it
    dynamic and silently compute only the example's steps for any other length."""
    values = list(args) + list(kwargs.values())
    tensor_axes = [_dynamic_axes(v, sequence) if isinstance(v, torch.Tensor) else [] for v in values]
    images = tensor_input and not sequence  # one image tensor: a declared batch axis
    program = _dynamo_export(module, args, kwargs, names, tensor_axes, opset, output_names, images)
    fixed = _specialized_axes(program, len(values), tensor_axes)
    if fixed:
        for index, axis in fixed:
            tensor_axes[index] = [a for a in tensor_axes[index] if a != axis]
            size = values[index].shape[axis]
            warnings.warn(
                f"axis {axis} of input {names[index]!r} is fixed by the model at size {size} (e.g. a Python "
                f"loop over it, or channels): the ONNX model takes only that size there",
                stacklevel=4,
            )
        program = _dynamo_export(module, args, kwargs, names, tensor_axes, opset, output_names, images)
    axes = {name: {i: _AXIS_NAMES[i] for i in a} for name, a in zip(names, tensor_axes, strict=True)}
    return program, axes


def _specialized_axes(program: Any, count: int, tensor_axes: list[list[int]]) -> list[tuple[int, int]]:
    """(input index, axis) of each requested dynamic axis that torch.export pinned to one value
    (its symbol's range is a single size), among the first ``count`` user inputs."""
    exported = program.exported_program
    user_inputs = set(exported.graph_signature.user_inputs)
    placeholders = [n for n in exported.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    pinned = []
    for index, (node, axes) in enumerate(zip(placeholders[:count], tensor_axes, strict=False)):
        shape = getattr(node.meta.get("val"), "shape", None)
        for axis in axes:
            size = shape[axis] if shape is not None and axis < len(shape) else None
            if isinstance(size, int):
                pinned.append((index, axis))
            elif isinstance(size, torch.SymInt):
                bounds = exported.range_constraints.get(size.node.expr)
                if bounds is not None and bounds.lower == bounds.upper:
                    pinned.append((index, axis))
    return pinned


def _dynamo_export(
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    tensor_axes: list[list[int]],
    opset: int,
    output_names: Sequence[str],
    images: bool,
) -> Any:
    """One ``torch.onnx.export(dynamo=True)`` call with ``tensor_axes`` dynamic per input."""
    values = list(args) + list(kwargs.values())
    values = [
        _grow(v, a) if isinstance(v, torch.Tensor) else v for v, a in zip(values, tensor_axes, strict=True)
    ]
    args, kwargs = tuple(values[: len(args)]), dict(zip(kwargs, values[len(args) :], strict=True))
    dims = [{i: torch.export.Dim.AUTO for i in a} or None for a in tensor_axes]
    shapes: Any = tuple(dims[: len(args)]) if not kwargs else dict(zip(names, dims, strict=True))
    if images:
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    try:
        with (
            torch.no_grad(),
            _eager_attention(module),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            return torch.onnx.export(
                module,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=shapes,
                input_names=names,
                output_names=list(output_names),
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; keep the root cause's first line
        raise QtkError(f"ONNX export of {type(module).__name__} failed: {_root_cause(error)}") from error


def _root_cause(error: BaseException) -> str:
    """``Type: first line`` of the innermost error of the chain, without terminal colour codes:
    torch.onnx wraps torch.export's error in a generic "Failed to export … step 1/3" message."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _reject_projected_lstm(module: nn.Module) -> None:
    """QtkError for an ``nn.LSTM`` with ``proj_size``: ONNX's LSTM op has no output projection, and
    torch's exporter writes one anyway, sized for the hidden state, that onnxruntime cannot run."""
    for name, child in module.named_modules():
        if isinstance(child, nn.LSTM) and child.proj_size:
            raise QtkError(
                f"module {name or type(module).__name__!r} is an LSTM with proj_size={child.proj_size}, which "
                "has no ONNX form onnxruntime runs (ONNX's LSTM has no output projection); export a model "
                "whose LSTMs have proj_size=0."
            )


def trace_to_ir(
    module: nn.Module,
    example_input: ExampleInput,
    *,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_names: Sequence[str] = ("logits",),
    sequence: bool = False,
) -> ir.Model:
    """Export ``module`` on ``example_input`` with ``torch.onnx.export(dynamo=True)``; return the IR.

    ``example_input`` is a tensor (ONNX input ``input_name``), a tuple (positional, named after the
    forward parameters) or a dict (keyword inputs, names kept). Axis 0 is the dynamic ``batch``; a dict
    input (or ``sequence=True``) also makes axis 1 of token ids and of 3-D float inputs dynamic
    (``seq``). Axes the model fixes stay static; when that export fails for a tensor or tuple input
    (axis 1 of a 3-D float input may be channels: a Conv1d front end), only the batch axis is dynamic.
    """
    module = module.eval()
    _reject_projected_lstm(module)
    args, kwargs, names = bind_inputs(module, example_input)
    sequence = sequence or isinstance(example_input, Mapping)
    tensor_input = isinstance(example_input, torch.Tensor)
    if tensor_input:
        names = [input_name]  # one tensor: the ONNX input is ``input_name``, whatever forward calls it
    try:
        program, axes = _export(module, args, kwargs, names, sequence, opset, output_names, tensor_input)
    except QtkError:
        # A tensor's axis 1 may be channels, not time (a Conv1d front end on [batch, 1, samples]):
        # then only the batch axis is dynamic
        if not sequence or isinstance(example_input, Mapping):
            raise
        program, axes = _export(module, args, kwargs, names, False, opset, output_names, tensor_input)
    model: ir.Model = program.model
    for value in model.graph.inputs:  # readable names for the axes that stayed symbolic
        named = axes.get(value.name, {})
        if value.shape is not None and named:
            value.shape = ir.Shape(
                [dim if isinstance(dim, int) else named.get(i, dim) for i, dim in enumerate(value.shape)]
            )
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
