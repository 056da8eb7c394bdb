"""What a report must record so that its numbers can be compared: machine, versions, threads."""

from __future__ import annotations

import os
import platform
from typing import Any

from qtoolkit.runtime.cpu import cpu_has_vnni, cpu_info
from qtoolkit.runtime.onnx_runtimes import runtime_version

__all__ = ["collect_environment", "cpu_has_vnni"]


def collect_environment(threads: int) -> dict[str, Any]:
    """Versions, CPU model and flags, core count and the thread count used for measurements."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    model, flags = cpu_info()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": model,
        "cpu_flags": list(flags),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "torch_quantized_engine": torch.backends.quantized.engine,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": runtime_version("openvino"),  # None when the [openvino] extra is not installed
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
