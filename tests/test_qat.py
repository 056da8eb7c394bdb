"""QAT: qconfig ranges, fusion/prepare, autocast, freeze schedule, 4-bit convert, resume, FX, GPU check."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.ao.nn.intrinsic.qat import ConvBnReLU2d
from torch.ao.quantization import FakeQuantize, FusedMovingAvgObsFakeQuantize, fuse_modules_qat
from torch.utils.data import TensorDataset

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.accuracy import evaluate_accuracy
from qtoolkit.quantize import base as base_module
from qtoolkit.quantize.fake_quant import qat_qconfig, quant_ranges
from qtoolkit.quantize.qat import QATConfig, QATSchedule, convert_qat_model, prepare_qat_model, run_qat
from qtoolkit.quantize.qconfig import ObserverSpec, build_qconfig
from qtoolkit.train import Callback, TrainConfig, fit

REPO = Path(__file__).resolve().parents[1]


class TinyQ(nn.Module):
    """Quantizable eager-mode CNN (QuantStub/DeQuantStub + fuse_model), like torchvision's."""

    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = (
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool, self.flat, self.fc = nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(self.quant(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.dequant(self.fc(self.flat(self.pool(x))))

    def fuse_model(self, is_qat: bool = False) -> None:
        fuse = fuse_modules_qat if is_qat else torch.ao.quantization.fuse_modules
        fuse(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]], inplace=True)


def _data(n: int = 384) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(
        x, (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + (x.mean((1, 2, 3)) > 0.1)
    )


def _fp32(epochs: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = TinyQ()
    fit(model, _data(), TrainConfig(epochs=epochs, batch_size=32, lr=0.05), progress=False)
    return model


@pytest.fixture(scope="module")
def fp32_model() -> nn.Module:
    return _fp32()


def test_quant_ranges() -> None:
    r = quant_ranges(4, 8, reduce_range=False)
    assert (r.weight_min, r.weight_max, r.act_min, r.act_max) == (-8, 7, 0, 255)
    r = quant_ranges(8, 8, reduce_range=True)  # 8-bit weights: the narrow grid PTQ uses too
    assert (r.weight_min, r.weight_max, r.act_min, r.act_max) == (-127, 127, 0, 127)
    r = quant_ranges(8, 8, reduce_range=False, narrow_range=False)
    assert (r.weight_min, r.weight_max) == (-128, 127)
    with pytest.raises(QtkError, match="weight_bits"):
        quant_ranges(9, 8, False)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_qat_qconfig_is_plain_fake_quant_with_consistent_ranges(reduce_range: bool) -> None:
    qconfig = qat_qconfig(4, 8, reduce_range=reduce_range)
    act, weight = qconfig.activation(), qconfig.weight()
    for fq in (act, weight):
        assert type(fq) is FakeQuantize and not isinstance(fq, FusedMovingAvgObsFakeQuantize)
        # the observer must compute qparams on the same range the fake-quant op clamps to
        assert (fq.activation_post_process.quant_min, fq.activation_post_process.quant_max) == (
            fq.quant_min,
            fq.quant_max,
        )
    assert (weight.quant_min, weight.quant_max, weight.qscheme) == (-8, 7, torch.per_channel_symmetric)
    assert (act.quant_min, act.quant_max) == (0, 127 if reduce_range else 255)
    ptq = build_qconfig(ObserverSpec(weight_bits=4, reduce_range=reduce_range)).weight()  # PTQ: same range
    assert (ptq.quant_min, ptq.quant_max) == (-8, 7)


@pytest.mark.parametrize("bits", [8, 4])
def test_qat_and_ptq_share_one_weight_grid(bits: int) -> None:
    qat = QATConfig(weight_bits=bits, reduce_range=False).qconfig().weight()
    ptq = build_qconfig(ObserverSpec(weight_bits=bits, reduce_range=False)).weight()
    assert (qat.quant_min, qat.quant_max) == (ptq.quant_min, ptq.quant_max)
    assert (qat.quant_min, qat.quant_max) == ((-127, 127) if bits == 8 else (-8, 7))


@pytest.mark.parametrize("narrow", [True, False])
def test_narrow_grid_lets_every_weight_learn(narrow: bool) -> None:
    """Straight-through fake-quant passes no gradient outside [q_min, q_max]: on the wide 8-bit grid
    (scale max|w| / 127.5) each channel's largest positive weight lands on 127.5 and stops learning."""
    fake_quant = qat_qconfig(8, 8, reduce_range=False, narrow_range=narrow).weight()
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)).requires_grad_()
    fake_quant(weight).sum().backward()
    frozen = int((weight.grad == 0).sum())
    positive_max_channels = int((weight.detach().amax(1) >= -weight.detach().amin(1)).sum())
    if narrow:
        assert frozen == 0
    else:  # 127.5 rounds to 128 unless float division lands just below it
        assert 0 < frozen <= positive_max_channels, (frozen, positive_max_channels)


def test_reduce_range_default_follows_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_module, "cpu_has_vnni", lambda: True)
    assert QATConfig().resolved_reduce_range() is False
    assert QATConfig().qconfig().activation().quant_max == 255
    monkeypatch.setattr(base_module, "cpu_has_vnni", lambda: False)
    assert QATConfig().resolved_reduce_range() is True
    assert QATConfig().qconfig().activation().quant_max == 127
    assert QATConfig(reduce_range=False).resolved_reduce_range() is False


def test_prepare_torchvision_resnet18_fuses_and_leaves_original() -> None:
    model = torchvision.models.quantization.resnet18(weights=None, quantize=False, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    prepared = prepare_qat_model(model, QATConfig(weight_bits=4))
    assert isinstance(prepared.conv1, ConvBnReLU2d) and isinstance(prepared.layer1[0].conv1, ConvBnReLU2d)
    assert prepared.conv1.weight_fake_quant.quant_min == -8
    assert isinstance(model.conv1, nn.Conv2d) and not hasattr(model.conv1, "weight_fake_quant")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = prepared(torch.randn(2, 1, 28, 28))
    out.float().sum().backward()
    assert prepared.conv1.weight.grad is not None


def test_eager_model_without_fuse_model_is_refused() -> None:
    with pytest.raises(QtkError, match="fuse_model"):
        prepare_qat_model(nn.Sequential(nn.Conv2d(1, 2, 3)), QATConfig())


@pytest.mark.parametrize("precision", ["none", "bf16", "fp16"])
def test_qat_under_autocast_learns_and_converts(precision: str, fp32_model: nn.Module) -> None:
    data = _data()
    fp32_top1 = evaluate_accuracy(fp32_model, data, progress=False)
    config = QATConfig(freeze_bn_epoch=1, freeze_observers_epoch=1, reduce_range=False)
    train = TrainConfig(epochs=2, batch_size=32, lr=0.01, precision=precision)
    result = run_qat(fp32_model, data, config, train, progress=False)
    assert result.train.global_step == 24
    int8_top1 = evaluate_accuracy(result.quantized, data, progress=False)
    assert int8_top1 >= fp32_top1 - 0.05, (fp32_top1, int8_top1)
    assert result.quantized.conv1._get_name() == "QuantizedConvReLU2d"


def test_four_bit_weights_after_convert(fp32_model: nn.Module) -> None:
    config = QATConfig(weight_bits=4, freeze_observers_epoch=2, reduce_range=False)
    result = run_qat(
        fp32_model, _data(), config, TrainConfig(epochs=3, batch_size=32, lr=0.01), progress=False
    )
    for name in ("conv1", "conv2", "fc"):
        ints = getattr(result.quantized, name).weight().int_repr()
        assert ints.dtype == torch.int8 and int(ints.min()) >= -8 and int(ints.max()) <= 7
        assert len(torch.unique(ints)) > 8  # really uses the 4-bit grid, not a handful of values
        assert int(ints.abs().max()) >= 7  # symmetric scale maps max |w| to the end of the range
    assert evaluate_accuracy(result.quantized, _data(), progress=False) > 0.7


class _Probe(Callback):
    """Records an activation scale and a BN running mean at each epoch start."""

    def __init__(self) -> None:
        self.scales: list[float] = []
        self.bn_means: list[torch.Tensor] = []

    def on_epoch_start(self, epoch, model):
        self.scales.append(float(model.conv1.activation_post_process.scale))
        self.bn_means.append(model.conv2.bn.running_mean.clone())


def test_schedule_freezes_observers_and_bn_from_their_epochs(fp32_model: nn.Module) -> None:
    config = QATConfig(freeze_bn_epoch=1, freeze_observers_epoch=2, reduce_range=False)
    probe = _Probe()
    result = run_qat(
        fp32_model,
        _data(),
        config,
        TrainConfig(epochs=4, batch_size=32, lr=0.01),
        callbacks=(probe,),
        progress=False,
    )
    model = result.qat_model
    final_scale = float(model.conv1.activation_post_process.scale)
    assert probe.scales[1] != probe.scales[2]  # observers still moving in epoch 1
    assert probe.scales[2] == probe.scales[3] == final_scale  # frozen from epoch 2 on
    assert not torch.equal(probe.bn_means[0], probe.bn_means[1])  # BN stats updated in epoch 0
    assert torch.equal(probe.bn_means[1], probe.bn_means[3])  # frozen from epoch 1 on
    assert torch.equal(model.conv2.bn.running_mean, probe.bn_means[1])
    assert model.conv2.freeze_bn and all(
        int(m.observer_enabled) == 0 for m in model.modules() if isinstance(m, FakeQuantize)
    )


def test_step_schedule_is_reapplied_on_resume(fp32_model: nn.Module, tmp_path: Path) -> None:
    config = QATConfig(freeze_bn_step=5, freeze_observers_step=8, reduce_range=False)
    train = TrainConfig(epochs=2, batch_size=32, lr=0.01, checkpoint_every_steps=10)

    class Crash(Callback):
        def on_step_end(self, step, model, loss):
            if step == 13:
                raise KeyboardInterrupt

    reference = run_qat(fp32_model, _data(), config, train, progress=False).qat_model
    with pytest.raises(KeyboardInterrupt):
        run_qat(
            fp32_model, _data(), config, train, checkpoint_dir=tmp_path, callbacks=(Crash(),), progress=False
        )
    resumed = run_qat(
        fp32_model, _data(), config, train, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    assert resumed.train.resumed_from is not None and resumed.qat_model.conv1.freeze_bn
    assert _digest(resumed.qat_model) == _digest(reference)


def _digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_fx_mode_on_unmodified_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    config = QATConfig(weight_bits=4, mode="fx", reduce_range=False)
    with pytest.raises(QtkError, match="example_inputs"):
        prepare_qat_model(model, config)
    result = run_qat(
        model,
        _data(),
        config,
        TrainConfig(epochs=1, batch_size=32, lr=0.01, precision="bf16"),
        example_inputs=(torch.randn(2, 1, 8, 8),),
        progress=False,
    )
    assert "quantize_per_tensor" in result.quantized.code
    fp_out = result.qat_model.eval()(torch.randn(4, 1, 8, 8))
    assert convert_qat_model(result.qat_model, config)(torch.randn(4, 1, 8, 8)).shape == fp_out.shape


def test_qat_schedule_is_idempotent() -> None:
    model = prepare_qat_model(TinyQ(), QATConfig(reduce_range=False))
    schedule = QATSchedule(QATConfig(freeze_observers_step=0))
    schedule.on_step_start(0, model)
    schedule.on_step_start(1, model)
    assert all(int(m.observer_enabled) == 0 for m in model.modules() if isinstance(m, FakeQuantize))
    assert not model.conv1.freeze_bn


@pytest.mark.slow  # ~15-60 s: builds ResNet-50 three times
def test_gpu_check_cpu_smoke() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "bench" / "gpu_qat_check.py"), "--device", "cpu"]
    cmd += ["--batch-size", "2", "--steps", "2", "--image-size", "64"]
    cmd += ["--modes", "fp32,bf16_adamw,qat_bf16_adamw8bit"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)["results"]
    assert set(results) == {"fp32", "bf16_adamw", "qat_bf16_adamw8bit"}
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "[lowmem]" in results.pop("qat_bf16_adamw8bit")["skipped"]
    else:  # ResNet-50: fp32 AdamW moments vs 8-bit ones (QAT folds BN into the convs: a few fewer tensors)
        assert (
            results["bf16_adamw"]["optimizer_state_mib"]
            > 3.5 * results["qat_bf16_adamw8bit"]["optimizer_state_mib"]
        )
    assert all(r["img_per_s"] > 0 and r["timed_steps"] == 1 for r in results.values())


def test_gpu_check_without_cuda_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_qat_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "CUDA is not available" in done.stderr and not done.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_qat_on_cuda(precision: str, fp32_model: nn.Module) -> None:
    config = QATConfig(freeze_bn_epoch=1, reduce_range=False)
    train = TrainConfig(
        epochs=2, batch_size=32, lr=0.01, precision=precision, device="cuda", channels_last=True
    )
    result = run_qat(fp32_model, _data(), config, train, progress=False)
    assert next(result.qat_model.parameters()).is_cuda
    assert evaluate_accuracy(result.quantized, _data(), progress=False) > 0.7
