"""PTQ vs QAT on Fashion-MNIST with ResNet-18 (1-channel 7x7/2 stem), torch INT8 models; prints JSON.

Top-1 on the 10k test set for: the FP32 baseline (cached under $QTK_CACHE), 8-bit static PTQ and
8-bit QAT, 4-bit-weight (per-channel symmetric, -8..7) PTQ and QAT, all with 8-bit activations.
Recovery = (QAT4 - PTQ4) / (FP32 - PTQ4): the share of the 4-bit PTQ loss that QAT wins back.

    python bench/qat_fmnist.py [--data-dir /usr/share/datasets/fashion-mnist] [--qat-steps 469]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit.atomic import atomic_path, sha256_file
from qtoolkit.errors import QtkError
from qtoolkit.evaluate.accuracy import evaluate_accuracy
from qtoolkit.quantize.fake_quant import ptq_qconfig
from qtoolkit.quantize.qat import QATConfig, run_qat
from qtoolkit.report.environment import collect_environment
from qtoolkit.train import TrainConfig, fit

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel statistics
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# TODO(lead): swap for qtoolkit.data.fashion_mnist once it exists.
def _read_idx(data_dir: Path, split: str) -> TensorDataset:
    """IDX: images have a 16-byte header then uint8 pixels, labels an 8-byte header then uint8."""
    images_name, labels_name = FILES[split]
    paths = [data_dir / images_name, data_dir / labels_name]
    for path in paths:
        if not path.exists():
            raise QtkError(
                f"{path} not found; run `apt-get install -y dataset-fashion-mnist` or pass --data-dir"
            )
    with gzip.open(paths[0]) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(paths[1]) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - MEAN) / STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def fmnist_resnet18() -> nn.Module:
    model = torchvision.models.quantization.resnet18(weights=None, quantize=False, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def fp32_baseline(
    train: TensorDataset, data_dir: Path, config: TrainConfig, progress: bool
) -> tuple[nn.Module, dict]:
    """Train (or load from cache) the FP32 model; the cache key covers data, config and torch version."""
    key_src = {
        "arch": "quantizable-resnet18-1ch-7x7s2-10cls",
        "data": sha256_file(data_dir / FILES["train"][0])[:16]
        + sha256_file(data_dir / FILES["train"][1])[:16],
        "normalize": [MEAN, STD],
        "train": asdict(config),
        "torch": torch.__version__.split("+")[0],
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("QTK_CACHE", Path.home() / ".cache" / "qtoolkit")) / "qat_fmnist"
    final = cache / f"fp32-{key}.pt"
    torch.manual_seed(config.seed)
    model = fmnist_resnet18()
    info = {"cache_file": str(final), "cached": final.exists()}
    if final.exists():
        model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
        return model, info
    started = time.perf_counter()
    fit(model, train, config, checkpoint_dir=cache / f"ckpt-{key}", resume=True, progress=progress)
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    with atomic_path(final) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.cpu(), info


def static_ptq(
    model: nn.Module, calib: Subset, weight_bits: int, observer: str, reduce_range: bool
) -> nn.Module:
    """Eager static PTQ: fuse, observe ``calib`` (no grad, eval mode), convert."""
    torch.backends.quantized.engine = "x86"
    m = copy.deepcopy(model).cpu().eval()
    m.fuse_model(is_qat=False)
    m.qconfig = ptq_qconfig(weight_bits, 8, reduce_range=reduce_range, activation_observer=observer)
    torch.ao.quantization.prepare(m, inplace=True)
    with torch.no_grad():
        for images, _ in torch.utils.data.DataLoader(calib, batch_size=128):
            m(images)
    return torch.ao.quantization.convert(m, inplace=False)


def weight_int_range(quantized: nn.Module) -> list[int]:
    """Smallest and largest stored integer weight over all quantized conv/linear modules."""
    lo, hi = 127, -128
    for module in quantized.modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # quantized modules: weight()
            w = weight().int_repr()
            lo, hi = min(lo, int(w.min())), max(hi, int(w.max()))
    return [lo, hi]


def _log(stage: str, values: dict) -> None:
    """Each stage's figures on stderr as soon as they exist (the JSON on stdout comes at the end)."""
    print(f"[qat_fmnist] {stage}: {json.dumps(values)}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--fp32-epochs", type=int, default=3)
    parser.add_argument(
        "--qat-steps", type=int, default=469, help="QAT optimizer steps (469 = 1 epoch at 128)"
    )
    parser.add_argument("--qat-lr", type=float, default=0.01)
    parser.add_argument("--calib", type=int, default=512, help="PTQ calibration images from the train split")
    parser.add_argument("--observer", choices=["histogram", "minmax"], default="histogram")
    parser.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    progress = not args.no_progress

    train, test = _read_idx(args.data_dir, "train"), _read_idx(args.data_dir, "test")
    fp32_config = TrainConfig(epochs=args.fp32_epochs, lr=0.1, batch_size=128, seed=0, device="cpu")
    fp32, cache_info = fp32_baseline(train, args.data_dir, fp32_config, progress)
    results: dict = {"fp32": {"top1": evaluate_accuracy(fp32, test, progress=progress), **cache_info}}
    _log("fp32", results["fp32"])

    calib = Subset(
        train, torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.calib].tolist()
    )
    reduce_range = {"auto": None, "on": True, "off": False}[args.reduce_range]
    for bits in (8, 4):
        qat_config = QATConfig(
            weight_bits=bits,
            reduce_range=reduce_range,
            freeze_bn_step=int(0.6 * args.qat_steps),  # BN stats settle first, then observers
            freeze_observers_step=int(0.8 * args.qat_steps),
        )
        started = time.perf_counter()
        ptq = static_ptq(fp32, calib, bits, args.observer, qat_config.resolved_reduce_range())
        ptq_top1 = evaluate_accuracy(ptq, test, progress=progress)
        ptq_s = time.perf_counter() - started
        qat_train = TrainConfig(
            epochs=1, max_steps=args.qat_steps, lr=args.qat_lr, batch_size=128, seed=1, device="cpu"
        )
        torch.manual_seed(1)
        qat = run_qat(fp32, train, qat_config, qat_train, progress=progress)
        results[f"w{bits}a8"] = {
            "ptq_top1": ptq_top1,
            "qat_top1": evaluate_accuracy(qat.quantized, test, progress=progress),
            "ptq_weight_int_range": weight_int_range(ptq),
            "qat_weight_int_range": weight_int_range(qat.quantized),
            "ptq_seconds": round(ptq_s, 1),
            "qat_train_seconds": round(qat.train.seconds, 1),
            "qat_steps": qat.train.global_step,
            "qat_config": asdict(qat_config) | {"reduce_range": qat_config.resolved_reduce_range()},
        }
        _log(f"w{bits}a8", {k: v for k, v in results[f"w{bits}a8"].items() if k != "qat_config"})
    fp32_top1, w4 = results["fp32"]["top1"], results["w4a8"]
    lost = fp32_top1 - w4["ptq_top1"]
    w4["recovery_of_ptq_loss"] = (w4["qat_top1"] - w4["ptq_top1"]) / lost if lost > 0 else None
    results["settings"] = {
        "fp32_train": asdict(fp32_config),
        "qat_lr": args.qat_lr,
        "calibration_images": args.calib,
        "ptq_activation_observer": args.observer,
        "test_images": len(test),
    }
    results["environment"] = collect_environment(args.threads)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
