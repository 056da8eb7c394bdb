"""Deployable artifact directory for text classifiers, and the runtime ``predict``.

Layout written by :func:`write_deploy_dir`::

    DIR/model_int8.onnx        INT8 model (plus model_int8.onnx.data when > 2 GB)
    DIR/tokenizer.json         tokenizers.Tokenizer (truncation/padding applied at load)
    DIR/labels.json            {"labels": [name for id 0, name for id 1, ...]}
    DIR/deploy.json            max_length, model file, input names, sha256 of the model, extras,
                               and ``validated_runtimes`` (each ONNX runtime the run checked it on)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qtoolkit.atomic import atomic_path, sha256_file, write_text_atomic
from qtoolkit.deploy.predict import (
    DEPLOY_FILE,
    LABELS_FILE,
    MODEL_FILE,
    Prediction,
    TextEncoder,
    load,
    predict,
)
from qtoolkit.errors import QtkError

__all__ = [
    "DEPLOY_DIR",
    "Prediction",
    "TextEncoder",
    "load",
    "predict",
    "record_validation",
    "write_deploy_dir",
]

DEPLOY_DIR = "deploy"  # the deploy directory's name inside a run's output directory


def write_deploy_dir(
    directory: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    encoder: TextEncoder,
    label_names: Sequence[str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Copy the ONNX model, tokenizer and labels into ``directory`` (each file written atomically)."""
    source = Path(onnx_path)
    if not source.is_file():
        raise QtkError(f"ONNX model {source} does not exist; export it before writing the deploy directory.")
    if not label_names:
        raise QtkError("label_names is empty; pass the class names in label-id order.")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / MODEL_FILE) as tmp:
        shutil.copyfile(source, tmp)
    side = source.with_name(source.name + ".data")
    if side.is_file():
        with atomic_path(root / (MODEL_FILE + ".data")) as tmp:
            shutil.copyfile(side, tmp)
    encoder.save(root)
    write_text_atomic(root / LABELS_FILE, json.dumps({"labels": list(label_names)}, indent=2) + "\n")
    meta = {
        "format": "qtoolkit-text-classifier/1",
        "model": MODEL_FILE,
        "max_length": encoder.max_length,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "sha256": sha256_file(root / MODEL_FILE),
        **dict(extra or {}),
    }
    write_text_atomic(root / DEPLOY_FILE, json.dumps(meta, indent=2, default=str) + "\n")
    return root


def record_validation(directory: str | os.PathLike[str], runtimes: Mapping[str, Mapping[str, Any]]) -> bool:
    """Add ``validated_runtimes`` (runtime -> version, precision, accuracy, agreement, passed) to the
    ``deploy.json`` of ``directory``, rewritten atomically; False when ``directory`` has none."""
    path = Path(directory) / DEPLOY_FILE
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    meta["validated_runtimes"] = {name: dict(info) for name, info in runtimes.items()}
    write_text_atomic(path, json.dumps(meta, indent=2, default=str) + "\n")
    return True
