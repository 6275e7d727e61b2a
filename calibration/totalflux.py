"""Light outside the calibration aperture: the curve-of-growth correction.

LSST calibrates to a 12 pix aperture (aperture corrections bring the PSF and
small-aperture fluxes onto it), which for a PSF with Moffat-like wings misses
about 1% of a star's light, so its zero point refers to that aperture, not to
total flux. Here the missing light is measured on bright, isolated PSF stars:
the ratio of each larger aperture to the calibration aperture (the curve of
growth) is averaged over the stars, and the ratio at the radius where the
curve flattens is the factor that turns calibration-aperture fluxes into total
fluxes. The photometric calibration multiplies the calibration flux by it, so
the zero point refers to total flux, and stores both numbers.

The curve "flattens" at the first radius beyond which the next aperture adds
less than ``flat_tolerance`` or less than twice its own uncertainty; when it
never does, the outermost aperture is used and the result says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from .configbase import doc_field
from .stats import mad_sigma

__all__ = ["TotalFluxConfig", "TotalFluxCorrection", "measure_total_flux_correction"]

_FLAGS = ("flag_edge", "flag_saturated", "flag_saturated_center", "flag_bad", "flag_cr_center",
          "flag_interpolated_center", "flag_nodata")


@dataclasses.dataclass(frozen=True)
class TotalFluxConfig:
    """Configuration of :func:`measure_total_flux_correction`."""

    apply: bool = doc_field(True, "Refer the zero point to total flux (else to the calibration aperture, as LSST).")
    min_stars: int = doc_field(5, "Fewest stars the correction may rest on; fewer: no correction, a warning.")
    star_column: str = doc_field("calib_psf_used", "Boolean column choosing the stars (bright, point-like).")
    isolation_margin_pix: float = doc_field(
        2.0, "A star has no other detection within the outermost aperture radius plus this (pix)."
    )
    flat_tolerance: float = doc_field(
        0.002, "The curve has flattened when the next aperture adds less than this fraction of the light."
    )

    def validate(self) -> None:
        if self.min_stars < 1:
            raise ValueError(f"min_stars must be >= 1, got {self.min_stars}")
        if self.flat_tolerance <= 0:
            raise ValueError(f"flat_tolerance must be > 0, got {self.flat_tolerance}")


@dataclasses.dataclass(frozen=True)
class TotalFluxCorrection:
    """Factor from calibration-aperture flux to total flux.

    Attributes
    ----------
    factor, factor_err : float
        Total / calibration-aperture flux, and its standard error.
    radius_pix : float
        Aperture radius (pix) where the curve of growth flattened.
    flattened : bool
        False when the curve still grew at the outermost aperture.
    n_stars : int
        Stars averaged.
    curve : list of (radius_pix, ratio, ratio_err)
        The mean curve of growth from the calibration aperture (ratio 1) out.
    """

    factor: float
    factor_err: float
    radius_pix: float
    flattened: bool
    n_stars: int
    curve: list[tuple[float, float, float]]

    def to_metadata(self) -> dict[str, Any]:
        return {
            "APCORR_TOTAL": self.factor,
            "APCORR_TOTAL_ERR": self.factor_err,
            "APCORR_TOTAL_RADIUS_PIX": self.radius_pix,
            "APCORR_TOTAL_FLATTENED": self.flattened,
            "APCORR_TOTAL_NSTARS": self.n_stars,
        }


def _radius(name: str) -> float | None:
    if not name.startswith("apflux_") or name.endswith(("_err", "_flag")) or "_apCorr" in name:
        return None
    try:
        return float(name[len("apflux_"):].replace("_", "."))
    except ValueError:
        return None


def measure_total_flux_correction(
    sources: Table, calibration_flux: str, config: TotalFluxConfig | None = None
) -> TotalFluxCorrection | None:
    """Measure the curve of growth beyond ``calibration_flux`` on isolated PSF stars.

    Returns None (the caller warns) when the catalogue has no larger aperture,
    no ``star_column`` or fewer than ``min_stars`` usable stars.
    """
    config = config or TotalFluxConfig()
    config.validate()
    r_cal = _radius(calibration_flux)
    if r_cal is None or calibration_flux not in sources.colnames or config.star_column not in sources.colnames:
        return None
    outer = sorted((r, c) for c in sources.colnames if (r := _radius(c)) is not None and r > r_cal)
    if not outer:
        return None
    n = len(sources)
    x = np.asarray(sources["x"], float)
    y = np.asarray(sources["y"], float)
    stars = np.asarray(sources[config.star_column], bool).copy()
    for flag in _FLAGS:
        if flag in sources.colnames:
            stars &= ~np.asarray(sources[flag], bool)
    real = np.isfinite(x) & np.isfinite(y)
    if "sky_source" in sources.colnames:
        real &= ~np.asarray(sources["sky_source"], bool)
    if stars.sum() < config.min_stars:
        return None
    # The outermost aperture must hold no other source's light.
    tree = cKDTree(np.column_stack([x[real], y[real]]))
    idx = np.flatnonzero(stars & real)
    counts = tree.query_ball_point(np.column_stack([x[idx], y[idx]]), r=outer[-1][0] + config.isolation_margin_pix,
                                   return_length=True)
    idx = idx[counts == 1]
    cal = np.asarray(sources[calibration_flux], float)[idx]
    ok = np.isfinite(cal) & (cal > 0)
    curve: list[tuple[float, float, float]] = []
    for r, col in outer:
        f = np.asarray(sources[col], float)[idx]
        err = np.asarray(sources[f"{col}_err"], float)[idx] if f"{col}_err" in sources.colnames else np.ones_like(f)
        good = ok & np.isfinite(f) & np.isfinite(err) & (err > 0)
        if good.sum() < config.min_stars:
            return None
        ratio = f[good] / cal[good]
        # Median, not mean: a faint neighbour or a galaxy's wing in the outer
        # annulus of a few stars must not move the curve (it would flip where it
        # "flattens"); its error from the MAD, 1.25 sigma / sqrt(n) for a median.
        median = float(np.median(ratio))
        sigma = mad_sigma(ratio, centre=median)
        curve.append((r, median, 1.2533 * sigma / np.sqrt(good.sum())))
    n_stars = int(np.sum(ok))
    curve.insert(0, (r_cal, 1.0, 0.0))
    for k in range(len(curve) - 1):
        r, ratio, err = curve[k]
        step = curve[k + 1][1] - ratio
        if abs(step) < max(config.flat_tolerance, 2.0 * np.hypot(err, curve[k + 1][2])):
            return TotalFluxCorrection(ratio, err, r, True, n_stars, curve)
    r, ratio, err = curve[-1]
    return TotalFluxCorrection(ratio, err, r, False, n_stars, curve)
