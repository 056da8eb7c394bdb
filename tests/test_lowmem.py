"""8-bit optimizer states (adamw8bit, extra [lowmem]): which tensors are 8-bit, how many bytes they
take, resume after a crash under each precision, the report's training record, and the one-line
error (with nothing written) when bitsandbytes is missing."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from qtoolkit.errors import QtkError
from qtoolkit.recipe import load_recipe
from qtoolkit.train import Callback, TrainConfig, fit, optim
from qtoolkit.train import checkpoint as ckpt
from qtoolkit.train.memory import PeakMemory

REPO = Path(__file__).resolve().parents[1]


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # 64x128 = 8192 and 128x128 weights: over the 4096 minimum; head 384: under
    return nn.Sequential(
        nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3)
    )


def _data(n: int = 256) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    return TensorDataset(x, (x @ torch.randn(64, 3, generator=g)).argmax(1))


def test_missing_bitsandbytes_is_one_line_and_writes_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    optim._adamw8bit_class.cache_clear()
    try:
        config = TrainConfig(epochs=1, batch_size=32, optimizer="adamw8bit")
        with pytest.raises(QtkError, match=r'pip install -e "\.\[lowmem\]"') as error:
            fit(_mlp(), _data(), config, checkpoint_dir=tmp_path / "ckpt", progress=False)
        assert "\n" not in str(error.value)
        assert not (tmp_path / "ckpt").exists()

        from qtoolkit.pipeline import run_recipe

        recipe = load_recipe(
            REPO / "recipes" / "resnet18_fmnist_qat.yaml", ["quantize.qat.optimizer=adamw8bit"]
        )
        with pytest.raises(QtkError, match=r"resnet18_fmnist_qat.yaml: .*\[lowmem\]"):
            run_recipe(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
        assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    finally:
        optim._adamw8bit_class.cache_clear()


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(QtkError, match="'lion' is not one of"):
        TrainConfig(optimizer="lion").validate()


def _step_once(name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _mlp()
    optimizer = optim.make_optimizer(model, name, TrainConfig(lr=1e-3, weight_decay=0.01))
    x, y = _data(16).tensors
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return model, optimizer


def test_adamw8bit_keeps_fp32_states_for_vectors_and_small_tensors() -> None:
    pytest.importorskip("bitsandbytes")
    model, optimizer = _step_once("adamw8bit")
    dtypes = {name: optimizer.state[p]["state1"].dtype for name, p in model.named_parameters()}
    assert dtypes == {
        "0.weight": torch.uint8,  # 8192 elements
        "0.bias": torch.float32,  # vector
        "1.weight": torch.float32,  # LayerNorm
        "1.bias": torch.float32,
        "3.weight": torch.uint8,  # 16384
        "3.bias": torch.float32,
        "5.weight": torch.float32,  # 384 < 4096: bitsandbytes' own minimum
        "5.bias": torch.float32,
    }


def test_state_bytes_counted_from_tensors() -> None:
    pytest.importorskip("bitsandbytes")
    _, adamw = _step_once("adamw")
    model, adamw8 = _step_once("adamw8bit")
    n = sum(p.numel() for p in model.parameters())
    # torch AdamW: two fp32 moments per parameter plus one fp32 step tensor per parameter tensor
    assert optim.optimizer_state_bytes(adamw) == 8 * n + 4 * len(list(model.parameters()))
    big = 64 * 128 + 128 * 128  # 8-bit: 1 B per moment, fp32 absmax per 256-block, two shared 256-entry maps
    small = n - big
    expected = 2 * big + 2 * 4 * (big // 256) + 2 * 256 * 4 + 8 * small
    assert optim.optimizer_state_bytes(adamw8) == expected


class _Crash(Callback):
    def on_step_end(self, step, model, loss):
        if step == 11:
            raise KeyboardInterrupt


class _Noisy(Dataset):
    def __init__(self) -> None:
        self.x, self.y = _data().tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(64), self.y[i]  # global-RNG augmentation


def _digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("precision", ["none", "bf16", "fp16"])
def test_adamw8bit_resume_is_bit_identical(precision: str, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    config = TrainConfig(
        epochs=2, batch_size=32, lr=3e-3, optimizer="adamw8bit", precision=precision, checkpoint_every_steps=5
    )
    reference = _mlp()
    expected = fit(reference, _Noisy(), config, progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(_mlp(), _Noisy(), config, checkpoint_dir=tmp_path, callbacks=[_Crash()], progress=False)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))  # weights_only=True
    assert state["global_step"] == 10
    resumed = _mlp()
    torch.manual_seed(1234)
    result = fit(resumed, _Noisy(), config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert result.global_step == 16 and result.resumed_from is not None
    assert _digest(resumed) == _digest(reference)
    assert result.last_loss == expected.last_loss < 1.0
    assert result.optimizer == "adamw8bit" and result.optimizer_state_bytes == expected.optimizer_state_bytes


def test_fit_records_optimizer_state_and_peak_memory() -> None:
    result = fit(_mlp(), _data(), TrainConfig(max_steps=3, batch_size=32, optimizer="adamw"), progress=False)
    summary = result.summary()
    assert summary["optimizer"] == "adamw" and summary["steps"] == 3
    assert summary["optimizer_state_bytes"] > 8 * 64 * 128
    assert summary["peak_memory_kind"] == "cpu_peak_rss_sampled"
    assert summary["peak_memory_bytes"] > 10 * 2**20  # a Python process with torch holds far more


def test_peak_memory_sees_a_short_lived_allocation() -> None:
    with PeakMemory(torch.device("cpu"), interval=0.005) as before:
        pass
    with PeakMemory(torch.device("cpu"), interval=0.005) as during:
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched

        time.sleep(0.1)
        del block
    assert during.bytes is not None and before.bytes is not None
    assert during.bytes - before.bytes > 48 * 2**20
