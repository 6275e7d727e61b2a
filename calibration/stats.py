"""Small vectorised statistics shared by the stages."""

from __future__ import annotations

import numpy as np


def row_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median of ``values[i][valid[i]]`` for each row (float64); NaN for an empty row."""
    count = valid.sum(axis=1)
    ordered = np.sort(np.where(valid, values, np.inf), axis=1)
    rows = np.arange(values.shape[0])
    lo = ordered[rows, np.maximum(count - 1, 0) // 2]
    hi = ordered[rows, np.minimum(count // 2, values.shape[1] - 1)]
    with np.errstate(invalid="ignore"):
        median = 0.5 * (lo.astype(np.float64) + hi)
    return np.where(count > 0, median, np.nan)
