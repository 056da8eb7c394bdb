"""Dynamic INT8 of user models through the public verbs only: quantize_model → export_int8_onnx →
check_parity, on an MLP, Linear in custom modules with shared weights and 2-D/3-D inputs, two-input
models fed as a tuple and as a dict, and the bad inputs that must fail with one line."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from qtoolkit import DynamicQuantConfig, QtkError, check_parity, export_int8_onnx, quantize_model
from qtoolkit.runtime.ort import make_session

EXACT = 1e-5  # same integer arithmetic as torch; only float summation order differs


class Block(nn.Module):
    """A custom module holding Linears, one of them applied twice (shared weights)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class TwoInputs(nn.Module):
    """Tokens (3-D features) and a 2-D side vector; Linear on both; a keyword-only-friendly signature."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = Block(8)
        self.side = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, frames: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        shared = self.tokens(self.tokens(frames))  # the same Block twice: shared weights
        return self.head(shared.mean(1) + self.side(extra))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()


def test_mlp_sequential_quantize_export_parity(tmp_path: Path) -> None:
    model = _mlp()
    quantized = quantize_model(model, DynamicQuantConfig())
    result = export_int8_onnx(quantized, torch.randn(1, 16), tmp_path / "mlp.onnx")  # batch-1 example
    assert sorted(result.linears) == ["0", "2", "4"]
    batches = [torch.randn(b, 16) for b in (1, 7, 32)]
    parity = check_parity(quantized.int8_model, result.path, batches)
    with torch.no_grad():
        gap = max(float((quantized.int8_model(x) - model(x)).abs().max()) for x in batches)
    print(f"MLP: max|onnx-int8| {parity['max_abs_diff']:.2e}, max|int8-fp32| {gap:.2e}")
    assert parity["samples"] == 40 and parity["agreement"] == 1.0
    assert parity["max_abs_diff"] <= EXACT < gap / 20
    # the torch INT8 module alone (no QuantizedModel) takes the same route
    again = export_int8_onnx(quantized.int8_model, torch.randn(3, 16), tmp_path / "again.onnx")
    assert again.linears == result.linears


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_two_input_model_with_shared_weights(form: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TwoInputs().eval()
    quantized = quantize_model(model, DynamicQuantConfig())
    frames, extra = torch.randn(2, 6, 8), torch.randn(2, 5)
    example = (frames, extra) if form == "tuple" else {"extra": extra, "frames": frames}
    result = export_int8_onnx(quantized, example, tmp_path / "two.onnx")
    session = make_session(result.path)
    inputs = {value.name: value.shape for value in session.get_inputs()}
    assert set(inputs) == {"frames", "extra"}
    assert inputs["frames"][2] == 8 and inputs["extra"][1] == 5  # feature axes fixed, the rest dynamic
    assert not isinstance(inputs["frames"][1], int) and not isinstance(inputs["extra"][0], int)
    # each weight is quantized once, even where the module runs twice (2 MatMuls share it)
    ops = [node.op_type for node in onnx.load(str(result.path)).graph.node]
    assert ops.count("MatMulInteger") == 6 and "MatMul" not in ops
    batches = [
        (torch.randn(b, s, 8), torch.randn(b, 5))
        if form == "tuple"
        else {"frames": torch.randn(b, s, 8), "extra": torch.randn(b, 5)}
        for b, s in ((1, 3), (4, 9))
    ]
    parity = check_parity(quantized.int8_model, result.path, batches)
    print(f"two inputs ({form}): max|onnx-int8| {parity['max_abs_diff']:.2e}")
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] <= EXACT


def test_no_quantizable_module_is_one_line(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(QtkError, match="selected no Linear/Embedding/LSTM/GRU") as error:
        quantize_model(model, DynamicQuantConfig())
    assert "\n" not in str(error.value)
    with pytest.raises(QtkError, match=r"exclude=\('\*'\,\)"):  # everything excluded: the patterns named
        quantize_model(nn.Sequential(nn.Linear(4, 2)), DynamicQuantConfig(exclude=("*",)))
    with pytest.raises(QtkError, match="has no quantized module"):
        export_int8_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("rnn", "kept"),
    [(nn.RNN(4, 8), "rnn (RNN)"), (nn.GRU(4, 8, bias=False), "rnn (GRU without bias)")],
)
def test_recurrent_module_torch_cannot_quantize_stays_float(
    rnn: nn.Module, kept: str, tmp_path: Path
) -> None:
    """As in onnxruntime's quantize_dynamic: the module stays float, named in one warning and in the
    details; the rest of the model is INT8 and exports with exact parity."""
    last_step = LastStep(rnn, nn.Linear(rnn.hidden_size, 2)).eval()
    with pytest.warns(UserWarning, match="kept in float") as caught:
        quantized = quantize_model(last_step, DynamicQuantConfig())
    said = [str(w.message) for w in caught if "kept in float" in str(w.message)]
    assert len(said) == 1 and kept in said[0] and "\n" not in said[0]
    assert quantized.details["modules"] == {"head": "linear"}
    assert quantized.details["float_modules"] == [kept]
    x = torch.randn(5, 2, 4)
    export_int8_onnx(quantized, x, tmp_path / "int8.onnx")
    parity = check_parity(quantized.int8_model, tmp_path / "int8.onnx", [x])
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] <= EXACT
    excluded = quantize_model(last_step, DynamicQuantConfig(exclude=("rnn",)))  # excluded: nothing to say
    assert excluded.details["float_modules"] == []


def test_projected_lstm_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(QtkError, match="LSTM with proj_size=3") as error:
        quantize_model(nn.Sequential(nn.LSTM(4, 8, proj_size=3)), DynamicQuantConfig())
    assert "exclude=('0',)" in str(error.value) and "\n" not in str(error.value)
    # kept float in torch, the export still refuses it: no ONNX form onnxruntime runs, one line, no file
    last_step = LastStep(nn.LSTM(4, 8, proj_size=3), nn.Linear(3, 2)).eval()
    quantized = quantize_model(last_step, DynamicQuantConfig(exclude=("rnn",)))
    with pytest.raises(QtkError, match="no ONNX form") as error:
        export_int8_onnx(quantized, torch.randn(5, 2, 4), tmp_path / "way_out.onnx")
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


class LastStep(nn.Module):
    """A recurrent layer (sequence-first) and a Linear head on its last step."""

    def __init__(self, rnn: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][-1])


def test_inputs_not_matching_forward_are_one_line(tmp_path: Path) -> None:
    quantized = quantize_model(TwoInputs().eval(), DynamicQuantConfig())
    path = tmp_path / "bad.onnx"
    for bad, fragment in [
        (torch.randn(2, 6, 8), "missing a required argument: 'extra'"),
        (
            {"frames": torch.randn(2, 6, 8), "extra": torch.randn(2, 5), "mask": torch.ones(2)},
            "unexpected keyword argument 'mask'",
        ),
        ((torch.randn(2, 6, 8), torch.randn(2, 5), torch.randn(2)), "too many positional arguments"),
    ]:
        with pytest.raises(QtkError, match=r"do not match TwoInputs\.forward") as error:
            export_int8_onnx(quantized, bad, path)
        assert fragment in str(error.value) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


class WaveformClassifier(nn.Module):
    """Audio-style: a float Conv1d front end on [batch, 1, samples] (axis 1 is channels, not time)."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(1, 16, 9, stride=4), nn.ReLU())
        self.mix = nn.Linear(16, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        frames = self.front(waveform).transpose(1, 2)  # [batch, time, 16]
        return self.head(torch.relu(self.mix(frames)).mean(dim=1))


def test_conv1d_front_end_exports_with_a_batch_axis_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WaveformClassifier().eval()
    quantized = quantize_model(model, DynamicQuantConfig())
    path = export_int8_onnx(quantized, torch.randn(1, 1, 400), tmp_path / "wave.onnx").path
    batch = torch.randn(3, 1, 400)
    session = make_session(path, 1)
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    with torch.no_grad():
        want = quantized.int8_model(batch).numpy()
    assert abs(got - want).max() < 1e-3
    dims = [d.dim_param or d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 400] and isinstance(dims[0], str)  # batch dynamic, channels and samples fixed


def test_image_batch_keeps_its_channels_static_without_a_warning(tmp_path: Path) -> None:
    """Axis 1 of a 4-D float input is channels, not a sequence: exported static, and no warning
    about an axis the model fixes (which a user loop over a sequence axis gets)."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    quantized = quantize_model(model.eval(), DynamicQuantConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        path = export_int8_onnx(quantized, torch.randn(2, 3, 16, 16), tmp_path / "cnn.onnx").path
    dims = [d.dim_param or d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 16, 16] and isinstance(dims[0], str)


class TokenEncoder(nn.Module):
    """Token ids → nn.TransformerEncoder (optionally with a padding mask) → mean → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(self.embed(input_ids), src_key_padding_mask=padding_mask).mean(1))


def test_attention_rewrite_takes_a_dict_example_and_names_why_masked_calls_stay_float(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TokenEncoder().eval()
    ids = torch.randint(0, 50, (3, 7))
    quantized = quantize_model(model, DynamicQuantConfig(), example_input={"input_ids": ids})
    kinds = quantized.details["modules"]
    assert kinds["encoder.layers.0.self_attn.qkv"] == kinds["encoder.layers.0.self_attn.out_proj"] == "linear"
    path = export_int8_onnx(quantized, {"input_ids": ids}, tmp_path / "enc.onnx").path
    parity = check_parity(quantized.int8_model, path, [{"input_ids": torch.randint(0, 50, (2, 9))}])
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] <= EXACT
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 5:] = True
    with pytest.warns(UserWarning, match="covers self-attention called without masks"):
        masked = quantize_model(
            model, DynamicQuantConfig(), example_input={"input_ids": ids, "padding_mask": mask}
        )
    assert "encoder.layers.0.self_attn.qkv" not in masked.details["modules"]


class PackedLSTM(nn.Module):
    """pack_padded_sequence before the LSTM: torch.export cannot trace it (data-dependent sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = (
            nn.Embedding(50, 8),
            nn.LSTM(8, 16, batch_first=True),
            nn.Linear(16, 2),
        )

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(input_ids), lengths, batch_first=True, enforce_sorted=False
        )
        return self.head(self.rnn(packed)[1][0][-1])


def test_failed_export_names_the_root_cause_in_one_plain_line(tmp_path: Path) -> None:
    from qtoolkit import export_onnx

    example = {"input_ids": torch.randint(0, 50, (3, 7)), "lengths": torch.tensor([7, 5, 2])}
    with pytest.raises(QtkError, match=r"ONNX export of PackedLSTM failed: TypeError: ") as error:
        export_onnx(PackedLSTM().eval(), example, tmp_path / "packed.onnx")
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message and "step 1/3" not in message
    assert not list(tmp_path.iterdir())


class DictOutput(nn.Module):
    """Returns a dict (logits first, then an auxiliary value), as many user models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.relu(self.body(x))
        return {"logits": self.head(hidden), "energy": hidden.pow(2).mean()}


def test_dict_output_model_checks_parity_on_its_first_value(tmp_path: Path) -> None:
    from qtoolkit import StaticQuantConfig

    torch.manual_seed(0)
    model = DictOutput().eval()
    batches = [torch.randn(4, 8) for _ in range(3)]
    for config, extra in [
        (DynamicQuantConfig(), {}),
        (StaticQuantConfig(), {"calibration": batches, "example_input": batches[0][:1]}),
    ]:
        quantized = quantize_model(model, config, **extra)
        path = tmp_path / f"{config.method}.onnx"
        export_int8_onnx(quantized, batches[0][:1], path)
        parity = check_parity(quantized, path, batches)
        assert parity["samples"] == 12 and parity["agreement"] == 1.0, parity
