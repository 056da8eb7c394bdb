"""onnxruntime sessions with an explicit, recorded thread count."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from qtoolkit.errors import QtkError

# ORT graph fusions that make models slower on the CPU measured here (AMD EPYC, onnxruntime 1.32), so
# qtoolkit's sessions skip them. SkipLayerNormFusion (Add + LayerNormalization -> the contrib
# SkipLayerNormalization kernel) slows BERT-style models, FP32 and INT8 alike; ``bench/bert_dynamic.py``
# times every model with and without this list, side by side.
SLOW_FUSIONS: tuple[str, ...] = ("SkipLayerNormFusion",)


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
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
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
