"""qtoolkit's onnxruntime sessions: which ORT fusions they skip, and that the result is unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from qtoolkit.runtime.ort import SLOW_FUSIONS, make_session


def _residual_layer_norm(path, hidden: int = 16) -> None:
    """y = LayerNorm(x + r): the pattern ORT fuses into SkipLayerNormalization."""
    rng = np.random.default_rng(0)
    gamma = onnx.numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "gamma")
    beta = onnx.numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "beta")
    shape = ["batch", "seq", hidden]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "r"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
        ],
        "residual_ln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "r")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [gamma, beta],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _ops_run(path, tmp_path, **kwargs) -> list[str]:
    optimized = tmp_path / "optimized.onnx"
    make_session(path, optimized_model_path=optimized, **kwargs)
    return [node.op_type for node in onnx.load(str(optimized)).graph.node]


def test_sessions_skip_slow_fusions_and_compute_the_same(tmp_path) -> None:
    assert "SkipLayerNormFusion" in SLOW_FUSIONS
    model = tmp_path / "residual_ln.onnx"
    _residual_layer_norm(model)
    assert "SkipLayerNormalization" not in _ops_run(model, tmp_path)
    assert "SkipLayerNormalization" in _ops_run(model, tmp_path, disabled_optimizers=())  # ORT's default

    rng = np.random.default_rng(1)
    feeds = {name: rng.normal(size=(2, 5, 16)).astype(np.float32) for name in ("x", "r")}
    ours = make_session(model).run(None, feeds)[0]
    fused = make_session(model, disabled_optimizers=()).run(None, feeds)[0]
    np.testing.assert_allclose(ours, fused, atol=1e-5)
