"""PSF star selection and a spatially varying PSF model (LSST's ``MeasurePsfTask``).

Selection (after ``objectSizeStarSelector`` with LSST's isolation and
saturation cuts) keeps sources that are bright (S/N of a flux column at least
``candidate_min_snr``), unsaturated (no SAT, BAD or NO_DATA pixel in the
stamp, peak below a fraction of the saturation level), isolated (no other
primary detection within ``isolation_radius_pix``, not a deblend parent or
child), point-like and not near the image border. Point-like means on the
stellar locus: the size ``s = sqrt(shape_xx + shape_yy)`` is found in its
densest narrow interval (stars pile up at one size, galaxies spread above it),
then ``ln s`` is fitted as a polynomial of position with sigma clipping, so a
PSF whose width changes across the field keeps its stars.

A random ``reserve_fraction`` of the candidates (``numpy.random.Generator``
seeded by the caller, LSST's ``ReserveSourcesTask``) is never used in the fit;
the model's residuals on them are reported as an honest quality figure.

``model="pixel"`` (default, PSFEx-like)
    Every star's stamp is shifted so that its centre falls on the central pixel
    by a phase shift in Fourier space (sinc interpolation: for a pixel-convolved
    PSF with FWHM >= 3 pix its error is < 1e-4 of the peak; stamps are
    zero-padded against wrap-around), divided by its flux and local background,
    and each of the ``k x k`` pixel values is fitted as a polynomial of total
    degree ``spatial_order`` in normalised ``x, y`` by one weighted least-squares
    solve (design: stars x terms; all pixels as right-hand sides). Each star's
    flux, background and centre are then refined against the model (linear fit
    of ``F M + a dM/dx + c dM/dy + b``), stars whose chi^2/dof is an outlier
    are dropped, and the model is fitted again (``n_clip_iter`` times). The
    model is the pixel-convolved PSF, sampled at the native pixel scale.
``model="moffat"``
    An elliptical Moffat, integrated over each pixel, is fitted to each star;
    ``beta`` is fixed to the median of free fits, and ``fwhm``, ``e1``, ``e2``
    are polynomials of position (clipped). Use it for undersampled data or few
    stars.

The models, their ``image_at`` / ``fwhm_pix_at`` / ``shape_at`` conventions
and their FITS form live in :mod:`calibration.psfmodel` (re-exported here).
Positions outside the box of the stars used are clamped into it (the model is
never extrapolated). Each fit lowers ``spatial_order`` until there are at
least 3 stars per polynomial term.

The sizes on the locus must not depend on flux (windowed or adaptive moments,
as :mod:`calibration.measure` gives; isophotal detection moments grow with
flux), and the PSF may not change its size by more than a factor
``exp(size_max_halfwidth)`` from the typical one across the field.

Deviations from LSST/PSFEx: no oversampled (super-resolved) pixel basis, so the
pixel model needs FWHM >= ~2.5 pix (use ``model="moffat"`` below that); the
pixel model is not a set of principal components but a polynomial per pixel
(PSFEx's default ``PSFVAR_DEGREES``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from .configbase import doc_field
from .errors import ConfigError, PsfError
from .exposure import Exposure, MaskPlane
from .stats import MAD_TO_SIGMA, grid_median, mad_sigma
from .psfmodel import (
    FWHM_PER_SIGMA,
    MoffatPsfModel,
    PixelPsfModel,
    PsfModel,
    SpatialFrame,
    fit_amplitudes,
    fit_moffat_profiles,
    gather_stamps,
    moment_fwhm,
    poly_terms,
    psf_model_from_hdulist,
    sinc_shift,
)

__all__ = [
    "FWHM_PER_SIGMA",  # re-exported from psfmodel
    "MoffatPsfModel",
    "PixelPsfModel",
    "PsfConfig",
    "PsfModel",
    "PsfResidualStats",
    "PsfResult",
    "fit_psf",
    "psf_model_from_hdulist",
    "select_psf_candidates",
]

_STAGE = "psf"
#: Fewest sources near the densest size for which the stellar locus is fitted.
_MIN_LOCUS_FIT = 10
#: Bound on mask values gathered per chunk of sources in the selection (memory).
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class PsfConfig:
    """Configuration of :func:`select_psf_candidates` and :func:`fit_psf`."""

    candidate_min_snr: float = doc_field(
        50.0, "Minimum signal-to-noise of a PSF candidate (snr_flux_column / its _err)."
    )
    snr_flux_column: str = doc_field(
        "apflux_12_0",
        "Flux column (ADU) whose ratio to <column>_err is the S/N; when absent, the "
        "detection 'flux' with an error from the variance plane and 'npix'.",
    )
    candidate_max_peak_fraction_of_saturation: float = doc_field(
        0.8, "A candidate's peak_value must be below this fraction of the saturation level."
    )
    isolation_radius_pix: float = doc_field(
        12.0, "A candidate has no other primary detection within this radius (pix)."
    )
    stamp_size_pix: int = doc_field(25, "Side (pix, odd) of the star stamps and of the pixel model.")
    stamp_bad_mask_planes: tuple[str, ...] = doc_field(
        ("SAT", "BAD", "NO_DATA"), "A candidate's stamp may contain no pixel of these mask planes."
    )
    reject_flag_columns: tuple[str, ...] = doc_field(
        (
            "flag_edge",
            "flag_saturated",
            "flag_saturated_center",
            "flag_bad",
            "flag_nodata",
            "flag_cr_center",
            "flag_interpolated_center",
            "centroid_flag",
            "flag_deblend_merged",
            "flag_truncated",
            "sky_source",
        ),
        "Boolean catalogue columns that exclude a source when true (absent columns are ignored).",
    )
    size_clip_sigma: float = doc_field(
        3.0, "Stellar locus: keep sources within this many robust sigma of the fitted ln(size)."
    )
    size_min_halfwidth: float = doc_field(
        0.05, "Stellar locus: smallest half-width kept around the fitted ln(size) (0.05: +-5%)."
    )
    size_max_halfwidth: float = doc_field(
        0.35,
        "Stellar locus: sources further than this in ln(size) from the densest size are "
        "never stars (0.35: a factor 1.42), whatever the clipping says.",
    )
    max_candidates: int = doc_field(400, "Keep at most this many candidates, highest S/N first.")
    min_stars: int = doc_field(
        10, "Fewest candidates, and fewest stars left for the fit, before PsfError is raised."
    )
    model: Literal["pixel", "moffat"] = doc_field(
        "pixel", "'pixel': empirical pixel basis (PSFEx-like); 'moffat': elliptical Moffat."
    )
    spatial_order: int = doc_field(
        2, "Total degree of the polynomials in normalised x, y (0-4); lowered when stars are few."
    )
    reserve_fraction: float = doc_field(
        0.2, "Fraction of the candidates held out of the fit to measure its residuals."
    )
    n_clip_iter: int = doc_field(3, "Rounds of fit, star refinement and chi^2 rejection.")
    clip_sigma: float = doc_field(
        4.0, "A star is dropped when its chi^2/dof exceeds median + clip_sigma * robust sigma."
    )
    max_shift_pix: float = doc_field(
        1.0, "A star whose refined centre moves further than this (pix) is dropped."
    )
    star_weight_snr_cap: float = doc_field(
        500.0,
        "Pixel model weights are S/N^2 of each star capped at this S/N, so that a few "
        "bright stars cannot carry the spatial fit alone.",
    )

    def validate(self) -> None:
        """Cross-field checks; raise ``ValueError`` on a bad value."""
        if self.stamp_size_pix < 7 or self.stamp_size_pix % 2 == 0:
            raise ValueError(f"stamp_size_pix must be odd and >= 7, got {self.stamp_size_pix}")
        if not 0 <= self.spatial_order <= 4:
            raise ValueError(f"spatial_order must be in 0-4, got {self.spatial_order}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must be in [0, 1), got {self.reserve_fraction}")
        if not 0.0 < self.candidate_max_peak_fraction_of_saturation <= 1.0:
            raise ValueError("candidate_max_peak_fraction_of_saturation must be in (0, 1]")
        if self.min_stars < 2:
            raise ValueError(f"min_stars must be >= 2, got {self.min_stars}")
        if self.max_candidates < self.min_stars:
            raise ValueError(f"max_candidates ({self.max_candidates}) must be >= min_stars ({self.min_stars})")
        if self.n_clip_iter < 0:
            raise ValueError(f"n_clip_iter must be >= 0, got {self.n_clip_iter}")
        for name in ("candidate_min_snr", "clip_sigma", "max_shift_pix", "size_clip_sigma",
                     "size_min_halfwidth", "star_weight_snr_cap"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.size_max_halfwidth >= self.size_min_halfwidth:
            raise ValueError("size_max_halfwidth must be >= size_min_halfwidth")
        if self.isolation_radius_pix < 0:
            raise ValueError(f"isolation_radius_pix must be >= 0, got {self.isolation_radius_pix}")
        unknown = [p for p in self.stamp_bad_mask_planes if p not in MaskPlane.__members__]
        if unknown:
            raise ValueError(f"unknown mask planes {unknown}; known: {list(MaskPlane.__members__)}")


# ------------------------------------------------------------------------ selection


def select_psf_candidates(catalog: Table, exposure: Exposure, config: PsfConfig | None = None) -> NDArray[np.bool_]:
    """Flag the sources fit to model the PSF: bright, unsaturated, isolated, point-like.

    Parameters
    ----------
    catalog : astropy.table.Table
        Measured sources with ``x``, ``y`` (local 0-based pix), ``shape_xx``,
        ``shape_yy`` (pix^2; flux-independent moments such as the windowed
        ones of :mod:`calibration.measure`: isophotal detection moments grow
        with flux) and the S/N inputs (``snr_flux_column`` and its ``_err``, or
        ``flux`` and ``npix``). Optional: ``peak_value``, ``parent``,
        ``deblend_nChild``, ``detect_isPrimary`` and the ``reject_flag_columns``.
    exposure : Exposure
        The exposure measured (its mask, variance and saturation level are read).
    config : PsfConfig, optional

    Returns
    -------
    ndarray of bool, shape (len(catalog),)
        True for PSF candidates, at most ``max_candidates`` (highest S/N).

    Raises
    ------
    PsfError
        The catalogue lacks positions, shapes or any flux to compute an S/N from.
    """
    return _select(catalog, exposure, config or PsfConfig())[0]


def _column(catalog: Table, name: str, default: Any = None) -> NDArray | None:
    if name in catalog.colnames:
        col = catalog[name]
        return np.asarray(col.filled(default) if hasattr(col, "filled") and default is not None else col)
    return None


def _select(
    catalog: Table, exposure: Exposure, config: PsfConfig
) -> tuple[NDArray[np.bool_], dict[str, int], NDArray]:
    """Candidates, the number of sources left after each cut, and the S/N."""
    _validate(config)
    missing = [c for c in ("x", "y", "shape_xx", "shape_yy") if c not in catalog.colnames]
    if missing:
        raise PsfError(
            f"PSF star selection needs catalogue column(s) {', '.join(missing)}: measure the sources first",
            stage=_STAGE, missing=missing,
        )
    n = len(catalog)
    ny, nx = exposure.shape
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)
    counts: dict[str, int] = {"n_sources": n}
    ok = np.isfinite(x) & np.isfinite(y)

    # Family and flag cuts: isolated parents and no deblended children, no sky sources.
    parent = _column(catalog, "parent", 0)
    nchild = _column(catalog, "deblend_nChild", 0)
    primary = ok.copy()
    if nchild is not None:
        primary &= np.asarray(nchild) == 0
    if "sky_source" in catalog.colnames:
        primary &= ~np.asarray(catalog["sky_source"], bool)
    if "detect_isPrimary" in catalog.colnames:
        primary &= np.asarray(catalog["detect_isPrimary"], bool)
    ok &= primary
    if parent is not None:
        ok &= np.asarray(parent) == 0
    for name in config.reject_flag_columns:
        flag = _column(catalog, name, True)
        if flag is not None:
            ok &= ~np.asarray(flag, bool)
    counts["n_unflagged"] = int(ok.sum())

    # The stamp lies inside the image and holds no SAT/BAD/NO_DATA pixel.
    h = config.stamp_size_pix // 2
    ix = np.floor(np.where(ok, x, 0.0) + 0.5).astype(np.int64)
    iy = np.floor(np.where(ok, y, 0.0) + 0.5).astype(np.int64)
    ok &= (ix - h >= 0) & (ix + h < nx) & (iy - h >= 0) & (iy + h < ny)
    counts["n_inside"] = int(ok.sum())
    bits = 0
    for plane in config.stamp_bad_mask_planes:
        bits |= int(MaskPlane[plane])
    if bits:
        idx = np.flatnonzero(ok)
        per = max(1, _CHUNK_ELEMENTS // config.stamp_size_pix**2)
        for start in range(0, idx.size, per):
            sel = idx[start : start + per]
            stamps = gather_stamps(exposure.mask, ix[sel], iy[sel], h).reshape(sel.size, -1)
            ok[sel] = (np.bitwise_or.reduce(stamps, axis=1) & bits) == 0
    saturation = exposure.info.saturation_adu
    if saturation is not None:
        peak = _column(catalog, "peak_value", np.nan)
        if peak is None:
            peak = exposure.image[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)]
        with np.errstate(invalid="ignore"):
            ok &= np.asarray(peak, float) < config.candidate_max_peak_fraction_of_saturation * saturation
    counts["n_unsaturated"] = int(ok.sum())

    snr = _snr(catalog, exposure, config)
    with np.errstate(invalid="ignore"):
        ok &= snr >= config.candidate_min_snr
    counts["n_bright"] = int(ok.sum())

    if config.isolation_radius_pix > 0 and ok.any():
        others = primary & np.isfinite(x) & np.isfinite(y)
        tree = cKDTree(np.column_stack([x[others], y[others]]))
        idx = np.flatnonzero(ok)
        near = tree.query_ball_point(np.column_stack([x[idx], y[idx]]), r=config.isolation_radius_pix,
                                     return_length=True)
        ok[idx[near > 1]] = False
    counts["n_isolated"] = int(ok.sum())

    size2 = np.asarray(catalog["shape_xx"], float) + np.asarray(catalog["shape_yy"], float)
    with np.errstate(invalid="ignore"):
        ok &= np.isfinite(size2) & (size2 > 0)
    idx = np.flatnonzero(ok)
    star = np.zeros(n, bool)
    if idx.size:
        star[idx] = _stellar_locus(
            0.5 * np.log(size2[idx]), x[idx], y[idx], np.log(np.maximum(snr[idx], 1e-3)),
            config, SpatialFrame(nx=nx, ny=ny),
        )
    counts["n_pointlike"] = int(star.sum())
    if star.sum() > config.max_candidates:
        idx = np.flatnonzero(star)
        star[idx[np.argsort(-snr[idx], kind="stable")[config.max_candidates :]]] = False
    counts["n_candidates"] = int(star.sum())
    return star, counts, snr


def _snr(catalog: Table, exposure: Exposure, config: PsfConfig) -> NDArray[np.float64]:
    """S/N of each source from the configured flux column, else from ``flux`` and ``npix``."""
    col = config.snr_flux_column
    with np.errstate(divide="ignore", invalid="ignore"):
        if col in catalog.colnames and f"{col}_err" in catalog.colnames:
            snr = _column(catalog, col, np.nan).astype(float) / _column(catalog, f"{col}_err", np.nan).astype(float)
        elif "flux" in catalog.colnames:
            flux = _column(catalog, "flux", np.nan).astype(float)
            npix = _column(catalog, "npix", 0)
            npix = np.asarray(npix, float) if npix is not None else np.full(len(catalog), 25.0)
            var_bg = grid_median(exposure.variance, positive=True)  # typical sky variance
            var_bg = var_bg if np.isfinite(var_bg) else 0.0
            gain = exposure.info.gain_e_per_adu if exposure.info.gain_e_per_adu > 0 else 1.0
            snr = flux / np.sqrt(npix * var_bg + np.maximum(flux, 0.0) / gain)
        else:
            raise PsfError(
                f"no S/N for PSF star selection: the catalogue has neither {col} with {col}_err nor flux",
                stage=_STAGE, snr_flux_column=col,
            )
    return np.where(np.isfinite(snr), snr, -np.inf)


def _stellar_locus(
    log_size: NDArray, x: NDArray, y: NDArray, log_snr: NDArray, config: PsfConfig, frame: SpatialFrame
) -> NDArray[np.bool_]:
    """Members of the stellar locus among sources with sizes ``exp(log_size)``.

    The densest interval of half-width ``size_min_halfwidth`` in ln(size) seeds
    the locus; then ``ln(size)`` is fitted, with sigma clipping, as a polynomial
    of position (``spatial_order``, lowered when sources are few) plus a term
    linear in ln(S/N), and members lie within ``max(size_clip_sigma * sigma,
    size_min_halfwidth)`` of the fit and within ``size_max_halfwidth`` of the seed.
    With fewer than 10 sources within ``size_max_halfwidth`` of the seed, all of
    them are members (too few to fit a locus).
    """
    n = log_size.size
    w0 = config.size_min_halfwidth
    order = np.sort(log_size)
    upper = np.searchsorted(order, order + 2.0 * w0, side="right")
    best = int(np.argmax(upper - np.arange(n)))
    seed = float(np.median(order[best : upper[best]]))
    near = np.abs(log_size - seed) <= config.size_max_halfwidth
    if near.sum() < _MIN_LOCUS_FIT:
        return near  # too few to fit a locus: the broad window is the only criterion
    members = np.abs(log_size - seed) <= w0
    spatial = _usable_order(config.spatial_order, int(members.sum()), per_term=5)
    design = frame.design(x, y, spatial)
    if members.sum() >= 12 and np.ptp(log_snr[members]) > 0.5:
        design = np.column_stack([design, log_snr - np.median(log_snr[members])])
    for _ in range(10):
        if members.sum() <= design.shape[1]:
            break
        coef = np.linalg.lstsq(design[members], log_size[members], rcond=None)[0]
        resid = log_size - design @ coef
        sigma = mad_sigma(resid[members])
        new = near & (np.abs(resid) <= max(config.size_clip_sigma * sigma, w0))
        if np.array_equal(new, members):
            break
        members = new
    return members


def _usable_order(order: int, n_stars: int, *, per_term: int = 3) -> int:
    """Highest order <= ``order`` with at least ``per_term`` stars per polynomial term."""
    while order > 0 and n_stars < per_term * len(poly_terms(order)):
        order -= 1
    return order


def _validate(config: PsfConfig) -> None:
    try:
        config.validate()
    except ValueError as exc:
        raise ConfigError(f"invalid PSF configuration: {exc}", stage=_STAGE) from exc


# ------------------------------------------------------------------------- fitting


@dataclasses.dataclass(frozen=True)
class PsfResidualStats:
    """Residuals ``r = data - flux * model - background`` of the model on a set of stars.

    Each star's flux, local background and centre are fitted with the model
    held fixed, on the ``stamp_size_pix`` stamp.

    Attributes
    ----------
    n_stars : int
        Stars in the set.
    rms_per_flux : float
        RMS over stars and stamp pixels of ``r / flux`` (1/pix; the model sums to 1).
    rms_per_peak : float
        RMS of ``r / (flux * model_peak)``: residual as a fraction of the star's peak.
    chi2_per_dof : float
        ``sum(r**2 / variance) / (n_pixels - 4 n_stars)`` (1 for a perfect model and
        a correct variance plane).
    """

    n_stars: int
    rms_per_flux: float
    rms_per_peak: float
    chi2_per_dof: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PsfResult:
    """Output of :func:`fit_psf`.

    Attributes
    ----------
    model : PsfModel
        The fitted PSF (``image_at``, ``fwhm_pix_at``, ``shape_at``, ``to_hdulist``).
    candidate, used, reserved : ndarray of bool, shape (len(catalog),)
        PSF candidates, stars the final model was fitted on, and candidates held
        out at random (never fitted): the ``calib_psf_candidate``,
        ``calib_psf_used`` and ``calib_psf_reserved`` columns.
    fwhm_pix : float
        Median intrinsic FWHM over a 5x5 grid of the field (pix).
    fwhm_arcsec : float or None
        ``fwhm_pix`` times the pixel scale given to :func:`fit_psf`, else None.
    ellipticity : float
        Median ``|e|`` over the same grid.
    e1, e2 : float
        Median ellipticity components over the grid.
    reserved_residual : PsfResidualStats or None
        Residuals on the reserved stars (None when none are reserved).
    used_residual : PsfResidualStats
        Residuals on the stars used (for comparison: lower than on reserved
        stars when the model overfits).
    n_candidates, n_used, n_reserved, n_rejected : int
        Counts; ``n_rejected``: fitted stars dropped by the chi^2 or shape clipping.
    selection_counts : dict
        Sources left after each selection cut (``n_sources`` ... ``n_candidates``).
    """

    model: PsfModel
    candidate: NDArray[np.bool_]
    used: NDArray[np.bool_]
    reserved: NDArray[np.bool_]
    fwhm_pix: float
    fwhm_arcsec: float | None
    ellipticity: float
    e1: float
    e2: float
    reserved_residual: PsfResidualStats | None
    used_residual: PsfResidualStats
    n_candidates: int
    n_used: int
    n_reserved: int
    n_rejected: int
    selection_counts: dict[str, int]

    def to_metadata(self) -> dict[str, Any]:
        """Header-card style figures (``PSF_FWHM_PIX``, ``PSF_NUSED``, ...)."""
        reserved = self.reserved_residual
        return {
            "PSF_MODEL": self.model.kind,
            "PSF_SPATIAL_ORDER": self.model.spatial_order,
            "PSF_FWHM_PIX": self.fwhm_pix,
            "PSF_FWHM_ARCSEC": self.fwhm_arcsec,
            "PSF_ELLIPTICITY": self.ellipticity,
            "PSF_NCANDIDATES": self.n_candidates,
            "PSF_NUSED": self.n_used,
            "PSF_NRESERVED": self.n_reserved,
            "PSF_RESERVED_RESID_PEAK": None if reserved is None else reserved.rms_per_peak,
            "PSF_RESERVED_CHI2": None if reserved is None else reserved.chi2_per_dof,
            "PSF_USED_CHI2": self.used_residual.chi2_per_dof,
        }


@dataclasses.dataclass
class _Stars:
    """Stamps of the candidates, centred on the pixel nearest to their catalogue position."""

    ix: NDArray[np.int64]
    iy: NDArray[np.int64]
    data: NDArray[np.float64]  # (n, k, k)
    var: NDArray[np.float64]  # (n, k, k), non-finite or <= 0 replaced by the stamp median

    @classmethod
    def build(cls, exposure: Exposure, x: NDArray, y: NDArray, k: int) -> "_Stars":
        ix = np.floor(x + 0.5).astype(np.int64)
        iy = np.floor(y + 0.5).astype(np.int64)
        data = gather_stamps(exposure.image, ix, iy, k // 2).astype(float)
        var = gather_stamps(exposure.variance, ix, iy, k // 2).astype(float)
        good = np.isfinite(var) & (var > 0)
        with np.errstate(all="ignore"):
            med = np.median(np.where(good, var, np.inf).reshape(len(x), -1), axis=1)
        med = np.where(np.isfinite(med), med, 1.0)
        return cls(ix=ix, iy=iy, data=data, var=np.where(good, var, med[:, None, None]))


@dataclasses.dataclass
class _Refined:
    x: NDArray
    y: NDArray
    flux: NDArray
    background: NDArray
    chi2_dof: NDArray
    resid: NDArray  # (n, k, k)
    peak: NDArray  # model peak (sum-1 model)
    ok: NDArray


def _model_on_stamps(model: PsfModel, stars: _Stars, x: NDArray, y: NDArray, k: int, margin: int) -> NDArray:
    """Model images at ``(x, y)`` on the stars' stamp grids (centred on ``ix, iy``).

    ``margin`` bounds ``|floor(x + 0.5) - ix|`` (and in y), in pix.
    """
    big = model.image_at(x, y, shape=(k + 2 * margin, k + 2 * margin))
    ox = np.clip(np.floor(x + 0.5).astype(np.int64) - stars.ix, -margin, margin)
    oy = np.clip(np.floor(y + 0.5).astype(np.int64) - stars.iy, -margin, margin)
    u = np.arange(k)
    rows = (u[None, :] + margin - oy[:, None])[:, :, None]
    cols = (u[None, :] + margin - ox[:, None])[:, None, :]
    return big[np.arange(x.size)[:, None, None], rows, cols]


def _refine(
    model: PsfModel, stars: _Stars, x: NDArray, y: NDArray, *, max_shift_pix: float, n_steps: int = 2
) -> _Refined:
    """Fit each star's flux, background and centre with the model held fixed.

    Linearised: ``data = F M + a dM/du + c dM/dv + b`` gives the centre
    correction ``(-a/F, -c/F)`` (uniform weights within a star: unbiased with a
    data-derived variance plane); then ``F`` and ``b`` at the final centre.
    Centres stay within ``max_shift_pix`` of where they started; a star that
    hits that bound is not ``ok``.
    """
    k = stars.data.shape[-1]
    n = x.size
    margin = int(math.ceil(max_shift_pix)) + 1
    data = stars.data.reshape(n, -1)
    x0, y0 = x.copy(), y.copy()
    for _ in range(n_steps):
        m = _model_on_stamps(model, stars, x, y, k, margin)
        gv, gu = np.gradient(m, axis=(1, 2))
        basis = np.stack([m, gu, gv, np.ones_like(m)], axis=1).reshape(n, 4, k * k)
        basis = np.where(np.isfinite(basis), basis, 0.0)
        # Batched matrix products: einsum's generic loop was most of this function's time.
        normal = basis @ basis.transpose(0, 2, 1)
        coef = (np.linalg.pinv(normal) @ (basis @ data[..., None]))[..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            step_x = np.where(coef[:, 0] > 0, -coef[:, 1] / coef[:, 0], 0.0)
            step_y = np.where(coef[:, 0] > 0, -coef[:, 2] / coef[:, 0], 0.0)
        x = np.clip(x + np.clip(step_x, -0.5, 0.5), x0 - max_shift_pix, x0 + max_shift_pix)
        y = np.clip(y + np.clip(step_y, -0.5, 0.5), y0 - max_shift_pix, y0 + max_shift_pix)
    m = _model_on_stamps(model, stars, x, y, k, margin).reshape(n, -1)
    flux, background, _ = fit_amplitudes(m, data, np.ones_like(data), True)
    resid = data - flux[:, None] * m - background[:, None]
    chi2_dof = (resid**2 / stars.var.reshape(n, -1)).sum(1) / (k * k - 4)
    at_bound = (np.abs(x - x0) >= max_shift_pix) | (np.abs(y - y0) >= max_shift_pix)
    ok = np.isfinite(chi2_dof) & (flux > 0) & ~at_bound
    return _Refined(x=x, y=y, flux=flux, background=background, chi2_dof=chi2_dof,
                    resid=resid.reshape(n, k, k), peak=m.max(axis=1), ok=ok)


def _residual_stats(ref: _Refined, stars: _Stars, sel: NDArray[np.bool_]) -> PsfResidualStats | None:
    n = int(sel.sum())
    if n == 0:
        return None
    k = stars.data.shape[-1]
    r = ref.resid[sel]
    flux = ref.flux[sel][:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_flux = r / flux
        per_peak = per_flux / ref.peak[sel][:, None, None]
        chi2 = float((r**2 / stars.var[sel]).sum() / max(n * (k * k - 4), 1))
    return PsfResidualStats(
        n_stars=n,
        rms_per_flux=float(np.sqrt(np.nanmean(per_flux**2))),
        rms_per_peak=float(np.sqrt(np.nanmean(per_peak**2))),
        chi2_per_dof=chi2,
    )


def _bounds(x: NDArray, y: NDArray) -> tuple[float, float, float, float]:
    """Box holding the fitted stars: the model is not extrapolated beyond it."""
    return float(x.min()), float(x.max()), float(y.min()), float(y.max())


def _robust_upper(values: NDArray, n_sigma: float) -> float:
    med = float(np.median(values))
    return med + n_sigma * mad_sigma(values, centre=med)


def _star_weights(flux: NDArray, var: NDArray, cap: float) -> NDArray:
    """S/N^2 of each star (flux over its ``(k, k)`` stamp's total noise), capped at ``cap**2``."""
    noise2 = var.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr2 = np.where(flux > 0, flux**2 / noise2, 0.0)
    return 1.0 / (1.0 / np.maximum(snr2, 1e-12) + 1.0 / cap**2)


def _fit_pixel_basis(
    stars: _Stars, x: NDArray, y: NDArray, flux: NDArray, background: NDArray, fit: NDArray[np.bool_],
    order: int, frame: SpatialFrame, config: PsfConfig,
) -> PixelPsfModel:
    """One weighted least-squares solve: every pixel a polynomial of position."""
    k = config.stamp_size_pix
    idx = np.flatnonzero(fit)
    centred = sinc_shift(
        stars.data[idx] - background[idx, None, None],
        -(x[idx] - stars.ix[idx]), -(y[idx] - stars.iy[idx]), k,
    ) / flux[idx, None, None]
    sw = np.sqrt(_star_weights(flux[idx], stars.var[idx], config.star_weight_snr_cap))
    design = frame.design(x[idx], y[idx], order) * sw[:, None]
    # min |design c - b| through design = QR: the same least-squares solution as lstsq on the
    # whole (stars x pixels) system, but its large product is an einsum, not a threaded BLAS
    # call (whose idle threads spin and, on a busy machine, slowed the whole stage ~2x).
    q, r = np.linalg.qr(design)
    rhs = np.einsum("nt,np->tp", q, centred.reshape(idx.size, -1) * sw[:, None])
    coef = np.linalg.lstsq(r, rhs, rcond=None)[0]
    return PixelPsfModel(coef.reshape(-1, k, k), image_shape=(frame.ny, frame.nx), spatial_order=order,
                         fit_bounds=_bounds(x[idx], y[idx]))


def _fit_pixel_model(
    stars: _Stars, x: NDArray, y: NDArray, fit: NDArray[np.bool_], order: int, frame: SpatialFrame, config: PsfConfig
) -> tuple[PsfModel, NDArray[np.bool_], _Refined]:
    n = x.size
    # Start: background from the stamp border, flux = background-subtracted sum.
    border = np.concatenate([stars.data[:, 0, :], stars.data[:, -1, :], stars.data[:, 1:-1, 0],
                             stars.data[:, 1:-1, -1]], axis=1)
    background = np.median(border, axis=1)
    flux = stars.data.sum(axis=(1, 2)) - background * stars.data[0].size
    used = fit & (flux > 0)
    for iteration in range(config.n_clip_iter + 1):
        _require(used, config, "after rejecting stars whose flux or centre could not be measured")
        model = _fit_pixel_basis(stars, x, y, flux, background, used, order, frame, config)
        ref = _refine(model, stars, x, y, max_shift_pix=config.max_shift_pix)
        x, y = np.where(ref.ok, ref.x, x), np.where(ref.ok, ref.y, y)
        flux, background = np.where(ref.ok, ref.flux, flux), np.where(ref.ok, ref.background, background)
        if iteration == config.n_clip_iter:
            return model, used, ref
        used = _clip_chi2(used, ref, config)
    raise AssertionError("unreachable")  # pragma: no cover


def _clip_chi2(used: NDArray[np.bool_], ref: _Refined, config: PsfConfig) -> NDArray[np.bool_]:
    """Drop failed stars and chi^2/dof outliers; never below ``min_stars`` (keep the best)."""
    keep = used & ref.ok
    if keep.sum() < config.min_stars:
        return keep
    limit = _robust_upper(ref.chi2_dof[keep], config.clip_sigma)
    new = keep & (ref.chi2_dof <= limit)
    if new.sum() < config.min_stars:
        idx = np.flatnonzero(keep)
        new = np.zeros_like(keep)
        new[idx[np.argsort(ref.chi2_dof[idx], kind="stable")[: config.min_stars]]] = True
    return new


def _fit_moffat_model(
    stars: _Stars, x: NDArray, y: NDArray, fit: NDArray[np.bool_], order: int, frame: SpatialFrame,
    snr: NDArray, config: PsfConfig,
) -> tuple[PsfModel, NDArray[np.bool_], _Refined]:
    k = config.stamp_size_pix
    c = k // 2
    centre = stars.data[:, c - 5 : c + 6, c - 5 : c + 6]
    fwhm0 = float(np.median(moment_fwhm(centre - np.median(stars.data[:, 0, :], axis=1)[:, None, None])[fit]))
    half = int(min(k // 2, max(4, math.ceil(2.0 * fwhm0))))
    core = stars.data[:, c - half : c + half + 1, c - half : c + half + 1]
    weights = np.ones_like(core) / np.median(stars.var.reshape(x.size, -1), axis=1)[:, None, None]
    snr = np.where(np.isfinite(snr), snr, 0.0)
    # beta from free fits of the brightest stars (one number: 50 stars pin it down).
    bright = np.flatnonzero(fit)[np.argsort(-snr[fit], kind="stable")[:50]]
    free = fit_moffat_profiles(core[bright], weights[bright], fwhm_guess=np.full(bright.size, fwhm0), background=True)
    if free["ok"].sum() < min(config.min_stars, bright.size):
        _require(np.zeros(0, bool), config, "after the free Moffat fits")
    q = float(np.median(free["q"][free["ok"]]))
    fixed = fit_moffat_profiles(core, weights, fwhm_guess=np.full(x.size, fwhm0), q_fixed=q, background=True)
    x = np.where(fixed["ok"], stars.ix + fixed["x0"], x)
    y = np.where(fixed["ok"], stars.iy + fixed["y0"], y)
    used = fit & fixed["ok"]
    # Weights: S/N^2 (capped); residuals are clipped in units of 1/S/N (their expected scale).
    sw = np.minimum(snr, config.star_weight_snr_cap)
    values = np.column_stack([fixed["fwhm"], fixed["e1"], fixed["e2"]])
    for iteration in range(config.n_clip_iter + 1):
        _require(used, config, "after clipping outliers in FWHM and ellipticity")
        design = frame.design(x, y, order)
        coef = np.linalg.lstsq(design[used] * sw[used, None], values[used] * sw[used, None], rcond=None)[0]
        if iteration == config.n_clip_iter:
            break
        resid = (values - design @ coef) * sw[:, None]
        scale = MAD_TO_SIGMA * np.median(np.abs(resid[used] - np.median(resid[used], axis=0)), axis=0)
        within = (np.abs(resid) <= config.clip_sigma * np.maximum(scale, 1e-12)).all(axis=1)
        new = used & within
        if new.sum() < config.min_stars or np.array_equal(new, used):
            break
        used = new
    model = MoffatPsfModel(coef[:, 0], coef[:, 1], coef[:, 2], beta=1.0 / q, image_shape=(frame.ny, frame.nx),
                           spatial_order=order, fit_bounds=_bounds(x[used], y[used]))
    ref = _refine(model, stars, x, y, max_shift_pix=config.max_shift_pix)
    return model, used, ref


def _require(used: NDArray[np.bool_], config: PsfConfig, when: str) -> None:
    if used.sum() < config.min_stars:
        raise PsfError(
            f"only {int(used.sum())} PSF stars left {when} (need {config.min_stars}): lower min_stars, "
            "or check the candidates (crowding, saturation, a PSF that changes too fast for spatial_order)",
            stage=_STAGE, n_used=int(used.sum()), min_stars=config.min_stars,
        )


def fit_psf(
    exposure: Exposure,
    catalog: Table,
    config: PsfConfig | None = None,
    *,
    seed: int,
    pixel_scale_arcsec: float | None = None,
    candidates: ArrayLike | None = None,
) -> PsfResult:
    """Select PSF stars, reserve some, and fit a spatially varying PSF model.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure (``image`` ADU, ``variance`` ADU^2,
        ``mask``), arrays indexed ``[y, x]``; not modified.
    catalog : astropy.table.Table
        Measured sources (see :func:`select_psf_candidates`), positions in
        local 0-based pix.
    config : PsfConfig, optional
    seed : int
        Seed of the ``numpy.random.Generator`` choosing the reserved stars
        (the pipeline passes the exposure id).
    pixel_scale_arcsec : float, optional
        Pixel scale (arcsec/pix) to express the FWHM in arcsec.
    candidates : array_like of bool, optional
        Use these candidates instead of :func:`select_psf_candidates`.

    Returns
    -------
    PsfResult

    Raises
    ------
    PsfError
        Fewer than ``min_stars`` candidates, or fewer stars left to fit after
        reserving and clipping; the figures say how many survived each cut.
    ConfigError
        Invalid configuration.
    """
    config = config or PsfConfig()
    _validate(config)
    ny, nx = exposure.shape
    frame = SpatialFrame(nx=nx, ny=ny)
    if candidates is None:
        candidate, counts, snr = _select(catalog, exposure, config)
    else:
        candidate = np.asarray(candidates, bool).copy()
        if candidate.shape != (len(catalog),):
            raise ValueError(f"candidates must have shape ({len(catalog)},), got {candidate.shape}")
        h = config.stamp_size_pix // 2
        cx = np.floor(np.asarray(catalog["x"], float)[candidate] + 0.5)
        cy = np.floor(np.asarray(catalog["y"], float)[candidate] + 0.5)
        if not np.all((cx - h >= 0) & (cx + h < nx) & (cy - h >= 0) & (cy + h < ny)):
            raise ValueError("every given candidate's stamp must lie inside the image (finite x, y)")
        counts = {"n_sources": len(catalog), "n_candidates": int(candidate.sum())}
        snr = _snr(catalog, exposure, config)
    n_cand = int(candidate.sum())
    if n_cand < config.min_stars:
        cuts = ", ".join(f"{k[2:]} {v}" for k, v in counts.items() if k != "n_candidates")
        raise PsfError(
            f"only {n_cand} PSF candidate stars (need {config.min_stars}): lower candidate_min_snr "
            f"(now {config.candidate_min_snr:g}), isolation_radius_pix ({config.isolation_radius_pix:g}) "
            f"or min_stars, or check detection and saturation (sources left after each cut: {cuts})",
            stage=_STAGE, min_stars=config.min_stars, **{**counts, "n_candidates": n_cand},
        )
    reserved = np.zeros(len(catalog), bool)
    cand_idx = np.flatnonzero(candidate)
    n_reserve = int(round(cand_idx.size * config.reserve_fraction))
    reserved[np.random.default_rng(seed).permutation(cand_idx)[:n_reserve]] = True
    fit_local = ~reserved[cand_idx]
    if fit_local.sum() < config.min_stars:
        raise PsfError(
            f"{n_cand} PSF candidates leave {int(fit_local.sum())} after reserving "
            f"{config.reserve_fraction:.0%} (need {config.min_stars}): lower reserve_fraction or min_stars",
            stage=_STAGE, n_candidates=n_cand, n_reserved=n_reserve, min_stars=config.min_stars,
        )
    order = _usable_order(config.spatial_order, int(fit_local.sum()))
    x = np.asarray(catalog["x"], float)[cand_idx]
    y = np.asarray(catalog["y"], float)[cand_idx]
    stars = _Stars.build(exposure, x, y, config.stamp_size_pix)
    if config.model == "pixel":
        model, used_local, ref = _fit_pixel_model(stars, x, y, fit_local, order, frame, config)
    else:
        model, used_local, ref = _fit_moffat_model(stars, x, y, fit_local, order, frame, snr[cand_idx], config)
    used = np.zeros(len(catalog), bool)
    used[cand_idx[used_local]] = True
    reserved_local = reserved[cand_idx]
    summary = model.field_summary()
    used_stats = _residual_stats(ref, stars, used_local)
    assert used_stats is not None
    return PsfResult(
        model=model,
        candidate=candidate,
        used=used,
        reserved=reserved,
        fwhm_pix=summary["fwhm_pix"],
        fwhm_arcsec=None if pixel_scale_arcsec is None else summary["fwhm_pix"] * float(pixel_scale_arcsec),
        ellipticity=summary["ellipticity"],
        e1=summary["e1"],
        e2=summary["e2"],
        reserved_residual=_residual_stats(ref, stars, reserved_local & ref.ok),
        used_residual=used_stats,
        n_candidates=n_cand,
        n_used=int(used.sum()),
        n_reserved=int(reserved.sum()),
        n_rejected=int(fit_local.sum() - used_local.sum()),
        selection_counts=counts,
    )
