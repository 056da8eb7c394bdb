"""Recipes: every key checked, errors name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtoolkit.errors import QtkError
from qtoolkit.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_shipped_recipes_load():
    paths = sorted((REPO / "recipes").glob("*.yaml"))
    assert paths
    for path in paths:
        assert load_recipe(path).name


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "name: x\nquantize:\n  calibraton:\n    size: 10\n")
    with pytest.raises(QtkError) as error:
        load_recipe(path)
    assert "quantize.calibraton" in str(error.value) and str(path) in str(error.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = _write(tmp_path, "name: x\ntrain:\n  epochs: three\n")
    with pytest.raises(QtkError) as error:
        load_recipe(path)
    assert "train.epochs" in str(error.value) and "must be int" in str(error.value)
    assert str(path) in str(error.value)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(QtkError, match=r"quantize\.calibration\.size"):
        load_recipe(_write(tmp_path, "name: x\nquantize:\n  calibration:\n    size: true\n"))


def test_float_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 loads 1e-5 as a string; a float key takes it, and --set takes it too
    recipe = load_recipe(_write(tmp_path, "name: x\ntrain:\n  lr: 1e-5\n"), ["quantize.qat.lr=2E-4"])
    assert recipe.train.lr == 1e-5 and recipe.quantize.qat.lr == 2e-4
    with pytest.raises(QtkError, match=r"train\.lr.*must be float"):
        load_recipe(_write(tmp_path, "name: x\ntrain:\n  lr: 1e-5x\n"))


def test_missing_name_and_bad_yaml(tmp_path):
    with pytest.raises(QtkError, match="name"):
        load_recipe(_write(tmp_path, "task: image-classification\n"))
    with pytest.raises(QtkError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(QtkError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_are_parsed_and_validated(tmp_path):
    path = _write(tmp_path, "name: x\n")
    recipe = load_recipe(path, ["train.epochs=1", "quantize.reduce_range=true", "evaluate.tolerance_pp=1"])
    assert recipe.train.epochs == 1 and recipe.quantize.reduce_range is True
    assert recipe.evaluate.tolerance_pp == 1.0
    with pytest.raises(QtkError, match=r"train\.epoch"):
        load_recipe(path, ["train.epoch=1"])
    with pytest.raises(QtkError, match=r"section\.key=value"):
        load_recipe(path, ["train.epochs"])
