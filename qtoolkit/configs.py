"""Recipe -> typed configs, in one place.

A recipe is data (``qtoolkit.recipe``); the stages take frozen configs (``qtoolkit.quantize`` for
quantization, ``qtoolkit.train`` for training). Every translation between the two lives here, so
no stage reads a recipe: the quantize section becomes a :class:`StaticQuantConfig`,
:class:`DynamicQuantConfig` or :class:`QATConfig`, the train section the FP32 baseline's
:class:`TrainConfig` (or a text fine-tune's :class:`FineTuneConfig`), and ``quantize.qat`` the QAT
fine-tune's. A bad value fails here with the recipe file and the config's message.

:func:`quant_config` gives the pipeline the config of the recipe's method (a name in the method
registry ``qtoolkit.quantize.METHODS``) before any work starts; :func:`quant_inputs` the inputs that
method's handler takes once the task's data and FP32 model exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from qtoolkit.cache import cache_key
from qtoolkit.errors import QtkError
from qtoolkit.quantize import (
    AdaRoundConfig,
    DynamicQuantConfig,
    ObserverSpec,
    QATConfig,
    QuantConfig,
    StaticQuantConfig,
    get_method,
)
from qtoolkit.quantize.qconfig import PER_CHANNEL_SCHEMES
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import PreparedTask
from qtoolkit.train import TrainConfig
from qtoolkit.train.baselines import FineTuneConfig
from qtoolkit.train.optim import require_optimizer

__all__ = [
    "baseline_train_config",
    "check_training",
    "dynamic_config",
    "fine_tune_config",
    "qat_config",
    "qat_train_config",
    "quant_config",
    "quant_inputs",
    "static_config",
]


@contextmanager
def _in_recipe(recipe: Recipe) -> Iterator[None]:
    """Name the recipe file in a config's validation error."""
    try:
        yield
    except QtkError as error:
        if recipe.source and not str(error).startswith(recipe.source):
            raise QtkError(f"{recipe.source}: {error}") from error
        raise


def static_config(recipe: Recipe) -> StaticQuantConfig:
    section = recipe.quantize
    with _in_recipe(recipe):
        observers = ObserverSpec(
            activation=section.activation_observer,
            weight=section.weight_observer,
            weight_bits=section.weight_bits,
            reduce_range=section.reduce_range,
        )
        return StaticQuantConfig(
            backend=section.backend,
            observers=observers,
            mode=section.mode,
            skip_modules=tuple(section.skip_modules),
            equalize=section.equalize,
            bias_correction=section.bias_correction,
            adaround=AdaRoundConfig(**asdict(section.adaround)) if section.adaround is not None else None,
        )


def dynamic_config(recipe: Recipe) -> DynamicQuantConfig:
    section = recipe.quantize
    with _in_recipe(recipe):
        return DynamicQuantConfig(
            backend=section.backend,
            per_channel=section.weight_observer in PER_CHANNEL_SCHEMES,
            reduce_range=bool(section.reduce_range),  # None -> 8-bit activations, as onnxruntime
            embeddings=section.embeddings,
            exclude=tuple(section.skip_modules),
            smoothing=section.smoothing,
        )


def qat_config(recipe: Recipe) -> QATConfig:
    section, qat = recipe.quantize, recipe.quantize.qat
    with _in_recipe(recipe):
        return QATConfig(
            backend=section.backend,
            weight_bits=section.weight_bits,
            per_channel=section.weight_observer in PER_CHANNEL_SCHEMES,
            reduce_range=section.reduce_range,
            freeze_observers_epoch=qat.freeze_observers_after_epoch,
            freeze_bn_epoch=qat.freeze_bn_after_epoch,
            freeze_observers_step=qat.freeze_observers_after_step,
            freeze_bn_step=qat.freeze_bn_after_step,
            mode=section.mode,
        )


def check_training(recipe: Recipe) -> None:
    """Refuse an unknown or uninstalled optimizer (``train`` and ``quantize.qat``) before any work,
    so a run that cannot train writes nothing (not even a cached baseline)."""
    names = {recipe.train.optimizer, recipe.quantize.qat.optimizer or recipe.train.optimizer}
    with _in_recipe(recipe):
        for name in sorted(names):
            require_optimizer(name)


def baseline_train_config(recipe: Recipe) -> TrainConfig:
    """The FP32 baseline's training: the recipe's ``train`` section, key for key."""
    return TrainConfig(**asdict(recipe.train))


def fine_tune_config(recipe: Recipe, max_length: int) -> FineTuneConfig:
    """A text model's fine-tune: ``train`` (``max_steps`` defaults to 300) at ``max_length`` tokens
    (``data.max_length`` capped at the model's positions by the caller)."""
    train = recipe.train
    return FineTuneConfig(
        steps=train.max_steps or 300,
        batch_size=train.batch_size,
        lr=train.lr,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_length=max_length,
        precision=train.precision,
        grad_clip=train.grad_clip,
        seed=train.seed,
        device=train.device,
        optimizer=train.optimizer,
    )


def qat_train_config(recipe: Recipe) -> TrainConfig:
    """QAT fine-tuning: ``train`` with epochs, steps, lr, precision, device and (when set) optimizer
    from ``quantize.qat``."""
    qat = recipe.quantize.qat
    return replace(
        baseline_train_config(recipe),
        epochs=qat.epochs,
        max_steps=qat.max_steps,
        lr=qat.lr,
        optimizer=qat.optimizer or recipe.train.optimizer,
        precision=qat.precision,
        device=qat.device,
        warmup_steps=0,
    )


Inputs = Callable[[Recipe, PreparedTask, Any, Path], dict[str, Any]]


@dataclass(frozen=True)
class Translation:
    """How a recipe becomes a method's config, and what that method's handler is handed."""

    config: Callable[[Recipe], QuantConfig]  # from the recipe alone: checked before any work
    inputs: Inputs  # (recipe, prepared task, config, cache dir) -> keyword inputs of the handler


def _static_inputs(recipe: Recipe, task: PreparedTask, config: Any, cache_dir: Path) -> dict[str, Any]:
    return {"calibration": task.calibration, "example_input": task.example_input}


def _dynamic_inputs(recipe: Recipe, task: PreparedTask, config: Any, cache_dir: Path) -> dict[str, Any]:
    # activations are quantized at run time: calibration only measures ranges for smoothing
    return {"calibration": task.calibration} if config.smoothing is not None else {}


def _qat_inputs(recipe: Recipe, task: PreparedTask, config: Any, cache_dir: Path) -> dict[str, Any]:
    if task.train_dataset is None:
        raise QtkError(
            f"{recipe.source}: quantize.method qat needs a training split for task {recipe.task!r}"
        )
    train = qat_train_config(recipe)
    # A killed run resumes from these checkpoints when started again with the same recipe.
    key = cache_key(
        {"baseline": task.baseline_info.get("path"), "qat": asdict(config), "train": asdict(train)}
    )
    return {
        "train_dataset": task.train_dataset,
        "train_config": train,
        "example_input": task.example_input,
        "checkpoint_dir": cache_dir / "qat" / key,
        "discard_checkpoints": True,  # finished: a rerun starts a fresh fine-tune
    }


# Keyed by config class: the method names themselves live in one place, qtoolkit.quantize.METHODS.
TRANSLATIONS: dict[type[QuantConfig], Translation] = {
    StaticQuantConfig: Translation(static_config, _static_inputs),
    DynamicQuantConfig: Translation(dynamic_config, _dynamic_inputs),
    QATConfig: Translation(qat_config, _qat_inputs),
}


def _translation(recipe: Recipe) -> Translation:
    try:
        method = get_method(recipe.quantize.method)
    except QtkError as error:
        raise QtkError(f"{recipe.source}: quantize.method: {error}") from None
    if method.config_type not in TRANSLATIONS:
        raise QtkError(f"{recipe.source}: quantize.method {method.name!r} cannot be set from a recipe")
    return TRANSLATIONS[method.config_type]


def quant_config(recipe: Recipe) -> QuantConfig:
    """The validated config of the recipe's ``quantize.method`` (QtkError naming the recipe)."""
    return _translation(recipe).config(recipe)


def quant_inputs(recipe: Recipe, task: PreparedTask, config: QuantConfig, cache_dir: Path) -> dict[str, Any]:
    """Keyword inputs of the method's handler: calibration batches, training data, checkpoints..."""
    return _translation(recipe).inputs(recipe, task, config, cache_dir)
