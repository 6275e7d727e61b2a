"""Sky background: estimate a smooth model with sep and subtract it.

The model is SExtractor's, through :class:`sep.Background`: the image is cut
into boxes of ``box_size_pix``; each box gives a clipped mode (level) and a
clipped standard deviation (rms); the box values are median-filtered over
``filter_size_boxes`` boxes and interpolated back to every pixel with a
bicubic spline. Pixels in ``mask_planes`` are ignored (LSST masks ``DETECTED``
so that bright sources do not bias the sky; see
:func:`calibration.detection.detect_and_refine_background`).

:class:`BackgroundModel` is the engine's ``calexpBackground``: it keeps the
full-resolution level and rms images that were subtracted, so a person can add
the background back exactly, plus the box-wise mesh for quick display, the
global figures and the config it was made with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import sep
from astropy.io import fits

from .configbase import config_from_dict, doc_field
from .errors import BadExposureError, ConfigError
from .exposure import Exposure, MaskPlane

__all__ = [
    "BackgroundConfig",
    "BackgroundModel",
    "estimate_background",
    "subtract_background",
    "plane_bits",
]

#: FITS header keyword of each config field (cards of the PRIMARY HDU).
_CONFIG_CARDS = {
    "box_size_pix": "BKGBOX",
    "filter_size_boxes": "BKGFILT",
    "filter_threshold": "BKGFTHR",
    "mask_planes": "BKGMASK",
}


def plane_bits(planes: tuple[str, ...] | list[str]) -> int:
    """OR of the :class:`~calibration.exposure.MaskPlane` bits named in ``planes``.

    Raises
    ------
    ConfigError
        When a name is not a mask plane.
    """
    unknown = [p for p in planes if p not in MaskPlane.__members__]
    if unknown:
        raise ConfigError(
            f"unknown mask plane(s) {', '.join(unknown)}; known: {', '.join(MaskPlane.__members__)}",
            stage="config",
            unknown=unknown,
        )
    bits = 0
    for p in planes:
        bits |= int(MaskPlane[p])
    return bits


@dataclasses.dataclass(frozen=True)
class BackgroundConfig:
    """Configuration of :func:`estimate_background`."""

    box_size_pix: int = doc_field(
        128, "Side of the square boxes (pix) in which the sky level and rms are estimated."
    )
    filter_size_boxes: int = doc_field(
        3, "Side (in boxes) of the median filter applied to the box values; 1 = no filter."
    )
    filter_threshold: float = doc_field(
        0.0,
        "Filter a box only if it differs from the median of its neighbours by more than "
        "this (ADU); 0 filters every box (SExtractor's BACK_FILTERTHRESH).",
    )
    mask_planes: tuple[str, ...] = doc_field(
        ("BAD", "SAT", "NO_DATA", "DETECTED", "CR"),
        "Mask planes whose pixels are ignored when estimating the background.",
    )

    def validate(self) -> None:
        """Check ranges and plane names; raise ValueError on a bad value."""
        if self.box_size_pix < 2:
            raise ValueError(f"box_size_pix must be >= 2, got {self.box_size_pix}")
        if self.filter_size_boxes < 1:
            raise ValueError(f"filter_size_boxes must be >= 1, got {self.filter_size_boxes}")
        if not np.isfinite(self.filter_threshold) or self.filter_threshold < 0:
            raise ValueError(f"filter_threshold must be >= 0, got {self.filter_threshold}")
        plane_bits(self.mask_planes)


@dataclasses.dataclass
class BackgroundModel:
    """A fitted sky background (the engine's ``calexpBackground``).

    Attributes
    ----------
    level_image : ndarray of float32, shape (ny, nx)
        Sky level of every pixel (ADU), indexed ``[y, x]``: exactly what
        :func:`subtract_background` subtracts.
    rms_image : ndarray of float32, shape (ny, nx)
        Sky noise of every pixel (ADU), the spline-interpolated box rms.
    mesh_level : ndarray of float32, shape (n_box_y, n_box_x)
        Model level at the central pixel of each box (ADU): box ``(j, i)``
        covers rows ``j*box .. min((j+1)*box, ny)-1`` and columns likewise
        (the last box of a row or column may be partial). For display.
    mesh_rms : ndarray of float32, shape (n_box_y, n_box_x)
        Model rms at the same pixels (ADU).
    global_level_adu : float
        Median of the box levels (ADU).
    global_rms_adu : float
        Median of the box rms (ADU).
    config : BackgroundConfig
        The configuration the model was estimated with.
    """

    level_image: np.ndarray
    rms_image: np.ndarray
    mesh_level: np.ndarray
    mesh_rms: np.ndarray
    global_level_adu: float
    global_rms_adu: float
    config: BackgroundConfig

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the image the model was fitted to."""
        return self.level_image.shape  # type: ignore[return-value]

    def evaluate(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Full-resolution sky level (ADU), a copy of :attr:`level_image`.

        Parameters
        ----------
        shape : tuple of int, optional
            ``(ny, nx)`` expected by the caller; checked against the model.

        Raises
        ------
        ValueError
            When ``shape`` differs from the shape the model was fitted on.
        """
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"background model is {self.shape}, asked for {tuple(shape)}")
        return self.level_image.copy()

    def to_hdulist(self) -> fits.HDUList:
        """FITS form (``calexpBackground.fits``).

        HDUs: PRIMARY (no data; config and global figures as cards),
        ``MESH_LEVEL`` and ``MESH_RMS`` (box values, ADU), ``LEVEL`` and
        ``RMS`` (full-resolution model, ADU, float32).
        """
        primary = fits.PrimaryHDU()
        hdr = primary.header
        hdr["BKGBOX"] = (self.config.box_size_pix, "[pix] background box side")
        hdr["BKGFILT"] = (self.config.filter_size_boxes, "[boxes] median filter size")
        hdr["BKGFTHR"] = (self.config.filter_threshold, "[adu] median filter threshold")
        hdr["BKGMASK"] = (",".join(self.config.mask_planes), "mask planes ignored")
        hdr["BKGLEVEL"] = (self.global_level_adu, "[adu] global (median box) sky level")
        hdr["BKGRMS"] = (self.global_rms_adu, "[adu] global (median box) sky rms")
        hdr["BKGNX"] = (self.shape[1], "[pix] width of the fitted image")
        hdr["BKGNY"] = (self.shape[0], "[pix] height of the fitted image")
        hdr["COMMENT"] = "Sky background (sep/SExtractor). LEVEL is what was subtracted."
        hdus = [primary]
        for name, data, what in (
            ("MESH_LEVEL", self.mesh_level, "model level at each box centre"),
            ("MESH_RMS", self.mesh_rms, "model rms at each box centre"),
            ("LEVEL", self.level_image, "full-resolution sky level"),
            ("RMS", self.rms_image, "full-resolution sky rms"),
        ):
            hdu = fits.ImageHDU(np.asarray(data, np.float32), name=name)
            hdu.header["BUNIT"] = "adu"
            hdu.header["BKGBOX"] = (self.config.box_size_pix, "[pix] background box side")
            hdu.header["COMMENT"] = what
            hdus.append(hdu)
        return fits.HDUList(hdus)

    @classmethod
    def from_hdulist(cls, hdulist: fits.HDUList) -> "BackgroundModel":
        """Rebuild a model written by :meth:`to_hdulist`.

        Raises
        ------
        BadExposureError
            When an HDU or card is missing (not a background file).
        """
        try:
            hdr = hdulist[0].header
            raw: dict[str, Any] = {field: hdr[card] for field, card in _CONFIG_CARDS.items()}
            arrays = {
                name: _native(hdulist[name].data)
                for name in ("MESH_LEVEL", "MESH_RMS", "LEVEL", "RMS")
            }
            level, rms = float(hdr["BKGLEVEL"]), float(hdr["BKGRMS"])
        except KeyError as exc:
            raise BadExposureError(
                f"not a background file written by CalibWeb: missing {exc}",
                stage="background",
            ) from exc
        planes = str(raw["mask_planes"])
        raw["mask_planes"] = [p for p in planes.split(",") if p]
        config = config_from_dict(BackgroundConfig, raw, path="background")
        return cls(
            level_image=arrays["LEVEL"],
            rms_image=arrays["RMS"],
            mesh_level=arrays["MESH_LEVEL"],
            mesh_rms=arrays["MESH_RMS"],
            global_level_adu=level,
            global_rms_adu=rms,
            config=config,
        )


def estimate_background(
    exposure: Exposure, config: BackgroundConfig | None = None
) -> BackgroundModel:
    """Estimate the sky background of ``exposure.image`` with sep.

    Parameters
    ----------
    exposure : Exposure
        The exposure; its image (ADU, ``[y, x]``) is not modified.
    config : BackgroundConfig, optional
        Box size, filter and ignored mask planes (defaults if None).

    Returns
    -------
    BackgroundModel
        Level and rms images, box mesh, global figures and config.

    Raises
    ------
    ConfigError
        When the config is invalid.
    BadExposureError
        When the image is smaller than one box, every pixel is masked, or the
        unmasked pixels have no noise (a constant image).
    """
    config = config or BackgroundConfig()
    _validate(config)
    ny, nx = exposure.shape
    box = config.box_size_pix
    if ny < box or nx < box:
        raise BadExposureError(
            f"image of {nx} x {ny} pix is smaller than one background box of {box} pix: "
            f"use a smaller box_size_pix (at most {min(nx, ny)})",
            stage="background",
            image_shape=(ny, nx),
            box_size_pix=box,
        )
    masked = (exposure.mask & plane_bits(config.mask_planes)) != 0
    n_good = int(masked.size - np.count_nonzero(masked))
    if n_good == 0:
        raise BadExposureError(
            f"every pixel is masked in one of {', '.join(config.mask_planes)}: "
            "no sky left to estimate the background",
            stage="background",
            n_pixels=int(masked.size),
            mask_planes=list(config.mask_planes),
        )
    data = _native(exposure.image)
    good_values = data[~masked]
    if good_values.min() == good_values.max():
        raise BadExposureError(
            f"constant image, no noise: cannot set a detection threshold "
            f"(every unmasked pixel is {float(good_values[0])} ADU)",
            stage="background",
            level_adu=float(good_values[0]),
            n_good_pixels=n_good,
        )
    try:
        bkg = sep.Background(
            data,
            mask=np.ascontiguousarray(masked),
            bw=box,
            bh=box,
            fw=config.filter_size_boxes,
            fh=config.filter_size_boxes,
            fthresh=config.filter_threshold,
        )
    except Exception as exc:  # sep raises plain Exception for its C errors
        raise BadExposureError(
            f"sep could not estimate the background: {exc}",
            stage="background",
            image_shape=(ny, nx),
            box_size_pix=box,
        ) from exc
    level = np.asarray(bkg.back(dtype=np.float32))
    rms = np.asarray(bkg.rms(dtype=np.float32))
    if not np.any(rms > 0):
        raise BadExposureError(
            "constant image, no noise: cannot set a detection threshold "
            "(the sky rms is zero in every box)",
            stage="background",
            level_adu=float(bkg.globalback),
            n_good_pixels=n_good,
        )
    rows = _box_centres(ny, box)
    cols = _box_centres(nx, box)
    mesh_level = level[np.ix_(rows, cols)].copy()
    mesh_rms = rms[np.ix_(rows, cols)].copy()
    return BackgroundModel(
        level_image=level,
        rms_image=rms,
        mesh_level=mesh_level,
        mesh_rms=mesh_rms,
        global_level_adu=float(bkg.globalback),
        global_rms_adu=float(bkg.globalrms),
        config=config,
    )


def subtract_background(exposure: Exposure, model: BackgroundModel) -> None:
    """Subtract ``model`` from ``exposure.image`` in place (variance unchanged).

    Raises
    ------
    BadExposureError
        When the model was fitted to an image of another shape.
    """
    if model.shape != exposure.shape:
        raise BadExposureError(
            f"background model is {model.shape} but the image is {exposure.shape}",
            stage="background",
            model_shape=model.shape,
            image_shape=exposure.shape,
        )
    exposure.image -= model.level_image


def _validate(config: BackgroundConfig) -> None:
    try:
        config.validate()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"background: {exc}", stage="background") from exc


def _box_centres(n: int, box: int) -> np.ndarray:
    """Index of the central pixel of each (possibly partial) box along an axis."""
    starts = np.arange(0, n, box)
    stops = np.minimum(starts + box, n)
    return (starts + stops - 1) // 2


def _native(array: np.ndarray) -> np.ndarray:
    """Native-endian, C-contiguous float32 view or copy (what sep accepts)."""
    arr = np.asarray(array)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False), dtype=np.float32)
