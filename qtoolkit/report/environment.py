"""What a report must record so that its numbers can be compared: machine, versions, threads."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# CPU features that decide whether INT8 is fast (VNNI) and whether u8s8 saturates (AVX2 only).
_INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16")


def _cpu_info() -> tuple[str, list[str]]:
    cpuinfo = Path("/proc/cpuinfo")
    model, flags = platform.processor() or platform.machine(), []
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                present = set(line.split(":", 1)[1].split())
                flags = [flag for flag in _INTERESTING_FLAGS if flag in present]
                break
    return model, flags


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX512-VNNI or AVX-VNNI (int8 dot products without u8s8 saturation)."""
    return bool({"avx512_vnni", "avx_vnni"} & set(_cpu_info()[1]))


def collect_environment(threads: int) -> dict[str, Any]:
    """Versions, CPU model and flags, core count and the thread count used for measurements."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    model, flags = _cpu_info()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "torch_quantized_engine": torch.backends.quantized.engine,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
