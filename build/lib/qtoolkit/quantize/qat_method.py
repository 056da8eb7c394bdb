"""quantize.method: qat — QAT fine-tuning of the recipe's FP32 baseline, through the shared engine.

Checkpoints go under ``$QTK_CACHE/qat/<key>`` (key: baseline, QAT and training settings), so a run
that was killed resumes where it stopped when started again with the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from qtoolkit.quantize.api import QuantizedModel, register_quantizer
from qtoolkit.quantize.qat import QATConfig, run_qat
from qtoolkit.quantize.static import has_quant_stubs
from qtoolkit.train import TrainConfig


def qat_configs(recipe: Any, model: nn.Module) -> tuple[QATConfig, TrainConfig]:
    """(QATConfig, TrainConfig) from a recipe's ``quantize`` and ``train`` sections."""
    section, qat = recipe.quantize, recipe.quantize.qat
    mode = section.mode if section.mode != "auto" else ("eager" if has_quant_stubs(model) else "fx")
    qat_config = QATConfig(
        weight_bits=section.weight_bits,
        per_channel=section.weight_observer == "per_channel",
        reduce_range=section.reduce_range,
        freeze_observers_epoch=qat.freeze_observers_after_epoch,
        freeze_bn_epoch=qat.freeze_bn_after_epoch,
        freeze_observers_step=qat.freeze_observers_after_step,
        freeze_bn_step=qat.freeze_bn_after_step,
        backend=section.backend,
        mode=mode,
    )
    train = TrainConfig(**asdict(recipe.train))
    train = replace(
        train,
        epochs=qat.epochs,
        max_steps=qat.max_steps,
        lr=qat.lr,
        precision=qat.precision,
        device=qat.device,
        warmup_steps=0,
    )
    return qat_config, train


@register_quantizer(QATConfig)
def _qat(
    model: nn.Module,
    config: QATConfig,
    *,
    train_dataset: Any,
    train_config: TrainConfig,
    example_input: Any = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> QuantizedModel:
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
    details = {
        "mode": config.mode,
        "weight_bits": config.weight_bits,
        "train_steps": result.train.global_step,
        "train_seconds": round(result.train.seconds, 1),
        "resumed_from": result.train.resumed_from,
        "precision": train_config.precision,
    }
    return QuantizedModel(result.quantized, "qat", details)


def checkpoint_dir_for(
    cache_dir: Path, baseline_info: dict[str, Any], qat: QATConfig, train: TrainConfig
) -> Path:
    determining = {"baseline": baseline_info.get("path"), "qat": asdict(qat), "train": asdict(train)}
    key = hashlib.sha256(json.dumps(determining, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir / "qat" / key


def remove_checkpoints(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
