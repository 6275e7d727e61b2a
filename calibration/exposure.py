"""The exposure model: pixels, mask, variance, WCS and metadata.

Conventions, stated once for the whole engine:

* arrays are indexed ``[y, x]``; pixel centres are at integer 0-based
  coordinates (the centre of the first pixel is ``(0.0, 0.0)``); conversion to
  FITS' 1-based convention happens only in :mod:`calibration.io`;
* ``xy0`` is the position of pixel ``[0, 0]`` in the parent (detector)
  frame, as LSST's ``getXY0()``; catalogue positions are in the local frame
  (0-based array coordinates) unless a column name says ``_parent``;
* pixel data are native-endian float32; the WCS maps local 0-based pixel
  coordinates (astropy's ``origin=0``).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np
from astropy.wcs import WCS


class MaskPlane(enum.IntFlag):
    """Named bit planes of the mask (written as ``MP_<NAME>`` header cards)."""

    BAD = 1 << 0  #: bad pixel or column from the instrument
    SAT = 1 << 1  #: saturated, or part of a saturation bleed trail
    CR = 1 << 2  #: cosmic ray
    EDGE = 1 << 3  #: too close to the image edge for detection/measurement
    NO_DATA = 1 << 4  #: no valid data (NaN/inf in the input, unexposed)
    DETECTED = 1 << 5  #: inside a detection footprint
    INTRP = 1 << 6  #: value interpolated over (CR or bad pixel repair)
    SKY_SOURCE = 1 << 7  #: inside a sky-source aperture (diagnostic only)


MASK_DTYPE = np.int16  # 8 planes in use: int16 halves the plane's memory (bits 0-14 free)


@dataclasses.dataclass
class ExposureInfo:
    """Metadata of an exposure, read from the header with per-instrument maps.

    Attributes
    ----------
    instrument : str or None
        ``INSTRUME`` (or the instrument map's key), e.g. ``"DECam"``.
    filter_name : str or None
        Physical filter/band name, e.g. ``"r"``.
    exptime_s : float or None
        Exposure time in seconds; None when the header has none.
    date_obs : str or None
        ISO-8601 UTC start of the exposure (``DATE-OBS``), normalised.
    mjd_obs : float or None
        Modified Julian Date of the exposure start (``MJD-OBS`` or from date_obs).
    gain_e_per_adu : float
        Gain in electrons per ADU (1.0 when unknown).
    read_noise_e : float
        Read noise in electrons (0.0 when unknown).
    saturation_adu : float or None
        Level above which pixels are saturated, in ADU; None for no limit.
    exposure_id : int
        Integer id used to seed random choices (sky-source placement...).
    object_name : str or None
        ``OBJECT`` card, for display only.
    """

    instrument: str | None = None
    filter_name: str | None = None
    exptime_s: float | None = None
    date_obs: str | None = None
    mjd_obs: float | None = None
    gain_e_per_adu: float = 1.0
    read_noise_e: float = 0.0
    saturation_adu: float | None = None
    exposure_id: int = 0
    object_name: str | None = None


@dataclasses.dataclass
class Exposure:
    """A masked image with its WCS, metadata and (later) calibrations.

    Attributes
    ----------
    image : ndarray of float32, shape (ny, nx)
        Pixel values in ADU, native byte order, indexed ``[y, x]``.
    mask : ndarray of int16, shape (ny, nx)
        OR of :class:`MaskPlane` bits.
    variance : ndarray of float32, shape (ny, nx)
        Per-pixel variance in ADU^2.
    wcs : astropy.wcs.WCS or None
        Celestial WCS for 0-based local pixel coordinates; None if absent.
    info : ExposureInfo
        Metadata from the header.
    header : astropy.io.fits.Header or None
        The original header (primary merged with the image HDU's), kept so
        that outputs carry every input card.
    xy0 : tuple of int
        ``(x0, y0)``, parent-frame position of pixel ``[0, 0]``.
    psf : object or None
        PSF model once characterised (see :mod:`calibration.psf`).
    ap_corr_map : object or None
        Aperture-correction map once measured.
    photo_calib : object or None
        Photometric calibration once fitted.
    metadata : dict
        Values the pipeline adds (MAGZERO, QA figures), written as header cards.
    """

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    wcs: WCS | None = None
    info: ExposureInfo = dataclasses.field(default_factory=ExposureInfo)
    header: Any = None
    xy0: tuple[int, int] = (0, 0)
    psf: Any = None
    ap_corr_map: Any = None
    photo_calib: Any = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return self.image.shape  # type: ignore[return-value]

    def copy(self) -> "Exposure":
        """Deep copy of the pixel planes; WCS and header copied too."""
        return dataclasses.replace(
            self,
            image=self.image.copy(),
            mask=self.mask.copy(),
            variance=self.variance.copy(),
            wcs=None if self.wcs is None else self.wcs.deepcopy(),
            header=None if self.header is None else self.header.copy(),
            metadata=dict(self.metadata),
            info=dataclasses.replace(self.info),
        )


def make_exposure(
    image: np.ndarray,
    *,
    variance: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    wcs: WCS | None = None,
    info: ExposureInfo | None = None,
    header: Any = None,
    xy0: tuple[int, int] = (0, 0),
    copy: bool = True,
) -> Exposure:
    """Build an :class:`Exposure`, filling mask and variance sensibly.

    Non-finite pixels are set to 0 and masked ``NO_DATA``. When ``variance`` is
    None it is estimated per pixel from gain and read noise:
    ``var = max(image, 0) / gain + (read_noise / gain)**2`` in ADU^2, which
    ignores the sky level that was already subtracted (none for raw-ish data).

    With ``copy=False`` native float32 ``image`` and ``variance`` arrays are
    taken over as they are (and may be modified: non-finite values replaced),
    which saves a copy of each plane when the caller made them for this call.
    """
    info = info or ExposureInfo()
    img = _own_float32(image, copy)
    bad = ~np.isfinite(img)
    msk = np.zeros(img.shape, MASK_DTYPE) if mask is None else np.asarray(mask, MASK_DTYPE).copy()
    if bad.any():
        msk[bad] |= MaskPlane.NO_DATA
        img[bad] = np.float32(0)
    del bad
    if info.saturation_adu is not None:
        msk[img >= info.saturation_adu] |= MaskPlane.SAT
    if variance is None:
        gain = info.gain_e_per_adu if info.gain_e_per_adu > 0 else 1.0
        var = np.maximum(img, np.float32(0))
        var /= gain
        var += (info.read_noise_e / gain) ** 2
        variance = var
    else:
        variance = _own_float32(variance, copy)
        vbad = ~np.isfinite(variance)
        if vbad.any():
            msk[vbad] |= MaskPlane.NO_DATA
            variance[vbad] = np.float32(np.inf)
    return Exposure(image=img, mask=msk, variance=variance, wcs=wcs, info=info, header=header, xy0=xy0)


def _own_float32(array: np.ndarray, copy: bool) -> np.ndarray:
    """A native float32 C-contiguous array holding ``array``: a copy unless ``copy`` is
    False and ``array`` already is one."""
    arr = np.asarray(array)
    if arr.dtype == np.float32 and arr.dtype.isnative and arr.flags.c_contiguous and arr.flags.writeable:
        return arr.copy() if copy else arr
    return np.ascontiguousarray(arr, dtype=np.float32)


#: Rows per block in :func:`planes_set`: bounds the int32 temporary of ``mask & bits``.
_MASK_ROWS_PER_BLOCK = 512


def planes_set(mask: np.ndarray, bits: int) -> np.ndarray:
    """Boolean map of the pixels having any of ``bits`` set: ``(mask & bits) != 0``.

    Evaluated in blocks of rows, so that the only full-size array made is the
    boolean result (a quarter of an int32 mask), never an int32 temporary.
    """
    mask = np.asarray(mask)
    out = np.empty(mask.shape, bool)
    if mask.ndim != 2:
        np.not_equal(mask & bits, 0, out=out)
        return out
    bits_t = mask.dtype.type(bits)
    for start in range(0, mask.shape[0], _MASK_ROWS_PER_BLOCK):
        rows = slice(start, start + _MASK_ROWS_PER_BLOCK)
        np.not_equal(mask[rows] & bits_t, 0, out=out[rows])
    return out


def release_free_memory() -> None:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``; no-op elsewhere).

    sep grows its object pixel lists with ``realloc``; glibc keeps the freed
    blocks in the process, so a crowded field's detection would leave hundreds
    of MB resident for the rest of the run.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None
