"""Parity gate from a measured noise floor: torch INT8 vs itself with one kernel swapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qtoolkit.evaluate.noise_floor import find_kernel_swap, swapped_runner
from qtoolkit.report.writer import checks, parity_limit


def test_parity_limit_relaxes_only_for_a_noisy_floor():
    assert parity_limit(0.99, None, 2.0) == 0.99  # no swap applies: the fixed limit
    assert parity_limit(0.99, 1.0, 2.0) == 0.99  # stable under the swap: the fixed limit
    assert parity_limit(0.99, 0.998, 2.0) == 0.99  # floor well inside the fixed limit
    assert parity_limit(0.99, 0.988, 2.0) == pytest.approx(0.976)  # 1 − 2 · 1.2 %
    assert parity_limit(0.99, 0.3, 2.0) == 0.0


def _report(agreement: float, floor: float | None) -> dict:
    metric = {"accuracy": 0.8}
    return {
        "metrics": {"fp32_torch": metric, "int8_onnx": metric},
        "tolerance_pp": 0.5,
        "min_agreement": 0.99,
        "parity_noise_factor": 2.0,
        "parity": {
            "int8_onnx_vs_int8_torch_agreement": agreement,
            "noise_floor": None
            if floor is None
            else {"swap": "attention sdpa → eager", "int8_torch_vs_swapped_agreement": floor},
        },
    }


def test_checks_use_the_floor():
    # a deep encoder: 98.3 % agreement fails the fixed 99 % but is within twice a 1.2 % floor
    assert not checks(_report(0.983, None))["parity"]["passed"]
    relaxed = checks(_report(0.983, 0.988))["parity"]
    assert relaxed["passed"] and relaxed["limit"] == pytest.approx(0.976)
    # a broken export stays far below any floor
    assert not checks(_report(0.90, 0.988))["parity"]["passed"]


def test_kernel_swap_applies_to_hugging_face_attention(tmp_path):
    pytest.importorskip("transformers")
    from models_for_tests import save_tiny_bert

    from qtoolkit.models.bert import load_classifier
    from qtoolkit.runtime.torch_runner import torch_runner

    model = load_classifier(save_tiny_bert(tmp_path / "tiny"))
    found = find_kernel_swap(model)
    assert found is not None
    swap, description = found
    kernel = model.config._attn_implementation
    assert description.startswith(f"attention {kernel} → ")
    seen = []
    run = swapped_runner(lambda x: seen.append(model.config._attn_implementation), model, swap)
    run(None)
    assert seen and seen[0] != kernel and model.config._attn_implementation == kernel  # restored
    ids = {"input_ids": torch.tensor([[2, 10, 11, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    torch.testing.assert_close(
        torch.from_numpy(swapped_runner(torch_runner(model), model, swap)(ids)),
        torch.from_numpy(torch_runner(model)(ids)),
        atol=1e-5,
        rtol=0,
    )


def test_no_kernel_swap_for_plain_models():
    assert find_kernel_swap(nn.Sequential(nn.Linear(4, 2))) is None


def test_batch_halves_apply_to_dynamic_models():
    from qtoolkit import DynamicQuantConfig, quantize_model
    from qtoolkit.runtime.torch_runner import torch_runner

    torch.manual_seed(0)
    int8 = quantize_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), DynamicQuantConfig())
    found = find_kernel_swap(int8.int8_model)
    assert found is not None and found[0].name == "batch-halves"
    run = torch_runner(int8.int8_model)
    x = torch.randn(6, 8)
    x[5] *= 50  # one wide row: the half without it gets finer activation scales
    whole, halves = run(x), swapped_runner(run, int8.int8_model, found[0])(x)
    assert halves.shape == whole.shape
    assert abs(halves[:3] - whole[:3]).max() > 0  # other ranges, other roundings
    torch.testing.assert_close(torch.from_numpy(halves[3:]), torch.from_numpy(run(x[3:])))


def test_ort_fusion_floor_is_fused_vs_unfused_of_one_file(tmp_path):
    """The floor compares onnxruntime's fused kernels with the QDQ graph as written: unfused, the file
    computes qtoolkit's QDQ simulation; the floor's |Δlogit| is the fused kernels' distance from it."""
    import warnings

    from models_for_tests import PlainNet, calibration_batches

    from qtoolkit import StaticQuantConfig, quantize_model
    from qtoolkit.evaluate.noise_floor import ORT_FUSION_SWAP, ort_fusion_floor
    from qtoolkit.export import export_int8_onnx, to_reference
    from qtoolkit.runtime.ort import make_session

    torch.manual_seed(0)
    batches = calibration_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = quantize_model(
            PlainNet().eval(), StaticQuantConfig(), calibration=batches, example_input=batches[0][:1]
        ).int8_model
    path = tmp_path / "int8.onnx"
    export_int8_onnx(int8, batches[0][:1], path)
    inputs = calibration_batches(2, (16, 3, 16, 16))
    floor = ort_fusion_floor(path, inputs, threads=1)
    assert floor["samples"] == 32 and floor["swap"] == ORT_FUSION_SWAP
    x = torch.cat(inputs)
    with torch.no_grad():
        simulated = to_reference(int8)(x).numpy()
    run = {level: make_session(path, 1, optimization=level) for level in ("disabled", "all")}
    unfused, fused = (s.run(None, {"input": x.numpy()})[0] for s in run.values())
    # unfused: the exported QDQ math (float rounding of GELU/convs moves an output by at most 1 LSB)
    np.testing.assert_allclose(unfused, simulated, atol=2.5 * _output_scale(path))
    assert floor["max_abs_diff"] == pytest.approx(float(np.abs(fused - unfused).max()))
    assert floor["max_abs_diff"] < 0.05 * np.abs(simulated).max() and floor["agreement"] >= 0.9


def _output_scale(path) -> float:
    """Scale of the DequantizeLinear that writes the logits (one LSB of the output grid)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    values |= {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
    }
    (last,) = [
        n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == graph.output[0].name
    ]
    return float(values[last.input[1]])
