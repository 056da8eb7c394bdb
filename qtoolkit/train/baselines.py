"""FP32 baselines, trained once and cached: the one home for image training and text fine-tuning.

:func:`cached_fit` is the pattern both tasks share: if the cache entry exists, load it; otherwise
build the model, train it with the shared engine (:func:`qtoolkit.train.fit`) and publish the entry
atomically (:func:`qtoolkit.cache.get_or_build`), so a killed run never leaves half an entry.
Keys come from :func:`qtoolkit.cache.cache_key` over everything that determines the weights.

* :func:`image_baseline` -- SGD training of an image classifier from scratch (cross-entropy),
  ``<entry>.pt`` (state dict, loaded with ``weights_only=True``) and ``<entry>.json`` (metadata,
  published last). Epoch checkpoints next to the entry let an interrupted run resume.
* :func:`fine_tune_cached` -- fine-tuning of a BERT-style sequence classifier, minimising the mean
  cross-entropy of the encoder + linear head over batches,
  L = −(1/B) Σ_b log softmax(W h_[CLS](x_b) + c)[y_b], with AdamW and a linear warm-up then linear
  decay; the entry is a normal Hugging Face directory with the tokenizer copied in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from qtoolkit.cache import cache_key, default_cache_dir, get_or_build
from qtoolkit.data.text import TextDataset
from qtoolkit.errors import QtkError
from qtoolkit.models.bert import load_classifier, quiet_transformers, resolve_model_dir
from qtoolkit.models.weights import load_weights
from qtoolkit.train.engine import TrainConfig, TrainResult, fit

log = logging.getLogger("qtoolkit")

if TYPE_CHECKING:  # the tokenizer wrapper lives with the deploy predictor; only its methods are used
    from qtoolkit.deploy.predict import TextEncoder

__all__ = [
    "CachedModel",
    "FineTuneConfig",
    "bert_collate",
    "bert_forward_loss",
    "cached_fit",
    "fine_tune",
    "fine_tune_cached",
    "image_baseline",
]


@dataclass
class CachedModel:
    """A trained FP32 model, the cache entry holding it, and whether it came from the cache."""

    model: nn.Module
    entry: Path
    cached: bool
    train: TrainResult | None = None  # None when loaded from the cache


def cached_fit(
    entry: Path,
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], TrainResult],
    save: Callable[[nn.Module, Path, TrainResult], None],
    load: Callable[[Path], nn.Module],
) -> CachedModel:
    """Load cache ``entry``, or ``build`` a model, ``train`` it and ``save`` it there atomically.

    ``save(model, tmp, result)`` writes ``tmp`` (named like ``entry``, in a staging directory) and
    any sibling files; they appear next to ``entry`` together, ``entry`` last.
    """
    if entry.exists():
        return CachedModel(load(entry).eval(), entry, True)
    model = build()
    result = train(model)
    model.eval()
    get_or_build(entry, lambda tmp: save(model, tmp, result))
    return CachedModel(model, entry, False, result)


# ------------------------------------------------------------------------------------------ images


def image_baseline(
    build: Callable[[], nn.Module],
    train: Dataset,
    config: TrainConfig,
    cache_dir: Path,
    name: str,
    determining: dict[str, Any],
    *,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """The image classifier ``build()`` trained on ``train`` as ``config`` says; returns (model, info).

    Cached as ``CACHE/baselines/<name>-<key>.pt`` (weights) and ``.json`` (metadata, published last,
    so it marks a complete entry), key = :func:`cache_key` of ``determining``.
    """
    key = cache_key(determining)
    entry = cache_dir / "baselines" / f"{name}-{key}"
    meta_path, weights_path = entry.with_suffix(".json"), entry.with_suffix(".pt")
    # Epoch checkpoints next to the cache entry: an interrupted run resumes instead of restarting.
    checkpoints = entry.parent / f"{entry.name}-checkpoints"

    def save(model: nn.Module, tmp: Path, result: TrainResult) -> None:
        torch.save(model.state_dict(), tmp.with_suffix(".pt"))
        meta = {
            "key": key,
            "trained_seconds": round(result.seconds, 1),
            "steps": result.global_step,
            "train": result.summary(),
        }
        tmp.write_text(json.dumps(meta, indent=2))

    def train_model(model: nn.Module) -> TrainResult:
        log.info("training the FP32 baseline (%s epochs); cached at %s", config.epochs, weights_path)
        return fit(model, train, config, checkpoint_dir=checkpoints, resume=True, progress=progress)

    def load(_: Path) -> nn.Module:
        log.info("loading cached FP32 baseline %s", weights_path)
        return load_weights(build(), weights_path)

    done = cached_fit(meta_path, build, train_model, save, load)
    shutil.rmtree(checkpoints, ignore_errors=True)
    meta = json.loads(meta_path.read_text())
    return done.model, {**meta, "source": "cache" if done.cached else "trained", "path": str(weights_path)}


# -------------------------------------------------------------------------------------------- text


@dataclass(frozen=True)
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
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, extra [lowmem]) | sgd

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["optimizer"] == "adamw":  # cache keys of fine-tunes from before the field stay valid
            del data["optimizer"]
        return data

    def train_config(self, dataset_size: int) -> TrainConfig:
        """The engine's config: ``optimizer``, linear schedule, enough epochs to reach ``steps``."""
        return TrainConfig(
            epochs=max(1, -(-self.steps * self.batch_size // dataset_size)),
            max_steps=self.steps,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            schedule="linear",
            warmup_steps=self.warmup_steps,
            batch_size=self.batch_size,
            device=self.device,
            precision=self.precision,
            grad_clip=self.grad_clip,
            seed=self.seed,
        )


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
) -> TrainResult:
    """Fine-tune ``model`` in place on ``train`` with the shared engine; returns its TrainResult."""
    if len(set(train.labels)) < 2:
        raise QtkError("training data has fewer than 2 classes; a classifier needs examples of each label.")
    num_labels = model.config.num_labels
    if max(train.labels) >= num_labels:
        raise QtkError(
            f"labels go up to {max(train.labels)} but the model has {num_labels} outputs; "
            "load it with the dataset's label_names."
        )
    _warn_truncation(encoder, train)
    result = fit(
        model,
        train,
        config.train_config(len(train)),
        forward_loss=bert_forward_loss,
        collate_fn=bert_collate(encoder),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
    model.eval()
    return result


def fine_tune_cached(
    model_dir: str | os.PathLike[str],
    train: TextDataset,
    split_sha: str,
    config: FineTuneConfig,
    encoder: TextEncoder,
    *,
    progress: bool = True,
    cache_root: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, Path, bool]:
    """Fine-tune once per (base model files, data split, labels, config); later calls load the result.

    ``encoder`` is the base model's tokenizer (copied into the entry). Returns (model in eval mode,
    cached directory, whether it was loaded from cache); the directory is a normal HF directory.
    """
    model_dir = resolve_model_dir(model_dir)
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt")
    )
    payload = {"split": split_sha, "labels": train.label_names, "n": len(train), "config": config.to_dict()}
    entry = Path(cache_root or default_cache_dir()) / "bert-finetuned" / cache_key(payload, files)

    def build() -> nn.Module:
        torch.manual_seed(config.seed)  # the new head's initialisation
        return load_classifier(model_dir, train.label_names)

    def save(model: nn.Module, tmp: Path, result: TrainResult) -> None:
        with quiet_transformers():
            model.save_pretrained(tmp)
        encoder.save(tmp)
        info = {
            "base": str(model_dir),
            "split_sha256": split_sha,
            "config": config.to_dict(),
            "train": result.summary(),  # optimizer, state bytes, peak memory: the report's train section
        }
        (tmp / "qtk_finetune.json").write_text(json.dumps(info, indent=2))

    done = cached_fit(
        entry,
        build,
        lambda model: fine_tune(model, encoder, train, config, progress=progress),
        save,
        load_classifier,
    )
    return done.model, done.entry, done.cached
