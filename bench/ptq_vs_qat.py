"""PTQ vs QAT on Fashion-MNIST ResNet-18, 8-bit and 4-bit weights, through the one pipeline; prints JSON.

Runs the four recipes (they share one cached FP32 baseline) and reports top-1 of each INT8 ONNX
model on the 10k test set, plus how much of the 4-bit PTQ loss QAT wins back:
recovery = (QAT4 - PTQ4) / (FP32 - PTQ4).

    python bench/ptq_vs_qat.py [--out runs/ptq_vs_qat] [--set qat.max_steps=300 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qtoolkit.atomic import write_text_atomic
from qtoolkit.pipeline import run_recipe
from qtoolkit.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "ptq8": "resnet18_fmnist_static",
    "qat8": "resnet18_fmnist_qat",
    "ptq4": "resnet18_fmnist_static_w4",
    "qat4": "resnet18_fmnist_qat_w4",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/ptq_vs_qat")
    parser.add_argument("--set", action="append", default=[], help="override for every recipe")
    args = parser.parse_args()
    reports = {}
    for key, name in RECIPES.items():
        recipe = load_recipe(REPO / "recipes" / f"{name}.yaml", args.set)
        reports[key] = run_recipe(recipe, Path(args.out) / name)
    fp32 = reports["ptq8"]["metrics"]["fp32_torch"]["accuracy"]
    top1 = {key: report["metrics"]["int8_onnx"]["accuracy"] for key, report in reports.items()}
    lost = fp32 - top1["ptq4"]
    summary = {
        "fp32_torch": fp32,
        "int8_onnx_top1": top1,
        "drop_pp": {key: round(100 * (fp32 - value), 3) for key, value in top1.items()},
        "qat4_recovery_of_ptq4_loss": (top1["qat4"] - top1["ptq4"]) / lost if lost > 0 else None,
        "parity": {key: r["parity"]["int8_onnx_vs_int8_torch_agreement"] for key, r in reports.items()},
        "environment": reports["ptq8"]["environment"],
    }
    write_text_atomic(Path(args.out) / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
