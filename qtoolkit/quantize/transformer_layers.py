"""``nn.Transformer`` and its encoder/decoder (layers) made traceable, so static PTQ quantizes them.

FX treats every ``torch.nn`` module as a leaf, and these five cannot simply be traced through:
their forwards branch on tensor properties (the nested-tensor "fast path" checks ``src.dim()``,
``src.is_nested``, mask dtypes; ``nn.Transformer`` checks shapes). As leaves, torch.ao leaves their Linear layers in float, and the
attention rewrite must not touch the ``MultiheadAttention`` inside them (their fast-path check
reads ``self_attn.in_proj_bias``). Each is re-classed, on the copy ``quantize_static`` works on,
to a subclass whose forward is the module's own slow path: the same math (the fast path is a
fused kernel of it), no data-dependent branches, and no new state (``__class__`` swap only).

Masks pass straight to ``MultiheadAttention``, which canonicalizes them itself; a causal-mask
hint is only forwarded when given as ``True`` (the hint is a speed hint, the mask stays the truth).
"""

from __future__ import annotations

import torch
from torch import nn

from qtoolkit.quantize.canonical import reclass_modules


class TraceableEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` without its fast path (post- or pre-norm, as configured)."""

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


class TraceableEncoder(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` without its nested-tensor fast path."""

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        output = src
        for layer in self.layers:
            output = layer(
                output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal is True
            )
        return output if self.norm is None else self.norm(output)


class TraceableDecoderLayer(nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer``: its forward has no fast path, it only needs to stop being a leaf."""


class TraceableDecoder(nn.TransformerDecoder):
    """``nn.TransformerDecoder`` without the ``is_nested`` check that only feeds the causal-mask hint."""

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        output = tgt
        for layer in self.layers:
            output = layer(
                output,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=tgt_is_causal is True,
                memory_is_causal=memory_is_causal,
            )
        return output if self.norm is None else self.norm(output)


class TraceableTransformer(nn.Transformer):
    """``nn.Transformer`` without its input-shape checks (they raise on mismatched batch or width)."""

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> torch.Tensor:
        memory = self.encoder(
            src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal
        )
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )


# exact torch.nn type -> traceable subclass (user subclasses keep their own forward and stay leaves
# only if FX would make them leaves anyway: they live outside torch.nn, so FX traces them).
TRACEABLE_TRANSFORMERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.TransformerEncoderLayer: TraceableEncoderLayer,
    nn.TransformerEncoder: TraceableEncoder,
    nn.TransformerDecoderLayer: TraceableDecoderLayer,
    nn.TransformerDecoder: TraceableDecoder,
    nn.Transformer: TraceableTransformer,
}


def make_transformers_traceable(model: nn.Module) -> list[str]:
    """Re-class (in place) every torch.nn Transformer encoder/decoder (layer) in ``model``: their names."""
    return reclass_modules(model, TRACEABLE_TRANSFORMERS)
