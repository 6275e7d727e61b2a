"""Cosmic-ray detection and repair against injected truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from calibration.configbase import config_from_dict, config_to_dict
from calibration.cosmicrays import CosmicRayConfig, CosmicRayResult, find_and_repair_cosmic_rays
from calibration.errors import ConfigError, PsfError
from calibration.exposure import MaskPlane, make_exposure

SKY_RMS = 10.0  # ADU, sky already subtracted, gain 1 e/ADU
SHAPE = (400, 400)


def _pixel_integrated_gaussians(shape, x, y, flux, fwhm, half=10):
    """Sum of pixel-integrated circular Gaussians (no Python loop per star)."""
    sigma = fwhm / 2.3548200450309493
    ny, nx = shape
    img = np.zeros((ny + 2 * half + 2, nx + 2 * half + 2))
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    off = np.arange(-half, half + 1)
    edges = off[None, :] - 0.5
    cdf = lambda e, c: 0.5 * (1 + erf((e - c[:, None]) / (np.sqrt(2) * sigma)))  # noqa: E731
    px = cdf(edges + 1, x - ix) - cdf(edges, x - ix)
    py = cdf(edges + 1, y - iy) - cdf(edges, y - iy)
    stamps = flux[:, None, None] * py[:, :, None] * px[:, None, :]
    rows = (iy[:, None] + off[None, :] + half + 1)[:, :, None]
    cols = (ix[:, None] + off[None, :] + half + 1)[:, None, :]
    np.add.at(img, (np.broadcast_to(rows, stamps.shape), np.broadcast_to(cols, stamps.shape)), stamps)
    return img[half + 1 : half + 1 + ny, half + 1 : half + 1 + nx]


def _stars(rng, n, fwhm, shape=SHAPE, flux_range=(2e3, 2e6)):
    x = rng.uniform(15, shape[1] - 15, n)
    y = rng.uniform(15, shape[0] - 15, n)
    flux = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), n))
    return x, y, flux, _pixel_integrated_gaussians(shape, x, y, flux, fwhm)


def _observe(rng, model):
    var = SKY_RMS**2 + model  # gain 1: Poisson variance of the star in ADU^2
    image = model + rng.normal(0.0, np.sqrt(var))
    return image, var


def _inject_cosmic_rays(rng, image, star_x, star_y, n_hits=50):
    """Add ``n_hits`` 1-3 pixel straight tracks, 20-200 sigma per pixel, > 4 pix from star centres."""
    ny, nx = image.shape
    cand = np.column_stack([rng.integers(5, nx - 5, 4000), rng.integers(5, ny - 5, 4000)])
    d_star = np.hypot(cand[:, None, 0] - star_x[None], cand[:, None, 1] - star_y[None]).min(axis=1)
    cand = cand[d_star > 4]
    d_cr = np.hypot(*(cand[:, None, :] - cand[None, :, :]).transpose(2, 0, 1))
    d_cr[np.triu_indices(len(cand))] = np.inf  # compare each with earlier candidates only
    cand = cand[d_cr.min(axis=1) > 12][:n_hits]
    assert len(cand) == n_hits
    length = rng.integers(1, 4, n_hits)
    direction = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])[rng.integers(0, 4, n_hits)]
    step = np.arange(3)
    ys = cand[:, 1, None] + direction[:, 0, None] * step[None]
    xs = cand[:, 0, None] + direction[:, 1, None] * step[None]
    used = step[None, :] < length[:, None]
    amp = rng.uniform(20, 200, ys.shape) * SKY_RMS
    np.add.at(image, (ys[used], xs[used]), amp[used])
    return ys, xs, used


def _scene(seed, fwhm=3.0, n_stars=40):
    rng = np.random.default_rng(seed)
    sx, sy, flux, model = _stars(rng, n_stars, fwhm)
    image, var = _observe(rng, model)
    ys, xs, used = _inject_cosmic_rays(rng, image, sx, sy)
    exposure = make_exposure(image, variance=var)
    return exposure, (sx, sy, flux), (ys, xs, used)


def _centre_flagged(mask, sx, sy, plane=MaskPlane.CR):
    """True for stars with ``plane`` set anywhere in the central 3x3."""
    ix = np.floor(sx + 0.5).astype(int)
    iy = np.floor(sy + 0.5).astype(int)
    d = np.arange(-1, 2)
    sub = mask[(iy[:, None, None] + d[None, :, None]), (ix[:, None, None] + d[None, None, :])]
    return ((sub & plane) != 0).any(axis=(1, 2))


def test_injected_cosmic_rays_found_stars_spared_and_repaired():
    exposure, (sx, sy, flux), (ys, xs, used) = _scene(seed=11)
    result = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(), psf_fwhm_pix=3.0, background_rms_adu=SKY_RMS
    )
    assert isinstance(result, CosmicRayResult)
    is_cr = (exposure.mask & MaskPlane.CR) != 0
    hit_pix = np.zeros(used.shape, bool)
    hit_pix[used] = is_cr[ys[used], xs[used]]
    found = (hit_pix | ~used).all(axis=1)
    assert found.mean() >= 0.95, found.mean()
    assert not _centre_flagged(exposure.mask, sx, sy).any()
    assert flux.max() > 1e6  # some stars are very bright (peak ~ 1e4 sigma)

    # Every flagged pixel is interpolated; away from stars the repaired values
    # are sky again (median of >= 16 sky pixels: well within 4 sigma of 0).
    assert (exposure.mask[is_cr] & MaskPlane.INTRP).all()
    d_star = np.hypot(xs[:, :1] - sx[None], ys[:, :1] - sy[None]).min(axis=1)
    far = hit_pix & (d_star[:, None] > 12)
    assert far.sum() > 60
    assert np.all(np.abs(exposure.image[ys[far], xs[far]]) < 4 * SKY_RMS)
    assert np.all(exposure.variance[ys[far], xs[far]] < 1.5 * SKY_RMS**2)

    # 50 events, each grown to a few pixels; nothing else flagged.
    assert 45 <= result.n_cosmic_rays <= 50
    assert result.n_pixels == int(is_cr.sum())
    assert result.n_repaired == result.n_pixels
    assert not result.too_many and result.warnings == ()


@pytest.mark.parametrize(
    ("fwhm", "assumed_fwhm"), [(2.0, 2.0), (2.5, 2.5), (3.0, 3.0), (4.0, 4.0), (3.0, 4.5)]
)
def test_bright_star_cores_are_never_flagged(fwhm, assumed_fwhm):
    """Also when the FWHM handed over is 50% too large (stars then look sharper)."""
    rng = np.random.default_rng(int(fwhm * 10 + assumed_fwhm))
    sx, sy, flux, model = _stars(rng, 60, fwhm, flux_range=(1e3, 1e7))
    image, var = _observe(rng, model)
    exposure = make_exposure(image, variance=var)
    result = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(), psf_fwhm_pix=assumed_fwhm, background_rms_adu=SKY_RMS
    )
    assert not _centre_flagged(exposure.mask, sx, sy).any()
    assert result.n_pixels == 0


def test_moffat_star_sharper_than_gaussian_is_spared():
    """A beta=2.5 Moffat profile is 2.5% sharper at 1 pix than a Gaussian of equal FWHM."""
    fwhm, beta = 3.0, 2.5
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    sub = 5  # render on a 5x finer grid, then bin: pixel-integrated
    yy, xx = (np.mgrid[0 : 64 * sub, 0 : 64 * sub] + 0.5) / sub - 0.5
    profile = (1 + ((xx - 31.7) ** 2 + (yy - 32.2) ** 2) / alpha**2) ** -beta
    model = profile.reshape(64, sub, 64, sub).mean(axis=(1, 3))
    model *= 5e6 / model.sum()
    rng = np.random.default_rng(3)
    image, var = _observe(rng, model)
    exposure = make_exposure(image, variance=var)
    result = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(), psf_fwhm_pix=fwhm, background_rms_adu=SKY_RMS
    )
    assert result.n_pixels == 0


def test_saturated_pixels_left_alone():
    rng = np.random.default_rng(5)
    image = rng.normal(0.0, SKY_RMS, (64, 64))
    image[20, 20] = image[40, 41] = 5000.0
    mask = np.zeros(image.shape, np.int32)
    mask[20, 20] = MaskPlane.SAT
    exposure = make_exposure(image, variance=np.full(image.shape, SKY_RMS**2), mask=mask)
    before = exposure.image.copy()
    result = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(), psf_fwhm_pix=3.0, background_rms_adu=SKY_RMS
    )
    assert exposure.image[20, 20] == before[20, 20]
    assert exposure.mask[20, 20] == MaskPlane.SAT
    assert exposure.mask[40, 41] & MaskPlane.CR and exposure.mask[40, 41] & MaskPlane.INTRP
    assert result.n_pixels == 9 and result.n_cosmic_rays == 1  # one hit grown to 3x3


def test_too_many_cosmic_rays_is_a_warning_not_an_error():
    rng = np.random.default_rng(6)
    image = rng.normal(0.0, SKY_RMS, (100, 100))
    image[::5, ::5] += 2000.0  # 400 isolated hits, 3600 grown pixels = 36%
    exposure = make_exposure(image, variance=np.full(image.shape, SKY_RMS**2))
    result = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(), psf_fwhm_pix=3.0, background_rms_adu=SKY_RMS
    )
    assert result.too_many and result.fraction > 0.01
    assert "cosmic rays" in result.warnings[0]
    assert result.n_cosmic_rays == 400
    assert np.abs(exposure.image).max() < 6 * SKY_RMS


def test_pure_noise_has_no_false_positives_and_disabled_does_nothing():
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, SKY_RMS, (512, 512))
    exposure = make_exposure(image, variance=np.full(image.shape, SKY_RMS**2))
    result = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(), psf_fwhm_pix=3.0, background_rms_adu=SKY_RMS
    )
    assert result.n_pixels == 0
    exposure.image[100, 100] = 5000.0
    off = find_and_repair_cosmic_rays(
        exposure, CosmicRayConfig(enabled=False), psf_fwhm_pix=3.0, background_rms_adu=SKY_RMS
    )
    assert off == CosmicRayResult() and exposure.image[100, 100] == 5000.0


def test_bad_arguments_and_config_round_trip():
    exposure = make_exposure(np.zeros((16, 16)))
    with pytest.raises(PsfError):
        find_and_repair_cosmic_rays(
            exposure, CosmicRayConfig(), psf_fwhm_pix=float("nan"), background_rms_adu=1.0
        )
    config = CosmicRayConfig(n_sigma=5.0, grow_pix=2)
    assert config_from_dict(CosmicRayConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="grow_pix"):
        config_from_dict(CosmicRayConfig, {"grow_pix": -1})
