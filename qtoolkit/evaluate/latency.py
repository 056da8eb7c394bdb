"""Latency as the median of repeated calls after warm-up, and paired comparisons between models.

Timings on a shared host drift in phases of seconds to minutes. :func:`interleaved_latency` times
every variant once per round, variants alternating within a round, so a slow phase hits all of
them alike; :func:`paired_ratio` then compares two variants round by round,

    r_k = t_num(k) / t_den(k),   reported as median_k r_k with its range [min_k r_k, max_k r_k],

which cancels a phase that a ratio of overall bests (min_k t_num / min_k t_den) would not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
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


def interleaved_latency(
    calls: Mapping[str, Callable[[], object]], *, rounds: int, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Median ms of each round, per variant: ``rounds`` rounds, each timing every variant in turn
    (``warmup`` untimed calls, then the median of ``repeats`` timed ones)."""
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds ({rounds}) and repeats ({repeats}) must be at least 1")
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            per_round[name].append(measure_latency(call, warmup, repeats).median_ms)
    return per_round


def paired_ratio(
    per_round: Mapping[str, Sequence[float]], numerator: str, denominator: str
) -> dict[str, float]:
    """Median, min and max over rounds of ``numerator / denominator``, each ratio within one round
    (``paired_ratio(t, "fp32", "int8")`` is INT8's speed-up over FP32)."""
    ratios = [num / den for num, den in zip(per_round[numerator], per_round[denominator], strict=True)]
    if not ratios:
        raise ValueError(f"no rounds to compare for {numerator!r} / {denominator!r}")
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def best_of_rounds(per_round: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each variant's fastest round median (ms): the figure a latency table shows."""
    return {name: min(values) for name, values in per_round.items()}
