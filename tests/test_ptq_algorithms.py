"""Post-training algorithms: range observers, bias correction, equalization, learned rounding.

Each test plants the defect its algorithm removes and asserts the measured effect (tiny models).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from models_for_tests import calibration_batches
from onnx import numpy_helper
from torch import nn

from qtoolkit.errors import QtkError
from qtoolkit.export import export_int8_onnx
from qtoolkit.quantize import AdaRoundConfig, ObserverSpec, StaticQuantConfig, quantize
from qtoolkit.quantize.adaround import learn_rounding
from qtoolkit.quantize.algorithms import run_passes
from qtoolkit.quantize.qconfig import build_qconfig
from qtoolkit.quantize.static import quantize_static
from qtoolkit.runtime.ort import make_session


class DepthwiseBlock(nn.Module):
    """EfficientNet-lite's block in small: 1x1 expand + BN + ReLU6, pad, depthwise + BN + ReLU6, 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.bn1, self.act1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        self.pad = nn.ZeroPad2d(1)
        self.dw, self.bn2, self.act2 = nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        self.project = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.bn2(self.dw(self.pad(self.act1(self.bn1(self.expand(x)))))))
        return self.fc(self.project(y).mean(dim=(2, 3)))


def _config(observers: ObserverSpec | None = None, **kwargs: object) -> StaticQuantConfig:
    return StaticQuantConfig(observers=observers or ObserverSpec(reduce_range=False), mode="fx", **kwargs)


# --- range setting ------------------------------------------------------------------------------


def _error(observer_name: str, data: torch.Tensor, judged: torch.Tensor) -> tuple[float, float]:
    """(mean squared quantization error on ``judged``, top of the range) after observing ``data``."""
    observer = build_qconfig(ObserverSpec(activation=observer_name, reduce_range=False)).activation()
    observer(data)
    scale, zero_point = observer.calculate_qparams()
    quantized = torch.fake_quantize_per_tensor_affine(judged, float(scale), int(zero_point), 0, 255)
    return ((quantized - judged) ** 2).mean().item(), float(scale) * (255 - int(zero_point))


def test_percentile_clips_a_planted_outlier():
    bulk = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    data = torch.cat([bulk, torch.tensor([60.0])])
    minmax, minmax_top = _error("minmax", data, bulk)
    percentile, top = _error("percentile", data, bulk)
    assert minmax_top > 59 and top < 5.0
    assert percentile < 0.05 * minmax


def test_mse_range_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    data = torch.distributions.Laplace(0.0, 1.0).sample((100000,))
    minmax, minmax_top = _error("minmax", data, data)
    mse, top = _error("mse", data, data)
    histogram, _ = _error("histogram", data, data)  # torch's own L2 approximation
    assert top < 0.9 * minmax_top  # clipped near Banner et al.'s 8-bit optimum (9.9 b for Laplace b = 1)
    assert mse < 0.9 * minmax and mse < histogram


def test_mse_weight_ranges_clip_heavy_tailed_4_bit_channels():
    # 16 channels of Laplace weights: at 4 bits min-max spends the 16 levels on each channel's
    # extremes; the MSE search clips them, channel by channel, on the same symmetric grid
    weight = torch.distributions.Laplace(0.0, 0.05).sample((16, 288))
    errors, scales = {}, {}
    for scheme in ("per_channel", "mse_per_channel"):
        observer = build_qconfig(ObserverSpec(weight=scheme, weight_bits=4)).weight()
        observer(weight)
        scale, zero_point = observer.calculate_qparams()
        q = torch.fake_quantize_per_channel_affine(
            weight, scale.float(), zero_point.int(), 0, observer.quant_min, observer.quant_max
        )
        errors[scheme], scales[scheme] = ((q - weight) ** 2).sum(1), scale
    assert (errors["mse_per_channel"] <= errors["per_channel"] * 1.0001).all()  # never worse, per channel
    assert errors["mse_per_channel"].sum() < 0.8 * errors["per_channel"].sum()
    assert (scales["mse_per_channel"] < 0.9 * scales["per_channel"]).all()  # every channel clipped


@pytest.mark.parametrize("name", ["percentile", "mse"])
def test_exported_qdq_carries_the_observer_qparams(tmp_path, name):
    batches = calibration_batches()
    config = StaticQuantConfig(observers=ObserverSpec(activation=name, reduce_range=False), mode="fx")
    int8 = quantize(
        DepthwiseBlock().eval(), config, calibration=batches, example_input=batches[0][:1]
    ).int8_model
    path = tmp_path / "int8.onnx"
    export_int8_onnx(int8, batches[0][:1], path)
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    onnx_scales = {
        round(float(inits[n.input[1]]), 7)
        for n in graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        and inits.get(n.input[1], np.zeros(2)).size == 1
    }
    convs = [m for m in int8.modules() if type(m).__name__.startswith(("QuantizedConv", "Conv", "Linear"))]
    torch_scales = {round(float(m.scale), 7) for m in convs if hasattr(m, "scale")}
    assert len(torch_scales) >= 3 and torch_scales <= onnx_scales
    session = make_session(path, threads=1)
    x = batches[1]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = int8(x).numpy()
    lsb = float(int8.get_submodule("fc").scale)
    assert np.abs(got - expected).max() <= 2 * lsb * 1.01


def test_unknown_observer_is_refused_with_the_choices():
    with pytest.raises(QtkError, match="percentile"):
        ObserverSpec(activation="kl-ish")


# --- bias correction ----------------------------------------------------------------------------


class PlantedLinear(nn.Module):
    """A Linear whose weights all sit 0.4 steps above a grid point: rounding shifts every output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 4)
        step = 0.01
        with torch.no_grad():
            base = torch.randint(-20, 20, (4, 64), generator=torch.Generator().manual_seed(1)).float()
            self.fc.weight.copy_((base + 0.4) * step)
            self.fc.weight[:, 0] = 127 * step  # the per-channel scale is exactly `step`
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _mean_shift(config: StaticQuantConfig) -> torch.Tensor:
    model = PlantedLinear().eval()
    gen = torch.Generator().manual_seed(2)
    batches = [torch.rand(64, 64, generator=gen) for _ in range(4)]
    int8 = quantize_static(model, config, batches, batches[0][:1]).int8_model
    x = torch.rand(512, 64, generator=gen)
    with torch.no_grad():
        return (int8(x) - model(x)).mean(0)


def test_bias_correction_removes_a_planted_mean_shift():
    before = _mean_shift(_config()).abs()
    after = _mean_shift(_config(bias_correction=True)).abs()
    assert before.min() > 0.05  # 0.4 steps x 63 inputs x mean 0.5 ~ 0.13 per channel
    assert after.max() < 0.1 * before.min()


# --- cross-layer equalization -------------------------------------------------------------------


class Pair(nn.Module):
    def __init__(self, clamp: nn.Module) -> None:
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), clamp, nn.Conv2d(8, 6, 1)
        factors = torch.logspace(-2, 2, 8)  # planted: channel ranges spread 10^4
        with torch.no_grad():
            self.conv1.weight.mul_(factors.view(-1, 1, 1, 1))
            self.conv1.bias.mul_(factors)
            self.conv2.weight.div_(factors.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


def _spread(conv: nn.Conv2d) -> float:
    ranges = conv.weight.detach().abs().transpose(0, 1).flatten(1).amax(1)
    return (ranges.max() / ranges.min()).item()


@pytest.mark.parametrize("clamp", [nn.ReLU(), nn.ReLU6()])
def test_equalization_evens_out_planted_ranges_and_keeps_outputs(clamp):
    model = Pair(clamp).eval()
    batches = calibration_batches()
    config = _config(equalize=True)
    folded, context = run_passes(model, config, batches, build_qconfig(config.observers))
    assert context.log["equalize"] == ["conv1->conv2"]
    with torch.no_grad():
        for batch in batches:
            assert torch.allclose(folded(batch), model(batch), atol=1e-5, rtol=1e-5)
    if isinstance(clamp, nn.ReLU6):  # channels that reached the clamp keep their scale
        reached = (model.conv1(torch.cat(batches)).amax(dim=(0, 2, 3)) > 6).sum().item()
        assert 0 < reached < 8
        assert _spread(folded.conv2) < 0.5 * _spread(model.conv2)
    else:
        assert _spread(folded.conv2) < 1e-2 * _spread(model.conv2)


def test_equalization_of_a_depthwise_block_keeps_outputs():
    model = DepthwiseBlock().eval()
    batches = calibration_batches()
    config = _config(equalize=True)
    folded, context = run_passes(model, config, batches, build_qconfig(config.observers))
    assert context.log["equalize"] == ["expand->dw", "dw->project"]
    with torch.no_grad():
        assert torch.allclose(folded(batches[0]), model(batches[0]), atol=1e-5)


def test_algorithms_need_fx_mode():
    from models_for_tests import StubbedNet

    batches = calibration_batches()
    with pytest.raises(QtkError, match="mode: fx"):
        config = StaticQuantConfig(equalize=True)
        quantize_static(StubbedNet().eval(), config, batches, batches[0][:1])


# --- learned rounding ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_adaround_beats_nearest_rounding_on_the_layer_output(bits):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    # correlated inputs, as real activations are (with white inputs nearest rounding is optimal)
    mixed = torch.einsum("nchw,cd->ndhw", torch.randn(32, 3, 14, 14), torch.randn(3, 8))
    inputs = nn.functional.avg_pool2d(mixed, 3, 1) + 0.1 * torch.randn(32, 8, 12, 12)
    qconfig = build_qconfig(ObserverSpec(weight_bits=bits))
    observer = qconfig.weight()
    observer(conv.weight.detach())
    scale, _ = observer.calculate_qparams()
    qmin, qmax = observer.quant_min, observer.quant_max
    settings = AdaRoundConfig(iterations=200)
    learned = learn_rounding(
        conv, inputs, scale, qmin, qmax, settings, generator=torch.Generator().manual_seed(0)
    )
    s = scale.view(-1, 1, 1, 1)
    nearest = torch.clamp(torch.round(conv.weight.detach() / s), qmin, qmax)
    with torch.no_grad():
        target = conv(inputs)

        def error(q: torch.Tensor) -> float:
            return (conv._conv_forward(inputs, q * s, conv.bias) - target).pow(2).mean().item()

        assert learned.min() >= qmin and learned.max() <= qmax
        assert error(learned) < 0.8 * error(nearest)


def test_converted_int8_weights_are_the_learned_integers_and_runs_repeat():
    model = DepthwiseBlock().eval()
    batches = calibration_batches()
    config = _config(
        observers=ObserverSpec(reduce_range=False, weight_bits=4),
        adaround=AdaRoundConfig(iterations=40, samples=8, batch_size=4, seed=3),
    )
    _, context = run_passes(model, config, batches, build_qconfig(config.observers))
    assert set(context.learned) == {"expand", "dw", "project", "fc"}
    int8 = quantize_static(model, config, batches, batches[0][:1]).int8_model
    for name, learned in context.learned.items():
        weight = int8.get_submodule(name).weight()
        assert torch.equal(weight.int_repr(), learned), name
        assert torch.allclose(
            weight.q_per_channel_scales().float(), context.fixed_scales[name].double().float()
        )


def test_recipe_keys_reach_the_static_config(tmp_path):
    from qtoolkit.configs import static_config
    from qtoolkit.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\nquantize:\n  activation_observer: mse\n  mode: fx\n")
    keys = [
        "quantize.equalize=true",
        "quantize.bias_correction=true",
        "quantize.adaround={seconds: 5, seed: 2}",
    ]
    config = static_config(load_recipe(path, keys))
    assert config.observers.activation == "mse" and config.equalize and config.bias_correction
    assert config.adaround == AdaRoundConfig(seconds=5.0, seed=2)
    assert static_config(load_recipe(path)).adaround is None
    with pytest.raises(QtkError, match="adaround"):
        static_config(load_recipe(path, ["quantize.adaround={seconds: 0}"]))
