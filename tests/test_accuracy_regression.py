"""Accuracy regression: shipped recipes, run in full on real held-out data, against stored baselines.

Each ``tests/baselines/*.json`` names a recipe (and optional overrides) and the accuracies a
measured run reached. A run must stay within ``max_regression_pp`` of every stored accuracy, pass
its own checks (tolerance, parity) and keep the INT8 ONNX at least ``min_size_ratio`` smaller.
FP32 baselines come from ``$QTK_CACHE`` (scripts/test.sh points it inside the checkout), so the
recipes that share a baseline train it once per CI run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from qtoolkit.paths import default_cache_dir
from qtoolkit.pipeline import run_recipe
from qtoolkit.recipe import load_recipe

BASELINES = sorted((REPO / "tests" / "baselines").glob("*.json"))


def _requirements_met(baseline: dict) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in baseline.get("requires_modules", []))


@pytest.mark.slow
@pytest.mark.parametrize("baseline_path", BASELINES, ids=[p.stem for p in BASELINES])
def test_recipe_matches_stored_baseline(baseline_path: Path, tmp_path):
    baseline = json.loads(baseline_path.read_text())
    if not _requirements_met(baseline):
        pytest.skip(f"needs {baseline['requires_modules']}")
    for required in baseline.get("requires_files", []):
        if not Path(required).exists():
            pytest.skip(f"needs {required}")
    recipe = load_recipe(REPO / baseline["recipe"], baseline.get("overrides", []))
    report = run_recipe(recipe, tmp_path / "out", cache_dir=default_cache_dir())
    if "calibration_sha256" in baseline:  # deterministic calibration subset
        assert report["calibration"]["fingerprint"] == baseline["calibration_sha256"]
    slack = baseline["max_regression_pp"] / 100.0
    for variant, stored in baseline["accuracy"].items():
        measured = report["metrics"][variant]["accuracy"]
        assert measured >= stored - slack, f"{variant}: {measured:.4f} < stored {stored:.4f} - {slack:.4f}"
    assert report["checks"]["accuracy_drop"]["passed"], report["checks"]
    assert report["checks"]["parity"]["passed"], report["checks"]
    assert report["size_ratio_fp32_over_int8_onnx"] >= baseline["min_size_ratio"]
    for key, minimum in baseline.get("minimums", {}).items():
        assert report["metrics"]["fp32_torch"][key] >= minimum
