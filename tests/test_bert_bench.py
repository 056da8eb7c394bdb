"""bench/bert_dynamic.py, the command behind the README's BERT latency table, runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytest.importorskip("transformers")

from qtoolkit.models.bert import save_tiny_bert

BENCH = REPO / "bench" / "bert_dynamic.py"


@pytest.mark.slow
def test_bert_bench_runs_on_a_tiny_model(tmp_path) -> None:
    model_dir = save_tiny_bert(tmp_path / "tiny", num_labels=2)
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH), "--model", str(model_dir), "--steps", "3", "--warmup", "1",
           "--rounds", "2", "--out", str(out), "--compare-sdpa"]  # fmt: skip
    env = {**os.environ, "QTK_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert {"int8_onnx", "ort_peer", "int8_onnx@ort_default_session", "int8_onnx_sdpa"} <= set(
        results["accuracy"]
    )
    assert results["session_disabled_optimizers"] == ["SkipLayerNormFusion"]
    assert results["agreement_int8_onnx_vs_int8_torch"] >= 0.99
    for batch in ("batch1", "batch8"):
        assert len(results["latency_ms_seq128_per_round"][batch]["int8_onnx"]) == 2
        ratio = results["speedup_int8_onnx_vs_fp32_onnx"][batch]
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert "speedup_batch1>=1.9" in results["checks"] and "PASS" in proc.stdout
    assert (out / "deploy" / "model_int8.onnx").is_file()
