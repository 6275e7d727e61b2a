"""Source detection with parent/child deblend families (after LSST's
SourceDetectionTask + SourceDeblendTask, with sep doing the work).

Detection runs on the background-subtracted image. The image is filtered by a
Gaussian of the PSF FWHM (a matched filter) and pixels whose filtered
signal-to-noise exceeds ``threshold_sigma`` form footprints of at least
``min_pixels`` pixels (noise of the filtered image: per-pixel noise times
``sqrt(sum(kernel**2))`` for a unit-sum kernel, assuming the noise varies
slowly on the kernel scale).

sep returns only deblended objects, so the family tree is rebuilt from its
segmentation map: sep gives every pixel of a footprint to one of its
children, so the children whose pixels touch form a parent, whose isophotal
sums are the sums of theirs. A child belongs to the parent footprint that
contains its peak pixel. A parent with one child is an isolated
source and gives one primary row; a parent with k >= 2 children gives a
non-primary parent row (measured on the whole footprint) followed by k primary
child rows. Ids run 1..N in that order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sep
from astropy import units as u
from astropy.table import Table

from .background import (
    BackgroundConfig,
    BackgroundModel,
    estimate_background,
    plane_bits,
)
from .configbase import doc_field
from .errors import BadExposureError, CalibrationError, ConfigError, NoSourcesError
from .exposure import MASK_DTYPE, Exposure, MaskPlane, planes_set, release_free_memory
from .pixelsets import touching_pairs
from .stats import mad_sigma

__all__ = [
    "CrowdedFieldError",
    "DetectionConfig",
    "DetectionResult",
    "detect_and_refine_background",
    "detect_sources",
    "first_look",
    "psf_fwhm_from_moments",
    "reestimate_background",
    "refine_background",
    "gaussian_kernel",
]

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


class CrowdedFieldError(CalibrationError):
    """Detection exceeded sep's pixel buffer, sub-object or ``max_sources`` limit."""


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Configuration of :func:`detect_sources`."""

    threshold_sigma: float = doc_field(
        5.0, "Detection threshold: signal-to-noise of a pixel in the PSF-filtered image."
    )
    min_pixels: int = doc_field(5, "Minimum number of pixels above threshold in a footprint.")
    smoothing_fwhm_pix: float | None = doc_field(
        None,
        "FWHM (pix) of the Gaussian detection filter; None uses the PSF FWHM given "
        "to detect_sources, or fallback_smoothing_fwhm_pix when none is given.",
    )
    fallback_smoothing_fwhm_pix: float = doc_field(
        3.0, "Filter FWHM (pix) used when neither smoothing_fwhm_pix nor a PSF FWHM is known."
    )
    do_deblend: bool = doc_field(True, "Split blended footprints into children (sep's deblender).")
    deblend_nthresh: int = doc_field(32, "Number of deblending sub-thresholds.")
    deblend_min_contrast: float = doc_field(
        0.005, "Minimum flux fraction of a branch to become a child (SExtractor DEBLEND_MINCONT)."
    )
    reestimate_background: bool = doc_field(
        True,
        "Re-estimate the background with the detected footprints masked (DETECTED) and "
        "subtract it instead (LSST's reEstimateBackground; calibrate does it after the "
        "detection, refine_background after a first undeblended pass).",
    )
    mean_sky_correction: bool = doc_field(
        True,
        "After the re-estimate, add the clipped mean of the sky pixels away from every footprint "
        "(grown by sky_mask_grow_pix) to the background: sep's box statistic is SExtractor's mode, "
        "which for Poisson sky lies skewness x sigma / 2 below the mean (0.3 ADU at 1000 ADU, gain "
        "1.5); LSST's background statistic is the clipped mean.",
    )
    sky_mask_grow_pix: int = doc_field(
        4, "Footprints are grown by this many pixels to keep source wings out of that mean."
    )
    clean: bool = doc_field(True, "Remove spurious detections in the wings of bright ones.")
    clean_param: float = doc_field(1.0, "Cleaning efficiency (SExtractor CLEAN_PARAM).")
    edge_width_pix: int | None = doc_field(
        None,
        "Width (pix) of the image border marked EDGE (filter not fully inside the "
        "image); None uses the half-width of the detection filter.",
    )
    mask_planes: tuple[str, ...] = doc_field(
        ("BAD", "NO_DATA"), "Mask planes whose pixels are ignored (treated as zero signal)."
    )
    pixstack_pix: int = doc_field(
        1_000_000, "sep's buffer of active pixels above threshold (raise for crowded fields)."
    )
    sub_object_limit: int = doc_field(
        4096, "sep's limit on sub-objects while deblending one footprint."
    )
    uniform_noise_tolerance: float = doc_field(
        0.05,
        "When the background rms varies by less than this fraction over the image (1st to 99th "
        "percentile of the box values over their median), the threshold uses the median as one "
        "number instead of the per-pixel map (box estimates scatter by ~1% from noise alone); "
        "0 always uses the map.",
    )

    def validate(self) -> None:
        """Check ranges and plane names; raise ValueError on a bad value."""
        if not self.threshold_sigma > 0:
            raise ValueError(f"threshold_sigma must be > 0, got {self.threshold_sigma}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")
        for name in ("smoothing_fwhm_pix", "fallback_smoothing_fwhm_pix"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.deblend_nthresh < 1:
            raise ValueError(f"deblend_nthresh must be >= 1, got {self.deblend_nthresh}")
        if not 0 <= self.deblend_min_contrast <= 1:
            raise ValueError(f"deblend_min_contrast must be in [0, 1], got {self.deblend_min_contrast}")
        if self.edge_width_pix is not None and self.edge_width_pix < 0:
            raise ValueError(f"edge_width_pix must be >= 0, got {self.edge_width_pix}")
        if not 0 <= self.uniform_noise_tolerance < 1:
            raise ValueError(f"uniform_noise_tolerance must be in [0, 1), got {self.uniform_noise_tolerance}")
        if self.sky_mask_grow_pix < 0:
            raise ValueError(f"sky_mask_grow_pix must be >= 0, got {self.sky_mask_grow_pix}")
        if self.pixstack_pix < 1 or self.sub_object_limit < 1:
            raise ValueError("pixstack_pix and sub_object_limit must be >= 1")
        plane_bits(self.mask_planes)


class DetectionResult:
    """Output of :func:`detect_sources`.

    The footprint maps are kept sparse (the footprint pixels and their ids);
    :attr:`segmentation` and :attr:`deblend_segmentation` build the
    image-sized int32 arrays on each access.

    Attributes
    ----------
    catalog : astropy.table.Table
        One row per source (columns in :func:`detect_sources`).
    segmentation : ndarray of int32, shape (ny, nx)
        ``id`` of the top-level row (parent or isolated source) whose footprint
        contains the pixel; 0 outside footprints. Equals ``footprint_id``.
    deblend_segmentation : ndarray of int32, shape (ny, nx)
        ``id`` of the primary row (child or isolated source) owning the pixel.
    threshold_adu : float
        Threshold on the filtered image (unit-sum kernel) in ADU for the median
        noise: ``threshold_sigma * median_rms * sqrt(sum(kernel**2))``.
    threshold_sigma : float
        Threshold in units of the filtered-image noise.
    smoothing_fwhm_pix : float
        FWHM of the Gaussian detection filter (pix).
    background_rms_adu : float
        Median per-pixel noise used for the threshold (ADU).
    n_parents : int
        Number of top-level footprints (rows with ``parent == 0``).
    n_children : int
        Number of deblended children (rows with ``parent != 0``).
    """

    def __init__(
        self,
        *,
        catalog: Table,
        shape: tuple[int, int],
        footprints: tuple[np.ndarray, np.ndarray],
        deblended: tuple[np.ndarray, np.ndarray],
        threshold_adu: float,
        threshold_sigma: float,
        smoothing_fwhm_pix: float,
        background_rms_adu: float,
        n_parents: int,
        n_children: int,
    ) -> None:
        self.catalog = catalog
        self.shape = tuple(shape)
        self._footprints = footprints
        self._deblended = deblended
        self.threshold_adu = threshold_adu
        self.threshold_sigma = threshold_sigma
        self.smoothing_fwhm_pix = smoothing_fwhm_pix
        self.background_rms_adu = background_rms_adu
        self.n_parents = n_parents
        self.n_children = n_children

    @property
    def segmentation(self) -> np.ndarray:
        return _dense(self._footprints, self.shape)

    @property
    def deblend_segmentation(self) -> np.ndarray:
        return _dense(self._deblended, self.shape)

    @property
    def footprint_pixels(self) -> np.ndarray:
        """Flat indices (``y * nx + x``, sorted) of every pixel in a top-level footprint."""
        return self._footprints[0]

    @property
    def n_primary(self) -> int:
        """Number of primary rows (children and isolated sources)."""
        return int(np.count_nonzero(self.catalog["detect_isPrimary"]))


def _dense(sparse: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Image-sized int32 map from ``(flat pixel indices, values)``; 0 elsewhere."""
    out = np.zeros(shape, np.int32)
    out.ravel()[sparse[0]] = sparse[1]
    return out


def _sparse(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(flat indices, values)`` of the non-zero pixels of a map, indices sorted."""
    pix = np.flatnonzero(seg)
    values = seg.ravel()[pix].astype(np.int32)
    if seg.size < 2**31:  # int32 indices halve the memory of the maps
        pix = pix.astype(np.int32)
    return pix, values


def gaussian_kernel(fwhm_pix: float) -> np.ndarray:
    """Unit-sum circular Gaussian of FWHM ``fwhm_pix``, ``(2r+1, 2r+1)``, r = ceil(3 sigma).

    A cut at 2 sigma would halve sep's convolution (most of a detection
    pass) for under 1% of S/N, but moves footprints enough to shift the zero
    point of the truth fields by up to 15 mmag through the background and
    the segmentation: not taken.
    """
    sigma = fwhm_pix / FWHM_PER_SIGMA
    half = max(1, int(np.ceil(3.0 * sigma)))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def detect_sources(
    exposure: Exposure,
    config: DetectionConfig | None = None,
    *,
    background_rms_adu: float | np.ndarray | None = None,
    psf_fwhm_pix: float | None = None,
    max_sources: int | None = None,
) -> DetectionResult:
    """Detect sources on the background-subtracted ``exposure.image``.

    Sets ``MaskPlane.DETECTED`` on footprint pixels (clearing it first) and
    ``MaskPlane.EDGE`` on the image border of ``edge_width_pix``.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure (ADU, ``[y, x]``); its mask is updated.
    config : DetectionConfig, optional
        Threshold, filter and deblending settings (defaults if None).
    background_rms_adu : float, ndarray of shape (ny, nx) or BackgroundModel, optional
        Per-pixel noise (ADU), e.g. ``BackgroundModel.rms_image``; a
        :class:`~calibration.background.BackgroundModel` has its rms plane
        evaluated for this call only. None uses a global robust rms (1.4826
        MAD) of the unmasked pixels.
    psf_fwhm_pix : float, optional
        PSF FWHM (pix) for the filter when ``config.smoothing_fwhm_pix`` is None.
    max_sources : int, optional
        Refuse more primary sources than this (``CrowdedFieldError``).

    Returns
    -------
    DetectionResult
        The catalogue has, each with unit and description: ``id`` (1..N),
        ``parent`` (0 for top level), ``deblend_nChild``, ``detect_isPrimary``,
        ``footprint_id``, ``x``, ``y``, ``x_err``, ``y_err`` (isophotal
        barycentre, local 0-based pix), ``x_peak``, ``y_peak``, ``a``, ``b``,
        ``theta``, ``shape_xx``, ``shape_yy``, ``shape_xy``, ``npix``,
        ``peak_value``, ``flux`` (isophotal, ADU), ``sep_flag`` and
        ``flag_deblend_merged``, ``flag_truncated``,
        ``flag_deblend_truncated``, ``flag_singular_moments``.

    Raises
    ------
    NoSourcesError
        Nothing above the threshold.
    CrowdedFieldError
        sep's buffers overflowed, or more than ``max_sources`` sources.
    BadExposureError
        No pixel with a usable noise value.
    """
    config = config or DetectionConfig()
    _validate(config)
    fwhm = _filter_fwhm(config, psf_fwhm_pix)
    prep = _prepare(exposure, config, background_rms_adu, fwhm)
    data, err, masked, kernel = prep.data, prep.err, prep.masked, prep.kernel
    median_rms, filtered_noise_factor = prep.median_rms, prep.noise_factor
    threshold_adu = config.threshold_sigma * median_rms * filtered_noise_factor
    _set_edge(exposure, config, kernel)
    figures = dict(threshold_sigma=config.threshold_sigma, min_pixels=config.min_pixels,
                   smoothing_fwhm_pix=fwhm, background_rms_adu=median_rms)
    # sep's own cleaning compares every pair of objects (O(n^2)); _clean does it on close pairs.
    unclean = dataclasses.replace(config, clean=False)
    contrast = config.deblend_min_contrast if config.do_deblend else 1.0
    children, seg_c = _extract(data, err, masked, kernel, unclean, contrast, filtered_noise_factor, figures)
    if len(children) == 0:
        raise NoSourcesError(
            f"no sources above {config.threshold_sigma} sigma with at least {config.min_pixels} "
            "pixels: check that the image has stars and the background was subtracted, or "
            "lower threshold_sigma",
            stage="detection",
            n_unmasked_pixels=int(masked.size - np.count_nonzero(masked)),
            **figures,
        )
    child_map = _sparse(seg_c)
    del seg_c, prep, err, masked
    release_free_memory()
    if config.clean:
        children, child_map = _clean(children, child_map, config.clean_param, config.min_pixels)
    if config.do_deblend:
        parents, parent_map = _parents_of(children, child_map, exposure.shape[1])
    else:
        parents, parent_map = children, child_map

    catalog, footprints, deblended = _families_sparse(
        parents, parent_map, children, child_map, width=exposure.shape[1]
    )
    n_primary = int(np.count_nonzero(catalog["detect_isPrimary"]))
    if max_sources is not None and n_primary > max_sources:
        raise CrowdedFieldError(
            f"{n_primary} sources detected, more than max_sources={max_sources}: raise "
            "threshold_sigma or max_sources",
            stage="detection",
            n_sources=n_primary,
            max_sources=max_sources,
            **figures,
        )
    exposure.mask[np.divmod(footprints[0], exposure.shape[1])] |= MASK_DTYPE(MaskPlane.DETECTED)
    catalog.meta.update(
        threshold_sigma=config.threshold_sigma,
        threshold_adu=threshold_adu,
        smoothing_fwhm_pix=float(fwhm),
    )
    is_child = catalog["parent"] != 0
    release_free_memory()  # the families' temporaries
    return DetectionResult(
        catalog=catalog,
        shape=exposure.shape,
        footprints=footprints,
        deblended=deblended,
        threshold_adu=threshold_adu,
        threshold_sigma=config.threshold_sigma,
        smoothing_fwhm_pix=float(fwhm),
        background_rms_adu=median_rms,
        n_parents=int(np.count_nonzero(~is_child)),
        n_children=int(np.count_nonzero(is_child)),
    )


def refine_background(
    exposure: Exposure,
    det_config: DetectionConfig | None = None,
    bg_config: BackgroundConfig | None = None,
    *,
    psf_fwhm_pix: float | None = None,
) -> tuple[Table, BackgroundModel]:
    """Subtract the sky, estimated again with the sources masked (LSST's reEstimateBackground).

    1. Estimate the background and subtract it.
    2. Detect once, without deblending or cleaning (sources only need to be
       masked): footprints are set ``DETECTED``.
    3. Put the first background back, estimate it again with ``DETECTED``
       pixels ignored (added to ``bg_config.mask_planes`` if absent) and
       subtract that one.

    Parameters
    ----------
    exposure : Exposure
        Exposure with the sky still in its image; on return the image has the
        returned background subtracted and ``DETECTED`` marks the footprints
        of step 2.
    det_config, bg_config : optional
        Detection and background configs (defaults if None).
    psf_fwhm_pix : float, optional
        FWHM (pix) of the detection filter when ``det_config.smoothing_fwhm_pix`` is None.

    Returns
    -------
    (astropy.table.Table, BackgroundModel)
        The detections of step 2 (``x``, ``y`` in local 0-based pix, ``flux``
        in ADU, ``npix``, ``peak_value``, ``shape_xx``, ``shape_yy``,
        ``shape_xy`` in pix^2: isophotal, undeblended) and the background
        model that was subtracted.

    Raises
    ------
    NoSourcesError, BadExposureError, CrowdedFieldError
        As :func:`detect_sources` and :func:`~calibration.background.estimate_background`.
    """
    det_config = det_config or DetectionConfig()
    bg_config = bg_config or BackgroundConfig()
    _validate(det_config)
    background = estimate_background(exposure, bg_config)
    background.subtract_from(exposure.image)
    fwhm = _filter_fwhm(det_config, psf_fwhm_pix)
    prep = _prepare(exposure, det_config, background, fwhm)
    figures = dict(threshold_sigma=det_config.threshold_sigma, min_pixels=det_config.min_pixels,
                   smoothing_fwhm_pix=fwhm, background_rms_adu=prep.median_rms)
    single = dataclasses.replace(det_config, clean=False)
    objects, seg = _extract(prep.data, prep.err, prep.masked, prep.kernel, single, 1.0, prep.noise_factor, figures)
    del prep
    detected = MASK_DTYPE(MaskPlane.DETECTED)
    exposure.mask &= ~detected
    np.bitwise_or(exposure.mask, detected, out=exposure.mask, where=seg > 0)
    del seg
    release_free_memory()
    if det_config.reestimate_background:
        background = reestimate_background(exposure, background, bg_config, det_config)
    table = _first_look_table(objects)
    table.meta.update(smoothing_fwhm_pix=fwhm, threshold_sigma=det_config.threshold_sigma)
    return table, background


def reestimate_background(
    exposure: Exposure,
    background: BackgroundModel,
    bg_config: BackgroundConfig | None = None,
    det_config: DetectionConfig | None = None,
) -> BackgroundModel:
    """Estimate the sky again with the ``DETECTED`` pixels ignored and subtract it instead of ``background``.

    LSST's reEstimateBackground: the footprints of a detection stay as they
    are; only the sky under them is refined. ``exposure.image`` must have
    ``background`` subtracted; on return it has the new model subtracted.
    With ``det_config.mean_sky_correction`` the model is then raised to the
    clipped mean of the sky away from the footprints (see
    :class:`DetectionConfig`).
    """
    bg_config = bg_config or BackgroundConfig()
    if "DETECTED" not in bg_config.mask_planes:
        bg_config = dataclasses.replace(bg_config, mask_planes=(*bg_config.mask_planes, "DETECTED"))
    background.add_to(exposure.image)
    refined = estimate_background(exposure, bg_config)
    refined.subtract_from(exposure.image)
    if det_config is not None and det_config.mean_sky_correction:
        offset = _mean_sky_residual(exposure, bg_config, det_config.sky_mask_grow_pix)
        if offset is not None:
            refined.add_offset(offset)
            exposure.image -= np.float32(offset)
    return refined


def _mean_sky_residual(exposure: Exposure, bg_config: BackgroundConfig, grow_pix: int,
                       n_sigma: float = 3.0, max_samples: int = 1 << 22) -> float | None:
    """3-sigma clipped mean of the background-subtracted sky away from sources, on a grid of pixels.

    The image is cut into ``step`` x ``step`` blocks; a block with a
    ``DETECTED`` pixel, grown by ``grow_pix`` (rounded up to whole blocks:
    source wings hold light below the threshold), is left out, and each
    other block gives its central pixel; ``step`` is chosen for about
    ``max_samples`` blocks (4M: the mean to 0.0005 sigma, though faint
    sources below the threshold make the result depend on the sample by
    ~0.003 sigma). None when under 1000 pixels qualify.
    """
    ny, nx = exposure.shape
    step = max(1, int(np.sqrt(ny * nx / max_samples)))
    by, bx = ny // step, nx // step
    # Blocks holding a footprint pixel, from the footprint pixels' positions
    # (a reduction over the full-size plane costs ten times more).
    rows, cols = np.divmod(np.flatnonzero(planes_set(exposure.mask, int(MaskPlane.DETECTED))), nx)
    inside = (rows < by * step) & (cols < bx * step)
    blocks = np.zeros((by, bx), bool)
    blocks[rows[inside] // step, cols[inside] // step] = True
    del rows, cols, inside
    # Dense: in a crowded field most blocks hold a footprint, and the sparse
    # growth (pixelsets.grow_square) of millions of blocks costs seconds and GB.
    near = _dilate_square(blocks, -(-grow_pix // step))
    centre = (slice(step // 2, by * step, step), slice(step // 2, bx * step, step))
    near |= planes_set(exposure.mask[centre], plane_bits(bg_config.mask_planes))
    values = exposure.image[centre][~near]
    values = values[np.isfinite(values)]
    if values.size < 1000:
        return None
    start = values[:: max(1, values.size // 200_000)]  # the clip's starting point needs no more
    centre_value, sigma = float(np.median(start)), mad_sigma(start)
    for _ in range(3):
        kept = values[np.abs(values - np.float32(centre_value)) < np.float32(n_sigma * sigma)]
        if kept.size < 1000:
            return None
        centre_value, sigma = float(kept.mean(dtype=np.float64)), float(kept.std(dtype=np.float64))
    return centre_value


def _dilate_square(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` dilated by a (2 radius + 1)-pixel square, one axis after the other.

    ``scipy.ndimage.maximum_filter`` gives the same, 7-10 times slower on a
    2048 x 2048 block grid for these radii.
    """
    out = mask.copy()
    for s in range(1, radius + 1):
        out[:, s:] |= mask[:, :-s]
        out[:, :-s] |= mask[:, s:]
    rows = out.copy()
    for s in range(1, radius + 1):
        out[s:, :] |= rows[:-s, :]
        out[:-s, :] |= rows[s:, :]
    return out


def first_look(
    exposure: Exposure,
    det_config: DetectionConfig | None = None,
    background: BackgroundModel | None = None,
    *,
    psf_fwhm_pix: float | None = None,
    max_fraction: float = 0.25,
    min_sources: int = 50,
) -> Table:
    """Undeblended detections on the central part of the image, to size the PSF before it is modelled.

    The cosmic-ray finder and the detection filter need the PSF's width
    before the PSF is fitted; the bright compact sources of a central crop
    holding ``max_fraction`` of the pixels give it at a fraction of the cost
    of a full pass (the whole image is used when the crop has fewer than
    ``min_sources`` detections). The image is not modified, nor its mask.

    Returns the detections as :func:`refine_background` does (positions in
    the full image's pixels).
    """
    det_config = det_config or DetectionConfig()
    _validate(det_config)
    fwhm = _filter_fwhm(det_config, psf_fwhm_pix)
    ny, nx = exposure.shape
    scale = min(1.0, float(np.sqrt(max_fraction)))
    h, w = max(1, int(ny * scale)), max(1, int(nx * scale))
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    single = dataclasses.replace(det_config, clean=False)
    for crop in ((slice(y0, y0 + h), slice(x0, x0 + w)), (slice(0, ny), slice(0, nx))):
        sub = _CropView(exposure, crop)
        rms = None if background is None else uniform_rms_adu(background, det_config.uniform_noise_tolerance)
        if background is not None and rms is None:
            rms = np.ascontiguousarray(background.rms_image[crop])
        prep = _prepare(sub, single, rms, fwhm)
        figures = dict(threshold_sigma=det_config.threshold_sigma, min_pixels=det_config.min_pixels,
                       smoothing_fwhm_pix=fwhm, background_rms_adu=prep.median_rms)
        try:
            objects, _ = _extract(prep.data, prep.err, prep.masked, prep.kernel, single, 1.0, prep.noise_factor,
                                  figures, segmentation_map=False)
        finally:
            del prep
        if len(objects) >= min_sources or crop[0].stop - crop[0].start == ny and crop[1].stop - crop[1].start == nx:
            break
    objects = objects.copy()
    objects["x"] += crop[1].start
    objects["y"] += crop[0].start
    table = _first_look_table(objects)
    table.meta.update(smoothing_fwhm_pix=fwhm, threshold_sigma=det_config.threshold_sigma)
    return table


def psf_fwhm_from_moments(
    exposure: Exposure,
    catalog: Table,
    *,
    guess_fwhm_pix: float,
    n_stars: int = 200,
    iterations: int = 4,
) -> float | None:
    """PSF FWHM (pix) from adaptive Gaussian-weighted moments of bright compact detections.

    Isophotal moments of bright stars reach into the PSF's wings (a 3 pix
    Moffat reads as 4.4 pix), which would mismatch the detection filter.
    Moments weighted by a Gaussian window of width ``s`` and corrected for
    it, ``sigma^2 = 1 / (1 / m - 1 / s^2)``, are exact for a Gaussian and
    follow the core of a Moffat; iterating ``s = sigma`` converges in a few
    steps (LSST's adaptive moments, round). Stars gather at the small-size
    end of the distribution (galaxies and blends are larger): the 30th
    percentile is taken. Returns None when fewer than 5 stars qualify.
    """
    ny, nx = exposure.shape
    sigma0 = guess_fwhm_pix / FWHM_PER_SIGMA
    half = int(np.ceil(4 * max(sigma0, 1.0))) + 2
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)
    flux = np.asarray(catalog["flux"], float)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    ok = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half) & np.isfinite(flux) & (flux > 0)
    candidates = np.flatnonzero(ok)
    candidates = candidates[np.argsort(flux[candidates])[::-1][: 2 * n_stars]]
    dy, dx = (g.ravel() for g in np.mgrid[-half : half + 1, -half : half + 1])
    flat = (iy[candidates] * nx + ix[candidates])[:, None] + (dy * nx + dx)[None, :]
    bad = planes_set(exposure.mask.ravel()[flat], int(MaskPlane.SAT | MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.CR))
    clean = ~bad.any(axis=1)
    flat, candidates = flat[clean][:n_stars], candidates[clean][:n_stars]
    if candidates.size < 5:
        return None
    values = exposure.image.ravel()[flat].astype(float)
    ddx = (ix[candidates, None] + dx[None, :]) - x[candidates, None]
    ddy = (iy[candidates, None] + dy[None, :]) - y[candidates, None]
    r2 = ddx**2 + ddy**2
    sigma2 = np.full(candidates.size, sigma0**2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(iterations):
            s2 = np.clip(sigma2, 0.25, (half / 3.0) ** 2)
            w = np.exp(-0.5 * r2 / s2[:, None]) * values
            m = 0.5 * (w * r2).sum(axis=1) / w.sum(axis=1)
            sigma2 = 1.0 / (1.0 / m - 1.0 / s2)
    good = np.isfinite(sigma2) & (sigma2 > 0.1)
    if good.sum() < 5:
        return None
    fwhm = FWHM_PER_SIGMA * float(np.sqrt(np.percentile(sigma2[good], 30)))
    return fwhm if np.isfinite(fwhm) and fwhm > 0.5 else None


class _CropView:
    """The image and mask of part of an exposure, as :func:`_prepare` reads them (views, no copy)."""

    def __init__(self, exposure: Exposure, crop: tuple[slice, slice]) -> None:
        self.image = exposure.image[crop]
        self.mask = exposure.mask[crop]


def _first_look_table(objects: np.ndarray) -> Table:
    table = Table()
    for name, values, unit in (
        ("x", objects["x"], u.pix), ("y", objects["y"], u.pix), ("flux", objects["flux"], u.adu),
        ("npix", objects["npix"].astype(np.int64), u.pix**2), ("peak_value", objects["peak"], u.adu),
        ("shape_xx", objects["x2"], u.pix**2), ("shape_yy", objects["y2"], u.pix**2),
        ("shape_xy", objects["xy"], u.pix**2),
    ):
        table[name] = values
        table[name].unit = unit
    return table


def detect_and_refine_background(
    exposure: Exposure,
    det_config: DetectionConfig | None = None,
    bg_config: BackgroundConfig | None = None,
    *,
    psf_fwhm_pix: float | None = None,
    max_sources: int | None = None,
) -> tuple[DetectionResult, BackgroundModel]:
    """Estimate and subtract the background (see :func:`refine_background`), then detect.

    Parameters
    ----------
    exposure : Exposure
        Exposure with the sky still in its image; on return the image has the
        returned background subtracted and the mask has DETECTED and EDGE set.
    det_config, bg_config : optional
        Detection and background configs (defaults if None).
    psf_fwhm_pix, max_sources : optional
        Passed to :func:`detect_sources`.

    Returns
    -------
    (DetectionResult, BackgroundModel)
        The final detections and the background model that was subtracted.
    """
    det_config = det_config or DetectionConfig()
    _, background = refine_background(exposure, det_config, bg_config, psf_fwhm_pix=psf_fwhm_pix)
    result = detect_sources(exposure, det_config, background_rms_adu=background,
                            psf_fwhm_pix=psf_fwhm_pix, max_sources=max_sources)
    return result, background


def _filter_fwhm(config: DetectionConfig, psf_fwhm_pix: float | None) -> float:
    """FWHM (pix) of the detection filter: the configured one, else the PSF's, else the fallback."""
    return float(config.smoothing_fwhm_pix or psf_fwhm_pix or config.fallback_smoothing_fwhm_pix)


def _validate(config: DetectionConfig) -> None:
    try:
        config.validate()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"detection: {exc}", stage="detection") from exc


@dataclasses.dataclass
class _Prepared:
    """Inputs of sep.extract: image, filtered-noise map, mask, kernel and noise figures."""

    data: np.ndarray
    err: np.ndarray | float  # filtered noise: a map, or one number for uniform noise
    masked: np.ndarray
    kernel: np.ndarray
    median_rms: float
    noise_factor: float


def _prepare(
    exposure: Exposure,
    config: DetectionConfig,
    background_rms_adu: float | np.ndarray | BackgroundModel | None,
    fwhm: float,
) -> _Prepared:
    """Mask, per-pixel noise and kernel for a detection pass.

    A matched filter thresholds the filtered S/N. sep's "matched" mode also
    filters the noise map and is 3x slower; for noise that is smooth on the
    kernel scale (a background rms map) plain convolution compared with the
    filtered noise, ``err * sqrt(sum k^2)``, gives the same footprints. The
    returned ``err`` is that filtered noise.
    """
    kernel = gaussian_kernel(fwhm)
    data = np.ascontiguousarray(exposure.image, dtype=np.float32)
    masked = planes_set(exposure.mask, plane_bits(config.mask_planes))
    # Noise of the filtered image per unit of pixel noise (unit-sum kernel).
    factor = float(np.sqrt(np.sum(kernel.astype(float) ** 2)))
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), config.pixstack_pix))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), config.sub_object_limit))
    scalar = None
    if isinstance(background_rms_adu, BackgroundModel):
        scalar = uniform_rms_adu(background_rms_adu, config.uniform_noise_tolerance)
    elif background_rms_adu is not None and np.ndim(background_rms_adu) == 0:
        scalar = float(background_rms_adu)
    if scalar is not None:
        if not (np.isfinite(scalar) and scalar > 0) or masked.all():
            raise BadExposureError(
                "every pixel is masked or has no usable noise value: nothing to detect on",
                stage="detection",
                n_pixels=int(masked.size),
                background_rms_adu=scalar,
            )
        return _Prepared(data, scalar * factor, masked, kernel, scalar, factor)
    if isinstance(background_rms_adu, BackgroundModel):
        err = _noise_image(data, masked, background_rms_adu.rms_image, copy=False)
    else:
        err = _noise_image(data, masked, background_rms_adu)
    bad_noise = ~np.isfinite(err)
    bad_noise |= err <= 0
    masked |= bad_noise
    if masked.all():
        raise BadExposureError(
            "every pixel is masked or has no usable noise value: nothing to detect on",
            stage="detection",
            n_pixels=int(masked.size),
            n_bad_noise=int(np.count_nonzero(bad_noise)),
        )
    err[bad_noise] = 1.0
    del bad_noise
    median_rms = _median_unmasked(err, masked)
    err *= np.float32(factor)
    return _Prepared(data, err, masked, kernel, median_rms, factor)


def uniform_rms_adu(background: BackgroundModel, tolerance: float) -> float | None:
    """The median box rms when the rms varies by less than ``tolerance`` over the image, else None.

    The spread is the 1st to 99th percentile of the box values over their
    median; each box's rms carries ~1% of estimation noise, so a flat sky
    shows 1.5-3.5%: there one number is the better threshold, and it spares
    a full-size noise plane (64 MB at 4096 x 4096) and a quarter of sep's time.
    """
    if tolerance <= 0:
        return None
    mesh = np.asarray(background.mesh_rms, float)
    mesh = mesh[np.isfinite(mesh) & (mesh > 0)]
    if mesh.size == 0:
        return None
    median = float(np.median(mesh))
    lo, hi = np.percentile(mesh, [1, 99])
    return median if (hi - lo) <= tolerance * median else None


def _median_unmasked(values: np.ndarray, masked: np.ndarray, max_samples: int = 1 << 20) -> float:
    """Median of the unmasked ``values`` on a regular grid of at most ~``max_samples`` pixels.

    The noise map is smooth (a spline of box values, or a variance plane), so
    every ``s``-th pixel along each axis gives its median to far better than a
    percent without copying the whole plane.
    """
    step = max(1, int(np.sqrt(values.size / max_samples)))
    sub, sub_masked = values[::step, ::step], masked[::step, ::step]
    good = sub[~sub_masked]
    if good.size == 0:  # every sampled pixel masked: use them all
        good = values[~masked]
    return float(np.median(good))


def _set_edge(exposure: Exposure, config: DetectionConfig, kernel: np.ndarray) -> None:
    """Clear DETECTED; set EDGE on the border the filter does not fully cover."""
    edge = config.edge_width_pix if config.edge_width_pix is not None else kernel.shape[0] // 2
    mask = exposure.mask
    mask &= MASK_DTYPE(~int(MaskPlane.DETECTED))
    if edge > 0:
        bit = MASK_DTYPE(MaskPlane.EDGE)
        mask[:edge, :] |= bit
        mask[-edge:, :] |= bit
        mask[:, :edge] |= bit
        mask[:, -edge:] |= bit


def _noise_image(
    data: np.ndarray, masked: np.ndarray, rms: float | np.ndarray | None, *, copy: bool = True
) -> np.ndarray:
    """Per-pixel noise (ADU) as a float32 C array of the image's shape.

    With ``copy=False`` a native float32 C-contiguous ``rms`` array is used as
    it is (the caller gives up its content).
    """
    if rms is None:
        good = data[~masked]
        if good.size == 0:
            return np.zeros(data.shape, np.float32)
        rms = mad_sigma(good)
    arr = np.asarray(rms, dtype=np.float32)
    if arr.ndim == 0:
        return np.full(data.shape, arr, np.float32)
    if arr.shape != data.shape:
        raise BadExposureError(
            f"background_rms_adu has shape {arr.shape}, the image {data.shape}",
            stage="detection",
            rms_shape=arr.shape,
            image_shape=data.shape,
        )
    if not copy and arr.dtype == np.float32 and arr.dtype.isnative and arr.flags.c_contiguous and arr.flags.writeable:
        return arr
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=True))


def _extract(
    data: np.ndarray,
    err: np.ndarray,
    masked: np.ndarray,
    kernel: np.ndarray,
    config: DetectionConfig,
    deblend_cont: float,
    noise_factor: float,
    figures: dict,
    *,
    segmentation_map: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One sep.extract pass; sep's errors become typed CalibrationErrors."""
    try:
        result = sep.extract(
            data,
            config.threshold_sigma,
            err=err,
            mask=masked,
            minarea=config.min_pixels,
            filter_kernel=kernel,
            filter_type="conv",
            # A contrast of 1 never splits: one sub-threshold gives the same objects, faster.
            deblend_nthresh=config.deblend_nthresh if deblend_cont < 1.0 else 1,
            deblend_cont=deblend_cont,
            clean=config.clean,
            clean_param=config.clean_param,
            segmentation_map=segmentation_map,
        )
        objects, segmap = result if segmentation_map else (result, None)
    except Exception as exc:  # sep raises plain Exception for its C errors
        text = str(exc)
        if "pixel buffer full" in text:
            raise CrowdedFieldError(
                f"too many pixels above threshold for sep's buffer ({config.pixstack_pix}): "
                "check the background subtraction, raise threshold_sigma or pixstack_pix",
                stage="detection",
                pixstack_pix=config.pixstack_pix,
                **figures,
            ) from exc
        if "deblending overflow" in text:
            raise CrowdedFieldError(
                f"deblending a footprint needed more than {config.sub_object_limit} "
                "sub-objects: raise sub_object_limit or threshold_sigma, or lower deblend_nthresh",
                stage="detection",
                sub_object_limit=config.sub_object_limit,
                **figures,
            ) from exc
        raise CalibrationError(f"sep.extract failed: {text}", stage="detection", **figures) from exc
    # sep propagated the filtered noise (err * factor) into the centroid
    # variances; scale them back to the per-pixel noise.
    for name in ("errx2", "erry2", "errxy"):
        objects[name] /= noise_factor**2
    return objects, segmap


CLEAN_ZONE = 10.0  # SExtractor's zone, in units of a1 + a2, where one object may eat another


def _clean(objects: np.ndarray, seg: tuple[np.ndarray, np.ndarray], clean_param: float, min_pixels: int
           ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """SExtractor's cleaning, vectorised over close pairs instead of sep's loop over all pairs.

    A detection is "eaten" when the Moffat-like profile extrapolated from a
    brighter neighbour exceeds its threshold there (SExtractor's CLEAN with
    ``CLEAN_PARAM`` = ``clean_param``, the ellipse-area correction of a
    weighted detection, 1). sep compares every object with every other one,
    O(n^2): 13 s for 50,000 sources. Only pairs closer than ``CLEAN_ZONE`` times
    the sum of their semi-major axes can interact, so a k-d tree finds them. As
    in SExtractor (and unlike sep, which drops them), an eaten detection's
    pixels join the footprint of the neighbour that ate it.

    Returns the surviving objects and the segmentation ``(pix, label)``
    relabelled 1..n_surviving.
    """
    n = len(objects)
    eater = _clean_eaters(objects, clean_param, min_pixels) if n > 1 else np.full(n, -1)
    alive = eater < 0
    new_label = np.zeros(n + 1, np.int32)
    new_label[1:][alive] = np.arange(1, int(alive.sum()) + 1, dtype=np.int32)
    new_label[1:][~alive] = new_label[1:][eater[~alive]]
    pix, lab = seg
    return objects[alive], (pix, new_label[lab])


def _clean_eaters(obj: np.ndarray, beta: float, min_pixels: int) -> np.ndarray:
    """Index of the surviving object that eats each one; -1 for survivors."""
    n = len(obj)
    x, y = obj["x"].astype(float), obj["y"].astype(float)
    a = np.maximum(obj["a"].astype(float), 1e-3)
    b = np.maximum(obj["b"].astype(float), 1e-3)
    flux = obj["cflux"].astype(float)
    thresh = obj["thresh"].astype(float)
    unit_area = np.pi * a * b
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amp = flux / (2.0 * unit_area * _ab_correction(obj, a, b))
        alpha = (np.power(np.maximum(amp / thresh, 0.0), 1.0 / beta) - 1.0) * unit_area / np.maximum(obj["npix"], 1)
    i, j = _clean_pairs(np.column_stack([x, y]), a)
    if i.size == 0:
        return np.full(n, -1)
    # The brighter one of a pair may eat the other (sep: ties go to the later object).
    e = np.where(flux[j] < flux[i], i, j)
    v = np.where(e == i, j, i)
    dx, dy = x[e] - x[v], y[e] - y[v]
    val = 1.0 + alpha[e] * (obj["cxx"][e] * dx * dx + obj["cyy"][e] * dy * dy + obj["cxy"][e] * dx * dy)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        profile = np.where(val < 1e10, amp[e] * np.power(np.maximum(val, 1.0), -beta), 0.0)
    eats = (val > 1.0) & (profile.astype(np.float32) > _margin_above_threshold(obj, min_pixels)[v])
    e, v = e[eats], v[eats]
    # Only survivors eat (sep's loop skips eaten objects): iterate to a fixed point.
    alive = np.ones(n, bool)
    for _ in range(20):
        eaten = np.zeros(n, bool)
        eaten[v[alive[e]]] = True
        if np.array_equal(~eaten, alive):
            break
        alive = ~eaten
    eater = np.full(n, -1)
    ok = alive[e] & ~alive[v]
    # The brightest surviving neighbour that eats it takes its pixels.
    order = np.argsort(flux[e[ok]], kind="stable")
    eater[v[ok][order]] = e[ok][order]
    eater[alive] = -1  # an eaten object left without a surviving eater keeps -1: it survives
    return eater


def _margin_above_threshold(obj: np.ndarray, min_pixels: int) -> np.ndarray:
    """SExtractor's ``mthresh``: how far the ``min_pixels``-th brightest filtered pixel lies above the threshold.

    sep does not return pixel values; for a Gaussian profile the area above a
    level falls linearly with its logarithm, from 0 at the peak to ``npix`` at
    the threshold, which puts that pixel at ``peak (thresh / peak)^(min_pixels / npix)``.
    """
    peak = obj["cpeak"].astype(float)
    thresh = obj["thresh"].astype(float)
    npix = np.maximum(obj["npix"].astype(float), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = peak * np.power(np.maximum(thresh / peak, 0.0), np.minimum(min_pixels / npix, 1.0))
    margin = np.where((peak > thresh) & (thresh > 0), level - thresh, 0.0)
    return np.where(np.isfinite(margin), np.maximum(margin, 0.0), 0.0)


def _ab_correction(obj: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SExtractor's ``abcor``: true ``sigma_a sigma_b`` over the isophotal ``a b`` (at most 1).

    Isophotal moments cut at the threshold underestimate a profile's width.
    SExtractor compares the areas above two levels; sep does not return them,
    so this uses the same Gaussian relation once, between the filtered peak
    and the threshold: area above T = 2 pi sigma_a sigma_b ln(peak / T).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(obj["cpeak"].astype(float) / obj["thresh"].astype(float))
        sigma_ab = obj["npix"] / (2.0 * np.pi * log_ratio)
        cor = sigma_ab / (a * b)
    return np.where(np.isfinite(cor) & (log_ratio > 0) & (cor > 0), np.minimum(cor, 1.0), 1.0)


def _clean_pairs(xy: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) closer than ``CLEAN_ZONE * (a_i + a_j)``.

    Most objects are small: one fixed-radius pair search covers them; the few
    large ones (above the 99th percentile of ``a``) search their own radius.
    """
    from scipy.spatial import cKDTree

    n = len(a)
    tree = cKDTree(xy)
    a_cut = float(np.percentile(a, 99)) if n > 100 else float(a.max())
    r_small = CLEAN_ZONE * 2 * a_cut
    pairs = [tree.query_pairs(r_small, output_type="ndarray")]
    # Pairs farther apart than r_small involve a large object; they are found
    # once each (no duplicates to remove): large-small by a radius search about
    # the large one, large-large by brute force among the few large ones.
    big = np.flatnonzero(a > a_cut)
    if big.size:
        is_big = np.zeros(n, bool)
        is_big[big] = True
        hits = tree.query_ball_point(xy[big], CLEAN_ZONE * (a[big] + a_cut))
        lens = np.fromiter((len(h) for h in hits), int, big.size)
        if lens.sum():
            far = np.column_stack([np.repeat(big, lens), np.concatenate([np.asarray(h, int) for h in hits])])
            far = far[~is_big[far[:, 1]]]
            pairs.append(far[((xy[far[:, 0]] - xy[far[:, 1]]) ** 2).sum(axis=1) > r_small**2])
        bi, bj = np.triu_indices(big.size, 1)
        both = np.column_stack([big[bi], big[bj]])
        pairs.append(both[((xy[both[:, 0]] - xy[both[:, 1]]) ** 2).sum(axis=1) > r_small**2])
    p = np.concatenate([q.reshape(-1, 2) for q in pairs]).astype(np.int64)
    i, j = p.min(axis=1), p.max(axis=1)
    d2 = ((xy[i] - xy[j]) ** 2).sum(axis=1)
    near = d2 <= (CLEAN_ZONE * (a[i] + a[j])) ** 2
    return i[near], j[near]


def _parents_of(children: np.ndarray, seg: tuple[np.ndarray, np.ndarray], width: int
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Top-level footprints rebuilt from the deblended ones, without a second sep pass.

    sep's deblender hands every pixel of a footprint to one of its children,
    so a parent is a group of children whose pixels touch (8-connected, as
    sep's scan links pixels). Its isophotal quantities are sums over the
    children: flux, area, and first and second moments about the combined
    barycentre (exact for sums of pixels). Returns the parents as sep-style
    records and the segmentation ``(pix, parent label 1..n_parents)``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pix, lab = seg
    n = len(children)
    a, b = touching_pairs(pix, width, labels=lab)
    s = lab[a].astype(np.int64) - 1
    d = lab[b].astype(np.int64) - 1
    graph = coo_matrix((np.ones(s.size, np.int8), (s, d)), shape=(n, n))
    n_groups, group = connected_components(graph, directed=False)
    # Number the parents in the order of their first child, as sep would list them.
    first = np.full(n_groups, n)
    np.minimum.at(first, group, np.arange(n))
    rank = np.empty(n_groups, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(n_groups)
    group = rank[group]
    return _combine(children, group, n_groups), (pix, (group[lab - 1] + 1).astype(np.int32))


def _combine(obj: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """sep records of the unions of the objects in each group (isophotal sums)."""
    out = np.zeros(n_groups, obj.dtype)

    def total(values):
        return np.bincount(group, weights=np.asarray(values, float), minlength=n_groups)

    f = obj["flux"].astype(float)
    ftot = total(f)
    w = np.where(ftot[group] != 0, f / np.where(ftot[group] != 0, ftot[group], 1.0), 1.0)
    x = total(w * obj["x"])
    y = total(w * obj["y"])
    dx, dy = obj["x"] - x[group], obj["y"] - y[group]
    x2 = total(w * (obj["x2"] + dx * dx))
    y2 = total(w * (obj["y2"] + dy * dy))
    xy = total(w * (obj["xy"] + dx * dy))
    flag = np.zeros(n_groups, np.int64)
    np.bitwise_or.at(flag, group, obj["flag"].astype(np.int64))
    singular = x2 * y2 - xy * xy < 0.00694
    x2 = np.where(singular, x2 + 0.0833333, x2)
    y2 = np.where(singular, y2 + 0.0833333, y2)
    det = x2 * y2 - xy * xy
    diff = x2 - y2
    theta = np.where(np.abs(diff) > 0, np.arctan2(2 * xy, diff) / 2, np.pi / 4)
    temp = np.sqrt(0.25 * diff * diff + xy * xy)
    out["x"], out["y"], out["x2"], out["y2"], out["xy"] = x, y, x2, y2, xy
    out["a"] = np.sqrt(np.maximum((x2 + y2) / 2 + temp, 0))
    out["b"] = np.sqrt(np.maximum((x2 + y2) / 2 - temp, 0))
    out["theta"] = theta
    out["cxx"], out["cyy"], out["cxy"] = y2 / det, x2 / det, -2 * xy / det
    out["flux"], out["cflux"] = ftot, total(obj["cflux"])
    out["npix"], out["tnpix"] = total(obj["npix"]), total(obj["tnpix"])
    for name in ("errx2", "erry2", "errxy"):
        out[name] = total(w * w * obj[name])
    out["flag"] = (flag & ~int(sep.OBJ_MERGED)) | np.where(singular, int(sep.OBJ_SINGU), 0)
    for name, reduce in (("xmin", np.minimum), ("ymin", np.minimum), ("xmax", np.maximum), ("ymax", np.maximum)):
        acc = np.full(n_groups, obj[name].max() if reduce is np.minimum else obj[name].min(), np.int64)
        reduce.at(acc, group, obj[name].astype(np.int64))
        out[name] = acc
    thresh = np.full(n_groups, np.inf)
    np.minimum.at(thresh, group, obj["thresh"].astype(float))
    out["thresh"] = thresh
    for value, xs, ys in (("peak", "xpeak", "ypeak"), ("cpeak", "xcpeak", "ycpeak")):
        order = np.lexsort((obj[value], group))  # the brightest child of each group last
        last = order[np.r_[group[order][1:] != group[order][:-1], True]]
        out[value][group[last]] = obj[value][last]
        out[xs][group[last]] = obj[xs][last]
        out[ys][group[last]] = obj[ys][last]
    return out


def _families(
    parents: np.ndarray, seg_p: np.ndarray, children: np.ndarray, seg_c: np.ndarray
) -> tuple[Table, np.ndarray, np.ndarray]:
    """Catalogue and dense segmentation maps of the parent/child families (see :func:`_families_sparse`)."""
    catalog, footprints, deblended = _families_sparse(
        parents, _sparse(seg_p), children, _sparse(seg_c), width=seg_p.shape[1]
    )
    return catalog, _dense(footprints, seg_p.shape), _dense(deblended, seg_p.shape)


def _lookup(pix: np.ndarray, values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Values of a sparse map ``(pix sorted, values)`` at flat indices ``where`` (0 where absent)."""
    if pix.size == 0:
        return np.zeros(where.shape, values.dtype)
    pos = np.minimum(np.searchsorted(pix, where), pix.size - 1)
    return np.where(pix[pos] == where, values[pos], np.zeros((), values.dtype))


def _families_sparse(
    parents: np.ndarray,
    parent_map: tuple[np.ndarray, np.ndarray],
    children: np.ndarray,
    child_map: tuple[np.ndarray, np.ndarray],
    *,
    width: int,
) -> tuple[Table, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Catalogue and sparse maps of the parent/child families (vectorised).

    ``parent_map`` and ``child_map`` are the sep segmentation maps of the two
    passes as ``(sorted flat pixel indices, 1-based object number)`` of an
    image ``width`` pixels wide. Returns
    the catalogue, the top-level footprint map and the primary (deblended)
    map, both as ``(sorted flat pixel indices, row id)``.
    """
    p_pix, p_lab = parent_map
    c_pix, c_lab = child_map
    n_p, n_c = len(parents), len(children)
    # Parent index (0-based) of each child from its peak pixel; -1 = orphan
    # (a child whose peak is outside every parent footprint: a cleaning quirk).
    peak_flat = children["ypeak"].astype(np.int64) * width + children["xpeak"].astype(np.int64)
    owner = _lookup(p_pix, p_lab, peak_flat).astype(np.int64) - 1
    has_owner = owner >= 0
    n_kids = np.bincount(owner[has_owner], minlength=n_p)

    # Rows: every parent that does not have exactly one child (k >= 2: blend
    # parent; k == 0: its children were cleaned away, keep the footprint), then
    # every child (the sole child of a parent is the isolated source).
    p_rows = np.flatnonzero(n_kids != 1)
    c_rows = np.arange(n_c)
    family = np.concatenate([p_rows, np.where(has_owner, owner, n_p + c_rows)])
    source = np.concatenate([p_rows, n_p + c_rows])  # index into parents ++ children
    rank = np.concatenate([np.zeros(p_rows.size, int), np.ones(n_c, int)])
    order = np.lexsort((source, rank, family))
    family, source = family[order], source[order]
    from_parent = source < n_p
    n_rows = source.size
    ids = np.arange(1, n_rows + 1, dtype=np.int64)

    fams, first, inverse = np.unique(family, return_index=True, return_inverse=True)
    top_id = ids[first][inverse]
    fam_kids = np.where(family < n_p, n_kids[np.minimum(family, n_p - 1)], 1)
    blend_parent = from_parent & (fam_kids >= 2)
    child = ~from_parent & (fam_kids >= 2)

    objects = np.concatenate([parents, children])[source]
    catalog = _make_table(
        objects,
        ids=ids,
        parent=np.where(child, top_id, 0),
        n_child=np.where(blend_parent, fam_kids, 0),
        primary=~blend_parent,
        footprint_id=top_id,
    )

    # Top-level map: parent footprint -> id of its family's first row;
    # orphan children fill their own pixels outside every parent footprint.
    lut_p = np.zeros(n_p + 1, np.int32)
    lut_p[fams[fams < n_p] + 1] = ids[first][fams < n_p]
    lut_c = np.zeros(n_c + 1, np.int32)
    lut_c[source[~from_parent] - n_p + 1] = ids[~from_parent]
    lut_orphan = np.where(np.concatenate([[False], ~has_owner]), lut_c, 0)
    c_in_p = _lookup(p_pix, np.ones(p_pix.size, bool), c_pix)
    seg_values = lut_p[p_lab]
    orphan_pix = ~c_in_p & (lut_orphan[c_lab] != 0)
    footprints = _merge_sparse((p_pix, seg_values), (c_pix[orphan_pix], lut_orphan[c_lab[orphan_pix]]))
    # Primary map: children and isolated sources; footprints kept without a
    # child (k == 0) come from the parent pass.
    lut_p0 = np.zeros(n_p + 1, np.int32)
    keep = from_parent & ~blend_parent
    lut_p0[source[keep] + 1] = ids[keep]
    p_in_c = _lookup(c_pix, np.ones(c_pix.size, bool), p_pix)
    p_values = lut_p0[p_lab]
    extra = ~p_in_c & (p_values != 0)
    c_values = lut_c[c_lab]
    has_c = c_values != 0
    deblended = _merge_sparse((c_pix[has_c], c_values[has_c]), (p_pix[extra], p_values[extra]))
    return catalog, footprints, deblended


def _merge_sparse(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sparse maps with disjoint pixels, indices sorted."""
    if b[0].size == 0:
        return a[0], a[1].astype(np.int32)
    pix = np.concatenate([a[0], b[0]])
    values = np.concatenate([a[1], b[1]]).astype(np.int32)
    order = np.argsort(pix, kind="stable")
    return pix[order], values[order]


def _make_table(
    obj: np.ndarray,
    *,
    ids: np.ndarray,
    parent: np.ndarray,
    n_child: np.ndarray,
    primary: np.ndarray,
    footprint_id: np.ndarray,
) -> Table:
    flag = obj["flag"].astype(np.int16)
    pix2 = u.pix**2
    columns = [
        ("id", ids, None, "source id, 1..N"),
        ("parent", parent.astype(np.int64), None, "id of the deblend parent; 0 for top level"),
        ("deblend_nChild", n_child.astype(np.int32), None, "number of deblended children"),
        ("detect_isPrimary", primary, None, "primary: deblended child or isolated source"),
        ("footprint_id", footprint_id.astype(np.int64), None,
         "id of the top-level footprint (value in the segmentation map)"),
        ("x", obj["x"], u.pix, "isophotal barycentre x (local 0-based)"),
        ("y", obj["y"], u.pix, "isophotal barycentre y (local 0-based)"),
        ("x_err", np.sqrt(np.maximum(obj["errx2"], 0)), u.pix, "1-sigma error of x"),
        ("y_err", np.sqrt(np.maximum(obj["erry2"], 0)), u.pix, "1-sigma error of y"),
        ("x_peak", obj["xpeak"].astype(np.int32), u.pix, "x of the brightest pixel"),
        ("y_peak", obj["ypeak"].astype(np.int32), u.pix, "y of the brightest pixel"),
        ("a", obj["a"], u.pix, "isophotal ellipse semi-major axis (rms along it)"),
        ("b", obj["b"], u.pix, "isophotal ellipse semi-minor axis"),
        ("theta", obj["theta"], u.rad, "ellipse angle from +x towards +y"),
        ("shape_xx", obj["x2"], pix2, "isophotal second moment <x^2>"),
        ("shape_yy", obj["y2"], pix2, "isophotal second moment <y^2>"),
        ("shape_xy", obj["xy"], pix2, "isophotal second moment <xy>"),
        ("npix", obj["npix"].astype(np.int64), pix2, "footprint area (number of pixels)"),
        ("peak_value", obj["peak"], u.adu, "brightest pixel value, background subtracted"),
        ("flux", obj["flux"], u.adu, "isophotal flux: sum of footprint pixels"),
        ("sep_flag", flag, None, "sep extraction flag bits (OBJ_MERGED|TRUNC|DOVERFLOW|SINGU)"),
        ("flag_deblend_merged", (flag & sep.OBJ_MERGED) != 0, None,
         "sep OBJ_MERGED: the object is part of a deblended blend"),
        ("flag_truncated", (flag & sep.OBJ_TRUNC) != 0, None,
         "sep OBJ_TRUNC: footprint touches the image border"),
        ("flag_deblend_truncated", (flag & sep.OBJ_DOVERFLOW) != 0, None,
         "sep OBJ_DOVERFLOW: deblending stopped early (buffer overflow)"),
        ("flag_singular_moments", (flag & sep.OBJ_SINGU) != 0, None,
         "sep OBJ_SINGU: singular second moments (a, b, theta unreliable)"),
    ]
    table = Table()
    for name, values, unit, description in columns:
        table[name] = values
        table[name].unit = unit
        table[name].description = description
    return table
