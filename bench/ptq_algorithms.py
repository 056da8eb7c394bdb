"""Choose post-training algorithm settings on a VALIDATION split (never the test crops); prints JSON.

For a photo-agreement recipe (EfficientNet-lite2 by default) each variant is quantized with the
recipe's calibration crops, exported to INT8 ONNX and judged by top-1 agreement of the ONNX model
with the FP32 torch model on validation crops: the eval part of another crop stream (seed
``--val-seed``, 256 crops), which shares no crop with the recipe's calibration or eval (test) crops.
Variants are recipe overrides (``--set`` syntax) by name; ``--variants`` picks some.

    python bench/ptq_algorithms.py --out runs/ptq_algorithms                     # 8-bit variants
    python bench/ptq_algorithms.py --variants w4_nearest w4_adaround w8 --out runs/ptq_w4  # W4A8
    python bench/ptq_algorithms.py --variants w8 w4_nearest w4_mse w4_mse_adaround_long --out runs/ptq_w4_mse
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from qtoolkit.atomic import write_text_atomic
from qtoolkit.configs import static_config
from qtoolkit.data.photos import PhotoCropSpec, build_photo_crops
from qtoolkit.export import export_int8_onnx
from qtoolkit.paths import default_cache_dir
from qtoolkit.quantize import quantize
from qtoolkit.recipe import load_recipe
from qtoolkit.runtime.ort import make_session
from qtoolkit.tasks.base import prepare_task
from qtoolkit.tasks.photo_agreement import PREPROCESS, imagenet_normalize

REPO = Path(__file__).resolve().parents[1]
ADAROUND = "quantize.adaround={iterations: 200, samples: 16, batch_size: 4, seconds: 1500}"
# 7.5x the steps on 3x the images: ~20 min for EfficientNet-lite2's 65 layers on 2 cores
ADAROUND_LONG = "quantize.adaround={iterations: 1500, samples: 48, batch_size: 4, seconds: 3600}"
VARIANTS: dict[str, list[str]] = {
    "minmax": [],
    "minmax_bc": ["quantize.bias_correction=true"],
    "minmax_cle_bc": ["quantize.equalize=true", "quantize.bias_correction=true"],
    "percentile": ["quantize.activation_observer=percentile"],
    "mse": ["quantize.activation_observer=mse"],
    "mse_bc": ["quantize.activation_observer=mse", "quantize.bias_correction=true"],
    "minmax_adaround": [ADAROUND],
    "minmax_adaround_bc": [ADAROUND, "quantize.bias_correction=true"],
    "w8": [],
    "w4_nearest": ["quantize.weight_bits=4"],
    "w4_bc": ["quantize.weight_bits=4", "quantize.bias_correction=true"],
    "w4_adaround": ["quantize.weight_bits=4", ADAROUND],
    # 4-bit weights on per-channel MSE ranges (quantize/observers.py), then learned rounding on them
    "w4_mse": ["quantize.weight_bits=4", "quantize.weight_observer=mse_per_channel"],
    "w4_mse_adaround": ["quantize.weight_bits=4", "quantize.weight_observer=mse_per_channel", ADAROUND],
    "w4_mse_adaround_long": [
        "quantize.weight_bits=4",
        "quantize.weight_observer=mse_per_channel",
        ADAROUND_LONG,
    ],
}
# Every variant starts from the same plain PTQ (min-max ranges, no algorithm), whatever the recipe's
# own choices are, so a variant's name says everything it runs.
PLAIN = [
    "quantize.activation_observer=minmax",
    "quantize.bias_correction=false",
    "quantize.equalize=false",
    "quantize.adaround=null",
    "quantize.weight_bits=8",
]
DEFAULT = ["minmax", "minmax_bc", "percentile", "mse", "minmax_cle_bc"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "efficientnet_lite2_photos_static.yaml"))
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=sorted(VARIANTS))
    parser.add_argument("--val-seed", type=int, default=1)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/ptq_algorithms")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_recipe(args.recipe)
    task = prepare_task(base, default_cache_dir())
    preprocess = PREPROCESS.get(base.model.name, imagenet_normalize)
    spec = PhotoCropSpec(size=base.data.image_size, seed=args.val_seed, calibration=0, eval=args.val_size)
    val = build_photo_crops(spec).batches("eval", 32, preprocess)
    with torch.no_grad():
        fp32 = np.concatenate([task.fp32_model(batch).numpy() for batch in val]).argmax(1)
    results: dict[str, object] = {"recipe": base.name, "val_seed": args.val_seed, "val_size": len(fp32)}
    for name in args.variants:
        recipe = load_recipe(args.recipe, PLAIN + VARIANTS[name])
        start = time.monotonic()
        quantized = quantize(
            task.fp32_model,
            static_config(recipe),
            calibration=task.calibration,
            example_input=task.example_input,
        )
        seconds = time.monotonic() - start
        path = out / f"{name}.onnx"
        export_int8_onnx(quantized.int8_model, task.example_input, path, opset=recipe.export.opset)
        session = make_session(path, args.threads)
        feed = session.get_inputs()[0].name
        int8 = np.concatenate([session.run(None, {feed: b.numpy()})[0] for b in val]).argmax(1)
        results[name] = {
            "overrides": VARIANTS[name],
            "val_agreement": float((int8 == fp32).mean()),
            "quantize_seconds": round(seconds, 1),
        }
        print(name, results[name], flush=True)
        write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
