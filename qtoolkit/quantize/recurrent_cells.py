"""Recurrent cells (``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``) as two Linears and their gates.

A cell stepped by the user's own loop (a decoder, a tagger) holds W_ih and W_hh like an LSTM does,
but torch.ao's dynamic cells run ``quantized::quantized_*_cell_dynamic`` ops that no exporter
handles. Each cell is rewritten, on the copy being quantized, into the same math over two
``nn.Linear`` layers, ``ih`` (input) and ``hh`` (hidden state), which then quantize and export as any
dynamic Linear (int8 weights, input quantized at run time per call). With x the input, h (and c)
the state, σ the logistic sigmoid:

    LSTM:  i, f, g, o = chunk4(ih(x) + hh(h));  c' = σ(f)·c + σ(i)·tanh(g);  h' = σ(o)·tanh(c')
    GRU:   r = σ(ih_r + hh_r);  z = σ(ih_z + hh_z);  n = tanh(ih_n + r·hh_n);  h' = (1 − z)·n + z·h
    RNN:   h' = tanh(ih(x) + hh(h))   (or relu, as the cell's ``nonlinearity``)

which is torch's cell arithmetic (the gate order i, f, g, o and r, z, n of its weights). A missing
state is zeros, and an unbatched input (1-D) gives unbatched outputs, as with the cells.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qtoolkit.quantize.attention import copy_linear

__all__ = [
    "CELL_REWRITES",
    "QuantizableGRUCell",
    "QuantizableLSTMCell",
    "QuantizableRNNCell",
    "rewrite_cells",
]


class _TwoLinearCell(nn.Module):
    """Shared parts: the ``ih``/``hh`` Linears of a cell, and batching of inputs and states."""

    def __init__(self, cell: nn.RNNCellBase) -> None:
        super().__init__()
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.ih = copy_linear(cell.weight_ih, cell.bias_ih if cell.bias else None)
        self.hh = copy_linear(cell.weight_hh, cell.bias_hh if cell.bias else None)

    def _state(self, x: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """``state`` as [batch, hidden] (zeros when missing)."""
        if state is None:
            return x.new_zeros(x.shape[0], self.hidden_size)
        return state if state.dim() == 2 else state.unsqueeze(0)


class QuantizableLSTMCell(_TwoLinearCell):
    """``nn.LSTMCell`` as ``ih`` / ``hh`` Linears and its gates: forward(x, (h, c)) -> (h', c')."""

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batched = x.dim() == 2
        x = x if batched else x.unsqueeze(0)
        h, c = (None, None) if hx is None else hx
        h, c = self._state(x, h), self._state(x, c)
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class QuantizableGRUCell(_TwoLinearCell):
    """``nn.GRUCell`` as ``ih`` / ``hh`` Linears and its gates: forward(x, h) -> h'."""

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        batched = x.dim() == 2
        x = x if batched else x.unsqueeze(0)
        h = self._state(x, hx)
        input_r, input_z, input_n = self.ih(x).chunk(3, dim=1)
        hidden_r, hidden_z, hidden_n = self.hh(h).chunk(3, dim=1)
        reset = torch.sigmoid(input_r + hidden_r)
        update = torch.sigmoid(input_z + hidden_z)
        new = torch.tanh(input_n + reset * hidden_n)
        h = (1 - update) * new + update * h
        return h if batched else h.squeeze(0)


class QuantizableRNNCell(_TwoLinearCell):
    """``nn.RNNCell`` as ``ih`` / ``hh`` Linears and its tanh or relu: forward(x, h) -> h'."""

    def __init__(self, cell: nn.RNNCell) -> None:
        super().__init__(cell)
        self.nonlinearity = cell.nonlinearity

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        batched = x.dim() == 2
        x = x if batched else x.unsqueeze(0)
        pre = self.ih(x) + self.hh(self._state(x, hx))
        h = torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        return h if batched else h.squeeze(0)


# Exact types: a subclass may change the math.
CELL_REWRITES: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.LSTMCell: QuantizableLSTMCell,
    nn.GRUCell: QuantizableGRUCell,
    nn.RNNCell: QuantizableRNNCell,
}


def rewrite_cells(model: nn.Module, selects: Callable[[str], bool] = lambda _: True) -> list[str]:
    """Replace, in place, every LSTM/GRU/RNN cell of ``model`` whose name ``selects`` by its
    two-Linear equivalent (module docstring); return the names replaced."""
    names = [n for n, m in model.named_modules() if n and type(m) in CELL_REWRITES and selects(n)]
    for name in names:
        cell = model.get_submodule(name)
        model.set_submodule(name, CELL_REWRITES[type(cell)](cell))
    return names
