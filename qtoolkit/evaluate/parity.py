"""Parity of an exported INT8 ONNX model with the torch INT8 model it came from."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from qtoolkit.evaluate.ort_runtime import make_session


def check_parity(
    int8_model: nn.Module, onnx_path: str | os.PathLike[str], batches: Iterable[Any], threads: int = 2
) -> dict[str, float]:
    """Top-1 agreement and max |logit difference| between ``int8_model`` and the ONNX file.

    ``batches`` yields inputs, or (input, label) pairs. Returns ``agreement`` in [0, 1],
    ``max_abs_diff`` and ``samples``.
    """
    session = make_session(onnx_path, threads)
    name = session.get_inputs()[0].name
    agree, total, max_diff = 0, 0, 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = batch[0] if isinstance(batch, tuple | list) else batch
            expected = int8_model(inputs).numpy()
            got = session.run(None, {name: inputs.numpy()})[0]
            agree += int(np.sum(expected.argmax(-1) == got.argmax(-1)))
            total += len(expected)
            max_diff = max(max_diff, float(np.abs(expected - got).max()))
    return {"agreement": agree / max(total, 1), "max_abs_diff": max_diff, "samples": total}
