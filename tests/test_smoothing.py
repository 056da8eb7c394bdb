"""SmoothQuant-style smoothing for dynamic INT8 (qtoolkit/quantize/smoothing.py)."""

from __future__ import annotations

import collections
import copy
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qtoolkit import DynamicQuantConfig, QtkError, export_int8_onnx, quantize_model
from qtoolkit.quantize.dynamic import quantize_dynamic, quantized_modules
from qtoolkit.quantize.smoothing import SmoothedLinear, smooth_linears
from qtoolkit.runtime.ort import make_session


class TinyEncoderBlock(nn.Module):
    """Post-LayerNorm attention + GELU MLP, BERT-shaped; the LayerNorm plants outlier channels."""

    def __init__(self, width: int = 32, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.head = nn.Linear(width, classes)
        with torch.no_grad():
            self.norm.weight[:3] = 40.0  # three outlier channels, as BERT's LayerNorm outputs have

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        context = (attention @ v).transpose(1, 2).reshape(h.shape)
        h2 = h + self.out(context)
        return self.head((h2 + self.down(F.gelu(self.up(h2)))).mean(1))


def _model_and_batches() -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model = TinyEncoderBlock().eval()
    calibration = [torch.randn(8, 10, 32) for _ in range(4)]
    return model, calibration, torch.randn(64, 10, 32)


def test_smoothing_keeps_the_float_model_and_folds_value_into_the_output_projection() -> None:
    model, calibration, inputs = _model_and_batches()
    smoothed = copy.deepcopy(model)
    summary = smooth_linears(smoothed, calibration, alpha=0.85)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(inputs), model(inputs), rtol=1e-4, atol=1e-5)
    where = {tuple(g["linears"]): g["scale"] for g in summary["groups"]}
    assert where == {
        ("query", "key", "value"): "Mul",  # one scale for the three readers of the LayerNorm output
        ("out",): "folded into value",  # softmax(qkᵀ)·V is linear in each channel of V: exact, no Mul
        ("up",): "Mul",  # its producer `out` feeds a residual add: the fold is tried and refused
        ("down",): "Mul",  # behind GELU: refused
        ("head",): "Mul",
    }
    assert smoothed.query.inv_scale is smoothed.key.inv_scale is smoothed.value.inv_scale
    assert not isinstance(smoothed.out, SmoothedLinear)
    qkv = next(g for g in summary["groups"] if g["linears"][0] == "query")
    assert qkv["input_range_spread_before"] > 10 * qkv["input_range_spread_after"]


def _int8_error(qmodel: nn.Module, model: nn.Module, inputs: torch.Tensor) -> float:
    with torch.no_grad():
        reference = model(inputs)
        return float((qmodel(inputs) - reference).pow(2).mean() / reference.pow(2).mean())


def test_smoothing_cuts_the_dynamic_int8_error_of_planted_outlier_channels() -> None:
    model, calibration, inputs = _model_and_batches()
    plain = _int8_error(quantize_dynamic(model, DynamicQuantConfig()), model, inputs)
    smoothed = _int8_error(
        quantize_dynamic(model, DynamicQuantConfig(smoothing=0.85), calibration=calibration), model, inputs
    )
    assert smoothed < plain / 3, (plain, smoothed)


def test_smoothed_dynamic_onnx_matches_torch_and_shares_one_mul_per_group(tmp_path) -> None:
    model, calibration, inputs = _model_and_batches()
    files = {}
    for name, config in {"plain": DynamicQuantConfig(), "smooth": DynamicQuantConfig(smoothing=0.85)}.items():
        quantized = quantize_model(model, config, calibration=calibration)
        files[name] = export_int8_onnx(quantized, inputs[:2], tmp_path / f"{name}.onnx").path
        if name == "smooth":
            session = make_session(files[name], 1)
            got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
            with torch.no_grad():
                want = quantized.int8_model(inputs).numpy()
            # Equal up to dynamic quantization's rounding: an input within an ulp of a rounding boundary
            # (torch's and ORT's GELU differ by an ulp; which ones is CPU-dependent) lands one LSB apart
            # (on an Intel Xeon: 1 element of 81,920 in row 42, 0.027 at the output, max |logit| 10.6).
            row_error = np.abs(got - want).max(axis=1)
            assert (row_error > 1e-3 * np.abs(want).max() + 1e-4).sum() <= 2, row_error
            assert row_error.max() < 0.01 * np.abs(want).max()
    muls = {}
    for name, path in files.items():
        optimized = tmp_path / f"{name}_ort.onnx"
        make_session(path, 1, optimized_model_path=optimized)
        ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
        assert ops["MatMul"] + ops["FusedMatMul"] == 2 and not ops["Gemm"]  # only attention's stay float
        assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == 7  # every Linear integer
        muls[name] = ops["Mul"]
    assert muls["smooth"] - muls["plain"] == 4  # q/k/v share one; `out` needs none (folded)


def test_exclude_patterns_name_the_original_linears_after_smoothing() -> None:
    model, calibration, _ = _model_and_batches()
    qmodel = quantize_dynamic(
        model, DynamicQuantConfig(smoothing=0.85, exclude=("down",)), calibration=calibration
    )
    kinds = quantized_modules(qmodel)
    assert "down.linear" not in kinds and "up.linear" in kinds and "out" in kinds
    # a name from a smoothed model's report (qtk tune's fallback list) works as well
    again = quantize_dynamic(
        model, DynamicQuantConfig(smoothing=0.85, exclude=("down.linear",)), calibration=calibration
    )
    assert quantized_modules(again) == kinds


def test_smoothing_bad_input_is_one_clear_error() -> None:
    model, _, _ = _model_and_batches()
    with pytest.raises(QtkError, match="needs calibration batches"):
        quantize_dynamic(model, DynamicQuantConfig(smoothing=0.85))
    with pytest.raises(QtkError, match="outside"):
        DynamicQuantConfig(smoothing=1.5)


# full run only (~8 s): the smoothing unit tests stay in the fast subset
@pytest.mark.slow
def test_text_recipe_with_smoothing_runs_end_to_end(tmp_path) -> None:
    """`quantize.smoothing` in a recipe: ranges from the train split's head, recorded in the report."""
    pytest.importorskip("transformers")
    from test_text_pipeline import write_tiny_text_recipe

    from qtoolkit.cli import main

    recipe = write_tiny_text_recipe(
        tmp_path,
        "tiny-text-smooth",
        train="{max_steps: 10, batch_size: 16, lr: 0.001, optimizer: adamw}",
        quantize="{method: dynamic, smoothing: 0.85, calibration: {size: 64, batch_size: 16}}",
    )
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["size"] == 64 and len(report["calibration"]["fingerprint"]) == 64
    assert report["quantization"]["config"]["smoothing"] == 0.85
    assert report["export"]["int8_ops"].get("Mul", 0) > 0  # the smoothing Muls before the Linears
    assert any(name.endswith(".linear") for name in report["quantization"]["modules"])
    groups = report["quantization"]["smoothing"]["groups"]  # the summary reaches report.json
    assert any(g["scale"].startswith("folded into") for g in groups) and any(
        g["scale"] == "Mul" for g in groups
    )
