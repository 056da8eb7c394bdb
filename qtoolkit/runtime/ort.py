"""onnxruntime sessions with an explicit thread count, their feeds, and the ORT runner.

Imports no torch: ``qtoolkit.deploy`` predicts with only onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from qtoolkit.errors import QtkError
from qtoolkit.runtime.onnx_runtimes import OnnxModel

# ORT graph fusions that make models slower on the CPU measured here (AMD EPYC, onnxruntime 1.32), so
# qtoolkit's sessions skip them. SkipLayerNormFusion (Add + LayerNormalization -> the contrib
# SkipLayerNormalization kernel) slows BERT-style models, FP32 and INT8 alike; ``bench/bert_dynamic.py``
# times every model with and without this list, side by side.
SLOW_FUSIONS: tuple[str, ...] = ("SkipLayerNormFusion",)

_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

Runner = Callable[[Any], np.ndarray]


def make_session(
    model_path: str | os.PathLike[str],
    threads: int = 2,
    optimization: str = "all",
    disabled_optimizers: Sequence[str] = SLOW_FUSIONS,
    optimized_model_path: str | os.PathLike[str] | None = None,
) -> ort.InferenceSession:
    """Open ``model_path`` on the CPU provider with ``threads`` intra-op threads.

    ``optimization`` is ``all`` (ORT_ENABLE_ALL, which fuses QDQ groups into integer kernels),
    ``extended``, ``basic`` or ``disabled``; ``disabled_optimizers`` names ORT fusions to skip
    (default: :data:`SLOW_FUSIONS`; ``()`` for ORT's own defaults). Inter-op threads are fixed to 1 so
    that latency comparisons between models use the same parallelism. ``optimized_model_path`` saves
    the graph ORT actually runs (for inspection).
    """
    path = Path(model_path)
    if not path.is_file():
        raise QtkError(f"ONNX model {path} does not exist; export it first (qtk run / qtoolkit.export_onnx).")
    if optimization not in _LEVELS:
        raise QtkError(f"unknown ORT optimization level {optimization!r}; choose from {', '.join(_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers)
    )


def model_size_mb(model_path: str | os.PathLike[str]) -> float:
    """Size on disk in MB (10^6 bytes) of an ONNX file plus its external-data side files."""
    path = Path(model_path)
    total = path.stat().st_size
    for side in path.parent.glob(f"{path.name}.data*"):
        total += side.stat().st_size
    return total / 1e6


def to_numpy(value: Any) -> np.ndarray:
    """A numpy view of an array or a torch tensor (duck-typed, so this module needs no torch)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
    return np.asarray(value)


def ort_feed(session: ort.InferenceSession, inputs: Any) -> dict[str, np.ndarray]:
    """The session feed for one batch of inputs (see :func:`feed_by_names`)."""
    return feed_by_names([value.name for value in session.get_inputs()], inputs)


def feed_by_names(names: Sequence[str], inputs: Any) -> dict[str, np.ndarray]:
    """The feed of a model with inputs ``names`` for one batch: a mapping is matched by name, a tuple
    or list by position (the model's input order), a single array or tensor goes to the first input."""
    names = list(names)
    if isinstance(inputs, Mapping):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise QtkError(
                f"the ONNX model needs inputs {names}; the batch has no {missing} (it has {sorted(inputs)})."
            )
        return {name: to_numpy(inputs[name]) for name in names}
    if isinstance(inputs, tuple | list):
        if len(inputs) != len(names):
            raise QtkError(f"the ONNX model takes {len(names)} inputs {names}; the batch has {len(inputs)}.")
        return {name: to_numpy(value) for name, value in zip(names, inputs, strict=True)}
    return {names[0]: to_numpy(inputs)}


def ort_runner(session: ort.InferenceSession) -> Runner:
    """Runner of an ORT session: one batch of inputs -> its first output (the logits)."""
    return lambda inputs: session.run(None, ort_feed(session, inputs))[0]


def ort_call(session: ort.InferenceSession, inputs: Any) -> Callable[[], object]:
    """A zero-argument call running ``session`` on ``inputs``, the feed built once (for timing)."""
    feed = ort_feed(session, inputs)
    return lambda: session.run(None, feed)


def version() -> str:
    return ort.__version__


def load(model_path: str | os.PathLike[str], threads: int = 2, strict_fp32: bool = False) -> OnnxModel:
    """``model_path`` on onnxruntime's CPU provider (:func:`make_session`) as an :class:`OnnxModel`.

    ``strict_fp32`` changes nothing: the CPU provider runs every float op in FP32.
    """
    session = make_session(model_path, threads)
    info = {
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "precision": "f32",
        "settings": {
            "provider": "CPUExecutionProvider",
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "graph_optimization_level": "all",
            "disabled_optimizers": list(SLOW_FUSIONS),
        },
    }
    names = tuple(value.name for value in session.get_inputs())
    return OnnxModel("onnxruntime", names, lambda feed: session.run(None, feed)[0], info, handle=session)
