"""QAT models go through the same INT8 QDQ ONNX export, with parity, at 8 and 4 weight bits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from models_for_tests import StubbedNet
from torch.utils.data import TensorDataset

from qtoolkit import export_int8_onnx
from qtoolkit.evaluate.parity import check_parity
from qtoolkit.quantize import QATConfig, quantize
from qtoolkit.train import TrainConfig


def _data(n=32):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, 16, 16, generator=generator)
    return TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0].mean(dim=(1, 2)) > 0).long())


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_qat_model_exports_with_parity(tmp_path, weight_bits):
    data = _data()
    config = QATConfig(weight_bits=weight_bits, reduce_range=False, freeze_bn_step=2)
    train = TrainConfig(epochs=1, batch_size=8, lr=0.01)
    result = quantize(
        StubbedNet(), config, train_dataset=data, train_config=train, example_input=data[0][0][None]
    )
    assert result.method == "qat" and result.details["train_steps"] == 4
    path = tmp_path / "qat.onnx"
    export_int8_onnx(result.int8_model, data[0][0][None], path)
    parity = check_parity(result.int8_model, path, [data.tensors[0]])
    assert parity["agreement"] == 1.0
    weights = [i for i in onnx.load(str(path)).graph.initializer if i.name.endswith("int_weight")]
    assert all(i.data_type == onnx.TensorProto.INT8 for i in weights)
    values = np.concatenate([onnx.numpy_helper.to_array(i).ravel() for i in weights])
    low, high = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
    assert values.min() >= low and values.max() <= high
    if weight_bits == 4:
        assert len(np.unique(values)) <= 16
