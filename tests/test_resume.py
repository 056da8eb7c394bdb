"""Resume after a crash gives the same model as an uninterrupted run (bit-identical on CPU).

The SIGKILL test runs training in a child process, kills it from outside in the middle of an epoch,
resumes from the newest checkpoint, and compares a SHA-256 of the final state_dict with that of an
uninterrupted child run. The data set draws augmentation noise from torch's global RNG and the
model has dropout, so the RNG state restore is exercised too.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from qtoolkit.train import Callback, TrainConfig, fit
from qtoolkit.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import hashlib, sys, time
    import torch
    from torch import nn
    from qtoolkit.train import Callback, TrainConfig, fit

    torch.set_num_threads(1)
    ckpt_dir, out, sleep, optimizer = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

    class Noisy(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(1)
            self.x = torch.randn(1500, 1, 8, 8, generator=g)
            self.y = (self.x.flatten(1) @ torch.randn(64, 5, generator=g)).argmax(1)
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return self.x[i] + 0.1 * torch.randn(1, 8, 8), self.y[i]  # global-RNG augmentation

    class Report(Callback):
        def on_step_end(self, step, model, loss):
            print(f"step {step}", flush=True)
            time.sleep(sleep)

    torch.manual_seed(0)
    # Linear(512, 16): 8192 weights, over bitsandbytes' 4096 minimum, so adamw8bit keeps 8-bit states
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 5))
    lr = {"sgd": 0.05, "adamw8bit": 0.005}[optimizer]
    config = TrainConfig(epochs=3, batch_size=25, lr=lr, optimizer=optimizer, warmup_steps=5,
                         checkpoint_every_steps=7, seed=3)
    fit(model, Noisy(), config, checkpoint_dir=ckpt_dir, resume=True, callbacks=[Report()], progress=False)
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode()); digest.update(value.contiguous().numpy().tobytes())
    open(out, "w").write(digest.hexdigest())
    """
)
STEPS_PER_EPOCH, TOTAL_STEPS = 60, 180


def _start(script: Path, ckpt_dir: Path, out: Path, sleep: float, optimizer: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(ckpt_dir), str(out), str(sleep), optimizer]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


# 8-bit AdamW in the full run only: the fast subset keeps the SGD kill-and-resume (the same checkpoints).
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adamw8bit", marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(optimizer: str, tmp_path: Path) -> None:
    if optimizer == "adamw8bit":
        pytest.importorskip("bitsandbytes", reason='adamw8bit needs the extra: pip install -e ".[lowmem]"')
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reference_out, resumed_out = tmp_path / "reference.sha", tmp_path / "resumed.sha"
    reference = _start(script, tmp_path / "ref_ckpt", reference_out, 0.0, optimizer)

    victim = _start(script, tmp_path / "ckpt", resumed_out, 0.02, optimizer)
    assert victim.stdout is not None
    kill_after = STEPS_PER_EPOCH + 22  # in the middle of the second epoch
    last = 0
    for line in victim.stdout:
        last = int(line.split()[1])
        if last >= kill_after:
            os.kill(victim.pid, signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    assert not resumed_out.exists()
    latest = ckpt.latest_checkpoint(tmp_path / "ckpt")
    assert latest is not None
    state = ckpt.load_checkpoint(latest)
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < STEPS_PER_EPOCH  # a mid-epoch checkpoint
    if optimizer == "adamw8bit":  # the 8-bit moments are in the checkpoint (loaded weights_only above)
        codes = [t for t in _tensors(state["optimizer"]["state"]) if t.dtype == torch.uint8]
        assert {tuple(t.shape) for t in codes} == {(16, 512)}

    resumed = _start(script, tmp_path / "ckpt", resumed_out, 0.0, optimizer)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    steps = _steps(out)
    assert steps[0] == state["global_step"] + 1 and steps[-1] == TOTAL_STEPS  # skipped the done batches

    _, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err
    assert resumed_out.read_text() == reference_out.read_text()


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _steps(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("step ")]


# --- in-process variant: crash by exception, for each precision --------------------------------------


class _Data(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(300, 1, 6, 6, generator=g)
        self.y = (self.x.flatten(1) @ torch.randn(36, 3, generator=g)).argmax(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(1, 6, 6), self.y[i]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(144, 3),
    )


class _Crash(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, step, model, loss):
        if step == self.at:
            raise KeyboardInterrupt


def _digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("precision", ["none", "bf16", "fp16"])
def test_exception_mid_epoch_then_resume_is_bit_identical(precision: str, tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, checkpoint_every_steps=4, precision=precision)
    reference = _model()
    fit(reference, _Data(), config, progress=False)

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _Data(), config, checkpoint_dir=tmp_path, callbacks=[_Crash(14)], progress=False)
    resumed = _model()
    torch.manual_seed(1234)  # the global RNG state must come from the checkpoint, not from here
    result = fit(resumed, _Data(), config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert result.resumed_from is not None and result.resumed_from.endswith(ckpt.checkpoint_name(12))
    assert result.global_step == 20
    assert _digest(resumed) == _digest(reference)


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    config = TrainConfig(max_steps=3, batch_size=32)
    result = fit(_model(), _Data(), config, checkpoint_dir=tmp_path / "empty", resume=True, progress=False)
    assert result.resumed_from is None and result.global_step == 3
