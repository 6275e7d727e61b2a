"""PSF selection and modelling against truth.

The synthetic exposure has an elliptical Moffat PSF (beta = 3.5) whose FWHM
grows linearly across the field (3.0 to 4.35 pix), rendered with pixel
integration (5 x 5 sub-pixels per pixel, then binned) at known sub-pixel
positions, with Poisson-like Gaussian noise on a flat sky; plus galaxies (wide
blobs), saturated stars (clipped at the saturation level and masked SAT) and
close pairs, none of which may become PSF candidates. The catalogue comes from
the real detection stage plus a 12-pix aperture flux and Gaussian-windowed
second moments (what the measurement stage provides).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from scipy.special import erf

from calibration.configbase import config_from_dict, config_to_dict
from calibration.detection import DetectionConfig, detect_sources
from calibration.errors import ConfigError, PsfError
from calibration.exposure import ExposureInfo, make_exposure
from calibration.psf import (
    FWHM_PER_SIGMA,
    PixelPsfModel,
    PsfConfig,
    fit_psf,
    psf_model_from_hdulist,
    select_psf_candidates,
)
from calibration.psfmodel import fft_shift, gather_stamps, sinc_shift

NY, NX = 560, 640  # not square: catches swapped axes
BETA = 3.5
E1, E2 = 0.04, -0.02
SKY_VAR = 400.0  # ADU^2 (gain 1)
SATURATION = 8.0e4  # ADU, in the background-subtracted image
OVERSAMPLE = 5
SEED = 3


def true_fwhm(x, y):
    """Intrinsic FWHM (pix) of the simulated PSF at local position (x, y)."""
    return 3.0 + 0.9 * np.asarray(x) / NX + 0.45 * np.asarray(y) / NY


def render(x, y, fwhm, half, *, e1=E1, e2=E2, profile="moffat"):
    """Pixel-integrated unit-flux profiles ``(n, 2h+1, 2h+1)`` centred on the pixel nearest (x, y)."""
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    fwhm, e1, e2 = (np.broadcast_to(np.asarray(v, float), x.shape) for v in (fwhm, e1, e2))
    ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    grid = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()
    dx = grid[None, None, :] + (ix - x)[:, None, None]
    dy = grid[None, :, None] + (iy - y)[:, None, None]
    a, b = e1[:, None, None], e2[:, None, None]
    r2 = ((1 - a) * dx**2 - 2 * b * dx * dy + (1 + a) * dy**2) / np.sqrt(1 - a**2 - b**2)
    f2 = (fwhm**2)[:, None, None]
    if profile == "moffat":
        alpha2 = f2 / (4 * (2 ** (1 / BETA) - 1))
        prof = (1 + r2 / alpha2) ** (-BETA) * (BETA - 1) / (np.pi * alpha2)
    else:
        s2 = f2 / (8 * np.log(2))
        prof = np.exp(-r2 / (2 * s2)) / (2 * np.pi * s2)
    k = 2 * half + 1
    return prof.reshape(x.size, k, OVERSAMPLE, k, OVERSAMPLE).mean(axis=(2, 4)), ix.astype(int), iy.astype(int)


def true_psf_images(x, y, k):
    """Truth for ``image_at``: the pixel-integrated PSF on a k x k stamp, sum 1."""
    img, _, _ = render(x, y, true_fwhm(x, y), k // 2)
    return img / img.sum(axis=(1, 2))[:, None, None]


def _add(image, stamps, ix, iy):
    h = stamps.shape[1] // 2
    d = np.arange(-h, h + 1)
    rows = np.broadcast_to(iy[:, None, None] + d[None, :, None], stamps.shape)
    cols = np.broadcast_to(ix[:, None, None] + d[None, None, :], stamps.shape)
    inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
    np.add.at(image, (rows[inside], cols[inside]), stamps[inside])


def simulate(seed: int = 1):
    """Exposure and truth table: stars, galaxies, saturated stars, close pairs on a jittered grid."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(24, NX - 24, 36.0), np.arange(24, NY - 24, 36.0))
    x = gx.ravel() + rng.uniform(-6, 6, gx.size)
    y = gy.ravel() + rng.uniform(-6, 6, gx.size)
    kind = np.full(x.size, "star", dtype=object)
    order = rng.permutation(x.size)
    kind[order[:25]] = "galaxy"
    kind[order[25:31]] = "saturated"
    kind[order[31:35]] = "pair"
    flux = np.exp(rng.uniform(np.log(3e4), np.log(6e5), x.size))
    flux[kind == "saturated"] = 6e6
    image = np.zeros((NY, NX))
    pointlike = kind != "galaxy"
    stamps, ix, iy = render(x[pointlike], y[pointlike], true_fwhm(x[pointlike], y[pointlike]), 20)
    _add(image, stamps * flux[pointlike, None, None], ix, iy)
    pair = kind == "pair"  # a companion 7 pix away with 30% of the flux
    cx, cy = x[pair] + 7.0, y[pair] + 1.0
    stamps, ix, iy = render(cx, cy, true_fwhm(cx, cy), 20)
    _add(image, stamps * 0.3 * flux[pair, None, None], ix, iy)
    gal = kind == "galaxy"
    stamps, ix, iy = render(x[gal], y[gal], rng.uniform(7, 10, gal.sum()), 20, profile="gaussian",
                            e1=rng.uniform(-0.3, 0.3, gal.sum()), e2=rng.uniform(-0.3, 0.3, gal.sum()))
    _add(image, stamps * flux[gal, None, None], ix, iy)
    variance = SKY_VAR + np.maximum(image, 0.0)
    noisy = np.minimum(image + rng.normal(size=image.shape) * np.sqrt(variance), SATURATION)
    exposure = make_exposure(noisy.astype(np.float32), variance=variance.astype(np.float32),
                             info=ExposureInfo(saturation_adu=SATURATION, gain_e_per_adu=1.0, exposure_id=7))
    return exposure, Table({"x": x, "y": y, "kind": kind.astype(str), "flux": flux})


def measure(exposure) -> Table:
    """Detection plus the columns the PSF stage reads from the measurement stage."""
    cat = detect_sources(exposure, DetectionConfig(), background_rms_adu=np.sqrt(SKY_VAR)).catalog
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    image = exposure.image.astype(np.float64)
    flux, err, flag = sep.sum_circle(image, x, y, 12.0, err=np.sqrt(exposure.variance.astype(np.float64)))
    cat["apflux_12_0"], cat["apflux_12_0_err"], cat["apflux_12_0_flag"] = flux, err, flag != 0
    # Gaussian-windowed (sigma 2.5 pix) second moments, deconvolved from the window
    # as calibration.measure does: flux-independent sizes that follow the PSF.
    h = 10
    d = np.arange(-h, h + 1)
    ix = np.clip(np.floor(x + 0.5).astype(int), h, NX - h - 1)
    iy = np.clip(np.floor(y + 0.5).astype(int), h, NY - h - 1)
    stamp = image[iy[:, None, None] + d[None, :, None], ix[:, None, None] + d[None, None, :]]
    ux = ix[:, None, None] + d[None, None, :] - x[:, None, None]
    uy = iy[:, None, None] + d[None, :, None] - y[:, None, None]
    w = np.exp(-(ux**2 + uy**2) / (2 * 2.5**2)) * stamp
    total = w.sum(axis=(1, 2))
    moments = np.empty((len(cat), 2, 2))
    moments[:, 0, 0] = (w * ux**2).sum(axis=(1, 2)) / total
    moments[:, 1, 1] = (w * uy**2).sum(axis=(1, 2)) / total
    moments[:, 0, 1] = moments[:, 1, 0] = (w * ux * uy).sum(axis=(1, 2)) / total
    shape = np.linalg.inv(np.linalg.inv(moments) - np.eye(2) / 2.5**2)
    cat["shape_xx"], cat["shape_yy"], cat["shape_xy"] = shape[:, 0, 0], shape[:, 1, 1], shape[:, 0, 1]
    return cat


@pytest.fixture(scope="module")
def sim():
    exposure, truth = simulate()
    catalog = measure(exposure)
    # Truth kind of each detection (nearest simulated source within 2 pix).
    d2 = (np.asarray(catalog["x"])[:, None] - truth["x"][None, :]) ** 2 + \
        (np.asarray(catalog["y"])[:, None] - truth["y"][None, :]) ** 2
    nearest = np.argmin(d2, axis=1)
    kind = np.where(np.sqrt(d2[np.arange(len(catalog)), nearest]) < 2.0, truth["kind"][nearest], "other")
    return exposure, catalog, np.asarray(kind)


@pytest.fixture(scope="module")
def results(sim):
    exposure, catalog, _ = sim
    return {model: fit_psf(exposure, catalog, PsfConfig(model=model), seed=SEED, pixel_scale_arcsec=0.2)
            for model in ("pixel", "moffat")}


def test_candidates_exclude_galaxies_saturated_stars_and_blends(sim):
    exposure, catalog, kind = sim
    candidate = select_psf_candidates(catalog, exposure, PsfConfig())
    assert candidate.dtype == bool and candidate.shape == (len(catalog),)
    for other in ("galaxy", "saturated", "pair", "other"):
        assert not np.any(candidate & (kind == other)), other
    stars = kind == "star"
    assert stars.sum() > 200
    assert np.count_nonzero(candidate & stars) >= 0.95 * stars.sum()
    # The saturated stars were detected and are SAT-masked, so the test means something.
    assert np.count_nonzero(kind == "saturated") == 6
    assert np.count_nonzero(kind == "galaxy") == 25


def test_a_neighbour_within_the_isolation_radius_excludes_a_star(sim):
    exposure, catalog, _ = sim
    before = select_psf_candidates(catalog, exposure, PsfConfig())
    star = np.flatnonzero(before)[10]
    crowded = catalog.copy()
    crowded.add_row({name: catalog[name][star] for name in catalog.colnames})
    crowded["x"][-1] += 9.0  # a faint detection 9 pix away (inside 12 pix)
    crowded["apflux_12_0"][-1] = 10 * crowded["apflux_12_0_err"][-1]
    after = select_psf_candidates(crowded, exposure, PsfConfig())
    assert not after[star] and not after[-1]
    np.testing.assert_array_equal(np.delete(after[:-1], star), np.delete(before, star))
    assert select_psf_candidates(crowded, exposure, PsfConfig(isolation_radius_pix=8.0))[star]
    # A deblended child (parent != 0) is never a candidate.
    crowded["parent"][star] = 1
    assert not select_psf_candidates(crowded, exposure, PsfConfig(isolation_radius_pix=8.0))[star]


def test_max_candidates_keeps_the_highest_snr(sim):
    exposure, catalog, _ = sim
    candidate = select_psf_candidates(catalog, exposure, PsfConfig(max_candidates=40))
    assert candidate.sum() == 40
    snr = np.asarray(catalog["apflux_12_0"] / catalog["apflux_12_0_err"])
    everything = select_psf_candidates(catalog, exposure, PsfConfig())
    assert snr[candidate].min() >= np.sort(snr[everything])[-40]


@pytest.mark.parametrize("model", ["pixel", "moffat"])
def test_fwhm_recovered_across_the_field(results, model):
    result = results[model]
    x = np.array([40.0, 600.0, 320.0, 90.0, 560.0, 200.0])
    y = np.array([35.0, 520.0, 280.0, 480.0, 60.0, 150.0])
    fwhm = result.model.fwhm_pix_at(x, y)
    np.testing.assert_allclose(fwhm, true_fwhm(x, y), rtol=0.02)
    assert result.model.fwhm_pix_at(320.0, 280.0) == pytest.approx(true_fwhm(320.0, 280.0), rel=0.01)
    grid_x, grid_y = np.meshgrid((np.arange(5) + 0.5) * NX / 5 - 0.5, (np.arange(5) + 0.5) * NY / 5 - 0.5)
    assert result.fwhm_pix == pytest.approx(np.median(true_fwhm(grid_x, grid_y)), rel=0.02)
    assert result.fwhm_arcsec == pytest.approx(0.2 * result.fwhm_pix)
    e1, e2 = result.model.shape_at(x, y)
    np.testing.assert_allclose(e1, E1, atol=0.01)
    np.testing.assert_allclose(e2, E2, atol=0.01)
    assert result.ellipticity == pytest.approx(np.hypot(E1, E2), abs=0.01)


@pytest.mark.parametrize("model", ["pixel", "moffat"])
def test_model_image_matches_the_true_psf(results, sim, model):
    _, catalog, kind = sim
    result = results[model]
    stars = np.flatnonzero(kind == "star")[::40]
    x = np.concatenate([np.asarray(catalog["x"])[stars], [30.3, 610.8]])
    y = np.concatenate([np.asarray(catalog["y"])[stars], [500.6, 25.2]])
    model_images = result.model.image_at(x, y, shape=(25, 25))
    truth = true_psf_images(x, y, 25)
    peak = truth.max(axis=(1, 2))
    rms = np.sqrt(np.mean((model_images - truth) ** 2, axis=(1, 2))) / peak
    assert np.all(rms < 0.01), rms
    assert np.all(np.abs(model_images - truth).max(axis=(1, 2)) / peak < 0.03)


@pytest.mark.parametrize("model", ["pixel", "moffat"])
def test_image_at_is_vectorised_normalised_and_centred(results, model):
    psf = results[model].model
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, NX - 1, 40), rng.uniform(0, NY - 1, 40)
    for k in (21, 25):
        images = psf.image_at(x, y, shape=(k, k))
        assert images.shape == (40, k, k)
        np.testing.assert_allclose(images.sum(axis=(1, 2)), 1.0, atol=1e-6)
        offsets = np.arange(k) - k // 2
        cx = (images.sum(axis=1) * offsets).sum(axis=1)
        cy = (images.sum(axis=2) * offsets).sum(axis=1)
        np.testing.assert_allclose(cx, x - np.floor(x + 0.5), atol=0.02)
        np.testing.assert_allclose(cy, y - np.floor(y + 0.5), atol=0.02)
    single = psf.image_at(x[3], y[3], shape=(25, 25))
    assert single.shape == (25, 25)
    np.testing.assert_allclose(single, psf.image_at(x, y, shape=(25, 25))[3], atol=1e-12)
    assert np.isnan(psf.image_at([np.nan], [3.0], shape=(9, 9))).all()
    assert isinstance(psf.fwhm_pix_at(10.0, 10.0), float)


@pytest.mark.parametrize("model", ["pixel", "moffat"])
def test_reserved_stars_are_held_out_and_their_residuals_reported(results, model):
    result = results[model]
    assert result.n_candidates == result.candidate.sum() > 150
    assert result.n_reserved == result.reserved.sum() == round(0.2 * result.n_candidates)
    assert not np.any(result.used & result.reserved)
    assert np.all(result.candidate[result.used | result.reserved])
    assert result.n_used == result.used.sum() >= result.n_candidates - result.n_reserved - 10
    reserved = result.reserved_residual
    assert reserved is not None and reserved.n_stars == result.n_reserved
    # A right model leaves noise: chi^2/dof near 1 on stars it never saw.
    assert 0.85 < reserved.chi2_per_dof < 1.2
    assert 0.85 < result.used_residual.chi2_per_dof < 1.2
    assert reserved.rms_per_peak < 0.02
    meta = result.to_metadata()
    assert meta["PSF_NRESERVED"] == result.n_reserved and meta["PSF_MODEL"] == model


def test_reserved_stars_do_not_influence_the_model(sim, results):
    """Garbling every reserved star's pixels leaves the model bit-for-bit unchanged."""
    exposure, catalog, _ = sim
    result = results["pixel"]
    garbled = exposure.copy()
    h = 12
    for xs, ys in zip(np.asarray(catalog["x"])[result.reserved], np.asarray(catalog["y"])[result.reserved]):
        ix, iy = int(np.floor(xs + 0.5)), int(np.floor(ys + 0.5))
        garbled.image[iy - h : iy + h + 1, ix - h : ix + h + 1] *= np.float32(-3.0)
    again = fit_psf(garbled, catalog, PsfConfig(), seed=SEED)
    np.testing.assert_array_equal(again.reserved, result.reserved)
    np.testing.assert_array_equal(again.used, result.used)
    np.testing.assert_array_equal(again.model.coefficients, result.model.coefficients)
    assert again.reserved_residual is None or again.reserved_residual.n_stars < result.n_reserved


def test_the_seed_chooses_the_reserved_stars(sim, results):
    exposure, catalog, _ = sim
    other = fit_psf(exposure, catalog, PsfConfig(n_clip_iter=0), seed=SEED + 1)
    assert other.n_reserved == results["pixel"].n_reserved
    assert not np.array_equal(other.reserved, results["pixel"].reserved)


def test_model_is_not_extrapolated_beyond_its_stars(sim, results):
    """Stars only in the left third: the right edge gets the PSF of the nearest fitted stars."""
    exposure, catalog, _ = sim
    x = np.asarray(catalog["x"])
    left = results["pixel"].candidate & (x < NX / 3)
    result = fit_psf(exposure, catalog, PsfConfig(), seed=SEED, candidates=left)
    x_max = result.model.fit_bounds[1]
    assert x_max < NX / 3
    far, edge = result.model.fwhm_pix_at([NX - 5.0, x_max], [280.0, 280.0])
    assert far == pytest.approx(edge, rel=1e-9)
    assert edge == pytest.approx(true_fwhm(x_max, 280.0), rel=0.02)
    np.testing.assert_allclose(result.model.raw_image_at(np.array([NX - 5.0]), np.array([280.0])),
                               result.model.raw_image_at(np.array([x_max]), np.array([280.0])), atol=1e-12)


def test_too_few_stars_raise_psf_error_with_advice(sim):
    exposure, catalog, kind = sim
    few = catalog[np.flatnonzero(kind == "star")[:6]]
    with pytest.raises(PsfError) as info:
        fit_psf(exposure, few, PsfConfig(), seed=SEED)
    err = info.value
    assert err.stage == "psf"
    assert err.figures["n_candidates"] == 6 and err.figures["min_stars"] == 10
    assert "candidate_min_snr" in err.message
    # A threshold nothing passes: the selection counts say where stars were lost.
    with pytest.raises(PsfError) as info:
        fit_psf(exposure, catalog, PsfConfig(candidate_min_snr=1e6), seed=SEED)
    assert info.value.figures["n_bright"] == 0 and info.value.figures["n_unsaturated"] > 200


def _pixel_gaussian(u, centre, sigma):
    """A unit-flux Gaussian integrated over pixels centred on ``u`` (1-d)."""
    scale = np.sqrt(2) * sigma
    return 0.5 * (erf((u - centre + 0.5) / scale) - erf((u - centre - 0.5) / scale))


@pytest.mark.parametrize("out_size", [25, 21])
def test_sinc_shift_moves_an_analytic_gaussian(out_size):
    """A pixel-integrated Gaussian of FWHM 3 pix, shifted, is the Gaussian at the new centre.

    Band-limited interpolation of a FWHM-3 PSF: errors < 1e-4 of the peak (the
    documented figure), flux within the stamp as the truth's to 1e-6.
    """
    sigma = 3.0 / FWHM_PER_SIGMA
    u = np.arange(25) - 12.0
    image = _pixel_gaussian(u, 0.0, sigma)[:, None] * _pixel_gaussian(u, 0.0, sigma)[None, :]
    sx = np.array([0.3, 1.2, -0.5, 0.0, -0.999])
    sy = np.array([-0.45, -0.7, 0.5, 0.0, 0.25])
    shifted = sinc_shift(np.repeat(image[None], sx.size, axis=0), sx, sy, out_size)
    uo = np.arange(out_size) - out_size // 2
    truth = _pixel_gaussian(uo[None, :, None], sy[:, None, None], sigma) * \
        _pixel_gaussian(uo[None, None, :], sx[:, None, None], sigma)
    assert shifted.shape == (sx.size, out_size, out_size)
    assert np.abs(shifted - truth).max() < 1e-4 * image.max()
    np.testing.assert_allclose(shifted.sum(axis=(1, 2)), truth.sum(axis=(1, 2)), atol=1e-6)
    # A whole shift (here none) is the identity, to rounding.
    np.testing.assert_allclose(shifted[3], truth[3], atol=1e-15)


def test_sinc_shift_is_the_fourier_phase_shift():
    """The matrix form gives the FFT phase shift's numbers, also at and near whole-pixel shifts."""
    rng = np.random.default_rng(11)
    images = rng.normal(size=(60, 25, 25))
    sx = np.concatenate([rng.uniform(-1.5, 1.5, 40), [1.0, -1.0, 2.0, 1 + 1e-12, -1 - 1e-9, 0.5, -0.5, 3.0],
                         rng.uniform(-0.5, 0.5, 12)])
    sy = rng.permutation(sx)
    for out_size in (21, 25, 29):
        np.testing.assert_allclose(sinc_shift(images, sx, sy, out_size), fft_shift(images, sx, sy, out_size),
                                   rtol=0, atol=1e-12)
    # Whole-pixel shifts move the pixels, zeros entering.
    moved = sinc_shift(images[:1], np.array([2.0]), np.array([-1.0]), 25)[0]
    expected = np.zeros((25, 25))
    expected[:-1, 2:] = images[0, 1:, :-2]
    np.testing.assert_allclose(moved, expected, atol=1e-13)
    # A non-finite shift spoils its own image only.
    bad = sinc_shift(images[:2], np.array([np.nan, 0.3]), np.array([0.0, 0.1]), 21)
    assert np.isnan(bad[0]).all() and np.isfinite(bad[1]).all()


def test_gather_stamps_are_the_image_around_each_pixel():
    plane = np.arange(40 * 50).reshape(40, 50)
    ix, iy = np.array([3, 46, 20]), np.array([3, 36, 10])
    stamps = gather_stamps(plane, ix, iy, 3)
    for stamp, x, y in zip(stamps, ix, iy):
        np.testing.assert_array_equal(stamp, plane[y - 3 : y + 4, x - 3 : x + 4])


def test_gaussian_fwhm_and_ellipticity_are_exact():
    """An axis-aligned pixel-integrated Gaussian: FWHM = 2.3548 sqrt(sx sy), e1 = (sx^2-sy^2)/(sx^2+sy^2)."""
    sx, sy = 1.6, 1.4
    u = np.arange(25) - 12.0

    def pixel_gauss(c, s):
        return 0.5 * (erf((c + 0.5) / (np.sqrt(2) * s)) - erf((c - 0.5) / (np.sqrt(2) * s)))

    image = pixel_gauss(u, sy)[:, None] * pixel_gauss(u, sx)[None, :]
    psf = PixelPsfModel(image[None], image_shape=(100, 120), spatial_order=0)
    assert psf.fwhm_pix_at(50.0, 40.0) == pytest.approx(FWHM_PER_SIGMA * np.sqrt(sx * sy), rel=1e-3)
    e1, e2 = psf.shape_at(50.0, 40.0)
    assert e1 == pytest.approx((sx**2 - sy**2) / (sx**2 + sy**2), abs=1e-3)
    assert e2 == pytest.approx(0.0, abs=1e-4)
    # The model image at an integer position is the input image itself.
    np.testing.assert_allclose(psf.image_at(50.0, 40.0, shape=(25, 25)), image / image.sum(), atol=1e-9)


@pytest.mark.parametrize("model", ["pixel", "moffat"])
def test_model_round_trips_through_fits(results, model, tmp_path):
    psf = results[model].model
    path = tmp_path / "psf.fits"
    fits.HDUList([fits.PrimaryHDU(), *psf.to_hdulist()]).writeto(path)
    with fits.open(path) as hdul:
        again = psf_model_from_hdulist(hdul)
    x, y = np.array([10.0, 300.5, 630.2]), np.array([5.0, 270.4, 550.9])
    np.testing.assert_allclose(again.image_at(x, y, shape=(21, 21)), psf.image_at(x, y, shape=(21, 21)),
                               atol=1e-12)
    assert again.kind == model and again.spatial_order == psf.spatial_order
    assert again.fit_bounds == pytest.approx(psf.fit_bounds)


def test_config_validation_and_json_round_trip():
    config = PsfConfig(model="moffat", stamp_size_pix=21, spatial_order=1)
    assert config_from_dict(PsfConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="odd"):
        config_from_dict(PsfConfig, {"stamp_size_pix": 24})
    with pytest.raises(ConfigError):
        config_from_dict(PsfConfig, {"model": "gaussian"})
    with pytest.raises(ConfigError, match="reserve_fraction"):
        fit_psf(None, Table(), dataclasses.replace(PsfConfig(), reserve_fraction=1.5), seed=1)
