"""Top-1 accuracy of a classifier: correct / total over every example of a dataset or loader.

    top1 = (1 / N) * sum_i [argmax_c logits_i[c] == label_i]

Works for FP32 models on CPU/CUDA and for torch INT8 (converted) models, which run on CPU only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from qtoolkit.errors import QtkError

Forward = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, torch.Tensor]]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a user error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QtkError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise QtkError(f"device {device!r} is not a torch device; use auto, cpu or cuda") from exc


def _default_forward(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch[0].to(device), batch[1].to(device)
    return model(images), labels


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    dataset_or_loader: Dataset[Any] | DataLoader[Any],
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    *,
    forward: Forward | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> float:
    """Top-1 accuracy in [0, 1]. ``forward(model, batch, device) -> (logits, labels)`` handles
    non-tuple batches (e.g. dicts for BERT); the model is put in eval mode and left there."""
    target = resolve_device(device)
    forward = forward or _default_forward
    if isinstance(dataset_or_loader, DataLoader):
        loader = dataset_or_loader
    else:
        loader = DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    model.eval()
    correct, total = 0, 0
    bar = tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True)
    for batch in bar:
        logits, labels = forward(model, batch, target)
        correct += int((logits.argmax(-1) == labels).sum())
        total += int(labels.numel())
        bar.set_postfix(acc=f"{correct / total:.4f}", refresh=False)
    if total == 0:
        raise QtkError("evaluation dataset is empty; check the data path and split")
    return correct / total
