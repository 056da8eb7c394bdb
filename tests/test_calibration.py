"""Calibration subsets are deterministic, balanced, fingerprinted; bad batches are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import needs_fmnist

from qtoolkit.data.calibration import (
    IterableReader,
    balanced_indices,
    calibration_set,
    checked_batches,
    fingerprint,
)
from qtoolkit.errors import QtkError


def test_balanced_indices_are_deterministic_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    first, second = balanced_indices(labels, 55, seed=3), balanced_indices(labels, 55, seed=3)
    assert np.array_equal(first, second)
    counts = np.bincount(labels[first], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 55
    assert not np.array_equal(first, balanced_indices(labels, 55, seed=4))


def test_fingerprint_changes_with_the_data():
    images = np.zeros((20, 2, 2), np.uint8)
    labels = np.arange(20) % 2
    indices = np.arange(0, 20, 2)
    before = fingerprint(indices, images, labels)
    images[4, 0, 0] = 1
    assert fingerprint(indices, images, labels) != before


@needs_fmnist
def test_shipped_manifest_matches_the_installed_dataset():
    from qtoolkit.data.fashion_mnist import load_arrays

    images, labels = load_arrays(None, "train")
    calib = calibration_set("fashion-mnist", images, labels, 512, 0)
    assert calib.source.startswith("manifest:") and calib.size == 512
    assert np.bincount(labels[calib.indices]).tolist() == [52, 52] + [51] * 8


def test_empty_calibration_is_refused():
    with pytest.raises(QtkError, match="calibration set is empty"):
        list(checked_batches([]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_batches_are_refused(bad):
    batches = [torch.zeros(2, 3), torch.tensor([[0.0, bad, 1.0]])]
    with pytest.raises(QtkError, match="calibration batch 1 contains NaN or Inf"):
        list(checked_batches(batches))


def test_reader_protocol_accepts_tuples_and_rewinds():
    reader = IterableReader([(torch.ones(1), 0), (torch.zeros(1), 1)])
    assert [b.item() for b in checked_batches(reader)] == [1.0, 0.0]
    assert [b.item() for b in checked_batches(reader)] == [1.0, 0.0]


def test_static_ptq_with_inputs_that_do_not_fit_is_one_clear_line() -> None:
    import qtoolkit as qtk

    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    pair = (torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(qtk.QtkError, match=r"example inputs do not match Sequential.forward") as caught:
        qtk.quantize_model(model, qtk.StaticQuantConfig(), calibration=[pair], example_input=pair)
    assert "\n" not in str(caught.value)
    with pytest.raises(qtk.QtkError, match="example_input is a list holding str: static PTQ takes") as caught:
        qtk.quantize_model(model, qtk.StaticQuantConfig(), calibration=[pair], example_input=["a"])
    assert "\n" not in str(caught.value)


def test_reader_splits_several_inputs_from_their_label() -> None:
    image, features = torch.ones(2, 3), torch.zeros(2, 5)
    batches = [(image, features, torch.tensor([0, 1]))]
    (got,) = checked_batches(batches, arity=2)
    assert isinstance(got, tuple) and len(got) == 2 and got[1].shape == (2, 5)
    (named,) = checked_batches([({"image": image, "features": features}, torch.tensor([0, 1]))])
    assert set(named) == {"image", "features"}
    with pytest.raises(QtkError, match="calibration batch 0 contains NaN"):
        list(checked_batches([(image, features * float("nan"))], arity=2))
