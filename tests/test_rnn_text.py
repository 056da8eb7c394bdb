"""Recurrent text classifiers (lstm-text, gru-text): the model, and a recipe through the one pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qtoolkit.errors import QtkError
from qtoolkit.models import create_model
from qtoolkit.models.rnn import PAD_ROW, UNK_ROW, kept_tokens
from qtoolkit.recipe import load_recipe


def _model(cell: str = "lstm", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(f"{cell}-text", vocab_size=50, embed_dim=8, hidden_size=12, **options).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_rnn_ignores_right_padding(cell):
    model = _model(cell)
    ids = torch.tensor([[5, 7, 9, 11]])
    padded = torch.tensor([[5, 7, 9, 11, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0]])
    mask = (padded != 0).long()
    alone = model(ids, torch.ones_like(ids))
    in_batch = model(padded, mask)[:1]
    torch.testing.assert_close(alone, in_batch, rtol=0, atol=1e-6)
    assert not torch.allclose(model(padded, mask)[1], alone)


def test_vocabulary_maps_unseen_tokens_to_unk():
    model = create_model("lstm-text", vocab_size=50, embed_dim=4, hidden_size=4, num_embeddings=5)
    model.set_vocabulary([0, 7, 3, 21])  # padding id 0 is dropped: 3 kept tokens + PAD + UNK rows
    table = model.token_map
    assert table[0] == PAD_ROW
    assert [int(table[t]) for t in (7, 3, 21)] == [2, 3, 4]
    assert int(table[8]) == UNK_ROW and int(table[49]) == UNK_ROW
    with pytest.raises(QtkError, match="need 4 embedding rows"):
        model.set_vocabulary([1, 2])


def test_kept_tokens_counts_over_chunks():
    chunks = [np.array([[0, 4, 4, 9]]), np.array([[9, 2, 0, 0]])]
    assert kept_tokens(chunks, exclude=[0]).tolist() == [2, 4, 9]
    assert kept_tokens(chunks, min_count=2, exclude=[0]).tolist() == [4, 9]


def test_bad_options_are_one_clear_line():
    with pytest.raises(QtkError, match="does not take these options"):
        create_model("lstm-text", hidden=3)
    with pytest.raises(QtkError, match="hidden_size=0 must be >= 1"):
        create_model("gru-text", hidden_size=0)


def test_recipe_model_options_are_a_mapping(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {name: lstm-text, options: {hidden_size: 32}}\n")
    assert load_recipe(recipe, ["model.options.embed_dim=16"]).model.options == {
        "hidden_size": 32,
        "embed_dim": 16,
    }
    recipe.write_text("name: r\nmodel: {name: lstm-text, options: [1, 2]}\n")
    with pytest.raises(QtkError, match=r"'model\.options' must be a mapping"):
        load_recipe(recipe)


def test_shipped_rnn_recipes_load():
    from conftest import REPO

    for name, model in (("lstm", "lstm-text"), ("gru", "gru-text")):
        recipe = load_recipe(REPO / "recipes" / f"{name}_rotten_tomatoes_dynamic.yaml")
        assert recipe.model.name == model and recipe.quantize.method == "dynamic"
        assert recipe.data.name == "rotten-tomatoes" and recipe.data.max_length == 64


WORDS = {"good": "pos", "great": "pos", "fun": "pos", "bad": "neg", "dull": "neg", "awful": "neg"}


def _write_csv(path, rows=160):
    import csv

    words = list(WORDS)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(rows):
            word = words[i % len(words)]
            writer.writerow([f"the film {i % 5} was {word}", WORDS[word]])


# GRU end to end in the full run only: the fast subset keeps the LSTM one (the same pipeline).
@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_rnn_text_recipe_end_to_end(tmp_path, capsys, cell):
    """Train (tiny) -> dynamic INT8 -> ONNX -> report -> deploy dir -> `qtk predict`, then the cache."""
    pytest.importorskip("transformers")
    from models_for_tests import save_tiny_bert

    from qtoolkit.cli import main

    tokenizer_dir = save_tiny_bert(tmp_path / "tokenizer")  # only its WordPiece tokenizer is used
    data = tmp_path / "reviews.csv"
    _write_csv(data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
name: tiny-{cell}
task: text-classification
model: {{name: {cell}-text, path: {tokenizer_dir}, options: {{embed_dim: 16, hidden_size: 16}}}}
data: {{name: text-file, root: {data}, text_column: review, label_column: sentiment, max_length: 16}}
train: {{epochs: 6, batch_size: 16, lr: 0.01, optimizer: adamw, schedule: linear}}
quantize: {{method: dynamic}}
evaluate: {{tolerance_pp: 100, min_agreement: 0.9, batch_size: 16, warmup: 1, repeats: 2}}
"""
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["run", str(recipe), "--out", str(out), "--cache", str(cache)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "dynamic" and report["baseline"]["source"] == "trained"
    assert report["metrics"]["fp32_torch"]["accuracy"] >= 0.6  # above chance: the words decide the label
    ops = report["export"]["int8_ops"]
    if cell == "lstm":  # both layers run onnxruntime's integer LSTM kernel
        assert ops.get("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
    else:  # integer input projections (+ recurrences), no float GRU left
        assert ops.get("MatMulInteger", 0) >= 3 and "GRU" not in ops
    assert report["export"]["passes"]["uint8_embeddings"] == 1
    assert report["metrics"]["int8_onnx"]["size_mb"] < report["metrics"]["fp32_onnx"]["size_mb"]
    deploy = json.loads((out / "deploy" / "deploy.json").read_text())
    assert deploy["inputs"] == ["input_ids", "attention_mask"]
    capsys.readouterr()
    assert main(["predict", str(out / "deploy"), "the film was great", "the film was awful"]) == 0
    labels = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert labels == ["pos", "neg"]
    # second run: the baseline comes from the cache, same accuracy
    assert main(["run", str(recipe), "--out", str(tmp_path / "again"), "--cache", str(cache)]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["baseline"]["source"] == "cache"
    assert again["metrics"]["fp32_torch"]["accuracy"] == report["metrics"]["fp32_torch"]["accuracy"]
