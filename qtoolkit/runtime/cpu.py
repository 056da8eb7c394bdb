"""CPU model and the ISA flags that decide INT8 speed (no torch: the deploy path uses it)."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# CPU features that decide whether INT8 is fast (VNNI) and whether u8s8 saturates (AVX2 only).
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the :data:`INTERESTING_FLAGS` it has), read from /proc/cpuinfo when present."""
    cpuinfo = Path("/proc/cpuinfo")
    model, flags = platform.processor() or platform.machine(), ()
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                present = set(line.split(":", 1)[1].split())
                flags = tuple(flag for flag in INTERESTING_FLAGS if flag in present)
                break
    return model, flags


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX512-VNNI or AVX-VNNI (int8 dot products without u8s8 saturation)."""
    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_info()[1]))
