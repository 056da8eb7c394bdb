"""Pure metric functions over arrays (numpy only): what every evaluation reports.

With logits z_i (N, C), predictions p_i = argmax_c z_i[c], labels y_i, and two models a, b:
* accuracy          = (1/N) Σ [p_i = y_i]
* agreement         = (1/N) Σ [p_i(a) = p_i(b)]
* max |Δlogit|      = max_{i,c} |z_i(a)[c] − z_i(b)[c]|
* top-5 overlap     = (1/N) Σ |top5(a_i) ∩ top5(b_i)| / 5
* logit cosine      = (1/N) Σ a_i·b_i / (‖a_i‖ ‖b_i‖)
* KL(a ‖ b)         = (1/N) Σ_i Σ_c softmax(a_i)[c] · (log softmax(a_i)[c] − log softmax(b_i)[c])
* McNemar (exact)   on paired correctness, see :func:`mcnemar`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def predictions(logits: np.ndarray) -> np.ndarray:
    """Top-1 class per sample."""
    return np.asarray(logits).argmax(-1)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class (ids, not logits) equals the label."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape:
        raise ValueError(f"predictions {predicted.shape} and labels {labels.shape} differ in shape")
    return float(np.mean(predicted == labels)) if labels.size else float("nan")


def kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over samples of KL(softmax(reference) ‖ softmax(logits)), in nats (float64)."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(reference_logits), log_softmax(logits)
    return float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose top-1 predictions (class ids) agree."""
    return accuracy(np.asarray(a), np.asarray(b))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference between two logit arrays of the same shape."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logits {a.shape} and {b.shape} differ in shape")
    return float(np.abs(a - b).max()) if a.size else 0.0


@dataclass(frozen=True)
class Agreement:
    top1: float
    top5_overlap: float
    cosine: float
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def agreement_metrics(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> Agreement:
    """Label-free agreement of ``candidate`` logits (N, C) with ``reference`` logits (N, C): top-1
    agreement, top-k overlap, mean logit cosine (module docstring)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"logits must both be (N, C); got {reference.shape} and {candidate.shape}")
    top1 = agreement(reference.argmax(1), candidate.argmax(1))
    k = min(k, reference.shape[1])
    ref_k = np.argpartition(-reference, k - 1, axis=1)[:, :k]
    cand_k = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_k, cand_k, strict=True)])
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    return Agreement(top1, float(overlap), float(np.mean(cosine)), len(reference))


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, float]:
    """Exact two-sided McNemar test on paired correctness: are a and b equally accurate?

    With n01 = only a right, n10 = only b right: p = min(1, 2 · P[X ≤ min(n01, n10)]),
    X ~ Binomial(n01 + n10, 1/2).
    """
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail)}
