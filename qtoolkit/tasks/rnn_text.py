"""Text classification with a recurrent model trained from scratch (``lstm-text``, ``gru-text``).

Same data split, held-out batches and deploy directory as the BERT path of
``text-classification``; the FP32 baseline differs: token ids from the tokenizer of ``model.path``
(default: the offline MiniLM-L6 package's WordPiece vocabulary) feed an Embedding → LSTM/GRU →
Linear classifier (:mod:`qtoolkit.models.rnn`) whose embedding keeps rows only for the tokens of
the training split. Training minimises the mean cross-entropy with the shared engine; the result is
cached through :func:`qtoolkit.train.baselines.cached_fit` as ``$QTK_CACHE/rnn-text/<name>-<key>.pt``
(+ ``.json``, published last), key = :func:`qtoolkit.cache.cache_key` of everything that determines the weights (model options, tokenizer, split, labels, max length,
training settings, torch version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qtoolkit.cache import cache_key
from qtoolkit.configs import baseline_train_config
from qtoolkit.data.text import TextDataset, TextSplits, stratified_split
from qtoolkit.deploy import write_deploy_dir
from qtoolkit.deploy.predict import TextEncoder
from qtoolkit.errors import QtkError
from qtoolkit.models import create_model
from qtoolkit.models.bert import resolve_model_dir
from qtoolkit.models.rnn import RNNTextClassifier, kept_tokens
from qtoolkit.models.weights import load_weights
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import PreparedTask
from qtoolkit.tasks.text_classification import (
    _batches,
    _full_length_input,
    _load,
    _tensors,
    smoothing_calibration,
)
from qtoolkit.train import fit
from qtoolkit.train.baselines import bert_collate, cached_fit
from qtoolkit.train.engine import TrainResult

log = logging.getLogger("qtoolkit")

RNN_TEXT_MODELS = ("lstm-text", "gru-text")
INPUT_NAMES = ("input_ids", "attention_mask")  # no token types: one text per example


def token_id_bound(encoder: TextEncoder) -> int:
    """1 + the largest id the tokenizer emits (its vocabulary may have gaps or duplicate tokens)."""
    return max(encoder.tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def rnn_forward_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Engine hook: mean cross-entropy (fp32) of the classifier on one collated batch."""
    batch = {key: value.to(device) for key, value in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch)
    return nn.functional.cross_entropy(logits.float(), labels), logits, labels


def _encode_all(encoder: TextEncoder, data: TextDataset) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of long snippets is expected at max_length
        return [
            encoder.encode(data.texts[start : start + 1024])["input_ids"]
            for start in range(0, len(data), 1024)
        ]


def rnn_baseline(
    recipe: Recipe, splits: TextSplits, train: TextDataset, encoder: TextEncoder, cache_dir: Path
) -> tuple[RNNTextClassifier, dict[str, Any]]:
    """The recipe's recurrent classifier trained on ``train`` (or loaded from the cache), in eval mode."""
    spec = recipe.model
    pad_id = encoder.tokenizer.token_to_id("[PAD]") or 0
    base = {
        "vocab_size": token_id_bound(encoder),
        "num_classes": len(splits.label_names),
        "pad_id": pad_id,
        **spec.options,
    }
    train_config = baseline_train_config(recipe)
    determining = {
        "model": spec.name,
        "options": base,
        "tokenizer": hashlib.sha256(encoder.tokenizer.to_str().encode()).hexdigest(),
        "max_length": encoder.max_length,
        "split": splits.fingerprint,
        "labels": splits.label_names,
        "train_size": len(train),
        "train": asdict(train_config),
        "torch": torch.__version__.split("+")[0],
    }
    key = cache_key(determining)
    entry = cache_dir / "rnn-text" / f"{spec.name}-{key}"
    meta_path, weights_path = entry.with_suffix(".json"), entry.with_suffix(".pt")
    checkpoints = entry.parent / f"{entry.name}-checkpoints"  # an interrupted run resumes
    kwargs: dict[str, Any] = {}

    def build() -> nn.Module:
        kept = kept_tokens(_encode_all(encoder, train), exclude=[pad_id])
        kwargs.update(base, num_embeddings=len(kept) + 2, kept_tokens=len(kept))
        torch.manual_seed(recipe.train.seed)  # the initial weights
        model = create_model(spec.name, **{k: v for k, v in kwargs.items() if k != "kept_tokens"})
        if not isinstance(model, RNNTextClassifier):
            raise QtkError(f"{recipe.source}: model {spec.name!r} is not a recurrent text classifier")
        model.set_vocabulary(kept.tolist())
        return model

    def train_model(model: nn.Module) -> TrainResult:
        log.info("training %s (%s steps max); cached at %s", spec.name, train_config.max_steps, weights_path)
        return fit(model, train, train_config, forward_loss=rnn_forward_loss,
                   collate_fn=bert_collate(encoder), checkpoint_dir=checkpoints, resume=True)  # fmt: skip

    def save(model: nn.Module, tmp: Path, result: TrainResult) -> None:
        torch.save(model.state_dict(), tmp.with_suffix(".pt"))
        meta = {
            "key": key,
            "model_kwargs": {k: v for k, v in kwargs.items() if k != "kept_tokens"},
            "kept_tokens": kwargs["kept_tokens"],
            "trained_seconds": round(result.seconds, 1),
            "steps": result.global_step,
            "train_accuracy_last_epoch": result.train_accuracy,
        }
        tmp.write_text(json.dumps(meta, indent=2))  # the entry: published last, marks it complete

    def load(_: Path) -> nn.Module:
        meta = json.loads(meta_path.read_text())
        return load_weights(create_model(spec.name, **meta["model_kwargs"]), weights_path)

    done = cached_fit(meta_path, build, train_model, save, load)
    shutil.rmtree(checkpoints, ignore_errors=True)
    meta = json.loads(meta_path.read_text())
    return done.model, {**meta, "source": "cache" if done.cached else "trained", "path": str(weights_path)}


def prepare_rnn_text_classification(recipe: Recipe, cache_dir: Path) -> PreparedTask:
    """Split, trained (or cached) recurrent classifier and eval batches for a text recipe."""
    splits = stratified_split(_load(recipe), seed=recipe.train.seed)
    train, test = splits.train, splits.test
    if recipe.data.train_limit is not None:
        train = train.subset(range(min(len(train), recipe.data.train_limit)))
    if recipe.data.test_limit is not None:
        test = test.subset(range(min(len(test), recipe.data.test_limit)))
    encoder = TextEncoder.from_dir(resolve_model_dir(recipe.model.path), recipe.data.max_length, INPUT_NAMES)
    model, baseline_info = rnn_baseline(recipe, splits, train, encoder, cache_dir)
    example = _tensors(encoder.encode(test.texts[:2]))
    calibration, calibration_info = smoothing_calibration(recipe, train, encoder)

    def write_deploy(out_dir: Path, int8_onnx: Path) -> None:
        extra = {
            "inputs": list(INPUT_NAMES),
            "split": splits.manifest(),
            "quantization": asdict(recipe.quantize),
            "recipe": recipe.name,
        }
        write_deploy_dir(out_dir / "deploy", int8_onnx, encoder, splits.label_names, extra=extra)

    return PreparedTask(
        fp32_model=model,
        example_input=example,
        calibration=calibration,
        calibration_info=calibration_info,
        eval_batches=_batches(encoder, test, recipe.evaluate.batch_size),
        data_info={
            **splits.manifest(),
            "sizes": splits.sizes(),
            "train_used": len(train),
            "test_evaluated": len(test),
        },
        baseline_info=baseline_info,
        latency_input=_full_length_input(encoder, token_id_bound(encoder), encoder.max_length),
        write_deploy=write_deploy,
        val_batches=_batches(encoder, splits.val, recipe.evaluate.batch_size),
        val_info={"source": "split val", "size": len(splits.val), "sha256": splits.fingerprint},
    )
