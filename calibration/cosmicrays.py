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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .pixelsets import grow_square, touching_pairs
from .stats import row_median
from .configbase import doc_field
from .errors import BadExposureError, PsfError
from .exposure import MASK_DTYPE, Exposure, MaskPlane, planes_set

__all__ = ["CosmicRayConfig", "CosmicRayResult", "find_and_repair_cosmic_rays"]

_STAGE = "cosmic_rays"
#: Pixels with these planes are never flagged CR nor modified, and are not
#: used as neighbours in the repair median.
_PROTECTED = MaskPlane.SAT | MaskPlane.BAD | MaskPlane.NO_DATA
#: At most this many extra rings are tried when a repair window is empty.
_MAX_EXTRA_RINGS = 6
#: Bound on the number of gathered values per chunk of the repair median.
_CHUNK_ELEMENTS = 4_000_000
#: Rows per block of the whole-image candidate search.
_BLOCK_ROWS = 256
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
    ny, nx = image.shape
    core = _find_candidates(
        image,
        exposure.variance,
        exposure.mask,
        config,
        sigma_psf_pix=float(psf_fwhm_pix) * _FWHM_TO_SIGMA,
        background_rms_adu=float(background_rms_adu),
    )
    flagged = grow_square(core, (ny, nx), config.grow_pix)
    flagged = flagged[(exposure.mask.ravel()[flagged] & int(_PROTECTED)) == 0]
    n_pixels = int(flagged.size)
    if n_pixels == 0:
        return CosmicRayResult(fraction=0.0)
    n_usable = int(image.size - np.count_nonzero(planes_set(exposure.mask, int(_PROTECTED))))
    fraction = n_pixels / n_usable if n_usable else 0.0

    n_events = _count_groups(flagged, (ny, nx))
    repaired = _repair(exposure, flagged, first_radius=config.grow_pix + 1)
    exposure.mask[np.divmod(flagged, nx)] |= MASK_DTYPE(MaskPlane.CR)
    exposure.mask[np.divmod(repaired, nx)] |= MASK_DTYPE(MaskPlane.INTRP)

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
        n_repaired=int(repaired.size),
        fraction=float(fraction),
        too_many=bool(too_many),
        warnings=warnings,
    )


#: The 8 neighbours of a pixel as (dy, dx).
_RING = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def _find_candidates(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    config: CosmicRayConfig,
    *,
    sigma_psf_pix: float,
    background_rms_adu: float,
) -> np.ndarray:
    """Flat indices (sorted) of the pixels passing the significance and sharpness tests.

    Only a necessary condition is evaluated on the whole image, in float32:
    the median of the 8 neighbours is at least the minimum of the 3 x 3
    window, and the noise is at least ``background_rms_adu``, so a candidate
    has ``I - min3x3 > n_sigma * background_rms``. The exact tests (in
    float64, borders as ``nearest``) run on those few pixels only.
    """
    ny, nx = image.shape
    floor_var = background_rms_adu**2
    # Necessary condition, with a margin for float32 rounding.
    pre = _above_local_minimum(image, np.float32(config.n_sigma * background_rms_adu * (1 - 1e-4)))
    if pre.size == 0:
        return pre
    pre = pre[(mask.ravel()[pre] & int(_PROTECTED)) == 0]
    iy, ix = np.divmod(pre, nx)

    def at(dy: int | np.ndarray, dx: int | np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Flat indices of (yy + dy, xx + dx) clipped into the image (scipy's ``nearest``)."""
        return np.clip(yy + dy, 0, ny - 1) * nx + np.clip(xx + dx, 0, nx - 1)

    def eff_var(flat: np.ndarray) -> np.ndarray:
        v = variance.ravel()[flat].astype(np.float64)
        return np.where(np.isfinite(v), np.maximum(v, floor_var), floor_var)

    img_flat = image.ravel()
    value = img_flat[pre].astype(np.float64)
    ring = img_flat[at(_RING[None, :, 0], _RING[None, :, 1], iy[:, None], ix[:, None])].astype(np.float64)
    # scipy's median_filter over the 8-pixel ring returns the element of rank 4 (the upper median).
    median8 = np.partition(ring, 4, axis=1)[:, 4]
    noise = np.sqrt(eff_var(pre))
    keep = value - median8 > config.n_sigma * noise
    pre, iy, ix, value, noise = pre[keep], iy[keep], ix[keep], value[keep], noise[keep]
    if pre.size == 0:
        return pre

    k = config.contrast_noise_sigma
    lowered = value - k * noise
    sharp = np.zeros(pre.size, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        q = np.exp(-(dy * dy + dx * dx) / (2.0 * sigma_psf_pix**2))
        plus, minus = at(dy, dx, iy, ix), at(-dy, -dx, iy, ix)
        pair_mean = 0.5 * (img_flat[plus].astype(np.float64) + img_flat[minus])
        pair_noise = 0.5 * np.sqrt(eff_var(plus) + eff_var(minus))
        sharp |= q * lowered > config.contrast * (pair_mean + k * pair_noise)
    return pre[sharp]


def _above_local_minimum(image: np.ndarray, threshold: np.float32) -> np.ndarray:
    """Flat indices of pixels exceeding the minimum of their 3 x 3 window by more than ``threshold``.

    Borders as scipy's ``nearest`` mode. Computed in blocks of rows with
    shifted ``np.minimum`` (a few passes over the image, no image-sized
    temporary).
    """
    ny, nx = image.shape
    found = []
    for start in range(0, ny, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, ny)
        lo, hi = max(start - 1, 0), min(stop + 1, ny)
        rows = image[lo:hi]
        across = rows.copy()
        if nx > 1:
            np.minimum(across[:, 1:], rows[:, :-1], out=across[:, 1:])
            np.minimum(across[:, :-1], rows[:, 1:], out=across[:, :-1])
        # Vertical minimum of three rows of ``across`` (edge rows repeat themselves).
        r = np.arange(start, stop)
        out = np.minimum(across[r - lo], across[np.maximum(r - 1, 0) - lo])
        np.minimum(out, across[np.minimum(r + 1, ny - 1) - lo], out=out)
        np.subtract(image[start:stop], out, out=out)
        hits = np.flatnonzero(out > threshold)
        if hits.size:
            found.append(hits + start * nx)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _count_groups(flagged: np.ndarray, shape: tuple[int, int]) -> int:
    """Number of 8-connected groups among the sorted flat indices ``flagged``."""
    r, c = touching_pairs(flagged, shape[1])
    graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(flagged.size, flagged.size))
    n, _ = connected_components(graph, directed=False)
    return int(n)


def _repair(exposure: Exposure, targets: np.ndarray, *, first_radius: int) -> np.ndarray:
    """Replace the ``targets`` pixels (sorted flat indices) by the median of usable pixels around them.

    Usable: inside the image, not a target, not SAT/BAD/NO_DATA, finite
    variance. Windows are squares of half-size ``first_radius``, then one ring
    larger for the pixels whose window held no usable pixel, up to
    ``_MAX_EXTRA_RINGS`` more rings. Every median is taken from the values
    before any replacement. Returns the flat indices of the repaired pixels.
    """
    ny, nx = exposure.shape
    img_flat = exposure.image.ravel()
    var_flat = exposure.variance.ravel()
    mask_flat = exposure.mask.ravel()
    yy, xx = np.divmod(targets, nx)
    new_img = np.full(targets.size, np.nan, np.float32)
    new_var = np.full(targets.size, np.nan, np.float32)
    todo = np.arange(targets.size)
    for radius in range(first_radius, first_radius + _MAX_EXTRA_RINGS + 1):
        if todo.size == 0:
            break
        dy, dx = (g.ravel() for g in np.mgrid[-radius : radius + 1, -radius : radius + 1])
        chunk = max(1, _CHUNK_ELEMENTS // dy.size)
        for start in range(0, todo.size, chunk):
            sel = todo[start : start + chunk]
            py, px = yy[sel, None] + dy[None, :], xx[sel, None] + dx[None, :]
            inside = (py >= 0) & (py < ny) & (px >= 0) & (px < nx)
            flat = np.where(inside, py * nx + px, 0)
            pos = np.minimum(np.searchsorted(targets, flat), targets.size - 1)
            var = var_flat[flat]
            ok = (inside & (targets[pos] != flat) & ((mask_flat[flat] & int(_PROTECTED)) == 0)
                  & np.isfinite(var))
            new_img[sel] = row_median(img_flat[flat], ok).astype(np.float32)
            new_var[sel] = row_median(var, ok).astype(np.float32)
        todo = todo[~np.isfinite(new_img[todo])]

    done = np.isfinite(new_img)
    repaired = targets[done]
    where = np.divmod(repaired, nx)
    exposure.image[where] = new_img[done]
    exposure.variance[where] = new_var[done]
    return repaired
