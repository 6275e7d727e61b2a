"""Cosmic-ray detection and repair (after LSST's ``RepairTask`` / SDSS PHOTO).

A pixel is a cosmic-ray (CR) candidate when it passes two vectorised tests:

1. **Significance**: it exceeds the median of its 8 neighbours by more than
   ``n_sigma`` times its noise, ``noise = sqrt(max(variance, background_rms**2))``.
2. **Sharpness**: it is sharper than any PSF of the measured FWHM could make
   it. For a Gaussian PSF of width ``s = fwhm / 2.3548`` centred anywhere, the
   mean of two *opposite* neighbours at distance ``d`` (1 along the axes,
   sqrt(2) along the diagonals) is at least ``q(d) = exp(-d**2 / (2 s**2))``
   times the pixel value, because
   ``(f(u - d) + f(u + d)) / 2 = f(u) exp(-d**2 / 2s**2) cosh(u d / s**2)``
   and ``cosh >= 1`` (pixel integration only raises the ratio). The pixel is
   sharper than the PSF if, for at least one of the four directions,

   ``q(d) * (I0 - k * noise0) > contrast * (mean_pair + k * noise_pair)``

   with ``k = contrast_noise_sigma`` (the pixel is pushed down and its
   neighbours up by ``k`` sigma before the comparison, SDSS's ``cond3_fac``)
   and ``contrast >= 1`` a safety factor (LSST/SDSS use 1/0.6 ~ 1.67) for
   PSFs peakier than a Gaussian of the same FWHM (a beta=2.5 Moffat is 2.5%
   sharper at one pixel before pixel integration, as sharp after it) and for
   a FWHM handed over too large (with 1.5, a FWHM-3 star is safe up to an
   assumed FWHM of ~5.5 pix; an underestimate is always safe).

The candidates are grown by ``grow_pix`` (a square of side ``2 grow_pix + 1``),
flagged ``CR`` and replaced by the median of the surrounding non-CR, unmasked
pixels (window half-size ``grow_pix + 1``, enlarged where the window holds no
usable pixel), and flagged ``INTRP``. Saturated, bad and no-data pixels are
never flagged nor modified.

The image must already be background-subtracted (the sharpness test compares
pixel values as ratios), which is the pipeline order: background, then CRs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .stats import row_median
from .configbase import doc_field
from .errors import BadExposureError, PsfError
from .exposure import Exposure, MaskPlane

__all__ = ["CosmicRayConfig", "CosmicRayResult", "find_and_repair_cosmic_rays"]

_STAGE = "cosmic_rays"
#: Pixels with these planes are never flagged CR nor modified, and are not
#: used as neighbours in the repair median.
_PROTECTED = MaskPlane.SAT | MaskPlane.BAD | MaskPlane.NO_DATA
#: At most this many extra rings are tried when a repair window is empty.
_MAX_EXTRA_RINGS = 6
#: Bound on the number of gathered values per chunk of the repair median.
_CHUNK_ELEMENTS = 4_000_000
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclasses.dataclass(frozen=True)
class CosmicRayConfig:
    """Configuration of :func:`find_and_repair_cosmic_rays`."""

    enabled: bool = doc_field(True, "Find and repair cosmic rays; when false the stage does nothing.")
    n_sigma: float = doc_field(
        6.0,
        "Significance test: a candidate exceeds the median of its 8 neighbours by more "
        "than this many times its noise sqrt(max(variance, background_rms**2)).",
    )
    contrast: float = doc_field(
        1.5,
        "Sharpness test: factor on the largest pixel-to-neighbour-pair contrast a Gaussian "
        "PSF of the measured FWHM can produce (1/q(d), q(d) = exp(-d**2/2s**2)); a pixel "
        "is a CR only if its contrast in some direction exceeds this factor times that "
        "limit. 1.0 is the exact Gaussian limit; LSST/SDSS use 1/0.6 ~ 1.67.",
    )
    contrast_noise_sigma: float = doc_field(
        3.0,
        "Noise allowance of the sharpness test: the pixel is lowered and its neighbour "
        "pair raised by this many sigma before the contrast is formed (SDSS cond3_fac).",
    )
    grow_pix: int = doc_field(
        1, "Grow each detected CR pixel by this many pixels (square) before repair."
    )
    max_fraction: float = doc_field(
        0.01,
        "Above this fraction of usable pixels flagged CR the result carries a warning "
        "(the PSF FWHM or the noise level is probably wrong); never an error.",
    )

    def validate(self) -> None:
        """Cross-field checks; raise ``ValueError`` on a bad value."""
        if not self.n_sigma > 0:
            raise ValueError(f"n_sigma must be > 0, got {self.n_sigma}")
        if not self.contrast > 0:
            raise ValueError(f"contrast must be > 0, got {self.contrast}")
        if not self.contrast_noise_sigma >= 0:
            raise ValueError(f"contrast_noise_sigma must be >= 0, got {self.contrast_noise_sigma}")
        if self.grow_pix < 0:
            raise ValueError(f"grow_pix must be >= 0, got {self.grow_pix}")
        if not 0 < self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {self.max_fraction}")


@dataclasses.dataclass(frozen=True)
class CosmicRayResult:
    """What :func:`find_and_repair_cosmic_rays` found and did.

    Attributes
    ----------
    n_pixels : int
        Pixels flagged ``CR`` (after growing).
    n_cosmic_rays : int
        Cosmic-ray events: 8-connected groups of flagged pixels.
    n_repaired : int
        Flagged pixels replaced by the median of their neighbours (``INTRP``);
        the others (no usable neighbour in reach) keep their value.
    fraction : float
        ``n_pixels`` over the number of usable (not SAT/BAD/NO_DATA) pixels.
    too_many : bool
        ``fraction > config.max_fraction``.
    warnings : tuple of str
        Sentences for a person, e.g. the too-many-CRs warning.
    """

    n_pixels: int = 0
    n_cosmic_rays: int = 0
    n_repaired: int = 0
    fraction: float = 0.0
    too_many: bool = False
    warnings: tuple[str, ...] = ()


def find_and_repair_cosmic_rays(
    exposure: Exposure,
    config: CosmicRayConfig,
    *,
    psf_fwhm_pix: float,
    background_rms_adu: float,
) -> CosmicRayResult:
    """Flag pixels sharper than the PSF as cosmic rays and interpolate over them.

    The exposure is modified in place: ``image`` and ``variance`` of the
    repaired pixels are replaced by the median of their usable neighbours and
    ``mask`` gets ``CR`` (all flagged pixels) and ``INTRP`` (repaired ones).

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure, arrays indexed ``[y, x]``.
    config : CosmicRayConfig
        Thresholds (see the module docstring for the tests).
    psf_fwhm_pix : float
        FWHM of the PSF in pixels (a Gaussian of this FWHM sets the sharpness limit).
    background_rms_adu : float
        Per-pixel background noise in ADU, the floor of the per-pixel noise.

    Returns
    -------
    CosmicRayResult
        Counts, the flagged fraction and warnings.

    Raises
    ------
    PsfError
        ``psf_fwhm_pix`` is not a positive finite number.
    BadExposureError
        ``background_rms_adu`` is not a positive finite number.
    """
    if not config.enabled:
        return CosmicRayResult()
    if not (np.isfinite(psf_fwhm_pix) and psf_fwhm_pix > 0):
        raise PsfError(
            "cosmic-ray search needs a positive PSF FWHM", stage=_STAGE, psf_fwhm_pix=psf_fwhm_pix
        )
    if not (np.isfinite(background_rms_adu) and background_rms_adu > 0):
        raise BadExposureError(
            "cosmic-ray search needs a positive background rms",
            stage=_STAGE,
            background_rms_adu=background_rms_adu,
        )

    image = np.asarray(exposure.image, dtype=np.float32)
    protected = (exposure.mask & int(_PROTECTED)) != 0
    core = _find_candidates(
        image,
        exposure.variance,
        protected,
        config,
        sigma_psf_pix=float(psf_fwhm_pix) * _FWHM_TO_SIGMA,
        background_rms_adu=float(background_rms_adu),
    )
    if config.grow_pix > 0 and core.any():
        flagged = ndimage.binary_dilation(
            core, structure=np.ones((3, 3), bool), iterations=config.grow_pix
        )
        flagged &= ~protected
    else:
        flagged = core
    n_pixels = int(flagged.sum())
    n_usable = int((~protected).sum())
    fraction = n_pixels / n_usable if n_usable else 0.0
    if n_pixels == 0:
        return CosmicRayResult(fraction=0.0)

    _, n_events = ndimage.label(flagged, structure=np.ones((3, 3), bool))
    repaired = _repair(exposure, flagged, flagged | protected, first_radius=config.grow_pix + 1)
    exposure.mask[flagged] |= MaskPlane.CR
    exposure.mask[repaired] |= MaskPlane.INTRP

    warnings: tuple[str, ...] = ()
    too_many = fraction > config.max_fraction
    if too_many:
        warnings = (
            f"{fraction:.2%} of the usable pixels were flagged as cosmic rays (limit "
            f"{config.max_fraction:.2%}): check the PSF FWHM ({psf_fwhm_pix:.2f} pix) and "
            f"the background rms ({background_rms_adu:.3g} ADU).",
        )
    return CosmicRayResult(
        n_pixels=n_pixels,
        n_cosmic_rays=int(n_events),
        n_repaired=int(repaired.sum()),
        fraction=float(fraction),
        too_many=bool(too_many),
        warnings=warnings,
    )


def _find_candidates(
    image: np.ndarray,
    variance: np.ndarray,
    protected: np.ndarray,
    config: CosmicRayConfig,
    *,
    sigma_psf_pix: float,
    background_rms_adu: float,
) -> np.ndarray:
    """Boolean map of pixels passing the significance and sharpness tests."""
    var = np.asarray(variance, dtype=np.float64)
    var = np.where(np.isfinite(var), np.maximum(var, background_rms_adu**2), background_rms_adu**2)
    img = image.astype(np.float64)

    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    median8 = ndimage.median_filter(img, footprint=ring, mode="nearest")
    noise = np.sqrt(var)
    candidate = (img - median8 > config.n_sigma * noise) & ~protected
    if not candidate.any():
        return candidate

    k = config.contrast_noise_sigma
    pad_img = np.pad(img, 1, mode="edge")
    pad_var = np.pad(var, 1, mode="edge")
    ny, nx = img.shape

    def shifted(padded: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx]

    sharp = np.zeros_like(candidate)
    lowered = img - k * noise
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        q = np.exp(-(dy * dy + dx * dx) / (2.0 * sigma_psf_pix**2))
        pair_mean = 0.5 * (shifted(pad_img, dy, dx) + shifted(pad_img, -dy, -dx))
        pair_noise = 0.5 * np.sqrt(shifted(pad_var, dy, dx) + shifted(pad_var, -dy, -dx))
        sharp |= q * lowered > config.contrast * (pair_mean + k * pair_noise)
    return candidate & sharp


def _repair(
    exposure: Exposure, targets: np.ndarray, unusable: np.ndarray, *, first_radius: int
) -> np.ndarray:
    """Replace ``targets`` pixels by the median of usable pixels around them.

    Windows are squares of half-size ``first_radius``, then one ring larger
    for the pixels whose window held no usable pixel, up to
    ``_MAX_EXTRA_RINGS`` more rings. Returns the map of repaired pixels.
    """
    ny, nx = exposure.shape
    pad = first_radius + _MAX_EXTRA_RINGS
    shape_p = (ny + 2 * pad, nx + 2 * pad)
    img_p = np.zeros(shape_p, np.float32)
    img_p[pad:-pad, pad:-pad] = exposure.image
    var_p = np.zeros(shape_p, np.float32)
    var_p[pad:-pad, pad:-pad] = exposure.variance
    ok_p = np.zeros(shape_p, bool)
    ok_p[pad:-pad, pad:-pad] = ~unusable & np.isfinite(exposure.variance)

    yy, xx = np.nonzero(targets)
    flat_centre = (yy + pad) * shape_p[1] + (xx + pad)
    new_img = np.full(yy.size, np.nan, np.float32)
    new_var = np.full(yy.size, np.nan, np.float32)
    todo = np.arange(yy.size)
    for radius in range(first_radius, first_radius + _MAX_EXTRA_RINGS + 1):
        if todo.size == 0:
            break
        dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        offsets = (dy * shape_p[1] + dx).ravel()
        chunk = max(1, _CHUNK_ELEMENTS // offsets.size)
        for start in range(0, todo.size, chunk):
            sel = todo[start : start + chunk]
            idx = flat_centre[sel, None] + offsets[None, :]
            ok = ok_p.ravel()[idx]
            new_img[sel] = row_median(img_p.ravel()[idx], ok).astype(np.float32)
            new_var[sel] = row_median(var_p.ravel()[idx], ok).astype(np.float32)
        todo = todo[~np.isfinite(new_img[todo])]

    done = np.isfinite(new_img)
    exposure.image[yy[done], xx[done]] = new_img[done]
    exposure.variance[yy[done], xx[done]] = new_var[done]
    repaired = np.zeros(targets.shape, bool)
    repaired[yy[done], xx[done]] = True
    return repaired
