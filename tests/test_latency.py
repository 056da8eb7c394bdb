"""The one interleaved-rounds latency helper and the paired ratio over its rounds."""

from __future__ import annotations

import pytest

from qtoolkit.evaluate.latency import best_of_rounds, interleaved_latency, paired_ratio


def test_paired_ratio_cancels_a_slow_round() -> None:
    # round 2 is a slow phase for both models: the paired ratio ignores it, a ratio of bests would not
    per_round = {"fp32": [10.0, 20.0, 10.0], "int8": [5.0, 10.0, 4.0]}
    assert paired_ratio(per_round, "fp32", "int8") == {"median": 2.0, "min": 2.0, "max": 2.5}
    assert best_of_rounds(per_round) == {"fp32": 10.0, "int8": 4.0}
    with pytest.raises(ValueError):
        paired_ratio({"a": [], "b": []}, "a", "b")


def test_interleaved_latency_alternates_variants_within_rounds() -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    per_round = interleaved_latency(calls, rounds=3, warmup=1, repeats=2)
    assert {name: len(values) for name, values in per_round.items()} == {"a": 3, "b": 3}
    assert all(value >= 0 for values in per_round.values() for value in values)
    assert order == (["a"] * 3 + ["b"] * 3) * 3  # warm-up + repeats of a, then of b, every round
