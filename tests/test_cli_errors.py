"""Bad input: one clear line on stderr, exit status 2, and no output directory created at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, needs_fmnist
from models_for_tests import StubbedNet

from qtoolkit import StaticQuantConfig
from qtoolkit.cli import main
from qtoolkit.errors import QtkError
from qtoolkit.quantize import quantize

RECIPE = str(REPO / "recipes" / "resnet18_fmnist_static.yaml")


def _fails_cleanly(capsys, out: Path, *args: str) -> str:
    code = main(["run", RECIPE, "--out", str(out), "--cache", str(out.parent / "cache"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("qtk: error: "), err
    assert not out.exists(), list(out.iterdir())  # nothing is created before the input is valid
    return err[0]


def test_missing_dataset(tmp_path, capsys):
    line = _fails_cleanly(capsys, tmp_path / "out", "--set", f"data.root={tmp_path / 'nowhere'}")
    assert "t10k-images-idx3-ubyte.gz" not in line or "missing" in line
    assert "apt-get install -y dataset-fashion-mnist" in line


@needs_fmnist
def test_empty_calibration_set(tmp_path, capsys):
    line = _fails_cleanly(capsys, tmp_path / "out", "--set", "quantize.calibration.size=0")
    assert "calibration size must be positive" in line


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = _fails_cleanly(capsys, blocker / "out")
    assert "not writable" in line


@needs_fmnist
def test_corrupt_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"\x00garbage" * 10)
    line = _fails_cleanly(capsys, tmp_path / "out", "--set", f"model.weights={checkpoint}")
    assert str(checkpoint) in line and "corrupt" in line


@needs_fmnist
def test_checkpoint_of_another_model(tmp_path, capsys):
    checkpoint = tmp_path / "other.pt"
    torch.save(StubbedNet().state_dict(), checkpoint)
    line = _fails_cleanly(capsys, tmp_path / "out", "--set", f"model.weights={checkpoint}")
    assert "does not fit the model" in line


def test_unknown_recipe_key(tmp_path, capsys):
    line = _fails_cleanly(capsys, tmp_path / "out", "--set", "quantize.observer=minmax")
    assert "quantize.observer" in line and RECIPE in line


def test_nan_calibration_batch_through_the_api():
    batches = [torch.randn(2, 3, 16, 16), torch.full((2, 3, 16, 16), float("nan"))]
    with pytest.raises(QtkError, match="NaN or Inf"):
        quantize(StubbedNet().eval(), StaticQuantConfig(), calibration=batches, example_input=batches[0][:1])


def test_python_dash_m_is_the_same_program():
    result = subprocess.run(
        [sys.executable, "-m", "qtoolkit", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: qtk" in result.stdout and "run" in result.stdout
