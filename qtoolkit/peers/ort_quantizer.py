"""onnxruntime's own quantizer, the peer qtoolkit is measured against.

:func:`ort_quantize_static` runs ``quant_pre_process`` then ``quantize_static`` (QDQ, u8 activations,
s8 weights) and feeds ORT's calibrator one batch at a time (see :func:`_chunked_calibrator`);
:func:`ort_quantize_dynamic` is ``quantize_dynamic`` with s8 weights by default.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qtoolkit.errors import QtkError

# calibration method name -> onnxruntime CalibrationMethod attribute
ORT_CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

Feed = dict[str, np.ndarray]


def _feeds(batches: Iterable[Any], input_name: str | None) -> list[Feed]:
    """Each batch as an ORT feed: a mapping of named arrays as is, a bare array under ``input_name``."""
    feeds = []
    for batch in batches:
        if isinstance(batch, Mapping):
            feeds.append({name: np.asarray(value) for name, value in batch.items()})
        elif input_name is None:
            raise QtkError("calibration batches are bare arrays; pass input_name (the model's input).")
        else:
            feeds.append({input_name: np.asarray(batch)})
    if not feeds:
        raise QtkError("no calibration batches for onnxruntime's quantize_static; pass at least one.")
    return feeds


def _reader(feeds: Iterable[Feed]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self, items: Iterable[Feed]) -> None:
            self.items: Iterator[Feed] = iter(items)

        def get_next(self) -> Feed | None:
            return next(self.items, None)

    return Reader(feeds)


class _DropPerChannelAxisWarnings(logging.Filter):
    """onnxruntime's quantizer logs "Axis 1 is out-of-range for weight ..." (root logger) for every
    rank-1 weight it tries per channel, LayerNorm scales: hundreds of identical lines per ViT."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


@contextlib.contextmanager
def _quiet_axis_warnings() -> Iterator[None]:
    root, drop = logging.getLogger(), _DropPerChannelAxisWarnings()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def _chunked_calibrator() -> Iterator[None]:
    """Make ORT's calibrator collect one batch per ``collect_data`` call while the context is open.

    onnxruntime keeps every activation of every calibration batch before reducing them (gigabytes
    for a 260x260 mobile net); one batch per call keeps one batch at a time: min/max merge exactly
    across calls, histograms merge (re-binned when a later batch widens the range). The patch is on
    the ``onnxruntime.quantization.quantize`` module (not the function that package re-exports by
    that name) and is undone on exit.
    """
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    create = ort_quantize.create_calibrator

    def create_chunked(*args: Any, **kwargs: Any) -> Any:
        calibrator = create(*args, **kwargs)
        collect = calibrator.collect_data

        def collect_per_batch(reader: Any) -> None:
            while (item := reader.get_next()) is not None:
                collect(_reader([item]))

        calibrator.collect_data = collect_per_batch
        return calibrator

    ort_quantize.create_calibrator = create_chunked
    try:
        yield
    finally:
        ort_quantize.create_calibrator = create


def ort_quantize_static(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    batches: Iterable[Any],
    input_name: str | None,
    method: str = "minmax",
    per_channel: bool = True,
) -> Path:
    """onnxruntime's ``quantize_static`` (QDQ, u8 activations, s8 weights) of ``fp32_path``, calibrated
    with ``method`` (minmax | entropy | percentile) on ``batches`` (arrays fed as ``input_name``, or
    mappings of named arrays for models with several inputs). Returns ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in ORT_CALIBRATION_METHODS:
        raise QtkError(
            f"unknown ORT calibration method {method!r}; choose from {', '.join(ORT_CALIBRATION_METHODS)}"
        )
    feeds = _feeds(batches, input_name)
    out = Path(out_path)
    prepared = out.with_name(f"{out.stem}_preprocessed.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    try:
        with _chunked_calibrator(), _quiet_axis_warnings():
            quantize_static(
                str(prepared),
                str(out),
                _reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION_METHODS[method]),
            )
    finally:
        prepared.unlink(missing_ok=True)
    return out


def ort_quantize_dynamic(
    fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], **options: Any
) -> Path:
    """onnxruntime's ``quantize_dynamic`` of ``fp32_path`` (s8 weights unless ``weight_type`` is
    given; every other keyword goes to ORT unchanged). Returns ``out_path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options.setdefault("weight_type", QuantType.QInt8)
    quantize_dynamic(str(fp32_path), str(out_path), **options)
    return Path(out_path)
