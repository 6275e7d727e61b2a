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
from .exposure import Exposure, MaskPlane, planes_set

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


class BackgroundModel:
    """A fitted sky background (the engine's ``calexpBackground``).

    The model is kept as sep's box mesh and spline: the full-resolution planes
    are evaluated when asked for (about 40 ms each on 4096 x 4096), so that a
    calibration does not hold two extra image-sized planes. A model read back
    from a file holds its planes as arrays.

    Attributes
    ----------
    level_image : ndarray of float32, shape (ny, nx)
        Sky level of every pixel (ADU), indexed ``[y, x]``: exactly what
        :func:`subtract_background` subtracts. A new array on every access of
        a fitted model.
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

    def __init__(
        self,
        *,
        level_image: np.ndarray | None = None,
        rms_image: np.ndarray | None = None,
        mesh_level: np.ndarray | None = None,
        mesh_rms: np.ndarray | None = None,
        global_level_adu: float,
        global_rms_adu: float,
        config: BackgroundConfig,
        sep_background: Any = None,
        shape: tuple[int, int] | None = None,
    ) -> None:
        if sep_background is None and (level_image is None or rms_image is None):
            raise ValueError("a BackgroundModel needs level_image and rms_image, or a sep background")
        self._level = level_image
        self._rms = rms_image
        self._sep = sep_background
        self._shape = tuple(shape) if shape is not None else tuple(level_image.shape)  # type: ignore[union-attr]
        self.global_level_adu = float(global_level_adu)
        self.global_rms_adu = float(global_rms_adu)
        self.config = config
        #: Constant added to sep's spline (ADU): the mean-sky correction of detection.reestimate_background.
        self.offset_adu = 0.0
        self._mesh_level = mesh_level
        self._mesh_rms = mesh_rms

    def __repr__(self) -> str:
        return (f"BackgroundModel(shape={self.shape}, global_level_adu={self.global_level_adu:.6g}, "
                f"global_rms_adu={self.global_rms_adu:.6g}, config={self.config!r})")

    def __getstate__(self) -> dict[str, Any]:
        # sep's Background cannot be pickled: keep its planes instead.
        state = dict(self.__dict__)
        if state["_sep"] is not None:
            state["_level"], state["_rms"] = self.level_image, self.rms_image
            state["_mesh_level"], state["_mesh_rms"] = self.mesh_level, self.mesh_rms
            state["_sep"] = None
            state["offset_adu"] = 0.0  # now inside the planes
        return state

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the image the model was fitted to."""
        return self._shape  # type: ignore[return-value]

    @property
    def level_image(self) -> np.ndarray:
        """Full-resolution sky level (ADU, float32, ``[y, x]``)."""
        if self._level is not None:
            return self._level
        level = np.asarray(self._sep.back(dtype=np.float32))
        if self.offset_adu:
            level += np.float32(self.offset_adu)
        return level

    @property
    def rms_image(self) -> np.ndarray:
        """Full-resolution sky rms (ADU, float32, ``[y, x]``)."""
        if self._rms is not None:
            return self._rms
        return np.asarray(self._sep.rms(dtype=np.float32))

    @property
    def mesh_level(self) -> np.ndarray:
        if self._mesh_level is None:
            self._mesh_level = self._at_box_centres(self.level_image)
        return self._mesh_level

    @property
    def mesh_rms(self) -> np.ndarray:
        if self._mesh_rms is None:
            self._mesh_rms = self._at_box_centres(self.rms_image)
        return self._mesh_rms

    def _at_box_centres(self, plane: np.ndarray) -> np.ndarray:
        box = self.config.box_size_pix
        rows, cols = _box_centres(self.shape[0], box), _box_centres(self.shape[1], box)
        return plane[np.ix_(rows, cols)].copy()

    def subtract_from(self, image: np.ndarray) -> None:
        """Subtract the level from ``image`` (float32, ``[y, x]``) in place, without a temporary plane."""
        if self._sep is not None and image.dtype == np.float32 and image.flags.c_contiguous:
            self._sep.subfrom(image)
            if self.offset_adu:
                image -= np.float32(self.offset_adu)
        else:
            image -= self.level_image

    def add_offset(self, offset_adu: float) -> None:
        """Raise the whole model by ``offset_adu`` (the image it was subtracted from is not changed)."""
        offset = float(offset_adu)
        self.global_level_adu += offset
        if self._sep is not None:
            self.offset_adu += offset
        else:
            self._level = self._level + np.float32(offset)
        if self._mesh_level is not None:
            self._mesh_level = self._mesh_level + np.float32(offset)

    def add_to(self, image: np.ndarray) -> None:
        """Add the level back to ``image`` in place (the inverse of :meth:`subtract_from`)."""
        image += self.level_image

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
        return self.level_image.copy() if self._level is not None else self.level_image

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
        hdr["BKGOFFS"] = (self.offset_adu, "[adu] mean-sky correction added")
        hdr["BKGNX"] = (self.shape[1], "[pix] width of the fitted image")
        hdr["BKGNY"] = (self.shape[0], "[pix] height of the fitted image")
        hdr["COMMENT"] = "Sky background (sep/SExtractor). LEVEL is what was subtracted."
        level, rms = self.level_image, self.rms_image
        if self._mesh_level is None:
            self._mesh_level = self._at_box_centres(level)
        if self._mesh_rms is None:
            self._mesh_rms = self._at_box_centres(rms)
        hdus = [primary]
        for name, data, what in (
            ("MESH_LEVEL", self.mesh_level, "model level at each box centre"),
            ("MESH_RMS", self.mesh_rms, "model rms at each box centre"),
            ("LEVEL", level, "full-resolution sky level"),
            ("RMS", rms, "full-resolution sky rms"),
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
    exposure: Exposure, config: BackgroundConfig | None = None, *, extra_mask: np.ndarray | None = None
) -> BackgroundModel:
    """Estimate the sky background of ``exposure.image`` with sep.

    Parameters
    ----------
    exposure : Exposure
        The exposure; its image (ADU, ``[y, x]``) is not modified.
    config : BackgroundConfig, optional
        Box size, filter and ignored mask planes (defaults if None).
    extra_mask : ndarray of bool, optional
        More pixels to ignore (shape of the image), e.g. grown footprints.

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
    masked = planes_set(exposure.mask, plane_bits(config.mask_planes))
    if extra_mask is not None:
        masked |= extra_mask
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
    _refuse_constant(data, masked, n_good)
    try:
        bkg = sep.Background(
            data,
            mask=masked,
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
    del masked
    model = BackgroundModel(
        global_level_adu=float(bkg.globalback),
        global_rms_adu=float(bkg.globalrms),
        config=config,
        sep_background=bkg,
        shape=(ny, nx),
    )
    if not model.global_rms_adu > 0 and not np.any(model.rms_image > 0):
        raise BadExposureError(
            "constant image, no noise: cannot set a detection threshold "
            "(the sky rms is zero in every box)",
            stage="background",
            level_adu=float(bkg.globalback),
            n_good_pixels=n_good,
        )
    return model


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
    model.subtract_from(exposure.image)


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


def _refuse_constant(data: np.ndarray, masked: np.ndarray, n_good: int) -> None:
    """Raise BadExposureError when every unmasked pixel has the same value."""
    sample, sample_masked = data[::16, ::16], masked[::16, ::16]
    sample = sample[~sample_masked]
    if sample.size and sample.min() != sample.max():
        return  # a sparse grid already shows two values
    low, high = _unmasked_range(data, masked)
    if low == high:
        raise BadExposureError(
            f"constant image, no noise: cannot set a detection threshold "
            f"(every unmasked pixel is {low} ADU)",
            stage="background",
            level_adu=low,
            n_good_pixels=n_good,
        )


def _unmasked_range(data: np.ndarray, masked: np.ndarray) -> tuple[float, float]:
    """Smallest and largest unmasked value, in blocks of rows (no copy of the pixels)."""
    low, high = np.inf, -np.inf
    for start in range(0, data.shape[0], 512):
        rows = slice(start, start + 512)
        good = ~masked[rows]
        if good.any():
            values = data[rows][good]
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high
