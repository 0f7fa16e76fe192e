"""MSE calibration: per tensor, the clipping range that minimises the expected int8 quantization error.

onnxruntime.quantization has MinMax (no clipping: one outlier widens every step), Percentile (one fixed tail
fraction for every tensor) and Entropy (KL divergence over 128 quantized bins). None minimises the error the
next layer sees. Here ORT's own histogram collector gathers each tensor's distribution, then for every tensor
a grid of (low, high) clipping points is scored by

    clipped tails: sum of (x - bound)^2,   inside: step^2 / 12 per value,   step = (high - low) / levels

and the best pair becomes the tensor's range (`t2tedge.quantize.ranges` writes it as ORT's calibration cache,
so `quantize_static` places Q/DQ exactly as for MinMax, only with these ranges).
"""

from __future__ import annotations

import numpy as np

GRID = np.linspace(0.02, 1.0, 50)  # fractions of the observed extreme tried as the clipping point
HISTOGRAM_BINS = 2048


def _tail_errors(centers: np.ndarray, counts: np.ndarray, bounds: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each bound: the squared clipping error of the values beyond it and how many values stay inside."""
    beyond = centers[None, :] > bounds[:, None] if upper else centers[None, :] < bounds[:, None]
    error = (np.where(beyond, (centers[None, :] - bounds[:, None]) ** 2, 0.0) * counts[None, :]).sum(axis=1)
    return error, (np.where(beyond, 0, counts[None, :])).sum(axis=1)


def mse_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float, symmetric: bool,
              levels: int = 255) -> tuple[float, float]:
    """The (low, high) clipping range minimising the quantization MSE of the histogram `counts` over `edges`."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    if total == 0 or high <= low:
        return float(low), float(high)
    centers = (edges[:-1] + edges[1:]) / 2
    low, high = min(low, 0.0), max(high, 0.0)  # ORT makes zero exactly representable, as here
    if symmetric:
        bounds = GRID * max(-low, high)
        upper_error, _ = _tail_errors(centers, counts, bounds, upper=True)
        lower_error, _ = _tail_errors(centers, counts, -bounds, upper=False)
        inside = total - (counts[None, :] * (np.abs(centers)[None, :] > bounds[:, None])).sum(axis=1)
        error = upper_error + lower_error + inside * (2 * bounds / (levels - 1)) ** 2 / 12
        best = bounds[int(np.argmin(error))]
        return float(-best), float(best)
    highs = GRID * high if high > 0 else np.zeros(1)
    lows = GRID * low if low < 0 else np.zeros(1)
    upper_error, upper_kept = _tail_errors(centers, counts, highs, upper=True)
    lower_error, lower_kept = _tail_errors(centers, counts, lows, upper=False)
    # Values kept by both bounds: those not beyond the high one, minus those beyond the low one.
    inside = upper_kept[None, :] - (total - lower_kept)[:, None]
    steps = (highs[None, :] - lows[:, None]) / levels
    error = lower_error[:, None] + upper_error[None, :] + inside * steps ** 2 / 12
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(lows[i]), float(highs[j])
