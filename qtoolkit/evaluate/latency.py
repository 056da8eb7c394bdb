"""Latency as the median of repeated calls after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Latency:
    """Wall-clock latency of one call, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_latency(call: Callable[[], object], warmup: int = 10, repeats: int = 50) -> Latency:
    """Run ``call`` ``warmup`` times untimed, then ``repeats`` times timed with perf_counter."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
    return Latency(statistics.median(samples), p90, samples[0], repeats)
