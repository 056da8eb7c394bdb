"""Label-free image sets: deterministic square crops of the natural photos that ship offline.

Sources: ``skimage.data`` (astronaut, chelsea, coffee, rocket, cat, immunohistochemistry, retina,
hubble_deep_field) and ``sklearn.datasets.load_sample_images()`` (china, flower). One stream of
crops is drawn with ``numpy.random.default_rng(seed)``: crop i comes from photo i mod 10, its side is
s = u·min(H, W) with u ~ U(0.3, 1.0), its corner uniform among the positions where it fits, it is
resized to ``size``×``size`` (PIL bilinear, antialiased) and flipped horizontally with probability
1/2. The first ``calibration`` crops of the stream calibrate, the next ``eval`` crops evaluate, so
the two sets never share a crop. Crops are uint8 NCHW; a sha256 over the photos and the crops is
checked against the manifest in ``calibration_data/`` when one exists for these settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from qtoolkit.atomic import write_text_atomic
from qtoolkit.data.calibration import MANIFEST_DIR
from qtoolkit.errors import QtkError

SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "retina", "hubble_deep_field",
)  # fmt: skip
_INSTALL = "pip install scikit-image scikit-learn"


@dataclass(frozen=True)
class PhotoCropSpec:
    """Which crops: image side, stream seed, crop-side fraction range, set sizes."""

    size: int = 260
    seed: int = 0
    min_fraction: float = 0.3
    max_fraction: float = 1.0
    calibration: int = 256
    eval: int = 512

    def manifest_name(self) -> str:
        return f"photos_{self.size}px_seed{self.seed}_calib{self.calibration}_eval{self.eval}.json"


def load_photos() -> dict[str, np.ndarray]:
    """The ten offline RGB photos as uint8 HWC arrays, by name (fixed order)."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as error:
        raise QtkError(f"the offline photos need scikit-image and scikit-learn; run: {_INSTALL}") from error
    photos = {name: np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in SKIMAGE_PHOTOS}
    samples = load_sample_images()
    for path, image in zip(samples.filenames, samples.images, strict=True):
        photos[Path(path).stem] = np.asarray(image, dtype=np.uint8)
    return photos


@dataclass(frozen=True)
class CropBox:
    photo: str
    top: int
    left: int
    side: int
    flip: bool


def crop_boxes(photos: dict[str, np.ndarray], spec: PhotoCropSpec) -> list[CropBox]:
    """The whole stream of crop boxes (calibration first, then eval), see module docstring."""
    rng = np.random.default_rng(spec.seed)
    names = list(photos)
    boxes = []
    for i in range(spec.calibration + spec.eval):
        name = names[i % len(names)]
        height, width = photos[name].shape[:2]
        side = max(8, int(rng.uniform(spec.min_fraction, spec.max_fraction) * min(height, width)))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        boxes.append(CropBox(name, top, left, side, bool(rng.random() < 0.5)))
    return boxes


def render(photo: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """One crop as uint8 CHW."""
    patch = photo[box.top : box.top + box.side, box.left : box.left + box.side]
    image = Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if box.flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass
class PhotoCrops:
    """Calibration and eval crops (uint8 NCHW) with their fingerprints and manifest status."""

    spec: PhotoCropSpec
    calibration: np.ndarray
    eval: np.ndarray
    boxes: list[CropBox]
    photo_sha256: dict[str, str]
    sha256: str
    source: str

    def describe(self) -> dict[str, object]:
        return {
            "name": "photo-crops",
            "size": len(self.calibration),
            "eval_size": len(self.eval),
            "fingerprint": self.sha256,
            "source": self.source,
            "spec": asdict(self.spec),
        }

    def batches(
        self, split: str, batch_size: int, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[torch.Tensor]:
        """``split`` (calibration | eval) as a list of transformed float batches, in order."""
        images = {"calibration": self.calibration, "eval": self.eval}[split]
        return [
            transform(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
        ]


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def build_photo_crops(spec: PhotoCropSpec | None = None, check_manifest: bool = True) -> PhotoCrops:
    """Render the crops of ``spec``; verify them against ``calibration_data/`` when a manifest exists."""
    spec = spec or PhotoCropSpec()
    photos = load_photos()
    boxes = crop_boxes(photos, spec)
    crops = np.stack([render(photos[b.photo], b, spec.size) for b in tqdm(boxes, desc="crops", leave=False)])
    photo_sha = {name: _sha256(image) for name, image in photos.items()}
    digest = hashlib.sha256(json.dumps(photo_sha, sort_keys=True).encode())
    digest.update(crops.tobytes())
    result = PhotoCrops(
        spec,
        crops[: spec.calibration],
        crops[spec.calibration :],
        boxes,
        photo_sha,
        digest.hexdigest(),
        "generated",
    )
    path = MANIFEST_DIR / spec.manifest_name()
    if check_manifest and path.is_file():
        manifest = json.loads(path.read_text())
        if manifest["sha256"] != result.sha256:
            changed = sorted(n for n, s in photo_sha.items() if manifest["photo_sha256"].get(n) != s)
            why = f"photos differ: {', '.join(changed)}" if changed else "the resize (Pillow) differs"
            raise QtkError(
                f"photo crops do not match manifest {path.name} ({why}); "
                "install the scikit-image/scikit-learn/Pillow it names, or rewrite it with write_photo_manifest()"
            )
        result.source = f"manifest:{path.name}"
    return result


def write_photo_manifest(spec: PhotoCropSpec | None = None) -> Path:
    """Write ``calibration_data/photos_*.json``: the spec, boxes, per-photo and overall sha256."""
    import PIL
    import skimage
    import sklearn

    crops = build_photo_crops(spec, check_manifest=False)
    manifest = {
        "dataset": "photo-crops",
        "algorithm": "qtoolkit.data.photos.crop_boxes",
        "spec": asdict(crops.spec),
        "versions": {
            "scikit-image": skimage.__version__,
            "scikit-learn": sklearn.__version__,
            "Pillow": PIL.__version__,
        },
        "photo_sha256": crops.photo_sha256,
        "sha256": crops.sha256,
        "boxes": [[b.photo, b.top, b.left, b.side, int(b.flip)] for b in crops.boxes],
    }
    path = MANIFEST_DIR / crops.spec.manifest_name()
    write_text_atomic(path, json.dumps(manifest, indent=None) + "\n")
    return path


if __name__ == "__main__":
    print(write_photo_manifest())
