"""Quantization-aware training: fuse, insert fake-quant, fine-tune with the shared engine, convert.

In training the forward pass computes y = f(Q(W), Q(x)) with Q the fake-quant round trip of
``qtoolkit.quantize.fake_quant`` and the straight-through estimator dQ(v)/dv = 1 inside the range
(0 outside). Conv-BN(-ReLU) is fused in QAT mode, so BN is folded into the quantized weight
W' = W * gamma / sqrt(var + eps) during training as it will be after ``convert``. Schedule options:
observers (scale/zero point) frozen from an epoch or step on, BN running statistics frozen from an
epoch or step on (both standard for stabilising the end of QAT).

Eager mode needs a quantizable model (QuantStub/DeQuantStub, ``fuse_model(is_qat=True)``, e.g.
``torchvision.models.quantization.resnet18(quantize=False)``); FX mode (``mode="fx"``) takes an
unmodified model plus example inputs.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.ao.nn.intrinsic.qat import freeze_bn_stats
from torch.ao.quantization import QConfig, convert, disable_observer, prepare_qat

from qtoolkit.errors import QtkError
from qtoolkit.quantize.api import QuantizedModel, register_quantizer
from qtoolkit.quantize.base import MODES, QuantConfig, check_choice, resolve_reduce_range, set_backend
from qtoolkit.quantize.fake_quant import qat_qconfig, quant_ranges
from qtoolkit.quantize.kernel_check import flag_saturating_depthwise_convs
from qtoolkit.quantize.static import resolve_mode
from qtoolkit.train.engine import Callback, TrainConfig, TrainResult, fit


@dataclass(frozen=True)
class QATConfig(QuantConfig):
    """QAT settings (``backend``: torch's engine for convert; ``weight_bits``, ``reduce_range`` and
    ``narrow_range`` mean what they mean for static PTQ, and give the same weight grid)."""

    method: ClassVar[str] = "qat"
    export_format: ClassVar[str] = "qdq"

    weight_bits: int = 8  # symmetric per-channel, stored as qint8 (8 -> ±127, 4 -> -8..7)
    activation_bits: int = 8  # affine per-tensor quint8
    per_channel: bool = True
    reduce_range: bool | None = None  # activations; None -> True only on CPUs without VNNI
    narrow_range: bool | None = None  # weights in ±(2^(b-1) - 1); None: at 8 bits only (as PTQ)
    averaging_constant: float = 0.01  # moving-average observer momentum
    freeze_observers_epoch: int | None = None  # observers frozen from the start of this epoch (0-based)
    freeze_bn_epoch: int | None = None  # BN running statistics frozen from the start of this epoch
    freeze_observers_step: int | None = None  # same, from this global optimizer step on
    freeze_bn_step: int | None = None
    mode: str = "eager"  # eager | fx | auto (eager when the model carries QuantStubs)

    def validate(self) -> None:
        quant_ranges(self.weight_bits, self.activation_bits, False, self.narrow_range)  # bits in 2..8
        check_choice("QATConfig", "mode", self.mode, MODES)
        if not 0 < self.averaging_constant <= 1:
            raise QtkError(f"QATConfig.averaging_constant must be in (0, 1], not {self.averaging_constant}")

    def resolved_reduce_range(self) -> bool:
        return resolve_reduce_range(self.reduce_range)

    def qconfig(self) -> QConfig:
        return qat_qconfig(
            self.weight_bits,
            self.activation_bits,
            reduce_range=self.resolved_reduce_range(),
            per_channel=self.per_channel,
            averaging_constant=self.averaging_constant,
            narrow_range=self.narrow_range,
        )


def prepare_qat_model(
    model: nn.Module, config: QATConfig, example_inputs: tuple[Any, ...] | None = None
) -> nn.Module:
    """A copy of FP32 ``model`` with Conv-BN-ReLU fused in QAT mode and fake-quant inserted."""
    set_backend(config.backend)
    qconfig = config.qconfig()
    model = copy.deepcopy(model).cpu().train()
    if resolve_mode(model, config.mode) == "fx":
        from torch.ao.quantization import QConfigMapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        if example_inputs is None:
            raise QtkError("FX-mode QAT needs example_inputs (a tuple with one batch of model inputs)")
        return prepare_qat_fx(model, QConfigMapping().set_global(qconfig), example_inputs)
    if not hasattr(model, "fuse_model"):
        raise QtkError(
            f"{type(model).__name__} has no fuse_model(); use a quantizable model "
            "(torchvision.models.quantization.*) or QATConfig(mode='fx')"
        )
    model.fuse_model(is_qat=True)
    model.qconfig = qconfig
    prepare_qat(model, inplace=True)
    return model


def convert_qat_model(qat_model: nn.Module, config: QATConfig) -> nn.Module:
    """Real INT8 torch model (CPU) from a fine-tuned QAT model; the input model is left unchanged."""
    set_backend(config.backend)
    model = copy.deepcopy(qat_model).cpu().float().eval()
    if isinstance(model, torch.fx.GraphModule):  # prepared by prepare_qat_fx
        from torch.ao.quantization.quantize_fx import convert_fx

        return convert_fx(model)
    return convert(model, inplace=False)


@dataclass
class QATSchedule(Callback):
    """Freezes observers and BN statistics at the configured epoch/step. Idempotent, so a resumed run
    re-applies the freezes (BN freezing is a module flag, not saved in the state_dict)."""

    config: QATConfig
    _observers_frozen: bool = field(default=False, init=False)
    _bn_frozen: bool = field(default=False, init=False)

    def _apply(self, model: nn.Module, observers: bool, bn: bool) -> None:
        if observers and not self._observers_frozen:
            model.apply(disable_observer)
            self._observers_frozen = True
        if bn and not self._bn_frozen:
            model.apply(freeze_bn_stats)
            self._bn_frozen = True

    @staticmethod
    def _due(threshold: int | None, value: int) -> bool:
        return threshold is not None and value >= threshold

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        c = self.config
        self._apply(model, self._due(c.freeze_observers_epoch, epoch), self._due(c.freeze_bn_epoch, epoch))

    def on_step_start(self, step: int, model: nn.Module) -> None:
        c = self.config
        self._apply(model, self._due(c.freeze_observers_step, step), self._due(c.freeze_bn_step, step))


@dataclass
class QATResult:
    qat_model: nn.Module  # fake-quant model after fine-tuning (on the training device)
    quantized: nn.Module  # converted torch INT8 model (CPU)
    train: TrainResult


def run_qat(
    fp32_model: nn.Module,
    train_dataset: Any,
    qat_config: QATConfig,
    train_config: TrainConfig,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: tuple[Callback, ...] = (),
    progress: bool = True,
    **fit_kwargs: Any,
) -> QATResult:
    """Prepare, fine-tune (``fit`` with :class:`QATSchedule`) and convert; ``fp32_model`` is not modified."""
    qat_model = prepare_qat_model(fp32_model, qat_config, example_inputs)
    result = fit(
        qat_model,
        train_dataset,
        train_config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callbacks=(QATSchedule(qat_config), *callbacks),
        progress=progress,
        **fit_kwargs,
    )
    return QATResult(qat_model=qat_model, quantized=convert_qat_model(qat_model, qat_config), train=result)


@register_quantizer(QATConfig)
def _qat(
    model: nn.Module,
    config: QATConfig,
    *,
    train_dataset: Any,
    train_config: TrainConfig,
    example_input: Any = None,
    checkpoint_dir: str | Path | None = None,
    discard_checkpoints: bool = False,
    progress: bool = True,
) -> QuantizedModel:
    """``quantize(model, QATConfig(...), train_dataset=..., train_config=...)``: fine-tune, convert.

    With ``checkpoint_dir`` a killed run resumes from its last checkpoint; ``discard_checkpoints``
    removes them once the INT8 model exists (the next run then starts a fresh fine-tune).
    """
    result = run_qat(
        model,
        train_dataset,
        config,
        train_config,
        example_inputs=(example_input,) if example_input is not None else None,
        checkpoint_dir=checkpoint_dir,
        resume=checkpoint_dir is not None,
        progress=progress,
    )
    if checkpoint_dir is not None and discard_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    saturated = (
        [] if example_input is None else flag_saturating_depthwise_convs(result.quantized, example_input)
    )
    details = {
        "mode": "fx" if isinstance(result.qat_model, torch.fx.GraphModule) else "eager",
        "weight_bits": config.weight_bits,
        "train_steps": result.train.global_step,
        "train_seconds": round(result.train.seconds, 1),
        "resumed_from": result.train.resumed_from,
        "precision": train_config.precision,
        "train": result.train.summary(),  # optimizer, its state bytes, peak memory (report's train section)
        "torch_saturated_convs": saturated,  # depthwise convs torch's INT8 kernel saturates on the example
    }
    return QuantizedModel(result.quantized, "qat", details)
