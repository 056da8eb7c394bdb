"""qparams from our observer configs match hand-computed values."""

from __future__ import annotations

import pytest
import torch

from qtoolkit.errors import QtkError
from qtoolkit.quantize.qconfig import ObserverSpec, build_qconfig, weight_range


def test_minmax_activation_qparams_match_hand_computation():
    qconfig = build_qconfig(ObserverSpec(activation="minmax", reduce_range=False))
    observer = qconfig.activation()
    observer(torch.tensor([-1.0, 0.5, 3.0]))
    scale, zero_point = observer.calculate_qparams()
    # affine uint8: scale = (max - min) / 255, zero_point = 0 - round(min / scale)
    expected_scale = (3.0 - (-1.0)) / 255
    assert scale.item() == pytest.approx(expected_scale, rel=1e-6)
    assert zero_point.item() == round(1.0 / expected_scale)


def test_reduce_range_halves_the_activation_range():
    observer = build_qconfig(ObserverSpec(activation="minmax", reduce_range=True)).activation()
    observer(torch.tensor([0.0, 1.27]))
    scale, zero_point = observer.calculate_qparams()
    assert scale.item() == pytest.approx(1.27 / 127, rel=1e-6)
    assert zero_point.item() == 0


def test_per_channel_symmetric_weight_qparams():
    observer = build_qconfig(ObserverSpec()).weight()
    weight = torch.tensor([[0.5, -2.0], [0.25, 0.1]])
    observer(weight)
    scales, zero_points = observer.calculate_qparams()
    # symmetric narrow-range int8 (default at 8 bits): scale_c = max|w_c| / ((127 - (-127)) / 2)
    assert scales.tolist() == pytest.approx([2.0 / 127, 0.25 / 127], rel=1e-6)
    wide = build_qconfig(ObserverSpec(narrow_range=False)).weight()
    wide(weight)
    assert wide.calculate_qparams()[0].tolist() == pytest.approx([2.0 / 127.5, 0.25 / 127.5], rel=1e-6)
    assert zero_points.tolist() == [0, 0]


def test_four_bit_weights_use_the_narrow_range():
    assert weight_range(4) == (-8, 7)
    observer = build_qconfig(ObserverSpec(weight="per_tensor", weight_bits=4)).weight()
    observer(torch.tensor([[-1.0, 0.75]]))
    scale, _ = observer.calculate_qparams()
    assert scale.item() == pytest.approx(1.0 / 7.5, rel=1e-6)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"activation": "kl-divergence"}, "unknown activation observer 'kl-divergence'"),
        ({"weight": "per_row"}, "unknown weight observer 'per_row'"),
        ({"weight_bits": 1}, "weight_bits must be between 2 and 8"),
    ],
)
def test_bad_observer_names_are_refused(spec, message):
    with pytest.raises(QtkError, match=message):  # on construction, before any qconfig is built
        ObserverSpec(**spec)
