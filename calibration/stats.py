"""Small vectorised statistics shared by the stages."""

from __future__ import annotations

import numpy as np

#: Standard deviation per unit of median absolute deviation, for Gaussian noise.
MAD_TO_SIGMA = 1.482602218505602


class LeastSquares:
    """Least squares for one design and many right-hand sides: normal equations plus refinement.

    For tall, thin, well-conditioned designs (the WCS polynomials in
    coordinates normalised to about +-1, the background spline on its sample
    grid) the normal equations are accurate enough, and one step of iterative
    refinement restores full precision. LAPACK's SVD solver
    (``numpy.linalg.lstsq``) is avoided on purpose: with a multi-threaded BLAS
    on a loaded machine it was measured 300 times slower for these sizes.
    """

    def __init__(self, design: np.ndarray) -> None:
        self.design = design
        self.gram = design.T @ design

    def __call__(self, rhs: np.ndarray) -> np.ndarray:
        coef = np.linalg.solve(self.gram, self.design.T @ rhs)
        coef += np.linalg.solve(self.gram, self.design.T @ (rhs - self.design @ coef))
        return coef


def mad_sigma(values: np.ndarray, *, centre: float | None = None) -> float:
    """Robust standard deviation: ``MAD_TO_SIGMA`` times the median absolute deviation
    from ``centre`` (default: the median of ``values``)."""
    values = np.asarray(values, dtype=float)
    if centre is None:
        centre = float(np.median(values))
    return MAD_TO_SIGMA * float(np.median(np.abs(values - centre)))


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


def grid_median(values: np.ndarray, *, positive: bool = False, max_samples: int = 1 << 20) -> float:
    """Median of the finite (and, with ``positive``, > 0) values of a 2-d plane on a regular
    grid of at most ~``max_samples`` pixels; NaN when none qualifies.

    For a plane that varies slowly (a sky variance or noise map) every ``s``-th
    pixel along each axis gives the median to far better than a percent, without
    copying or sorting the whole plane.
    """
    plane = np.asarray(values)
    step = max(1, int(np.sqrt(plane.size / max_samples))) if plane.ndim == 2 else 1
    sub = plane[::step, ::step] if plane.ndim == 2 else plane.ravel()
    good = np.isfinite(sub)
    if positive:
        good &= sub > 0
    sub = sub[good]
    if sub.size == 0 and step > 1:  # nothing on the grid: use every pixel
        return grid_median(plane, positive=positive, max_samples=plane.size)
    return float(np.median(sub)) if sub.size else float("nan")
