"""Parity of an exported ONNX model with the torch model it came from (INT8 torch vs INT8 ONNX)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from torch import nn

from qtoolkit.evaluate.metrics import agreement, max_abs_diff, predictions
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.ort import make_session, ort_runner
from qtoolkit.runtime.torch_runner import torch_runner


def check_parity(
    int8_model: nn.Module, onnx_path: str | os.PathLike[str], batches: Iterable[Any], threads: int = 2
) -> dict[str, float]:
    """Top-1 agreement and max |logit difference| between ``int8_model`` and the ONNX file.

    ``batches`` yields model inputs — a tensor, a tuple of tensors (positional inputs, in the ONNX
    model's input order) or a mapping of named tensors — or inputs with their label, ``(inputs,
    label)`` (see :func:`qtoolkit.runtime.batches.split_batch`). Returns ``agreement`` in [0, 1],
    ``max_abs_diff`` and ``samples``.
    """
    session = make_session(onnx_path, threads)
    runs = {"torch": torch_runner(int8_model), "onnx": ort_runner(session)}
    logits = collect_logits(
        runs, batches, arity=len(session.get_inputs()), desc="parity", progress=False
    ).logits
    expected, got = logits["torch"], logits["onnx"]
    return {
        "agreement": agreement(predictions(expected), predictions(got)),
        "max_abs_diff": max_abs_diff(expected, got),
        "samples": len(expected),
    }
