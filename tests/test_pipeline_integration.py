"""The default recipe end to end on a reduced budget: artifacts, report keys, cache reuse."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import REPO, needs_fmnist

from qtoolkit.cli import main

RECIPE = str(REPO / "recipes" / "resnet18_fmnist_static.yaml")
REDUCED = [
    "train.epochs=1",
    "train.warmup_steps=10",
    "data.train_limit=6000",
    "data.test_limit=2000",
    "evaluate.repeats=5",
    "evaluate.warmup=2",
]


@pytest.mark.slow
@needs_fmnist
def test_default_recipe_reduced_budget(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["run", RECIPE, "--out", str(out), "--cache", str(cache)]
    for override in REDUCED:
        args += ["--set", override]
    code = main(args)
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["passed"] else 1)
    assert "| int8 onnx |" in printed and (out / "report.md").is_file()
    assert sorted(p.name for p in out.iterdir()) == [
        "model_fp32.onnx",
        "model_int8.onnx",
        "report.json",
        "report.md",
    ]

    assert report["method"] == "static" and report["recipe"] == "resnet18-fmnist-static"
    assert report["calibration"]["size"] == 512 and len(report["calibration"]["fingerprint"]) == 64
    metrics = report["metrics"]
    for variant in ("fp32_torch", "int8_torch", "fp32_onnx", "int8_onnx"):
        assert 0.0 <= metrics[variant]["accuracy"] <= 1.0
    assert metrics["fp32_torch"]["accuracy"] > 0.75  # one epoch on 6k images
    assert abs(metrics["fp32_onnx"]["accuracy"] - metrics["fp32_torch"]["accuracy"]) < 0.002
    # One epoch on 6k images leaves many low-margin predictions, where 1-2 LSB differences between
    # torch's and ORT's INT8 kernels flip the argmax; the full recipe holds 99.5% (regression test).
    assert report["parity"]["int8_onnx_vs_int8_torch_agreement"] >= 0.98
    assert report["size_ratio_fp32_over_int8_onnx"] >= 3.5
    assert metrics["int8_onnx"]["latency_ms"] > 0 and report["environment"]["threads"] == 2
    assert "BatchNormalization" not in report["export"]["int8_ops"]
    assert report["baseline"]["source"] == "trained"
    onnx.checker.check_model(str(out / "model_int8.onnx"), full_check=True)

    # A second run loads the cached FP32 baseline instead of retraining.
    assert main([*args, "--set", "evaluate.repeats=2"]) in (0, 1)
    again = json.loads((out / "report.json").read_text())
    assert again["baseline"]["source"] == "cache"
    assert again["metrics"]["fp32_torch"]["accuracy"] == metrics["fp32_torch"]["accuracy"]
