"""Models users bring in other shapes, through the public API.

Several inputs (an image and a feature vector): calibration batches carry the inputs as a tuple
(then the label) or a dict, the export has one ONNX input per forward parameter, and the ONNX model
computes what torch's INT8 model computes. Half-precision weights: a float32 copy is quantized."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import qtoolkit as qtk
from qtoolkit.evaluate.graph_quality import optimized_op_counts
from qtoolkit.runtime.ort import make_session


class ImageAndFeatures(nn.Module):
    """A conv branch for the image, an MLP for tabular features, a joint head (late fusion)."""

    def __init__(self) -> None:
        super().__init__()
        self.image_branch = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.feature_branch = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.image_branch(image), self.feature_branch(features)], dim=1))


def _data(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, 12, 12, generator=generator), torch.randn(8, 5, generator=generator),
         torch.randint(0, 4, (8,), generator=generator))
        for _ in range(count)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = ImageAndFeatures().eval()
    with torch.no_grad():  # BN statistics that are not the identity, so folding is exercised
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return net


def _no_float_compute(path) -> dict[str, int]:
    counts = optimized_op_counts(path)
    assert counts.get("QLinearConv", 0) == 2, counts
    assert not {"Conv", "Gemm", "MatMul"} & set(counts), counts  # every conv/linear in integer kernels
    return counts


def test_tuple_inputs_quantize_export_and_match_torch_int8(tmp_path, model) -> None:
    calibration, held_out = _data(4, seed=1), _data(4, seed=2)
    example = calibration[0][0][:1], calibration[0][1][:1]
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=calibration, example_input=example
    )
    assert quantized.details["calibration_batches"] == 4
    qtk.export_int8_onnx(quantized, example, tmp_path / "int8.onnx")
    onnx.checker.check_model(str(tmp_path / "int8.onnx"), full_check=True)

    session = make_session(tmp_path / "int8.onnx", threads=1)
    assert [i.name for i in session.get_inputs()] == ["image", "features"]
    image, features, _ = held_out[0]
    (logits,) = session.run(None, {"image": image[:3].numpy(), "features": features[:3].numpy()})
    assert logits.shape == (3, 4)  # batch axis dynamic on both inputs

    parity = qtk.check_parity(quantized, tmp_path / "int8.onnx", held_out)
    assert parity["samples"] == 32
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 0.05, parity
    _no_float_compute(tmp_path / "int8.onnx")


def test_dict_inputs_quantize_export_and_match_torch_int8(tmp_path, model) -> None:
    def named(batches):
        return [({"image": i, "features": f}, y) for i, f, y in batches]

    calibration, held_out = named(_data(4, seed=1)), named(_data(4, seed=2))
    example = {name: value[:1] for name, value in calibration[0][0].items()}
    quantized = qtk.quantize_model(
        model, qtk.StaticQuantConfig(), calibration=calibration, example_input=example
    )
    qtk.export_int8_onnx(quantized, example, tmp_path / "int8.onnx")
    session = make_session(tmp_path / "int8.onnx", threads=1)
    assert sorted(i.name for i in session.get_inputs()) == ["features", "image"]
    parity = qtk.check_parity(quantized, tmp_path / "int8.onnx", held_out)
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 0.05, parity
    _no_float_compute(tmp_path / "int8.onnx")


def test_calibration_algorithms_run_on_several_inputs(tmp_path, model) -> None:
    """Equalization, learned rounding and bias correction drive the model with the batches' tuples."""
    from qtoolkit.quantize.adaround import AdaRoundConfig

    calibration = _data(4, seed=1)
    example = calibration[0][0][:1], calibration[0][1][:1]
    adaround = AdaRoundConfig(iterations=20, samples=12, batch_size=4)  # 12 rows: one and a half batches
    config = qtk.StaticQuantConfig(equalize=True, bias_correction=True, adaround=adaround)
    quantized = qtk.quantize_model(model, config, calibration=calibration, example_input=example)
    plain = qtk.quantize_model(model, qtk.StaticQuantConfig(), calibration=calibration, example_input=example)
    with torch.no_grad():
        moved = [
            (a.bias() - b.bias()).abs().max().item()
            for a, b in zip(quantized.int8_model.modules(), plain.int8_model.modules(), strict=True)
            if callable(getattr(a, "bias", None)) and a.bias() is not None
        ]
    assert max(moved) > 0  # bias correction changed a bias (it measured the model on the tuples)
    assert set(quantized.details["algorithms"]["adaround"]) >= {"head", "feature_branch.0"}
    qtk.export_int8_onnx(quantized, example, tmp_path / "int8.onnx")
    parity = qtk.check_parity(quantized, tmp_path / "int8.onnx", _data(2, seed=3))
    assert parity["agreement"] == 1.0, parity


def test_eager_mode_refuses_several_inputs_in_one_line(model) -> None:
    calibration = _data(1, seed=1)
    example = calibration[0][0][:1], calibration[0][1][:1]
    with pytest.raises(qtk.QtkError, match=r"eager mode .* takes one tensor input; set mode: fx") as caught:
        qtk.quantize_model(
            model, qtk.StaticQuantConfig(mode="eager"), calibration=calibration, example_input=example
        )
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_half_precision_model_quantizes_a_float32_copy(tmp_path, model, dtype, method) -> None:
    """A model kept in bf16/fp16 (loaded that way for inference) quantizes from its float32 values,
    with one warning; half-precision calibration and example inputs are cast alike; the user's model
    keeps its dtype."""
    import copy

    half = copy.deepcopy(model).to(dtype)
    calibration = [(i.to(dtype), f.to(dtype), y) for i, f, y in _data(2, seed=1)]
    example = calibration[0][0][:1], calibration[0][1][:1]
    config, inputs = (
        (qtk.StaticQuantConfig(), {"calibration": calibration, "example_input": example})
        if method == "static"
        else (qtk.DynamicQuantConfig(), {})
    )
    with pytest.warns(
        UserWarning, match=f"weights are {str(dtype).removeprefix('torch.')}: quantizing a float32"
    ):
        quantized = qtk.quantize_model(half, config, **inputs)
    assert next(half.parameters()).dtype == dtype  # the user's model is untouched
    qtk.export_int8_onnx(quantized, example, tmp_path / "int8.onnx")
    session = make_session(tmp_path / "int8.onnx", threads=1)
    assert {i.type for i in session.get_inputs()} == {"tensor(float)"}
    held_out = [(i.to(dtype), f.to(dtype), y) for i, f, y in _data(2, seed=2)]
    parity = qtk.check_parity(quantized, tmp_path / "int8.onnx", held_out)
    assert parity["agreement"] == 1.0, parity
