"""OpenVINO's CPU plugin as an ONNX runtime (the optional ``[openvino]`` extra; no torch).

OpenVINO reads the ONNX file itself and runs QuantizeLinear/DequantizeLinear groups as integer
kernels (its low-precision transformations), like onnxruntime's QDQ fusions. Its float ops run in
``INFERENCE_PRECISION_HINT``: f32 on CPUs without AMX/AVX512-BF16 support, bf16 by default on
CPUs with AMX. :func:`load` reads the hint back from the compiled model, so a report labels each
row with the precision that ran; ``strict_fp32`` sets the hint to f32.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from qtoolkit.errors import QtkError
from qtoolkit.runtime.onnx_runtimes import OnnxModel

# Nodes of the executed graph that compute nothing (inputs, outputs, weights, layout reorders).
_NON_COMPUTE = frozenset({"Input", "Output", "Const", "Parameter", "Result", "Reorder"})


@lru_cache(maxsize=1)
def _core() -> ov.Core:
    return ov.Core()


def version() -> str:
    return ov.__version__.split("-")[0]


def settings(threads: int, strict_fp32: bool) -> dict[str, Any]:
    """The compile_model configuration: ``threads`` inference threads, one stream (latency), and
    f32 inference precision when ``strict_fp32``."""
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if strict_fp32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


def runtime_graph(compiled: ov.CompiledModel) -> dict[str, int]:
    """Compute nodes of the graph OpenVINO executes, counted by ``"layerType:runtimePrecision"``
    (e.g. ``Convolution:u8`` is an integer convolution, ``Convolution:f32`` a float one)."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str)) if "layerType" in info else op.get_type_name()
        if kind in _NON_COMPUTE:
            continue
        precision = str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else "?"
        counts[f"{kind}:{precision}"] += 1
    return dict(sorted(counts.items()))


INTEGER_PRECISIONS = frozenset({"u8", "i8", "i32"})


def integer_and_float(graph: dict[str, int]) -> tuple[int, int]:
    """(integer, float) compute nodes of a :func:`runtime_graph` count: a file that runs float where
    another runs integer shows it here, whatever the machine's load."""
    integer = sum(n for key, n in graph.items() if key.rsplit(":", 1)[-1] in INTEGER_PRECISIONS)
    return integer, sum(graph.values()) - integer


def load(model_path: str | os.PathLike[str], threads: int = 2, strict_fp32: bool = False) -> OnnxModel:
    """Compile ``model_path`` for the CPU with :func:`settings`; one infer request, reused per call."""
    path = Path(model_path)
    if not path.is_file():
        raise QtkError(f"ONNX model {path} does not exist; export it first (qtk run / qtoolkit.export_onnx).")
    config = settings(threads, strict_fp32)
    compiled = _core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def infer(feed: Any) -> np.ndarray:
        # share_inputs: no copy of the feed (as onnxruntime reads its numpy inputs in place)
        return np.asarray(request.infer(dict(feed), share_inputs=True)[0])

    precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    info = {
        "runtime": "openvino",
        "version": version(),
        "precision": precision,
        "settings": {"device": "CPU", **config, "INFERENCE_PRECISION_HINT": precision},
    }
    names = tuple(port.get_any_name() for port in compiled.inputs)
    return OnnxModel(
        "openvino", names, infer, info, handle=compiled, runtime_graph=lambda: runtime_graph(compiled)
    )
