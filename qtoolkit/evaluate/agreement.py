"""Label-free fidelity of a quantized model: agreement of its logits with the FP32 model's.

Over N samples with reference logits r_i (FP32) and candidate logits c_i:
* top-1 agreement  = (1/N) Σ [argmax r_i = argmax c_i]
* top-5 overlap    = (1/N) Σ |top5(r_i) ∩ top5(c_i)| / 5
* logit cosine     = (1/N) Σ r_i·c_i / (‖r_i‖ ‖c_i‖)
Works for any image set (no labels needed) and any runner that maps a batch to logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm.auto import tqdm

Runner = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class Agreement:
    top1: float
    top5_overlap: float
    cosine: float
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def agreement_metrics(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> Agreement:
    """Agreement of ``candidate`` logits (N, C) with ``reference`` logits (N, C); see module docstring."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"logits must both be (N, C); got {reference.shape} and {candidate.shape}")
    top1 = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    k = min(k, reference.shape[1])
    ref_k = np.argpartition(-reference, k - 1, axis=1)[:, :k]
    cand_k = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_k, cand_k, strict=True)])
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    return Agreement(top1, float(overlap), float(np.mean(cosine)), len(reference))


def torch_runner(model: nn.Module) -> Runner:
    model.eval()

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(batch).float().numpy()

    return run


def onnx_runner(session: ort.InferenceSession) -> Runner:
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.numpy()})[0]


def collect_logits(run: Runner, batches: Iterable[torch.Tensor], desc: str = "logits") -> np.ndarray:
    """Logits of ``run`` over ``batches`` (tensors, or (input, ...) tuples), concatenated."""
    out = []
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        out.append(run(batch[0] if isinstance(batch, tuple | list) else batch))
    return np.concatenate(out)
