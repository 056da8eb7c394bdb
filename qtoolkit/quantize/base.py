"""The one vocabulary of quantization configs: a frozen base every method's config extends.

Every config is a frozen dataclass validated when it is built (a bad value fails at
``StaticQuantConfig(...)``, not deep inside calibration), and the same thing has the same name in
every config: ``backend`` is torch's quantized engine, ``weight_bits`` / ``reduce_range`` /
``narrow_range`` mean the same in PTQ and QAT. Each config class names its method (the recipe's
``quantize.method``) and the ONNX form its INT8 model exports to; the method registry
(:mod:`qtoolkit.quantize.api`) keys handlers by that name.

The weight grid, shared by PTQ (``qconfig.py``) and QAT (``fake_quant.py``): symmetric, z = 0,

    q = clamp(round(w / s), q_min, q_max),   s = max|w| / ((q_max - q_min) / 2)

with [q_min, q_max] = [-(2^(b-1) - 1), 2^(b-1) - 1] ("narrow") at 8 bits and [-2^(b-1), 2^(b-1) - 1]
below 8 bits (4 bits: -8..7), stored as qint8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from qtoolkit.errors import QtkError
from qtoolkit.report.environment import cpu_has_vnni

BACKENDS = ("x86", "fbgemm", "qnnpack")
MODES = ("auto", "eager", "fx")  # auto: eager when the model carries QuantStubs, else FX


def weight_range(bits: int, narrow: bool = False) -> tuple[int, int]:
    """[qmin, qmax] of ``bits``-bit signed weights; ``narrow`` drops -2^(b-1) (symmetric grid)."""
    return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1


def weight_grid(bits: int, narrow_range: bool | None = None) -> tuple[int, int]:
    """The weight grid of PTQ *and* QAT: narrow at 8 bits unless ``narrow_range`` says otherwise.

    One grid for both, on purpose: the two methods end in the same converted torch modules, the same
    QDQ export and the same integer kernels, so what makes the narrow grid right for PTQ holds for QAT.
    With [-128, 127] and s = max|w| / 127.5 each channel's largest positive weight lands on 127.5 and
    is clipped (PTQ: measured on EfficientNet-lite2, agreement with FP32 85.5% -> 90.2% with the
    narrow grid, see qconfig.py), and u8·s8 products with -128 can saturate the int16 pair sums of
    ``vpmaddubsw`` on CPUs without VNNI. In QAT the clipping is worse than an error: fake-quant's
    straight-through gradient is zero outside [q_min, q_max], so that weight of every channel stops
    learning (tests/test_qat.py::test_narrow_grid_lets_every_weight_learn). [-127, 127] (s = max|w| /
    127, onnxruntime's and TF-lite's choice) has none of these problems. Below 8 bits one level is a
    large share of the grid, so the full range is kept there (PTQ and QAT alike, as before).
    """
    if not 2 <= bits <= 8:
        raise QtkError(f"weight_bits must be between 2 and 8, not {bits} (weights are stored as qint8)")
    return weight_range(bits, bits == 8 if narrow_range is None else narrow_range)


def resolve_reduce_range(reduce_range: bool | None) -> bool:
    """``None`` -> 7-bit activations only on CPUs without VNNI (their u8·s8 int16 pair sums saturate)."""
    return (not cpu_has_vnni()) if reduce_range is None else reduce_range


def set_backend(backend: str) -> None:
    """Select torch's quantized engine (kernels used by the converted INT8 model)."""
    check_backend(backend)
    if backend not in torch.backends.quantized.supported_engines:
        raise QtkError(
            f"torch's quantized engine {backend!r} is not available here "
            f"(available: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    torch.backends.quantized.engine = backend


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise QtkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def check_choice(owner: str, key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise QtkError(f"{owner}.{key} must be one of {', '.join(map(str, choices))}, not {value!r}")


@dataclass(frozen=True)
class QuantConfig:
    """Base of the quantization configs: ``backend`` plus validation on construction.

    Subclasses set ``method`` (the name in the method registry and in recipes), ``export_format``
    (``qdq`` or ``dynamic``: how :func:`qtoolkit.export.export_int8_onnx` writes their INT8 model) and
    override :meth:`validate`. ``RENAMED`` maps an old keyword to its new name: passing the old one
    raises a :class:`QtkError` that names both.
    """

    method: ClassVar[str] = ""
    export_format: ClassVar[str] = "qdq"
    RENAMED: ClassVar[dict[str, str]] = {}

    backend: str = "x86"  # torch.backends.quantized.engine for the INT8 kernels

    def __new__(cls, *args: Any, **kwargs: Any) -> QuantConfig:
        for old, new in cls.RENAMED.items():
            if old in kwargs:
                raise QtkError(f"{cls.__name__}: '{old}' is now called '{new}'; pass {new}={kwargs[old]!r}")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # list -> tuple: frozen configs hold immutable values
            if isinstance(getattr(self, item.name), list):
                object.__setattr__(self, item.name, tuple(getattr(self, item.name)))
        check_backend(self.backend)
        self.validate()

    def validate(self) -> None:
        """Raise QtkError naming the first bad field (called on construction)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
