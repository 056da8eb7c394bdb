"""Users' own images in ImageNet layout go through the same pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from qtoolkit.data.image_folder import image_folder
from qtoolkit.errors import QtkError
from qtoolkit.pipeline import run_recipe
from qtoolkit.recipe import load_recipe


def _make_folder(root, per_class=6, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, colour in (("cat", 0), ("dog", 2)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                pixels[..., colour] += 150  # a class signal the model can pick up
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(QtkError, match="does not exist"):
        image_folder(tmp_path / "missing")


@pytest.mark.slow
def test_image_folder_recipe_end_to_end(tmp_path):
    _make_folder(tmp_path / "images")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"""
name: own-images
model: {{name: resnet18, num_classes: 2, in_channels: 3, weights: train}}
data: {{name: image-folder, root: {tmp_path / "images"}, image_size: 32}}
train: {{epochs: 2, lr: 0.01, batch_size: 4}}
quantize: {{calibration: {{size: 4, batch_size: 2}}}}
evaluate: {{tolerance_pp: 100, min_agreement: 0.5, batch_size: 4, warmup: 1, repeats: 2}}
"""
    )
    report = run_recipe(load_recipe(recipe_path), tmp_path / "out", cache_dir=tmp_path / "cache")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["calibration"]["size"] == 4 and saved["calibration"]["source"] == "generated"
    assert report["data"]["test_size"] == 12
    assert report["metrics"]["int8_onnx"]["size_mb"] < report["metrics"]["fp32_onnx"]["size_mb"] / 3.5
