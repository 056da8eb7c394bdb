"""Training engine: learning, schedule, hooks, precision, checkpoint validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.accuracy import evaluate_accuracy
from qtoolkit.train import Callback, TrainConfig, fit
from qtoolkit.train import checkpoint as ckpt
from qtoolkit.train.engine import lr_factor


def _data(n: int = 512, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    w = torch.randn(36, 3, generator=g)
    return TensorDataset(x, (x.flatten(1) @ w).argmax(1))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    )


class _Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, model, config):
        self.events.append(("start",))

    def on_epoch_start(self, epoch, model):
        self.events.append(("epoch_start", epoch))

    def on_step_end(self, step, model, loss):
        self.events.append(("step", step))

    def on_epoch_end(self, epoch, model):
        self.events.append(("epoch_end", epoch))


def test_fit_learns_separable_problem() -> None:
    data, model = _data(), _model()
    before = evaluate_accuracy(model, data, progress=False)
    result = fit(model, data, TrainConfig(epochs=4, batch_size=32, lr=0.05), progress=False)
    after = evaluate_accuracy(model, data, progress=False)
    assert result.global_step == 4 * 16 and result.epochs_completed == 4
    assert after > 0.85 and after > before + 0.2
    assert result.train_accuracy is not None and result.samples_per_s > 0


def test_callbacks_order_and_max_steps() -> None:
    recorder = _Recorder()
    config = TrainConfig(epochs=5, batch_size=100, max_steps=7)  # 6 steps per epoch (512 samples)
    result = fit(_model(), _data(), config, callbacks=[recorder], progress=False)
    assert result.global_step == 7 and result.total_steps == 7
    expected = [("start",), ("epoch_start", 0)] + [("step", s) for s in range(1, 7)]
    expected += [("epoch_end", 0), ("epoch_start", 1), ("step", 7)]
    assert recorder.events == expected


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("cosine", 0, 1 / 4),  # warm-up: (s+1)/W
        ("cosine", 3, 1.0),
        ("cosine", 4, 1.0),  # first decay step
        ("cosine", 54, 0.5 * (1 + math.cos(math.pi * 0.5))),
        ("cosine", 104, 0.0),
        ("linear", 54, 0.5),
        ("constant", 90, 1.0),
    ],
)
def test_lr_factor(schedule: str, step: int, expected: float) -> None:
    assert lr_factor(step, total=104, warmup=4, schedule=schedule) == pytest.approx(expected)


def test_optimizer_lr_follows_schedule() -> None:
    seen: list[float] = []
    config = TrainConfig(
        epochs=1, batch_size=64, lr=0.2, warmup_steps=2, schedule="linear", optimizer="adamw"
    )

    class LrProbe(Callback):
        def on_step_end(self, step, model, loss):
            seen.append(step)

    result = fit(_model(), _data(), config, callbacks=[LrProbe()], progress=False)
    assert seen == list(range(1, 9)) and result.total_steps == 8


def test_grad_clip_bounds_update() -> None:
    model = _model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = TrainConfig(max_steps=1, batch_size=64, lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=1e-3)
    config.schedule = "constant"
    fit(model, _data(), config, progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < float((after - before).norm()) <= 1e-3 * 1.0001


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(precision: str, tmp_path: Path) -> None:
    data, model = _data(), _model()
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, precision=precision, device="cpu")
    result = fit(model, data, config, checkpoint_dir=tmp_path, progress=False)
    assert math.isfinite(result.last_loss)
    assert evaluate_accuracy(model, data, progress=False) > 0.8
    state = ckpt.load_checkpoint(result.checkpoint)
    if precision == "fp16":  # the GradScaler ran and its state is saved
        assert state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None


def test_channels_last_runs() -> None:
    model = _model()
    result = fit(model, _data(), TrainConfig(max_steps=3, batch_size=32, channels_last=True), progress=False)
    assert result.global_step == 3
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


class _DictData(Dataset):
    def __init__(self) -> None:
        self.inner = _data()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.inner[i]
        return {"x": x, "label": y}


def test_custom_forward_loss_and_collate_for_dict_batches() -> None:
    def collate(items):
        return {
            "x": torch.stack([it["x"] for it in items]),
            "label": torch.stack([it["label"] for it in items]),
        }

    def forward_loss(model, batch, device):
        logits = model(batch["x"].to(device))
        labels = batch["label"].to(device)
        return nn.functional.cross_entropy(logits, labels), logits, labels

    model = _model()
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    fit(model, _DictData(), config, forward_loss=forward_loss, collate_fn=collate, progress=False)
    acc = evaluate_accuracy(
        model,
        _DictData(),
        collate_fn=collate,
        forward=lambda m, b, d: (m(b["x"]), b["label"]),
        progress=False,
    )
    assert acc > 0.8


def test_evaluate_accuracy_exact() -> None:
    x = torch.eye(4).repeat(5, 1)  # logits = x, argmax = row index % 4
    labels = torch.tensor([0, 1, 2, 3] * 5)
    labels[:5] = (labels[:5] + 1) % 4  # 5 of 20 wrong
    assert evaluate_accuracy(nn.Identity(), TensorDataset(x, labels), batch_size=3, progress=False) == 0.75


def test_invalid_config_and_device() -> None:
    with pytest.raises(QtkError, match="precision"):
        fit(_model(), _data(), TrainConfig(precision="fp8"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(QtkError, match="CUDA is not available"):
            fit(_model(), _data(), TrainConfig(device="cuda"), progress=False)


def _one_checkpoint(tmp_path: Path) -> Path:
    fit(_model(), _data(), TrainConfig(max_steps=2, batch_size=64), checkpoint_dir=tmp_path, progress=False)
    path = ckpt.latest_checkpoint(tmp_path)
    assert path is not None
    return path


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    state = torch.load(_one_checkpoint(tmp_path), weights_only=True)
    assert state["format"] == ckpt.FORMAT and state["global_step"] == 2
    assert isinstance(state["rng"]["python_state"], torch.Tensor)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "pickled_object"])
def test_bad_checkpoint_gives_one_line_error(damage: str, tmp_path: Path) -> None:
    path = _one_checkpoint(tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:
        torch.save({"format": ckpt.FORMAT, "obj": _Recorder()}, path)
    with pytest.raises(QtkError) as info:
        fit(_model(), _data(), TrainConfig(max_steps=4, batch_size=64), checkpoint_dir=tmp_path, resume=True)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    _one_checkpoint(tmp_path)
    with pytest.raises(QtkError, match="other settings"):
        fit(_model(), _data(), TrainConfig(max_steps=2, batch_size=32), checkpoint_dir=tmp_path, resume=True)


def test_resume_into_other_model_is_refused(tmp_path: Path) -> None:
    _one_checkpoint(tmp_path)
    other = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    with pytest.raises(QtkError, match="does not match"):
        fit(other, _data(), TrainConfig(max_steps=2, batch_size=64), checkpoint_dir=tmp_path, resume=True)


def test_keeps_only_newest_checkpoints(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=64, checkpoint_every_steps=3, keep_checkpoints=2)
    fit(_model(), _data(), config, checkpoint_dir=tmp_path, progress=False)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == [ckpt.checkpoint_name(15), ckpt.checkpoint_name(16)]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["none", "bf16", "fp16"])
def test_cuda_training(precision: str) -> None:
    data, model = _data(), _model()
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, precision=precision, device="cuda")
    fit(model, data, config, progress=False)
    assert next(model.parameters()).is_cuda
    assert evaluate_accuracy(model, data, device="cuda", progress=False) > 0.8
