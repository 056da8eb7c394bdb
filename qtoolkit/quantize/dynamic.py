"""Dynamic post-training quantization with ``torch.ao.quantization.quantize_dynamic``.

Math. A dynamically quantized Linear stores its weight as int8 once, offline:

    W ≈ s_w · (W_q − z_w),   W_q ∈ [−128, 127]      (per tensor, or per output channel with s_w[n])

(torch's observers are symmetric, so z_w = 0). At run time each call measures the range of its
input over the *whole* tensor, lo = min(min x, 0), hi = max(max x, 0), and quantizes it to uint8:

    s_x = (hi − lo) / q_max,   z_x = round(−lo / s_x),   x_q = clamp(round(x / s_x) + z_x, 0, q_max)
    y   = s_x · s_w · Σ_k (x_q − z_x)(W_q − z_w) + b            (int32 accumulation, float bias)

with q_max = 127 when ``reduce_range`` (torch's default: 7-bit activations avoid the u8·s8 pair-sum
saturation of AVX2 ``vpmaddubsw``) and 255 otherwise (what onnxruntime's ``DynamicQuantizeLinear``
does; safe on CPUs with VNNI). Embeddings are weight-only: per-row uint8 with float scale and offset,
dequantized after the lookup.

LSTM and GRU (``torch.ao.nn.quantized.dynamic.LSTM``/``GRU``) hold each layer and direction's
W_ih and W_hh as int8 like a Linear; on the CPU torch projects the whole input sequence at once,
W_ih · x over all time steps as one quantized GEMM (one activation range for the sequence), then
quantizes h_{t−1} at every step for W_hh · h. ``reduce_range`` applies to them too.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.quantize.api import QuantizedModel, register_quantizer
from qtoolkit.quantize.attention import rewrite_attention
from qtoolkit.quantize.base import QuantConfig, set_backend
from qtoolkit.quantize.recurrent_cells import CELL_REWRITES, rewrite_cells
from qtoolkit.quantize.smoothing import SmoothedLinear, smooth_linears
from qtoolkit.quantize.transformer_layers import make_transformers_traceable

__all__ = [
    "DynamicQuantConfig",
    "FullRangeDynamicLinear",
    "activation_reduce_range",
    "cell_reduce_range",
    "quantize_dynamic",
    "quantized_modules",
]


@dataclass(frozen=True)
class DynamicQuantConfig(QuantConfig):
    """What ``quantize_dynamic`` quantizes and how (``backend``: torch's engine for the INT8 kernels).

    ``per_channel`` sets the Linear weights' granularity, ``recurrent_per_channel`` the LSTM/GRU
    weights' (per tensor by default: the faster DynamicQuantizeLSTM, at no measured accuracy cost).
    include / exclude are fnmatch patterns on module names (``model.named_modules()``), e.g.
    ``exclude=("classifier",)`` keeps the classification head in float, ``("*embeddings*",)`` the
    embeddings. A module is quantized when it is a Linear (with ``embeddings`` an Embedding, with
    ``recurrent`` an LSTM or GRU), matches some include pattern and no exclude pattern. With
    ``recurrent``, a selected LSTMCell/GRUCell/RNNCell becomes two Linears (input and hidden state:
    :mod:`qtoolkit.quantize.recurrent_cells`) quantized as Linears. A selected recurrent module torch
    cannot quantize (``nn.RNN``, an LSTM/GRU without bias) stays float, named in a warning and in
    ``details["float_modules"]``; an LSTM with ``proj_size`` is an error (no runnable ONNX form).
    """

    method: ClassVar[str] = "dynamic"
    export_format: ClassVar[str] = "dynamic"
    RENAMED: ClassVar[dict[str, str]] = {"engine": "backend"}

    dtype: str = "qint8"  # weights; only qint8 is exportable to integer ONNX
    per_channel: bool = True  # Linear: one weight scale per output channel (fbgemm/x86 support it)
    # LSTM/GRU weights: one scale per tensor by default. ORT's DynamicQuantizeLSTM ran 1.4-10% slower
    # with per-row scales and tied onnxruntime's quantize_dynamic with one scale (paired rounds,
    # `python bench/rnn_dynamic.py --subjects recipe-lstm anchor-lstm --compare-scales`); the recipe
    # LSTM's accuracy did not drop (73.24% vs 73.13% FP32). True: one scale per gate row.
    recurrent_per_channel: bool = False
    reduce_range: bool = False  # 7-bit activations (torch's default) instead of 8-bit (ORT's)
    embeddings: bool = True  # also quantize nn.Embedding weight-only (uint8 per row)
    recurrent: bool = True  # also quantize nn.LSTM / nn.GRU and the cells (int8 W_ih and W_hh)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    # SmoothQuant migration strength α in [0, 1] (quantize/smoothing.py), None: off. Needs calibration
    # batches. MiniLM: KL of INT8 from FP32 logits 17e-4 -> 3.9e-4 at 0.85 (README, "Smoothing").
    smoothing: float | None = None

    def validate(self) -> None:
        if self.dtype != "qint8":
            raise QtkError(f"dynamic quantization dtype {self.dtype!r} is not supported; use 'qint8'.")
        if self.smoothing is not None and not 0.0 <= self.smoothing <= 1.0:
            raise QtkError(
                f"smoothing {self.smoothing} is outside [0, 1]; use e.g. 0.85, or leave it unset (off)."
            )

    def selects(self, *names: str) -> bool:
        """True when module ``name`` is matched by include and not by exclude (several names: the
        aliases of one module, e.g. a smoothed Linear's ``x.linear`` and ``x``; any may match)."""

        def matched(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)

        return matched(self.include) and not matched(self.exclude)


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """torch's dynamic Linear with 8-bit (0..255) instead of 7-bit activation quantization.

    torch hard-codes ``reduce_range=True`` in ``DynamicQuantizedLinear.forward``; the kernel itself
    takes the flag, so this subclass only changes that argument.
    """

    reduce_range = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear(full_range)"


def _qconfigs(config: DynamicQuantConfig) -> tuple[Any, Any, Any]:
    """torch.ao qconfigs for Linear, Embedding and LSTM/GRU modules."""
    from torch.ao.quantization import qconfig as qc

    def weights(per_channel: bool) -> Any:
        return qc.per_channel_dynamic_qconfig if per_channel else qc.default_dynamic_qconfig

    return (
        weights(config.per_channel),
        qc.float_qparams_weight_only_qconfig,
        weights(config.recurrent_per_channel),
    )


def _recurrent_spec(name: str, module: nn.Module, qconfig: Any) -> tuple[Any, str | None]:
    """(qconfig, None) for a recurrent module torch can quantize; (None, why) for one it cannot, which
    stays float (named in a warning, as ORT's quantize_dynamic leaves it float); QtkError for an LSTM
    with ``proj_size``, which no exporter writes as a runnable ONNX model."""
    if type(module) in (nn.LSTM, nn.GRU):
        if getattr(module, "proj_size", 0):
            raise QtkError(
                f"module {name!r} is an LSTM with proj_size={module.proj_size}, which neither torch's dynamic "
                f"quantization nor ONNX's LSTM supports; use proj_size=0 (exclude=({name!r},) keeps it float "
                "in torch, but the model will not export to ONNX)."
            )
        if not module.bias:
            return None, f"{name} ({type(module).__name__} without bias)"
        return qconfig, None
    return None, f"{name} ({type(module).__name__})"


def _full_range_cells(module: nn.Module) -> None:
    """Re-pack a quantized LSTM/GRU so that its activations use 8 bits (torch packs them with 7)."""
    for packed in module._all_weight_values:
        state = packed.param.__getstate__()[0]  # (kind, [bias_ih, bias_hh], [], [reduce_range], [packed])
        bias_ih, bias_hh = state[1]
        ih, hh = state[4]
        packed.param = torch.ops.quantized.make_quantized_cell_params_dynamic(ih, hh, bias_ih, bias_hh, False)


def cell_reduce_range(module: nn.Module) -> bool:
    """Whether a quantized LSTM/GRU quantizes its activations to 7 bits (True) or 8 bits (False)."""
    flags = {bool(p.param.__getstate__()[0][3][0]) for p in module._all_weight_values}
    return flags != {False}


_RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.RNNBase)
_CELLS = tuple(CELL_REWRITES.values())


def _float_attention(
    qmodel: nn.Module, rewritten: dict[str, nn.Module], had_example: bool
) -> tuple[str, ...]:
    """``name.`` prefixes of every MultiheadAttention left in ``qmodel``; warns about those in use."""
    prefixes = tuple(f"{n}." for n, m in qmodel.named_modules() if isinstance(m, nn.MultiheadAttention))
    # a rewritten module keeps its original as ``.original`` (never called): not in use
    in_use = [p[:-1] for p in prefixes if p.removesuffix(".original.") not in rewritten]
    if in_use:
        hint = (
            "; the rewrite covers self-attention called without masks (key_padding_mask/attn_mask)"
            if had_example
            else "; pass example_input= to quantize its projections"
        )
        warnings.warn(
            f"kept in float (MultiheadAttention, not rewritten): {', '.join(in_use)}{hint}", stacklevel=4
        )
    return prefixes


def _aliases(qmodel: nn.Module, name: str, module: nn.Module) -> tuple[str, ...]:
    """The names patterns may use for one Linear, smoothed (``x.linear``) or not (``x``): both, so
    that names from a smoothed model's report (qtk tune's fallback list) select the same modules."""
    parent = name.removesuffix(".linear")
    if parent != name and isinstance(qmodel.get_submodule(parent), SmoothedLinear):
        return (name, parent)
    cell = name.rpartition(".")[0]
    if cell and type(qmodel.get_submodule(cell)) in _CELLS:  # a rewritten cell's ih / hh
        return (name, cell)
    return (name, f"{name}.linear") if isinstance(module, nn.Linear) else (name,)


def quantize_dynamic(
    model: nn.Module,
    config: DynamicQuantConfig | None = None,
    example_input: object | None = None,
    calibration: Iterable[object] | None = None,
) -> nn.Module:
    """Return a dynamically quantized copy of ``model`` (eval mode); ``model`` is left unchanged.

    With an ``example_input``, ``nn.MultiheadAttention`` used as self-attention is first rewritten
    into Linear layers (:mod:`qtoolkit.quantize.attention`), so its projections quantize too;
    otherwise it stays float (its forward reads ``out_proj.weight``, which a dynamic Linear lacks).
    With ``config.smoothing``, the selected Linears are first smoothed on ``calibration`` (batches
    the model takes: tensors, tuples or dicts of named inputs); see :mod:`qtoolkit.quantize.smoothing`.
    Raises QtkError when the patterns select no module at all (a typo in include/exclude).
    """
    return _quantize_dynamic(model, config or DynamicQuantConfig(), example_input, calibration)[0]


def _quantize_dynamic(
    model: nn.Module,
    config: DynamicQuantConfig,
    example_input: object | None,
    calibration: Iterable[object] | None,
) -> tuple[nn.Module, dict[str, Any] | None, list[str]]:
    """:func:`quantize_dynamic`, the smoothing summary (None without smoothing) and the recurrent
    modules kept in float."""
    set_backend(config.backend)
    linear_qconfig, embedding_qconfig, recurrent_qconfig = _qconfigs(config)
    qmodel = copy.deepcopy(model).eval()
    # nn.Transformer* fast paths read Linear .weight tensors (a method once quantized) and cannot
    # be exported: the slow path is the same math
    make_transformers_traceable(qmodel)
    # LSTM/GRU/RNN cells run quantized cell ops no exporter handles: as two Linears they export
    if config.recurrent:
        rewrite_cells(qmodel, config.selects)
    rewritten = rewrite_attention(qmodel, example_input) if example_input is not None else {}
    inside_attention = _float_attention(qmodel, rewritten, example_input is not None)
    smoothing = None
    if config.smoothing is not None:
        if not calibration:
            raise QtkError(
                "dynamic smoothing needs calibration batches (calibration=[...]); pass some, or set smoothing=None."
            )
        smoothing = smooth_linears(
            qmodel,
            calibration,
            config.smoothing,
            lambda n: config.selects(n, f"{n}.linear") and not n.startswith(inside_attention),
        )
    spec: dict[str, Any] = {}
    kept_float: list[str] = []  # selected recurrent modules torch's dynamic quantization cannot take
    for name, module in qmodel.named_modules():
        if (
            not name
            or not config.selects(*_aliases(qmodel, name, module))
            or name.startswith(inside_attention)
        ):
            continue
        if type(module) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
            spec[name] = linear_qconfig
        elif config.embeddings and type(module) is nn.Embedding:
            spec[name] = embedding_qconfig
        elif config.recurrent and isinstance(module, _RECURRENT):
            qconfig, why = _recurrent_spec(name, module, recurrent_qconfig)
            if qconfig is None:
                kept_float.append(why)
            else:
                spec[name] = qconfig
    if not spec:
        raise QtkError(
            f"dynamic quantization selected no Linear/Embedding/LSTM/GRU module with include={config.include} "
            f"exclude={config.exclude}; check the name patterns against model.named_modules()."
        )
    if kept_float:
        warnings.warn(
            f"kept in float (torch's dynamic quantization has no INT8 form for it): {', '.join(kept_float)}; "
            "its Linear layers and the rest of the model are INT8",
            stacklevel=3,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices, once per call
        qmodel = torch.ao.quantization.quantize_dynamic(qmodel, spec, inplace=True)
    if not config.reduce_range:
        for module in qmodel.modules():
            if type(module) is torch.ao.nn.quantized.dynamic.Linear:
                module.__class__ = FullRangeDynamicLinear
            elif isinstance(module, torch.ao.nn.quantized.dynamic.modules.rnn.RNNBase):
                _full_range_cells(module)
    return qmodel, smoothing, kept_float


def quantized_modules(qmodel: nn.Module) -> dict[str, str]:
    """Name → kind ('linear' / 'embedding' / 'lstm' / 'gru') of every dynamically quantized module."""
    found: dict[str, str] = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.modules.rnn.RNNBase):
            found[name] = module.mode.lower()
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            found[name] = "linear"
        elif isinstance(module, torch.ao.nn.quantized.Embedding):
            found[name] = "embedding"
    return found


def activation_reduce_range(module: nn.Module) -> bool:
    """Whether a quantized Linear quantizes its input to 7 bits (True) or 8 bits (False)."""
    return not isinstance(module, FullRangeDynamicLinear)


@register_quantizer(DynamicQuantConfig)
def _dynamic_handler(
    model: nn.Module,
    config: DynamicQuantConfig,
    example_input: object | None = None,
    calibration: Iterable[object] | None = None,
) -> QuantizedModel:
    """``quantize(model, DynamicQuantConfig(...))``: activations quantized at run time.

    ``example_input`` is optional: with it, self-attention ``nn.MultiheadAttention`` quantizes too.
    ``calibration`` is needed only with ``smoothing`` (per-channel input ranges)."""
    qmodel, smoothing, kept_float = _quantize_dynamic(model, config, example_input, calibration)
    details = {"config": config.to_dict(), "modules": quantized_modules(qmodel), "float_modules": kept_float}
    if smoothing is not None:  # which groups folded, which got a Mul, their input spreads
        details["smoothing"] = smoothing
    return QuantizedModel(qmodel, "dynamic", details)
