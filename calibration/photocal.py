"""Photometric calibration: the zero point from matched stars (LSST's ``PhotoCalTask``).

The robust estimator is a port of ``lsst.pipe.tasks.photoCal.PhotoCalTask.getZeroPoint``
applied to ``dmag = ref_mag - inst_mag`` (``inst_mag = -2.5 log10(flux_ADU)``),
so ``ref_mag = inst_mag + zero_point_mag``. Colour terms follow LSST's
``Colorterm``: ``ref = primary + c0 + c1*(primary - secondary) + c2*(primary - secondary)**2``.

Deviations from LSST (each also noted where it happens):

* weights are ``1/(inst_err**2 + ref_err**2 + floor**2)``; LSST ignores the
  reference error (DM-2308) and weights by the source error only;
* clipping keeps ``|dmag - centre| <= n_sigma*sigma`` (LSST: ``<``), so a
  noiseless set (sigma = 0) keeps its stars; a clip that would reject every star
  is skipped instead of LSST's early return of the unclipped centre;
* iteration stops when the set of survivors is unchanged (LSST: their number);
* the clipping centre is always the median (LSST's default ``useMedian=True``);
  ``use_median`` instead makes the *reported* zero point the survivors' median,
  as LSST's config doc says (LSST's non-median branch weights by the errors,
  not the inverse variances);
* reserved stars are drawn among selected stars with ``numpy.random.Generator(seed)``
  (LSST: ``RandomState(seed + expId)`` shuffle; same count, ``round(n*fraction)``);
* colour-term fitting, a spatial zero-point polynomial and the reserved-star
  statistics are additions; LSST's colour-term error propagation is done in
  flux and ignores ``c2``; here it is done in magnitudes with ``c2``;
* too few stars raise :class:`~calibration.errors.PhotometryError` (LSST: a
  RuntimeError for no matches, a warning and the unclipped mean for none left).

As in LSST's ``extractMagArrays``, fixed colour terms are applied to the
reference magnitudes before this module's fit (by the caller, who holds both
bands); ``fit_zero_point`` itself only applies colour terms it fits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .configbase import doc_field
from .errors import PhotometryError
from .colorterms import ColortermEntry
from .totalflux import TotalFluxConfig

__all__ = ["PhotoCalConfig", "PhotoCalResult", "apply_colorterm", "colorterm_mag_err", "fit_zero_point"]

IQ_TO_STDEV = 0.741301109252802  # 1 sigma in units of the interquartile range (Gaussian), as LSST
_SPATIAL_TERMS = {0: (), 1: ("x", "y"), 2: ("x", "y", "x2", "xy", "y2")}


@dataclasses.dataclass(frozen=True)
class PhotoCalConfig:
    """Configuration of the photometric calibration (LSST's ``PhotoCalConfig``)."""

    match_radius_arcsec: float = doc_field(0.25, "Source/reference match radius (arcsec), used by the pipeline.")
    flux_field: str = doc_field(
        "psf_flux",
        "Source flux column calibrated (ADU); <name>_err: its error. The default PSF flux is aperture-corrected "
        "to the calibration aperture (apcorr.calibration_flux, LSST's 12 px), which the pipeline falls back to "
        "when there is no PSF model.",
    )
    min_snr: float = doc_field(
        10.0, "Smallest S/N of the calibration flux for a star to be used; noisier stars bias the zero point."
    )
    mag_min: float | None = doc_field(None, "Brightest reference magnitude used (mag); None: no limit.")
    mag_max: float | None = doc_field(None, "Faintest reference magnitude used (mag); None: no limit.")
    n_sigma: float = doc_field(3.0, "Clip stars further than n_sigma*sigma from the centre (LSST nSigma).")
    sigma_max_mag: float | None = doc_field(0.25, "Cap on the clipping sigma (mag); None: 2x histogram width.")
    n_iter: int = doc_field(20, "Maximum number of clipping iterations (LSST nIter).")
    use_median: bool = doc_field(False, "Report the survivors' median instead of their weighted mean.")
    mag_err_floor_mag: float = doc_field(0.0, "Error added in quadrature to each star's dmag error (mag).")
    min_n_stars: int = doc_field(3, "Fewest stars a zero point may rest on; fewer raises PhotometryError.")
    reserve_fraction: float = doc_field(0.1, "Fraction of usable stars held out of the fit for validation.")
    colorterm_primary: str | None = doc_field(None, "Reference band of the colour term's primary magnitude.")
    colorterm_secondary: str | None = doc_field(None, "Reference band subtracted from primary: the colour.")
    colorterm_c0: float = doc_field(0.0, "Colour term constant (mag).")
    colorterm_c1: float = doc_field(0.0, "Colour term linear coefficient (mag/mag); ignored when fitted.")
    colorterm_c2: float = doc_field(0.0, "Colour term quadratic coefficient (mag/mag^2); ignored when fitted.")
    fit_colorterms: bool = doc_field(False, "Fit c1 and c2 (c0 is absorbed in the zero point).")
    spatial_order: int = doc_field(0, "Zero point polynomial order over the field in normalised x, y (0-2).")
    colorterm_library: tuple[ColortermEntry, ...] = doc_field(
        (),
        "Fixed colour terms per instrument/filter/catalogue (see calibration.colorterms); used when "
        "colorterm_primary is not set and an entry matches.",
    )
    total_flux: TotalFluxConfig = doc_field(
        TotalFluxConfig(), "Curve-of-growth correction from the calibration aperture to total flux."
    )

    def validate(self) -> None:
        """Cross-field checks; raises ``ValueError``."""
        if self.mag_min is not None and self.mag_max is not None and not self.mag_min < self.mag_max:
            raise ValueError(f"mag_min ({self.mag_min}) must be < mag_max ({self.mag_max})")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must be in [0, 1), got {self.reserve_fraction}")
        for name in ("match_radius_arcsec", "n_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.sigma_max_mag is not None and not self.sigma_max_mag > 0:
            raise ValueError(f"sigma_max_mag must be > 0 or None, got {self.sigma_max_mag}")
        if self.n_iter < 1 or self.min_n_stars < 1:
            raise ValueError("n_iter and min_n_stars must be >= 1")
        if not self.mag_err_floor_mag >= 0:
            raise ValueError(f"mag_err_floor_mag must be >= 0, got {self.mag_err_floor_mag}")
        if self.spatial_order not in _SPATIAL_TERMS:
            raise ValueError(f"spatial_order must be 0, 1 or 2, got {self.spatial_order}")
        if not self.flux_field:
            raise ValueError("flux_field must name a flux column")
        self.total_flux.validate()
        for entry in self.colorterm_library:
            entry.validate()
        if (self.fit_colorterms or self.colorterm_c1 or self.colorterm_c2) and not (
            self.colorterm_primary and self.colorterm_secondary
        ):
            raise ValueError("colour terms need colorterm_primary and colorterm_secondary bands")


def apply_colorterm(
    primary_mag: ArrayLike, secondary_mag: ArrayLike, c0: float, c1: float, c2: float
) -> NDArray[np.float64]:
    """Reference magnitude in the instrument's band (LSST ``Colorterm.transformMags``).

    ``primary + c0 + c1*colour + c2*colour**2`` with ``colour = primary - secondary``
    (all reference-catalogue magnitudes, mag).
    """
    primary = np.asarray(primary_mag, dtype=np.float64)
    colour = primary - np.asarray(secondary_mag, dtype=np.float64)
    return primary + c0 + colour * (c1 + colour * c2)


def colorterm_mag_err(
    primary_err: ArrayLike, secondary_err: ArrayLike, colour: ArrayLike, c1: float, c2: float
) -> NDArray[np.float64]:
    """Error (mag) of :func:`apply_colorterm`'s output from the two band errors (mag).

    First-order propagation in magnitudes: ``d/dp = 1 + c1 + 2 c2 colour``,
    ``d/ds = -(c1 + 2 c2 colour)``. LSST's ``propagateFluxErrors`` works on
    fluxes and omits ``c2``.
    """
    slope = c1 + 2.0 * c2 * np.asarray(colour, dtype=np.float64)
    primary, secondary = np.asarray(primary_err, float), np.asarray(secondary_err, float)
    return np.hypot((1.0 + slope) * primary, slope * secondary)


@dataclasses.dataclass
class PhotoCalResult:
    """Outcome of :func:`fit_zero_point`: ``ref_mag = inst_mag + zero_point_mag``.

    Attributes
    ----------
    zero_point_mag, zero_point_err_mag : float
        Zero point (mag) at colour 0 and the field centre, and LSST's ``sigma``
        (``sqrt(1/sum w)`` over the survivors; times ``sqrt(pi/2)`` for a median).
    zero_point_fit_err_mag : float or None
        With colour or spatial terms, the joint fit's error of the constant,
        including its covariance with those terms (large when colours are far
        from 0); None otherwise.
    n_input, n_finite, n_selected, n_reserved, n_used, n_clipped : int
        Stars given, usable, in the magnitude range, reserved, used (LSST's
        ``ngood``) and clipped from the fit.
    clip_sigma_mag : float
        The sigma of the last clip (``0.741 IQR``, capped at ``sigma_max_mag``).
    scatter_mag, scatter_std_mag : float
        Robust (``0.741 IQR``) and standard deviation of the survivors' residuals (mag).
    reserved_scatter_mag, reserved_bias_mag, n_reserved_used : float, float, int
        Robust scatter and median of the reserved stars' residuals (mag) after
        the fit's own clip, and how many passed it; NaN when none are reserved.
    colorterm_c0, colorterm_c1, colorterm_c2 : float
        Colour-term coefficients in force: the config's (applied by the caller
        to ``ref_mag``) or, with ``fit_colorterms``, 0 and the fitted ones.
    colorterm_c1_err, colorterm_c2_err : float or None
        Their errors when fitted (formal, scaled up by the reduced chi^2 if > 1).
    spatial_order, spatial_terms, spatial_coeffs, spatial_coeff_errs
        Polynomial coefficients (mag) of the terms (``"x"``, ``"y"``, ``"x2"``,
        ``"xy"``, ``"y2"``) in ``xn = (x - cx)/hx``, ``yn = (y - cy)/hy``; the
        constant is ``zero_point_mag``. Evaluate with :meth:`zero_point_at`.
    spatial_centre_pix, spatial_halfsize_pix : (float, float)
        ``(cx, cy)`` and ``(hx, hy)`` (pix, local 0-based).
    used, reserved, clipped : numpy.ndarray of bool, shape (n_input,)
        Per input star.
    residual_mag : numpy.ndarray of float, shape (n_input,)
        ``ref - inst - zero point (and model terms)``; NaN for stars not selected.
    """

    zero_point_mag: float
    zero_point_err_mag: float
    zero_point_fit_err_mag: float | None
    n_input: int
    n_finite: int
    n_selected: int
    n_reserved: int
    n_used: int
    n_clipped: int
    clip_sigma_mag: float
    scatter_mag: float
    scatter_std_mag: float
    reserved_scatter_mag: float
    reserved_bias_mag: float
    n_reserved_used: int
    colorterm_c0: float
    colorterm_c1: float
    colorterm_c2: float
    colorterm_c1_err: float | None
    colorterm_c2_err: float | None
    spatial_order: int
    spatial_terms: tuple[str, ...]
    spatial_coeffs: tuple[float, ...]
    spatial_coeff_errs: tuple[float, ...]
    spatial_centre_pix: tuple[float, float]
    spatial_halfsize_pix: tuple[float, float]
    used: NDArray[np.bool_]
    reserved: NDArray[np.bool_]
    clipped: NDArray[np.bool_]
    residual_mag: NDArray[np.float64]

    def zero_point_at(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Zero point (mag) at local 0-based pixel positions ``x``, ``y``."""
        xn, yn = _normalise(x, y, self.spatial_centre_pix, self.spatial_halfsize_pix)
        terms = _spatial_design(xn, yn, self.spatial_order)
        return self.zero_point_mag + terms @ np.asarray(self.spatial_coeffs, dtype=np.float64)

    def to_dict(self, *, arrays: bool = False) -> dict[str, Any]:
        """Strict-JSON dict (NaN -> None) of the scalars, and of the per-star arrays if ``arrays``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                if not arrays:
                    continue
                value = value.tolist()
            out[f.name] = _json_clean(value)
        return out


def _json_clean(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _normalise(
    x: ArrayLike, y: ArrayLike, centre: tuple[float, float], half: tuple[float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return (np.asarray(x, float) - centre[0]) / half[0], (np.asarray(y, float) - centre[1]) / half[1]


def _spatial_design(xn: NDArray[np.float64], yn: NDArray[np.float64], order: int) -> NDArray[np.float64]:
    """Columns of the non-constant spatial terms, shape (n, n_terms)."""
    columns = {"x": xn, "y": yn, "x2": xn * xn, "xy": xn * yn, "y2": yn * yn}
    return np.column_stack([columns[t] for t in _SPATIAL_TERMS[order]] or [np.zeros((np.size(xn), 0))])


def _get_zero_point(
    dmag: NDArray[np.float64], err: NDArray[np.float64], config: PhotoCalConfig
) -> tuple[float, float, NDArray[np.bool_], float]:
    """Port of LSST ``getZeroPoint``: (zero point, sigma, survivor mask, last clip sigma).

    ``err`` is the dmag error (mag); the mask is in input order.
    """
    order = np.argsort(dmag, kind="stable")
    d, e = dmag[order], err[order]
    npt = d.size
    sigma_max = config.sigma_max_mag
    good = np.ones(npt, dtype=bool)
    clip = np.inf
    for i in range(config.n_iter):
        if i == 0:  # start from a crude mode: 20-bin histogram peak, width from its FWHM
            nhist = 20
            hist, edges = np.histogram(d, nhist)
            imode = np.flatnonzero(hist == hist.max())
            if imode[-1] - imode[0] + 1 == imode.size:  # one peak, or contiguous equal peaks
                centre = 0.5 * (edges[imode[0]] + edges[imode[-1] + 1])
                peak = hist[imode].mean()
                cum = np.concatenate(([0], np.cumsum(hist)))  # cum[j] = stars in bins < j
                left = np.flatnonzero(hist[: imode[0] + 1] <= 0.5 * peak)
                right = np.flatnonzero(hist[imode[-1] :] <= 0.5 * peak)
                q1 = d[cum[left[-1] if left.size else 0]]
                q3 = d[min(cum[imode[-1] + right[0] if right.size else nhist - 1], npt - 1)]
                if q1 == q3:
                    q1, q3 = d[int(0.25 * npt)], d[int(0.75 * npt)]
                sig = (q3 - q1) / 2.3  # FWHM-based (2.358 for a Gaussian), as LSST
                sigma_max = 2 * sig if sigma_max is None else sigma_max
            else:
                sigma_max = d[-1] - d[0] if sigma_max is None else sigma_max
                centre = np.median(d)
                sig = (d[int(0.75 * npt)] - d[int(0.25 * npt)]) / 2.3
        else:
            gd = d[good]
            n = gd.size
            centre = np.median(gd)
            q3, q1 = gd[min(int(0.75 * n + 0.5), n - 1)], gd[min(int(0.25 * n + 0.5), n - 1)]
            sig = IQ_TO_STDEV * (q3 - q1)
        new_clip = config.n_sigma * min(sig, sigma_max)
        new_good = np.abs(d - centre) <= new_clip
        if not new_good.any():  # LSST returns the unclipped centre here; we skip this clip
            continue
        clip = new_clip
        if np.array_equal(new_good, good):
            break
        good = new_good
    w = 1.0 / e[good] ** 2
    sigma = float(np.sqrt(1.0 / w.sum()))
    if config.use_median:
        zp, sigma = float(np.median(d[good])), sigma * np.sqrt(np.pi / 2)
    else:
        zp = float(np.sum(w * d[good]) / w.sum())
    mask = np.empty(npt, dtype=bool)
    mask[order] = good
    return zp, sigma, mask, clip / config.n_sigma


def _robust_lstsq(
    design: NDArray[np.float64], dmag: NDArray[np.float64], err: NDArray[np.float64],
    mask: NDArray[np.bool_], config: PhotoCalConfig,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Weighted least squares clipped like ``getZeroPoint`` (median, 0.741 IQR, cap): (coef, cov).

    The covariance is scaled by the reduced chi^2 when that exceeds 1.
    """
    w = 1.0 / err**2
    npar = design.shape[1]
    if mask.sum() <= npar or np.linalg.matrix_rank(design[mask] * np.sqrt(w[mask])[:, None]) < npar:
        mask = np.ones(dmag.size, dtype=bool)
    if np.linalg.matrix_rank(design * np.sqrt(w)[:, None]) < npar:
        raise PhotometryError(
            "the colours or positions of the stars span too little to fit colour terms or a spatial "
            "zero point: use fixed colour terms or spatial_order=0", stage="photocal", n_fit=int(dmag.size))

    def solve(m: NDArray[np.bool_]) -> NDArray[np.float64]:
        sw = np.sqrt(w[m])
        return np.linalg.lstsq(design[m] * sw[:, None], dmag[m] * sw, rcond=None)[0]

    for _ in range(config.n_iter):
        coef = solve(mask)
        resid = dmag - design @ coef
        q1, med, q3 = np.percentile(resid[mask], [25, 50, 75])
        sig = IQ_TO_STDEV * (q3 - q1)
        clip = config.n_sigma * (sig if config.sigma_max_mag is None else min(sig, config.sigma_max_mag))
        new = np.abs(resid - med) <= clip
        if np.array_equal(new, mask) or new.sum() <= npar:
            break
        if np.linalg.matrix_rank(design[new] * np.sqrt(w[new])[:, None]) < npar:
            break
        mask = new
    else:
        coef = solve(mask)
    a, wm = design[mask], w[mask]
    cov = np.linalg.inv(a.T @ (a * wm[:, None]))
    dof = int(mask.sum()) - npar
    chi2 = float(np.sum(wm * (dmag[mask] - a @ coef) ** 2))
    return coef, cov * max(1.0, chi2 / dof if dof > 0 else 1.0)


def _robust_scatter(values: NDArray) -> float:
    if values.size == 0:
        return float("nan")
    q1, q3 = np.percentile(values, [25, 75])
    return float(IQ_TO_STDEV * (q3 - q1))


def _reserve(selected: NDArray[np.bool_], fraction: float, seed: int) -> NDArray[np.bool_]:
    """``round(n * fraction)`` of the selected stars at random (LSST ``ReserveSourcesTask``)."""
    idx = np.flatnonzero(selected)
    reserved = np.zeros(selected.size, dtype=bool)
    reserved[np.random.default_rng(seed).permutation(idx)[: int(round(idx.size * fraction))]] = True
    return reserved


def _field_frame(
    xs: NDArray[np.float64], ys: NDArray[np.float64], image_shape: tuple[int, int] | None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centre and half-size (pix) mapping the image (or the stars' extent) to [-1, 1]."""
    if image_shape is not None:
        ny, nx = image_shape
        return ((nx - 1) / 2.0, (ny - 1) / 2.0), (max(nx / 2.0, 0.5), max(ny / 2.0, 0.5))
    if xs.size == 0:
        return (0.0, 0.0), (1.0, 1.0)
    lo, hi = np.array([xs.min(), ys.min()]), np.array([xs.max(), ys.max()])
    centre, half = (lo + hi) / 2.0, np.where(hi > lo, (hi - lo) / 2.0, 1.0)
    return (float(centre[0]), float(centre[1])), (float(half[0]), float(half[1]))


def fit_zero_point(
    inst_mag: ArrayLike,
    inst_mag_err: ArrayLike,
    ref_mag: ArrayLike,
    ref_mag_err: ArrayLike,
    *,
    config: PhotoCalConfig,
    seed: int,
    x: ArrayLike | None = None,
    y: ArrayLike | None = None,
    colour: ArrayLike | None = None,
    secondary_mag_err: ArrayLike | None = None,
    image_shape: tuple[int, int] | None = None,
) -> PhotoCalResult:
    """Fit the zero point ``ref_mag = inst_mag + zp`` robustly (LSST ``getZeroPoint``).

    Parameters
    ----------
    inst_mag, inst_mag_err : array_like, shape (n,)
        Instrumental magnitudes ``-2.5 log10(flux_ADU)`` and their errors (mag).
    ref_mag, ref_mag_err : array_like, shape (n,)
        Matched reference magnitudes and errors (mag) in the instrument's
        system: with fixed colour terms the caller has already applied
        :func:`apply_colorterm` / :func:`colorterm_mag_err` (it holds both
        bands); with ``fit_colorterms``, the primary-band magnitudes.
    config : PhotoCalConfig
    seed : int
        Seed of the generator choosing the reserved stars.
    x, y : array_like, shape (n,), optional
        Local 0-based pixel positions; required when ``spatial_order > 0``.
    colour : array_like, shape (n,), optional
        Reference colour ``primary - secondary`` (mag); required with
        ``fit_colorterms``, ignored otherwise.
    secondary_mag_err : array_like, shape (n,), optional
        Secondary band error (mag); with ``fit_colorterms`` it is propagated
        with the fitted terms into the final weights (0 if omitted); ignored otherwise.
    image_shape : (ny, nx), optional
        Normalises x, y to [-1, 1] over the image; default: over the stars' extent.

    Returns
    -------
    PhotoCalResult

    Raises
    ------
    PhotometryError
        No usable star, too few after selection or clipping, a needed input
        missing, or colours/positions too degenerate for the requested terms.

    Notes
    -----
    A star is usable when every needed input is finite, no error is negative
    and the combined error is positive, and selected when its reference
    magnitude is in ``[mag_min, mag_max]``. ``round(reserve_fraction * n_selected)`` selected
    stars are reserved before any fitting. With ``fit_colorterms`` or
    ``spatial_order > 0`` the model ``dmag = zp - c1 colour - c2 colour**2 +
    P(xn, yn)`` is fitted by clipped weighted least squares (started from the
    ``getZeroPoint`` survivors); the minus signs make ``c1``, ``c2`` Colorterm
    coefficients (``ref + c1 colour + c2 colour**2 = inst + zp``). The
    non-constant terms are then subtracted and ``getZeroPoint`` gives the zero
    point at colour 0 and the field centre (``c0`` is absorbed in it and
    reported as 0), with weights whose reference error is propagated with the
    fitted terms. ``zero_point_err_mag`` ignores the covariance with the other
    terms; ``zero_point_fit_err_mag`` includes it.
    """
    cfg = config
    inst, inst_err = np.asarray(inst_mag, float), np.asarray(inst_mag_err, float)
    ref, ref_err = np.asarray(ref_mag, float), np.asarray(ref_mag_err, float)
    n = inst.size
    fit_c = cfg.fit_colorterms
    need = {"colour": fit_c, "x": cfg.spatial_order > 0}
    need["y"] = need["x"]
    given = {"colour": colour, "x": x, "y": y}
    for name, needed in need.items():
        if needed and given[name] is None:
            raise PhotometryError(f"photocal needs per-star {name} for this config (fit_colorterms or "
                                  "spatial_order)", stage="photocal", missing=name)
    col, xs, ys = (np.asarray(given[k], float) if need[k] else np.zeros(n) for k in ("colour", "x", "y"))
    sec_err = np.zeros(n)
    if secondary_mag_err is not None and need["colour"]:
        sec_err = np.asarray(secondary_mag_err, float)
    arrays = [inst, inst_err, ref, ref_err, col, xs, ys, sec_err]
    if any(a.shape != (n,) for a in arrays):
        raise ValueError(f"per-star inputs must all have shape ({n},), got {[a.shape for a in arrays]}")

    with np.errstate(invalid="ignore"):  # non-finite inputs are excluded just below
        err = np.sqrt(inst_err**2 + ref_err**2 + cfg.mag_err_floor_mag**2)
        finite = np.logical_and.reduce([np.isfinite(a) for a in arrays]) & (err > 0)
        finite &= (inst_err >= 0) & (ref_err >= 0) & (sec_err >= 0)
        lo = -np.inf if cfg.mag_min is None else cfg.mag_min
        hi = np.inf if cfg.mag_max is None else cfg.mag_max
        selected = finite & (ref >= lo) & (ref <= hi)
    figures = {"n_input": n, "n_finite": int(finite.sum()), "n_selected": int(selected.sum())}
    if not finite.any():
        raise PhotometryError(
            "no matched star has finite instrumental and reference magnitudes with positive errors: "
            "check the flux column, the reference band and the match", stage="photocal", **figures)

    reserved = _reserve(selected, cfg.reserve_fraction, seed)
    fit = selected & ~reserved
    terms = _SPATIAL_TERMS[cfg.spatial_order]
    n_min = max(cfg.min_n_stars, 2 + 2 * fit_c + len(terms))
    figures.update(n_reserved=int(reserved.sum()), n_fit=int(fit.sum()), n_min=n_min)
    if fit.sum() < n_min:
        raise PhotometryError(
            f"only {int(fit.sum())} stars are usable for the zero point (need {n_min}): widen the "
            "magnitude range, lower reserve_fraction or check the match", stage="photocal", **figures)

    centre, half = _field_frame(xs[selected], ys[selected], image_shape)
    xn, yn = _normalise(xs, ys, centre, half)
    extra = np.column_stack([-col, -col * col][: 2 * fit_c] + [_spatial_design(xn, yn, cfg.spatial_order)])
    with np.errstate(invalid="ignore"):
        dmag = ref - inst
    coef, coef_err, fit_err = np.zeros(extra.shape[1]), np.zeros(extra.shape[1]), None
    if extra.shape[1]:
        start = _get_zero_point(dmag[fit], err[fit], cfg)[2]
        design = np.column_stack([np.ones(int(fit.sum())), extra[fit]])
        full, cov = _robust_lstsq(design, dmag[fit], err[fit], start, cfg)
        coef, coef_err, fit_err = full[1:], np.sqrt(np.diag(cov))[1:], float(np.sqrt(cov[0, 0]))
        if fit_c:  # weights of the final step: reference error propagated with the fitted terms
            c_err = colorterm_mag_err(ref_err, sec_err, col, coef[0], coef[1])
            err = np.sqrt(inst_err**2 + c_err**2 + cfg.mag_err_floor_mag**2)
    model = np.where(selected, extra @ coef, np.nan)
    zp, zp_err, good, clip_sigma = _get_zero_point(dmag[fit] - model[fit], err[fit], cfg)
    used = np.zeros(n, dtype=bool)
    used[np.flatnonzero(fit)[good]] = True
    figures.update(n_used=int(used.sum()))
    if used.sum() < cfg.min_n_stars:
        raise PhotometryError(
            f"only {int(used.sum())} stars survive clipping (need {cfg.min_n_stars}): the matches may "
            "be wrong or sigma_max_mag too tight", stage="photocal", **figures)

    residual = np.where(selected, dmag - model - zp, np.nan)
    res_ok = reserved & (np.abs(residual) <= cfg.n_sigma * clip_sigma)  # same clip as the fit
    nc = 2 * fit_c
    return PhotoCalResult(
        zero_point_mag=zp, zero_point_err_mag=zp_err, zero_point_fit_err_mag=fit_err,
        n_input=n, n_finite=figures["n_finite"], n_selected=figures["n_selected"],
        n_reserved=int(reserved.sum()), n_used=int(used.sum()), n_clipped=int((fit & ~used).sum()),
        clip_sigma_mag=float(clip_sigma), scatter_mag=_robust_scatter(residual[used]),
        scatter_std_mag=float(np.std(residual[used])), reserved_scatter_mag=_robust_scatter(residual[res_ok]),
        reserved_bias_mag=float(np.median(residual[res_ok])) if res_ok.any() else float("nan"),
        n_reserved_used=int(res_ok.sum()), colorterm_c0=0.0 if nc else cfg.colorterm_c0,
        colorterm_c1=float(coef[0]) if nc else cfg.colorterm_c1,
        colorterm_c2=float(coef[1]) if nc else cfg.colorterm_c2,
        colorterm_c1_err=float(coef_err[0]) if nc else None,
        colorterm_c2_err=float(coef_err[1]) if nc else None,
        spatial_order=cfg.spatial_order, spatial_terms=terms, spatial_coeffs=tuple(map(float, coef[nc:])),
        spatial_coeff_errs=tuple(map(float, coef_err[nc:])), spatial_centre_pix=centre,
        spatial_halfsize_pix=half, used=used, reserved=reserved, clipped=fit & ~used, residual_mag=residual,
    )
