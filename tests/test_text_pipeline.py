"""A user's own CSV + a local BERT directory through the one pipeline: dynamic INT8, report, deploy, predict."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from models_for_tests import save_tiny_bert

from qtoolkit.cli import main

WORDS = {"good": "pos", "great": "pos", "fun": "pos", "bad": "neg", "dull": "neg", "awful": "neg"}


def _write_csv(path, rows=120):
    words = list(WORDS)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(rows):
            word = words[i % len(words)]
            writer.writerow([f"a {word} film {i % 7}", WORDS[word]])


def write_tiny_text_recipe(tmp_path, name: str, train: str, quantize: str, rows: int = 200):
    """A tiny-BERT text-file recipe on ``rows`` generated reviews; ``train``/``quantize``: YAML maps."""
    model_dir = save_tiny_bert(tmp_path / "tiny-bert", num_labels=2)
    data = tmp_path / "reviews.csv"
    _write_csv(data, rows=rows)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
name: {name}
task: text-classification
model: {{name: tiny, path: {model_dir}}}
data: {{name: text-file, root: {data}, text_column: review, label_column: sentiment, max_length: 16}}
train: {train}
quantize: {quantize}
evaluate: {{tolerance_pp: 100, min_agreement: 0.0, batch_size: 16, warmup: 1, repeats: 2}}
"""
    )
    return recipe


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["bert", "distilbert"])  # DistilBERT takes no token_type_ids
def test_text_recipe_dynamic_end_to_end(tmp_path, capsys, architecture):
    model_dir = save_tiny_bert(tmp_path / "tiny-bert", num_labels=2, architecture=architecture)
    data = tmp_path / "reviews.csv"
    _write_csv(data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
name: tiny-text
task: text-classification
model: {{name: tiny, path: {model_dir}}}
data: {{name: text-file, root: {data}, text_column: review, label_column: sentiment, max_length: 16}}
train: {{max_steps: 30, batch_size: 16, lr: 0.001, optimizer: adamw, schedule: linear, warmup_steps: 2}}
quantize: {{method: dynamic}}
evaluate: {{tolerance_pp: 100, min_agreement: 0.9, batch_size: 16, warmup: 1, repeats: 2}}
"""
    )
    out = tmp_path / "out"
    # What a `qtk run` killed with SIGKILL leaves behind: a staging directory of a pid that is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".qtk-staging-{dead.pid}-x1y2z3"
    stale.mkdir(parents=True)
    (stale / "model_fp32.onnx").write_bytes(b"\0" * 4096)
    code = main(["run", str(recipe), "--out", str(out), "--cache", str(tmp_path / "cache")])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, report["checks"]
    assert not list(out.glob(".qtk-staging-*"))  # the dead run's staging is gone, ours published
    assert not list((tmp_path / "cache").rglob(".qtk-staging-*"))
    assert report["method"] == "dynamic"
    assert report["export"]["passes"]["integer_matmuls"] > 0
    assert report["metrics"]["int8_onnx"]["size_mb"] < report["metrics"]["fp32_onnx"]["size_mb"]
    assert report["parity"]["int8_onnx_vs_int8_torch_agreement"] >= 0.9
    assert {"model_int8.onnx", "labels.json", "deploy.json"} <= {p.name for p in (out / "deploy").iterdir()}
    capsys.readouterr()

    assert main(["predict", str(out / "deploy"), "a great film 3", "a dull film 2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("neg", "pos") for line in lines)


def test_missing_text_column_is_one_line(tmp_path, capsys):
    model_dir = save_tiny_bert(tmp_path / "tiny-bert", num_labels=2)
    data = tmp_path / "reviews.csv"
    _write_csv(data, rows=20)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\ntask: text-classification\nmodel: {{name: tiny, path: {model_dir}}}\n"
        f"data: {{name: text-file, root: {data}, text_column: body, label_column: sentiment}}\n"
        "quantize: {method: dynamic}\n"
    )
    capsys.readouterr()  # drop the setup's own output
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "body" in err[0]
    assert not (tmp_path / "out").exists()  # nothing is created before the input is valid
