"""calibration.io: reading FITS exposures and header facts, writing calexps."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from calibration.errors import BadExposureError
from calibration.exposure import Exposure, ExposureInfo, MaskPlane, make_exposure
from calibration.io import (
    INSTRUMENT_MAPS, ExposureFacts, header_cards, normalise_filter_name, read_exposure,
    read_header_facts, write_exposure, write_hdulist,
)

SHAPE = (40, 50)  # (ny, nx)
MJD_20240102_030405_6 = 60311.0 + (3 * 3600 + 4 * 60 + 5.6) / 86400.0


def _image(seed: int = 1, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 5.0, shape).astype(np.float32)


def _write(path: Path, *hdus: fits.hdu.base._BaseHDU) -> Path:
    fits.HDUList(list(hdus)).writeto(path)
    return path


def _simple(tmp_path: Path, data: np.ndarray | None = None, name: str = "img.fits", **cards: object) -> Path:
    hdu = fits.PrimaryHDU(_image() if data is None else data)
    for key, value in {"DATE-OBS": "2024-01-02T03:04:05.6", "FILTER": "r", **cards}.items():
        hdu.header[key] = value
    return _write(tmp_path / name, hdu)


def _table(name: str | None = None) -> fits.BinTableHDU:
    return fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(3.0))], name=name)


def _tan_wcs(*, sip: bool = False) -> WCS:
    header = fits.Header()
    suffix = "-SIP" if sip else ""
    header.update({"CTYPE1": "RA---TAN" + suffix, "CTYPE2": "DEC--TAN" + suffix,
                   "CRPIX1": 25.5, "CRPIX2": 20.5, "CRVAL1": 359.99, "CRVAL2": -30.0,
                   "CD1_1": -7.3e-5, "CD1_2": 2e-6, "CD2_1": 1.5e-6, "CD2_2": 7.3e-5, "RADESYS": "ICRS"})
    if sip:
        header.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": 2e-5, "A_1_1": -3e-6, "B_0_2": 1e-5})
    return WCS(header, relax=True)


def _grid(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    ny, nx = shape
    return np.array([[0.0, 0.0], [nx - 1.0, 0.0], [0.0, ny - 1.0], [nx - 1.0, ny - 1.0], [12.3, 7.9]])


def _assert_same_sky(a: WCS, b: WCS) -> None:
    wa, wb = a.all_pix2world(_grid(), 0), b.all_pix2world(_grid(), 0)
    dra = (wa[:, 0] - wb[:, 0] + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(dra * np.cos(np.radians(wa[:, 1])))) < 1e-9
    assert np.max(np.abs(wa[:, 1] - wb[:, 1])) < 1e-9


# ------------------------------------------------------------------ layouts
def test_simple_file_gives_native_float32_and_defaults(tmp_path):
    data = _image()
    exp = read_exposure(_simple(tmp_path, data))
    assert exp.image.dtype == np.dtype(np.float32) and exp.image.dtype.isnative
    np.testing.assert_array_equal(exp.image, data)
    assert exp.shape == SHAPE and exp.xy0 == (0, 0) and exp.wcs is None
    assert (exp.info.gain_e_per_adu, exp.info.read_noise_e, exp.info.saturation_adu) == (1.0, 0.0, None)
    assert exp.info.filter_name == "r" and exp.header["FILTER"] == "r"
    assert not exp.mask.any()


def test_mef_first_2d_image_and_choice_by_index_and_name(tmp_path):
    primary = fits.PrimaryHDU()
    primary.header.update({"INSTRUME": "Generic", "FILTER": "g", "OBJECT": "M31", "DATE-OBS": "2024-01-02"})
    table = _table("CAT")
    sci = fits.ImageHDU(_image(1), name="SCI")
    sci.header["FILTER"] = "i"  # the image HDU wins over the primary
    err = fits.ImageHDU(_image(2), name="ERR")
    path = _write(tmp_path / "mef.fits", primary, table, sci, err)
    first = read_exposure(path)
    np.testing.assert_array_equal(first.image, _image(1))
    assert first.info.filter_name == "i" and first.info.object_name == "M31"
    assert first.header["INSTRUME"] == "Generic" and first.header["EXTNAME"] == "SCI"
    for choice in (3, "err", "ERR", "3"):
        np.testing.assert_array_equal(read_exposure(path, hdu=choice).image, _image(2))
    facts = read_header_facts(path, hdu="ERR")
    assert (facts.hdu_index, facts.hdu_name, facts.nx, facts.ny, facts.bitpix) == (3, "ERR", 50, 40, -32)


@pytest.mark.parametrize(("choice", "words"), [(7, ["HDU 7 does not exist", "[2] SCI"]),
                                               ("NOPE", ["no HDU named 'NOPE'", "[1] CAT"]),
                                               (1, ["not an image", "BinTableHDU"]),
                                               (0, ["has no data", "[2] SCI"])])
def test_missing_or_unusable_hdu_lists_the_hdus(tmp_path, choice, words):
    sci = fits.ImageHDU(_image(), name="SCI")
    path = _write(tmp_path / "mef.fits", fits.PrimaryHDU(), _table("CAT"), sci)
    with pytest.raises(BadExposureError) as err:
        read_exposure(path, hdu=choice)
    assert err.value.stage == "read" and all(w in err.value.message for w in words)
    assert len(err.value.figures["hdus"]) == 3


def test_tile_compressed_image(tmp_path):
    data = np.random.default_rng(3).integers(-1000, 30000, SHAPE).astype(np.int16)
    path = _write(tmp_path / "c.fits.fz", fits.PrimaryHDU(), fits.CompImageHDU(data, name="SCI"))
    exp = read_exposure(path)
    np.testing.assert_array_equal(exp.image, data.astype(np.float32))
    facts = read_header_facts(path, require_date=False, require_filter=False)
    assert (facts.hdu_index, facts.hdu_name, facts.bitpix) == (1, "SCI", 16)


def test_unsigned_int16_with_bzero_and_scaled_int16(tmp_path):
    data = np.random.default_rng(4).integers(0, 65535, SHAPE).astype(np.uint16)
    path = _simple(tmp_path, data)
    with fits.open(path) as hdul:
        assert hdul[0].header["BITPIX"] == 16 and hdul[0].header["BZERO"] == 32768
    np.testing.assert_array_equal(read_exposure(path).image, data.astype(np.float32))
    values = (10.0 + 2.0 * np.random.default_rng(5).integers(-100, 100, SHAPE)).astype(np.float32)
    hdu = fits.PrimaryHDU(values.copy())
    hdu.scale("int16", bscale=2.0, bzero=10.0)
    np.testing.assert_array_equal(read_exposure(_write(tmp_path / "s.fits", hdu)).image, values)


def test_big_endian_float_becomes_native(tmp_path):
    data = _image().astype(">f4")
    exp = read_exposure(_simple(tmp_path, data))
    assert exp.image.dtype.isnative and exp.variance.dtype.isnative
    np.testing.assert_array_equal(exp.image, data.astype(np.float32))


def test_degenerate_axis_is_squeezed(tmp_path):
    exp = read_exposure(_simple(tmp_path, _image()[np.newaxis]))
    assert exp.shape == SHAPE


# ------------------------------------------------------------- pixel meaning
def test_non_finite_pixels_are_no_data(tmp_path):
    data = _image()
    data[3, 4], data[10, 20], data[0, 0] = np.nan, np.inf, -np.inf
    exp = read_exposure(_simple(tmp_path, data))
    bad = exp.mask & MaskPlane.NO_DATA != 0
    assert bad.sum() == 3 and bad[3, 4] and bad[10, 20] and bad[0, 0]
    assert np.all(np.isfinite(exp.image)) and exp.image[3, 4] == 0


def test_integer_blank_is_no_data(tmp_path):
    data = np.full(SHAPE, 500, np.int16)
    data[5, 6] = -32768
    path = _simple(tmp_path, data, BLANK=-32768)
    exp = read_exposure(path)
    assert exp.mask[5, 6] & MaskPlane.NO_DATA and exp.mask.sum() == MaskPlane.NO_DATA


def test_saturate_card_sets_sat_and_keyword_overrides(tmp_path):
    data = np.full(SHAPE, 100.0, np.float32)
    data[7, 8], data[9, 9] = 1000.0, 2000.0
    path = _simple(tmp_path, data, SATURATE=1000.0)
    exp = read_exposure(path)
    assert exp.info.saturation_adu == 1000.0
    assert set(zip(*np.nonzero(exp.mask & MaskPlane.SAT))) == {(7, 8), (9, 9)}
    assert set(zip(*np.nonzero(read_exposure(path, saturation_adu=1500.0).mask & MaskPlane.SAT))) == {(9, 9)}


def test_variance_from_gain_and_read_noise(tmp_path):
    data = np.full(SHAPE, 100.0, np.float32)
    data[0, 0] = -10.0
    path = _simple(tmp_path, data, GAIN=2.0, RDNOISE=5.0)
    exp = read_exposure(path)
    assert exp.variance[1, 1] == pytest.approx(100.0 / 2.0 + (5.0 / 2.0) ** 2, rel=1e-7)
    assert exp.variance[0, 0] == pytest.approx((5.0 / 2.0) ** 2, rel=1e-7)  # negative pixel: read noise only
    override = read_exposure(path, gain_e_per_adu=4.0, read_noise_e=8.0)
    assert override.variance[1, 1] == pytest.approx(25.0 + 4.0, rel=1e-7)
    with pytest.raises(BadExposureError, match="gain_e_per_adu must be a positive number"):
        read_exposure(path, gain_e_per_adu=0.0)


# --------------------------------------------------------------- WCS and xy0
@pytest.mark.parametrize("sip", [False, True])
def test_wcs_tan_and_sip_map_zero_based_pixels(tmp_path, sip):
    truth = _tan_wcs(sip=sip)
    hdu = fits.PrimaryHDU(_image(), header=truth.to_header(relax=True))
    hdu.header.update({"DATE-OBS": "2024-01-02T03:04:05.6", "FILTER": "r"})
    exp = read_exposure(_write(tmp_path / "w.fits", hdu))
    assert exp.wcs is not None and (exp.wcs.sip is not None) == sip
    _assert_same_sky(exp.wcs, truth)
    # CRPIX is 1-based: the reference pixel is at 0-based (CRPIX - 1)
    ra, dec = exp.wcs.all_pix2world([[24.5, 19.5]], 0)[0]
    assert (ra, dec) == pytest.approx((359.99, -30.0), abs=1e-12)
    facts = read_header_facts(tmp_path / "w.fits")
    centre = truth.all_pix2world([[24.5, 19.5]], 0)[0]
    assert facts.has_wcs and (facts.ra_deg, facts.dec_deg) == pytest.approx(tuple(centre), abs=1e-9)


def test_header_without_celestial_wcs_gives_none(tmp_path):
    path = _simple(tmp_path, CTYPE1="LINEAR", CTYPE2="LINEAR", CRPIX1=1.0, CRVAL1=0.0)
    assert read_exposure(path).wcs is None
    assert not read_header_facts(path).has_wcs


def test_unusable_wcs_is_none_with_a_warning(tmp_path):
    path = _simple(tmp_path, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CD1_1=0.0, CD2_2=0.0, CD1_2=0.0, CD2_1=0.0)
    assert read_exposure(path).wcs is None
    facts = read_header_facts(path)
    assert not facts.has_wcs and any("WCS" in w for w in facts.warnings)


def test_xy0_from_ltv(tmp_path):
    assert read_exposure(_simple(tmp_path, LTV1=-100.0, LTV2=-50)).xy0 == (100, 50)


# ------------------------------------------------------- metadata from header
@pytest.mark.parametrize(("cards", "date", "mjd"), [
    ({"DATE-OBS": "2024-01-02T03:04:05.6"}, "2024-01-02T03:04:05.600", MJD_20240102_030405_6),
    ({"DATE-OBS": "2024-01-02T03:04:05.6Z"}, "2024-01-02T03:04:05.600", MJD_20240102_030405_6),
    ({"DATE-OBS": "2024-01-02", "TIME-OBS": "03:04:05.6"}, "2024-01-02T03:04:05.600", MJD_20240102_030405_6),
    ({"DATE-OBS": "2024-01-02", "UT": "03:04:05.6"}, "2024-01-02T03:04:05.600", MJD_20240102_030405_6),
    ({"DATE-OBS": "02/01/98"}, "1998-01-02T00:00:00.000", 50815.0),
    ({"MJD-OBS": MJD_20240102_030405_6}, "2024-01-02T03:04:05.600", MJD_20240102_030405_6),
    ({"DATE-OBS": "2024-01-02T03:04:05.6", "MJD-OBS": 60311.5}, "2024-01-02T03:04:05.600", 60311.5),
    ({"DATE-OBS": "2024-01-02T03:04:42.6", "TIMESYS": "TAI"},  # TAI - UTC = 37 s in 2024
     "2024-01-02T03:04:05.600", MJD_20240102_030405_6),
])
def test_observation_date_formats(tmp_path, cards, date, mjd):
    hdu = fits.PrimaryHDU(_image())
    hdu.header.update({"FILTER": "r", **cards})
    info = read_exposure(_write(tmp_path / "d.fits", hdu)).info
    assert info.date_obs == date
    assert abs(info.mjd_obs - mjd) < 1e-8


@pytest.mark.parametrize(("raw", "band"), [
    ("r DECam SDSS c0002 6415.0 1480.0", "r"), ("Y DECam c0005 10095.0 1130.0", "Y"),
    ("HSC-R2", "r"), ("HSC-I", "i"), ("HSC-NB0921", "NB0921"), ("ZTF_g", "g"), ("SDSS r'", "r"),
    ("i'", "i"), ("  V  ", "V"), ("Johnson V", "V"), ("Bessell R", "R"), ("", None), ("UNKNOWN", None),
])
def test_filter_normalisation(raw, band):
    assert normalise_filter_name(raw) == band
    assert band is None or normalise_filter_name(band) == band  # idempotent


def test_decam_keyword_map(tmp_path):
    path = _simple(tmp_path, INSTRUME="DECam", FILTER="g DECam SDSS c0001 4720.0 1520.0", EXPTIME=90.0,
                   GAINA=4.0, GAINB=4.2, RDNOISEA=6.0, SATURATA=40000.0, EXPNUM=123456)
    info = read_exposure(path).info
    assert info == ExposureInfo(
        instrument="DECam", filter_name="g", exptime_s=90.0, date_obs="2024-01-02T03:04:05.600",
        mjd_obs=pytest.approx(MJD_20240102_030405_6), gain_e_per_adu=4.0, read_noise_e=6.0,
        saturation_adu=40000.0, exposure_id=123456)


def test_hsc_ztf_and_explicit_maps(tmp_path):
    hsc = read_exposure(_simple(tmp_path, name="h.fits", INSTRUME="Hyper Suprime-Cam", FILTER01="HSC-R2",
                                **{"EXP-ID": "HSCE00012345", "T_GAIN1": 3.0})).info
    assert (hsc.filter_name, hsc.gain_e_per_adu, hsc.exposure_id) == ("r", 3.0, 12345)
    ztf_path = _simple(tmp_path, name="z.fits", INSTRUME="ZTF/MOSAIC", FILTER="ZTF_i", READNOI=8.0, EXPID=42)
    ztf = read_exposure(ztf_path).info
    assert (ztf.instrument, ztf.filter_name, ztf.read_noise_e) == ("ZTF/MOSAIC", "i", 8.0)
    assert ztf.exposure_id == 42
    assert read_exposure(ztf_path, instrument_map="generic").info.read_noise_e == 8.0
    assert {"generic", "DECam", "HSC", "ZTF", "SDSS"} <= set(INSTRUMENT_MAPS)
    with pytest.raises(BadExposureError, match="unknown instrument map 'Keck'"):
        read_exposure(ztf_path, instrument_map="Keck")


def test_exposure_id_hash_is_stable_and_header_dependent(tmp_path):
    a = _simple(tmp_path, name="a.fits", OBJECT="one")
    b = _simple(tmp_path, name="b.fits", OBJECT="two")
    ids = [read_exposure(p).info.exposure_id for p in (a, a, b)]
    assert ids[0] == ids[1] != ids[2] and ids[0] > 0


# --------------------------------------------------------------- bad inputs
def _chop(tmp_path: Path) -> Path:
    whole = _simple(tmp_path, name="whole.fits").read_bytes()
    path = tmp_path / "chopped.fits"
    path.write_bytes(whole[: len(whole) - 4000])
    return path


def _empty_file(tmp_path: Path) -> Path:
    (tmp_path / "e.fits").write_bytes(b"")
    return tmp_path / "e.fits"


def _text_file(tmp_path: Path) -> Path:
    (tmp_path / "n.fits").write_text("hello, not a FITS file\n" * 200)
    return tmp_path / "n.fits"


def _empty_primary_only(tmp_path: Path) -> Path:
    return _write(tmp_path / "nodata.fits", fits.PrimaryHDU())


def _table_only(tmp_path: Path) -> Path:
    return _write(tmp_path / "table.fits", fits.PrimaryHDU(), _table())


BAD_FILES = {
    "missing": (lambda t: t / "nope.fits", ["does not exist"]),
    "directory": (lambda t: t, ["does not exist or is not a file"]),
    "empty": (_empty_file, ["empty", "0 bytes"]),
    "not fits": (_text_file, ["not a readable FITS file"]),
    "truncated": (_chop, ["truncated", "bytes"]),
    "no image": (_table_only, ["no HDU with image data", "BinTableHDU"]),
    "no data": (_empty_primary_only, ["no HDU with image data", "no data"]),
    "cube": (lambda t: _simple(t, _image(shape=(3, 20, 20))), ["cube", "(3, 20, 20)"]),
    "1-D": (lambda t: _simple(t, _image(shape=(100,))), ["1-D", "(100,)"]),
    "small": (lambda t: _simple(t, _image(shape=(4, 5))), ["5 x 4", "at least 8 x 8"]),
    "all NaN": (lambda t: _simple(t, np.full(SHAPE, np.nan, np.float32)), ["NaN", "every pixel"]),
}


@pytest.mark.parametrize("reader", [read_exposure, read_header_facts])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_inputs_raise_bad_exposure_error(tmp_path, reader, case):
    make, words = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(BadExposureError) as err:
        reader(path)
    assert err.value.stage == "read"
    assert all(w in err.value.message for w in words), err.value.message
    json.dumps(err.value.to_dict())


def test_truncated_compressed_file(tmp_path):
    data = np.random.default_rng(6).integers(0, 30000, (200, 200)).astype(np.int32)
    whole = _write(tmp_path / "w.fits.fz", fits.PrimaryHDU(), fits.CompImageHDU(data)).read_bytes()
    (tmp_path / "t.fits.fz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadExposureError, match="truncated") as err:
        read_exposure(tmp_path / "t.fits.fz")
    assert err.value.stage == "read"


# ------------------------------------------------------------- header facts
def test_header_facts_fields_and_cards(tmp_path):
    path = _simple(tmp_path, INSTRUME="DECam", FILTER="r DECam SDSS c0002 6415.0 1480.0", EXPTIME=30.0,
                   RA="10:00:24.0", DEC="-02:30:00", **{"HIERARCH LONG KEY": 1.5})
    facts = read_header_facts(path)
    assert isinstance(facts, ExposureFacts)
    assert (facts.instrument, facts.filter_name, facts.exptime_s) == ("DECam", "r", 30.0)
    assert facts.date_obs == "2024-01-02T03:04:05.600"
    assert abs(facts.mjd_obs - MJD_20240102_030405_6) < 1e-8
    assert (facts.nx, facts.ny, facts.bitpix, facts.has_wcs) == (50, 40, -32, False)
    assert facts.ra_deg == pytest.approx(150.1, abs=1e-9) and facts.dec_deg == pytest.approx(-2.5, abs=1e-9)
    cards = {key: value for key, value, _ in facts.cards}
    assert cards["SIMPLE"] == "T" and cards["EXPTIME"] == "30.0" and cards["LONG KEY"] == "1.5"
    assert facts.warnings == ()
    assert json.loads(json.dumps(facts.to_dict()))["cards"][0][0] == "SIMPLE"


@pytest.mark.parametrize(("cards", "radec"), [
    ({"RA": 150.25, "DEC": -2.5}, (150.25, -2.5)),
    ({"OBJRA": "150.25", "OBJDEC": "+02.5"}, (150.25, 2.5)),
    ({"OBJCTRA": "12 34 56.7", "OBJCTDEC": "-05 06 07.8"}, (188.73625, -5.1021666667)),
    ({"RA": "bogus", "DEC": "x", "OBJRA": "01:00:00", "OBJDEC": "10:00:00"}, (15.0, 10.0)),
    ({}, (None, None)),
])
def test_header_facts_pointing_from_cards(tmp_path, cards, radec):
    facts = read_header_facts(_simple(tmp_path, **cards))
    if radec[0] is None:
        assert (facts.ra_deg, facts.dec_deg) == radec
    else:
        assert (facts.ra_deg, facts.dec_deg) == pytest.approx(radec, abs=1e-9)


def test_header_facts_requires_date_and_filter(tmp_path):
    hdu = fits.PrimaryHDU(_image())
    path = _write(tmp_path / "bare.fits", hdu)
    with pytest.raises(BadExposureError) as err:
        read_header_facts(path)
    assert "has no observation date: add DATE-OBS (ISO 8601, UTC) or MJD-OBS" in err.value.message
    hdu.header["DATE-OBS"] = "2024-01-02"
    _write(tmp_path / "dated.fits", hdu)
    with pytest.raises(BadExposureError) as err:
        read_header_facts(tmp_path / "dated.fits")
    assert "no filter" in err.value.message and "FILTER, BAND" in err.value.message
    facts = read_header_facts(path, require_date=False, require_filter=False)
    assert facts.date_obs is None and facts.filter_name is None
    assert any("observation date" in w for w in facts.warnings) and any("filter" in w for w in facts.warnings)


@pytest.mark.parametrize("value", ["2024-13-45T00:00:00", "yesterday", "2024/01/02"])
def test_malformed_date_names_the_value(tmp_path, value):
    path = _simple(tmp_path, **{"DATE-OBS": value})
    with pytest.raises(BadExposureError) as err:
        read_header_facts(path)
    assert repr(value) in err.value.message and err.value.figures["value"] == value
    assert read_exposure(path).info.date_obs is None  # tolerated when calibrating
    assert any(value in w for w in read_header_facts(path, require_date=False).warnings)


def test_header_cards_strings():
    header = fits.Header([("FLAG", True, "a flag"), ("N", 3), ("X", 1.5), ("S", "text")])
    header["U"] = (None, "undefined")
    header.add_comment("a comment")
    assert header_cards(header) == [("FLAG", "T", "a flag"), ("N", "3", ""), ("X", "1.5", ""),
                                    ("S", "text", ""), ("U", "", "undefined"), ("COMMENT", "a comment", "")]


# ---------------------------------------------------------------- write/read
def _calexp() -> Exposure:
    data = _image(7)
    data[2, 3] = np.nan
    info = ExposureInfo(
        instrument="DECam", filter_name="z", exptime_s=45.0, date_obs="2023-05-06T07:08:09.123",
        mjd_obs=60070.297327812, gain_e_per_adu=3.5, read_noise_e=7.25, saturation_adu=130.0,
        exposure_id=987654, object_name="field 7")
    exp = make_exposure(data, wcs=_tan_wcs(sip=True), info=info, xy0=(123, 45))
    exp.mask[5, 5] |= MaskPlane.CR | MaskPlane.DETECTED
    exp.metadata.update({"MAGZERO": 27.125, "MAGZERO_RMS": 0.0125, "NMATCH": np.int64(57), "NANVAL": math.nan,
                         "FITOK": True, "NOTE": "fit fine", "LIST": [1, 2], "ARRAY": np.zeros(3)})
    return exp


def test_write_read_round_trip(tmp_path):
    exp = _calexp()
    path = tmp_path / "calexp.fits"
    write_exposure(exp, path)
    back = read_exposure(path)
    np.testing.assert_array_equal(back.image, exp.image)
    np.testing.assert_array_equal(back.mask, exp.mask)
    np.testing.assert_array_equal(back.variance, exp.variance)
    assert back.info == exp.info and back.xy0 == (123, 45)
    _assert_same_sky(back.wcs, exp.wcs)
    assert back.wcs.sip is not None
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert hdul["MASK"].data.dtype == np.dtype(">i2") and hdul["IMAGE"].data.dtype == np.dtype(">f4")
        assert hdul["MASK"].header["MP_SAT"] == 1 and hdul["MASK"].header["MP_SKY_SOURCE"] == 7
        assert hdul["VARIANCE"].header["LTV1"] == -123 and hdul["VARIANCE"].header["CTYPE1"] == "RA---TAN-SIP"
        primary = hdul[0].header
        assert (primary["MAGZERO"], primary["MAGZERO_RMS"], primary["NMATCH"]) == (27.125, 0.0125, 57)
        assert primary["FITOK"] is True and primary["NOTE"] == "fit fine"
        assert primary["NANVAL"] is None and primary.comments["NANVAL"] == "NaN"
        assert "LIST" not in primary and "ARRAY" not in primary
        assert primary["FILTER"] == "z" and primary["EXPTIME"] == 45.0 and primary["TIMESYS"] == "UTC"
    with pytest.raises(FileExistsError):
        write_exposure(exp, path, overwrite=False)


def test_calexp_is_the_file_astropy_writes_and_planes_stay_untouched(tmp_path, monkeypatch):
    exp = _calexp()
    image, variance = exp.image.copy(), exp.variance.copy()
    write_exposure(exp, tmp_path / "fast.fits")
    assert exp.image.dtype.isnative and np.array_equal(exp.image, image) and np.array_equal(exp.variance, variance)
    monkeypatch.setattr("calibration.io._plain_images", lambda hdul, path: False)  # astropy's writeto
    write_exposure(exp, tmp_path / "astropy.fits")
    assert (tmp_path / "fast.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()


def _hdus(data: np.ndarray) -> fits.HDUList:
    primary = fits.PrimaryHDU()
    primary.header.update({"OBSERVER": "me", "HIERARCH LONG_KEYWORD": 1.5})
    image = fits.ImageHDU(data, name="SCI")
    image.header["BUNIT"] = "adu"
    return fits.HDUList([primary, image, fits.ImageHDU(data[:1], name="ROW")])


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<i2", "<i4", ">i4", "<i8", "u1"])
@pytest.mark.parametrize("layout", ["c", "3d", "strided", "fortran"])
def test_write_hdulist_writes_astropys_bytes(tmp_path, monkeypatch, dtype, layout):
    monkeypatch.setattr("calibration.io._CHUNK_BYTES", 1000)  # several blocks, the last one partial
    data = (np.random.default_rng(3).normal(0, 50, (37, 53)) + 100).astype(dtype)
    data = {"c": data, "3d": data[:36].reshape(4, 9, 53), "strided": data[::2, 1::3],
            "fortran": np.asfortranarray(data)}[layout]
    before = data.copy()
    write_hdulist(_hdus(data), tmp_path / "fast.fits")
    _hdus(data).writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "fast.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    assert data.dtype == before.dtype and np.array_equal(data, before)


@pytest.mark.parametrize("make", [
    lambda: fits.HDUList([fits.PrimaryHDU(np.arange(12, dtype=np.uint16).reshape(3, 4))]),  # BZERO
    lambda: fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 3), np.float32)),
                          fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(2))])]),
    lambda: fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((0, 3), np.float32))]),
    lambda: fits.HDUList([fits.PrimaryHDU()]),
])
def test_write_hdulist_other_lists_are_astropys_too(tmp_path, make):
    write_hdulist(make(), tmp_path / "fast.fits")
    make().writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "fast.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()


def test_write_hdulist_verifies_and_fixes_as_astropy_does(tmp_path):
    def make() -> fits.HDUList:
        primary = fits.PrimaryHDU()
        primary.header.append(fits.Card.fromstring("observer= 'me'"))  # lower case: fixed by silentfix
        return fits.HDUList([primary, fits.ImageHDU(np.ones((4, 5), np.float32))])

    write_hdulist(make(), tmp_path / "fast.fits", output_verify="silentfix+ignore")
    make().writeto(tmp_path / "astropy.fits", output_verify="silentfix+ignore")
    assert (tmp_path / "fast.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    with pytest.raises(fits.VerifyError):
        write_hdulist(make(), tmp_path / "strict.fits")
    with pytest.raises(OSError, match="exists"):
        write_hdulist(make(), tmp_path / "fast.fits", overwrite=False, output_verify="silentfix")


def test_instrument_file_round_trip_keeps_info_and_cards(tmp_path):
    truth = _tan_wcs()
    hdu = fits.PrimaryHDU(_image(), header=truth.to_header())
    hdu.header.update({"INSTRUME": "SDSS", "FILTER": "r", "DATE-OBS": "2001-09-23", "TAIHMS": "06:39:02.29",
                       "GAINA": 9.0, "SATURATA": 5000.0, "CAMCOL": 3, "LTV1": -10, "LTV2": -20})
    first = read_exposure(_write(tmp_path / "in.fits", hdu))
    assert first.info.date_obs == "2001-09-23T06:38:30.290"  # TAI - 32 s
    first.info.exptime_s = None  # removed fields stay removed
    write_exposure(first, tmp_path / "out.fits")
    back = read_exposure(tmp_path / "out.fits")
    assert back.info == first.info and back.xy0 == (10, 20)
    assert back.header["CAMCOL"] == 3 and back.header["TAIHMS"] == "06:39:02.29"
    np.testing.assert_array_equal(back.variance, first.variance)


def test_calexp_mask_planes_are_remapped_by_name(tmp_path):
    mask = np.zeros(SHAPE, np.int32)
    mask[1, 1], mask[2, 2], mask[3, 3] = 1 << 5, 1 << 0, 1 << 9
    mask_hdu = fits.ImageHDU(mask, name="MASK")
    mask_hdu.header.update({"MP_SAT": 5, "MP_BAD": 0, "HIERARCH MP_STREAK": 9})
    path = _write(tmp_path / "lsst.fits", fits.PrimaryHDU(), fits.ImageHDU(_image(), name="IMAGE"), mask_hdu,
                  fits.ImageHDU(np.ones(SHAPE, np.float32), name="VARIANCE"))
    exp = read_exposure(path)
    assert exp.mask[1, 1] == MaskPlane.SAT and exp.mask[2, 2] == MaskPlane.BAD
    assert exp.mask[3, 3] == 0 and np.all(exp.variance == 1.0)


def test_header_problems_become_facts_warnings_not_python_warnings(tmp_path):
    raw = bytearray(_simple(tmp_path, OBSERVER="abc").read_bytes())
    start = raw.find(b"OBSERVER")
    raw[start:start + 80] = b"observer= 'abc'".ljust(80)  # lower-case keyword
    start = raw.find(b"FILTER  ")
    raw[start:start + 80] = b"FILTER  = 'r".ljust(80)  # unterminated string
    path = tmp_path / "sloppy.fits"
    path.write_bytes(bytes(raw) + b"\0" * 100)  # and trailing padding
    facts = read_header_facts(path)
    assert facts.filter_name == "r"
    text = " | ".join(facts.warnings)
    assert "OBSERVER" in text and "FILTER" in text and "padding" in text
    assert read_exposure(path).info.filter_name == "r"


def test_gzip_file_and_date_mjd_disagreement_warning(tmp_path):
    plain = _simple(tmp_path, **{"MJD-OBS": MJD_20240102_030405_6 + 10.0 / 86400.0})
    packed = tmp_path / "img.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_exposure(packed).image, _image())
    facts = read_header_facts(packed)
    assert any("differ by 10.0 s" in w for w in facts.warnings)
