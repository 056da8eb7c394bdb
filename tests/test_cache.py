"""The one cache helper: content keys, get-or-build with atomic publish, stale staging removal."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qtoolkit.atomic import sha256_file
from qtoolkit.cache import STAGING_PREFIX, cache_key, get_or_build, remove_stale_staging, staging_dir

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _staging_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob(f"{STAGING_PREFIX}*"))


def test_cache_key_hashes_file_lines_then_sorted_json(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x01\x02\x03")
    payload = {"b": 1, "a": [1, 2], "path": tmp_path}
    expected = hashlib.sha256(f"model.safetensors:{sha256_file(weights)}\n".encode())
    expected.update(json.dumps({"a": [1, 2], "b": 1, "path": str(tmp_path)}, sort_keys=True).encode())
    assert cache_key(payload, [weights]) == expected.hexdigest()[:16]
    # Without files the key is sha256(json)[:16], as the hand-written keys it replaced computed it.
    plain = {"model": "resnet18", "torch": "2.14.1"}
    assert cache_key(plain) == hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]
    assert cache_key({**plain, "torch": "2.15.0"}) != cache_key(plain)


def test_get_or_build_publishes_whole_entries_or_nothing(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "thing.json"

    def broken(tmp: Path) -> None:
        tmp.with_suffix(".pt").write_bytes(b"weights")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        get_or_build(entry, broken)
    assert list(entry.parent.iterdir()) == []  # neither the entry, nor its sibling, nor staging

    def build(tmp: Path) -> str:
        tmp.with_suffix(".pt").write_bytes(b"weights")
        tmp.write_text("{}")
        return "built"

    assert get_or_build(entry, build) == ("built", False)
    assert sorted(p.name for p in entry.parent.iterdir()) == ["thing.json", "thing.pt"]
    assert get_or_build(entry, lambda tmp: pytest.fail("must not rebuild a cached entry")) == (None, True)


def test_sigkilled_run_leaves_staging_that_the_next_one_removes(tmp_path: Path) -> None:
    """A process killed with SIGKILL inside its staging directory cannot clean up (as ``qtk run``
    killed mid-export left ``OUT/.qtk-staging-*``); the next staging directory in the same place
    removes it, because its pid is gone."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, time
        from qtoolkit.cache import staging_dir
        with staging_dir({str(out)!r}) as staging:
            (staging / "model_fp32.onnx").write_bytes(b"x" * 100_000)
            print(staging, flush=True)
            time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    left = Path(child.stdout.readline().strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert _staging_dirs(out) == [left] and (left / "model_fp32.onnx").stat().st_size == 100_000

    with staging_dir(out) as fresh:
        assert _staging_dirs(out) == [fresh]  # the dead run's directory is gone
    assert _staging_dirs(out) == []


def test_staging_of_a_live_process_is_kept(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f"{STAGING_PREFIX}{sleeper.pid}-abc"
        dead = tmp_path / f"{STAGING_PREFIX}{_dead_pid()}-def"
        live.mkdir()
        dead.mkdir()
        (dead / "model_int8.onnx").write_bytes(b"x")
        assert remove_stale_staging(tmp_path) == [dead]
        assert _staging_dirs(tmp_path) == [live]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_image_baseline_trains_once_then_loads(tmp_path: Path) -> None:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from qtoolkit.train import TrainConfig
    from qtoolkit.train.baselines import image_baseline

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    )

    def build() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    config = TrainConfig(epochs=1, batch_size=16, lr=0.1, device="cpu")
    determining = {"model": "linear", "seed": 0}
    first, info = image_baseline(build, data, config, tmp_path, "linear-toy", determining, progress=False)
    key = cache_key(determining)
    assert info["source"] == "trained" and info["key"] == key and info["steps"] == 4
    assert sorted(p.name for p in (tmp_path / "baselines").iterdir()) == [
        f"linear-toy-{key}.json",
        f"linear-toy-{key}.pt",
    ]  # no staging directory, no epoch checkpoints left
    again, info = image_baseline(build, data, config, tmp_path, "linear-toy", determining, progress=False)
    assert info["source"] == "cache" and info["path"].endswith(f"linear-toy-{key}.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True)
    )
