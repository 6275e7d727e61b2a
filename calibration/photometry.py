"""Photometric calibration of a measured catalogue (PhotoCalTask's ``run``).

Matches the clean, point-like sources to the photometric reference catalogue
through the exposure's WCS, fits the zero point with
:func:`calibration.photocal.fit_zero_point`, and returns the metadata that
CalibrateTask.setMetadata writes (MAGZERO is per second: ``zp - 2.5 log10(exptime)``),
the match table and calibrated magnitudes for every source.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from astropy.table import Table

from .errors import PhotometryError
from .exposure import Exposure
from .match import match_sky
from .photocal import apply_colorterm, colorterm_mag_err, fit_zero_point
from .refcat import ReferenceCatalog
from .colorterms import find_colorterm
from .totalflux import measure_total_flux_correction

STAGE = "photocal"
_BAD_FLAGS = ("flag_edge", "flag_saturated_center", "flag_saturated", "flag_cr_center", "flag_bad", "flag_nodata",
              "flag_interpolated_center")


@dataclasses.dataclass
class PhotometryResult:
    metadata: dict[str, Any]
    matches: Table
    sources: Table
    fit: Any


def _isolated(sources: Table, radius_pix: float, flux: np.ndarray, *, max_neighbour_flux_ratio: float) -> np.ndarray:
    """True where no other detection brighter than ``max_neighbour_flux_ratio`` times the
    source lies within ``radius_pix`` (its light would enter the aperture).

    Fainter neighbours are tolerated: in a deep field nearly every star has one,
    and their light biases the aperture flux by less than the ratio.
    """
    from scipy.spatial import cKDTree

    real = ~np.asarray(sources["sky_source"], bool) if "sky_source" in sources.colnames else np.ones(len(sources), bool)
    if "detect_isPrimary" in sources.colnames:
        real &= np.asarray(sources["detect_isPrimary"], bool)
    xy = np.column_stack([np.asarray(sources["x"], float), np.asarray(sources["y"], float)])
    ok = real & np.all(np.isfinite(xy), axis=1)
    isolated = np.zeros(len(sources), bool)
    if ok.sum() < 2:
        isolated[ok] = True
        return isolated
    rows = np.flatnonzero(ok)
    f = np.where(np.isfinite(flux[ok]), flux[ok], 0.0)
    # Brightest neighbour of each source, from the array of close pairs (no loop per source).
    pairs = cKDTree(xy[ok]).query_pairs(r=radius_pix, output_type="ndarray")
    brightest = np.zeros(rows.size)
    np.maximum.at(brightest, pairs[:, 0], f[pairs[:, 1]])
    np.maximum.at(brightest, pairs[:, 1], f[pairs[:, 0]])
    isolated[rows] = brightest <= max_neighbour_flux_ratio * np.maximum(f, 0.0)
    return isolated


def _aperture_radius_pix(flux_field: str) -> float | None:
    """12.0 from 'apflux_12_0'; None for other flux fields."""
    if not flux_field.startswith("apflux_"):
        return None
    try:
        return float(flux_field[len("apflux_"):].replace("_", "."))
    except ValueError:
        return None


def _good_sources(sources: Table, flux_field: str, *, isolation_pix: float | None, min_snr: float,
                  max_neighbour_flux_ratio: float = 0.005) -> np.ndarray:
    n = len(sources)
    good = np.ones(n, bool)
    if "sky_source" in sources.colnames:
        good &= ~np.asarray(sources["sky_source"], bool)
    if "detect_isPrimary" in sources.colnames:
        good &= np.asarray(sources["detect_isPrimary"], bool)
    for flag in _BAD_FLAGS:
        if flag in sources.colnames:
            good &= ~np.asarray(sources[flag], bool)
    if "extendedness" in sources.colnames:
        ext = np.asarray(sources["extendedness"], float)
        good &= ~(ext > 0.5)
    flux = np.asarray(sources[flux_field], float)
    good &= np.isfinite(flux) & (flux > 0)
    if f"{flux_field}_err" in sources.colnames:
        with np.errstate(divide="ignore", invalid="ignore"):
            good &= flux / np.asarray(sources[f"{flux_field}_err"], float) >= min_snr
    if isolation_pix:
        # Compare isophotal (deblended) fluxes: a faint neighbour's aperture flux holds the star's own light.
        own = np.asarray(sources["flux"], float) if "flux" in sources.colnames else flux
        good &= _isolated(sources, isolation_pix, own, max_neighbour_flux_ratio=max_neighbour_flux_ratio)
    return good


def _with_library_colorterm(pc, exposure: Exposure, refcat: ReferenceCatalog):
    """The photocal config with the library's colour term filled in, when one applies."""
    if pc.colorterm_primary or not pc.colorterm_library:
        return pc
    entry = find_colorterm(pc.colorterm_library, instrument=exposure.info.instrument or "",
                           filter_name=exposure.info.filter_name or "", refcat=refcat.name)
    if entry is None or entry.primary not in refcat.bands or entry.secondary not in refcat.bands:
        return pc
    return dataclasses.replace(pc, colorterm_primary=entry.primary, colorterm_secondary=entry.secondary,
                               colorterm_c0=entry.c0, colorterm_c1=entry.c1, colorterm_c2=entry.c2)


def run_photocal(exposure: Exposure, sources: Table, refcat: ReferenceCatalog, config, *, seed: int,
                 fallback_flux_field: str | None = None, calibration_flux: str | None = None) -> PhotometryResult:
    """Fit the zero point of ``sources`` against ``refcat``.

    ``config`` is the whole CalibrateConfig (its ``photocal`` part and
    ``reference_band``). When ``photocal.flux_field`` holds no finite flux (the
    PSF flux without a PSF model), ``fallback_flux_field`` is calibrated
    instead and the metadata says so. ``calibration_flux`` is the aperture the
    fluxes were corrected to; the light outside it, measured on the PSF stars
    (:mod:`calibration.totalflux`), makes the zero point refer to total flux.
    Raises PhotometryError with figures when it cannot.
    """
    pc = _with_library_colorterm(config.photocal, exposure, refcat)
    if exposure.wcs is None:
        raise PhotometryError("the exposure has no WCS, so sources cannot be matched to the reference catalogue",
                              stage=STAGE)
    flux_field = pc.flux_field
    if (fallback_flux_field and fallback_flux_field in sources.colnames
            and (flux_field not in sources.colnames or not np.isfinite(np.asarray(sources[flux_field], float)).any())):
        flux_field = fallback_flux_field
    if flux_field not in sources.colnames:
        raise PhotometryError(f"flux column {flux_field!r} is not in the catalogue; set photocal.flux_field",
                              stage=STAGE, flux_field=flux_field)
    band = pc.colorterm_primary or config.reference_band or (exposure.info.filter_name or "")
    if band not in refcat.bands:
        raise PhotometryError(
            f"reference catalogue {refcat.name} has no '{band}' magnitudes (it has {', '.join(refcat.bands)}); "
            "set reference_band in the configuration",
            stage=STAGE, band=band,
        )
    # A neighbour inside the calibration aperture biases the zero point bright;
    # such stars are left out (their PSF fluxes remain usable for science).
    radius = _aperture_radius_pix(flux_field)
    good = _good_sources(sources, flux_field, isolation_pix=None if radius is None else radius + 2.0,
                         min_snr=pc.min_snr)
    idx = np.flatnonzero(good)
    x = np.asarray(sources["x"], float)[idx]
    y = np.asarray(sources["y"], float)[idx]
    ra, dec = exposure.wcs.all_pix2world(x, y, 0)
    ref = refcat.table
    m = match_sky(ra, dec, np.asarray(ref["ra"], float), np.asarray(ref["dec"], float),
                  radius_arcsec=pc.match_radius_arcsec)
    n_match = len(m.src_index)
    if n_match < pc.min_n_stars:
        raise PhotometryError(
            f"only {n_match} clean sources matched the reference catalogue within {pc.match_radius_arcsec} arcsec "
            f"(of {idx.size} clean sources and {len(ref)} reference objects); check the WCS or widen "
            "photocal.match_radius_arcsec",
            stage=STAGE, n_matches=n_match, n_clean_sources=int(idx.size), n_reference=len(ref),
        )
    src_rows = idx[m.src_index]
    ref_rows = np.asarray(m.ref_index)
    flux = np.asarray(sources[flux_field], float)[src_rows]
    flux_err = np.asarray(sources[f"{flux_field}_err"], float)[src_rows] if f"{flux_field}_err" in sources.colnames \
        else np.full(flux.shape, np.nan)
    total = None
    if pc.total_flux.apply:
        total = measure_total_flux_correction(sources, calibration_flux or flux_field, pc.total_flux)
    total_factor = 1.0 if total is None else total.factor
    # Refer the zero point to total flux: the calibration flux times the light outside its aperture.
    inst_mag = -2.5 * np.log10(flux * total_factor)
    inst_err = 2.5 / math.log(10) * flux_err / flux
    ref_mag, ref_err = refcat.mag(band)
    ref_mag, ref_err = ref_mag[ref_rows], ref_err[ref_rows]
    colour = secondary_err = None
    if pc.colorterm_secondary:
        sec_mag, sec_err = refcat.mag(pc.colorterm_secondary)
        sec_mag, secondary_err = sec_mag[ref_rows], sec_err[ref_rows]
        colour = ref_mag - sec_mag
        if not pc.fit_colorterms:
            ref_err = colorterm_mag_err(ref_err, secondary_err, colour, pc.colorterm_c1, pc.colorterm_c2)
            ref_mag = apply_colorterm(ref_mag, sec_mag, pc.colorterm_c0, pc.colorterm_c1, pc.colorterm_c2)
    if pc.mag_min is not None or pc.mag_max is not None:
        lo = -np.inf if pc.mag_min is None else pc.mag_min
        hi = np.inf if pc.mag_max is None else pc.mag_max
        ref_mag = np.where((ref_mag >= lo) & (ref_mag <= hi), ref_mag, np.nan)
    fit = fit_zero_point(
        inst_mag, inst_err, ref_mag, ref_err, config=pc, seed=seed,
        x=np.asarray(sources["x"], float)[src_rows], y=np.asarray(sources["y"], float)[src_rows],
        colour=colour, secondary_mag_err=secondary_err, image_shape=exposure.shape,
    )
    exptime = exposure.info.exptime_s
    metadata: dict[str, Any] = {
        "ZERO_POINT_MAG": fit.zero_point_mag,
        "ZERO_POINT_MAG_CALIB_APERTURE": fit.zero_point_mag + 2.5 * math.log10(total_factor),
        "MAGZERO_RMS": fit.zero_point_err_mag,
        "MAGZERO_NOBJ": int(fit.n_used),
        "COLORTERM1": float(fit.colorterm_c0),
        "COLORTERM2": float(fit.colorterm_c1),
        "COLORTERM3": float(fit.colorterm_c2),
        "COLORTERM2_ERR": fit.colorterm_c1_err,
        "COLORTERM3_ERR": fit.colorterm_c2_err,
        "COLORTERMS_FITTED": bool(pc.fit_colorterms),
        "COLORTERM_BANDS": f"{pc.colorterm_primary}-{pc.colorterm_secondary}" if pc.colorterm_secondary else "",
        "PHOTOM_SCATTER_MAG": fit.scatter_mag,
        "PHOTOM_CLIP_SIGMA_MAG": fit.clip_sigma_mag,
        "PHOTOM_CLIP_NSIGMA": pc.n_sigma,
        "PHOTOM_RESERVED_SCATTER_MAG": fit.reserved_scatter_mag,
        "PHOTOM_RESERVED_BIAS_MAG": fit.reserved_bias_mag,
        "PHOTOM_N_RESERVED": int(fit.n_reserved),
        "N_PHOTOM_MATCHES": int(n_match),
        "PHOTOM_REFCAT": refcat.name,
        "PHOTOM_BAND": band,
        "PHOTOM_FLUX_FIELD": flux_field,
        "PHOTOM_FLUX_APCORR": f"{flux_field}_apCorr" in sources.colnames,
        "MATCH_RADIUS_ARCSEC": pc.match_radius_arcsec,
    }
    if total is not None:
        metadata.update(total.to_metadata())
    else:
        metadata["APCORR_TOTAL"] = 1.0
        metadata["APCORR_TOTAL_WARNING"] = ("zero point refers to the calibration aperture: total-flux correction "
                                            + ("disabled" if not pc.total_flux.apply else "not measurable (too few isolated PSF stars)"))
    if exptime and exptime > 0:
        metadata["MAGZERO"] = fit.zero_point_mag - 2.5 * math.log10(exptime)
    else:
        metadata["MAGZERO"] = float("nan")
        metadata["MAGZERO_WARNING"] = "no exposure time in the header: MAGZERO (per second) is NaN"

    matches = Table()
    matches["ref_id"] = np.asarray(ref["id"])[ref_rows]
    matches["src_id"] = np.asarray(sources["id"])[src_rows]
    matches["distance_arcsec"] = np.asarray(m.distance_arcsec, float)
    matches["distance_arcsec"].unit = "arcsec"
    for col in ref.colnames:
        matches[f"ref_{col}"] = np.asarray(ref[col])[ref_rows]
    for col in sources.colnames:
        matches[f"src_{col}"] = np.asarray(sources[col])[src_rows]
    matches["photocal_used"] = fit.used
    matches["photocal_reserved"] = fit.reserved
    matches["photocal_clipped"] = fit.clipped
    matches["photocal_residual_mag"] = fit.residual_mag

    sources = sources.copy(copy_data=False)
    all_flux = np.asarray(sources[flux_field], float)
    all_flux = all_flux * total_factor
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(all_flux > 0, -2.5 * np.log10(all_flux) + fit.zero_point_mag, np.nan)
        mag_err = np.full(len(sources), np.nan)
        if f"{flux_field}_err" in sources.colnames:
            mag_err = 2.5 / math.log(10) * np.asarray(sources[f"{flux_field}_err"], float) * total_factor / all_flux
            mag_err = np.sqrt(mag_err**2 + fit.zero_point_err_mag**2)
    sources["mag"] = mag
    sources["mag"].unit = "mag"
    sources["mag"].description = f"Calibrated magnitude from {flux_field} and the fitted zero point"
    sources["mag_err"] = mag_err
    sources["mag_err"].unit = "mag"
    sources["mag_err"].description = "Error of mag, zero-point error included"
    used = np.zeros(len(sources), bool)
    used[src_rows[fit.used]] = True
    reserved = np.zeros(len(sources), bool)
    reserved[src_rows[fit.reserved]] = True
    sources["calib_photometry_used"] = used
    sources["calib_photometry_used"].description = "Used in the zero-point fit"
    sources["calib_photometry_reserved"] = reserved
    sources["calib_photometry_reserved"].description = "Held out of the zero-point fit to test it"
    return PhotometryResult(metadata=metadata, matches=matches, sources=sources, fit=fit)
