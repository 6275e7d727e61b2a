"""Source measurement (LSST's ``SingleFrameMeasurementTask`` with its base plugins).

:func:`measure_sources` takes the detection catalogue and adds, for every
source at once (sep's functions take arrays of positions; stamps are gathered
into ``(n_sources, n_pixels)`` arrays with index grids, never a Python loop
per source or per pixel):

* a windowed centroid (SExtractor's ``XWIN``) with its error and windowed,
  window-deconvolved second moments;
* circular aperture fluxes at fixed radii, a Kron flux, a PSF flux;
* a local background (median in an annulus);
* pixel flags from the mask, and an extendedness (star / galaxy) flag.

Windowed centroid
-----------------
``sep.winpos`` iterates ``c = sum W r I / sum W I`` with a Gaussian window
``W = exp(-|r - c|**2 / 2 s**2)`` (cut at ``4 s``), ``s = 2 / 2.3548 *
r_half`` and ``r_half`` the half-light radius (``sep.flux_radius``), as
SExtractor does; for a Gaussian star ``s`` equals the PSF sigma. When the
PSF's FWHM is known, a compact source (isophotal ``a b`` within
``(1.5 sigma_PSF)^2``) takes the PSF sigma as its window directly, as LSST's
SdssCentroid does: the optimal window for a star, without the half-light
radius, which is most of the centroid's cost. With a
segmentation map, ``r_half`` of a source owning pixels of the map is measured
with the other sources' pixels masked (SExtractor masks neighbours too): in a
crowded field a neighbour would otherwise inflate the window and pull the
centroid towards itself. Its error is
the linear propagation of the per-pixel variance ``V`` (variance plane:
photon + read noise) through the fixed-point equation
``G(c) = sum W (r - c) I = 0``::

    J = [[Sxx/s**2 - S0, Sxy/s**2], [Sxy/s**2, Syy/s**2 - S0]]
    K = [[sum W**2 dx**2 V, sum W**2 dx dy V], [..., sum W**2 dy**2 V]]
    cov(c) = J^-1 K J^-T,  x_err = sqrt(cov_xx),  y_err = sqrt(cov_yy)

with ``S0 = sum W I`` and ``Sxx = sum W dx**2 I`` etc. For a Gaussian star of
flux ``F`` and sigma ``s`` on a background of per-pixel variance ``b`` this
is ``x_err**2 = 8 pi s**4 b / F**2``, which is the Cramer-Rao bound for
background-limited data (the windowed centroid is then efficient); in the
source-limited case it is ``16/9 s**2 / N_photons``, 1.33x the bound in sigma
(SExtractor's ``ERRX2WIN`` is the same formula specialised to ``s`` = PSF sigma).

Windowed second moments ``M = [[Sxx, Sxy], [Sxy, Syy]] / S0`` are
deconvolved from the circular window, ``C = (M^-1 - 1/s**2)^-1``, exact for an
elliptical Gaussian; they replace ``shape_xx/yy/xy`` when ``C`` is positive
definite, otherwise the catalogue's values (or those from ``a, b, theta``)
are kept and ``shape_flag`` is set.

sep's windowed centroid runs with ``subpix=5`` (SExtractor uses 11: the
positions agree to 1e-4 pix, at half the cost), its half-light radius with
``subpix=3`` (``r_half`` within 0.1 % of ``subpix=5``, 40 % faster; it only
sets the window); the sums above use pixel centres.

Deblend parents (``deblend_nChild > 0`` and not ``detect_isPrimary``) keep
their detection centroid (the isophotal barycentre of the blend) with
``centroid_flag`` set and no error: their children are measured in their
place, and no later stage uses a parent's position. Their half-light radius
and window would be those of the whole blend, the largest and costliest of
the catalogue. Their windowed moments are still measured, with
``s = sqrt(a b)`` from the detection ellipse.

Aperture, Kron and PSF fluxes
-----------------------------
Aperture sums use sep's exact circle overlap, ``err = sqrt(variance)`` and the
``bad_mask_planes`` as sep's mask (masked pixels are left out, the sum is
scaled up by the masked area, and the ``_flag`` column is set). The Kron flux
is SExtractor's ``FLUX_AUTO``: ``sep.kron_radius`` inside ``kron_window_scale``
detection ellipses, then ``sep.sum_ellipse`` of ``kron_factor`` Kron radii, or
a circle of ``kron_min_radius_pix`` when that ellipse is smaller. The PSF flux
is the weighted linear least-squares amplitude on a ``k x k`` stamp,
``flux = sum w P I / sum w P**2`` and ``err = 1 / sqrt(sum w P**2)`` with
``w = 1/V`` (masked and off-image pixels get ``w = 0``); with uniform weights
``err = sqrt(sum P**2 V) / sum P**2``.

Extendedness
------------
LSST sets ``extendedness = 1`` when ``psfFlux / modelFlux < 0.985``. Here the
model flux is the Kron flux: ``extendedness = psf_flux / kron_flux <
extendedness_threshold`` (a Kron aperture of 2.5 Kron radii holds ~99% of a
star's light, so stars sit near 1.01, a Gaussian galaxy three times the PSF
size near 0.2). Without a PSF model but with ``psf_fwhm_pix``, the same ratio
is formed from two apertures, each corrected to total with the enclosed
energy ``EE(r) = 1 - exp(-r**2 / 2 (s**2 + 1/12))`` of a Gaussian of that
(effective, pixel-convolved) FWHM, the 1/12 pix^2 because summing sampled
pixels over a circle convolves once more with the pixel, and divided by the
same ratio of the stellar locus (bright sources, see ``_stellar_concentration``)
because a Gaussian of a rough FWHM predicts a real star's concentration badly:
``(f(r1) / EE(r1)) / (f(r2) / EE(r2)) / locus < extendedness_concentration_threshold``
with ``(r1, r2) = concentration_radii_pix``. With neither, extendedness is NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import sep
from astropy import units as u
from astropy.table import Table

from .stats import row_median
from .configbase import doc_field
from .errors import BadExposureError, CalibrationError, PsfError
from .exposure import Exposure, MaskPlane, planes_set

__all__ = ["MeasureConfig", "aperture_column", "measure_sources"]

_STAGE = "measurement"
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Mask bit used for the padding around the image (never a real plane).
_OFF_IMAGE = 1 << 30
#: Bound on gathered values per chunk of sources (memory, not speed).
_CHUNK_ELEMENTS = 500_000
#: Window sigma bounds (pix): SExtractor's minimum, and a cap on stamp size.
_MIN_WINDOW_SIGMA = 0.5 * 2.0 / 2.35
_MAX_WINDOW_SIGMA = 10.0
_APER_PROBLEM = sep.APER_TRUNC | sep.APER_HASMASKED | sep.APER_ALLMASKED
_ADU = u.adu
_PIX = u.pix
_FLAG = u.dimensionless_unscaled


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """Configuration of :func:`measure_sources`."""

    aperture_radii_pix: tuple[float, ...] = doc_field(
        (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0),
        "Radii of the circular apertures (pix); one apflux_<r> column set per radius.",
    )
    centroid_window: Literal["winpos", "none"] = doc_field(
        "winpos",
        "'winpos': SExtractor's windowed centroid (sep.winpos) with s = 2/2.3548 * "
        "half-light radius; 'none': keep the detection centroid (x_err, y_err NaN).",
    )
    centroid_max_shift_pix: float = doc_field(
        2.0,
        "A windowed centroid further than this from the detection position (pix) is "
        "rejected: the detection position is kept and centroid_flag set.",
    )
    kron_factor: float = doc_field(2.5, "Kron aperture = this many Kron radii (SExtractor's k).")
    kron_min_radius_pix: float = doc_field(
        3.5,
        "When the Kron aperture's geometric-mean radius is smaller than this (pix), or "
        "the Kron radius is undefined, a circle of this radius is used (SExtractor's Rmin).",
    )
    kron_window_scale: float = doc_field(
        6.0,
        "The Kron radius (first moment) is computed inside the detection ellipse scaled "
        "by this factor, in units of a and b (6 in SExtractor).",
    )
    local_background_inner_pix: float = doc_field(
        15.0, "Inner radius of the local-background annulus (pix)."
    )
    local_background_outer_pix: float = doc_field(
        25.0, "Outer radius of the local-background annulus (pix)."
    )
    local_background_min_pixels: int = doc_field(
        20,
        "Fewer usable source-free annulus pixels than this: the median is taken over all "
        "unmasked annulus pixels instead and local_background_flag is set.",
    )
    local_background_step_pix: int = doc_field(
        2,
        "The local-background median uses every n-th pixel of the annulus along each axis: "
        "2 keeps ~300 of its ~1,250 pixels, enough for the median to ~0.07 sigma and 4x "
        "cheaper (the cost of a crowded field); 1 uses them all.",
    )
    edge_buffer_pix: float = doc_field(
        3.0,
        "flag_edge is set when the centroid is closer than this to the image border "
        "(pix), as well as when the flag circle leaves the image or touches EDGE.",
    )
    flag_radius_pix: float = doc_field(
        6.0,
        "Radius (pix) of the circle about the centroid in which flag_saturated, "
        "flag_nodata and flag_edge look for mask bits (the third aperture by default).",
    )
    bad_mask_planes: tuple[str, ...] = doc_field(
        ("BAD", "SAT", "NO_DATA"),
        "Mask planes whose pixels are ignored by the centroid and all photometry "
        "(sep's mask: the aperture sums are scaled up for the masked area and flagged).",
    )
    psf_stamp_size_pix: int = doc_field(
        21, "Side (pix, odd) of the stamp on which the PSF amplitude is fitted."
    )
    psf_flux_weighting: Literal["inverse_variance", "uniform"] = doc_field(
        "inverse_variance",
        "PSF-fit weights: 'inverse_variance' (w = 1/variance, optimal when the variance "
        "plane is a model) or 'uniform' (LSST's choice: unbiased when the variance "
        "plane was computed from the noisy pixels).",
    )
    psf_max_masked_fraction: float = doc_field(
        0.05,
        "psf_flux_flag is set when more than this fraction of the PSF's weight falls "
        "on masked or off-image pixels of the stamp.",
    )
    extendedness_threshold: float = doc_field(
        0.985,
        "extendedness = 1 when psf_flux / kron_flux (or the aperture-concentration "
        "equivalent without a PSF model) is below this (LSST: psfFlux/modelFlux < 0.985).",
    )
    extendedness_concentration_threshold: float = doc_field(
        0.95,
        "Threshold of the aperture-concentration ratio used without a PSF model; looser "
        "than extendedness_threshold because a FWHM alone predicts the concentration "
        "only to ~1-2% (a 3% FWHM error moves it by ~1.2%).",
    )
    concentration_radii_pix: tuple[float, float] = doc_field(
        (3.0, 12.0),
        "Small and large aperture radii (pix) of the extendedness test used when no PSF "
        "model is given but a PSF FWHM is.",
    )

    def validate(self) -> None:
        """Cross-field checks; raise ``ValueError`` on a bad value."""
        radii = self.aperture_radii_pix
        if not radii or not all(np.isfinite(r) and r > 0 for r in radii):
            raise ValueError(f"aperture_radii_pix must be positive numbers, got {radii}")
        names = [aperture_column(r) for r in radii]
        if len(set(names)) != len(names):
            raise ValueError(f"aperture_radii_pix give duplicate columns: {names}")
        if not self.kron_factor > 0 or not self.kron_min_radius_pix > 0:
            raise ValueError("kron_factor and kron_min_radius_pix must be > 0")
        if not self.kron_window_scale > 0:
            raise ValueError("kron_window_scale must be > 0")
        if not 0 < self.local_background_inner_pix < self.local_background_outer_pix:
            raise ValueError(
                "need 0 < local_background_inner_pix < local_background_outer_pix, got "
                f"{self.local_background_inner_pix}, {self.local_background_outer_pix}"
            )
        if self.local_background_min_pixels < 1:
            raise ValueError("local_background_min_pixels must be >= 1")
        if self.local_background_step_pix < 1:
            raise ValueError("local_background_step_pix must be >= 1")
        if self.edge_buffer_pix < 0 or not self.flag_radius_pix > 0:
            raise ValueError("edge_buffer_pix must be >= 0 and flag_radius_pix > 0")
        if not self.centroid_max_shift_pix > 0:
            raise ValueError("centroid_max_shift_pix must be > 0")
        unknown = [p for p in self.bad_mask_planes if p not in MaskPlane.__members__]
        if unknown:
            raise ValueError(f"unknown mask planes {unknown}; known: {list(MaskPlane.__members__)}")
        if self.psf_stamp_size_pix < 3 or self.psf_stamp_size_pix % 2 == 0:
            raise ValueError(f"psf_stamp_size_pix must be odd and >= 3, got {self.psf_stamp_size_pix}")
        if not 0 <= self.psf_max_masked_fraction <= 1:
            raise ValueError("psf_max_masked_fraction must be in [0, 1]")
        if not (self.extendedness_threshold > 0 and self.extendedness_concentration_threshold > 0):
            raise ValueError("extendedness thresholds must be > 0")
        r1, r2 = self.concentration_radii_pix
        if not 0 < r1 < r2:
            raise ValueError(f"concentration_radii_pix must satisfy 0 < r1 < r2, got {(r1, r2)}")


def aperture_column(radius_pix: float) -> str:
    """Column name of the aperture flux of radius ``radius_pix``: 12.0 -> ``apflux_12_0``."""
    radius = float(radius_pix)
    text = f"{radius:.1f}" if round(radius, 1) == radius else repr(radius)
    return "apflux_" + text.replace(".", "_")


def _column_docs(config: MeasureConfig) -> dict[str, tuple[Any, str]]:
    """Unit and description of every column :func:`measure_sources` writes."""
    r_in, r_out = config.local_background_inner_pix, config.local_background_outer_pix
    circle = f"the {config.flag_radius_pix:g}-pix circle about the centroid"
    docs: dict[str, tuple[Any, str]] = {
        "x": (_PIX, "Centroid x (local 0-based pix): windowed (XWIN) where it converged, else the detection x."),
        "y": (_PIX, "Centroid y (local 0-based pix): windowed (YWIN) where it converged, else the detection y."),
        "x_err": (_PIX, "1-sigma error of x: variance plane propagated through the windowed-centroid equation."),
        "y_err": (_PIX, "1-sigma error of y: variance plane propagated through the windowed-centroid equation."),
        "centroid_flag": (_FLAG, "Windowed centroid failed or moved too far, not measured (deblend parent), "
                                 "position invalid, or empty footprint."),
        "shape_xx": (_PIX**2, "Second moment <dx^2> (pix^2), windowed and window-deconvolved (else detection's)."),
        "shape_yy": (_PIX**2, "Second moment <dy^2> (pix^2), windowed and window-deconvolved (else detection's)."),
        "shape_xy": (_PIX**2, "Second moment <dx dy> (pix^2), windowed and window-deconvolved (else detection's)."),
        "shape_flag": (_FLAG, "Windowed moments unusable: shape_* are the detection moments."),
    }
    for r in config.aperture_radii_pix:
        name = aperture_column(r)
        docs[name] = (_ADU, f"Flux in a circle of radius {r:g} pix (ADU).")
        docs[f"{name}_err"] = (_ADU, f"1-sigma error of {name} from the variance plane (ADU).")
        docs[f"{name}_flag"] = (_FLAG, f"{name} off the image, with masked pixels, or position invalid.")
    docs.update(
        {
            "kron_radius": (_PIX, "Kron radius: sqrt(a b) times the first radial moment in units of a, b (pix)."),
            "kron_flux": (
                _ADU,
                f"Flux in an ellipse of {config.kron_factor:g} Kron radii, or in a "
                f"{config.kron_min_radius_pix:g}-pix circle when that is smaller or undefined (ADU).",
            ),
            "kron_flux_err": (_ADU, "1-sigma error of kron_flux from the variance plane (ADU)."),
            "kron_flux_flag": (_FLAG, "Kron radius undefined (circle used), or aperture off the image / masked."),
            "local_background": (
                _ADU,
                f"Median pixel value in the annulus {r_in:g}-{r_out:g} pix, other sources excluded, "
                "after global background subtraction (ADU per pixel).",
            ),
            "local_background_flag": (_FLAG, "Too few source-free annulus pixels (all unmasked ones used)."),
            "psf_flux": (_ADU, "Least-squares amplitude of the PSF (normalised to sum 1) on a stamp (ADU)."),
            "psf_flux_err": (_ADU, "1-sigma error of psf_flux from the variance plane (ADU)."),
            "psf_flux_flag": (_FLAG, "No PSF model, position invalid, fit failed, or PSF too much on masked pixels."),
            "flag_edge": (
                _FLAG,
                f"Centroid invalid or within {config.edge_buffer_pix:g} pix of the border, or {circle} "
                "(or the footprint) leaves the image or touches EDGE.",
            ),
            "flag_saturated_center": (_FLAG, "SAT pixel in the central 3x3."),
            "flag_saturated": (_FLAG, f"SAT pixel in the footprint or in {circle}."),
            "flag_interpolated_center": (_FLAG, "Interpolated (INTRP) pixel in the central 3x3."),
            "flag_bad": (_FLAG, "BAD pixel in the central 3x3."),
            "flag_cr_center": (_FLAG, "Cosmic-ray (CR) pixel in the central 3x3."),
            "flag_nodata": (_FLAG, f"NO_DATA pixel in the footprint or in {circle}."),
            "extendedness": (
                _FLAG,
                f"1 extended, 0 point-like, NaN undetermined: psf_flux/kron_flux < {config.extendedness_threshold:g}"
                " (without a PSF model, aperture concentration vs a Gaussian of the FWHM < "
                f"{config.extendedness_concentration_threshold:g}).",
            ),
        }
    )
    return docs


def measure_sources(
    exposure: Exposure,
    catalog: Table,
    config: MeasureConfig,
    *,
    background_rms_adu: float,
    psf: Any = None,
    segmentation: np.ndarray | None = None,
    psf_fwhm_pix: float | None = None,
) -> Table:
    """Measure centroids, fluxes, local background, flags and extendedness.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure (``image`` ADU, ``variance`` ADU^2,
        ``mask``), arrays indexed ``[y, x]``.
    catalog : astropy.table.Table
        Detections with at least ``x``, ``y`` (local 0-based pix), ``a``, ``b``
        (pix), ``theta`` (rad); ``id`` is needed with ``segmentation``;
        ``npix`` < 1 marks an empty footprint (``centroid_flag``).
    config : MeasureConfig
        Radii, windows and thresholds.
    background_rms_adu : float
        Per-pixel background noise (ADU), used as the variance where the
        variance plane is zero or not finite.
    psf : object, optional
        PSF model with ``image_at(x, y, shape=(k, k))``: given arrays ``x``,
        ``y`` of length n it returns an ``(n, k, k)`` array of images, each
        normalised to sum 1, whose central pixel ``[k//2, k//2]`` is the pixel
        nearest to ``(x, y)`` (``floor(x + 0.5)``) and which is centred on the
        sub-pixel position. Without it ``psf_flux`` is NaN and flagged.
    segmentation : ndarray of int, optional
        Footprint map, shape of the image, pixel value = the owning source's
        ``id`` (0 = sky). Used for footprint flags, to mask neighbours in the
        Kron measurement and to keep sources out of the local-background annulus
        (without it the ``DETECTED`` mask plane is used there).
    psf_fwhm_pix : float, optional
        FWHM (pix) of the effective PSF: the centroid window of compact
        sources, and the extendedness test when ``psf`` is None.

    Returns
    -------
    astropy.table.Table
        A copy of ``catalog``: ``x``, ``y`` replaced by the windowed centroid
        where it converged, ``shape_xx/yy/xy`` by windowed moments where valid,
        and the columns ``x_err, y_err, centroid_flag, shape_flag,
        apflux_<r>, apflux_<r>_err, apflux_<r>_flag, kron_radius, kron_flux,
        kron_flux_err, kron_flux_flag, local_background, local_background_flag,
        psf_flux, psf_flux_err, psf_flux_flag, flag_edge,
        flag_saturated_center, flag_saturated, flag_interpolated_center,
        flag_bad, flag_cr_center, flag_nodata, extendedness``. Every column
        written has a unit and a description. Sources with a non-finite or
        off-image position get NaN measurements and ``centroid_flag``,
        ``flag_edge`` and the photometry flags set.

    Raises
    ------
    CalibrationError
        The catalogue lacks a required column.
    BadExposureError
        ``background_rms_adu`` is not positive, or ``segmentation`` has the
        wrong shape.
    PsfError
        ``psf.image_at`` does not return one image per position.
    """
    missing = [c for c in ("x", "y", "a", "b", "theta") if c not in catalog.colnames]
    if segmentation is not None and "id" not in catalog.colnames:
        missing.append("id")
    if missing:
        raise CalibrationError(
            f"the detection catalogue lacks column(s) {', '.join(missing)}", stage=_STAGE, missing=missing
        )
    if not (np.isfinite(background_rms_adu) and background_rms_adu > 0):
        raise BadExposureError(
            "measurement needs a positive background rms", stage=_STAGE, background_rms_adu=background_rms_adu
        )
    image = np.ascontiguousarray(exposure.image, dtype=np.float32)
    if segmentation is not None:
        segmentation = np.ascontiguousarray(segmentation, dtype=np.int32)
        if segmentation.shape != image.shape:
            raise BadExposureError(
                "segmentation map and image differ in shape",
                stage=_STAGE,
                segmentation_shape=segmentation.shape,
                image_shape=image.shape,
            )
    ctx = _Context.build(exposure, image, config, background_rms_adu, segmentation)
    out = Table(catalog, copy=True)
    n = len(out)
    ny, nx = image.shape

    x0 = np.asarray(out["x"], dtype=float)
    y0 = np.asarray(out["y"], dtype=float)
    pos_ok = (x0 > -0.5) & (x0 < nx - 0.5) & (y0 > -0.5) & (y0 < ny - 0.5)  # False for NaN
    footprint_ok = np.asarray(out["npix"], float) >= 1 if "npix" in out.colnames else np.ones(n, bool)
    a, b, theta, ellipse_ok = _sanitised_ellipse(out)
    ids = np.asarray(out["id"], dtype=np.int64) if "id" in out.colnames else np.zeros(n, np.int64)

    # Deblend parents (children measured in their place) keep the detection centroid.
    parent = np.zeros(n, bool)
    if "deblend_nChild" in out.colnames:
        parent = np.asarray(out["deblend_nChild"], np.int64) > 0
        if "detect_isPrimary" in out.colnames:
            parent &= ~np.asarray(out["detect_isPrimary"], bool)
    cen = _centroid(ctx, np.where(pos_ok, x0, 0.0), np.where(pos_ok, y0, 0.0), a, b, pos_ok, config, ids,
                    parent=parent, psf_fwhm_pix=psf_fwhm_pix)
    xc, yc = cen["x"], cen["y"]
    det_xx, det_yy, det_xy = _ellipse_moments(out, a, b, theta)
    shape_ok = cen["shape_ok"]
    values: dict[str, np.ndarray] = {
        "x": np.where(pos_ok, xc, x0),
        "y": np.where(pos_ok, yc, y0),
        "x_err": cen["x_err"],
        "y_err": cen["y_err"],
        "centroid_flag": cen["flag"] | ~pos_ok | ~footprint_ok,
        "shape_xx": np.where(shape_ok, cen["xx"], det_xx),
        "shape_yy": np.where(shape_ok, cen["yy"], det_yy),
        "shape_xy": np.where(shape_ok, cen["xy"], det_xy),
        "shape_flag": ~shape_ok,
    }
    values.update(_apertures(ctx, xc, yc, pos_ok, config))
    values.update(_kron(ctx, xc, yc, (a, b, theta, ellipse_ok), ids, pos_ok, config))
    values.update(_local_background(ctx, xc, yc, pos_ok, config))
    values.update(_psf_flux(ctx, xc, yc, pos_ok, psf, config))
    values.update(_pixel_flags(ctx, xc, yc, ids, pos_ok, config))
    values["extendedness"] = _extendedness(ctx, xc, yc, pos_ok, psf, psf_fwhm_pix, values, config)

    docs = _column_docs(config)
    for name, column in values.items():
        out[name] = column
        out[name].unit, out[name].description = docs[name]
    return out


@dataclasses.dataclass
class _Stamps:
    """Pixels about a set of sources: flat indices clipped into the image and which are inside."""

    flat: np.ndarray  # (n, m) int64, valid everywhere (clipped)
    inside: np.ndarray | None  # (n, m) bool; None when every pixel is inside the image


@dataclasses.dataclass
class _Context:
    """The exposure's planes prepared once for sep, and gathers of stamps from them.

    Stamps are read straight from the planes with clipped indices; pixels off
    the image read as 0 (image, variance), unusable, ``_OFF_IMAGE`` (mask)
    and 0 (segmentation). No padded copy of any plane is made.
    """

    image: np.ndarray  # float32, C-contiguous
    var: np.ndarray  # float32, effective variance for sep (variance plane or a cleaned copy)
    bad: np.ndarray  # bool, sep mask
    mask: np.ndarray
    segmentation: np.ndarray | None
    variance: np.ndarray  # the variance plane as given
    floor_var: float  # replaces non-finite or non-positive variances

    @classmethod
    def build(
        cls,
        exposure: Exposure,
        image: np.ndarray,
        config: MeasureConfig,
        background_rms_adu: float,
        segmentation: np.ndarray | None,
    ) -> "_Context":
        mask = np.asarray(exposure.mask)
        bad_bits = 0
        for name in config.bad_mask_planes:
            bad_bits |= int(MaskPlane[name])
        bad = planes_set(mask, bad_bits)
        floor_var = float(background_rms_adu**2)
        variance = np.ascontiguousarray(exposure.variance, dtype=np.float32)
        if _all_positive_finite(variance):
            var = variance
        else:
            var = np.where(np.isfinite(variance) & (variance > 0), variance, np.float32(floor_var))
        return cls(image=image, var=var, bad=bad, mask=mask, segmentation=segmentation,
                   variance=variance, floor_var=floor_var)

    def index(self, ix: np.ndarray, iy: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> _Stamps:
        """Pixels at offsets ``(dx, dy)`` about ``(ix, iy)``: shape ``(n, m)``.

        Most stamps lie wholly inside the image: their indices are one
        broadcast sum, and only the stamps crossing a border are clipped.
        """
        ny, nx = self.image.shape
        flat = (iy * nx + ix)[:, None] + (dy * nx + dx)[None, :]
        if dx.size == 0 or ix.size == 0:
            return _Stamps(flat, None)
        crosses = (ix + dx.min() < 0) | (ix + dx.max() >= nx) | (iy + dy.min() < 0) | (iy + dy.max() >= ny)
        if not crosses.any():
            return _Stamps(flat, None)
        rows = np.flatnonzero(crosses)
        px = ix[rows, None] + dx[None, :]
        py = iy[rows, None] + dy[None, :]
        inside = np.ones(flat.shape, bool)
        inside[rows] = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        flat[rows] = np.clip(py, 0, ny - 1) * nx + np.clip(px, 0, nx - 1)
        return _Stamps(flat, inside)

    def image_at(self, st: _Stamps) -> np.ndarray:
        values = self.image.ravel()[st.flat]
        return values if st.inside is None else np.where(st.inside, values, np.float32(0))

    def var_at(self, st: _Stamps) -> np.ndarray:
        # ``var`` already holds the floor where the variance plane is unusable.
        values = self.var.ravel()[st.flat]
        return values if st.inside is None else np.where(st.inside, values, np.float32(0))

    def mask_at(self, st: _Stamps) -> np.ndarray:
        values = self.mask.ravel()[st.flat].astype(np.int64)
        return values if st.inside is None else np.where(st.inside, values, _OFF_IMAGE)

    def usable_at(self, st: _Stamps) -> np.ndarray:
        usable = ~self.bad.ravel()[st.flat]
        return usable if st.inside is None else usable & st.inside

    def seg_at(self, st: _Stamps) -> np.ndarray:
        assert self.segmentation is not None
        values = self.segmentation.ravel()[st.flat]
        return values if st.inside is None else np.where(st.inside, values, 0)


def _ids_present(segmentation: np.ndarray, max_id: int) -> np.ndarray:
    """``present[i]`` is True when id ``i`` (0..max_id) owns a pixel of the map (blocks of rows)."""
    present = np.zeros(max_id + 1, bool)
    rows = segmentation.reshape(segmentation.shape[0], -1)
    for start in range(0, rows.shape[0], 512):
        block = rows[start : start + 512].ravel()
        counts = np.bincount(block[(block > 0) & (block <= max_id)], minlength=max_id + 1)
        present |= counts > 0
    return present


def _all_positive_finite(values: np.ndarray) -> bool:
    """True when every value is finite and > 0 (checked in blocks of rows)."""
    flat = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(1, -1)
    for start in range(0, flat.shape[0], 512):
        block = flat[start : start + 512]
        if not (np.isfinite(block).all() and (block > 0).all()):
            return False
    return True


def _chunks(n: int, per_source: int) -> Iterator[slice]:
    """Slices over ``n`` sources holding at most ``_CHUNK_ELEMENTS`` gathered values."""
    step = max(1, _CHUNK_ELEMENTS // max(per_source, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _nearest_pixel(x: np.ndarray, y: np.ndarray, ok: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest pixel ``floor(c + 0.5)``, clipped into the image (0 where not ``ok``)."""
    ix = np.clip(np.floor(np.where(ok, x, 0.0) + 0.5), 0, shape[1] - 1).astype(np.int64)
    iy = np.clip(np.floor(np.where(ok, y, 0.0) + 0.5), 0, shape[0] - 1).astype(np.int64)
    return ix, iy


def _sanitised_ellipse(cat: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``a >= b > 0`` and ``theta`` in [-pi/2, pi/2] as sep needs; 1-pix circle where invalid."""
    a = np.asarray(cat["a"], dtype=float)
    b = np.asarray(cat["b"], dtype=float)
    theta = np.asarray(cat["theta"], dtype=float)
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (a > 0) & (b > 0)
    swap = ok & (b > a)
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    theta = np.where(swap, theta + np.pi / 2, theta)
    theta = (theta + np.pi / 2) % np.pi - np.pi / 2
    return np.where(ok, a, 1.0), np.where(ok, b, 1.0), np.where(ok, theta, 0.0), ok


def _ellipse_moments(cat: Table, a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, ...]:
    """Detection second moments: the catalogue's ``shape_*`` or those of ``a, b, theta``."""
    if all(c in cat.colnames for c in ("shape_xx", "shape_yy", "shape_xy")):
        return tuple(np.asarray(cat[c], dtype=float) for c in ("shape_xx", "shape_yy", "shape_xy"))
    c, s = np.cos(theta), np.sin(theta)
    return a**2 * c**2 + b**2 * s**2, a**2 * s**2 + b**2 * c**2, (a**2 - b**2) * s * c


def _centroid(
    ctx: _Context,
    xs: np.ndarray,
    ys: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    ok: np.ndarray,
    config: MeasureConfig,
    ids: np.ndarray | None = None,
    *,
    parent: np.ndarray | None = None,
    psf_fwhm_pix: float | None = None,
) -> dict[str, np.ndarray]:
    """Windowed centroid, its covariance and window-deconvolved second moments.

    With ``psf_fwhm_pix``, compact sources take the PSF sigma as window
    (module docstring); the others, their half-light radius.

    Sources marked ``parent`` (deblend parents whose children are measured)
    keep the detection centroid with ``flag`` set and NaN errors; only their
    windowed moments are measured, in a window of ``sigma = sqrt(a b)``. Their
    positions serve no later stage (PSF, astrometry and photometry use
    primary sources), and a blend's half-light radius and window are large.
    """
    n = xs.size
    nan = np.full(n, np.nan)
    res = {"x": xs.copy(), "y": ys.copy(), "x_err": nan.copy(), "y_err": nan.copy(),
           "flag": np.zeros(n, bool), "xx": nan.copy(), "yy": nan.copy(), "xy": nan.copy(),
           "shape_ok": np.zeros(n, bool)}
    if n == 0:
        return res
    if config.centroid_window == "none":
        res["flag"] = ~ok
        return res
    ny, nx = ctx.image.shape
    rmax = np.clip(6.0 * a, 3.0, 4 * _MAX_WINDOW_SIGMA)
    parent = np.zeros(n, bool) if parent is None else np.asarray(parent, bool)
    measure = ok & ~parent
    # Half-light radius setting the window: a source that owns pixels of the
    # segmentation map is measured with the other sources' pixels masked, as
    # SExtractor masks neighbours; without that a neighbour inflates r_half and
    # the window, which drags the centroid towards it (and costs time).
    sig_psf = None
    if psf_fwhm_pix is not None and np.isfinite(psf_fwhm_pix) and psf_fwhm_pix > 0:
        sig_psf = float(psf_fwhm_pix) / 2.3548
        compact = measure & (a * b <= (1.5 * sig_psf) ** 2)
        measure_r_half = measure & ~compact
    else:
        compact = np.zeros(n, bool)
        measure_r_half = measure
    owns = np.zeros(n, bool)
    if ctx.segmentation is not None and ids is not None and measure_r_half.any():
        present = _ids_present(ctx.segmentation, int(ids.max(initial=0)))
        owns = measure_r_half & (ids > 0) & (ids < present.size)
        owns[owns] = present[ids[owns]]
    r_half = np.full(n, np.nan)
    if owns.any():
        r_half[owns], _ = sep.flux_radius(ctx.image, xs[owns], ys[owns], rmax[owns], 0.5, mask=ctx.bad,
                                          segmap=ctx.segmentation, seg_id=ids[owns].astype(np.int32), subpix=3)
    rest = measure_r_half & ~owns
    if rest.any():
        r_half[rest], _ = sep.flux_radius(ctx.image, xs[rest], ys[rest], rmax[rest], 0.5, mask=ctx.bad, subpix=3)
    sig = 2.0 / 2.3548 * r_half
    if sig_psf is not None:
        sig[compact] = sig_psf
    sig = np.where(np.isfinite(sig) & (sig > 0), sig, np.sqrt(a * b))
    sig = np.clip(sig, _MIN_WINDOW_SIGMA, _MAX_WINDOW_SIGMA)
    xw, yw = np.full(n, np.nan), np.full(n, np.nan)
    if measure.any():
        xw[measure], yw[measure], _ = sep.winpos(ctx.image, xs[measure], ys[measure], sig[measure], mask=ctx.bad,
                                                 subpix=5)
    good = (
        measure
        & np.isfinite(xw)
        & np.isfinite(yw)
        & (np.hypot(xw - xs, yw - ys) <= config.centroid_max_shift_pix)
        & (xw > -0.5) & (xw < nx - 0.5) & (yw > -0.5) & (yw < ny - 0.5)
    )
    res["flag"] = ~good
    xc, yc = np.where(good, xw, xs), np.where(good, yw, ys)
    res["x"], res["y"] = xc, yc

    s0, sxx, syy, sxy, kxx, kyy, kxy = _windowed_sums(ctx, xc, yc, sig, ok)
    s2 = sig**2
    jxx, jyy, jxy = sxx / s2 - s0, syy / s2 - s0, sxy / s2
    det = jxx * jyy - jxy**2
    with np.errstate(divide="ignore", invalid="ignore"):
        # J^-1 = [[jyy, -jxy], [-jxy, jxx]] / det; cov = J^-1 K J^-T
        ixx, iyy, ixy = jyy / det, jxx / det, -jxy / det
        cov_xx = ixx**2 * kxx + 2 * ixx * ixy * kxy + ixy**2 * kyy
        cov_yy = ixy**2 * kxx + 2 * ixy * iyy * kxy + iyy**2 * kyy
        err_ok = good & (det > 0) & (s0 > 0)
        res["x_err"] = np.where(err_ok, np.sqrt(cov_xx), np.nan)
        res["y_err"] = np.where(err_ok, np.sqrt(cov_yy), np.nan)
        # Windowed moments M and their deconvolution C = (M^-1 - I/s^2)^-1.
        mxx, myy, mxy = sxx / s0, syy / s0, sxy / s0
        mdet = mxx * myy - mxy**2
        pxx, pyy, pxy = myy / mdet - 1 / s2, mxx / mdet - 1 / s2, -mxy / mdet
        pdet = pxx * pyy - pxy**2
        shape_ok = ok & (s0 > 0) & (mdet > 0) & (pdet > 0) & (pxx > 0)
        res["xx"] = np.where(shape_ok, pyy / pdet, np.nan)
        res["yy"] = np.where(shape_ok, pxx / pdet, np.nan)
        res["xy"] = np.where(shape_ok, -pxy / pdet, np.nan)
    res["shape_ok"] = shape_ok & np.isfinite(res["xx"]) & np.isfinite(res["yy"])
    return res


def _windowed_sums(
    ctx: _Context, xc: np.ndarray, yc: np.ndarray, sig: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Window-weighted sums on pixel centres about ``(xc, yc)``, W cut at ``4 sig``.

    Returns ``S0 = sum W I``, ``Sxx, Syy, Sxy = sum W d d I`` and
    ``Kxx, Kyy, Kxy = sum W^2 d d V`` (zeros where not ``ok``). Sources are
    grouped by stamp size so a few large windows do not inflate every stamp.
    """
    n = xc.size
    sums = np.zeros((7, n))
    ix, iy = _nearest_pixel(xc, yc, ok, ctx.image.shape)
    need = np.ceil(4 * sig).astype(int)
    classes = np.array([3, 4, 6, 8, 12, 16, 24, 32, int(np.ceil(4 * _MAX_WINDOW_SIGMA))])
    size_class = classes[np.minimum(np.searchsorted(classes, need), classes.size - 1)]
    for half in np.unique(size_class[ok]):
        members = np.flatnonzero(ok & (size_class == half))
        dyo, dxo = (g.ravel() for g in np.mgrid[-half : half + 1, -half : half + 1])
        for sl in _chunks(members.size, dxo.size):
            m = members[sl]
            idx = ctx.index(ix[m], iy[m], dxo, dyo)
            dx = (ix[m, None] + dxo[None, :]) - xc[m, None]
            dy = (iy[m, None] + dyo[None, :]) - yc[m, None]
            s2 = sig[m, None] ** 2
            r2 = dx**2 + dy**2
            w = np.where((r2 < 16 * s2) & ctx.usable_at(idx), np.exp(-0.5 * r2 / s2), 0.0)
            wi = w * ctx.image_at(idx)
            wwv = w * w * ctx.var_at(idx)
            sums[:, m] = [
                wi.sum(axis=1),
                (wi * dx * dx).sum(axis=1),
                (wi * dy * dy).sum(axis=1),
                (wi * dx * dy).sum(axis=1),
                (wwv * dx * dx).sum(axis=1),
                (wwv * dy * dy).sum(axis=1),
                (wwv * dx * dy).sum(axis=1),
            ]
    return tuple(sums)


def _apertures(
    ctx: _Context, x: np.ndarray, y: np.ndarray, ok: np.ndarray, config: MeasureConfig
) -> dict[str, np.ndarray]:
    """Circular aperture sums for all radii in one sep call (broadcast ``(n, n_radii)``)."""
    radii = np.asarray(config.aperture_radii_pix, dtype=float)
    n = x.size
    if n:
        # sep broadcasts only 1-d inputs: flatten the (n, n_radii) grid.
        grid = (n, radii.size)
        flux, err, flag = (
            v.reshape(grid)
            for v in sep.sum_circle(
                ctx.image,
                np.repeat(x, radii.size),
                np.repeat(y, radii.size),
                np.tile(radii, n),
                var=ctx.var,
                mask=ctx.bad,
                subpix=0,
            )
        )
    else:
        flux = err = np.zeros((0, radii.size))
        flag = np.zeros((0, radii.size), np.int16)
    bad = ~ok[:, None] | ((flag & _APER_PROBLEM) != 0)
    cols: dict[str, np.ndarray] = {}
    for j, r in enumerate(radii):
        name = aperture_column(r)
        cols[name] = np.where(ok, flux[:, j], np.nan)
        cols[f"{name}_err"] = np.where(ok, err[:, j], np.nan)
        cols[f"{name}_flag"] = bad[:, j]
    return cols


def _kron(
    ctx: _Context,
    x: np.ndarray,
    y: np.ndarray,
    ellipse: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ids: np.ndarray,
    ok: np.ndarray,
    config: MeasureConfig,
) -> dict[str, np.ndarray]:
    """Kron radius and flux (SExtractor's FLUX_AUTO with its circular fallback).

    ``ellipse`` is ``(a, b, theta, valid)`` from detection; an invalid
    ellipse or Kron radius falls back to the minimum circle and is flagged.
    """
    a, b, theta, ellipse_ok = ellipse
    n = x.size
    flux = np.full(n, np.nan)
    ferr = np.full(n, np.nan)
    flags = np.zeros(n, np.int64)
    kr = np.full(n, np.nan)

    def seg(sel: np.ndarray | slice) -> dict[str, Any]:
        if ctx.segmentation is None:
            return {}
        return {"segmap": ctx.segmentation, "seg_id": np.ascontiguousarray(ids[sel], dtype=np.int32)}

    if n:
        kr, kflag = sep.kron_radius(
            ctx.image, x, y, a, b, theta, config.kron_window_scale, mask=ctx.bad, **seg(slice(None))
        )
        flags |= kflag
    kron_ok = ok & ellipse_ok & np.isfinite(kr) & (kr > 0)
    radius = np.where(kron_ok, kr * np.sqrt(a * b), np.nan)
    use_ellipse = kron_ok & (config.kron_factor * radius >= config.kron_min_radius_pix)
    use_circle = ok & ~use_ellipse
    if use_ellipse.any():
        e = use_ellipse
        f, fe, fl = sep.sum_ellipse(
            ctx.image, x[e], y[e], a[e], b[e], theta[e], config.kron_factor * kr[e],
            var=ctx.var, mask=ctx.bad, subpix=5, **seg(e),
        )
        flux[e], ferr[e], flags[e] = f, fe, flags[e] | fl
    if use_circle.any():
        c = use_circle
        f, fe, fl = sep.sum_circle(
            ctx.image, x[c], y[c], config.kron_min_radius_pix,
            var=ctx.var, mask=ctx.bad, subpix=5, **seg(c),
        )
        flux[c], ferr[c], flags[c] = f, fe, flags[c] | fl
    flag = ~kron_ok | ((flags & _APER_PROBLEM) != 0)
    return {"kron_radius": radius, "kron_flux": flux, "kron_flux_err": ferr, "kron_flux_flag": flag}


def _local_background(
    ctx: _Context, x: np.ndarray, y: np.ndarray, ok: np.ndarray, config: MeasureConfig
) -> dict[str, np.ndarray]:
    """Median per-pixel value in an annulus, sources (segmentation or DETECTED) excluded."""
    r_in, r_out = config.local_background_inner_pix, config.local_background_outer_pix
    h = int(np.ceil(r_out)) + 1
    dyo, dxo = np.mgrid[-h : h + 1, -h : h + 1]
    step = config.local_background_step_pix
    ring = (np.hypot(dyo, dxo) >= r_in - 1) & (np.hypot(dyo, dxo) < r_out + 1) & (dyo % step == 0) & (dxo % step == 0)
    dyo, dxo = dyo[ring], dxo[ring]
    n = x.size
    value = np.full(n, np.nan)
    flag = ~ok.copy()
    ix, iy = _nearest_pixel(x, y, ok, ctx.image.shape)
    for sl in _chunks(n, dxo.size):
        idx = ctx.index(ix[sl], iy[sl], dxo, dyo)
        r = np.hypot(ix[sl, None] + dxo[None, :] - x[sl, None], iy[sl, None] + dyo[None, :] - y[sl, None])
        base = (r >= r_in) & (r < r_out) & ctx.usable_at(idx)
        if ctx.segmentation is not None:
            source = ctx.seg_at(idx) > 0
        else:
            source = (ctx.mask_at(idx) & int(MaskPlane.DETECTED)) != 0
        clean = base & ~source
        few = clean.sum(axis=1) < config.local_background_min_pixels
        values = ctx.image_at(idx)  # float32: sorts faster, row_median returns float64
        med = row_median(values, clean)
        if few.any():
            med[few] = row_median(values[few], base[few])
        value[sl] = med
        flag[sl] |= few
    value[~ok] = np.nan
    return {"local_background": value, "local_background_flag": flag}


def _psf_flux(
    ctx: _Context, x: np.ndarray, y: np.ndarray, ok: np.ndarray, psf: Any, config: MeasureConfig
) -> dict[str, np.ndarray]:
    """Linear least-squares PSF amplitude on stacked ``(n, k*k)`` stamps."""
    n = x.size
    flux = np.full(n, np.nan)
    ferr = np.full(n, np.nan)
    flag = np.ones(n, bool)
    k = config.psf_stamp_size_pix
    todo = np.flatnonzero(ok) if psf is not None else np.zeros(0, np.int64)
    if todo.size:
        h = k // 2
        dyo, dxo = (g.ravel() for g in np.mgrid[-h : h + 1, -h : h + 1])
        ix, iy = _nearest_pixel(x, y, ok, ctx.image.shape)
        for sl in _chunks(todo.size, 4 * dxo.size):
            sel = todo[sl]
            model = np.asarray(psf.image_at(x[sel], y[sel], shape=(k, k)), dtype=float)
            if model.shape == (k, k) and sel.size == 1:
                model = model[None]
            if model.shape != (sel.size, k, k):
                raise PsfError(
                    "psf.image_at(x, y, shape=(k, k)) must return one (k, k) image per position",
                    stage=_STAGE,
                    expected=(int(sel.size), k, k),
                    got=tuple(model.shape),
                )
            p = model.reshape(sel.size, -1)
            idx = ctx.index(ix[sel], iy[sel], dxo, dyo)
            img = ctx.image_at(idx).astype(float)
            var = ctx.var_at(idx).astype(float)
            usable = ctx.usable_at(idx)
            masked_fraction = np.where(usable, 0.0, np.abs(p)).sum(axis=1) / np.abs(p).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                if config.psf_flux_weighting == "inverse_variance":
                    w = np.where(usable, 1.0 / var, 0.0)
                    norm = (w * p * p).sum(axis=1)
                    f = (w * p * img).sum(axis=1) / norm
                    e = 1.0 / np.sqrt(norm)
                else:
                    pu = np.where(usable, p, 0.0)
                    norm = (pu * pu).sum(axis=1)
                    f = (pu * img).sum(axis=1) / norm
                    e = np.sqrt((pu * pu * var).sum(axis=1)) / norm
            fine = np.isfinite(f) & np.isfinite(e) & (norm > 0)
            flux[sel] = np.where(fine, f, np.nan)
            ferr[sel] = np.where(fine, e, np.nan)
            flag[sel] = ~fine | (masked_fraction > config.psf_max_masked_fraction)
    return {"psf_flux": flux, "psf_flux_err": ferr, "psf_flux_flag": flag}


def _pixel_flags(
    ctx: _Context, x: np.ndarray, y: np.ndarray, ids: np.ndarray, ok: np.ndarray, config: MeasureConfig
) -> dict[str, np.ndarray]:
    """Mask bits in the central 3x3, in the flag circle and (with segmentation) in the footprint."""
    ny, nx = ctx.image.shape
    ix, iy = _nearest_pixel(x, y, ok, (ny, nx))
    c_dy, c_dx = (g.ravel() for g in np.mgrid[-1:2, -1:2])
    centre = np.bitwise_or.reduce(ctx.mask_at(ctx.index(ix, iy, c_dx, c_dy)), axis=1) if x.size else np.zeros(0, np.int32)
    h = int(np.ceil(config.flag_radius_pix)) + 1
    dyo, dxo = (g.ravel() for g in np.mgrid[-h : h + 1, -h : h + 1])
    circle = np.zeros(x.size, np.int64)
    for sl in _chunks(x.size, dxo.size):
        idx = ctx.index(ix[sl], iy[sl], dxo, dyo)
        r = np.hypot(ix[sl, None] + dxo[None, :] - x[sl, None], iy[sl, None] + dyo[None, :] - y[sl, None])
        inside = r <= config.flag_radius_pix
        circle[sl] = np.bitwise_or.reduce(np.where(inside, ctx.mask_at(idx), 0), axis=1)
    footprint = np.zeros(x.size, np.int64)
    if ctx.segmentation is not None:
        planes = (MaskPlane.SAT, MaskPlane.NO_DATA, MaskPlane.EDGE)
        any_bits = int(MaskPlane.SAT | MaskPlane.NO_DATA | MaskPlane.EDGE)
        pix = np.flatnonzero(planes_set(ctx.mask, any_bits))  # few pixels: borders, saturation
        owner = ctx.segmentation.ravel()[pix]
        bits = ctx.mask.ravel()[pix]
        for plane in planes:
            owners = np.unique(owner[((bits & int(plane)) != 0) & (owner > 0)])
            footprint |= np.where(np.isin(ids, owners), int(plane), 0)
    centre = np.where(ok, centre, 0)
    circle = np.where(ok, circle, 0)

    def has(bits: np.ndarray, plane: int) -> np.ndarray:
        return (bits & plane) != 0

    border = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
    sat_c = has(centre, MaskPlane.SAT)
    return {
        "flag_edge": ~ok
        | (border < config.edge_buffer_pix)
        | has(circle, _OFF_IMAGE | MaskPlane.EDGE)
        | has(footprint, MaskPlane.EDGE),
        "flag_saturated_center": sat_c,
        "flag_saturated": sat_c | has(circle, MaskPlane.SAT) | has(footprint, MaskPlane.SAT),
        "flag_interpolated_center": has(centre, MaskPlane.INTRP),
        "flag_bad": has(centre, MaskPlane.BAD),
        "flag_cr_center": has(centre, MaskPlane.CR),
        "flag_nodata": has(circle, MaskPlane.NO_DATA) | has(footprint, MaskPlane.NO_DATA),
    }


def _stellar_concentration(ratio: np.ndarray, flux: np.ndarray, ok: np.ndarray) -> float:
    """Concentration ratio of a star, read off the bright sources (1 when too few).

    A FWHM estimate and a Gaussian profile predict a star's concentration only
    roughly (Moffat wings, isophotal sizes), so the ratio is normalised by the
    stellar locus: the most concentrated quarter of the brightest half, where
    stars gather (galaxies are less concentrated, noise scatters both ways).
    """
    good = ok & np.isfinite(ratio) & np.isfinite(flux) & (flux > 0)
    if good.sum() < 8:
        return 1.0
    bright = good & (flux >= np.median(flux[good]))
    locus = float(np.percentile(ratio[bright], 75))
    return locus if np.isfinite(locus) and locus > 0 else 1.0


def _extendedness(
    ctx: _Context,
    x: np.ndarray,
    y: np.ndarray,
    ok: np.ndarray,
    psf: Any,
    psf_fwhm_pix: float | None,
    values: dict[str, np.ndarray],
    config: MeasureConfig,
) -> np.ndarray:
    """0/1 extendedness (NaN when undetermined); rule in the module docstring."""
    n = x.size
    with np.errstate(divide="ignore", invalid="ignore"):
        if psf is not None:
            num, den = values["psf_flux"], values["kron_flux"]
            threshold = config.extendedness_threshold
        elif psf_fwhm_pix is not None and np.isfinite(psf_fwhm_pix) and psf_fwhm_pix > 0 and n:
            r = np.asarray(config.concentration_radii_pix, dtype=float)
            f, _, _ = sep.sum_circle(
                ctx.image, np.repeat(x, 2), np.repeat(y, 2), np.tile(r, n), mask=ctx.bad, subpix=0
            )
            f = f.reshape(n, 2)
            # Summing sampled pixels convolves the effective PSF once more with the pixel.
            var_ap = (psf_fwhm_pix * _FWHM_TO_SIGMA) ** 2 + 1.0 / 12.0
            ee = 1.0 - np.exp(-(r**2) / (2 * var_ap))
            num, den = f[:, 0] / ee[0], f[:, 1] / ee[1]
            num = num / _stellar_concentration(num / den, den, ok)
            threshold = config.extendedness_concentration_threshold
        else:
            return np.full(n, np.nan)
        ratio = num / den
    determined = ok & np.isfinite(ratio) & (den > 0)
    return np.where(determined, (ratio < threshold).astype(float), np.nan)
