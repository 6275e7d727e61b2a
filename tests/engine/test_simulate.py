"""Truth tests of the exposure simulator (calibration.testing).

Tolerances are the requirements the simulator promises to the rest of the test
suite: fluxes to 0.5%, centroids to 0.01 px, FWHM to 1%, WCS round trips to
1e-6 px, sky noise to 3%.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from calibration.configbase import config_from_dict, config_to_dict
from calibration.errors import ConfigError
from calibration.exposure import MaskPlane
from calibration.testing import (
    SimConfig,
    make_reference_catalog,
    simulate_exposure,
    write_fits,
    write_reference_catalog,
)

SIP_A = (2.0e-6, -1.0e-6, 5.0e-7, 1.0e-9, 0.0, -2.0e-9, 0.0)
SIP_B = (-5.0e-7, 1.5e-6, 1.0e-6, 0.0, 1.0e-9, 0.0, 2.0e-9)

CLEAN = dict(shape=(400, 500), n_galaxies=0, n_cosmic_rays=0, n_saturated_stars=0, noise=False)


def _sub_sky(sim):
    ny, nx = sim.exposure.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    return sim.exposure.image.astype(np.float64) - sim.sky_adu(xx, yy), xx, yy


def _aperture_moments(img, xx, yy, x, y, radius):
    m = (xx - x) ** 2 + (yy - y) ** 2 < radius**2
    w, px, py = img[m], xx[m], yy[m]
    flux = w.sum()
    cx, cy = (w * px).sum() / flux, (w * py).sum() / flux
    ixx = (w * (px - cx) ** 2).sum() / flux
    iyy = (w * (py - cy) ** 2).sum() / flux
    ixy = (w * (px - cx) * (py - cy)).sum() / flux
    return flux, cx, cy, ixx, iyy, ixy


# --- reproducibility ---------------------------------------------------------------------


def test_same_seed_same_exposure_and_different_seed_differs():
    cfg = SimConfig(shape=(200, 240), n_stars=80, n_galaxies=3, n_cosmic_rays=5, seed=7)
    a, b = simulate_exposure(cfg), simulate_exposure(cfg)
    np.testing.assert_array_equal(a.exposure.image, b.exposure.image)
    np.testing.assert_array_equal(a.exposure.mask, b.exposure.mask)
    np.testing.assert_array_equal(a.truth["x"], b.truth["x"])
    c = simulate_exposure(cfg, seed=8)
    assert not np.array_equal(a.exposure.image, c.exposure.image)
    assert not np.array_equal(a.truth["x"], c.truth["x"])
    # Independent streams: switching cosmic rays off does not move the stars.
    d = simulate_exposure(cfg, n_cosmic_rays=0)
    np.testing.assert_array_equal(a.truth["x"], d.truth["x"])
    np.testing.assert_array_equal(a.truth["mag"], d.truth["mag"])


def test_config_json_round_trip_and_validation():
    cfg = SimConfig(sip_a=SIP_A, sip_b=SIP_B, bad_columns=(3, 9), psf_model="gaussian")
    assert config_from_dict(SimConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="filter_name"):
        simulate_exposure(filter_name="i")
    with pytest.raises(ConfigError, match="FWHM"):
        simulate_exposure(psf_fwhm_gradient_x_per_1000pix=-8.0)
    with pytest.raises(ConfigError):
        simulate_exposure(no_such_field=1)


# --- photometry, centroids, PSF ----------------------------------------------------------


@pytest.mark.parametrize("psf_model", ["moffat", "gaussian"])
def test_noiseless_flux_and_centroid_match_truth(psf_model):
    sim = simulate_exposure(
        **CLEAN, n_stars=40, mag_range=(16.0, 19.0), psf_model=psf_model, xy0=(517, 1033),
        psf_fwhm_gradient_x_per_1000pix=0.6, psf_e1=0.05, psf_e2=-0.03, sky_gradient_x_adu_per_pix=0.1,
    )
    img, xx, yy = _sub_sky(sim)
    iso = sim.isolated(radius_pix=35.0)
    assert iso.sum() >= 3
    for row in sim.truth[iso]:
        flux, cx, cy, *_ = _aperture_moments(img, xx, yy, row["x"], row["y"], radius=25.0)
        assert flux == pytest.approx(row["flux_adu"], rel=5e-3)
        assert abs(cx - row["x"]) < 0.01 and abs(cy - row["y"]) < 0.01
    t = sim.truth
    assert sim.exposure.xy0 == (517, 1033)
    np.testing.assert_allclose(t["x_parent"] - t["x"], 517)
    np.testing.assert_allclose(t["y_parent"] - t["y"], 1033)
    np.testing.assert_allclose(t["flux_adu"], 10 ** (-0.4 * (t["mag"] - sim.config.zero_point_mag)))


def test_gaussian_second_moment_fwhm_matches_truth_across_field():
    sim = simulate_exposure(
        **CLEAN, n_stars=40, mag_range=(17.0, 18.0), psf_model="gaussian", psf_fwhm_pix=3.2,
        psf_fwhm_gradient_x_per_1000pix=1.5, psf_fwhm_gradient_y_per_1000pix=-1.0,
    )
    img, xx, yy = _sub_sky(sim)
    iso = sim.isolated(radius_pix=30.0)
    assert iso.sum() >= 3
    fwhms = []
    for row in sim.truth[iso]:
        _, _, _, ixx, iyy, _ = _aperture_moments(img, xx, yy, row["x"], row["y"], radius=18.0)
        pixelated = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt((ixx + iyy) / 2.0)
        intrinsic = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt((ixx + iyy) / 2.0 - 1.0 / 12.0)
        assert intrinsic == pytest.approx(sim.psf_fwhm_pix(row["x"], row["y"]), rel=0.01)
        assert pixelated == pytest.approx(sim.psf_fwhm_pix(row["x"], row["y"], pixel_convolved=True), rel=0.01)
        assert row["fwhm_pix"] == pytest.approx(sim.psf_fwhm_pix(row["x"], row["y"]))
        fwhms.append(intrinsic)
    assert np.ptp(fwhms) > 0.05  # the gradient is really there


def test_psf_image_is_the_rendered_star():
    sim = simulate_exposure(**CLEAN, n_stars=20, mag_range=(16.0, 17.0), psf_fwhm_gradient_y_per_1000pix=1.0)
    img, _, _ = _sub_sky(sim)
    row = sim.truth[sim.isolated(radius_pix=30.0)][0]
    stamp = sim.psf_image(row["x"], row["y"], size=21)
    assert stamp.shape == (21, 21)
    assert sim.psf_image(row["x"], row["y"]).sum() == pytest.approx(1.0, abs=1e-9)
    ix, iy = int(round(row["x"])), int(round(row["y"]))
    cut = img[iy - 10:iy + 11, ix - 10:ix + 11]
    np.testing.assert_allclose(cut, stamp * row["flux_adu"], atol=1e-3 * cut.max())


def test_galaxies_are_extended():
    sim = simulate_exposure(shape=(300, 300), n_stars=30, n_galaxies=8, n_cosmic_rays=0, n_saturated_stars=0,
                            noise=False, mag_range=(17.0, 18.0), galaxy_half_light_radius_pix=(3.0, 4.0))
    img, xx, yy = _sub_sky(sim)
    iso = sim.isolated(radius_pix=25.0)
    sizes = {True: [], False: []}
    for row in sim.truth[iso]:
        _, _, _, ixx, iyy, _ = _aperture_moments(img, xx, yy, row["x"], row["y"], radius=20.0)
        sizes[bool(row["is_galaxy"])].append(ixx + iyy)
    assert sizes[True] and sizes[False]
    assert min(sizes[True]) > 1.5 * max(sizes[False])


# --- astrometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("ra_deg", [150.0, 0.002, 359.998])
def test_true_wcs_round_trip_and_truth_positions(ra_deg):
    sim = simulate_exposure(shape=(300, 400), n_stars=200, n_galaxies=5, n_cosmic_rays=0, ra_deg=ra_deg,
                            dec_deg=-30.0, rotation_deg=33.0, sip_a=SIP_A, sip_b=SIP_B)
    w = sim.true_wcs
    assert w.sip is not None
    t = sim.truth
    ra, dec = w.all_pix2world(t["x"], t["y"], 0)
    np.testing.assert_array_equal(t["ra"], np.mod(ra, 360.0))
    np.testing.assert_array_equal(t["dec"], dec)
    assert np.all((t["ra"] >= 0) & (t["ra"] < 360))
    x, y = w.all_world2pix(t["ra"], t["dec"], 0, tolerance=1e-10, maxiter=50)
    assert np.max(np.hypot(x - t["x"], y - t["y"])) < 1e-6
    # the SIP really distorts: linear-only positions differ by > 0.05 px at the corners
    xl, yl = w.wcs_world2pix(t["ra"], t["dec"], 0)
    assert np.max(np.hypot(xl - t["x"], yl - t["y"])) > 0.05
    # pixel scale at the centre is what was asked
    xc, yc = sim.config.centre_pix
    r0, d0 = w.all_pix2world([xc, xc + 1.0], [yc, yc], 0)
    step = math.hypot((r0[1] - r0[0]) * math.cos(math.radians(d0[0])), d0[1] - d0[0]) * 3600.0
    assert step == pytest.approx(sim.config.pixel_scale_arcsec, rel=1e-3)


def test_header_wcs_perturbation():
    offset = (12.5, -7.25)
    sim = simulate_exposure(shape=(400, 400), n_stars=50, n_galaxies=0, header_offset_pix=offset,
                            header_rotation_deg=0.5, header_scale_fraction=0.01, rotation_deg=10.0)
    assert sim.exposure.wcs is not sim.true_wcs
    xc, yc = sim.config.centre_pix
    ra, dec = sim.true_wcs.all_pix2world(xc, yc, 0)
    hx, hy = sim.exposure.wcs.all_world2pix(ra, dec, 0)
    assert hx - xc == pytest.approx(offset[0], abs=1e-6)
    assert hy - yc == pytest.approx(offset[1], abs=1e-6)
    # scale and rotation: a 200 px baseline maps to 200 / (1 + f) px rotated by -0.5 deg
    ra2, dec2 = sim.true_wcs.all_pix2world(xc + 200.0, yc, 0)
    hx2, hy2 = sim.exposure.wcs.all_world2pix(ra2, dec2, 0)
    assert math.hypot(hx2 - hx, hy2 - hy) == pytest.approx(200.0 / 1.01, rel=1e-4)
    assert math.degrees(math.atan2(hy2 - hy, hx2 - hx)) == pytest.approx(-0.5, abs=0.01)


def test_header_wcs_can_drop_sip():
    sim = simulate_exposure(shape=(200, 200), n_stars=10, sip_a=SIP_A, sip_b=SIP_B, header_sip=False)
    assert sim.true_wcs.sip is not None and sim.exposure.wcs.sip is None
    assert sim.exposure.header["CTYPE1"] == "RA---TAN"


# --- noise and defects ------------------------------------------------------------------------


def test_sky_noise_matches_sky_noise_adu_and_variance_plane():
    sim = simulate_exposure(shape=(256, 256), n_stars=0, n_galaxies=0, n_cosmic_rays=0, n_saturated_stars=0,
                            sky_level_adu=800.0, gain_e_per_adu=2.0, read_noise_e=10.0)
    expected = math.sqrt(800.0 / 2.0 + (10.0 / 2.0) ** 2)
    assert sim.sky_noise_adu == pytest.approx(expected)
    img = sim.exposure.image
    assert np.std(img[50:200, 50:200]) == pytest.approx(sim.sky_noise_adu, rel=0.03)
    assert np.mean(img) == pytest.approx(800.0, abs=0.5)
    assert np.mean(sim.exposure.variance) == pytest.approx(expected**2, rel=1e-3)
    info = sim.exposure.info
    assert (info.gain_e_per_adu, info.read_noise_e, info.filter_name) == (2.0, 10.0, "r")


def test_saturated_stars_are_clipped_bled_and_flagged():
    sim = simulate_exposure(shape=(300, 300), n_stars=20, n_saturated_stars=3, n_galaxies=0, n_cosmic_rays=0)
    sat = sim.config.saturation_adu
    exp = sim.exposure
    assert exp.image.max() <= sat
    rows = sim.truth[sim.truth["is_saturated"]]
    assert len(rows) >= 3
    for row in rows:
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        assert exp.image[iy, ix] == sat
        assert exp.mask[iy, ix] & MaskPlane.SAT
    # bleed trails run along columns: the SAT region is taller than wide
    brightest = rows[np.argmax(rows["flux_adu"])]
    ix, iy = int(round(brightest["x"])), int(round(brightest["y"]))
    satmask = (exp.mask & MaskPlane.SAT) != 0
    assert satmask[:, ix].sum() > satmask[iy, :].sum()
    # charge is conserved by the bleed (noiseless model, trail inside the image)
    noiseless = simulate_exposure(sim.config, noise=False, n_saturated_stars=1, n_stars=0)
    row = noiseless.truth[0]
    img, _, _ = _sub_sky(noiseless)
    assert img.sum() == pytest.approx(row["flux_adu"], rel=0.01)
    assert ((noiseless.exposure.mask & MaskPlane.SAT) != 0).sum() > 0


def test_bad_columns_are_masked():
    sim = simulate_exposure(shape=(128, 160), n_stars=30, bad_columns=(5, 77), bad_column_value_adu=0.0)
    bad = (sim.exposure.mask & MaskPlane.BAD) != 0
    assert set(np.flatnonzero(bad.all(axis=0))) == {5, 77}
    assert bad.sum() == 2 * 128
    assert np.all(sim.exposure.image[:, [5, 77]] == 0.0)
    assert sim.bad_columns == (5, 77)
    np.testing.assert_array_equal(sim.bad_pixel_mask, bad)


def test_cosmic_rays_are_sharper_than_the_psf():
    sim = simulate_exposure(shape=(300, 300), n_stars=40, mag_range=(16.0, 18.0), n_cosmic_rays=15,
                            n_galaxies=0, n_saturated_stars=0, noise=False)
    img, _, _ = _sub_sky(sim)
    crp = sim.cosmic_ray_pixels
    assert crp.shape[1] == 2 and len(crp) >= 15
    assert np.all(img[crp[:, 0], crp[:, 1]] > 400.0)

    def sharpness(iy, ix):  # faintest 4-neighbour relative to the pixel
        nb = [img[iy - 1, ix], img[iy + 1, ix], img[iy, ix - 1], img[iy, ix + 1]]
        return min(nb) / img[iy, ix]

    cr_sharp = [sharpness(y, x) for y, x in crp]
    stars = sim.truth[sim.isolated(radius_pix=8.0)]
    star_sharp = [sharpness(int(round(r["y"])), int(round(r["x"]))) for r in stars]
    assert star_sharp
    assert np.median(cr_sharp) < 0.3 < 0.5 < min(star_sharp)


# --- reference catalogue -----------------------------------------------------------------------


def test_reference_catalog_relation_margin_and_galaxies():
    sim = simulate_exposure(shape=(300, 300), n_stars=200, n_galaxies=10, n_cosmic_rays=0)
    ct = (0.1, 0.05, -0.02)
    ref = make_reference_catalog(sim, mag_err=0.0, colour_term=ct, margin_deg=0.01, extra_stars=5)
    assert {"id", "truth_id", "ra", "dec", "g_mag", "g_magErr", "r_mag", "r_magErr"} <= set(ref.colnames)
    assert ref["ra"].unit == "deg" and ref["r_mag"].unit == "mag"
    truth = sim.truth
    galaxy_ids = set(truth["id"][truth["is_galaxy"]])
    in_image = ref[ref["truth_id"] >= 0]
    assert not galaxy_ids & set(in_image["truth_id"])
    assert len(in_image) == np.sum(~truth["is_galaxy"])
    t = truth[np.searchsorted(truth["id"], in_image["truth_id"])]
    colour = in_image["g_mag"] - in_image["r_mag"]
    np.testing.assert_allclose(colour, t["colour"], atol=1e-9)
    predicted = in_image["r_mag"] + ct[0] + ct[1] * colour + ct[2] * colour**2
    np.testing.assert_allclose(predicted, t["mag"], atol=1e-9)
    np.testing.assert_allclose(in_image["ra"], t["ra"], atol=1e-12)
    # margin stars: outside the image, inside the margin; plus the 5 catalogue-only stars
    extra = ref[ref["truth_id"] < 0]
    x, y = sim.true_wcs.all_world2pix(extra["ra"], extra["dec"], 0)
    outside = (x < -0.5) | (x > 299.5) | (y < -0.5) | (y > 299.5)
    assert outside.sum() > 50 and (~outside).sum() == 5
    margin_pix = 0.01 * 3600 / sim.config.pixel_scale_arcsec
    assert np.all((x > -0.6 - margin_pix) & (x < 299.6 + margin_pix))


def test_reference_catalog_noise_missing_and_proper_motion():
    sim = simulate_exposure(shape=(400, 400), n_stars=1500, n_galaxies=0, n_cosmic_rays=0, n_saturated_stars=0)
    ref = make_reference_catalog(sim, bands=("r",), mag_err=0.02, margin_deg=0.0, missing_fraction=0.3,
                                 proper_motion=True, pm_sigma_mas_per_yr=20.0, epoch=2000.0, seed=3)
    assert "g_mag" not in ref.colnames
    assert len(ref) / len(sim.truth) == pytest.approx(0.7, abs=0.05)
    t = sim.truth[np.searchsorted(sim.truth["id"], ref["truth_id"])]
    resid = ref["r_mag"] - t["mag"]
    assert np.std(resid) == pytest.approx(0.02, rel=0.1)
    # propagating ref positions to the exposure epoch gives the truth
    dt = 2024.2 - 2000.0  # DATE-OBS 2024-03-15 is Julian year 2024.20
    assert abs(ref["dec"] - t["dec"]).max() * 3.6e6 > 100.0
    dec = ref["dec"] + ref["pmdec"] * dt / 3.6e6
    ra = ref["ra"] + ref["pmra"] * dt / 3.6e6 / np.cos(np.radians(t["dec"]))
    assert np.max(np.abs(dec - t["dec"])) * 3.6e6 < 2.0  # mas; dt above is rounded
    assert np.max(np.abs(ra - t["ra"]) * np.cos(np.radians(t["dec"]))) * 3.6e6 < 2.0


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_write_reference_catalog_round_trip(tmp_path, suffix):
    sim = simulate_exposure(shape=(128, 128), n_stars=40, n_galaxies=0)
    ref = make_reference_catalog(sim, margin_deg=0.005)
    path = write_reference_catalog(ref, tmp_path / f"ref{suffix}")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        arrow = pq.read_table(path)
        assert arrow.schema.field("ra").metadata[b"unit"] == b"deg"
        back = Table({name: arrow.column(name).to_numpy() for name in arrow.column_names})
    else:
        back = Table.read(path)
    assert len(back) == len(ref)
    np.testing.assert_allclose(back["ra"], ref["ra"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(back["r_mag"], ref["r_mag"], rtol=1e-12)


# --- FITS output --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "dtype", "hdu_index"),
    [("simple", "float32", 0), ("mef", ">f4", 1), ("compressed", "int16", 1), ("mef", "int16", 1),
     ("compressed", "float32", 1)],
)
def test_write_fits_layouts(tmp_path, layout, dtype, hdu_index):
    sim = simulate_exposure(shape=(96, 128), n_stars=30, seed=42, sip_a=SIP_A[:3], sip_b=SIP_B[:3],
                            header_offset_pix=(3.0, -2.0))
    path = write_fits(sim, tmp_path / "sim.fits", hdu_layout=layout, dtype=dtype)
    with fits.open(path) as hdul:
        hdu = hdul[hdu_index]
        data = hdu.data
        header = fits.Header(hdul[0].header)
        header.extend(hdu.header, update=True)
        assert data.shape == (96, 128)
        if dtype == "int16":
            assert hdu.header["BITPIX"] == 16
            np.testing.assert_array_equal(data, np.clip(np.rint(sim.exposure.image), 0, 65535))
        elif layout == "compressed":  # lossy quantisation at sky noise / 16
            np.testing.assert_allclose(data, sim.exposure.image, atol=0.2 * sim.sky_noise_adu)
        else:
            np.testing.assert_array_equal(data, sim.exposure.image)
        for key in ("INSTRUME", "FILTER", "EXPTIME", "DATE-OBS", "MJD-OBS", "GAIN", "RDNOISE",
                    "SATURATE", "OBJECT", "RA", "DEC"):
            assert key in header, key
        assert (header["LTV1"], header["LTV2"]) == (-100.0, -200.0)
        assert "SIMULATED by CalibWeb simulator seed=42" in str(header["COMMENT"])
        assert header["CTYPE1"] == "RA---TAN-SIP" and "CD1_1" in header
        w = WCS(hdu.header)
    xs, ys = np.array([0.0, 50.0, 127.0]), np.array([0.0, 40.0, 95.0])
    np.testing.assert_allclose(w.all_pix2world(xs, ys, 0), sim.header_wcs.all_pix2world(xs, ys, 0),
                               rtol=0, atol=1e-10)


def test_exposure_is_consistent():
    sim = simulate_exposure(shape=(128, 128), n_stars=30)
    exp = sim.exposure
    assert exp.image.dtype == np.float32 and exp.image.dtype.isnative
    assert exp.variance.shape == exp.image.shape and exp.mask.dtype == np.int16
    assert exp.info.exptime_s == 30.0 and exp.info.mjd_obs == pytest.approx(60384.1339, abs=1e-4)
    assert exp.header["FILTER"] == "r"
    assert dataclasses.asdict(exp.info)["saturation_adu"] == sim.config.saturation_adu
