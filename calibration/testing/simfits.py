"""FITS headers and files for simulated exposures.

This is the simulator's own FITS boundary: the local 0-based WCS becomes
FITS' 1-based ``CRPIX`` here, and ``xy0`` becomes IRAF's ``LTV1 = -x0``,
``LTV2 = -y0`` (physical = logical - LTV, both 1-based).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

if TYPE_CHECKING:
    from .simulate import SimConfig, SimulatedExposure

__all__ = ["make_header", "header_cards", "write_fits"]


def wcs_cards(wcs: WCS) -> fits.Header:
    """FITS cards of a WCS with a ``CDi_j`` matrix (and SIP when present)."""
    hdr = wcs.to_header(relax=True)
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.wcs.get_pc() * wcs.wcs.cdelt[:, None]
    for key in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2", "MJDREF", "DATEREF"):
        hdr.remove(key, ignore_missing=True)
    for i in range(2):
        for j in range(2):
            hdr.insert("CUNIT1", (f"CD{i + 1}_{j + 1}", float(cd[i, j]), "[deg/pix] linear transformation"))
    return hdr


def header_cards(config: "SimConfig", wcs: WCS) -> tuple[fits.Header, fits.Header]:
    """``(primary, image)`` cards of a simulated exposure.

    The primary part holds the observation (INSTRUME, FILTER, EXPTIME, DATE-OBS,
    MJD-OBS, OBJECT, RA, DEC as pointing = header WCS at the field centre,
    EXPID and the ``SIMULATED by CalibWeb simulator seed=N`` comment); the image
    part holds the detector and geometry (GAIN, RDNOISE, SATURATE, BUNIT,
    LTV1/LTV2, LTM, the WCS).
    """
    xc, yc = config.centre_pix
    ra, dec = wcs.all_pix2world(xc, yc, 0)
    prim = fits.Header()
    prim["ORIGIN"] = ("CalibWeb", "simulated data")
    prim["INSTRUME"] = (config.instrument, "instrument")
    prim["FILTER"] = (config.filter_name, "filter band")
    prim["EXPTIME"] = (float(config.exptime_s), "[s] exposure time")
    prim["DATE-OBS"] = (config.date_obs, "UTC start of the exposure")
    prim["MJD-OBS"] = (float(Time(config.date_obs, format="isot", scale="utc").mjd), "[d] MJD of DATE-OBS")
    prim["OBJECT"] = (config.object_name, "target name")
    prim["IMAGETYP"] = ("object", "image type")
    prim["RA"] = (float(np.mod(ra, 360.0)), "[deg] pointing right ascension (ICRS)")
    prim["DEC"] = (float(dec), "[deg] pointing declination (ICRS)")
    prim["EQUINOX"] = (2000.0, "equinox of RA, DEC")
    prim["EXPID"] = (int(config.seed), "exposure id")
    prim["COMMENT"] = f"SIMULATED by CalibWeb simulator seed={config.seed}"

    img = fits.Header()
    img["BUNIT"] = ("adu", "pixel unit")
    img["GAIN"] = (float(config.gain_e_per_adu), "[e-/adu] gain")
    img["RDNOISE"] = (float(config.read_noise_e), "[e-] read noise")
    img["SATURATE"] = (float(config.saturation_adu), "[adu] saturation level")
    img["LTV1"] = (float(-config.xy0[0]), "physical x = logical x - LTV1")
    img["LTV2"] = (float(-config.xy0[1]), "physical y = logical y - LTV2")
    img["LTM1_1"] = (1.0, "logical to physical scale")
    img["LTM2_2"] = (1.0, "logical to physical scale")
    img.extend(wcs_cards(wcs))
    return prim, img


def make_header(config: "SimConfig", wcs: WCS) -> fits.Header:
    """The merged header (primary then image cards) of a simulated exposure."""
    prim, img = header_cards(config, wcs)
    merged = prim.copy()
    merged.extend(img, update=True)
    return merged


def write_fits(
    sim: "SimulatedExposure",
    path: str | os.PathLike[str],
    *,
    hdu_layout: Literal["simple", "mef", "compressed"] = "simple",
    dtype: Literal["float32", ">f4", "float64", "int16"] = "float32",
    radec_format: Literal["degrees", "sexagesimal"] = "degrees",
    quantize_level: float = 16.0,
    overwrite: bool = True,
) -> Path:
    """Write a simulated exposure as a realistic FITS file.

    Parameters
    ----------
    sim : SimulatedExposure
        What to write (its image, header WCS and configuration).
    path : path-like
        Output file.
    hdu_layout : {"simple", "mef", "compressed"}
        ``simple``: the image in the primary HDU with every card. ``mef``: a
        data-less primary HDU with the observation cards and the image in
        extension ``SCI`` with detector and WCS cards. ``compressed``: as
        ``mef`` with a RICE_1 tile-compressed ``SCI`` extension.
    dtype : {"float32", ">f4", "float64", "int16"}
        Pixel type on disk (FITS is big-endian on disk whatever the choice;
        ``">f4"`` is accepted as an alias of ``float32``). ``int16`` rounds
        and clips to 0..65535 and writes BITPIX 16 with ``BZERO = 32768``.
    radec_format : {"degrees", "sexagesimal"}
        How RA/DEC pointing cards are written (``"hh:mm:ss.sss"``).
    quantize_level : float
        Float compression quantisation (``compressed`` with a float dtype);
        dithering is seeded from the simulation seed, so files are reproducible.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.
    """
    if hdu_layout not in ("simple", "mef", "compressed"):
        raise ValueError(f"hdu_layout must be simple, mef or compressed, not {hdu_layout!r}")
    image = sim.exposure.image
    if dtype in ("float32", ">f4"):
        data = image.astype(">f4")
    elif dtype == "float64":
        data = image.astype(">f8")
    elif dtype == "int16":
        data = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    else:
        raise ValueError(f"dtype must be float32, >f4, float64 or int16, not {dtype!r}")
    prim, img = header_cards(sim.config, sim.header_wcs)
    if dtype == "int16":
        img["SATURATE"] = min(float(img["SATURATE"]), 65535.0)
    if radec_format == "sexagesimal":
        prim["RA"] = (Angle(prim["RA"], "deg").to_string(unit="hourangle", sep=":", precision=3, pad=True),
                      "pointing right ascension (ICRS)")
        prim["DEC"] = (Angle(prim["DEC"], "deg").to_string(unit="deg", sep=":", precision=2, pad=True,
                                                           alwayssign=True), "pointing declination (ICRS)")
    elif radec_format != "degrees":
        raise ValueError(f"radec_format must be degrees or sexagesimal, not {radec_format!r}")

    if hdu_layout == "simple":
        header = prim.copy()
        header.extend(img, update=True)
        hdul = fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    else:
        primary = fits.PrimaryHDU(header=prim)
        if hdu_layout == "mef":
            ext: fits.ImageHDU | fits.CompImageHDU = fits.ImageHDU(data=data, header=img, name="SCI")
        else:
            ext = fits.CompImageHDU(
                data=data, header=img, name="SCI", compression_type="RICE_1",
                quantize_level=quantize_level, dither_seed=1 + zlib.crc32(str(sim.config.seed).encode()) % 10000,
            )
        hdul = fits.HDUList([primary, ext])
    out = Path(path)
    hdul.writeto(out, overwrite=overwrite)
    return out
