"""Peak memory of a block of work: CUDA allocator peak, or the process's resident set on the CPU.

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at entry (tensors only;
  the caching allocator's reserve and the CUDA context are not counted).
* CPU: the largest resident set size (RSS) seen by a daemon thread reading ``/proc/self/statm`` every
  ``interval`` seconds (and once at entry and exit), so it covers this block only, unlike
  ``getrusage().ru_maxrss`` (the peak over the whole process lifetime), which is the fallback where
  ``/proc`` does not exist. A sampled peak can miss a spike shorter than ``interval``.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

__all__ = ["PeakMemory", "current_rss_bytes"]

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int | None:
    """This process's resident set size now (None without /proc)."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _lifetime_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.bytes`` and ``peak.kind``."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device, self.interval = device, interval
        self.bytes: int | None = None
        self.kind = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None:
            self.bytes = max(self.bytes or 0, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_memory_allocated"
        elif current_rss_bytes() is not None:
            self.kind = "cpu_peak_rss_sampled"
            self._sample()
            self._thread = threading.Thread(target=self._run, name="qtk-peak-rss", daemon=True)
            self._thread.start()
        else:
            self.kind = "cpu_peak_rss_process_lifetime"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
        else:
            self.bytes = _lifetime_peak_rss()
