"""What ``qtk tune`` may change: axes of recipe ``quantize`` keys, read from the registries at run time.

A setting is a mapping of ``quantize`` keys to values (recipe overrides). Each method has a list of
axes (:data:`AXES`); an axis names one key and a function returning its candidate values, called
when tuning starts, so that observers or weight schemes registered later (e.g. a new entry of
``ACTIVATION_OBSERVERS``) join the search without a change here. The space is the product of the
axes, ordered by how many keys differ from the recipe's own values (the recipe itself first, then
one change at a time, then pairs, ...), ties in axis order: small departures are tried first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qtoolkit.errors import QtkError
from qtoolkit.recipe import QuantizeSection

Setting = dict[str, Any]


@dataclass(frozen=True)
class Axis:
    """One ``quantize`` key and its candidate values (read when the search starts)."""

    key: str
    values: Callable[[], Sequence[Any]]
    normalize: Callable[[Any], Any] = lambda value: value  # the recipe's value as the axis spells it


def _activation_observers() -> list[str]:
    from qtoolkit.quantize.qconfig import ACTIVATION_OBSERVERS

    return list(ACTIVATION_OBSERVERS)


def _weight_schemes() -> list[str]:
    from qtoolkit.quantize.qconfig import WEIGHT_SCHEMES

    return list(WEIGHT_SCHEMES)


AXES: dict[str, list[Axis]] = {
    "static": [Axis("activation_observer", _activation_observers), Axis("weight_observer", _weight_schemes)],
    "dynamic": [
        Axis("weight_observer", _weight_schemes),  # per_channel -> one scale per output row
        Axis("reduce_range", lambda: (False, True), bool),  # 8- or 7-bit activations (None: 8)
        Axis("embeddings", lambda: (True, False)),  # uint8 embedding rows, or float tables
    ],
}


def register_axis(method: str, axis: Axis) -> None:
    """Let tuning of ``method`` also vary ``axis.key`` (a ``quantize`` key of the recipe)."""
    AXES.setdefault(method, []).append(axis)


def candidate_settings(section: QuantizeSection) -> list[Setting]:
    """Every setting of ``section.method``'s axes, the recipe's own first (see the module docstring)."""
    if section.method not in AXES:
        raise QtkError(
            f"qtk tune supports quantize.method {' or '.join(sorted(AXES))}, not {section.method!r}"
        )
    axes = [a for a in AXES[section.method] if hasattr(section, a.key)]
    own = {a.key: a.normalize(getattr(section, a.key)) for a in axes}
    choices = []
    for axis in axes:
        values = list(dict.fromkeys([own[axis.key], *axis.values()]))  # the recipe's value first
        choices.append(values)
    product = [dict(zip(own, combo, strict=True)) for combo in itertools.product(*choices)]
    # stable sort: product order keeps axis order among settings with the same number of changes
    return sorted(product, key=lambda s: sum(s[k] != own[k] for k in own))
