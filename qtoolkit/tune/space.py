"""What ``qtk tune`` may change: axes of recipe ``quantize`` keys, read from the registries at run time.

A setting is a mapping of ``quantize`` keys to axis values (:func:`recipe_values` turns them into
recipe values). Each method has a list of axes (:data:`AXES`); an axis names one key and a function
returning its candidate values, called when tuning starts, so that observers or weight schemes
registered later (e.g. a new entry of ``ACTIVATION_OBSERVERS``) join the search without a change
here; an axis may apply to some recipes only (the PTQ algorithms need FX mode, learned rounding
weights below 8 bits). The space is the product of the applicable axes, ordered by how many keys
differ from the recipe's own values (the recipe itself first, then one change at a time, then
pairs, ...), then by which axes change (earlier axes first), then by value order: small departures
are tried first, and among them the axes listed first, so AXES lists cheap, likely winners first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qtoolkit.errors import QtkError
from qtoolkit.recipe import AdaRoundSection, QuantizeSection

Setting = dict[str, Any]


def _same(value: Any) -> Any:
    return value


def _always(section: QuantizeSection) -> bool:
    return True


def _as_is(section: QuantizeSection, value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Axis:
    """One ``quantize`` key and its candidate values (read when the search starts)."""

    key: str
    values: Callable[[], Sequence[Any]]
    normalize: Callable[[Any], Any] = _same  # the recipe's value as the axis spells it
    applies: Callable[[QuantizeSection], bool] = _always  # whether this recipe can vary the key
    to_recipe: Callable[[QuantizeSection, Any], Any] = _as_is  # axis value -> recipe value


def _activation_observers() -> list[str]:
    from qtoolkit.quantize.qconfig import ACTIVATION_OBSERVERS

    return list(ACTIVATION_OBSERVERS)


def _weight_schemes() -> list[str]:
    from qtoolkit.quantize.qconfig import WEIGHT_SCHEMES

    return list(WEIGHT_SCHEMES)


def _dynamic_weight_schemes() -> list[str]:
    return ["per_channel", "per_tensor"]  # torch's dynamic qconfigs: min/max weight ranges only


def _on_off() -> tuple[bool, bool]:
    return (False, True)


def _fx(section: QuantizeSection) -> bool:
    """The PTQ algorithms edit the FX graph (``mode`` as resolved for the model; eager refuses them)."""
    return section.mode != "eager"


def _below_8_bits(section: QuantizeSection) -> bool:
    return _fx(section) and section.weight_bits < 8


def _adaround(section: QuantizeSection, on: bool) -> AdaRoundSection | None:
    """On: the recipe's own ``quantize.adaround`` section, else the defaults; off: round to nearest."""
    return (section.adaround or AdaRoundSection()) if on else None


AXES: dict[str, list[Axis]] = {
    # Cheap, likely winners first. Bias correction: one extra float pass over the calibration
    # batches, and the largest gain measured on EfficientNet-lite2 (min-max 89.84% -> 92.97% val
    # agreement, bench/ptq_algorithms.py); observers: a calibration each; equalization: weights only
    # but mixed results there (91.41% with bias correction); AdaRound: minutes per layer, last.
    "static": [
        Axis("bias_correction", _on_off, bool, _fx),
        Axis("activation_observer", _activation_observers),
        Axis("equalize", _on_off, bool, _fx),
        Axis("weight_observer", _weight_schemes),
        Axis("adaround", _on_off, lambda value: value is not None, _below_8_bits, _adaround),
    ],
    "dynamic": [
        # SmoothQuant migration: MiniLM's validation KL from FP32 17e-4 -> 4e-4 at 0.85 (README);
        # needs the task's calibration batches (text tasks give a train-split head)
        Axis("smoothing", lambda: (None, 0.85, 0.5)),
        Axis("weight_observer", _dynamic_weight_schemes),  # per_channel -> one scale per output row
        Axis("reduce_range", lambda: (False, True), bool),  # 8- or 7-bit activations (None: 8)
        Axis("embeddings", lambda: (True, False)),  # uint8 embedding rows, or float tables
    ],
}


def register_axis(method: str, axis: Axis) -> None:
    """Let tuning of ``method`` also vary ``axis.key`` (a ``quantize`` key of the recipe)."""
    AXES.setdefault(method, []).append(axis)


def _axes(section: QuantizeSection) -> list[Axis]:
    if section.method not in AXES:
        raise QtkError(
            f"qtk tune supports quantize.method {' or '.join(sorted(AXES))}, not {section.method!r}"
        )
    return [a for a in AXES[section.method] if hasattr(section, a.key) and a.applies(section)]


def recipe_values(section: QuantizeSection, setting: Setting) -> dict[str, Any]:
    """``setting`` as ``quantize`` values of ``section``'s recipe (e.g. adaround on -> its section)."""
    axes = {a.key: a for a in AXES.get(section.method, [])}
    return {k: axes[k].to_recipe(section, v) if k in axes else v for k, v in setting.items()}


def candidate_settings(section: QuantizeSection) -> list[Setting]:
    """Every setting of ``section.method``'s applicable axes, the recipe's own first (module docstring).

    ``section.mode`` should be resolved for the model (``auto`` -> eager or fx): the FX-only axes
    are left out for eager."""
    axes = _axes(section)
    own = {a.key: a.normalize(getattr(section, a.key)) for a in axes}
    choices = []
    for axis in axes:
        values = list(dict.fromkeys([own[axis.key], *axis.values()]))  # the recipe's value first
        choices.append(values)
    keys = list(own)

    def order(combo: tuple[int, ...]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        changed = tuple(i for i, value in enumerate(combo) if value)  # index 0: the recipe's value
        return len(changed), changed, combo  # fewest changes, then earliest axes, then value order

    combos = sorted(itertools.product(*(range(len(v)) for v in choices)), key=order)
    return [{k: choices[i][c] for i, (k, c) in enumerate(zip(keys, combo, strict=True))} for combo in combos]
