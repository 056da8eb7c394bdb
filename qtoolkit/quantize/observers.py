"""Activation range setting beyond min/max: percentile and MSE range search over a histogram.

Both observers are torch.ao ``HistogramObserver`` subclasses: they collect the same running
histogram (``bins`` bins over the observed [min, max], re-binned when a batch widens it) and differ
only in how :meth:`_non_linear_param_search` turns it into the clipping range [lo, hi]; the qparams
then follow as for min/max (scale = (hi - lo) / (q_max - q_min), zero_point = q_min - round(lo / s),
with 0 always inside the range), so torch.ao's convert and the QDQ export carry them unchanged.

* ``PercentileObserver``: lo, hi = the ``(100 - p)``-th and ``p``-th percentiles of the histogram's
  CDF (linear within a bin); outliers above the p-th percentile saturate. ``p = 99.99`` by default.
* ``MSEObserver``: minimises the histogram's expected squared rounding + clipping error

      E(lo, hi) = Σ_b n_b · (c_b − s · clamp(round((c_b − lo) / s), 0, L) − lo)²,   s = (hi − lo) / L

  (c_b the bin centres, n_b the counts, L = q_max − q_min) over a grid of candidates
  lo = α · min, hi = β · max with α, β ∈ {k / steps}, searched jointly (coarse steps).

Zero is kept in the range (lo ≤ 0 ≤ hi), as the affine quint8 grid needs an exact zero.

For weights, ``MSEPerChannelWeightObserver`` (a ``PerChannelMinMaxObserver``) clips each output
channel c of a symmetric grid to α_c · max|W_c|, with

    α_c = argmin_α Σ_i (W_ci − s · clamp(round(W_ci / s), q_min, q_max))²,   s = α · max|W_c| / ((q_max − q_min) / 2)

over α ∈ {α_min, α_min + 1/steps, …, 1} (torch's symmetric scale formula, so convert reproduces the
grid searched). At 8 bits α ≈ 1; at 4 bits a channel with a few large weights trades them for finer
steps everywhere else (the classic MSE range setting of 4-bit PTQ; AdaRound then rounds on that grid).
"""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver


def _edges(observer: HistogramObserver) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin centres, counts) of the observer's histogram."""
    lo, hi = observer.min_val.item(), observer.max_val.item()
    bins = observer.histogram.numel()
    width = (hi - lo) / bins
    centres = lo + width * (torch.arange(bins, dtype=torch.float64) + 0.5)
    return centres, observer.histogram.to(torch.float64)


class PercentileObserver(HistogramObserver):
    """Clip the range to the [100 − p, p] percentiles of the calibration histogram (module docstring)."""

    def __init__(self, percentile: float = 99.99, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], not {percentile}")
        self.percentile = percentile

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.min_val.item(), self.max_val.item()
        counts = self.histogram.to(torch.float64)
        total = counts.sum()
        if total <= 0 or hi <= lo:
            return self.min_val, self.max_val
        edges = torch.linspace(lo, hi, counts.numel() + 1, dtype=torch.float64)
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), counts.cumsum(0) / total])
        tail = 1.0 - self.percentile / 100.0

        def at(q: float) -> float:  # inverse CDF, linear inside the bin that crosses q
            i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(1, len(cdf) - 1))
            span = (cdf[i] - cdf[i - 1]).item()
            frac = 0.0 if span <= 0 else (q - cdf[i - 1].item()) / span
            return edges[i - 1].item() + frac * (edges[i] - edges[i - 1]).item()

        new_lo, new_hi = min(at(tail), 0.0), max(at(1.0 - tail), 0.0)
        dtype = self.min_val.dtype
        return torch.tensor(new_lo, dtype=dtype), torch.tensor(new_hi, dtype=dtype)


class MSEObserver(HistogramObserver):
    """Pick [lo, hi] minimising the histogram's expected squared quantization error (module docstring)."""

    def __init__(self, steps: int = 40, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.steps = steps

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.min_val.item(), self.max_val.item()
        if self.histogram.sum() <= 0 or hi <= lo:
            return self.min_val, self.max_val
        centres, counts = _edges(self)
        keep = counts > 0
        centres, counts = centres[keep], counts[keep]
        levels = float(self.quant_max - self.quant_min)
        fractions = torch.arange(1, self.steps + 1, dtype=torch.float64) / self.steps
        lows = (min(lo, 0.0) * fractions) if lo < 0 else torch.zeros(1, dtype=torch.float64)
        highs = (max(hi, 0.0) * fractions) if hi > 0 else torch.zeros(1, dtype=torch.float64)
        grid_lo, grid_hi = torch.meshgrid(lows, highs, indexing="ij")
        grid_lo, grid_hi = grid_lo.reshape(-1, 1), grid_hi.reshape(-1, 1)
        scale = ((grid_hi - grid_lo) / levels).clamp_min(1e-12)
        quantized = torch.clamp(torch.round((centres - grid_lo) / scale), 0, levels) * scale + grid_lo
        error = ((centres - quantized) ** 2 * counts).sum(1)
        best = int(error.argmin())
        dtype = self.min_val.dtype
        return (
            torch.tensor(grid_lo[best].item(), dtype=dtype),
            torch.tensor(grid_hi[best].item(), dtype=dtype),
        )


class MSEPerChannelWeightObserver(PerChannelMinMaxObserver):
    """Per output channel, the symmetric clipping ratio with the least squared weight error (docstring)."""

    def __init__(self, steps: int = 50, min_ratio: float = 0.3, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.steps, self.min_ratio = steps, min_ratio

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        super().forward(x_orig)  # running per-channel min/max (weights are observed once)
        weight = x_orig.detach().float().transpose(0, self.ch_axis).reshape(x_orig.shape[self.ch_axis], -1)
        amax = torch.maximum(-self.min_val, self.max_val).clamp_min(1e-12)
        half_levels = (self.quant_max - self.quant_min) / 2
        best_error = torch.full_like(amax, float("inf"))
        best_ratio = torch.ones_like(amax)
        for k in range(self.steps + 1):
            ratio = self.min_ratio + (1.0 - self.min_ratio) * k / self.steps
            scale = (ratio * amax / half_levels).unsqueeze(1)
            error = (
                (weight - scale * torch.clamp(torch.round(weight / scale), self.quant_min, self.quant_max))
                ** 2
            ).sum(1)
            better = error < best_error
            best_error, best_ratio = (
                torch.where(better, error, best_error),
                torch.where(better, ratio, best_ratio),
            )
        self.min_val.copy_(-best_ratio * amax)
        self.max_val.copy_(best_ratio * amax)
        return x_orig
