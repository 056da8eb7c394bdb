"""Top-1 accuracy of a classifier: correct / total over every example of a dataset or loader.

    top1 = (1 / N) * sum_i [argmax_c logits_i[c] == label_i]

Works for FP32 models on CPU/CUDA and for torch INT8 (converted) models, which run on CPU only.
The loop is :func:`qtoolkit.runtime.batches.collect_logits` with the torch runner; the metric is
:func:`qtoolkit.evaluate.metrics.accuracy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from qtoolkit.errors import QtkError
from qtoolkit.evaluate.metrics import accuracy, predictions
from qtoolkit.runtime.batches import collect_logits
from qtoolkit.runtime.ort import to_numpy
from qtoolkit.runtime.torch_runner import resolve_device, torch_runner

Forward = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, torch.Tensor]]


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
    """Top-1 accuracy in [0, 1] over ``(inputs, label)`` batches (inputs: a tensor, a tuple or a
    mapping of tensors). ``forward(model, batch, device) -> (logits, labels)`` handles other batch
    shapes; the model is put in eval mode and left there."""
    target = resolve_device(device)
    if isinstance(dataset_or_loader, DataLoader):
        loader = dataset_or_loader
    else:
        loader = DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    model.eval()
    if forward is None:
        run, batches = torch_runner(model, target), loader
    else:  # the custom forward computes logits and labels together: feed its logits through
        custom = forward

        def computed() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for batch in loader:
                yield custom(model, batch, target)

        run, batches = (lambda logits: to_numpy(logits.float())), computed()
    collected = collect_logits({"model": run}, batches, desc="evaluate", progress=progress)
    if collected.labels is None:
        raise QtkError("evaluation batches have no labels; pass (inputs, label) batches.")
    return accuracy(predictions(collected.logits["model"]), collected.labels)
