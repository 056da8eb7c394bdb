"""peers/: qtoolkit's INT8 ONNX beside onnxruntime's quantize_static on a tiny conv net (fast)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qtoolkit.peers.ort_compare import CompareSettings, compare_with_ort, format_comparison
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()  # fmt: skip


def test_compare_with_ort_on_a_tiny_net(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(4)]
    eval_batches = [(torch.randn(8, 3, 16, 16, generator=generator), torch.zeros(8)) for _ in range(4)]
    model = _net()
    config = StaticQuantConfig(observers=ObserverSpec(activation="minmax", reduce_range=False))
    example = calibration[0][:1]
    int8 = quantize(model, config, calibration=calibration, example_input=example).int8_model
    settings = CompareSettings(ort_methods=("minmax",), threads=1, repeats=2, rounds=2)
    results = compare_with_ort(model, int8, calibration, eval_batches, example, settings, tmp_path)
    rows = results["rows"]
    assert set(rows) == {"fp32_onnx", "qtoolkit_int8", "ort_minmax"}
    assert rows["fp32_onnx"]["top1"] == 1.0 and rows["fp32_onnx"]["samples"] == 32
    for key in ("qtoolkit_int8", "ort_minmax"):
        assert rows[key]["cosine"] > 0.95  # 8-bit static PTQ of a small net stays close to FP32
        assert rows[key]["size_mb"] > 0
    assert {k: len(v) for k, v in results["latency_ms_per_round"].items()} == dict.fromkeys(rows, 2)
    ratio = results["qtoolkit_over_ort_latency"]["ort_minmax"]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    table = format_comparison(results, "tiny")
    assert "| qtoolkit_int8 |" in table and "| ort_minmax |" in table
    assert (tmp_path / "ort_minmax_int8.onnx").is_file()


# full run only (~11 s): the fast subset keeps the zoo's unit tests
@pytest.mark.slow
def test_zoo_row_puts_the_kernel_floor_beside_parity() -> None:
    """A tiny ConvNeXt through the zoo: parity and its kernel floor (same file, ORT unfused vs fused)
    on the same inputs, the floor's column in the table, and residual Adds in integer."""
    import pytest

    pytest.importorskip("torchvision")
    from qtoolkit.peers.zoo import format_zoo, run_zoo

    results = run_zoo(
        ["tiny_convnext"], threads=1, batch_sizes=(1,), rounds=1, repeats=1, warmup=1, parity_samples=16
    )
    (row,) = results["rows"]
    assert "errors" not in row, row.get("errors")
    parity, floor = row["parity"], row["kernel_floor"]
    assert parity["samples"] == floor["samples"] == 16
    assert floor["agreement"] >= 0.9 and 0 <= floor["max_abs_diff"] < 0.05
    ops = row["optimized_ops"]["qtoolkit_int8"]
    # residual Adds run as QLinearAdd; the MLP's second Linear is a QGemm with its int32 bias (no float
    # Add: qdq_passes.LINEAR_TO_GEMM), plus the head; the first feeds only GELU: MatMulIntegerToFloat
    assert ops["QLinearAdd"] == 4 and ops.get("Add", 0) == 0
    assert ops["QGemm"] == 4 + 1 and ops["MatMulIntegerToFloat"] == 4
    table = format_zoo(results)
    assert "kernel floor top-1 / max Δlogit" in table
    assert f"{100 * floor['agreement']:.1f}% / {floor['max_abs_diff']:.3g}" in table.splitlines()[4]
