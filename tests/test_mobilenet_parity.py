"""torchvision's quantizable mobilenet_v2 / mobilenet_v3_large (random weights): static PTQ + INT8 ONNX
export must keep parity with torch's own INT8 model (top-1 agreement >= 99%)."""

from __future__ import annotations

import pytest
import torch

from qtoolkit.evaluate.parity import check_parity
from qtoolkit.export import export_int8_onnx
from qtoolkit.models import create_model
from qtoolkit.peers.image_bench import randomise_batchnorm
from qtoolkit.quantize import ObserverSpec, StaticQuantConfig, quantize


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large"])
def test_mobilenet_int8_onnx_parity(name, tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_model(name).eval()
    randomise_batchnorm(model)
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(4, 3, 96, 96, generator=generator) for _ in range(2)]
    held_out = [torch.randn(16, 3, 96, 96, generator=generator) for _ in range(4)]
    config = StaticQuantConfig(observers=ObserverSpec(activation="histogram", reduce_range=False))
    quantized = quantize(model, config, calibration=calibration, example_input=calibration[0][:1])
    assert quantized.details["mode"] == "eager"
    path = tmp_path / f"{name}_int8.onnx"
    export_int8_onnx(quantized.int8_model, calibration[0][:1], path)
    parity = check_parity(quantized.int8_model, path, held_out)
    with torch.no_grad():
        scale = float(quantized.int8_model(held_out[0]).abs().max())
    assert parity["samples"] == 64
    assert parity["agreement"] >= 0.99, parity
    assert parity["max_abs_diff"] <= 0.1 * scale, (parity, scale)
