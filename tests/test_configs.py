"""One config vocabulary: frozen configs validated on construction, one method registry, one
translation from recipes, and a clear error for renamed keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO

from qtoolkit import DynamicQuantConfig, ObserverSpec, QATConfig, StaticQuantConfig
from qtoolkit.configs import TRANSLATIONS, qat_train_config, quant_config
from qtoolkit.errors import QtkError
from qtoolkit.quantize import METHODS, QuantConfig, quantize
from qtoolkit.recipe import load_recipe

CONFIGS = (StaticQuantConfig, DynamicQuantConfig, QATConfig)


@pytest.mark.parametrize("config_type", CONFIGS)
def test_configs_share_one_frozen_base_with_backend(config_type: type) -> None:
    config = config_type()
    assert isinstance(config, QuantConfig) and config.backend == "x86"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backend = "qnnpack"  # type: ignore[misc]
    with pytest.raises(QtkError, match="unknown backend 'arm'"):
        config_type(backend="arm")
    assert METHODS[config_type.method].config_type is config_type
    assert config_type in TRANSLATIONS


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StaticQuantConfig(mode="graph"), "StaticQuantConfig.mode must be one of auto, eager, fx"),
        (lambda: StaticQuantConfig(observers=ObserverSpec(weight_bits=9)), "weight_bits must be between 2"),
        (lambda: QATConfig(weight_bits=1), "weight_bits must be between 2"),
        (lambda: QATConfig(mode="graph"), "QATConfig.mode must be one of"),
        (lambda: DynamicQuantConfig(dtype="float16"), "dtype 'float16' is not supported"),
    ],
)
def test_bad_values_fail_on_construction(build, message: str) -> None:
    with pytest.raises(QtkError, match=message):
        build()


def test_renamed_engine_names_the_new_key() -> None:
    with pytest.raises(QtkError, match="'engine' is now called 'backend'; pass backend='fbgemm'"):
        DynamicQuantConfig(engine="fbgemm")
    assert DynamicQuantConfig(backend="fbgemm", exclude=["classifier"]).exclude == ("classifier",)


def test_quantize_refuses_an_unregistered_config() -> None:
    from torch import nn

    with pytest.raises(QtkError, match="no quantizer for ObserverSpec"):
        quantize(nn.Linear(2, 2), ObserverSpec())  # type: ignore[arg-type]


def test_recipe_translation_is_checked_before_any_work(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "recipes" / "resnet18_fmnist_static.yaml", ["quantize.mode=graph"])
    with pytest.raises(QtkError, match=r"resnet18_fmnist_static.yaml: StaticQuantConfig.mode"):
        quant_config(recipe)
    recipe = load_recipe(REPO / "recipes" / "resnet18_fmnist_static.yaml", ["quantize.method=pt2e"])
    with pytest.raises(QtkError, match=r"quantize.method: unknown quantization method 'pt2e'; choose one of"):
        quant_config(recipe)


def test_qat_recipe_translation() -> None:
    recipe = load_recipe(REPO / "recipes" / "resnet18_fmnist_qat.yaml")
    config = quant_config(recipe)
    assert isinstance(config, QATConfig)
    assert (config.backend, config.weight_bits, config.freeze_bn_step, config.freeze_observers_step) == (
        "x86",
        8,
        300,
        400,
    )
    train = qat_train_config(recipe)
    assert (train.epochs, train.lr, train.warmup_steps, train.batch_size) == (1, 0.001, 0, 128)


def test_qat_through_the_one_verb_resolves_mode_and_discards_checkpoints(tmp_path: Path) -> None:
    import torch
    from models_for_tests import StubbedNet
    from torch.utils.data import TensorDataset

    from qtoolkit.train import TrainConfig

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 16, 16, generator=generator), torch.randint(0, 5, (32,)))
    checkpoints = tmp_path / "qat-checkpoints"
    result = quantize(
        StubbedNet().eval(),
        QATConfig(mode="auto", reduce_range=False),  # auto: the model carries QuantStubs -> eager
        train_dataset=data,
        train_config=TrainConfig(epochs=1, batch_size=16, lr=0.01, device="cpu"),
        checkpoint_dir=checkpoints,
        discard_checkpoints=True,
        progress=False,
    )
    assert result.method == "qat" and result.details["mode"] == "eager"
    assert result.details["train_steps"] == 2 and not checkpoints.exists()
    fc = result.int8_model.fc
    assert fc.weight().int_repr().min() >= -127  # the 8-bit grid PTQ uses: no -128
