"""Reading and writing exposure FITS files: the engine's only FITS boundary.

:func:`read_exposure` turns a FITS file (one image, multi-extension, gzip,
tile-compressed, or our calexp layout with ``IMAGE``/``MASK``/``VARIANCE``
extensions) into an :class:`~calibration.exposure.Exposure`;
:func:`read_header_facts` gives the web upload what it shows and validates;
:func:`write_exposure` writes the calexp layout, through :func:`write_hdulist`:
astropy's bytes without astropy's in-place byteswaps of the planes.

At this boundary FITS data arrive big-endian and 1-based; the exposure holds
native float32 arrays indexed ``[y, x]``, a celestial astropy WCS used with
``origin=0`` (astropy accounts for ``CRPIX`` being 1-based) and
``xy0 = (-LTV1, -LTV2)``. Every read failure is a
:class:`~calibration.errors.BadExposureError` with ``stage="read"``; astropy's
warnings are caught here and reported as :attr:`ExposureFacts.warnings`
(``warnings.catch_warnings`` is process-global: call from one thread at a time).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import warnings
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, NoConvergence

from .errors import BadExposureError
from .exposure import MASK_DTYPE, Exposure, ExposureInfo, MaskPlane, make_exposure

__all__ = ["INSTRUMENT_MAPS", "ExposureFacts", "KeywordMap", "header_cards", "normalise_filter_name",
           "read_exposure", "read_header_facts", "write_exposure", "write_fits_blocks", "write_hdulist"]

MIN_SIZE_PIX = 8
"""Smallest accepted image side, in pixels."""


@dataclasses.dataclass(frozen=True)
class KeywordMap:
    """Header cards holding each :class:`ExposureInfo` field, best first.

    ``aliases`` are lower-case prefixes of ``INSTRUME`` (else ``TELESCOP``,
    ``ORIGIN``) selecting the map; ``time_scale`` is the scale of the date cards
    when the header has no ``TIMESYS``.
    """

    aliases: tuple[str, ...] = ()
    filter: tuple[str, ...] = ("FILTER", "BAND", "FILTER1", "FILTNAM", "FILTNAME")
    exptime: tuple[str, ...] = ("EXPTIME", "EXPOSURE", "ITIME", "EXPTIM")
    gain: tuple[str, ...] = ("GAIN", "EGAIN", "GAINA", "CCDGAIN")
    read_noise: tuple[str, ...] = ("RDNOISE", "READNOIS", "RDNOISEA", "READNOI", "CCDNOISE")
    saturation: tuple[str, ...] = ("SATURATE", "SATLEVEL", "SATURATA")
    date: tuple[str, ...] = ("DATE-OBS", "DATE_OBS")
    time: tuple[str, ...] = ("TIME-OBS", "UT", "UTSTART", "UTC-OBS")
    mjd: tuple[str, ...] = ("MJD-OBS", "MJD_OBS")
    exposure_id: tuple[str, ...] = ("EXPID", "EXPNUM", "EXP-ID")
    object_name: tuple[str, ...] = ("OBJECT",)
    time_scale: str = "utc"


_GENERIC = KeywordMap()
INSTRUMENT_MAPS: Mapping[str, KeywordMap] = types.MappingProxyType({
    "generic": _GENERIC,
    "DECam": dataclasses.replace(
        _GENERIC, aliases=("decam",), filter=("FILTER",), gain=("GAINA", "GAIN"),
        read_noise=("RDNOISEA", "RDNOISE"), saturation=("SATURATA", "SATURATE"),
        exposure_id=("EXPNUM", "EXPID")),
    "HSC": dataclasses.replace(
        _GENERIC, aliases=("hyper suprime-cam", "hsc"), filter=("FILTER01", "FILTER"),
        gain=("T_GAIN1", "GAIN"),
        time=("UT-STR", "UT", "TIME-OBS"), mjd=("MJD-STR", "MJD-OBS"), exposure_id=("EXP-ID", "EXPID")),
    "ZTF": dataclasses.replace(
        _GENERIC, aliases=("ztf",), filter=("FILTER",), read_noise=("READNOI", "RDNOISE"),
        exposure_id=("EXPID",)),
    "SDSS": dataclasses.replace(
        _GENERIC, aliases=("sdss",), filter=("FILTER",), time=("TAIHMS", "TIME-OBS"), time_scale="tai"),
})
"""Per-instrument header keyword maps, chosen by ``INSTRUME``; ``"generic"`` otherwise."""


@dataclasses.dataclass(frozen=True)
class ExposureFacts:
    """What an upload shows and checks, from a FITS file's header and data.

    ``nx``/``ny`` are the image sides in pixels (length-1 axes squeezed);
    ``ra_deg``/``dec_deg`` the image centre through the WCS, else from
    ``RA``/``DEC``-like cards; ``cards`` the merged header as ``(key, value,
    comment)`` strings; ``warnings`` the header problems that did not stop the read.
    """

    hdu_index: int
    hdu_name: str
    instrument: str | None
    filter_name: str | None
    exptime_s: float | None
    date_obs: str | None
    mjd_obs: float | None
    nx: int
    ny: int
    bitpix: int
    has_wcs: bool
    ra_deg: float | None
    dec_deg: float | None
    cards: tuple[tuple[str, str, str], ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (tuples become lists)."""
        out = dataclasses.asdict(self)
        out.update(cards=[list(c) for c in self.cards], warnings=list(self.warnings))
        return out


# ----------------------------------------------------------------- public API
def read_exposure(
    path: str | os.PathLike[str],
    *,
    hdu: int | str | None = None,
    instrument_map: str | None = None,
    saturation_adu: float | None = None,
    gain_e_per_adu: float | None = None,
    read_noise_e: float | None = None,
) -> Exposure:
    """Read a FITS exposure.

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    hdu : int, str or None
        HDU index or ``EXTNAME``; None takes the calexp ``IMAGE``, else the
        first HDU holding a 2-D image.
    instrument_map : str or None
        Key of :data:`INSTRUMENT_MAPS`; None chooses by ``INSTRUME`` (the
        generic map for a calexp, whose cards are standard).
    saturation_adu, gain_e_per_adu, read_noise_e : float or None
        Override the header's saturation level (ADU), gain (e-/ADU) and read
        noise (e-).

    Returns
    -------
    Exposure
        Native float32 ``image[y, x]`` (non-finite pixels 0 and ``NO_DATA``),
        mask, variance (ADU^2: the ``VARIANCE`` extension, else from gain and
        read noise), WCS for 0-based pixels or None, metadata, merged header.
        Header problems are tolerated (the field is None or the default);
        :func:`read_header_facts` reports them.

    Raises
    ------
    BadExposureError
        ``stage="read"``: missing, empty, non-FITS or truncated file, no image,
        a cube or 1-D array, fewer than 8 x 8 pixels, no finite pixel, or a
        bad override.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = _load(path, hdu, caught)
        info = _header_info(src, instrument_map, strict_date=False, strict_filter=False)
        overrides = (("saturation_adu", saturation_adu, True), ("gain_e_per_adu", gain_e_per_adu, True),
                     ("read_noise_e", read_noise_e, False))
        for name, value, positive in overrides:
            if value is not None:
                if not math.isfinite(value) or value < 0 or (positive and value == 0):
                    raise _fail(f"{name} must be a {'positive' if positive else 'non-negative'} number, "
                                f"got {value!r}", **{name: value})
                setattr(info, name, float(value))
        # The planes were converted for this call: the exposure takes them over (copy=False).
        return make_exposure(src.image, variance=src.variance, mask=src.mask, wcs=_read_wcs(src), info=info,
                             header=src.header, xy0=_read_xy0(src), copy=False)


def read_header_facts(
    path: str | os.PathLike[str],
    *,
    hdu: int | str | None = None,
    instrument_map: str | None = None,
    require_date: bool = True,
    require_filter: bool = True,
) -> ExposureFacts:
    """Read and check what an upload shows: HDU, metadata, size, WCS, pointing, cards.

    The data are read once, so the errors are those of :func:`read_exposure`.
    A missing observation date (``DATE-OBS``/``MJD-OBS``), a malformed one, or a
    missing filter is a :class:`BadExposureError` naming the cards, unless
    ``require_date``/``require_filter`` is False, when it becomes a warning.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = _load(path, hdu, caught)
        info = _header_info(src, instrument_map, strict_date=require_date, strict_filter=require_filter)
        wcs = _read_wcs(src)
        _read_xy0(src)
        ny, nx = src.image.shape
        if wcs is not None:
            ra, dec = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
            radec: tuple[float | None, float | None] = (float(ra) % 360.0, float(dec))
        else:
            radec = _radec_from_cards(src)
        cards = tuple(header_cards(src.header))
        src.notes.extend(_warning_notes(caught))
    return ExposureFacts(
        hdu_index=src.index, hdu_name=src.name, instrument=info.instrument, filter_name=info.filter_name,
        exptime_s=info.exptime_s, date_obs=info.date_obs, mjd_obs=info.mjd_obs, nx=nx, ny=ny,
        bitpix=src.bitpix, has_wcs=wcs is not None, ra_deg=radec[0], dec_deg=radec[1], cards=cards,
        warnings=tuple(dict.fromkeys(src.notes)))


def write_exposure(exposure: Exposure, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Write ``exposure`` as a calexp: PRIMARY (metadata), IMAGE, MASK, VARIANCE.

    The primary holds the input header's cards (less structure, WCS and
    compression cards), then each scalar ``exposure.metadata`` item (keys over
    8 characters as ``HIERARCH``; a non-finite float as an undefined value with
    comment ``NaN``/``inf``; others skipped), then the :class:`ExposureInfo`
    fields as ``INSTRUME FILTER EXPTIME DATE-OBS MJD-OBS GAIN RDNOISE SATURATE
    EXPID OBJECT`` (absent when None) and ``TIMESYS = 'UTC'``. IMAGE (float32),
    MASK (int32, ``MP_<NAME>`` = bit index) and VARIANCE (float32) carry the WCS
    (SIP kept) and ``LTV1``/``LTV2 = -xy0``. :func:`read_exposure` reads it back
    exactly.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    BadExposureError
        ``stage="write"`` if the planes are not 2-D arrays of one shape.
    """
    shapes = {a.shape for a in (exposure.image, exposure.mask, exposure.variance)}
    if len(shapes) != 1 or exposure.image.ndim != 2:
        raise BadExposureError("image, mask and variance must be 2-D arrays of one shape",
                               stage="write", shapes=sorted(shapes))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{os.fspath(path)} exists and overwrite=False")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's notices about cards it reformats
        primary = fits.Header()
        for card in (exposure.header.cards if exposure.header is not None else ()):
            if card.keyword and not _NOT_COPIED.match(card.keyword):
                primary.append(fits.Card.fromstring(card.image))
        for key, value in exposure.metadata.items():
            _put_card(primary, str(key), value)
        primary["TIMESYS"] = ("UTC", "time scale of DATE-OBS and MJD-OBS")
        for key, field, alternatives in _STANDARD_CARDS:
            value = getattr(exposure.info, field)
            if value is not None:
                primary[key] = value
            else:  # leave no stale card that the reader would take instead
                for stale in (key, *alternatives):
                    primary.remove(stale, ignore_missing=True, remove_all=True)
        ext = fits.Header()
        if exposure.wcs is not None:
            ext.extend(c for c in exposure.wcs.to_header(relax=True).cards if not _TIME_KEYS.match(c.keyword))
        ext["LTV1"] = (-int(exposure.xy0[0]), "xy0 = (-LTV1, -LTV2): parent position of pixel [0, 0]")
        ext["LTV2"] = -int(exposure.xy0[1])
        mask_ext = ext.copy()
        for plane in MaskPlane:
            key = f"MP_{plane.name}" if len(plane.name) <= 5 else f"HIERARCH MP_{plane.name}"
            mask_ext[key] = (int(plane.value).bit_length() - 1, "mask plane bit index")
        write_hdulist(fits.HDUList([
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(np.asarray(exposure.image, np.float32), header=ext.copy(), name="IMAGE"),
            fits.ImageHDU(np.asarray(exposure.mask, MASK_DTYPE), header=mask_ext, name="MASK"),
            fits.ImageHDU(np.asarray(exposure.variance, np.float32), header=ext.copy(), name="VARIANCE"),
        ]), path, overwrite=overwrite, output_verify="silentfix+ignore")


# Image dtypes astropy writes as they are (no BZERO offset), as numpy type codes.
_PLAIN_IMAGE_CODES = frozenset({"u1", "i2", "i4", "i8", "f4", "f8"})
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
_BLOCK = 2880
_CHUNK_BYTES = 1 << 20  # converted to big-endian at a time: cache-sized, yet few writes


def write_hdulist(hdul: fits.HDUList, path: str | os.PathLike[str], *, overwrite: bool = True,
                  output_verify: str = "exception") -> None:
    """Write ``hdul`` to ``path``, the same bytes as ``hdul.writeto`` but faster for big images.

    astropy byteswaps a native image in place, writes it and swaps it back:
    two extra passes over the array, which meanwhile is altered under any
    other reader. Here the headers are astropy's own, after the same
    verification and ``EXTEND`` update, and each image goes out in blocks of
    rows converted to big-endian, leaving the array untouched. Lists this
    does not cover (tables, scaled or unsigned pixels, compressed or
    non-path targets, no primary HDU first) are written by astropy.

    Raises
    ------
    OSError
        If ``path`` exists and ``overwrite`` is False.
    """
    if not _plain_images(hdul, path):
        hdul.writeto(path, overwrite=overwrite, output_verify=output_verify)
        return
    hdul.verify(option=output_verify)
    hdul.update_extend()
    write_fits_blocks(path, ((hdu.header.tostring().encode("ascii"), hdu.data) for hdu in hdul),
                      overwrite=overwrite)


def write_fits_blocks(path: str | os.PathLike[str], hdus: Iterable[tuple[bytes, np.ndarray | None]], *,
                      overwrite: bool = True) -> None:
    """Write HDUs given as (padded header bytes, data array or None) to a new FITS file.

    Each array is written big-endian in C order, a megabyte at a time, then
    zero-padded to the 2880-byte block, as astropy does. The caller owns the
    header: it must describe the array (BITPIX, NAXISn or a table's layout).

    Raises
    ------
    OSError
        If ``path`` exists and ``overwrite`` is False.
    """
    if os.path.exists(path):
        if not overwrite:
            raise OSError(f"File {os.fspath(path)!r} already exists.")
        os.remove(path)  # as astropy does: a new file, not the old one truncated
    with open(path, "wb") as out:
        for header, data in hdus:
            out.write(header)
            size = _write_big_endian(out, data) if data is not None else 0
            if size % _BLOCK:
                out.write(bytes(_BLOCK - size % _BLOCK))


def _plain_images(hdul: fits.HDUList, path: str | os.PathLike[str]) -> bool:
    """True when every HDU is a primary or image HDU whose pixels are written unscaled."""
    if not isinstance(path, (str, os.PathLike)) or os.fspath(path).lower().endswith(_COMPRESSED_SUFFIXES):
        return False
    if not len(hdul) or type(hdul[0]) is not fits.PrimaryHDU:
        return False
    for hdu in hdul:
        if type(hdu) not in (fits.PrimaryHDU, fits.ImageHDU) or "BZERO" in hdu.header or "BSCALE" in hdu.header:
            return False
        data = hdu.data
        if data is not None and (type(data) is not np.ndarray or data.ndim == 0
                                 or data.dtype.str[1:] not in _PLAIN_IMAGE_CODES):
            return False
    return True


def _write_big_endian(out: Any, data: np.ndarray) -> int:
    """Write ``data`` big-endian in C order, in blocks of rows; return the bytes written."""
    if data.size == 0:
        return 0
    big = data.dtype.newbyteorder(">")
    rows = max(1, _CHUNK_BYTES // max(1, data[0].nbytes if data.ndim > 1 else data.itemsize))
    for start in range(0, data.shape[0], rows):
        block = np.ascontiguousarray(data[start:start + rows], dtype=big)
        out.write(block.reshape(-1).view(np.uint8))
    return data.size * data.itemsize


def header_cards(header: fits.Header) -> list[tuple[str, str, str]]:
    """``(key, value, comment)`` strings of every non-blank card, for display and JSON.

    Booleans show as ``T``/``F``, undefined values as ``""``; ``COMMENT`` and
    ``HISTORY`` cards carry their text as the value; an unparsable card its raw text.
    """
    out = []
    for card in header.cards:
        try:
            key, value, comment = card.keyword, card.value, str(card.comment)
        except (ValueError, fits.VerifyError):
            key, value, comment = card.image[:8].strip(), card.image[10:].strip(), ""
        if key or str(value).strip():
            text = ("T" if value else "F") if isinstance(value, bool) else (
                "" if isinstance(value, fits.card.Undefined) else str(value))
            out.append((key, text, comment))
    return out


def normalise_filter_name(value: Any) -> str | None:
    """Band name from a filter card value, e.g. ``"r DECam SDSS c0002 6415.0 1480.0"`` -> ``"r"``.

    Survey prefixes go and SDSS-like bands become lower case (``HSC-R2``,
    ``ZTF_r``, ``SDSS r'`` -> ``"r"``); a long description keeps its first word;
    primes and blanks are stripped; otherwise case is kept (``"V"``, ``"Y"``).
    None for an empty or ``UNKNOWN`` value.
    """
    text = str(value).strip()
    if text.upper() in {"", "NONE", "UNKNOWN", "N/A", "NA"}:
        return None
    prefix = _FILTER_PREFIX.match(text)
    words = text[prefix.end() if prefix else 0:].split()
    band = words[0].strip("'\"") if words else ""
    sloan_like = prefix is not None and prefix[1].lower() not in {"johnson", "bessell", "cousins"}
    if sloan_like and re.fullmatch(r"[ugrizyUGRIZY]2?", band):
        band = band[0].lower()
    return band or None


# ------------------------------------------------------------ reading pixels
_FITS_ERRORS = (OSError, ValueError, TypeError, EOFError, IndexError, KeyError, zlib.error, fits.VerifyError)
_WCS_ERRORS = (ValueError, TypeError, KeyError, NoConvergence)


def _fail(message: str, **figures: Any) -> BadExposureError:
    return BadExposureError(message, stage="read", **figures)


@dataclasses.dataclass
class _Source:
    """One read in progress: the file, its HDU listing, the chosen planes, notes."""

    path: str
    size: int
    caught: list  # warnings recorded by the caller's catch_warnings
    listing: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    index: int = 0
    name: str = ""
    bitpix: int = 0
    calexp: bool = False
    image: np.ndarray | None = None  # float32, NaN where the file has no data
    axes: tuple[int, int] = (0, 1)  # 0-based FITS axes kept as (x, y)
    mask: np.ndarray | None = None
    variance: np.ndarray | None = None
    header: fits.Header | None = None  # primary merged with the image HDU's
    image_header: fits.Header | None = None
    crc: int = 0

    def fail(self, message: str, **figures: Any) -> BadExposureError:
        return _fail(message, path=self.path, hdus=self.listing, **figures)

    def check_truncated(self) -> None:
        for w in self.caught:
            if "truncated" in str(w.message):
                sizes = re.findall(r"\((\d+)\)", str(w.message))
                expected = int(sizes[-1]) if sizes else None
                raise self.fail(f"{self.path} is truncated: it has {self.size} bytes but its headers "
                                f"describe {expected or 'more'}; upload the complete file",
                                file_bytes=self.size, expected_bytes=expected)


def _load(path: str | os.PathLike[str], hdu: int | str | None, caught: list) -> _Source:
    """Open, choose the HDU, read and check its pixels (inside ``catch_warnings``)."""
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise _fail(f"{where} does not exist or is not a file", path=where)
    src = _Source(where, os.path.getsize(where), caught)
    if src.size == 0:
        raise _fail(f"{where} is empty (0 bytes): upload the file again", path=where, file_bytes=0)
    try:
        hdul = fits.open(where, memmap=False, lazy_load_hdus=False)
    except _FITS_ERRORS as exc:
        raise _fail(f"{where} is not a readable FITS file ({exc}); expected a FITS image "
                    "(.fits, .fit, .fz, .fits.gz)", path=where, file_bytes=src.size) from exc
    with hdul:
        try:
            src.listing = [_describe(i, h) for i, h in enumerate(hdul)]
            src.check_truncated()
            names = [h.name.upper() for h in hdul]
            calexp_layout = all(n in names for n in ("IMAGE", "MASK", "VARIANCE"))
            src.index = _choose_hdu(src, hdul, hdu, calexp_layout=calexp_layout)
            chosen = hdul[src.index]
            src.name, src.bitpix = chosen.name, int(chosen.header.get("BITPIX", 0))
            src.calexp = calexp_layout and names[src.index] == "IMAGE"
            src.image, src.axes = _pixels(src, chosen)
            if src.calexp:
                src.mask = _calexp_mask(src, hdul[names.index("MASK")])
                src.variance, _ = _pixels(src, hdul[names.index("VARIANCE")])
            primary = _sanitise(hdul[0].header.copy(), src.notes)
            src.image_header = _sanitise(chosen.header.copy(), src.notes) if src.index else primary
            src.header = _merge(primary, src.image_header) if src.index else primary.copy()
            src.crc = zlib.crc32(hdul[0].header.tostring().encode("ascii", "replace"))
        except _FITS_ERRORS as exc:
            raise src.fail(f"{where} could not be read as FITS ({type(exc).__name__}: {exc}); the file "
                           "may be corrupt or truncated", file_bytes=src.size) from exc
    if not np.isfinite(src.image).any():
        raise src.fail(f"every pixel of HDU {src.index} ({src.name or 'unnamed'}) is NaN or infinite: "
                       "check the HDU chosen", shape=src.image.shape)
    return src


def _is_image(hdu: Any) -> bool:
    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    return isinstance(hdu, image_types) and not isinstance(hdu, fits.GroupsHDU)


def _dims(hdu: Any) -> tuple[int, ...]:
    """Numpy-order shape from the header, without reading the data; () if none."""
    dims = tuple(int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(int(hdu.header.get("NAXIS", 0)), 0, -1))
    return () if 0 in dims else dims


def _describe(index: int, hdu: Any) -> str:
    dims, what = _dims(hdu), type(hdu).__name__
    state = ("not an image" if not _is_image(hdu) else
             f"shape {dims}, BITPIX {hdu.header.get('BITPIX')}" if dims else "no data")
    return f"[{index}] {hdu.name or '(unnamed)'} ({what}, {state})"


def _choose_hdu(src: _Source, hdul: fits.HDUList, hdu: int | str | None, *, calexp_layout: bool) -> int:
    hdus = "; ".join(src.listing)
    if hdu is None:
        if calexp_layout:
            return [h.name.upper() for h in hdul].index("IMAGE")
        with_data = [i for i, h in enumerate(hdul) if _is_image(h) and _dims(h)]
        if not with_data:
            raise src.fail(f"{src.path} has no HDU with image data; its HDUs are: {hdus}")
        flat = [i for i in with_data if sum(n > 1 for n in _dims(hdul[i])) == 2]
        return (flat or with_data)[0]
    if isinstance(hdu, str) and hdu.strip().isdigit():
        hdu = int(hdu)
    if isinstance(hdu, int):
        if not 0 <= hdu < len(hdul):
            raise src.fail(f"HDU {hdu} does not exist; {src.path} has {len(hdul)}: {hdus}")
        index = hdu
    else:
        named = [i for i, h in enumerate(hdul) if h.name.upper() == str(hdu).strip().upper()]
        if not named:
            raise src.fail(f"no HDU named {hdu!r}; {src.path} has: {hdus}")
        index = named[0]
    if not _is_image(hdul[index]):
        raise src.fail(f"HDU {index} is not an image: choose one of: {hdus}")
    if not _dims(hdul[index]):
        raise src.fail(f"HDU {index} ({hdul[index].name}) has no data (NAXIS = 0): choose one of: {hdus}")
    return index


def _pixels(src: _Source, hdu: Any, *, as_float: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """Data of ``hdu`` squeezed to 2-D and checked; native float32 with ``BLANK`` as NaN if ``as_float``."""
    try:
        raw = hdu.data
    except _FITS_ERRORS as exc:
        src.check_truncated()
        raise src.fail(f"the pixel data of HDU {hdu.name or 'unnamed'} could not be read ({exc}); the file "
                       "is corrupt or truncated: upload it again") from exc
    src.check_truncated()
    if raw is None or raw.size == 0:
        raise src.fail(f"HDU {hdu.name or 'unnamed'} has no data")
    kept = [i for i in range(raw.ndim) if raw.shape[raw.ndim - 1 - i] > 1]  # FITS axes, 0-based
    data = raw.squeeze() if raw.ndim > 2 else raw
    where = f"HDU {hdu.name or 'unnamed'}"
    if data.ndim > 2:
        raise src.fail(f"{where} holds a cube of shape {raw.shape}; CalibWeb calibrates one 2-D image: "
                       "extract one plane first", shape=raw.shape)
    if data.ndim < 2:
        raise src.fail(f"{where} holds a 1-D array of shape {raw.shape}, not a 2-D image", shape=raw.shape)
    if min(data.shape) < MIN_SIZE_PIX:
        raise src.fail(f"{where} is {data.shape[1]} x {data.shape[0]} pixels (nx x ny); at least "
                       f"{MIN_SIZE_PIX} x {MIN_SIZE_PIX} is needed", shape=raw.shape)
    axes = (kept[0], kept[1]) if len(kept) == 2 else (0, 1)
    if not as_float:
        return data, axes
    image = np.asarray(data, dtype=np.float32)  # native byte order: sep refuses big-endian
    blank = hdu.header.get("BLANK")
    if isinstance(blank, int) and np.issubdtype(data.dtype, np.integer):
        image[data == blank] = np.nan
    return image, axes


def _calexp_mask(src: _Source, hdu: Any) -> np.ndarray:
    """MASK plane, the file's ``MP_<NAME>`` bits moved to :class:`MaskPlane` bits (unknown names dropped)."""
    data, _ = _pixels(src, hdu, as_float=False)
    if data.shape != src.image.shape:
        raise src.fail(f"MASK shape {data.shape} differs from IMAGE shape {src.image.shape}",
                       shape=data.shape)
    bits = {k[3:]: v for k, v in hdu.header.items() if k.startswith("MP_") and type(v) is int and 0 <= v < 63}
    if not bits:  # no plane names: the bits are taken as ours, those we do not define dropped
        return (np.asarray(data, np.int64) & int(sum(MaskPlane))).astype(MASK_DTYPE)
    data = np.asarray(data, np.int64)
    mask = np.zeros(data.shape, MASK_DTYPE)
    for name, bit in bits.items():
        if name in MaskPlane.__members__:
            mask[(data >> bit) & 1 != 0] |= MaskPlane[name]
    return mask


def _sanitise(header: fits.Header, notes: list[str]) -> fits.Header:
    """Fix (as strings) or drop cards whose value astropy cannot parse, noting each."""
    for index in reversed(range(len(header))):
        card = header.cards[index]
        try:
            card.value  # noqa: B018 - parsing is the check: astropy raises on access
        except (ValueError, fits.VerifyError):
            text = card.image.strip()
            try:
                card.verify("silentfix")
                notes.append(f"header card {text!r} is not valid FITS; read as the string {card.value!r}")
            except (ValueError, fits.VerifyError):
                notes.append(f"header card {text!r} cannot be parsed; ignored")
                del header[index]
    return header


def _merge(primary: fits.Header, image: fits.Header) -> fits.Header:
    """Primary cards (without structure) then the image HDU's, which win on a clash."""
    merged = primary.copy(strip=True)
    for key in ("BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM"):
        merged.remove(key, ignore_missing=True, remove_all=True)
    for card in image.copy().cards:
        if card.keyword in ("COMMENT", "HISTORY", "") or card.keyword not in merged:
            merged.append(card)
        else:
            merged[card.keyword] = (card.value, card.comment)
    return merged


# ------------------------------------------------------ reading the metadata
def _choose_map(src: _Source, instrument_map: str | None) -> tuple[str, KeywordMap]:
    if instrument_map is not None:
        if instrument_map not in INSTRUMENT_MAPS:
            raise _fail(f"unknown instrument map {instrument_map!r}; known: {', '.join(INSTRUMENT_MAPS)}",
                        instrument_map=instrument_map)
        return instrument_map, INSTRUMENT_MAPS[instrument_map]
    if not src.calexp:  # a calexp carries the standard cards that the generic map reads first
        for card in ("INSTRUME", "TELESCOP", "ORIGIN"):
            value = str(src.header.get(card, "")).strip().lower()
            for name, kmap in INSTRUMENT_MAPS.items():
                if value and kmap.aliases and value.startswith(kmap.aliases):
                    return name, kmap
    return "generic", _GENERIC


def _card(header: fits.Header, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """``(key, value)`` of the first of ``keys`` with a defined, non-blank value."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "" and not isinstance(value, fits.card.Undefined):
            return key, value
    return None


def _number(src: _Source, keys: tuple[str, ...], *, positive: bool) -> float | None:
    found = _card(src.header, keys)
    if found is None:
        return None
    try:
        number = math.nan if isinstance(found[1], bool) else float(found[1])
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        src.notes.append(f"{found[0]} = {found[1]!r} is not a {'positive' if positive else 'non-negative'} "
                         "number; ignored")
        return None
    return number


def _header_info(src: _Source, instrument_map: str | None, *, strict_date: bool,
                 strict_filter: bool) -> ExposureInfo:
    map_name, kmap = _choose_map(src, instrument_map)
    date_obs, mjd_obs = _obs_date(src, kmap, strict=strict_date)
    filt = _card(src.header, kmap.filter)
    if filt is None:
        message = (f"the header has no filter: looked at {', '.join(kmap.filter)} ({map_name} map); "
                   "add FILTER = '<band>' (e.g. 'r')")
        if strict_filter:
            raise src.fail(message, cards=list(kmap.filter))
        src.notes.append(message)
    expid = _card(src.header, kmap.exposure_id)
    if expid and isinstance(expid[1], str) and re.fullmatch(r"[A-Za-z_-]*\d+", expid[1]):  # 'HSCE00012345'
        expid = (expid[0], int(re.sub(r"^\D*", "", expid[1])))
    instrument, obj = _card(src.header, ("INSTRUME",)), _card(src.header, kmap.object_name)
    return ExposureInfo(
        instrument=str(instrument[1]) if instrument else (None if map_name == "generic" else map_name),
        filter_name=normalise_filter_name(filt[1]) if filt else None,
        exptime_s=_number(src, kmap.exptime, positive=False), date_obs=date_obs, mjd_obs=mjd_obs,
        gain_e_per_adu=_number(src, kmap.gain, positive=True) or 1.0,
        read_noise_e=_number(src, kmap.read_noise, positive=False) or 0.0,
        saturation_adu=_number(src, kmap.saturation, positive=True),
        exposure_id=expid[1] if expid and type(expid[1]) is int else src.crc,
        object_name=str(obj[1]) if obj else None)


_CLOCK = r"(\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d*)?)?"
_ISO_DATE = re.compile(rf"^(\d{{4}})-(\d{{1,2}})-(\d{{1,2}})(?:[T ]{_CLOCK})?\s*(?:Z|UTC)?$", re.I)
_OLD_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{2})$")  # dd/mm/yy, 19yy (FITS before 2000)
_TIME_OF_DAY = re.compile(rf"^(?:\d{{4}}-\d{{1,2}}-\d{{1,2}}[T ])?{_CLOCK}\s*(?:Z|UTC)?$", re.I)


def _obs_date(src: _Source, kmap: KeywordMap, *, strict: bool) -> tuple[str | None, float | None]:
    """``(date_obs, mjd_obs)`` in UTC from the date (+ time of day) and MJD cards."""
    scale = str(src.header.get("TIMESYS", kmap.time_scale)).strip().lower()
    if scale not in ("utc", "tai", "tt"):
        src.notes.append(f"TIMESYS = {scale.upper()!r} is not supported; dates read as UTC")
        scale = "utc"
    date_card, mjd_card = _card(src.header, kmap.date), _card(src.header, kmap.mjd)

    def malformed(card: tuple[str, Any], hint: str) -> None:
        message = f"{card[0]} = {card[1]!r} is not a valid observation date: {hint}"
        if strict:
            raise src.fail(message, card=card[0], value=str(card[1]))
        src.notes.append(message)

    when = mjd = None
    if date_card is not None:
        old = _OLD_DATE.match(str(date_card[1]))
        iso = _ISO_DATE.match(f"19{old[3]}-{old[2]}-{old[1]}" if old else str(date_card[1]))
        clock = iso.groups()[3:] if iso else ()
        if iso and clock[0] is None:
            time_card = _card(src.header, kmap.time)
            of_day = _TIME_OF_DAY.match(str(time_card[1])) if time_card else None
            clock = of_day.groups() if of_day else ("0", "0", None, None)
        try:
            if iso is None:
                raise ValueError(date_card[1])
            year, month, day, hour, minute = (int(v) for v in (*iso.groups()[:3], *clock[:2]))
            second = f"{int(clock[2] or 0):02d}{clock[3] or ''}"
            stamp = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second}"
            when = Time(stamp, format="isot", scale=scale, precision=3).utc
        except ValueError:
            malformed(date_card, "write it as ISO 8601 UTC, e.g. '2024-01-02T03:04:05.6'")
    if mjd_card is not None:
        try:
            mjd = float(mjd_card[1])
            if not 0.0 < mjd < 1e6:
                raise ValueError(mjd)
            mjd = mjd if scale == "utc" else float(Time(mjd, format="mjd", scale=scale).utc.mjd)
        except (TypeError, ValueError):
            mjd = None
            malformed(mjd_card, f"{mjd_card[0]} must be a Modified Julian Date, e.g. 60311.128")
    if when is None and mjd is None:
        if date_card is None and mjd_card is None:
            message = ("the header has no observation date: add DATE-OBS (ISO 8601, UTC) or MJD-OBS, e.g. "
                       f"DATE-OBS = '2024-01-02T03:04:05.6'; looked at {', '.join(kmap.date + kmap.mjd)}")
            if strict:
                raise src.fail(message, cards=list(kmap.date + kmap.mjd))
            src.notes.append(message)
        return None, None
    if when is None:
        when = Time(mjd, format="mjd", scale="utc", precision=3)
    elif mjd is not None and abs(mjd - when.mjd) * 86400.0 > 1.0:
        src.notes.append(f"{date_card[0]} and {mjd_card[0]} differ by {abs(mjd - when.mjd) * 86400.0:.1f} s; "
                         "both kept as written")
    return str(when.isot), float(when.mjd) if mjd is None else mjd


def _read_wcs(src: _Source) -> WCS | None:
    """Celestial WCS of the image HDU for 0-based pixels; None if absent or unusable."""
    header = src.image_header
    if not any(str(v).upper()[:4] in ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT")
               for k, v in header.items() if k.startswith("CTYPE")):
        return None
    try:
        if not _has_pixel_scale(header, src.axes):  # astropy would default it to 1 deg/pixel
            raise ValueError("no non-singular CDi_j or CDELTi pixel scale")
        full = WCS(header, relax=True)
        if not full.has_celestial or {full.wcs.lng, full.wcs.lat} != set(src.axes):
            raise ValueError("its celestial axes are not the image axes")
        wcs = full.celestial
        wcs.pixel_shape = src.image.shape[::-1]
        centre = wcs.all_pix2world([[(s - 1) / 2 for s in wcs.pixel_shape]], 0)
        if not np.all(np.isfinite(centre)):
            raise ValueError("the image centre maps to no sky position")
    except _WCS_ERRORS as exc:
        src.notes.append(f"the WCS in the header is unusable ({exc}); WCS ignored")
        return None
    return wcs


def _has_pixel_scale(header: fits.Header, axes: tuple[int, int]) -> bool:
    ij = [a + 1 for a in axes]
    if any(f"CD{r}_{c}" in header for r in ij for c in ij):
        matrix = np.array([[float(header.get(f"CD{r}_{c}", 0.0)) for c in ij] for r in ij])
    elif all(f"CDELT{r}" in header for r in ij):
        pc = np.array([[float(header.get(f"PC{r}_{c}", float(r == c))) for c in ij] for r in ij])
        matrix = np.diag([float(header[f"CDELT{r}"]) for r in ij]) @ pc
    else:
        return False
    det = float(np.linalg.det(matrix))
    return math.isfinite(det) and det != 0.0


def _read_xy0(src: _Source) -> tuple[int, int]:
    ltv = [src.header.get(k, 0) for k in ("LTV1", "LTV2")]
    if not all(type(v) in (int, float) and math.isfinite(v) for v in ltv):
        src.notes.append(f"LTV1/LTV2 = {ltv} are not numbers; xy0 = (0, 0)")
        return 0, 0
    if any(v != round(v) for v in ltv):
        src.notes.append(f"LTV1/LTV2 = {ltv} are not whole pixels; xy0 rounded")
    return -round(ltv[0]), -round(ltv[1])


def _radec_from_cards(src: _Source) -> tuple[float | None, float | None]:
    """Pointing from RA/DEC-like cards: numbers are degrees, sexagesimal RA is hours."""
    number = re.compile(r"\s*[-+]?\d+(\.\d*)?([eE][-+]?\d+)?\s*")
    for ra_key, dec_key in (("RA", "DEC"), ("OBJRA", "OBJDEC"), ("OBJCTRA", "OBJCTDEC"), ("TELRA", "TELDEC")):
        ra, dec = src.header.get(ra_key), src.header.get(dec_key)
        if ra is None or dec is None:
            continue
        try:
            ra_deg = float(ra) if number.fullmatch(str(ra)) else Angle(str(ra).strip(), unit=u.hourangle).deg
            dec_deg = float(dec) if number.fullmatch(str(dec)) else Angle(str(dec).strip(), unit=u.deg).deg
        except (TypeError, ValueError) as exc:
            src.notes.append(f"{ra_key}/{dec_key} = {ra!r}/{dec!r} could not be read ({exc})")
            continue
        if 0.0 <= ra_deg < 360.0 and -90.0 <= dec_deg <= 90.0:
            return float(ra_deg), float(dec_deg)
        src.notes.append(f"{ra_key}/{dec_key} = {ra!r}/{dec!r} are out of range")
    return None, None


_BOILERPLATE = re.compile(r"^(Verification reported errors|Note: astropy.io.fits uses zero-based|HDU \d+:$)")


def _warning_notes(caught: list) -> list[str]:
    """Header problems astropy warned about, one line each (not WCS 'fixed' notices)."""
    lines = [line.strip() for w in caught if issubclass(w.category, UserWarning)
             and "FITSFixed" not in w.category.__name__ for line in str(w.message).splitlines()]
    return [f"FITS: {line[:200]}" for line in lines if line and not _BOILERPLATE.match(line)]


# ------------------------------------------------------------------ writing
_WCS_CARD = (r"WCSAXES|CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA|CD\d_|PC\d_|PV\d_|PS\d_|LONPOLE|LATPOLE"
             r"|RADESYS|RADECSYS|EQUINOX|WCSNAME|[AB]P?_\d|[AB]P?_ORDER|[AB]P?_DMAX|LTV\d|LTM\d")
_COMPRESSION_CARD = (r"Z(IMAGE|BITPIX|NAXIS|TILE|CMPTYPE|NAME|VAL|SIMPLE|TENSION|EXTEND|BLOCKED|PCOUNT|GCOUNT"
                     r"|HECKSUM|DATASUM|QUANTIZ|DITHER0|BLANK|SCALE|ZERO)\d*$")
_STRUCTURAL = re.compile(r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|EXTNAME|EXTVER|INHERIT"
                         r"|BSCALE|BZERO|BLANK|CHECKSUM|DATASUM|END)$")
_NOT_COPIED = re.compile(rf"^({_STRUCTURAL.pattern[2:-2]}|{_WCS_CARD}|{_COMPRESSION_CARD}|MP_|TIMESYS$)")
_TIME_KEYS = re.compile(r"^(DATE|MJD|TIME|TSTART|TSTOP|XPOSURE|TELAPSE|JEPOCH|BEPOCH|OBSGEO)")
_STANDARD_CARDS = (  # (card, ExposureInfo field, generic-map alternatives removed when the field is None)
    ("INSTRUME", "instrument", ()), ("FILTER", "filter_name", _GENERIC.filter),
    ("EXPTIME", "exptime_s", _GENERIC.exptime), ("DATE-OBS", "date_obs", _GENERIC.date + _GENERIC.time),
    ("MJD-OBS", "mjd_obs", _GENERIC.mjd), ("GAIN", "gain_e_per_adu", _GENERIC.gain),
    ("RDNOISE", "read_noise_e", _GENERIC.read_noise), ("SATURATE", "saturation_adu", _GENERIC.saturation),
    ("EXPID", "exposure_id", _GENERIC.exposure_id), ("OBJECT", "object_name", ()),
)
_FILTER_PREFIX = re.compile(r"^(sdss|sloan|hsc|ztf|decam|ps1|lsst|johnson|bessell|cousins)[-_:. ]+", re.I)


def _put_card(header: fits.Header, key: str, value: Any) -> None:
    """Set one metadata card: non-finite floats undefined (comment says which), non-scalars skipped."""
    value = value.item() if isinstance(value, np.generic) else value
    name = key.strip().upper()
    if not isinstance(value, (bool, int, float, str)) or _STRUCTURAL.match(name):
        return
    comment = ""
    if isinstance(value, float) and not math.isfinite(value):
        value, comment = None, str(value).replace("nan", "NaN")
    elif isinstance(value, str):
        value = value.encode("ascii", "replace").decode("ascii")
    if not re.fullmatch(r"[A-Z0-9_-]{1,8}", name):
        name = "HIERARCH " + re.sub(r"[^ -<>-~]", "_", name)  # printable ASCII except '='
    header[name] = (value, comment)
