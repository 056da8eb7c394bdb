"""Optimizers by name, and the bytes their states hold.

Registry ``OPTIMIZERS`` (``train.optimizer`` in a recipe, :attr:`TrainConfig.optimizer`):

* ``sgd``: ``torch.optim.SGD`` with momentum, v <- mu v + g + wd w, w <- w - lr v (4 B of state per
  parameter).
* ``adamw``: ``torch.optim.AdamW``, m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
  w <- w - lr (m_hat / (sqrt(v_hat) + eps) + wd w), with m and v in fp32 (8 B per parameter).
* ``adamw8bit``: the same update from bitsandbytes' ``AdamW8bit`` (optional extra ``[lowmem]``), with
  m and v stored as 8-bit codes of a non-linear "dynamic" quantization map, blockwise: each block of
  256 values shares one fp32 absmax, m_i ~ absmax_block(i) * qmap[code_i]; about 2 B per parameter
  plus 8 B per 256. Before each update the block is dequantized, updated in fp32 and requantized.
  Parameters kept with fp32 states (they are tiny, and their moments are the least regular):
  every tensor with ``ndim < 2`` (biases, LayerNorm/BatchNorm scales and shifts), through a
  per-parameter-group ``optim_bits=32`` override of bitsandbytes' own per-parameter config
  (``Optimizer8bit.get_config``), and, by bitsandbytes' own rule, every tensor with fewer than
  ``min_8bit_size`` = 4096 elements. Embedding tables are matrices: 8-bit like every other matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, Protocol

import torch
from torch import nn

from qtoolkit.errors import QtkError

__all__ = ["OPTIMIZERS", "make_optimizer", "optimizer_state_bytes", "require_optimizer"]

MIN_8BIT_SIZE = 4096  # bitsandbytes' default: smaller tensors keep fp32 states
LOWMEM_HINT = 'pip install -e ".[lowmem]"'


class _Settings(Protocol):
    lr: float
    momentum: float
    weight_decay: float


Factory = Callable[[list[nn.Parameter], _Settings], torch.optim.Optimizer]


def _sgd(params: list[nn.Parameter], c: _Settings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def _adamw(params: list[nn.Parameter], c: _Settings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)


def _import_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as exc:  # also raised by a broken install (missing native library)
        raise QtkError(
            f"optimizer adamw8bit needs bitsandbytes, which is not installed ({exc}); "
            f"install the extra: {LOWMEM_HINT}"
        ) from None
    return bitsandbytes


@cache
def _adamw8bit_class() -> type[torch.optim.Optimizer]:
    bnb = _import_bitsandbytes()

    class AdamW8bit(bnb.optim.AdamW8bit):  # type: ignore[misc, name-defined]
        """bitsandbytes' AdamW8bit honouring a param group's ``optim_bits`` (32: fp32 states)."""

        def get_config(self, gindex: int, pindex: int, group: dict[str, Any]) -> dict[str, Any]:
            config = super().get_config(gindex, pindex, group)
            if "optim_bits" in group:
                config["optim_bits"] = group["optim_bits"]
            return config

    return AdamW8bit


def _adamw8bit(params: list[nn.Parameter], c: _Settings) -> torch.optim.Optimizer:
    matrices = [p for p in params if p.ndim >= 2]
    vectors = [p for p in params if p.ndim < 2]  # biases, norm scales/shifts: fp32 states
    groups = [{"params": group, **extra} for group, extra in ((matrices, {}), (vectors, {"optim_bits": 32}))]
    groups = [g for g in groups if g["params"]]
    return _adamw8bit_class()(groups, lr=c.lr, weight_decay=c.weight_decay, min_8bit_size=MIN_8BIT_SIZE)


OPTIMIZERS: dict[str, Factory] = {"sgd": _sgd, "adamw": _adamw, "adamw8bit": _adamw8bit}
_REQUIREMENTS: dict[str, Callable[[], Any]] = {"adamw8bit": _import_bitsandbytes}


def require_optimizer(name: str) -> None:
    """QtkError unless ``name`` is registered and its library importable (checked before any work)."""
    if name not in OPTIMIZERS:
        raise QtkError(f"optimizer {name!r} is not one of {sorted(OPTIMIZERS)}")
    if name in _REQUIREMENTS:
        _REQUIREMENTS[name]()


def make_optimizer(model: nn.Module, name: str, settings: _Settings) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s trainable parameters."""
    require_optimizer(name)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise QtkError("model has no trainable parameters; unfreeze some before training")
    return OPTIMIZERS[name](params, settings)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of all tensors in ``optimizer.state`` (moments, absmax, step counters, quantization maps),
    each storage counted once (bitsandbytes shares one qmap between parameters)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in _tensors(list(optimizer.state.values())):
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
