"""``calibrate(...)``: the whole task, as a pure function returning a result.

The stages run in LSST's order (CharacterizeImageTask, then CalibrateTask):
background, cosmic rays, detection and deblending, sky sources, measurement,
then photometric calibration against a reference catalogue. Each stage lives
in its own module; this module only orders them, times them, reports progress
and collects the metadata (MAGZERO, MAGZERO_RMS, ...). Stages that do not
exist yet are reported as skipped in the result, never faked.

Mapping of LSST's CalibrateConfig flags to ours: doDeblend ->
``detection.do_deblend``; doSkySources -> ``do_sky_sources``; doApCorr ->
``do_ap_corr``; doAstrometry -> ``do_astrometry``; requireAstrometry ->
``require_astrometry``; doPhotoCal -> ``do_photo_cal``; requirePhotoCal ->
``require_photo_cal``; astrometry.maxMeanDistanceArcsec ->
``astrometry.max_mean_distance_arcsec``. icSourceFieldsToCopy / matchRadiusPix:
our PSF stars are selected on the final catalogue itself, so the
``calib_psf_*`` fields are set on it directly and nothing needs copying.
doWriteMatches / doWriteMatchesDenormalized / doWriteExposure are choices of
:func:`calibration.outputs.write_outputs` (every output is written).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from astropy.table import Table

from . import __version__
from .background import BackgroundConfig, BackgroundModel
from .configbase import config_from_dict, config_to_dict, doc_field
from .cosmicrays import CosmicRayConfig, find_and_repair_cosmic_rays
from .background import estimate_background
from .detection import DetectionConfig, detect_sources, first_look, psf_fwhm_from_moments, reestimate_background
from .astrometry import AstrometryConfig, AstrometryResult, fit_astrometry
from .apcorr import ApCorrConfig, ApCorrMap, apply_aperture_corrections, measure_aperture_corrections
from .errors import (
    AstrometryError,
    CalibrationError,
    CancelledError,
    ConfigError,
    NoSourcesError,
    PhotometryError,
    PsfError,
)
from .exposure import Exposure
from .measure import MeasureConfig, measure_sources
from .photocal import PhotoCalConfig
from .psf import PsfConfig, PsfResult, fit_psf
from .refcat import ReferenceCatalog
from .skysources import SkySourceConfig, measure_sky_noise, place_sky_sources

log = logging.getLogger(__name__)

#: Stages in order with their share of the run's wall time (for progress bars).
STAGES: tuple[tuple[str, float], ...] = (
    ("read", 0.05),
    ("background", 0.15),
    ("cosmic_rays", 0.10),
    ("detection", 0.20),
    ("sky_sources", 0.05),
    ("psf", 0.10),
    ("measurement", 0.20),
    ("apcorr", 0.03),
    ("astrometry", 0.07),
    ("photocal", 0.10),
    ("write", 0.10),
)

ProgressCallback = Callable[[str, float], None]


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """Configuration of the whole calibration (CalibrateConfig equivalent)."""

    background: BackgroundConfig = doc_field(BackgroundConfig(), "Background estimation (sep mesh).")
    detection: DetectionConfig = doc_field(DetectionConfig(), "Detection and deblending.")
    cosmic_rays: CosmicRayConfig = doc_field(CosmicRayConfig(), "Cosmic-ray detection and repair.")
    sky_sources: SkySourceConfig = doc_field(SkySourceConfig(), "Sky-source apertures.")
    psf: PsfConfig = doc_field(PsfConfig(), "PSF star selection and model (characterisation).")
    measurement: MeasureConfig = doc_field(MeasureConfig(), "Source measurement.")
    apcorr: ApCorrConfig = doc_field(ApCorrConfig(), "Aperture corrections measured on the PSF stars.")
    astrometry: AstrometryConfig = doc_field(AstrometryConfig(), "Astrometric matching and TAN-SIP fit.")
    photocal: PhotoCalConfig = doc_field(PhotoCalConfig(), "Photometric calibration.")
    do_sky_sources: bool = doc_field(True, "Place and measure sky sources (doSkySources).")
    do_psf: bool = doc_field(True, "Fit a PSF model (CharacterizeImageTask's measurePsf).")
    require_psf: bool = doc_field(False, "Fail the run when the PSF cannot be fitted; else warn, no PSF fluxes.")
    do_ap_corr: bool = doc_field(True, "Measure and apply aperture corrections (doApCorr).")
    do_astrometry: bool = doc_field(True, "Fit the WCS when an astrometric catalogue is given (doAstrometry).")
    require_astrometry: bool = doc_field(
        False, "Fail the run when the astrometric fit fails (requireAstrometry); else warn and keep the header WCS."
    )
    do_photo_cal: bool = doc_field(True, "Fit the zero point when a reference catalogue is given (doPhotoCal).")
    require_photo_cal: bool = doc_field(False, "Fail the run when the photometric calibration fails (requirePhotoCal).")
    psf_fwhm_guess_pix: float = doc_field(3.0, "PSF FWHM assumed before it is measured (pixels).")
    reference_band: str = doc_field("", "Reference-catalogue band for the zero point; empty: the exposure's filter.")
    ic_source_fields_to_copy: tuple[str, ...] = doc_field(
        ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved"),
        "Fields copied from a given characterisation catalogue (icSourceFieldsToCopy).",
    )
    match_radius_pix: float = doc_field(3.0, "Match radius (pix) of that copy (matchRadiusPix).")

    def validate(self) -> None:
        if not 0.5 <= self.psf_fwhm_guess_pix <= 50:
            raise ValueError(f"psf_fwhm_guess_pix={self.psf_fwhm_guess_pix} is outside 0.5-50 pixels")


def config_from_json(data: Any) -> CalibrateConfig:
    """Build and validate a :class:`CalibrateConfig` from JSON (raises ConfigError)."""
    return config_from_dict(CalibrateConfig, data)


@dataclasses.dataclass
class CalibrationResult:
    """Everything a calibration produced.

    Attributes
    ----------
    exposure : Exposure
        Background-subtracted, CR-repaired exposure with metadata set.
    background : BackgroundModel
        The background model that was subtracted (calexpBackground).
    psf : PsfResult or None
        The fitted PSF model and its star selection; None when not fitted.
    astrometry : AstrometryResult or None
        The astrometric fit (new WCS, matches with residuals); None when not run.
    apcorr : ApCorrMap or None
        Aperture corrections applied to the catalogue; None when not measured.
    sources : astropy.table.Table
        Measured source catalogue (src), sky sources included (``sky_source``).
    photom_matches : astropy.table.Table or None
        Sources matched to the photometric reference catalogue.
    metadata : dict
        MAGZERO, MAGZERO_RMS, MAGZERO_NOBJ, COLORTERM1..3 and QA figures.
    timings_s : dict
        Wall time of each stage in seconds.
    config : CalibrateConfig
        The configuration that ran.
    warnings : list of str
        Non-fatal problems (a stage skipped, photometry failed but not required).
    """

    exposure: Exposure
    background: BackgroundModel
    psf: PsfResult | None
    apcorr: ApCorrMap | None
    astrometry: AstrometryResult | None
    sources: Table
    photom_matches: Table | None
    metadata: dict[str, Any]
    timings_s: dict[str, float]
    config: CalibrateConfig
    warnings: list[str]


class _Clock:
    """Times stages and turns stage fractions into overall progress."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._offsets: dict[str, float] = {}
        total = sum(w for _, w in STAGES)
        acc = 0.0
        for name, weight in STAGES:
            self._offsets[name] = acc / total
            acc += weight
        self._weights = {name: w / total for name, w in STAGES}

    def report(self, stage: str, fraction: float = 0.0) -> None:
        if self.progress is not None:
            overall = self._offsets.get(stage, 0.0) + self._weights.get(stage, 0.0) * min(max(fraction, 0.0), 1.0)
            self.progress(stage, overall)

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                clock.report(name, 0.0)
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, exc_type, exc, tb):
                clock.timings[name] = clock.timings.get(name, 0.0) + time.perf_counter() - self.t0
                if exc is None:
                    clock.report(name, 1.0)
                elif isinstance(exc, CalibrationError) and exc.stage in ("unknown", ""):
                    exc.stage = name
                return False

        return _Stage()


def calibrate(
    exposure: Exposure,
    config: CalibrateConfig | None = None,
    *,
    astrom_refcat: ReferenceCatalog | None = None,
    photom_refcat: ReferenceCatalog | None = None,
    ic_source_cat: Table | None = None,
    progress: ProgressCallback | None = None,
    in_place: bool = False,
) -> CalibrationResult:
    """Calibrate an exposure: background, detection, measurement, zero point.

    Parameters
    ----------
    exposure : Exposure
        The exposure as read; it is not modified (a copy is calibrated) unless ``in_place``.
    config : CalibrateConfig, optional
        Defaults when None.
    astrom_refcat : ReferenceCatalog, optional
        Astrometric reference catalogue; without it the header WCS is kept.
    photom_refcat : ReferenceCatalog, optional
        Photometric reference catalogue; without it no zero point is fitted.
        May be the same object as ``astrom_refcat``.
    ic_source_cat : astropy.table.Table, optional
        A characterisation catalogue (icSrc) from elsewhere: its
        ``ic_source_fields_to_copy`` replace ours on the sources within
        ``match_radius_pix`` (CalibrateTask.copyIcSourceFields).
    progress : callable, optional
        ``progress(stage, fraction_of_whole_run)``; it may raise
        :class:`~calibration.errors.CancelledError` to stop the run.
    in_place : bool
        Calibrate ``exposure`` itself instead of a copy: for a caller that read
        it only to calibrate it (the command line, the worker), this saves a
        copy of every plane (2.5x the image's size in memory).

    Returns
    -------
    CalibrationResult

    Raises
    ------
    CalibrationError
        A subclass naming the stage that failed and the figures that explain it.
    """
    config = config or CalibrateConfig()
    clock = _Clock(progress)
    warnings: list[str] = []
    if not in_place:
        exposure = exposure.copy()
    clock.report("read", 1.0)

    with clock.stage("background"):
        background = estimate_background(exposure, config.background)
        background.subtract_from(exposure.image)
        # The cosmic-ray finder needs the PSF's size to tell a cosmic ray from a
        # star, and the detection filter is matched to it: a first look at the
        # centre of the image gives it before the PSF is modelled.
        first = first_look(exposure, config.detection, background, psf_fwhm_pix=config.psf_fwhm_guess_pix)
        fwhm_pix = psf_fwhm_from_moments(exposure, first, guess_fwhm_pix=config.psf_fwhm_guess_pix)
        if fwhm_pix is None:
            fwhm_pix = estimate_fwhm_pix(first, default=config.psf_fwhm_guess_pix)
        del first

    with clock.stage("cosmic_rays"):
        cr = find_and_repair_cosmic_rays(
            exposure, config.cosmic_rays, psf_fwhm_pix=fwhm_pix, background_rms_adu=background.global_rms_adu
        )

    with clock.stage("detection"):
        detections = detect_sources(exposure, config.detection, background_rms_adu=background, psf_fwhm_pix=fwhm_pix)
        if config.detection.reestimate_background:
            # LSST's reEstimateBackground: the sky again with the footprints masked.
            background = reestimate_background(exposure, background, config.background, config.detection)

    sky_noise = None
    if config.do_sky_sources:
        with clock.stage("sky_sources"):
            sky = place_sky_sources(exposure, config.sky_sources, seed=int(exposure.info.exposure_id))
            sky_noise = measure_sky_noise(sky, config.sky_sources.radius_pix)
    else:
        sky = None

    scale = _pixel_scale_arcsec(exposure) if exposure.wcs is not None else None
    psf_result = None
    with clock.stage("psf"):
        if config.do_psf:
            try:
                psf_result = fit_psf(exposure, detections.catalog, config.psf, seed=int(exposure.info.exposure_id),
                                     pixel_scale_arcsec=scale)
            except PsfError as exc:
                if config.require_psf:
                    raise
                warnings.append(f"no PSF model: {exc.message}")
                log.warning("PSF fit failed: %s", exc.message)
        else:
            warnings.append("PSF model not fitted (do_psf=false)")
    if psf_result is not None:
        fwhm_pix = psf_result.fwhm_pix

    with clock.stage("measurement"):
        sources = measure_sources(
            exposure,
            detections.catalog,
            config.measurement,
            background_rms_adu=background.global_rms_adu,
            # Children own their deblended pixels; sep masks other ids' pixels.
            segmentation=detections.deblend_segmentation,
            psf=None if psf_result is None else psf_result.model,
            psf_fwhm_pix=fwhm_pix,
        )
        _set_psf_flags(sources, psf_result)
        if ic_source_cat is not None:
            copy_ic_source_fields(sources, ic_source_cat, config.ic_source_fields_to_copy,
                                  radius_pix=config.match_radius_pix)

    apcorr = None
    with clock.stage("apcorr"):
        if not config.do_ap_corr:
            warnings.append("aperture corrections not applied (do_ap_corr=false)")
        elif psf_result is None:
            warnings.append("aperture corrections not measured: there are no PSF stars")
        else:
            try:
                apcorr = measure_aperture_corrections(sources, psf_result.used, config.apcorr,
                                                      image_shape=exposure.shape)
                sources = apply_aperture_corrections(sources, apcorr, config.apcorr)
            except NoSourcesError as exc:
                warnings.append(f"aperture corrections not applied: {exc.message}")
                log.warning("aperture corrections failed: %s", exc.message)
    sources = _append_sky_sources(sources, sky)

    metadata: dict[str, Any] = {
        "ENGINE_VERSION": __version__,
        "BGMEAN": background.global_level_adu,
        "BGVAR": background.global_rms_adu**2,
        "PSF_FWHM_PIX": fwhm_pix,
        "N_SOURCES": int(np.count_nonzero(~_sky_mask(sources))),
        "N_CR_PIXELS": int(getattr(cr, "n_pixels", 0)),
        "SKY_NOISE_ADU": None if sky_noise is None else float(sky_noise.per_pixel_rms_adu),
    }
    if psf_result is not None:
        metadata.update(psf_result.to_metadata())
    if apcorr is not None:
        for name, field in apcorr.fields.items():
            metadata[f"APCORR_{name.upper()}"] = _apcorr_at_centre(apcorr, name, exposure.shape)
    if scale is not None:
        metadata["PIXEL_SCALE_ARCSEC"] = scale
        metadata["PSF_FWHM_ARCSEC"] = fwhm_pix * scale

    astrom = None
    with clock.stage("astrometry"):
        if not config.do_astrometry:
            warnings.append("astrometric fit disabled (do_astrometry=false): header WCS kept")
        elif astrom_refcat is None:
            warnings.append("no astrometric reference catalogue given: header WCS kept")
        elif exposure.wcs is None:
            if config.require_astrometry:
                raise AstrometryError("the exposure has no WCS to start the astrometric match from; add one "
                                      "(CRVAL/CRPIX/CD) or solve it with astrometry.net first", stage="astrometry")
            warnings.append("the exposure has no WCS: no astrometric fit")
        else:
            try:
                astrom = fit_astrometry(sources, astrom_refcat, exposure.wcs, exposure.shape, config.astrometry,
                                        ref_band=_band(config, exposure, astrom_refcat),
                                        seed=int(exposure.info.exposure_id))
            except AstrometryError as exc:
                if config.require_astrometry:
                    raise
                warnings.append(f"astrometric fit failed, header WCS kept: {exc.message}")
                log.warning("astrometric fit failed: %s", exc.message)
        if astrom is not None:
            exposure.wcs = astrom.wcs
            warnings.extend(astrom.warnings)
            metadata.update(astrom.metadata)
            metadata["N_ASTROM_MATCHES"] = int(astrom.metadata.get("ASTROM_N_MATCHES", len(astrom.matches)))
            metadata["ASTROMETRY"] = f"TAN-SIP fit, order {astrom.metadata.get('ASTROM_SIP_ORDER')}"
        else:
            metadata["ASTROMETRY"] = "header WCS kept" if exposure.wcs is not None else "no WCS"
        _set_sky_coords(sources, exposure)

    photom_matches = None
    with clock.stage("photocal"):
        if not config.do_photo_cal:
            warnings.append("photometric calibration disabled (do_photo_cal=false)")
        elif photom_refcat is None:
            warnings.append("no reference catalogue given: no zero point fitted")
        else:
            try:
                from .photometry import run_photocal

                photo = run_photocal(exposure, sources, photom_refcat, config, seed=int(exposure.info.exposure_id),
                                     fallback_flux_field=config.apcorr.calibration_flux,
                                     calibration_flux=config.apcorr.calibration_flux)
                metadata.update(photo.metadata)
                photom_matches = photo.matches
                sources = photo.sources
            except PhotometryError as exc:
                if config.require_photo_cal:
                    raise
                warnings.append(f"photometric calibration failed: {exc.message}")
                log.warning("photometric calibration failed: %s", exc.message)
    _set_magzero_defaults(metadata, warnings)
    exposure.metadata.update(metadata)
    return CalibrationResult(
        exposure=exposure,
        background=background,
        psf=psf_result,
        apcorr=apcorr,
        astrometry=astrom,
        sources=sources,
        photom_matches=photom_matches,
        metadata=metadata,
        timings_s=clock.timings,
        config=config,
        warnings=warnings,
    )


def estimate_fwhm_pix(catalog: Table, *, default: float) -> float:
    """Rough PSF FWHM from the second moments of bright compact detections (pixels).

    For a Gaussian, FWHM = 2.3548 sigma and sigma^2 = (xx + yy) / 2. Isophotal
    moments underestimate sigma, so this only seeds the cosmic-ray finder and
    the detection kernel until the PSF model is fitted.
    """
    if len(catalog) < 5 or "shape_xx" not in catalog.colnames:
        return default
    xx = np.asarray(catalog["shape_xx"], float)
    yy = np.asarray(catalog["shape_yy"], float)
    flux = np.asarray(catalog["flux"], float)
    ok = np.isfinite(xx) & np.isfinite(yy) & (xx > 0) & (yy > 0) & np.isfinite(flux)
    if ok.sum() < 5:
        return default
    bright = ok & (flux >= np.percentile(flux[ok], 50))
    sigma = np.sqrt((xx[bright] + yy[bright]) / 2)
    # Stars populate the small-size end; galaxies and blends the tail.
    fwhm = 2.3548 * float(np.percentile(sigma, 30))
    return fwhm if math.isfinite(fwhm) and fwhm > 0.5 else default


def _band(config: CalibrateConfig, exposure: Exposure, refcat: ReferenceCatalog) -> str | None:
    band = config.photocal.colorterm_primary or config.reference_band or (exposure.info.filter_name or "")
    return band if band in refcat.bands else None


def _set_sky_coords(sources: Table, exposure: Exposure) -> None:
    """coord_ra / coord_dec (deg) of every source through the exposure's (new) WCS."""
    if exposure.wcs is None:
        sources["coord_ra"] = np.full(len(sources), np.nan)
        sources["coord_dec"] = np.full(len(sources), np.nan)
    else:
        ra, dec = exposure.wcs.all_pix2world(np.asarray(sources["x"], float), np.asarray(sources["y"], float), 0)
        sources["coord_ra"] = np.mod(ra, 360.0)
        sources["coord_dec"] = dec
    sources["coord_ra"].unit = "deg"
    sources["coord_ra"].description = "Right ascension (ICRS) through the calibrated WCS"
    sources["coord_dec"].unit = "deg"
    sources["coord_dec"].description = "Declination (ICRS) through the calibrated WCS"


def copy_ic_source_fields(sources: Table, ic_sources: Table, fields: tuple[str, ...], *, radius_pix: float) -> None:
    """Copy ``fields`` from the nearest ``ic_sources`` row within ``radius_pix`` (in place).

    Sources with no such neighbour get False / NaN / 0; a field missing from
    ``ic_sources`` raises ConfigError naming it.
    """
    from scipy.spatial import cKDTree

    missing = [f for f in fields if f not in ic_sources.colnames]
    if missing:
        raise ConfigError(f"ic_source_cat has no column(s) {', '.join(missing)} named in ic_source_fields_to_copy",
                          stage="measurement", missing=missing)
    n = len(sources)
    matched = np.zeros(n, bool)
    index = np.zeros(n, np.int64)
    if len(ic_sources) and n:
        tree = cKDTree(np.column_stack([np.asarray(ic_sources["x"], float), np.asarray(ic_sources["y"], float)]))
        dist, idx = tree.query(np.column_stack([np.asarray(sources["x"], float), np.asarray(sources["y"], float)]),
                               distance_upper_bound=radius_pix)
        matched = np.isfinite(dist)
        index = np.where(matched, idx, 0)
    for name in fields:
        values = np.asarray(ic_sources[name])
        fill = False if values.dtype.kind == "b" else np.nan if values.dtype.kind == "f" else 0
        out = np.full(n, fill, dtype=values.dtype)
        if len(ic_sources):
            out[matched] = values[index[matched]]
        sources[name] = out


def _set_psf_flags(sources: Table, psf_result: PsfResult | None) -> None:
    """calib_psf_* columns (CalibrateTask copies them from icSrc; our rows are the same sources)."""
    n = len(sources)
    docs = {
        "calib_psf_candidate": "Selected as a PSF candidate star",
        "calib_psf_used": "Used to fit the PSF model",
        "calib_psf_reserved": "Held out of the PSF fit to test the model",
    }
    for name, doc in docs.items():
        attr = name.rsplit("_", 1)[1]
        sources[name] = np.zeros(n, bool) if psf_result is None else np.asarray(getattr(psf_result, attr), bool)
        sources[name].description = doc


def _apcorr_at_centre(apcorr: ApCorrMap, field: str, shape: tuple[int, int]) -> float:
    ny, nx = shape
    return float(apcorr.evaluate(field, np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0]))[0])


def _pixel_scale_arcsec(exposure: Exposure) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(exposure.wcs.celestial)) * 3600.0)


def _sky_mask(sources: Table) -> np.ndarray:
    if "sky_source" in sources.colnames:
        return np.asarray(sources["sky_source"], bool)
    return np.zeros(len(sources), bool)


def _append_sky_sources(sources: Table, sky: Table | None) -> Table:
    sources["sky_source"] = np.zeros(len(sources), bool)
    sources["sky_source"].description = "Sky-source aperture placed on empty sky, not a real source."
    if sky is None or len(sky) == 0:
        return sources
    from astropy.table import vstack

    rows = Table()
    start = int(np.max(sources["id"])) + 1 if len(sources) else 1
    rows["id"] = np.arange(start, start + len(sky), dtype=np.int64)
    for col in ("x", "y"):
        rows[col] = np.asarray(sky[col], float)
    rows["sky_source"] = np.ones(len(sky), bool)
    for col in sky.colnames:
        if col not in rows.colnames:
            rows[col] = sky[col]
    merged = vstack([sources, rows], join_type="outer", metadata_conflicts="silent")
    return _filled(merged)


def _filled(table: Table) -> Table:
    """Replace masked entries by explicit values: NaN for floats, False for flags, 0 for integers.

    Everything downstream reads columns with ``np.asarray``, which would see
    whatever lies under a mask.
    """
    out = Table(meta=table.meta)
    for name in table.colnames:
        col = table[name]
        mask = getattr(col, "mask", None)
        if mask is None or not np.any(mask):
            out[name] = np.asarray(col)
        else:
            kind = col.dtype.kind
            fill = np.nan if kind == "f" else False if kind == "b" else 0 if kind in "iu" else ""
            out[name] = col.filled(fill)
        out[name].unit = col.unit
        out[name].description = col.description
    return out


def _set_magzero_defaults(metadata: dict[str, Any], warnings: list[str]) -> None:
    for key in ("MAGZERO", "MAGZERO_RMS"):
        metadata.setdefault(key, None)
    metadata.setdefault("MAGZERO_NOBJ", 0)
    for key in ("COLORTERM1", "COLORTERM2", "COLORTERM3"):
        metadata.setdefault(key, None)


__all__ = [
    "STAGES",
    "CalibrateConfig",
    "CalibrationResult",
    "CancelledError",
    "ConfigError",
    "calibrate",
    "config_from_json",
    "config_to_dict",
]
