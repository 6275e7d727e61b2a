"""Astrometric calibration: a TAN-SIP WCS from a reference catalogue (LSST's ``AstrometryTask``).

Flow, as LSST's ``AstrometryTask.solve`` with the pessimistic matcher and
``FitTanSipWcsTask``:

1. Select good sources: S/N of the flux column at least ``min_snr``, primary
   (``detect_isPrimary``), not a sky source, none of ``bad_flags`` set, finite
   position. Absent columns are ignored, so a bare ``x, y, flux`` table works.
2. Pattern-match them to the reference stars from the header WCS
   (:func:`calibration.matcher.match_pattern`), which finds the header's
   pointing, rotation and scale error.
3. Fit a TAN-SIP WCS (:func:`calibration.wcsfit.fit_tan_sip`, sigma clipped) to
   the pattern matches, then ``max_iter`` times: match sources to references on
   the sky with the current WCS within the current radius, refit, and shrink the
   radius to ``mean + match_distance_sigma * std`` of the used matches' distances
   (never below ``match_radius_floor_arcsec``); stop early when the match list
   no longer changes. The first radius is ``match_radius_arcsec``, or that
   statistic of the first fit when larger (as LSST starts from the matcher's
   distances), so that a fit too simple for the distortion loses no stars.
4. A random ``reserve_fraction`` of the selected sources (seeded) never enters a
   fit; the RMS of their matches is an honest estimate of the WCS error.

Failures raise :class:`~calibration.errors.AstrometryError` with
``stage="astrometry"`` and figures; the pipeline decides whether astrometry is
required (LSST's ``requireAstrometry``). When the fit ran but fails a quality
check (too few used matches, mean distance above ``max_mean_distance_arcsec``),
the error's ``partial`` attribute holds the :class:`AstrometryResult` for
diagnostics.

Deviations from LSST: the SIP order is lowered (with a warning) when there are
fewer than ``min_matches_per_sip_term`` matches per coefficient, where LSST
would fit an under-constrained polynomial; reserved stars are drawn among the
selected sources with ``numpy.random.default_rng(seed)``; the matcher is a
pair-voting matcher, not the pessimistic B matcher's spokes (same envelope).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from .configbase import doc_field
from .errors import AstrometryError
from .match import match_sky
from .matcher import MatcherConfig, PatternMatch, match_pattern, project_refs
from .refcat import ReferenceCatalog
from .wcsfit import MAX_SIP_ORDER, WcsFitResult, fit_tan_sip, n_poly_terms, sky_offsets_mas

__all__ = ["AstrometryConfig", "AstrometryResult", "fit_astrometry", "select_sources"]

STAGE = "astrometry"
_ARCSEC_PER_MAS = 1e-3


@dataclasses.dataclass(frozen=True)
class AstrometryConfig:
    """Configuration of the astrometric calibration (LSST ``AstrometryConfig`` + ``FitTanSipWcsConfig``)."""

    flux_field: str = doc_field(
        "psf_flux", "Source flux column (ADU) for the S/N cut and brightness order; <name>_err is its error."
    )
    fallback_flux_field: str = doc_field(
        "apflux_12_0", "Flux column used when flux_field is absent or has no finite value (no PSF model)."
    )
    min_snr: float = doc_field(10.0, "Smallest S/N (flux / flux_err) of a source used for astrometry.")
    bad_flags: tuple[str, ...] = doc_field(
        ("flag_edge", "flag_saturated", "flag_saturated_center", "flag_interpolated_center", "flag_cr_center",
         "flag_bad", "flag_nodata", "centroid_flag"),
        "Source flag columns that exclude a source when true (absent columns are ignored).",
    )
    ref_mag_min: float | None = doc_field(None, "Brightest reference magnitude used (mag); None: no limit.")
    ref_mag_max: float | None = doc_field(None, "Faintest reference magnitude used (mag); None: no limit.")
    matcher: MatcherConfig = doc_field(MatcherConfig(), "Pattern matcher: pointing-error envelope and tolerances.")
    max_iter: int = doc_field(3, "Match-and-fit iterations after the pattern match (LSST maxIter).")
    match_radius_arcsec: float = doc_field(
        1.0, "Sky match radius of the first iteration (arcsec); later ones shrink it from the distances."
    )
    match_radius_floor_arcsec: float = doc_field(
        0.1, "Smallest sky match radius (arcsec) the iterations may shrink to (LSST minMatchDistanceArcSec)."
    )
    match_distance_sigma: float = doc_field(
        2.0, "Next radius = mean + match_distance_sigma * std of the used distances (LSST matchDistanceSigma)."
    )
    clip_sigma: float = doc_field(
        3.0, "WCS fit rejects matches further than clip_sigma robust sigma from the fit (LSST rejectThresh)."
    )
    sip_order: int = doc_field(3, "Order of the SIP distortion polynomial, 1 (plain TAN) to 5.")
    min_matches_per_sip_term: float = doc_field(
        3.0, "The SIP order is lowered until there are this many fitted matches per coefficient of an axis."
    )
    max_mean_distance_arcsec: float = doc_field(
        0.5, "Fail when the mean distance of the used matches exceeds this (arcsec; LSST maxMeanDistanceArcsec)."
    )
    min_matches: int = doc_field(10, "Fewest matches the fit may rest on; fewer raises AstrometryError.")
    weight_by_errors: bool = doc_field(
        True,
        "Weight matches by 1/sigma from the sources' x_err/y_err and the references' ra_err/dec_err (mas) when "
        "present, and clip on the normalised distance; False: equal weights (LSST).",
    )
    position_error_floor_mas: float = doc_field(
        5.0, "Error added in quadrature to every match's position error (mas): what formal errors miss."
    )
    reserve_fraction: float = doc_field(
        0.1, "Fraction of the selected sources held out of every fit to test the WCS (reserved matches)."
    )

    def validate(self) -> None:
        """Cross-field checks; raises ``ValueError``."""
        self.matcher.validate()
        if not 1 <= self.sip_order <= MAX_SIP_ORDER:
            raise ValueError(f"sip_order must be within 1..{MAX_SIP_ORDER}, got {self.sip_order}")
        if not 0.0 <= self.reserve_fraction < 0.5:
            raise ValueError(f"reserve_fraction must be within [0, 0.5), got {self.reserve_fraction}")
        for name in ("match_radius_arcsec", "match_radius_floor_arcsec", "match_distance_sigma", "clip_sigma",
                     "max_mean_distance_arcsec", "min_matches_per_sip_term"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if self.match_radius_floor_arcsec > self.match_radius_arcsec:
            raise ValueError(f"match_radius_floor_arcsec ({self.match_radius_floor_arcsec}) must be <= "
                             f"match_radius_arcsec ({self.match_radius_arcsec})")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.min_matches < 4:
            raise ValueError(f"min_matches must be >= 4 (a TAN WCS has 3 coefficients per axis), "
                             f"got {self.min_matches}")
        if not (math.isfinite(self.position_error_floor_mas) and self.position_error_floor_mas >= 0):
            raise ValueError(f"position_error_floor_mas must be >= 0, got {self.position_error_floor_mas}")
        if self.weight_by_errors and self.position_error_floor_mas == 0:
            raise ValueError("weight_by_errors needs position_error_floor_mas > 0 (a zero error is an infinite weight)")
        if not self.min_snr >= 0:
            raise ValueError(f"min_snr must be >= 0, got {self.min_snr}")
        if self.ref_mag_min is not None and self.ref_mag_max is not None and not self.ref_mag_min < self.ref_mag_max:
            raise ValueError(f"ref_mag_min ({self.ref_mag_min}) must be < ref_mag_max ({self.ref_mag_max})")
        if not self.flux_field or not self.fallback_flux_field:
            raise ValueError("flux_field and fallback_flux_field must name flux columns")


@dataclasses.dataclass
class AstrometryResult:
    """What the astrometric calibration produced.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Fitted TAN-SIP WCS (plain TAN when the order fell to 1) for 0-based pixels.
    matches : astropy.table.Table
        One row per final match: ``ref_id``, ``src_id``, ``ref_ra``, ``ref_dec``
        (deg), ``src_x``, ``src_y`` (pix), ``src_ra``, ``src_dec`` (deg, through
        the new WCS), ``distance_arcsec``, ``dra_mas`` (``(ref - src)`` RA times
        cos dec), ``ddec_mas``, ``initial_distance_arcsec`` (through the header
        WCS), ``used``, ``clipped``, ``reserved`` and ``ref_mag`` (with a band).
    metadata : dict
        ``SFM_ASTROM_OFFSET_MEAN``/``_STD`` (arcsec, used matches, as LSST),
        ``ASTROM_RMS_MAS`` (2-D RMS of the used matches), ``ASTROM_RESERVED_RMS_MAS``,
        counts, the SIP order, the final radius and the matcher's header error
        (``ASTROM_INITIAL_OFFSET_*``, ``_ROTATION_DEG``, ``_SCALE``).
    pattern : PatternMatch
        The pattern matcher's answer.
    fit : WcsFitResult
        The last WCS fit.
    warnings : list of str
        Non-fatal problems (SIP order lowered...).
    """

    wcs: WCS
    matches: Table
    metadata: dict[str, Any]
    pattern: PatternMatch
    fit: WcsFitResult
    warnings: list[str]


def _column(table: Table, name: str) -> np.ndarray | None:
    return np.asarray(table[name]) if name in table.colnames else None


def select_sources(sources: Table, config: AstrometryConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Sources good for astrometry (step 1 of the module doc).

    Returns
    -------
    good : numpy.ndarray of bool, shape (n,)
        Selected rows.
    flux : numpy.ndarray, shape (n,)
        The flux used for the S/N cut and brightness order (ADU).
    flux_field : str
        Its column name (``flux_field`` or the fallback); ``""`` when neither
        exists, in which case no S/N cut is applied and all fluxes are NaN.
    """
    n = len(sources)
    for col in ("x", "y"):
        if col not in sources.colnames:
            raise AstrometryError(f"the source catalogue has no {col!r} column (0-based pixels)", stage=STAGE,
                                  columns=list(sources.colnames[:30]))
    x = np.asarray(sources["x"], float)
    y = np.asarray(sources["y"], float)
    good = np.isfinite(x) & np.isfinite(y)
    for name in config.bad_flags:
        flag = _column(sources, name)
        if flag is not None:
            good &= ~flag.astype(bool)
    primary = _column(sources, "detect_isPrimary")
    if primary is not None:
        good &= primary.astype(bool)
    sky = _column(sources, "sky_source")
    if sky is not None:
        good &= ~sky.astype(bool)
    field = ""
    for name in (config.flux_field, config.fallback_flux_field):
        if name in sources.colnames and np.isfinite(np.asarray(sources[name], float)).any():
            field = name
            break
    if not field:
        return good, np.full(n, np.nan), ""
    flux = np.asarray(sources[field], float)
    err = _column(sources, f"{field}_err")
    if err is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / np.asarray(err, float)
        good &= np.isfinite(snr) & (snr >= config.min_snr)
    else:
        good &= np.isfinite(flux) & (flux > 0)
    return good, flux, field


def _reference_arrays(
    refcat: Table | ReferenceCatalog, ref_band: str | None, config: AstrometryConfig
) -> tuple[Table, np.ndarray, np.ndarray | None, str | None]:
    """Rows usable as references, their ids and the magnitudes used for order and limits."""
    table = refcat.table if isinstance(refcat, ReferenceCatalog) else refcat
    for col in ("ra", "dec"):
        if col not in table.colnames:
            raise AstrometryError(f"the reference catalogue has no {col!r} column (deg)", stage=STAGE,
                                  columns=list(table.colnames[:30]))
    ids = np.asarray(table["id"]) if "id" in table.colnames else np.arange(1, len(table) + 1)
    mag_cols = [c for c in table.colnames if c.endswith("_mag")]
    if ref_band is not None:
        band_col = f"{ref_band}_mag"
        if band_col not in table.colnames:
            raise AstrometryError(
                f"the reference catalogue has no {band_col!r} column; bands: "
                f"{', '.join(c[:-4] for c in mag_cols) or 'none'}", stage=STAGE, band=ref_band)
    else:
        # Any band orders the stars well enough for the matcher.
        band_col = mag_cols[0] if mag_cols else None
    ra = np.asarray(table["ra"], float)
    dec = np.asarray(table["dec"], float)
    keep = np.isfinite(ra) & np.isfinite(dec)
    mag = None
    if band_col is not None:
        mag = np.asarray(table[band_col], float)
        if config.ref_mag_min is not None:
            keep &= mag >= config.ref_mag_min
        if config.ref_mag_max is not None:
            keep &= mag <= config.ref_mag_max
    rows = np.flatnonzero(keep)
    return table[rows], ids[rows], None if mag is None else mag[rows], band_col


def _variance(table: Table, columns: tuple[str, str]) -> np.ndarray:
    """Mean per-axis variance from two error columns (their unit squared); 0 where absent or not finite."""
    parts = [np.asarray(table[c], float) ** 2 for c in columns if c in table.colnames]
    if not parts:
        return np.zeros(len(table))
    var = np.mean(parts, axis=0)
    return np.where(np.isfinite(var), var, 0.0)


def _sip_order_for(n_fit: int, config: AstrometryConfig) -> int:
    order = config.sip_order
    while order > 1 and n_fit < config.min_matches_per_sip_term * n_poly_terms(order):
        order -= 1
    return order


def _mean_std(distance: np.ndarray) -> tuple[float, float]:
    if distance.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(distance)), float(np.std(distance))


def fit_astrometry(
    sources: Table,
    refcat_table: Table | ReferenceCatalog,
    initial_wcs: WCS,
    image_shape: tuple[int, int],
    config: AstrometryConfig | None = None,
    *,
    ref_band: str | None = None,
    seed: int = 0,
) -> AstrometryResult:
    """Fit a TAN-SIP WCS to a source catalogue against a reference catalogue.

    Parameters
    ----------
    sources : astropy.table.Table
        Measured sources: ``x``, ``y`` (0-based pix) and optionally ``id`` (else
        the row index), ``x_err``/``y_err`` (pix), the flux and its ``_err``,
        the flags, ``detect_isPrimary`` and ``sky_source``.
    refcat_table : astropy.table.Table or ReferenceCatalog
        ``id``, ``ra``, ``dec`` (deg, ICRS, at the exposure's epoch: proper
        motions are not applied here), ``<band>_mag`` and optionally
        ``ra_err``/``dec_err`` (mas) columns.
    initial_wcs : astropy.wcs.WCS
        The header WCS (0-based pixels); it may be off within the matcher's envelope.
    image_shape : (ny, nx)
        Image size (pix).
    config : AstrometryConfig, optional
        Defaults when None.
    ref_band : str, optional
        Reference band for magnitude limits, brightness order and the matches'
        ``ref_mag``; None: the first ``*_mag`` column orders the stars.
    seed : int
        Seed of the reserved-source draw.

    Returns
    -------
    AstrometryResult

    Raises
    ------
    AstrometryError
        ``stage="astrometry"``: too few good sources or reference stars, no
        pattern match, too few matches for the fit, or a mean match distance
        above ``max_mean_distance_arcsec`` (then ``error.partial`` holds the result).
    ValueError
        On an invalid configuration.
    """
    config = config or AstrometryConfig()
    config.validate()
    ny, nx = (int(s) for s in image_shape)
    warnings: list[str] = []

    good, flux, flux_field = select_sources(sources, config)
    sel = np.flatnonzero(good)
    if sel.size < config.min_matches:
        raise AstrometryError(
            f"only {sel.size} of {len(sources)} sources are good for astrometry (S/N >= {config.min_snr:g} in "
            f"{flux_field or 'no flux column'}, primary, unflagged); at least {config.min_matches} are needed",
            stage=STAGE, n_sources=len(sources), n_selected=int(sel.size), min_matches=config.min_matches,
            flux_field=flux_field)
    src_ids = np.asarray(sources["id"]) if "id" in sources.colnames else np.arange(len(sources))
    sx = np.asarray(sources["x"], float)[sel]
    sy = np.asarray(sources["y"], float)[sel]
    sflux = flux[sel]
    refs, ref_ids, ref_mag, band_col = _reference_arrays(refcat_table, ref_band, config)
    rra = np.asarray(refs["ra"], float)
    rdec = np.asarray(refs["dec"], float)

    pattern = match_pattern(sx, sy, sflux, rra, rdec, ref_mag, initial_wcs, image_shape=(ny, nx),
                            config=config.matcher)

    # Per-axis position variances: sources in pix^2, references in mas^2. The header's pixel scale
    # is pattern.scale times the true one.
    src_var_pix2 = _variance(sources, ("x_err", "y_err"))[sel]
    ref_var_mas2 = _variance(refs, ("ra_err", "dec_err"))
    mas_per_pix = _pixel_scale_arcsec(initial_wcs) / pattern.scale * 1e3

    rng = np.random.default_rng(seed)
    reserved_src = np.zeros(sel.size, bool)
    reserved_src[rng.permutation(sel.size)[: int(round(config.reserve_fraction * sel.size))]] = True

    lowered: list[str] = []

    def fit(si: np.ndarray, ri: np.ndarray) -> WcsFitResult:
        fit_rows = ~reserved_src[si]
        n_fit = int(fit_rows.sum())
        if n_fit < config.min_matches:
            raise AstrometryError(
                f"only {n_fit} matched stars are left to fit the WCS (plus {int((~fit_rows).sum())} reserved); "
                f"at least {config.min_matches} are needed: the field may be sparse, the reference catalogue "
                "shallow, or the S/N cut too strict", stage=STAGE, n_fit=n_fit, n_matches=int(si.size),
                n_selected=int(sel.size), n_pattern_matches=len(pattern), min_matches=config.min_matches)
        order = _sip_order_for(n_fit, config)
        # Only the last fit's note is kept: earlier iterations had other match counts.
        lowered[:] = [] if order == config.sip_order else [
            f"SIP order lowered from {config.sip_order} to {order}: {n_fit} fitted matches are fewer than "
            f"{config.min_matches_per_sip_term:g} per coefficient of order {order + 1}"]
        rows_s, rows_r = si[fit_rows], ri[fit_rows]
        weights = None
        if config.weight_by_errors:
            sigma2 = src_var_pix2[rows_s] * mas_per_pix**2 + ref_var_mas2[rows_r] + config.position_error_floor_mas**2
            weights = 1.0 / np.sqrt(sigma2)
        return fit_tan_sip(sx[rows_s], sy[rows_s], rra[rows_r], rdec[rows_r], sip_order=order,
                           image_shape=(ny, nx), clip_sigma=config.clip_sigma, weights=weights)

    si, ri = pattern.src_index, pattern.ref_index
    result = fit(si, ri)
    wcs = result.wcs
    # Start from the configured radius, or wider when the first fit is poorer than that (a low
    # SIP order on a sparse, distorted field): stars must not be lost to the model's own error.
    distance = _distances_arcsec(wcs, sx[si], sy[si], rra[ri], rdec[ri])
    mean, std = _mean_std(distance[~reserved_src[si]][result.used])
    radius = max(config.match_radius_arcsec, mean + config.match_distance_sigma * std)
    previous: tuple[bytes, bytes] | None = None
    n_iter = 0
    match_radius = radius
    for n_iter in range(1, config.max_iter + 1):
        match_radius = radius
        near, _, _ = project_refs(rra, rdec, wcs, (ny, nx), margin_pix=5.0 * radius / _pixel_scale_arcsec(wcs) + 5)
        src_ra, src_dec = wcs.all_pix2world(sx, sy, 0)
        m = match_sky(src_ra, src_dec, rra[near], rdec[near], radius_arcsec=radius)
        si, ri = m.src_index, near[m.ref_index]
        result = fit(si, ri)
        wcs = result.wcs
        key = (si.tobytes(), ri.tobytes())
        distance = _distances_arcsec(wcs, sx[si], sy[si], rra[ri], rdec[ri])
        mean, std = _mean_std(distance[~reserved_src[si]][result.used])
        new_radius = max(config.match_radius_floor_arcsec, min(radius, mean + config.match_distance_sigma * std))
        if key == previous and math.isclose(new_radius, radius, rel_tol=0.01):
            break
        previous, radius = key, new_radius

    matches, metadata = _summarise(
        sources=sources, src_ids=src_ids, sel=sel, sx=sx, sy=sy, si=si, ri=ri, ref_ids=ref_ids, rra=rra,
        rdec=rdec, refs=refs, band_col=band_col if ref_band is not None else None, reserved_src=reserved_src,
        result=result, initial_wcs=initial_wcs, pattern=pattern, radius=match_radius, n_iter=n_iter,
    )
    metadata["ASTROM_FLUX_FIELD"] = flux_field
    warnings.extend(lowered)
    out = AstrometryResult(wcs=wcs, matches=matches, metadata=metadata, pattern=pattern, fit=result,
                           warnings=warnings)
    n_used = int(np.count_nonzero(matches["used"]))
    if n_used < config.min_matches:
        error = AstrometryError(
            f"only {n_used} matches survived the WCS fit's clipping; at least {config.min_matches} are needed",
            stage=STAGE, n_used=n_used, n_matches=len(matches), min_matches=config.min_matches)
        error.partial = out  # type: ignore[attr-defined]
        raise error
    mean_dist = metadata["SFM_ASTROM_OFFSET_MEAN"]
    if not mean_dist <= config.max_mean_distance_arcsec:
        error = AstrometryError(
            f"the WCS fit is poor: the mean distance of matched stars is {mean_dist:.3f} arcsec, more than "
            f"max_mean_distance_arcsec = {config.max_mean_distance_arcsec:g}. Check the reference catalogue "
            "epoch and the sources' centroids, or raise sip_order if the distortion is strong",
            stage=STAGE, mean_distance_arcsec=mean_dist, std_distance_arcsec=metadata["SFM_ASTROM_OFFSET_STD"],
            max_mean_distance_arcsec=config.max_mean_distance_arcsec, n_used=n_used,
            sip_order=result.sip_order)
        error.partial = out  # type: ignore[attr-defined]
        raise error
    return out


def _pixel_scale_arcsec(wcs: WCS) -> float:
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.wcs.get_pc() * wcs.wcs.cdelt[:, None]
    return float(math.sqrt(abs(np.linalg.det(cd))) * 3600.0)


def _distances_arcsec(wcs: WCS, x: np.ndarray, y: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    sra, sdec = wcs.all_pix2world(x, y, 0)
    dra, ddec = sky_offsets_mas(ra, dec, sra, sdec)
    return np.hypot(dra, ddec) * _ARCSEC_PER_MAS


def _summarise(
    *, sources: Table, src_ids: np.ndarray, sel: np.ndarray, sx: np.ndarray, sy: np.ndarray, si: np.ndarray,
    ri: np.ndarray, ref_ids: np.ndarray, rra: np.ndarray, rdec: np.ndarray, refs: Table, band_col: str | None,
    reserved_src: np.ndarray, result: WcsFitResult, initial_wcs: WCS, pattern: PatternMatch, radius: float,
    n_iter: int,
) -> tuple[Table, dict[str, Any]]:
    """The matches table and the metadata of the final iteration."""
    wcs = result.wcs
    src_ra, src_dec = wcs.all_pix2world(sx[si], sy[si], 0)
    dra, ddec = sky_offsets_mas(rra[ri], rdec[ri], src_ra, src_dec)
    ira, idec = initial_wcs.all_pix2world(sx[si], sy[si], 0)
    ida, idd = sky_offsets_mas(rra[ri], rdec[ri], ira, idec)
    reserved = reserved_src[si]
    used = np.zeros(si.size, bool)
    used[np.flatnonzero(~reserved)[result.used]] = True
    clipped = ~reserved & ~used

    t = Table()

    def col(name: str, data: Any, unit: str | None, description: str) -> None:
        t[name] = data
        t[name].unit = unit
        t[name].description = description

    col("ref_id", ref_ids[ri], None, "Reference catalogue id")
    col("src_id", src_ids[sel[si]], None, "Source id")
    col("ref_ra", rra[ri], "deg", "Reference right ascension")
    col("ref_dec", rdec[ri], "deg", "Reference declination")
    col("src_x", sx[si], "pix", "Source x (0-based)")
    col("src_y", sy[si], "pix", "Source y (0-based)")
    col("src_ra", np.mod(src_ra, 360.0), "deg", "Source right ascension through the fitted WCS")
    col("src_dec", src_dec, "deg", "Source declination through the fitted WCS")
    col("distance_arcsec", np.hypot(dra, ddec) * _ARCSEC_PER_MAS, "arcsec", "Reference-source distance (fitted WCS)")
    col("dra_mas", dra, "mas", "(ref - src) right ascension times cos(dec)")
    col("ddec_mas", ddec, "mas", "(ref - src) declination")
    col("initial_distance_arcsec", np.hypot(ida, idd) * _ARCSEC_PER_MAS, "arcsec",
        "Reference-source distance through the header WCS")
    col("used", used, None, "Used in the final WCS fit")
    col("clipped", clipped, None, "Rejected by the WCS fit's sigma clipping")
    col("reserved", reserved, None, "Held out of every fit to test the WCS")
    if band_col is not None:
        col("ref_mag", np.asarray(refs[band_col], float)[ri], "mag", f"Reference {band_col}")

    dist_used = np.asarray(t["distance_arcsec"])[used]
    mean, std = _mean_std(dist_used)

    def rms(mask: np.ndarray) -> float | None:
        return float(np.sqrt(np.mean(dra[mask] ** 2 + ddec[mask] ** 2))) if mask.any() else None

    metadata: dict[str, Any] = {
        "SFM_ASTROM_OFFSET_MEAN": mean,
        "SFM_ASTROM_OFFSET_STD": std,
        "ASTROM_RMS_MAS": rms(used),
        "ASTROM_RESERVED_RMS_MAS": rms(reserved),
        "ASTROM_N_MATCHES": int(si.size),
        "ASTROM_N_USED": int(used.sum()),
        "ASTROM_N_CLIPPED": int(clipped.sum()),
        "ASTROM_N_RESERVED": int(reserved.sum()),
        "ASTROM_N_SELECTED": int(sel.size),
        "ASTROM_SIP_ORDER": int(result.sip_order),
        "ASTROM_N_ITER": int(n_iter),
        "ASTROM_MATCH_RADIUS_ARCSEC": float(radius),
        "ASTROM_PATTERN_N_MATCHES": len(pattern),
        "ASTROM_INITIAL_OFFSET_PIX": pattern.offset_pix,
        "ASTROM_INITIAL_OFFSET_X_PIX": pattern.shift_x_pix,
        "ASTROM_INITIAL_OFFSET_Y_PIX": pattern.shift_y_pix,
        "ASTROM_INITIAL_ROTATION_DEG": pattern.rotation_deg,
        "ASTROM_INITIAL_SCALE": pattern.scale,
        "ASTROM_INITIAL_DISTANCE_MEDIAN_ARCSEC": float(np.median(t["initial_distance_arcsec"])) if len(t) else None,
    }
    return t, metadata
