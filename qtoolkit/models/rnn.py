"""Recurrent text classifiers: token ids → Embedding → LSTM/GRU → masked mean → Linear.

Registered as ``lstm-text`` and ``gru-text``. The model reads the ids of a subword tokenizer
(a BERT WordPiece vocabulary, say) but keeps embedding rows only for the tokens it was trained on:
a constant table ``token_map`` sends tokenizer id t to row m(t) ∈ {0 (padding), 1 (unknown),
2 … K+1 (the K kept tokens)}, so the embedding has K + 2 rows instead of the tokenizer's V.

Forward, with x the ids [B, T] and a the attention mask (1 for tokens, 0 for padding)::

    e_t = E[m(x_t)],   h_1 … h_T = RNN(e_1 … e_T)   (num_layers stacked, h_t ∈ R^{D·H}, D = 1 or 2)
    p   = Σ_t a_t h_t / max(1, Σ_t a_t),   logits = W p + b

A forward-only RNN with right padding computes h_t of the real tokens before it reads any padding,
so the FP32 logits of a text do not depend on how its batch was padded; a bidirectional one reads
the padding first in its backward direction (it learns to ignore it, but not exactly).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.models.registry import register_model

__all__ = ["CELLS", "PAD_ROW", "UNK_ROW", "RNNTextClassifier", "kept_tokens"]

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
PAD_ROW, UNK_ROW = 0, 1


class RNNTextClassifier(nn.Module):
    """Embedding → ``num_layers`` LSTM/GRU (batch first) → masked mean over time → Linear.

    ``vocab_size`` is the tokenizer's; ``num_embeddings`` the rows kept (2 + kept tokens, set by
    :meth:`set_vocabulary`; default: every tokenizer id gets its own row).
    """

    def __init__(
        self,
        cell: str = "lstm",
        vocab_size: int = 30522,
        num_classes: int = 2,
        embed_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        num_embeddings: int | None = None,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise QtkError(f"unknown recurrent cell {cell!r}; use one of {', '.join(CELLS)}")
        for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim), ("hidden_size", hidden_size),
                            ("num_layers", num_layers), ("num_classes", num_classes)):  # fmt: skip
            if value < 1:
                raise QtkError(f"{cell}-text option {name}={value} must be >= 1")
        rows = num_embeddings if num_embeddings is not None else vocab_size
        self.cell = cell
        # identity by default: tokenizer id t -> row t (pad_id -> the padding row when rows allow)
        identity = torch.arange(vocab_size, dtype=torch.int64).clamp(max=rows - 1)
        self.register_buffer("token_map", identity)
        self.embedding = nn.Embedding(rows, embed_dim, padding_idx=PAD_ROW)
        self.rnn = CELLS[cell](
            embed_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.classifier = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)
        self.pad_id = pad_id

    def set_vocabulary(self, kept: Iterable[int]) -> None:
        """Give each tokenizer id in ``kept`` its own row (2, 3, …); every other id maps to UNK_ROW and
        ``pad_id`` to PAD_ROW. The embedding must have ``2 + len(kept)`` rows."""
        kept = [int(t) for t in kept if int(t) != self.pad_id]
        if len(kept) + 2 != self.embedding.num_embeddings:
            raise QtkError(
                f"{len(kept)} kept tokens need {len(kept) + 2} embedding rows, the model has "
                f"{self.embedding.num_embeddings}; build it with num_embeddings={len(kept) + 2}"
            )
        table = torch.full_like(self.token_map, UNK_ROW)
        table[torch.tensor(kept, dtype=torch.int64)] = torch.arange(2, len(kept) + 2)
        table[self.pad_id] = PAD_ROW
        self.token_map.copy_(table)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        rows = torch.index_select(self.token_map, 0, input_ids.reshape(-1)).reshape(input_ids.shape)
        hidden, _ = self.rnn(self.embedding(rows))
        if attention_mask is None:
            return self.classifier(hidden.mean(dim=1))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.classifier(pooled)


def kept_tokens(
    input_ids: Iterable[np.ndarray], min_count: int = 1, exclude: Iterable[int] = ()
) -> np.ndarray:
    """Sorted tokenizer ids seen at least ``min_count`` times in ``input_ids`` (ids in ``exclude``,
    e.g. padding, left out): the vocabulary a model trained on this data can have learnt."""
    counts: dict[int, int] = {}
    for ids in input_ids:
        values, numbers = np.unique(np.asarray(ids).reshape(-1), return_counts=True)
        for value, number in zip(values.tolist(), numbers.tolist(), strict=True):
            counts[value] = counts.get(value, 0) + number
    skip = set(int(t) for t in exclude)
    return np.array(sorted(t for t, c in counts.items() if c >= min_count and t not in skip), np.int64)


@register_model("lstm-text")
def lstm_text(**options: object) -> RNNTextClassifier:
    """Embedding → LSTM (2 layers, 256 wide by default) → Linear text classifier."""
    return RNNTextClassifier("lstm", **options)  # type: ignore[arg-type]


@register_model("gru-text")
def gru_text(**options: object) -> RNNTextClassifier:
    """Embedding → GRU (2 layers, 256 wide by default) → Linear text classifier."""
    return RNNTextClassifier("gru", **options)  # type: ignore[arg-type]
