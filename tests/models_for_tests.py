"""Small models shared by tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn.quantized import FloatFunctional

from qtoolkit.errors import QtkError
from qtoolkit.models.bert import quiet_transformers


class StubbedNet(nn.Module):
    """Eager-mode net with QuantStub/DeQuantStub, Conv-BN-ReLU, a residual add, pools and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.skip = FloatFunctional()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial BN statistics so folding changes weights and bias
            self.bn1.running_mean.uniform_(-0.2, 0.2)
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn1.weight.uniform_(0.5, 1.5)
            self.bn1.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.skip.add_relu(self.conv2(y), y)
        y = self.avg(self.pool(y)).flatten(1)
        return self.dequant(self.fc(y))

    def fuse_model(self, is_qat: bool = False) -> None:
        fuse = tq.fuse_modules_qat if is_qat else tq.fuse_modules
        fuse(self, [["conv1", "bn1", "relu1"]], inplace=True)


class PlainNet(nn.Module):
    """An unmodified model (no stubs) for FX mode, with an op torch cannot quantize (GELU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = self.act(self.conv2(y)) + y
        return self.fc(y.mean(dim=(2, 3)))


def calibration_batches(count: int = 4, shape: tuple[int, ...] = (8, 3, 16, 16)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


def save_tiny_bert(
    directory: str | os.PathLike[str],
    num_labels: int = 2,
    seed: int = 0,
    init_range: float = 0.2,
    architecture: str = "bert",
) -> Path:
    """Write a tiny randomly initialised sequence classifier + WordPiece tokenizer.

    ``architecture`` is ``bert`` (BertForSequenceClassification) or ``distilbert``. 2 layers, hidden
    32, 4 heads, 64 max positions, a 90-token vocabulary (letters, digits, a few words).
    ``init_range`` > BERT's 0.02 makes logits large enough for quantization error to show.
    """
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'")
    words = ["the", "a", "film", "movie", "good", "bad", "great", "awful", "fun", "dull", "is", "was"]
    vocab_list = specials + letters + [f"##{c}" for c in letters] + words
    tokenizer = BertWordPieceTokenizer(vocab={t: i for i, t in enumerate(vocab_list)}, lowercase=True)
    labels = {
        "num_labels": num_labels,
        "id2label": {i: f"class_{i}" for i in range(num_labels)},
        "label2id": {f"class_{i}": i for i in range(num_labels)},
    }
    if architecture == "bert":
        config = BertConfig(
            vocab_size=len(vocab_list),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=init_range,
            **labels,
        )
        model_class: Any = BertForSequenceClassification
    elif architecture == "distilbert":
        config = DistilBertConfig(
            vocab_size=len(vocab_list),
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            initializer_range=init_range,
            **labels,
        )
        model_class = DistilBertForSequenceClassification
    else:
        raise QtkError(f"unknown tiny architecture {architecture!r}; use bert or distilbert.")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
