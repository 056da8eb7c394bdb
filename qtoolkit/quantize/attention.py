"""Attention blocks rewritten so that FX static PTQ quantizes their Linear layers and MatMuls.

``nn.MultiheadAttention`` is a leaf module that torch.ao leaves in float, and torchvision's Swin
window attention is an ``fx.wrap``-ed function called on its Linear layers' weights: in both, the
projections and the two activation x activation MatMuls stay float. Before tracing, each is
replaced by an equivalent module built from the same parameters:

    qkv = Linear(x)            (one INT8 tensor; q, k, v are picked out of it on its grid)
    s   = q @ kᵀ               (quantized::matmul -> QLinearMatMul in ONNX Runtime)
    p   = softmax(s/√d + B)    (float island: additive relative-position bias / shift mask B)
    o   = Linear(p @ v)        (quantized::matmul, then the output projection)

Softmax (with its scale and additive bias) is an ``fx.wrap`` leaf, so it stays float between DQ and
Q: an 8-bit grid over logits holding a -100 mask would leave the real logits a few levels. The
1/√d is applied there, not folded into the query rows of W: q, k and v share the in-projection's
grid (``int8_rules.select_on_int8``, as onnxruntime's quantizer keeps them), and a q scaled by
1/√d = 1/8 would use 3 bits fewer of it than k and v. In ONNX the scale folds into the scores'
DequantizeLinear (``grid_passes.fold_scale_into_dequantize``), so ONNX Runtime still fuses
``DQ -> Softmax -> Q`` into QLinearSoftmax. Swin modules
are specialised to the feature-map size they see on the example input (window partition, shift
mask and padding become constants); the batch size stays free. Swin V2's cosine attention keeps
``s = τ · q̂ · k̂ᵀ`` float (the normalisations need float anyway); its projections and ``p @ v`` are INT8.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from qtoolkit.runtime.torch_runner import call_model


def attention_softmax(
    scores: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 1.0
) -> torch.Tensor:
    """softmax(scale · scores + bias) over the last axis, in float (an FX leaf: torch.ao leaves it
    unquantized)."""
    scores = scores * scale if scale != 1.0 else scores
    return F.softmax(scores if bias is None else scores + bias, dim=-1)


fx.wrap("attention_softmax")


def cosine_attention_scores(q: torch.Tensor, k: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Swin V2's scaled cosine attention: ``τ · (q/‖q‖) · (k/‖k‖)ᵀ`` per head (τ = ``logit_scale``),
    in float (an FX leaf: the normalised q and k have no fixed range worth an INT8 grid)."""
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * logit_scale


fx.wrap("cosine_attention_scores")


def copy_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight`` [out, in] and ``bias`` (same device and dtype)."""
    linear = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


class QuantizableSelfAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` (no masks, no bias_k/v): same math, quantizable parts.

    Called with masks or with different query/key/value it defers to the original (float) module.
    """

    float_softmax = False  # DQ -> Softmax -> Q alone: ONNX Runtime fuses it into QLinearSoftmax

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = mha.embed_dim, mha.num_heads, mha.batch_first
        self.scale = (self.embed_dim // self.num_heads) ** -0.5
        self.qkv = copy_linear(mha.in_proj_weight.detach(), mha.in_proj_bias)
        self.out_proj = copy_linear(mha.out_proj.weight.detach(), mha.out_proj.bias)
        self.original = mha

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not (query is key and key is value) or key_padding_mask is not None or attn_mask is not None:
            return self.original(query, key, value, key_padding_mask, need_weights, attn_mask,
                                 average_attn_weights, is_causal)  # fmt: skip
        x = query if self.batch_first else query.transpose(0, 1)
        length, heads = x.shape[1], self.num_heads
        qkv = self.qkv(x).reshape(-1, length, 3, heads, self.embed_dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = attention_softmax(torch.matmul(q, k.transpose(-2, -1)), scale=self.scale)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, length, self.embed_dim)
        out = self.out_proj(out)
        out = out if self.batch_first else out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn


class QuantizableWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` (and ``ShiftedWindowAttentionV2``) for a fixed (H, W)
    feature map (any batch size).

    V2 differs in three places, all constant at inference: the key's qkv bias is zero (torchvision
    zeroes it on every call), the scores are scaled cosines (:func:`cosine_attention_scores`, τ =
    exp(min(logit_scale, ln 100))) instead of q·kᵀ/√d, and the position bias is 16·sigmoid of a small
    MLP of the relative coordinates; ``get_relative_position_bias`` gives it for both versions.
    """

    float_softmax = True  # softmax(s + bias): Add and Softmax stay float (see __init__)

    def __init__(self, swa: nn.Module, height: int, width: int) -> None:
        super().__init__()
        (wh, ww), heads = swa.window_size, swa.num_heads
        dim = swa.proj.in_features
        self.dim, self.heads, self.window = dim, heads, (wh, ww)
        self.size = (height, width)
        self.pad = ((wh - height % wh) % wh, (ww - width % ww) % ww)
        ph, pw = height + self.pad[0], width + self.pad[1]
        self.padded = (ph, pw)
        # no shift when one window covers the map (torchvision's rule)
        self.shift = (0 if wh >= ph else swa.shift_size[0], 0 if ww >= pw else swa.shift_size[1])
        self.scale = (dim // heads) ** -0.5
        qkv_bias = swa.qkv.bias
        logit_scale = getattr(swa, "logit_scale", None)  # Swin V2: cosine attention
        self.cosine = logit_scale is not None
        if self.cosine:
            self.register_buffer("logit_scale", torch.clamp(logit_scale.detach(), max=math.log(100.0)).exp())
            if qkv_bias is not None:  # torchvision zeroes the key's bias in every V2 forward
                qkv_bias = qkv_bias.detach().clone()
                qkv_bias[dim : 2 * dim] = 0.0
        self.qkv = copy_linear(swa.qkv.weight.detach(), qkv_bias)
        self.proj = copy_linear(swa.proj.weight.detach(), swa.proj.bias)
        bias = swa.get_relative_position_bias().detach()  # (1, heads, N, N)
        self.windows = (ph // wh) * (pw // ww)
        if sum(self.shift) > 0:  # (1, windows, heads, N, N): bias plus the shifted-window mask
            bias = bias.unsqueeze(1) + self._shift_mask().unsqueeze(1).unsqueeze(0)
        self.register_buffer("bias", bias)
        # Without the -100 shift mask, s + B could be an INT8 add (QLinearAdd) then QLinearSoftmax, as in
        # ViT: onnxruntime runs it, but OpenVINO 2026.4.1 fails to compile swin_t with an Add of two
        # dequantized [.., 3, 49, 49] tensors ("AddTransformation ... index '0' out of range"), so every
        # window keeps softmax(s + B) float. Flip to `sum(self.shift) > 0` once OpenVINO compiles it.
        self.float_softmax = True

    def _shift_mask(self) -> torch.Tensor:
        """-100 where two tokens of a window come from different regions of the rolled map."""
        (wh, ww), (sh, sw), (ph, pw) = self.window, self.shift, self.padded
        regions = torch.zeros(ph, pw)
        count = 0
        for h in ((0, -wh), (-wh, -sh), (-sh, None)):
            for w in ((0, -ww), (-ww, -sw), (-sw, None)):
                regions[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        regions = regions.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(self.windows, wh * ww)
        mask = regions.unsqueeze(1) - regions.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (wh, ww), (sh, sw), (ph, pw), c = self.window, self.shift, self.padded, self.dim
        tokens, heads = wh * ww, self.heads
        if sum(self.pad) > 0:
            x = F.pad(x, (0, 0, 0, self.pad[1], 0, self.pad[0]))
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        x = x.reshape(-1, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, tokens, c)
        qkv = self.qkv(x).reshape(-1, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.cosine:
            scores = cosine_attention_scores(q, k, self.logit_scale)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1))
        if sh or sw:
            scores = scores.reshape(-1, self.windows, heads, tokens, tokens)
        if self.cosine:  # already scaled
            attn = attention_softmax(scores, self.bias)
        elif self.float_softmax:
            attn = attention_softmax(scores, self.bias, self.scale)
        else:  # the scale is a quantized multiply by a number here (exact on the grid)
            attn = attention_softmax(scores * self.scale + self.bias)
        attn = attn.reshape(-1, heads, tokens, tokens)
        x = torch.matmul(attn, v).transpose(1, 2).reshape(-1, tokens, c)
        x = self.proj(x)
        x = x.reshape(-1, ph // wh, pw // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ph, pw, c)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        if sum(self.pad) > 0:
            x = x[:, : self.size[0], : self.size[1], :].contiguous()
        return x


def _swin_window_attentions() -> tuple[type, ...]:
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    except ImportError:  # torchvision is optional for the toolkit
        return ()
    return ShiftedWindowAttention, ShiftedWindowAttentionV2


# Attention module type -> builder of its quantizable replacement from (module, input shape).
AttentionBuilder = Callable[[nn.Module, torch.Size], nn.Module]
ATTENTION_REWRITES: dict[type, AttentionBuilder] = {
    nn.MultiheadAttention: lambda m, shape: QuantizableSelfAttention(m),
}
for _swa in _swin_window_attentions():  # exact types (a subclass may change the math)
    ATTENTION_REWRITES[_swa] = lambda m, shape: QuantizableWindowAttention(m, shape[1], shape[2])


def rewrite_attention(model: nn.Module, example_input: object) -> dict[str, nn.Module]:
    """Replace attention modules in ``model`` (in place) by quantizable equivalents: name -> new module.

    One forward pass on ``example_input`` (a tensor, a tuple of positional inputs or a dict of
    keyword inputs) records each module's input shape (Swin's window layout
    depends on it). MultiheadAttention with ``_qkv_same_embed_dim=False`` or bias_k/v, or called as
    cross-attention or with a mask on ``example_input``, is left alone (float),
    and so is any attention inside a module FX keeps as a leaf (it stays float there, and a leaf's
    own forward may read the original module's attributes).
    """
    leaves = _fx_leaf_names(model)
    targets = {
        name: module
        for name, module in model.named_modules()
        if name
        and type(module) in ATTENTION_REWRITES
        and not (isinstance(module, nn.MultiheadAttention) and not _plain_mha(module))
        and not any(name.startswith(f"{leaf}.") for leaf in leaves)
    }
    if not targets:
        return {}
    shapes: dict[str, torch.Size] = {}
    cross: set[str] = set()  # MultiheadAttention called as cross-attention or with masks: stays float

    def record(name: str) -> Callable[[nn.Module, tuple[object, ...], dict[str, object]], None]:
        def hook(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            shapes.setdefault(name, args[0].shape if args and isinstance(args[0], torch.Tensor) else None)
            if isinstance(module, nn.MultiheadAttention) and not _self_attention_call(args, kwargs):
                cross.add(name)

        return hook

    hooks = [
        module.register_forward_pre_hook(record(name), with_kwargs=True) for name, module in targets.items()
    ]
    try:
        with torch.no_grad():
            call_model(model, example_input)
    finally:
        for hook in hooks:
            hook.remove()
    done = {}
    for name, module in targets.items():
        if name not in shapes or name in cross:
            continue  # not called on this input, or not as plain self-attention
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        done[name] = ATTENTION_REWRITES[type(module)](module, shapes[name]).train(module.training)
        setattr(parent, attr, done[name])
    return done


def _self_attention_call(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    """MultiheadAttention called with query is key is value and no masks (what the rewrite runs)."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    bound = dict(zip(names, args, strict=False)) | kwargs
    same = bound.get("query") is bound.get("key") is bound.get("value")
    return same and bound.get("key_padding_mask") is None and bound.get("attn_mask") is None


def _fx_leaf_names(model: nn.Module) -> list[str]:
    """Names of the modules that symbolic tracing does not enter (torch.nn modules, by FX's rule).

    Containers are not called (their members are), so they are not leaves even in torch.nn.
    """
    tracer, containers = fx.Tracer(), (nn.ModuleList, nn.ModuleDict)
    return [
        name
        for name, module in model.named_modules()
        if name and not isinstance(module, containers) and tracer.is_leaf_module(module, name)
    ]


def _plain_mha(mha: nn.MultiheadAttention) -> bool:
    return mha._qkv_same_embed_dim and mha.bias_k is None and mha.in_proj_weight is not None
