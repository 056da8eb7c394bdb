"""Calibrated static post-training quantization with torch.ao observers.

Two front ends reach the same converted INT8 model (and so the same ONNX export):
* eager mode for models that already carry QuantStub/DeQuantStub (torchvision's quantizable zoo):
  ``fuse_model()`` folds Conv-BN(-ReLU), ``prepare`` inserts observers, ``convert`` swaps modules;
* FX graph mode (``prepare_fx``/``convert_fx``) for users' unmodified, traceable models: fusion and
  observer placement come from the backend config.
Ops torch cannot quantize stay in float between a dequantize and a quantize; they are named in a
warning rather than crashing.

In FX mode two general rules (``qtoolkit.quantize.canonical``) run by default: functional
conv/linear calls on a module's own parameters become leaf modules (so BN folds and ReLU fuses),
and observers feeding a clamp (ReLU6, Hardtanh, ReLU) observe the clamped value. Zero padding
shares its input's qparams (padding with the zero point is exact), like max-pooling.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.ao import quantization as tq
from tqdm.auto import tqdm

from qtoolkit.data.calibration import CalibrationReader, checked_batches
from qtoolkit.errors import QtkError
from qtoolkit.export.onnx_export import ExampleInput, bind_inputs
from qtoolkit.quantize.adaround import AdaRoundConfig
from qtoolkit.quantize.algorithms import enabled_passes, fixed_scale_qconfig, run_passes
from qtoolkit.quantize.attention import rewrite_attention
from qtoolkit.quantize.base import MODES, QuantConfig, check_choice, set_backend
from qtoolkit.quantize.canonical import (
    canonicalize_for_fx,
    clamp_aware_observers,
    float_prelus,
    requantize_pools,
    run_grid_ops_on_int8,
    unshare_pool_observers,
)
from qtoolkit.quantize.float_ops import float_in_onnx
from qtoolkit.quantize.int8_rules import apply_int8_rules, modules_on_int8
from qtoolkit.quantize.kernel_check import flag_saturating_depthwise_convs, verify_int8_kernels
from qtoolkit.quantize.qconfig import ObserverSpec, build_qconfig, prelu_qconfig
from qtoolkit.quantize.traceability import fx_error_message
from qtoolkit.quantize.transformer_layers import make_transformers_traceable
from qtoolkit.runtime.batches import first_rows
from qtoolkit.runtime.torch_runner import call_model

# Float modules that FX/eager leave unquantized for a reason other than "unsupported": they either
# carry no arithmetic or run fine on the integer grid of their input.
_NEUTRAL_FLOAT_MODULES = (
    nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten,
    nn.ReLU, nn.ReLU6, tq.DeQuantStub, nn.Sequential, nn.ModuleList, nn.ModuleDict,
)  # fmt: skip
# Leaf modules with arithmetic that we expect to see quantized when they are under a qconfig.
_COMPUTE_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.GELU,
    nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LSTM, nn.Embedding,
    nn.PReLU, nn.Mish, nn.Softplus, nn.ELU,
)  # fmt: skip
# Quantized modules our ONNX reference cannot rebuild yet: keep their float originals. (torch.ao's
# ConvTranspose also rejects per-channel weight observers: prepare would raise.)
_NOT_EXPORTABLE = (nn.Embedding, nn.EmbeddingBag, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class StaticQuantConfig(QuantConfig):
    """Static PTQ settings: torch engine (``backend``), observers, front end and modules kept in float."""

    method: ClassVar[str] = "static"
    export_format: ClassVar[str] = "qdq"

    observers: ObserverSpec = field(default_factory=ObserverSpec)
    mode: str = "auto"  # auto (eager when the model has QuantStubs) | eager | fx
    skip_modules: tuple[str, ...] = ()  # module names (prefixes) left in float
    canonicalize: bool = True  # FX: functional conv/linear on own parameters -> leaf modules
    clamp_aware: bool = True  # FX: observers feeding ReLU6/Hardtanh/ReLU observe the clamped value
    pool_own_qparams: bool = True  # FX: global average pools run in float; their output gets own qparams
    int8_rules: bool = True  # FX: SiLU as x·sigmoid(x) and chunk/split on INT8 (quantize/int8_rules.py)
    # Post-training algorithms on the BN-folded float model before prepare (quantize/algorithms.py):
    equalize: bool = False  # cross-layer equalization of conv -> ReLU(6) -> conv pairs
    bias_correction: bool = False  # move the mean shift of weight rounding into the float bias
    adaround: AdaRoundConfig | None = None  # learned rounding (None: round to nearest)

    def validate(self) -> None:
        if not isinstance(self.observers, ObserverSpec):
            raise QtkError(f"StaticQuantConfig.observers must be an ObserverSpec, not {self.observers!r}")
        check_choice("StaticQuantConfig", "mode", self.mode, MODES)
        if self.adaround is not None and not isinstance(self.adaround, AdaRoundConfig):
            raise QtkError(
                f"StaticQuantConfig.adaround must be an AdaRoundConfig or None, not {self.adaround!r}"
            )


@dataclass
class StaticQuantResult:
    int8_model: nn.Module
    mode: str
    calibration_batches: int
    float_modules: list[str]
    float_ops: list[str] = field(default_factory=list)  # quantized by torch, float DQ -> op -> Q in ONNX
    observed_model: nn.Module | None = None  # calibrated float model before convert (keep_observed)
    rules: dict[str, list[str]] = field(default_factory=dict)  # what the FX rules changed
    saturated: list[str] = field(default_factory=list)  # depthwise convs torch's kernel saturates


def has_quant_stubs(model: nn.Module) -> bool:
    return any(isinstance(m, tq.QuantStub) for m in model.modules())


def resolve_mode(model: nn.Module, mode: str) -> str:
    """``auto`` -> eager for models that carry QuantStubs (torchvision's quantizable zoo), else FX."""
    if mode == "auto":
        return "eager" if has_quant_stubs(model) else "fx"
    return mode


def _calibrate(prepared: nn.Module, calibration: CalibrationReader | Iterable[object], arity: int) -> int:
    count = 0
    batches = checked_batches(calibration, arity)
    with torch.no_grad():
        for batch in tqdm(batches, desc="calibrate", unit="batch", leave=False):
            call_model(prepared, batch)
            count += 1
    return count


def _prepare_eager(model: nn.Module, qconfig: tq.QConfig, skip: tuple[str, ...]) -> nn.Module:
    if not hasattr(model, "fuse_model"):
        raise QtkError(
            f"{type(model).__name__} has QuantStubs but no fuse_model(); use mode: fx for unmodified models"
        )
    model.fuse_model(is_qat=False)
    model.qconfig = qconfig
    for name, module in model.named_modules():
        if isinstance(module, nn.PReLU):
            module.qconfig = prelu_qconfig(qconfig)
        if any(name == s or name.startswith(f"{s}.") for s in skip):
            module.qconfig = None
    return tq.prepare(model, inplace=True)


def backend_config() -> object:
    """torch's native backend config plus zero padding as an op sharing its input's qparams."""
    import torch.ao.quantization.quantize_fx  # noqa: F401  (initialises backend_config.utils)
    from torch.ao.quantization.backend_config import (
        BackendPatternConfig,
        ObservationType,
        get_native_backend_config,
    )

    config = get_native_backend_config()
    shared = next(c for c in config.configs if c.pattern is nn.MaxPool2d).dtype_configs
    for pad in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d):
        pattern = BackendPatternConfig(pad).set_observation_type(
            ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT
        )
        config.set_backend_pattern_config(pattern.set_dtype_configs(shared))
    return config


def _prepare_fx(
    model: nn.Module,
    qconfig: tq.QConfig,
    config: StaticQuantConfig,
    example: ExampleInput,
    rules: dict[str, list[str]],
    pool_observers: dict[str, nn.Module],
    calibration: CalibrationReader | Iterable[object],
) -> tuple[nn.Module, list[str]]:
    from torch.ao.quantization.quantize_fx import prepare_fx

    skip = config.skip_modules
    args, kwargs, _ = bind_inputs(model, example)  # one clear line when they do not fit forward
    examples = (*args, *kwargs.values())  # prepare_fx's example_inputs (FX traces every parameter)

    # canonicalize makes PReLU float (canonical.float_prelus); without it, torch's own PReLU
    mapping = tq.QConfigMapping().set_global(qconfig).set_object_type(nn.PReLU, prelu_qconfig(qconfig))
    kept, original = [], model
    for name, module in model.named_modules():
        if name and (name in skip or isinstance(module, _NOT_EXPORTABLE)):
            mapping.set_module_name(name, None)
            if not name.startswith(tuple(f"{s}." for s in skip)) and name not in skip:
                kept.append(f"{name} ({type(module).__name__}: no INT8 ONNX export yet)")
    try:
        if config.canonicalize:
            rules["traceable_transformers"] = make_transformers_traceable(model)
            rules["float_prelu"] = float_prelus(model)
            attention = rewrite_attention(model, example)
            rules["attention"] = list(attention)
            rules["float_softmax"] = [name for name, m in attention.items() if m.float_softmax]
            model, rules["canonicalized"] = canonicalize_for_fx(model)
    except Exception as error:  # symbolic tracing raises many types
        raise QtkError(fx_error_message(original, error)) from error
    if enabled_passes(config):  # equalization, learned rounding, bias correction on the float model
        model, context = run_passes(model, config, calibration, qconfig, _arity(example))
        rules.update({f"algorithm_{name}": list(done) for name, done in context.log.items()})
        for name, scale in context.fixed_scales.items():  # AdaRound's grid: convert must keep it
            mapping.set_module_name(name, fixed_scale_qconfig(qconfig, scale))
    try:
        prepared = prepare_fx(model, mapping, example_inputs=examples, backend_config=backend_config())
        if config.clamp_aware:
            rules["clamp_aware_observers"] = clamp_aware_observers(prepared)
        if config.pool_own_qparams:
            pool_observers.update(unshare_pool_observers(prepared, qconfig.activation))
        return prepared, kept
    except Exception as error:  # symbolic tracing raises many types
        raise QtkError(fx_error_message(original, error)) from error


def _check_example(example_input: object) -> None:
    """One clear line unless ``example_input`` is a tensor, a tuple of tensors or a dict of them."""
    if isinstance(example_input, Mapping):
        values = list(example_input.values())
    elif isinstance(example_input, tuple | list):
        values = list(example_input)
    else:
        values = [example_input]
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise QtkError(
            f"example_input is a {type(example_input).__name__} holding "
            f"{', '.join(sorted({type(v).__name__ for v in values})) or 'nothing'}: static PTQ takes a "
            "tensor, a tuple of tensors (forward's positional inputs) or a dict of named tensors"
        )


def _arity(example_input: ExampleInput) -> int:
    """Positional inputs the model takes (what a calibration batch's tuple holds before its label)."""
    return len(example_input) if isinstance(example_input, tuple | list) else 1


def _float_leftovers(int8_model: nn.Module) -> list[str]:
    """Compute modules that stayed in float after convert (named in a warning)."""
    left: list[str] = []
    for name, module in int8_model.named_modules():
        if any(name.startswith(f"{whole.split(' ')[0]}.") for whole in left):
            continue  # inside a float MultiheadAttention, named once
        if name and isinstance(module, nn.MultiheadAttention):
            left.append(f"{name} (MultiheadAttention)")
            continue
        is_leaf = not any(True for _ in module.children())
        if not name or not is_leaf or isinstance(module, _NEUTRAL_FLOAT_MODULES):
            continue
        if ".quantized" in type(module).__module__:  # torch quantized it (float_in_onnx names the rest)
            continue
        if type(module) in _COMPUTE_MODULES or isinstance(module, _COMPUTE_MODULES):
            left.append(f"{name} ({type(module).__name__})")
    return left


def quantize_static(
    model: nn.Module,
    config: StaticQuantConfig,
    calibration: CalibrationReader | Iterable[object],
    example_input: ExampleInput,
    keep_observed: bool = False,
) -> StaticQuantResult:
    """Fuse, observe ``calibration`` batches, convert. ``model`` itself is not modified.

    ``example_input`` is a tensor, a tuple of tensors (forward's positional inputs) or a dict of named
    tensors; calibration batches carry the inputs the same way, optionally followed by a label
    (:class:`~qtoolkit.data.calibration.IterableReader`). ``keep_observed`` also returns the
    calibrated float model (observers in place) for diagnostics.
    """
    _check_example(example_input)
    arity = _arity(example_input)
    set_backend(config.backend)
    qconfig = build_qconfig(config.observers)
    mode = resolve_mode(model, config.mode)
    model = copy.deepcopy(model).eval()
    rules: dict[str, list[str]] = {}
    pool_observers: dict[str, nn.Module] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(reduce_range|quant_min|TypedStorage).*")
        if mode == "eager" and enabled_passes(config):
            raise QtkError(
                f"{', '.join(enabled_passes(config))} run in FX mode only; set mode: fx (quantize.mode)"
            )
        if mode == "eager":
            if arity > 1 or isinstance(example_input, Mapping):
                raise QtkError(
                    "eager mode (QuantStubs) takes one tensor input; set mode: fx for several inputs"
                )
            prepared, kept = _prepare_eager(model, qconfig, config.skip_modules), []
        else:
            prepared, kept = _prepare_fx(
                model, qconfig, config, example_input, rules, pool_observers, calibration
            )
        batches = _calibrate(prepared, calibration, arity)
        observed = copy.deepcopy(prepared) if keep_observed else None
        if mode == "eager":
            int8_model = tq.convert(prepared, inplace=True)
        else:
            from torch.ao.quantization.quantize_fx import convert_fx

            int8_model = convert_fx(prepared, backend_config=backend_config())
            if config.canonicalize:
                rules["int8_padding"] = run_grid_ops_on_int8(int8_model)
            rules["pool_own_qparams"] = requantize_pools(int8_model, pool_observers)
            if config.int8_rules:
                rules.update(apply_int8_rules(int8_model))
    first = next(iter(checked_batches(calibration, arity)))
    verify_int8_kernels(int8_model.eval(), first_rows(first, 4), config.backend)  # refuses broken engines
    saturated = flag_saturating_depthwise_convs(int8_model, first_rows(first, 8))
    on_int8 = modules_on_int8(int8_model)  # e.g. nn.Sigmoid applied to a quantized tensor
    leftovers = sorted(
        set(kept)
        | {m for m in _float_leftovers(int8_model) if m.split(" ")[0] not in on_int8}
        | {f"{name} (PReLU)" for name in rules.get("float_prelu", [])}
    )
    float_ops = float_in_onnx(int8_model, rules.get("float_softmax", []))
    if leftovers or float_ops:
        said = [f"kept in float (not quantized): {', '.join(leftovers)}"] if leftovers else []
        if float_ops:
            said.append(f"float between DequantizeLinear/QuantizeLinear in ONNX (no integer kernel in "
                        f"ONNX Runtime): {', '.join(float_ops)}")  # fmt: skip
        warnings.warn("; ".join(said), stacklevel=2)
    return StaticQuantResult(
        int8_model.eval(), mode, batches, leftovers, float_ops, observed, rules, saturated
    )
