"""Reference catalogues: HATS ingest and footprint loads, column conventions, proper motion.

Truth: catalogues drawn from a seed in spherical caps (one across RA = 0/360,
one over the north pole); the rows a footprint must return are found with
astropy's own separations and WCS, independently of the loader.
"""

from __future__ import annotations

import functools
import http.server
import math
import threading
from pathlib import Path

import numpy as np
import hats
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.wcs import WCS

from calibration.errors import ConfigError, ReferenceCatalogError
from calibration.refcat import (
    ImageFootprint,
    SkyFootprint,
    cut_to_footprint,
    ingest_reference_catalog,
    load_reference_catalog,
    propagate_proper_motion,
)
from calibration.refcat_columns import (
    AB_NJY_ZERO_POINT_MAG,
    GAIA_ZERO_POINT_ERR_MAG,
    column_map_from_json,
    detect_column_map,
    jyear_to_mjd,
    parse_epoch_mjd,
)
from calibration.refcat_hats import HatsWriteConfig, assign_partitions, clear_cache, open_hats_catalog
from calibration.tables import write_table



MAX_ROWS = 250
MAS = 1.0 / 3.6e6  # deg


def _cap(rng: np.random.Generator, n: int, ra0: float, dec0: float, radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points in a spherical cap, built about the pole and rotated onto (ra0, dec0)."""
    cos_t = rng.uniform(math.cos(math.radians(radius_deg)), 1.0, n)
    phi = rng.uniform(0.0, 2 * math.pi, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    v = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])
    a, d = math.radians(ra0), math.radians(dec0)
    # Rotate the pole onto (a, d): about y by (90 - dec0), then about z by ra0.
    t = math.pi / 2 - d
    ry = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    x, y, z = rz @ ry @ v
    return np.degrees(np.arctan2(y, x)) % 360.0, np.degrees(np.arcsin(np.clip(z, -1, 1)))


@pytest.fixture(scope="module")
def truth() -> Table:
    """6000 stars: 3500 in a 3 deg cap across RA = 0/360, 2500 in a 3 deg cap over the pole."""
    rng = np.random.default_rng(20240611)
    ra1, dec1 = _cap(rng, 3500, 0.3, 10.0, 3.0)
    ra2, dec2 = _cap(rng, 2500, 40.0, 88.5, 3.0)
    n = ra1.size + ra2.size
    t = Table()
    t["id"] = np.arange(1, n + 1, dtype=np.int64)
    t["ra"] = np.concatenate([ra1, ra2])
    t["dec"] = np.concatenate([dec1, dec2])
    t["g_mag"] = rng.uniform(12.0, 20.0, n)
    t["g_magErr"] = rng.uniform(0.005, 0.05, n)
    t["r_mag"] = t["g_mag"] - rng.uniform(0.0, 1.0, n)
    t["r_magErr"] = rng.uniform(0.005, 0.05, n)
    return t


@pytest.fixture(scope="module")
def hats_cat(truth, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hats")
    write_table(truth, d / "truth.parquet")
    return ingest_reference_catalog(d / "truth.parquet", d, name="sim",
                                    config=HatsWriteConfig(max_rows_per_partition=MAX_ROWS))


def _truth_in_cone(truth: Table, fp: SkyFootprint) -> set[int]:
    sep = SkyCoord(truth["ra"], truth["dec"], unit="deg").separation(
        SkyCoord(fp.ra_deg, fp.dec_deg, unit="deg")).deg
    return set(np.asarray(truth["id"])[sep <= fp.radius_deg].tolist())


# ---------------------------------------------------------------------------
# ingest


def test_ingest_writes_a_valid_hats_catalogue(hats_cat, truth):
    from hats.io.validation import is_valid_catalog

    assert is_valid_catalog(hats_cat, strict=True)
    cat = hats.read_hats(hats_cat)
    assert cat.catalog_info.total_rows == len(truth)
    pixels = cat.get_healpix_pixels()
    assert len(pixels) > 10
    rows = []
    for pixel in pixels:
        part = cat.read_pixel_to_pandas(pixel)
        assert 0 < len(part) <= MAX_ROWS
        # every row lies in its partition's pixel
        np.testing.assert_array_equal(np.asarray(part["_healpix_29"]) >> (2 * (29 - pixel.order)), pixel.pixel)
        rows.append(np.asarray(part["id"]))
    assert sorted(np.concatenate(rows).tolist()) == truth["id"].tolist()


def test_assign_partitions_splits_only_full_pixels():
    rng = np.random.default_rng(3)
    from hats.pixel_math.spatial_index import compute_spatial_index

    ra, dec = _cap(rng, 5000, 120.0, -30.0, 2.0)
    h = np.sort(compute_spatial_index(ra, dec))
    order, pixel = assign_partitions(h, max_rows=400, lowest_order=0, highest_order=10)
    keys, counts = np.unique(np.stack([order, pixel]), axis=1, return_counts=True)
    assert counts.max() <= 400
    # a partition's parent held more than the limit (else it would not have been split)
    for o, p in keys.T:
        if o > 0:
            assert np.count_nonzero((h >> (2 * (29 - (o - 1)))) == (p >> 2)) > 400
    # no two partitions overlap: the order-29 ranges are disjoint
    lo = keys[1] << (2 * (29 - keys[0]))
    hi = (keys[1] + 1) << (2 * (29 - keys[0]))
    sort = np.argsort(lo)
    assert np.all(lo[sort][1:] >= hi[sort][:-1])


def test_ingest_refuses_to_overwrite_unless_asked(hats_cat, tmp_path):
    table = tmp_path / "t.csv"
    write_table(Table({"ra": [1.0, 2.0], "dec": [3.0, 4.0], "g_mag": [15.0, 16.0]}), table)
    with pytest.raises(ReferenceCatalogError, match="already exists"):
        ingest_reference_catalog(table, hats_cat.parent, name=hats_cat.name)
    out = ingest_reference_catalog(table, tmp_path, name="two")
    again = ingest_reference_catalog(table, tmp_path, name="two", overwrite=True)
    assert again == out and hats.read_hats(out).catalog_info.total_rows == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial directories left


# ---------------------------------------------------------------------------
# footprint loads


@pytest.mark.parametrize("fp", [
    SkyFootprint(359.8, 10.3, 0.4),   # straddles RA = 0/360
    SkyFootprint(123.0, 89.85, 0.5),  # contains the north pole
    SkyFootprint(1.5, 8.9, 0.2),      # an ordinary 0.2 deg field
], ids=["ra-wrap", "pole", "small"])
def test_footprint_load_returns_exactly_the_rows_inside(hats_cat, truth, fp):
    ref = load_reference_catalog(hats_cat, footprint=fp)
    expected = _truth_in_cone(truth, fp)
    assert expected, "test footprint must hold truth rows"
    assert set(np.asarray(ref.table["id"]).tolist()) == expected
    info = ref.load_info
    assert info["kind"] == "hats"
    assert 0 < info["partitions_read"] < info["partitions_total"] / 3
    assert info["rows_read"] < len(truth) / 5
    assert ref.bands == ("g", "r")
    # values travel unchanged
    by_id = {int(i): k for k, i in enumerate(truth["id"])}
    rows = [by_id[int(i)] for i in ref.table["id"]]
    np.testing.assert_array_equal(ref.table["ra"], truth["ra"][rows])
    np.testing.assert_array_equal(ref.table["g_magErr"], truth["g_magErr"][rows])


def test_image_footprint_with_margin(hats_cat, truth):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [0.05, 10.0]
    wcs.wcs.crpix = [150.5, 100.5]
    scale = 8.0 / 3600.0  # 8 arcsec/pixel: 40 x 27 arcmin
    wcs.wcs.cd = [[-scale * math.cos(0.3), scale * math.sin(0.3)], [scale * math.sin(0.3), scale * math.cos(0.3)]]
    shape, margin = (200, 300), 40.0
    ref = load_reference_catalog(hats_cat, footprint=(wcs, shape, margin))
    x, y = wcs.world_to_pixel(SkyCoord(truth["ra"], truth["dec"], unit="deg"))
    near = SkyCoord(truth["ra"], truth["dec"], unit="deg").separation(SkyCoord(0.05, 10.0, unit="deg")).deg < 1
    inside = near & (x > -margin) & (x < 299 + margin) & (y > -margin) & (y < 199 + margin)
    assert inside.sum() > 30
    assert sorted(np.asarray(ref.table["id"]).tolist()) == sorted(np.asarray(truth["id"])[inside].tolist())
    # the enclosing circle holds the image corners plus margin
    cone = ImageFootprint(wcs, shape, margin).cone()
    corners = wcs.pixel_to_world([-margin - 0.5, 299.5 + margin, 299.5 + margin, -margin - 0.5],
                                 [-margin - 0.5, -margin - 0.5, 199.5 + margin, 199.5 + margin])
    assert np.all(corners.separation(SkyCoord(cone.ra_deg, cone.dec_deg, unit="deg")).deg <= cone.radius_deg)
    # cut_to_footprint keeps its old behaviour on a plain table
    whole = load_reference_catalog(hats_cat)
    assert len(cut_to_footprint(whole, wcs, shape, margin_pix=margin).table) == inside.sum()


def test_second_load_reads_no_partition_again(hats_cat):
    from calibration.refcat_hats import _read_partition

    fp = SkyFootprint(0.7, 9.5, 0.3)
    clear_cache()
    first = load_reference_catalog(hats_cat, footprint=fp)
    misses = _read_partition.cache_info().misses
    second = load_reference_catalog(hats_cat, footprint=fp)  # e.g. photometric after astrometric
    assert _read_partition.cache_info().misses == misses
    assert first.table is not second.table
    np.testing.assert_array_equal(first.table["id"], second.table["id"])


def test_plain_table_is_read_whole_then_cut(truth, tmp_path):
    path = tmp_path / "ref.fits"
    write_table(truth, path)
    whole = load_reference_catalog(path)
    assert len(whole.table) == len(truth) and whole.load_info["kind"] == "table"
    fp = SkyFootprint(359.8, 10.3, 0.4)
    ref = load_reference_catalog(path, footprint=fp)
    assert set(np.asarray(ref.table["id"]).tolist()) == _truth_in_cone(truth, fp)


def test_remote_hats_url_is_read_lazily(hats_cat, truth):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(hats_cat.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{hats_cat.name}"
        fp = SkyFootprint(359.8, 10.3, 0.4)
        ref = load_reference_catalog(url, footprint=fp)
        assert set(np.asarray(ref.table["id"]).tolist()) == _truth_in_cone(truth, fp)
        assert ref.load_info["partitions_read"] < ref.load_info["partitions_total"]
        with pytest.raises(ReferenceCatalogError, match="footprint is needed"):
            load_reference_catalog(url)
    finally:
        server.shutdown()
        server.server_close()
        clear_cache()


# ---------------------------------------------------------------------------
# errors


def test_missing_path(tmp_path):
    with pytest.raises(ReferenceCatalogError, match="does not exist") as exc:
        load_reference_catalog(tmp_path / "nope.parquet")
    assert exc.value.stage == "refcat"


def test_no_overlap_names_footprint_and_coverage(hats_cat):
    with pytest.raises(ReferenceCatalogError, match="does not overlap") as exc:
        load_reference_catalog(hats_cat, footprint=SkyFootprint(180.0, -45.0, 0.2))
    fig = exc.value.figures
    assert fig["footprint_ra_deg"] == 180.0 and fig["footprint_radius_deg"] == 0.2
    assert fig["catalogue_partitions"] > 10
    assert fig["nearest_partition_centre_deg"] > 40
    assert exc.value.to_dict()["stage"] == "refcat"


def test_footprint_in_a_gap_of_a_plain_table(truth, tmp_path):
    path = tmp_path / "ref.csv"
    write_table(truth, path)
    with pytest.raises(ReferenceCatalogError, match="no object within the footprint") as exc:
        load_reference_catalog(path, footprint=SkyFootprint(90.0, 0.0, 0.1))
    assert exc.value.figures["nearest_object_deg"] > 80


def test_unreadable_url():
    with socket_closed_port() as port:
        with pytest.raises(ReferenceCatalogError, match="cannot read the HATS catalogue at URL") as exc:
            load_reference_catalog(f"http://127.0.0.1:{port}/gaia_dr3", footprint=SkyFootprint(10, 10, 0.1))
    assert exc.value.figures["location"].startswith("http://127.0.0.1")


def socket_closed_port():
    """A context giving a loopback port that nothing listens on."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def _port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        yield port

    return _port()


def test_unknown_columns_list_found_and_expected(tmp_path):
    path = tmp_path / "odd.csv"
    write_table(Table({"RA_ICRS": [1.0], "DE_ICRS": [2.0], "gmag": [15.0]}), path)
    with pytest.raises(ReferenceCatalogError, match="RA_ICRS, DE_ICRS, gmag") as exc:
        load_reference_catalog(path)
    assert "coord_ra" in exc.value.figures["expected"]
    with pytest.raises(ReferenceCatalogError, match="lacks the column") as exc:
        load_reference_catalog(path, column_map={"ra": "RA_ICRS", "dec": "DEC", "mags": [["g", "gmag"]]})
    assert exc.value.figures["missing"] == ["DEC"]
    ref = load_reference_catalog(path, column_map={"ra": "RA_ICRS", "dec": "DE_ICRS", "mags": [["g", "gmag"]]})
    assert ref.bands == ("g",) and ref.table["ra"][0] == 1.0
    assert ref.mag("g")[1][0] == 0.02  # no error column: the nominal error


def test_bad_column_map_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown key"):
        column_map_from_json({"right_ascension": "RA"})
    with pytest.raises(ConfigError, match="both pmra and pmdec"):
        column_map_from_json({"pmra": "pmRA"})


# ---------------------------------------------------------------------------
# column conventions


def test_lsst_convention_radians_and_njy(tmp_path):
    rng = np.random.default_rng(5)
    n = 500
    ra, dec = _cap(rng, n, 359.9, -20.0, 0.5)
    mag = rng.uniform(15.0, 22.0, n)
    flux = 10 ** (-0.4 * (mag - AB_NJY_ZERO_POINT_MAG))
    snr = rng.uniform(10.0, 500.0, n)
    t = Table({"id": np.arange(100, 100 + n), "coord_ra": np.radians(ra), "coord_dec": np.radians(dec),
               "i_flux": flux, "i_fluxErr": flux / snr})
    write_table(t, tmp_path / "lsst.parquet")
    assert detect_column_map(t.colnames).convention == "lsst"
    out = ingest_reference_catalog(tmp_path / "lsst.parquet", tmp_path, name="lsst")
    ref = load_reference_catalog(out, footprint=SkyFootprint(359.9, -20.0, 1.0))
    order = np.argsort(ref.table["id"])
    np.testing.assert_array_equal(np.asarray(ref.table["id"])[order], np.arange(100, 100 + n))
    np.testing.assert_allclose(np.asarray(ref.table["ra"])[order], ra, rtol=0, atol=1e-9)  # 4 uas
    np.testing.assert_allclose(np.asarray(ref.table["dec"])[order], dec, rtol=0, atol=1e-9)
    m, e = ref.mag("i")
    np.testing.assert_allclose(m[order], mag, rtol=0, atol=1e-9)
    np.testing.assert_allclose(e[order], 2.5 / math.log(10) / snr, rtol=1e-9)
    assert ref.load_info["convention"] == "canonical"  # as ingested, whatever the input was


def test_lsst_negative_flux_is_nan_magnitude(tmp_path):
    t = Table({"coord_ra": [0.1, 0.1001], "coord_dec": [0.2, 0.2001], "z_flux": [-5.0, 3631e9],
               "z_fluxErr": [1.0, 1.0]})
    path = tmp_path / "neg.csv"
    write_table(t, path)
    m, _ = load_reference_catalog(path).mag("z")
    assert np.isnan(m[0]) and m[1] == pytest.approx(0.0, abs=1e-3)  # 3631 Jy is AB 0


def test_gaia_convention(tmp_path):
    n = 40
    rng = np.random.default_rng(8)
    g = rng.uniform(10, 19, n)
    foe = rng.uniform(50, 3000, n)
    t = Table({"source_id": np.arange(n, dtype=np.int64) * 1_000_003, "ra": rng.uniform(10, 10.1, n),
               "dec": rng.uniform(-5, -4.9, n), "phot_g_mean_mag": g, "phot_g_mean_flux_over_error": foe,
               "phot_bp_mean_mag": g + 0.3, "phot_bp_mean_flux_over_error": foe / 3,
               "phot_rp_mean_mag": g - 0.5, "phot_rp_mean_flux_over_error": foe / 2,
               "pmra": rng.normal(0, 5, n), "pmdec": rng.normal(0, 5, n), "ref_epoch": np.full(n, 2016.0)})
    path = tmp_path / "gaia.fits"
    write_table(t, path)
    ref = load_reference_catalog(path)
    assert ref.bands == ("phot_g_mean", "phot_bp_mean", "phot_rp_mean")
    np.testing.assert_array_equal(ref.table["id"], t["source_id"])
    m, e = ref.mag("phot_g_mean")
    np.testing.assert_array_equal(m, g)
    np.testing.assert_allclose(e, np.hypot(1.0857362047581294 / foe, GAIA_ZERO_POINT_ERR_MAG["phot_g_mean"]),
                               rtol=1e-12)
    assert ref.epoch_mjd == pytest.approx(57388.5)  # J2016.0 = 2016-01-01T12:00 TT
    np.testing.assert_array_equal(ref.table["pmra"], t["pmra"])
    # Ingested, the catalogue keeps Gaia's band names but is read as canonical:
    # errors, ids and epoch come back as loaded from the Gaia table itself.
    out = ingest_reference_catalog(path, tmp_path, name="gaia")
    again = load_reference_catalog(out, footprint=SkyFootprint(10.05, -4.95, 0.2))
    assert again.load_info["convention"] == "canonical" and again.bands == ref.bands
    order = np.argsort(again.table["id"])
    np.testing.assert_array_equal(np.asarray(again.table["id"])[order], t["source_id"])
    for band in ref.bands:
        np.testing.assert_array_equal(again.mag(band)[1][order], ref.mag(band)[1])
    assert again.epoch_mjd == pytest.approx(57388.5)


def test_epoch_parsing():
    assert parse_epoch_mjd("J2016.0") == pytest.approx(57388.5)
    assert parse_epoch_mjd(2000.0) == pytest.approx(51544.5)
    assert parse_epoch_mjd("60000.5") == 60000.5
    assert parse_epoch_mjd(None) is None
    with pytest.raises(ReferenceCatalogError, match="not understood"):
        parse_epoch_mjd("yesterday")


# ---------------------------------------------------------------------------
# proper motion


@pytest.mark.parametrize("ra0, dec0, pmra, pmdec, years", [
    (150.0, 60.0, 100.0, -50.0, 10.0),
    (359.99999, 0.0, 800.0, 0.0, 25.0),      # crosses RA = 0/360
    (10.0, 89.9999, 0.0, 4000.0, 20.0),      # crosses the pole (80 arcsec)
    (200.0, -45.0, -3000.0, 2000.0, -16.0),  # backwards in time
])
def test_proper_motion_moves_by_the_right_angle(ra0, dec0, pmra, pmdec, years):
    ra, dec = propagate_proper_motion(np.array([ra0]), np.array([dec0]), np.array([pmra]), np.array([pmdec]), years)
    start, end = SkyCoord(ra0, dec0, unit="deg"), SkyCoord(ra[0], dec[0], unit="deg")
    expected_mas = math.hypot(pmra, pmdec) * abs(years)
    assert start.separation(end).to_value(u.mas) == pytest.approx(expected_mas, abs=0.1)
    # direction: position angle of the motion (east of north), cos(dec) handled
    if dec0 < 89:
        pa = math.degrees(math.atan2(pmra * np.sign(years), pmdec * np.sign(years))) % 360
        assert start.position_angle(end).deg == pytest.approx(pa, abs=1e-3)
    # agreement with astropy's space motion (straight line in 3-D; 10 pc keeps the speed far below c)
    coord = SkyCoord(ra0 * u.deg, dec0 * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr, pm_dec=pmdec * u.mas / u.yr,
                     distance=10 * u.pc, radial_velocity=0 * u.km / u.s, frame="icrs")
    moved = coord.apply_space_motion(dt=years * u.year)
    assert moved.separation(end).to_value(u.mas) < 0.1


def test_nan_proper_motion_leaves_position():
    ra, dec = propagate_proper_motion([1.0], [2.0], [np.nan], [np.nan], 10.0)
    assert ra[0] == pytest.approx(1.0, abs=1e-12) and dec[0] == pytest.approx(2.0, abs=1e-12)


def test_load_propagates_to_the_exposure_epoch(tmp_path):
    n = 300
    rng = np.random.default_rng(11)
    ra, dec = _cap(rng, n, 0.05, 30.0, 0.3)
    pmra, pmdec = rng.normal(0, 200, n), rng.normal(0, 200, n)
    t = Table({"ra": ra, "dec": dec, "r_mag": rng.uniform(14, 18, n), "pmra": pmra, "pmdec": pmdec})
    write_table(t, tmp_path / "pm.parquet")
    out = ingest_reference_catalog(tmp_path / "pm.parquet", tmp_path, name="pm", epoch="J2016.0",
                                   config=HatsWriteConfig(max_rows_per_partition=50))
    assert open_hats_catalog(out).epoch_mjd == pytest.approx(57388.5)
    target = jyear_to_mjd(2026.0)
    fp = SkyFootprint(0.05, 30.0, 0.25)
    ref = load_reference_catalog(out, footprint=fp, epoch_mjd=target)
    assert ref.load_info["proper_motion"] == "applied" and ref.epoch_mjd == target
    truth_ra, truth_dec = propagate_proper_motion(ra, dec, pmra, pmdec, 10.0)
    keep = SkyCoord(truth_ra, truth_dec, unit="deg").separation(SkyCoord(0.05, 30.0, unit="deg")).deg <= 0.25
    ids = np.asarray(ref.table["id"]) - 1  # ids were numbered 1..n in input order
    assert sorted(ids.tolist()) == np.flatnonzero(keep).tolist()
    moved = SkyCoord(ref.table["ra"], ref.table["dec"], unit="deg")
    start = SkyCoord(ra[ids], dec[ids], unit="deg")
    np.testing.assert_allclose(start.separation(moved).to_value(u.mas), np.hypot(pmra[ids], pmdec[ids]) * 10.0,
                               rtol=0, atol=0.1)
    # without an epoch request positions stay at the catalogue epoch
    still = load_reference_catalog(out, footprint=fp)
    assert still.load_info["proper_motion"] == "not requested" and still.epoch_mjd == pytest.approx(57388.5)


def test_proper_motion_without_epoch_is_an_error(tmp_path):
    t = Table({"ra": [1.0], "dec": [1.0], "pmra": [10.0], "pmdec": [0.0], "g_mag": [15.0]})
    write_table(t, tmp_path / "x.csv")
    with pytest.raises(ReferenceCatalogError, match="no epoch"):
        load_reference_catalog(tmp_path / "x.csv", epoch_mjd=60000.0)
    assert load_reference_catalog(tmp_path / "x.csv").load_info["proper_motion"] == "not requested"
