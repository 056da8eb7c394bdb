"""Text classification (BERT-style encoders): data split, cached fine-tune, eval batches, deploy dir.

The FP32 baseline is the recipe's fine-tune of a local Hugging Face directory (``model.path``, or
``model.name: minilm-l6`` for the offline MiniLM-L6 package), cached under
``$QTK_CACHE/bert-finetuned`` by base model files, split and training settings
(:func:`qtoolkit.train.baselines.fine_tune_cached`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from qtoolkit.configs import fine_tune_config
from qtoolkit.data.text import (
    TextDataset,
    load_rotten_tomatoes,
    load_text_classification,
    split_fingerprint,
    stratified_split,
)
from qtoolkit.deploy import write_deploy_dir
from qtoolkit.deploy.predict import TextEncoder
from qtoolkit.errors import QtkError
from qtoolkit.models.bert import effective_max_length, model_input_names, resolve_model_dir
from qtoolkit.recipe import Recipe
from qtoolkit.tasks.base import PreparedTask, register_task
from qtoolkit.train.baselines import fine_tune_cached


def load_encoder(model_dir: str | os.PathLike[str], max_length: int = 128) -> TextEncoder:
    """The model directory's tokenizer (QtkError when it has none), truncating to ``max_length``
    (capped at the model's positions) and producing the inputs its forward takes."""
    model_dir = Path(model_dir)
    return TextEncoder.from_dir(
        model_dir, effective_max_length(model_dir, max_length), model_input_names(model_dir)
    )


def _load(recipe: Recipe) -> TextDataset:
    data = recipe.data
    if data.name == "rotten-tomatoes":
        return load_rotten_tomatoes(data.root)
    if data.name == "text-file":
        if not data.root:
            raise QtkError(
                f"{recipe.source}: data.root must name the CSV/TSV/JSONL file for data.name text-file"
            )
        return load_text_classification(
            data.root,
            text_column=data.text_column,
            label_column=data.label_column,
            text_pair_column=data.text_pair_column,
        )
    raise QtkError(f"{recipe.source}: unknown text dataset {data.name!r}; use rotten-tomatoes or text-file")


def _tensors(encoded: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in encoded.items()}


def _batches(encoder: TextEncoder, data: TextDataset, batch_size: int) -> list[tuple[dict, torch.Tensor]]:
    """Held-out batches padded to their longest member (as the deploy predictor pads)."""
    batches = []
    for start in range(0, len(data), batch_size):
        part = data.subset(range(start, min(len(data), start + batch_size)))
        batches.append((_tensors(encoder.encode(part.texts, part.text_pairs)), torch.tensor(part.labels)))
    return batches


def smoothing_calibration(
    recipe: Recipe, train: TextDataset, encoder: TextEncoder
) -> tuple[list[tuple[dict, torch.Tensor]], dict[str, object]]:
    """Batches for smoothing's per-channel input ranges (quantize/smoothing.py): the first
    ``calibration.size`` snippets of the seeded train split, never val or test; and their record
    (size 0 when the recipe does not smooth: dynamic PTQ then uses no calibration data)."""
    part = train.subset(range(min(len(train), recipe.quantize.calibration.size)))
    smoothing = recipe.quantize.smoothing is not None
    info = {
        "size": len(part) if smoothing else 0,
        "fingerprint": split_fingerprint({"calibration": part}),
        "note": "train split head, for smoothing's input ranges"
        if smoothing
        else "dynamic: no calibration set (activations are quantized at run time)",
    }
    return _batches(encoder, part, recipe.quantize.calibration.batch_size), info


def _full_length_input(encoder: TextEncoder, vocab_size: int, seq: int):
    """Latency inputs of ``seq`` real tokens ([CLS] random ids [SEP]) so every call does full work."""

    def make(batch_size: int) -> dict[str, torch.Tensor]:
        return _tensors(encoder.full_length_batch(batch_size, seq, vocab_size))

    return make


def _train_summary(model_dir: Path) -> dict | None:
    """The fine-tune's training record (optimizer, state bytes, peak memory), saved with the entry."""
    info = model_dir / "qtk_finetune.json"
    return json.loads(info.read_text()).get("train") if info.is_file() else None


@register_task("text-classification")
def prepare_text_classification(recipe: Recipe, cache_dir: Path) -> PreparedTask:
    """Split, fine-tuned FP32 classifier and eval batches for a text-classification recipe."""
    if recipe.model.name in ("lstm-text", "gru-text"):  # trained from scratch, not fine-tuned
        from qtoolkit.tasks.rnn_text import prepare_rnn_text_classification

        return prepare_rnn_text_classification(recipe, cache_dir)
    splits = stratified_split(_load(recipe), seed=recipe.train.seed)
    test = splits.test
    if recipe.data.test_limit is not None:
        test = test.subset(range(min(len(test), recipe.data.test_limit)))
    base_dir = resolve_model_dir(recipe.model.path or recipe.model.name)
    config = fine_tune_config(recipe, effective_max_length(base_dir, recipe.data.max_length))
    base_encoder = load_encoder(base_dir, config.max_length)
    model, model_dir, cached = fine_tune_cached(
        base_dir, splits.train, splits.fingerprint, config, base_encoder, cache_root=cache_dir
    )
    encoder = load_encoder(model_dir, config.max_length)
    calibration, calibration_info = smoothing_calibration(recipe, splits.train, encoder)
    example = _tensors(
        encoder.encode(test.texts[:2], None if test.text_pairs is None else test.text_pairs[:2])
    )

    def write_deploy(out_dir: Path, int8_onnx: Path) -> None:
        extra = {"split": splits.manifest(), "quantization": asdict(recipe.quantize), "recipe": recipe.name}
        write_deploy_dir(out_dir / "deploy", int8_onnx, encoder, splits.label_names, extra=extra)

    return PreparedTask(
        fp32_model=model,
        example_input=example,
        calibration=calibration,
        calibration_info=calibration_info,
        eval_batches=_batches(encoder, test, recipe.evaluate.batch_size),
        data_info={**splits.manifest(), "sizes": splits.sizes(), "test_evaluated": len(test)},
        baseline_info={
            "source": "cache" if cached else "trained",
            "path": str(model_dir),
            "fine_tune": config.to_dict(),
            "train": _train_summary(model_dir),
        },
        latency_input=_full_length_input(encoder, model.config.vocab_size, config.max_length),
        write_deploy=write_deploy,
        val_batches=_batches(encoder, splits.val, recipe.evaluate.batch_size),
        val_info={"source": "split val", "size": len(splits.val), "sha256": splits.fingerprint},
    )
