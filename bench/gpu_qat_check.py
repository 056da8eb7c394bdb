"""GPU check: ResNet-50 training throughput and peak memory for FP32, AMP-bf16 and QAT-AMP-bf16, with SGD,
AdamW and AdamW8bit (bitsandbytes, extra [lowmem]); prints JSON.

Each mode trains ``--steps`` optimizer steps through ``qtoolkit.train.fit`` on random data that already
lives on the device (one pre-built batch per step, so no host-to-device copy is measured);
img/s = batch * timed steps / time of those steps, after ``--warmup`` untimed steps. Each mode also
reports the bytes of its optimizer state (``TrainResult.optimizer_state_bytes``); modes needing
bitsandbytes are reported as skipped when it is not installed.

    python bench/gpu_qat_check.py                          # CUDA, batch 128, 224x224, channels_last
    python bench/gpu_qat_check.py --device cpu --batch-size 2 --steps 2 --image-size 64   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtoolkit.errors import QtkError
from qtoolkit.quantize.qat import QATConfig, prepare_qat_model
from qtoolkit.report.environment import collect_environment
from qtoolkit.train import Callback, TrainConfig, fit
from qtoolkit.train.optim import require_optimizer

MODES = {  # name -> (precision, QAT, optimizer)
    "fp32": ("none", False, "sgd"),
    "bf16": ("bf16", False, "sgd"),
    "bf16_adamw": ("bf16", False, "adamw"),
    "bf16_adamw8bit": ("bf16", False, "adamw8bit"),
    "qat_fp32": ("none", True, "sgd"),
    "qat_bf16": ("bf16", True, "sgd"),
    "qat_bf16_adamw": ("bf16", True, "adamw"),
    "qat_bf16_adamw8bit": ("bf16", True, "adamw8bit"),
}


class _Timer(Callback):
    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup, self.marks = device, warmup, []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_end(self, step, model, loss):
        if step >= self.warmup:  # mark after warm-up step w, then after every later step
            self._sync()
            self.marks.append(time.perf_counter())
            if step == self.warmup and self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)


class _Batches(torch.utils.data.Dataset):
    """``steps`` items, each the same full batch on the device."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    precision, qat, optimizer = MODES[mode]
    try:
        require_optimizer(optimizer)
    except QtkError as error:
        return {"skipped": str(error)}
    torch.manual_seed(0)
    model = torchvision.models.quantization.resnet50(weights=None, quantize=False)
    if qat:
        model = prepare_qat_model(model, QATConfig(reduce_range=False))
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, generator=g)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device, generator=g)
    warmup = min(args.warmup, args.steps - 1)
    timer = _Timer(device, warmup)
    config = TrainConfig(
        max_steps=args.steps,
        batch_size=1,  # one dataset item is a whole batch
        lr=0.01 if optimizer == "sgd" else 1e-4,
        optimizer=optimizer,
        device=device.type,
        precision=precision,
        channels_last=args.channels_last,
        seed=0,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = fit(
        model,
        _Batches((images, labels), args.steps),
        config,
        collate_fn=lambda items: items[0],
        callbacks=[timer],
        progress=False,
    )
    timed_steps = len(timer.marks) - 1
    seconds = timer.marks[-1] - timer.marks[0] if timed_steps > 0 else float("nan")
    return {
        "img_per_s": round(args.batch_size * timed_steps / seconds, 1) if timed_steps > 0 else None,
        "timed_steps": timed_steps,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "optimizer": optimizer,
        "optimizer_state_mib": round(result.optimizer_state_bytes / 2**20, 1),
        "final_loss": round(result.last_loss, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--warmup", type=int, default=8, help="untimed steps first (cuDNN autotune, allocator)"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--modes",
        default="fp32,bf16,bf16_adamw,bf16_adamw8bit,qat_bf16,qat_bf16_adamw,qat_bf16_adamw8bit",
        help=f"comma list of {sorted(MODES)}",
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_qat_check: CUDA is not available on this machine; run it on a GPU host, "
            "or pass --device cpu --batch-size 2 --steps 2 --image-size 64 for a smoke test",
            file=sys.stderr,
        )
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or args.steps < 2:
        print(
            f"gpu_qat_check: unknown modes {unknown} (choose from {sorted(MODES)}) or --steps < 2",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    results = {mode: run_mode(mode, args, device) for mode in modes}
    report = {
        "model": "torchvision.models.quantization.resnet50",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "steps": args.steps,
        "channels_last": args.channels_last,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
        "environment": collect_environment(torch.get_num_threads()),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
