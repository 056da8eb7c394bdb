"""Do torchvision classifiers export to INT8 ONNX through the public API, and does the file agree with torch?

    python bench/vision_coverage.py                          # densenet121 convnext_tiny vit_b_16 swin_t
    python bench/vision_coverage.py resnet50 mobilenet_v2    # any torchvision classifier names
    python bench/vision_coverage.py timm:vit_tiny_patch16_224 --size 96   # timm models (pip install timm)

Each model: random init (seeded), BatchNorm statistics warmed on random batches in train mode,
then ``quantize_model(model, StaticQuantConfig(), calibration=...)`` on random 224x224 batches,
``export_int8_onnx``, ``onnx.checker`` (full check) and ``check_parity`` (top-1 agreement and
worst |logit difference| on ``--samples`` other random inputs; ``reference`` says which op kinds
were checked against torch's INT8 kernels and which against the QDQ simulation). Random models
have near-tied logits, so the median top-2 logit margin (torch INT8, first parity batch) is printed
beside the agreement, with the conv/linear/matmul ops ONNX Runtime still runs in float and the
depthwise convs whose torch INT8 kernel saturates (then parity checks Conv on the simulation).
Prints one row per model and writes ``OUT/coverage.json``. No timing: latency is the zoo
benchmark's job.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qtoolkit as qtk
from qtoolkit.atomic import write_text_atomic
from qtoolkit.evaluate.graph_quality import optimized_op_counts
from qtoolkit.peers.zoo import build_torchvision

DEFAULT_MODELS = ("densenet121", "convnext_tiny", "vit_b_16", "swin_t")


def warmed_model(name: str, size: int, seed: int = 0) -> torch.nn.Module:
    """The zoo's torchvision ``name`` (random weights, BN statistics of random batches) at ``size``;
    ``timm:NAME`` is timm's model (``pip install timm``; ``img_size`` set where the model takes one)."""
    if not name.startswith("timm:"):
        return build_torchvision(name, image_size=size, warmup_batches=3, seed=seed)
    import timm

    torch.manual_seed(seed)
    try:
        model = timm.create_model(name[5:], pretrained=False, num_classes=10, img_size=size)
    except TypeError:  # convolutional models take any size and no img_size argument
        model = timm.create_model(name[5:], pretrained=False, num_classes=10)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # running means/vars of real activations, as for torchvision
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, size, size, generator=generator))
    return model.eval()


def cover(name: str, out: Path, size: int, calibration_batches: int, samples: int) -> dict[str, object]:
    row: dict[str, object] = {"model": name}
    start = time.perf_counter()
    try:
        model = warmed_model(name, size)
        generator = torch.Generator().manual_seed(1)
        calibration = [torch.randn(8, 3, size, size, generator=generator) for _ in range(calibration_batches)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quantized = qtk.quantize_model(
                model, qtk.StaticQuantConfig(), calibration=calibration, example_input=calibration[0][:1]
            )
        row["warning"] = next((str(w.message) for w in caught if "kept in float" in str(w.message)), "")
        row["float_modules"] = len(quantized.details.get("float_modules", []))
        path = out / f"{name}_int8.onnx"
        qtk.export_int8_onnx(quantized.int8_model, calibration[0][:1], path)
        row["export"] = "ok"
        onnx.checker.check_model(str(path), full_check=True)
        row["checker"] = "ok"
        parity_batches = [torch.randn(8, 3, size, size, generator=generator) for _ in range(samples // 8)]
        row.update(qtk.check_parity(quantized.int8_model, path, parity_batches))
        counts = optimized_op_counts(path)  # what ORT runs: float conv/linear/matmul left, if any
        row["float_compute"] = sum(counts.get(op, 0) for op in ("Conv", "Gemm", "MatMul", "FusedMatMul"))
        row["torch_saturated_convs"] = len(quantized.details.get("torch_saturated_convs", []))
        with torch.no_grad():  # how close to a tie the random model's top-2 logits are (first batch)
            top2 = quantized.int8_model(parity_batches[0]).topk(2, dim=-1).values
        row["median_top2_margin"] = float((top2[:, 0] - top2[:, 1]).median())
    except Exception as error:  # one failing model must not hide the others
        row.setdefault("export", f"fails: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        row["traceback"] = traceback.format_exc(limit=4)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calibration-batches", type=int, default=4, help="batches of 8 random images")
    parser.add_argument("--samples", type=int, default=64, help="parity inputs (multiple of 8)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the ONNX files and coverage.json")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="qtk_coverage_"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(
        f"{'model':<26} {'export':<8} {'checker':<8} {'top-1 agree':>11} {'max |dlogit|':>12} {'margin':>12} "
        f"{'float':>5} {'sat':>4} {'s':>6}  reference"
    )
    for name in args.models:
        row = cover(name, out, args.size, args.calibration_batches, args.samples)
        rows.append(row)
        agreement = f"{row['agreement']:.2%}" if "agreement" in row else "-"
        diff = f"{row['max_abs_diff']:.4f}" if "max_abs_diff" in row else "-"
        margin = f"{row['median_top2_margin']:.4f}" if "median_top2_margin" in row else "-"
        print(
            f"{name:<26} {str(row['export'])[:8]:<8} {row.get('checker', '-')!s:<8} {agreement:>11} "
            f"{diff:>12} {margin:>12} {row.get('float_compute', '-')!s:>5} "
            f"{row.get('torch_saturated_convs', '-')!s:>4} {row['seconds']:>6}  {row.get('reference', '')}",
            flush=True,
        )
        if row["export"] != "ok":
            print(f"  {row['export']}")
        if row.get("warning"):
            print(f"  warning: {str(row['warning'])[:300]}")
    write_text_atomic(out / "coverage.json", json.dumps(rows, indent=2, default=str))
    print(f"wrote {out / 'coverage.json'}")


if __name__ == "__main__":
    main()
