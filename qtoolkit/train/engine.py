"""The shared training loop: seeded, resumable, mixed precision, with hooks for QAT.

Learning rate per optimizer step ``s`` (``s`` counts completed steps, ``T`` total steps, ``W`` warm-up):

    lr(s) = lr * (s + 1) / W                          for s < W
    lr(s) = lr * f((s - W) / max(1, T - W))           otherwise,
    f(p)  = (1 + cos(pi p)) / 2  (cosine) | 1 - p  (linear) | 1  (constant)

``T = epochs * ceil(len(dataset) / batch_size)``, capped at ``max_steps`` when that is set.
Epoch ``e`` visits the dataset in the order ``randperm(n, generator=seed(seed + e))``, so a run that
resumes mid-epoch skips exactly the batches it already did; with the model, optimizer, scheduler,
scaler and RNG states restored, a resumed CPU run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from qtoolkit.errors import QtkError
from qtoolkit.runtime.torch_runner import resolve_device
from qtoolkit.train import checkpoint as ckpt
from qtoolkit.train.memory import PeakMemory
from qtoolkit.train.optim import make_optimizer, optimizer_state_bytes, require_optimizer

ForwardLoss = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, torch.Tensor | None, Any]]

__all__ = ["Callback", "TrainConfig", "TrainResult", "default_forward_loss", "fit"]

# Fields that change which batches/updates a run makes: a checkpoint written under other values
# cannot be resumed into this run.
_FINGERPRINT_FIELDS = (
    "epochs",
    "max_steps",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "batch_size",
    "precision",
    "seed",
)


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None  # total optimizer steps cap (stops early when reached)
    lr: float = 0.1
    optimizer: str = "sgd"  # a name in qtoolkit.train.optim.OPTIMIZERS: sgd | adamw | adamw8bit
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | linear | constant (per optimizer step)
    warmup_steps: int = 0  # linear warm-up
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "none"  # none | bf16 | fp16 (torch.autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    grad_clip: float | None = None
    seed: int = 0
    checkpoint_every_steps: int | None = None  # plus always at each epoch end
    num_workers: int = 0
    keep_checkpoints: int = 2  # newest N kept on disk

    def validate(self) -> None:
        require_optimizer(self.optimizer)  # registered, and its library installed
        choices = {
            "schedule": ("cosine", "linear", "constant"),
            "device": ("auto", "cpu", "cuda"),
            "precision": ("none", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise QtkError(f"train config {name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise QtkError("train config needs epochs >= 1 and batch_size >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise QtkError(f"train config max_steps={self.max_steps} must be >= 1 or unset")
        if self.lr <= 0:
            raise QtkError(f"train config lr={self.lr} must be > 0")


@dataclass
class TrainResult:
    global_step: int
    epochs_completed: int
    total_steps: int
    last_loss: float
    train_accuracy: float | None  # running top-1 over the last epoch's batches (None without logits)
    samples_per_s: float
    seconds: float
    checkpoint: str | None  # newest checkpoint written
    resumed_from: str | None
    optimizer: str = ""
    optimizer_state_bytes: int = 0  # tensors in the optimizer's state at the end (qtoolkit.train.optim)
    peak_memory_bytes: int | None = None  # of the run (qtoolkit.train.memory.PeakMemory)
    peak_memory_kind: str = ""  # cuda_max_memory_allocated | cpu_peak_rss_sampled | ...

    def summary(self) -> dict[str, Any]:
        """The record a report keeps: optimizer, its state size, peak memory, steps and time."""
        return {
            "optimizer": self.optimizer,
            "optimizer_state_bytes": self.optimizer_state_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.peak_memory_kind,
            "steps": self.global_step,
            "seconds": round(self.seconds, 2),
            "seconds_per_step": round(self.seconds / self.global_step, 5) if self.global_step else None,
            "resumed_from": self.resumed_from,
        }


class Callback:
    """Hooks called by :func:`fit`; override what you need. Must be idempotent, because a resumed
    run calls ``on_train_start`` and ``on_epoch_start`` again for the epoch it restarts in."""

    def on_train_start(self, model: nn.Module, config: TrainConfig) -> None: ...

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None: ...

    def on_step_start(self, step: int, model: nn.Module) -> None:
        """``step`` = optimizer steps completed so far (0 before the first)."""

    def on_step_end(self, step: int, model: nn.Module, loss: float) -> None: ...

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None: ...


def default_forward_loss(model: nn.Module, batch: Any, device: torch.device) -> tuple[Any, Any, Any]:
    """``(images, labels)`` batch -> cross-entropy loss (computed in fp32), logits, labels."""
    images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    if images.dim() == 4 and _is_channels_last(model):
        images = images.contiguous(memory_format=torch.channels_last)
    logits = model(images)
    return nn.functional.cross_entropy(logits.float(), labels), logits, labels


def _is_channels_last(model: nn.Module) -> bool:
    return bool(getattr(model, "_qtk_channels_last", False))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fingerprint(config: TrainConfig, dataset_len: int) -> dict[str, Any]:
    values = asdict(config)
    return {"dataset_len": dataset_len, **{k: values[k] for k in _FINGERPRINT_FIELDS}}


def _call(callbacks: Sequence[Callback], hook: str, *args: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def _restore(state: dict[str, Any], path: Path, expected: dict[str, Any], objects: dict[str, Any]) -> None:
    saved = state.get("fingerprint")
    if saved != expected:
        diff = {k: (saved.get(k) if isinstance(saved, dict) else None, v) for k, v in expected.items()}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        raise QtkError(
            f"checkpoint {path} was written by a run with other settings {diff} (saved, now); "
            "use a fresh checkpoint directory or the original settings"
        )
    try:
        for key, obj in objects.items():
            if obj is not None:
                obj.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise QtkError(
            f"checkpoint {path} does not match this model/optimizer ({str(exc).splitlines()[0][:150]}); "
            "use a fresh checkpoint directory"
        ) from exc
    ckpt.restore_rng_state(state["rng"])


def fit(
    model: nn.Module,
    train_dataset: Dataset[Any],
    config: TrainConfig,
    *,
    forward_loss: ForwardLoss | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``train_dataset`` and return a summary.

    ``forward_loss(model, batch, device) -> (loss, logits, labels)`` runs under autocast; logits and
    labels may be ``None`` (then no accuracy is shown). With ``resume=True`` the newest checkpoint in
    ``checkpoint_dir`` is loaded (none there: start fresh). The result records the optimizer, the
    bytes of its state and the peak memory of the run (:class:`qtoolkit.train.memory.PeakMemory`).
    """
    config.validate()
    with PeakMemory(resolve_device(config.device)) as peak:
        result = _fit(
            model,
            train_dataset,
            config,
            forward_loss=forward_loss,
            collate_fn=collate_fn,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            callbacks=callbacks,
            progress=progress,
        )
    return replace(result, peak_memory_bytes=peak.bytes, peak_memory_kind=peak.kind)


def _fit(
    model: nn.Module,
    train_dataset: Dataset[Any],
    config: TrainConfig,
    *,
    forward_loss: ForwardLoss | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    forward_loss = forward_loss or default_forward_loss
    callbacks = list(callbacks)
    device = resolve_device(config.device)
    n = len(train_dataset)  # type: ignore[arg-type]
    if n == 0:
        raise QtkError("training dataset is empty; check the data path and split")
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        model._qtk_channels_last = True  # type: ignore[assignment]
    optimizer = make_optimizer(model, config.optimizer, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, config.warmup_steps, config.schedule)
    )
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    fingerprint = _fingerprint(config, n)

    epoch, step_in_epoch, global_step = 0, 0, 0
    resumed_from: Path | None = None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    _seed_everything(config.seed)
    if resume:
        if ckpt_dir is None:
            raise QtkError("resume=True needs a checkpoint_dir")
        latest = ckpt.latest_checkpoint(ckpt_dir)
        if latest is not None:
            state = ckpt.load_checkpoint(latest)
            objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
            _restore(state, latest, fingerprint, objects)
            epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
            resumed_from = latest

    last_written: Path | None = None

    def write_checkpoint() -> None:
        nonlocal last_written
        if ckpt_dir is None:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": ckpt.capture_rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "fingerprint": fingerprint,
        }
        last_written = ckpt.save_checkpoint(ckpt_dir / ckpt.checkpoint_name(global_step), state)
        ckpt.prune_checkpoints(ckpt_dir, config.keep_checkpoints)

    model.train()
    _call(callbacks, "on_train_start", model, config)
    started = time.perf_counter()
    samples_seen, last_loss, accuracy = 0, float("nan"), None
    while global_step < total_steps and epoch < config.epochs:
        _call(callbacks, "on_epoch_start", epoch, model)
        order = _epoch_order(n, config.seed, epoch)[step_in_epoch * config.batch_size :]
        loader_gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 1_009 + step_in_epoch)
        loader = DataLoader(
            train_dataset,  # type: ignore[arg-type]
            batch_size=config.batch_size,
            sampler=order,
            num_workers=config.num_workers,
            collate_fn=collate_fn,
            generator=loader_gen,  # seeds worker RNGs reproducibly
            pin_memory=device.type == "cuda",
        )
        bar = tqdm(
            total=min(steps_per_epoch, total_steps - global_step + step_in_epoch),
            initial=step_in_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        correct, counted, loss_sum, loss_count = 0, 0, 0.0, 0
        epoch_started, epoch_samples = time.perf_counter(), 0
        for batch in loader:
            _call(callbacks, "on_step_start", global_step, model)
            with _autocast(device, config.precision):
                loss, logits, labels = forward_loss(model, batch, device)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if config.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            scheduler.step()
            global_step += 1
            step_in_epoch += 1

            last_loss = float(loss.detach())
            loss_sum, loss_count = loss_sum + last_loss, loss_count + 1
            batch_n = _batch_size(labels, batch)
            samples_seen, epoch_samples = samples_seen + batch_n, epoch_samples + batch_n
            if logits is not None and labels is not None:
                correct += int((logits.detach().argmax(-1) == labels).sum())
                counted += int(labels.numel())
            elapsed = max(time.perf_counter() - epoch_started, 1e-9)
            postfix = {"loss": f"{loss_sum / loss_count:.4f}", "img/s": f"{epoch_samples / elapsed:.0f}"}
            if counted:
                postfix["acc"] = f"{correct / counted:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            _call(callbacks, "on_step_end", global_step, model, last_loss)

            if step_in_epoch == steps_per_epoch:
                break  # the epoch-end checkpoint below covers this step
            if global_step >= total_steps:
                break
            if config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0:
                write_checkpoint()
        bar.close()
        accuracy = correct / counted if counted else None
        if step_in_epoch == steps_per_epoch:
            _call(callbacks, "on_epoch_end", epoch, model)
            epoch, step_in_epoch = epoch + 1, 0
        write_checkpoint()

    seconds = time.perf_counter() - started
    return TrainResult(
        global_step=global_step,
        epochs_completed=epoch,
        total_steps=total_steps,
        last_loss=last_loss,
        train_accuracy=accuracy,
        samples_per_s=samples_seen / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        checkpoint=str(last_written) if last_written else (str(resumed_from) if resumed_from else None),
        resumed_from=str(resumed_from) if resumed_from else None,
        optimizer=config.optimizer,
        optimizer_state_bytes=optimizer_state_bytes(optimizer),
    )


def _batch_size(labels: Any, batch: Any) -> int:
    if isinstance(labels, torch.Tensor):
        return int(labels.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
    return 0
