"""Run a deployed text classifier: ``predict(artifact_dir, texts)``.

Needs only onnxruntime (or OpenVINO: ``runtime="openvino"``), tokenizers and numpy (no torch, no
transformers). The artifact directory
holds ``model_int8.onnx`` (or the model named in ``deploy.json``), ``tokenizer.json``,
``labels.json`` (label names in id order) and ``deploy.json`` (max length, input names, sha256).

Probabilities are softmax(logits): p_i = exp(z_i − max z) / Σ_j exp(z_j − max z).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from qtoolkit.errors import QtkError
from qtoolkit.runtime.batches import logits_of
from qtoolkit.runtime.onnx_runtimes import DEFAULT_RUNTIME, OnnxModel, load_onnx

__all__ = [
    "DEPLOY_FILE",
    "LABELS_FILE",
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "Prediction",
    "TextEncoder",
    "load",
    "predict",
]

TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
DEPLOY_FILE = "deploy.json"
MODEL_FILE = "model_int8.onnx"
ENCODER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextEncoder:
    """BERT-style text (or text-pair) encoder on a ``tokenizers.Tokenizer``, padded to the longest.

    Inputs longer than ``max_length`` tokens are truncated (longest-first for pairs) with one
    warning per call naming how many were cut; empty texts raise QtkError. ``input_names`` are the
    arrays ``encode`` returns: models without token types (DistilBERT) take no ``token_type_ids``.
    """

    def __init__(self, tokenizer: Any, max_length: int, input_names: Sequence[str] = ENCODER_OUTPUTS) -> None:
        if max_length < 2:
            raise QtkError(f"max_length {max_length} is too small; BERT needs at least [CLS] and [SEP].")
        unknown = sorted(set(input_names) - set(ENCODER_OUTPUTS))
        if unknown or "input_ids" not in input_names:
            raise QtkError(
                f"encoder inputs {list(input_names)} must include input_ids and be among {ENCODER_OUTPUTS}."
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.input_names = tuple(name for name in ENCODER_OUTPUTS if name in input_names)
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        pad_token = "[PAD]" if tokenizer.token_to_id("[PAD]") is not None else None
        padding = tokenizer.padding or {}
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) if pad_token else 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=padding.get("pad_token", pad_token or "[PAD]"))

    @classmethod
    def from_dir(
        cls, directory: str | os.PathLike[str], max_length: int, input_names: Sequence[str] = ENCODER_OUTPUTS
    ) -> TextEncoder:
        """Load ``tokenizer.json``, or build a WordPiece tokenizer from ``vocab.txt``."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        if (directory / TOKENIZER_FILE).is_file():
            return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), max_length, input_names)
        if (directory / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            lowercase = True
            config = directory / "tokenizer_config.json"
            if config.is_file():
                lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
            wordpiece = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lowercase)
            return cls(Tokenizer.from_str(wordpiece.to_str()), max_length, input_names)
        raise QtkError(
            f"no tokenizer in {directory}: it needs tokenizer.json or vocab.txt; "
            "copy the tokenizer files of the model next to its weights."
        )

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``input_names`` (input_ids, attention_mask, token_type_ids) as int64 arrays [batch, longest]."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise QtkError("no texts to encode; pass at least one non-empty text.")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise QtkError(f"text #{index} is empty; every input needs at least one word.")
        if pairs is not None:
            if len(pairs) != len(texts):
                raise QtkError(f"{len(pairs)} second sentences for {len(texts)} texts; pass one per text.")
            for index, pair in enumerate(pairs):
                if not isinstance(pair, str) or not pair.strip():
                    raise QtkError(f"second sentence #{index} is empty; every pair needs two sentences.")
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
        else:
            encodings = self.tokenizer.encode_batch(list(texts))
        cut = sum(1 for enc in encodings if enc.overflowing)
        if cut:
            warnings.warn(
                f"{cut} of {len(encodings)} inputs were longer than {self.max_length} tokens and were "
                "truncated; raise max_length (up to the model's max positions) to keep them whole.",
                stacklevel=2,
            )
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return {
            name: np.array([getattr(enc, fields[name]) for enc in encodings], dtype=np.int64)
            for name in self.input_names
        }

    def batches(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64
    ) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`encode` over ``texts`` (and ``pairs``) in order, ``batch_size`` at a time, each batch
        padded to its longest member: what deploy's ``predict`` feeds, so torch and ONNX models
        evaluated on these batches see identical inputs."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if pairs is not None and len(pairs) != len(texts):
            raise QtkError(f"{len(pairs)} second sentences for {len(texts)} texts; pass one per text.")
        for start in range(0, len(texts), batch_size):
            chunk = None if pairs is None else list(pairs[start : start + batch_size])
            yield self.encode(texts[start : start + batch_size], chunk)

    def full_length_batch(
        self, batch_size: int, seq: int, vocab_size: int, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """``input_names`` arrays of ``seq`` real tokens ([CLS] random ids [SEP]), no padding: latency
        inputs that make every call do full-length work."""
        rng = np.random.default_rng(seed)
        ids = rng.integers(min(1000, vocab_size // 2), vocab_size, (batch_size, seq))
        ids[:, 0] = self.tokenizer.token_to_id("[CLS]") or 0
        ids[:, -1] = self.tokenizer.token_to_id("[SEP]") or 0
        ones = np.ones((batch_size, seq), np.int64)
        arrays = {"input_ids": ids.astype(np.int64), "attention_mask": ones, "token_type_ids": 0 * ones}
        return {name: arrays[name] for name in self.input_names}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        from qtoolkit.atomic import write_text_atomic

        path = Path(directory) / TOKENIZER_FILE
        write_text_atomic(path, self.tokenizer.to_str())
        return path


@dataclass
class Prediction:
    """One text's predicted label, its id, its probability and all class probabilities."""

    label: str
    label_id: int
    score: float
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class _Loaded:
    model: OnnxModel
    encoder: TextEncoder
    labels: list[str]
    input_names: list[str]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise QtkError(f"{path} is missing; this is not a qtoolkit deploy directory (re-run the export).")
    return json.loads(path.read_text())


@lru_cache(maxsize=4)
def _load_cached(directory: str, threads: int, runtime: str) -> _Loaded:
    root = Path(directory)
    if not root.is_dir():
        raise QtkError(f"deploy directory {root} does not exist; pass the directory written by the export.")
    meta = _read_json(root / DEPLOY_FILE)
    labels = _read_json(root / LABELS_FILE)["labels"]
    model = load_onnx(root / meta.get("model", MODEL_FILE), runtime, threads)
    input_names = list(model.input_names)
    encoder = TextEncoder.from_dir(root, int(meta["max_length"]), input_names)
    return _Loaded(model, encoder, list(labels), input_names)


def load(directory: str | os.PathLike[str], threads: int = 2, runtime: str = DEFAULT_RUNTIME) -> _Loaded:
    """Open (and cache) the model on ``runtime``, the tokenizer and labels of a deploy directory.
    Any runtime runs it; ``deploy.json``'s ``validated_runtimes`` says which ones the run checked."""
    return _load_cached(str(Path(directory).resolve()), threads, runtime)


def predict(
    directory: str | os.PathLike[str],
    texts: str | Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    threads: int = 2,
    runtime: str = DEFAULT_RUNTIME,
) -> list[Prediction]:
    """Classify ``texts`` (or sentence pairs) with the INT8 ONNX model in ``directory`` on ``runtime``
    (``onnxruntime`` or ``openvino``)."""
    loaded = load(directory, threads, runtime)
    if not isinstance(texts, str) and not len(texts):
        return []
    logits = logits_of(loaded.model.run, loaded.encoder.batches(texts, text_pairs, batch_size))
    results: list[Prediction] = []
    for row in softmax(logits.astype(np.float64)):
        best = int(row.argmax())
        results.append(Prediction(loaded.labels[best], best, float(row[best]), row.tolist()))
    return results
