"""Recipes are data: a YAML file mapped onto typed dataclasses, every key checked.

An unknown key or a value of the wrong type is refused with one line naming the key and the file.
``--set section.key=value`` overrides (value parsed as YAML) apply before validation.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qtoolkit.errors import QtkError

# A float written without a dot (1e-5), which YAML 1.1 loads as a string.
_SCIENTIFIC = re.compile(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+")


@dataclass
class ModelSection:
    name: str = "resnet18"
    num_classes: int = 10
    in_channels: int = 3
    weights: str = "train"  # train | torchvision | path to a state_dict checkpoint
    path: str | None = None  # Hugging Face directory for text models (lstm-text/gru-text: its tokenizer)
    options: dict[str, Any] = field(default_factory=dict)  # builder options (lstm-text: hidden_size, ...)


@dataclass
class DataSection:
    name: str = "fashion-mnist"  # fashion-mnist | image-folder | rotten-tomatoes | text-file
    root: str | None = None
    image_size: int = 224
    train_limit: int | None = None  # first N training samples (reduced budgets, tests)
    test_limit: int | None = None  # first N test samples (reduced budgets, tests)
    # validation samples for qtk tune, disjoint from calibration and test (None: the task's default,
    # 2000 train images outside calibration; 256 photo crops of another stream)
    val_size: int | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = 128


@dataclass
class TrainSection:
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    batch_size: int = 128
    device: str = "auto"
    precision: str = "none"
    channels_last: bool = False
    grad_clip: float | None = None
    seed: int = 0


@dataclass
class CalibrationSection:
    size: int = 512
    batch_size: int = 64
    seed: int = 0


@dataclass
class QATSection:
    """Fine-tuning settings for quantize.method: qat (other training keys come from ``train``)."""

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 0.001
    optimizer: str | None = None  # None: train.optimizer (sgd | adamw | adamw8bit)
    freeze_observers_after_epoch: int | None = None
    freeze_bn_after_epoch: int | None = None
    freeze_observers_after_step: int | None = None
    freeze_bn_after_step: int | None = None
    precision: str = "none"  # none | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    device: str = "auto"


@dataclass
class AdaRoundSection:
    """quantize.adaround: learned rounding (qtoolkit.quantize.adaround.AdaRoundConfig, key for key)."""

    iterations: int = 300
    seconds: float = 900.0
    samples: int = 32
    batch_size: int = 8
    lr: float = 0.05
    reg_weight: float = 1.0
    warmup: float = 0.2
    seed: int = 0


@dataclass
class QuantizeSection:
    method: str = "static"  # static | dynamic | qat
    backend: str = "x86"
    mode: str = "auto"
    activation_observer: str = "histogram"
    weight_observer: str = "per_channel"
    weight_bits: int = 8
    reduce_range: bool | None = None
    skip_modules: list[str] = field(default_factory=list)
    embeddings: bool = True  # dynamic: also quantize embedding tables (weight-only, uint8 per row)
    smoothing: float | None = None  # dynamic: SmoothQuant alpha in [0, 1] (quantize/smoothing.py); None: off
    equalize: bool = False  # static FX: cross-layer equalization (quantize/equalization.py)
    bias_correction: bool = False  # static FX: empirical bias correction (quantize/bias_correction.py)
    adaround: AdaRoundSection | None = None  # static FX: learned rounding; {} for the defaults
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    qat: QATSection = field(default_factory=QATSection)


@dataclass
class ExportSection:
    opset: int = 21


@dataclass
class EvaluateSection:
    tolerance_pp: float = 0.5
    min_agreement: float = 0.995
    parity_noise_factor: float = (
        2.0  # parity limit relaxes to 1 − factor · (torch INT8 kernel-swap disagreement)
    )
    threads: int = 2
    batch_size: int = 256
    latency_batch_size: int = 1
    warmup: int = 10
    repeats: int = 50
    # ONNX runtimes to evaluate the exported files on (qtoolkit.runtime.onnx_runtimes.RUNTIMES); every
    # one is held to the accuracy and parity checks. openvino needs pip install -e ".[openvino]".
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime"])
    strict_fp32: bool = False  # forbid a runtime to run float ops below FP32 (OpenVINO bf16 on AMX)
    runtime_batch_sizes: list[int] = field(default_factory=lambda: [1, 8])  # interleaved latency per runtime
    latency_rounds: int = 3


@dataclass
class Recipe:
    name: str
    task: str = "image-classification"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    export: ExportSection = field(default_factory=ExportSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    source: str = ""  # file it came from (not a recipe key)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key, source)
            except QtkError as error:
                errors.append(error)
        raise errors[0]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise QtkError(
                f"{source}: key '{key}' must be a mapping of names, got {type(value).__name__} {value!r}"
            )
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise QtkError(f"{source}: key '{key}' must be a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(item, item_type, f"{key}[{i}]", source) for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; it means a number here
    if tp is int and isinstance(value, bool):
        raise QtkError(f"{source}: key '{key}' must be int, got bool {value!r}")
    if not isinstance(value, tp):
        raise QtkError(
            f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        where = f"section '{prefix}'" if prefix else "the recipe"
        raise QtkError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise QtkError(f"{source}: unknown key '{dotted}'; allowed here: {', '.join(sorted(names))}")
        kwargs[key] = _convert(value, hints[key], dotted, source)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required key is missing
        raise QtkError(f"{source}: {error}") from error


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise QtkError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    node = data
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise QtkError(f"override {assignment!r}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate the recipe at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise QtkError(f"recipe {path} does not exist; see recipes/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise QtkError(f"{path}: not valid YAML ({' '.join(str(error).split())[:160]})") from error
    if not isinstance(data, dict):
        raise QtkError(f"{path}: a recipe must be a mapping of sections")
    for assignment in overrides:
        _apply_override(data, assignment)
    recipe = _build(Recipe, data, "", str(path))
    recipe.source = str(path)
    return recipe
