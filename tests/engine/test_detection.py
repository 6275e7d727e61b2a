"""Detection and deblend families against truth (seeded synthetic images)."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy import units as u
from scipy.spatial import cKDTree

from calibration.background import BackgroundConfig
from calibration.configbase import config_from_dict, config_to_dict
from calibration.detection import (
    CrowdedFieldError,
    DetectionConfig,
    detect_and_refine_background,
    detect_sources,
    gaussian_kernel,
)
from calibration.errors import CalibrationError, ConfigError, NoSourcesError
from calibration.exposure import MaskPlane, make_exposure

SIGMA_ADU = 10.0
PSF_SIGMA_PIX = 1.5
PSF_FWHM_PIX = 2.3548 * PSF_SIGMA_PIX


def _render(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Gaussian PSF stars (flux in ADU) sampled at pixel centres, on a zero sky."""
    half = 8
    image = np.zeros(shape)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
    px = ix[:, None, None] + dx  # (n, 17, 17) pixel coordinates of each stamp
    py = iy[:, None, None] + dy
    r2 = (px - x[:, None, None]) ** 2 + (py - y[:, None, None]) ** 2
    values = flux[:, None, None] * np.exp(-r2 / (2 * PSF_SIGMA_PIX**2)) / (2 * np.pi * PSF_SIGMA_PIX**2)
    inside = (px >= 0) & (px < shape[1]) & (py >= 0) & (py < shape[0])
    np.add.at(image, (py[inside], px[inside]), values[inside])
    return image


def _flux_for_snr(snr: np.ndarray) -> np.ndarray:
    """Flux whose optimal (PSF-weighted) S/N is ``snr``: S/N = F / (sigma sqrt(4 pi s^2))."""
    return snr * SIGMA_ADU * np.sqrt(4 * np.pi * PSF_SIGMA_PIX**2)


def _star_field(seed: int, n_grid: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(64 n)^2 noise image with n^2 isolated stars on a jittered 64-pix grid."""
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[0:n_grid, 0:n_grid]
    x = 32.0 + 64.0 * gx.ravel() + rng.uniform(-16, 16, gx.size)
    y = 32.0 + 64.0 * gy.ravel() + rng.uniform(-16, 16, gy.size)
    snr = 10 ** rng.uniform(np.log10(3.0), np.log10(2000.0), x.size)  # S/N 3 .. 2000
    image = _render((64 * n_grid, 64 * n_grid), x, y, _flux_for_snr(snr))
    image += rng.normal(0.0, SIGMA_ADU, image.shape)
    return image, x, y, snr


def test_completeness_and_false_detections_on_clean_field() -> None:
    image, x, y, snr = _star_field(seed=21)
    exposure = make_exposure(image)
    result = detect_sources(exposure, DetectionConfig(), background_rms_adu=SIGMA_ADU,
                            psf_fwhm_pix=PSF_FWHM_PIX)
    cat = result.catalog[result.catalog["detect_isPrimary"]]
    det = np.column_stack([cat["x"], cat["y"]])
    dist, _ = cKDTree(det).query(np.column_stack([x, y]))
    found = dist < 2.0
    bright = snr >= 10
    # 256 stars, ~180 above S/N 10: one miss would already be 0.6 %; the
    # matched-filter peak S/N of an S/N 10 star is ~10 sigma, twice the threshold.
    assert found[bright].mean() > 0.99
    # False detections: primaries more than 3 pix from every injected star. A
    # 5-sigma matched-filter threshold gives ~3e-7 false peaks per independent
    # element (~1e5 here), so any false detection would come from bad deblending.
    dist_det, _ = cKDTree(np.column_stack([x, y])).query(det)
    false = np.count_nonzero(dist_det > 3.0)
    assert false <= 0.005 * len(cat)
    # Positions of bright stars: within 4 times their error (the distance over
    # the quadrature error is Rayleigh-like; P(> 4) ~ 3e-4) and 0.15 pix.
    d, j = cKDTree(det).query(np.column_stack([x, y])[snr > 100])
    assert np.all(d < 4 * np.hypot(cat["x_err"], cat["y_err"])[j])
    assert np.all(d < 0.15)
    # Isolated stars give one primary top-level row each.
    assert np.all(cat["parent"][j] == 0) and np.all(cat["deblend_nChild"][j] == 0)


def test_catalog_columns_have_units_and_descriptions() -> None:
    image, *_ = _star_field(seed=2, n_grid=6)
    result = detect_sources(make_exposure(image), background_rms_adu=SIGMA_ADU)
    cat = result.catalog
    for name in ("id", "parent", "deblend_nChild", "detect_isPrimary", "footprint_id", "x", "y",
                 "a", "b", "theta", "shape_xx", "shape_yy", "shape_xy", "npix", "peak_value",
                 "flux", "flag_deblend_truncated"):
        assert name in cat.colnames
    for col in cat.itercols():
        assert col.description, col.name
    assert cat["x"].unit == u.pix and cat["shape_xx"].unit == u.pix**2
    assert cat["theta"].unit == u.rad and cat["flux"].unit == u.adu
    assert cat["id"].dtype == np.int64
    np.testing.assert_array_equal(cat["id"], np.arange(1, len(cat) + 1))
    assert result.smoothing_fwhm_pix == 3.0  # no PSF given: the fallback filter
    assert result.threshold_adu == pytest.approx(
        5.0 * SIGMA_ADU * np.sqrt(np.sum(gaussian_kernel(3.0).astype(float) ** 2)))


def test_blended_pair_gives_parent_and_two_children() -> None:
    shape = (128, 160)
    sep_pix = 2.5 * PSF_FWHM_PIX
    x = np.array([60.0, 60.0 + sep_pix, 130.0])
    y = np.array([64.0, 64.3, 30.0])
    flux = _flux_for_snr(np.array([300.0, 200.0, 100.0]))
    rng = np.random.default_rng(8)
    exposure = make_exposure(_render(shape, x, y, flux) + rng.normal(0, SIGMA_ADU, shape))
    exposure.mask[5, 5] |= MaskPlane.DETECTED  # stale bit: must be cleared
    result = detect_sources(exposure, background_rms_adu=SIGMA_ADU, psf_fwhm_pix=PSF_FWHM_PIX)
    cat = result.catalog
    assert len(cat) == 4 and result.n_parents == 2 and result.n_children == 2

    parent = cat[cat["deblend_nChild"] == 2]
    assert len(parent) == 1
    pid = parent["id"][0]
    assert parent["parent"][0] == 0 and not parent["detect_isPrimary"][0]
    kids = cat[cat["parent"] == pid]
    assert len(kids) == 2 and np.all(kids["detect_isPrimary"])
    assert np.all(kids["footprint_id"] == pid) and np.all(kids["deblend_nChild"] == 0)
    order = np.argsort(kids["x"])
    np.testing.assert_allclose(kids["x"][order], x[:2], atol=0.5)
    np.testing.assert_allclose(kids["y"][order], y[:2], atol=0.5)
    # The parent is measured on the whole footprint: flux ~ both stars.
    assert parent["flux"][0] > kids["flux"].sum() * 0.95
    assert parent["npix"][0] == np.count_nonzero(result.segmentation == pid)

    single = cat[(cat["parent"] == 0) & (cat["id"] != pid)]
    assert len(single) == 1 and single["detect_isPrimary"][0] and single["deblend_nChild"][0] == 0
    assert abs(single["x"][0] - 130.0) < 0.3

    # Maps: top-level ids, primary ids, DETECTED exactly on footprints.
    assert set(np.unique(result.segmentation)) == {0, pid, single["id"][0]}
    assert set(np.unique(result.deblend_segmentation)) == {0, *kids["id"], single["id"][0]}
    detected = (exposure.mask & MaskPlane.DETECTED) != 0
    np.testing.assert_array_equal(detected, result.segmentation > 0)
    assert result.n_primary == 3


def test_no_deblend_gives_only_isolated_rows() -> None:
    shape = (96, 96)
    x = np.array([40.0, 40.0 + 2.5 * PSF_FWHM_PIX])
    y = np.array([48.0, 48.0])
    rng = np.random.default_rng(9)
    exposure = make_exposure(_render(shape, x, y, _flux_for_snr(np.array([300.0, 300.0])))
                             + rng.normal(0, SIGMA_ADU, shape))
    result = detect_sources(exposure, DetectionConfig(do_deblend=False),
                            background_rms_adu=SIGMA_ADU, psf_fwhm_pix=PSF_FWHM_PIX)
    assert len(result.catalog) == 1
    assert result.catalog["detect_isPrimary"][0] and result.catalog["parent"][0] == 0


def test_noise_only_image_raises_no_sources() -> None:
    rng = np.random.default_rng(4)
    exposure = make_exposure(rng.normal(0.0, SIGMA_ADU, (256, 256)))
    with pytest.raises(NoSourcesError) as info:
        detect_sources(exposure, background_rms_adu=SIGMA_ADU)
    assert info.value.stage == "detection"
    assert info.value.figures["threshold_sigma"] == 5.0
    assert info.value.figures["background_rms_adu"] == pytest.approx(SIGMA_ADU)


def test_edge_plane_and_max_sources() -> None:
    image, *_ = _star_field(seed=5, n_grid=6)
    exposure = make_exposure(image)
    with pytest.raises(CrowdedFieldError, match="max_sources") as info:
        detect_sources(exposure, background_rms_adu=SIGMA_ADU, max_sources=10)
    assert info.value.figures["max_sources"] == 10
    detect_sources(exposure, DetectionConfig(edge_width_pix=7), background_rms_adu=SIGMA_ADU)
    edge = (exposure.mask & MaskPlane.EDGE) != 0
    assert edge[:7].all() and edge[:, -7:].all() and not edge[7:-7, 7:-7].any()


def test_sep_buffer_overflow_becomes_typed_error(monkeypatch) -> None:
    def overflow(*args, **kwargs):
        raise Exception("internal pixel buffer full: The limit of 300 active object pixels")

    monkeypatch.setattr(sep, "extract", overflow)
    with pytest.raises(CrowdedFieldError, match="pixstack_pix") as info:
        detect_sources(make_exposure(np.random.default_rng(0).normal(0, 1, (64, 64))))
    assert isinstance(info.value, CalibrationError) and info.value.stage == "detection"


def test_detect_and_refine_background() -> None:
    image, x, y, snr = _star_field(seed=13)
    yy, xx = np.mgrid[0:1024, 0:1024]
    sky = 500.0 + 0.02 * xx + 0.01 * yy  # 20 + 10 ADU gradient = 2 + 1 sigma
    exposure = make_exposure(image + sky)
    result, background = detect_and_refine_background(
        exposure, DetectionConfig(), BackgroundConfig(box_size_pix=128, mask_planes=("BAD",)),
        psf_fwhm_pix=PSF_FWHM_PIX,
    )
    assert "DETECTED" in background.config.mask_planes  # added for the second pass
    assert np.abs(background.level_image - sky).max() < 0.2 * SIGMA_ADU
    np.testing.assert_allclose(exposure.image, image + sky - background.level_image, atol=1e-3)
    cat = result.catalog[result.catalog["detect_isPrimary"]]
    dist, _ = cKDTree(np.column_stack([cat["x"], cat["y"]])).query(np.column_stack([x, y]))
    assert (dist[snr >= 10] < 2.0).mean() > 0.99
    assert result.background_rms_adu == pytest.approx(SIGMA_ADU, rel=0.03)


def test_config_round_trip_and_validation() -> None:
    config = DetectionConfig(threshold_sigma=4.0, smoothing_fwhm_pix=2.5)
    assert config_from_dict(DetectionConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="threshold_sigma"):
        config_from_dict(DetectionConfig, {"threshold_sigma": -1.0})
    with pytest.raises(ConfigError, match="deblend_min_contrast"):
        detect_sources(make_exposure(np.zeros((8, 8))), DetectionConfig(deblend_min_contrast=2.0))


def test_family_mapping_covers_orphans_and_childless_parents() -> None:
    """Rare sep outcomes (cleaning can leave a footprint without a child, or a
    child whose peak is outside every parent footprint) still give a
    consistent catalogue and maps."""
    from calibration.detection import _families

    square = np.zeros((16, 16), np.float32)
    square[6:9, 6:9] = 10.0
    dtype = sep.extract(square, 1.0).dtype  # sep's object record
    parents = np.zeros(3, dtype)
    children = np.zeros(4, dtype)
    parents["x"] = [100, 101, 102]
    children["x"] = [200, 201, 202, 203]
    children["xpeak"] = [0, 0, 0, 3]
    children["ypeak"] = [0, 6, 4, 4]
    seg_p = np.zeros((10, 10), np.int32)
    seg_p[0, 0:2], seg_p[2, 0:2], seg_p[4, 0:4] = 1, 2, 3  # p0: 1 child, p1: none, p2: two
    seg_c = np.zeros((10, 10), np.int32)
    seg_c[0, 0:2], seg_c[6, 0], seg_c[4, 0:2], seg_c[4, 2:4] = 1, 2, 3, 4  # c1 is an orphan
    cat, seg, deb = _families(parents, seg_p, children, seg_c)
    np.testing.assert_array_equal(cat["x"], [200, 101, 102, 202, 203, 201])
    np.testing.assert_array_equal(cat["parent"], [0, 0, 0, 3, 3, 0])
    np.testing.assert_array_equal(cat["deblend_nChild"], [0, 0, 2, 0, 0, 0])
    np.testing.assert_array_equal(cat["detect_isPrimary"], [True, True, False, True, True, True])
    np.testing.assert_array_equal(cat["footprint_id"], [1, 2, 3, 3, 3, 6])
    assert seg[0, 0] == 1 and seg[2, 1] == 2 and np.all(seg[4, 0:4] == 3) and seg[6, 0] == 6
    assert deb[0, 1] == 1 and deb[2, 0] == 2 and deb[4, 1] == 4 and deb[4, 3] == 5 and deb[6, 0] == 6
    assert seg.sum() == 1 * 2 + 2 * 2 + 3 * 4 + 6


def _blend_field(seed: int) -> np.ndarray:
    """Stars in close groups (pairs and triples 2-4 sigma apart) plus isolated ones, with noise."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(40, 984, (120, 2))
    xs, ys, fluxes = [], [], []
    for cx, cy in centres:
        k = rng.integers(1, 4)
        offsets = rng.normal(0, 2.5 * PSF_SIGMA_PIX, (k, 2))
        xs.extend(cx + offsets[:, 0])
        ys.extend(cy + offsets[:, 1])
        fluxes.extend(_flux_for_snr(10 ** rng.uniform(1, 3, k)))
    image = _render((1024, 1024), np.array(xs), np.array(ys), np.array(fluxes))
    return (image + rng.normal(0.0, SIGMA_ADU, image.shape)).astype(np.float32)


def _sep_pass(image: np.ndarray, contrast: float, clean: bool):
    kernel = gaussian_kernel(PSF_FWHM_PIX)
    factor = float(np.sqrt((kernel.astype(float) ** 2).sum()))
    return sep.extract(image, 5.0, err=SIGMA_ADU * factor, minarea=5, filter_kernel=kernel, filter_type="conv",
                       deblend_nthresh=32 if contrast < 1 else 1, deblend_cont=contrast, clean=clean,
                       segmentation_map=True)


def test_parents_rebuilt_from_children_equal_seps_undeblended_pass() -> None:
    """The children's touching footprints are exactly sep's parents, with the same isophotal sums."""
    from calibration.detection import _parents_of, _sparse

    image = _blend_field(11)
    parents, seg_p = _sep_pass(image, 1.0, clean=False)
    children, seg_c = _sep_pass(image, 0.005, clean=False)
    assert len(children) > len(parents) + 20  # real blends were split
    rebuilt, (pix, lab) = _parents_of(children, _sparse(seg_c), width=image.shape[1])
    assert len(rebuilt) == len(parents)
    # Same pixel sets, and each rebuilt parent matches the sep parent owning its peak.
    assert np.array_equal(pix, np.flatnonzero(seg_p))
    owner = seg_p.ravel()[rebuilt["ypeak"] * image.shape[1] + rebuilt["xpeak"]] - 1
    assert np.array_equal(np.sort(owner), np.arange(len(parents)))
    ref = parents[owner]
    np.testing.assert_allclose(rebuilt["flux"], ref["flux"], rtol=1e-4)
    np.testing.assert_array_equal(rebuilt["npix"], ref["npix"])
    # sep weights a child's moments by its deblended share of each pixel, so a
    # blend's barycentre and size differ slightly from the undeblended pass.
    np.testing.assert_allclose(rebuilt["x"], ref["x"], atol=0.3)
    np.testing.assert_allclose(rebuilt["y"], ref["y"], atol=0.3)
    np.testing.assert_allclose(rebuilt["a"], ref["a"], rtol=0.1)
    np.testing.assert_allclose(rebuilt["b"], ref["b"], rtol=0.1)
    assert np.median(np.hypot(rebuilt["x"] - ref["x"], rebuilt["y"] - ref["y"])) < 1e-3
    np.testing.assert_allclose(rebuilt["peak"], ref["peak"], rtol=1e-6)


def test_vectorised_clean_agrees_with_sep_and_keeps_pixels() -> None:
    """Close-pair cleaning removes what sep's all-pairs loop removes (to 1.5% of the sources), losing no pixel."""
    from calibration.detection import _clean, _sparse
    from calibration.testing.simulate import SimConfig, simulate_exposure

    # Bright Moffat stars: their wings make the spurious detections that cleaning is for.
    sim = simulate_exposure(SimConfig(seed=1, shape=(1024, 1024), n_stars=1500, mag_range=(13.0, 21.0)))
    image = np.asarray(sim.exposure.image, np.float32)
    back = sep.Background(image)
    image = image - back.back()
    kernel = gaussian_kernel(3.0)
    options = dict(err=back.globalrms * float(np.sqrt((kernel.astype(float) ** 2).sum())), minarea=5,
                   filter_kernel=kernel, filter_type="conv", deblend_nthresh=32, deblend_cont=0.005,
                   segmentation_map=True)
    raw, seg = sep.extract(image, 5.0, clean=False, **options)
    by_sep, _ = sep.extract(image, 5.0, clean=True, **options)
    kept, (pix, lab) = _clean(raw, _sparse(seg), 1.0, 5)
    removed_sep, removed_ours = len(raw) - len(by_sep), len(raw) - len(kept)
    assert removed_sep > 20
    assert abs(removed_ours - removed_sep) <= 0.015 * len(raw)
    ours = {(round(float(x), 3), round(float(y), 3)) for x, y in zip(kept["x"], kept["y"])}
    theirs = {(round(float(x), 3), round(float(y), 3)) for x, y in zip(by_sep["x"], by_sep["y"])}
    assert len(ours ^ theirs) <= 0.03 * len(raw)
    # Eaten detections' pixels join their eater: the same pixels, labels 1..len(kept).
    assert np.array_equal(pix, np.flatnonzero(seg))
    assert lab.min() == 1 and lab.max() == len(kept)


@pytest.mark.parametrize("guess", [1.5, 3.0, 8.0])
def test_first_look_fwhm_from_adaptive_moments(guess: float) -> None:
    """Gaussian stars: the adaptive-moment FWHM is the true one (2%), whatever the starting guess."""
    from calibration.detection import first_look, psf_fwhm_from_moments

    image, *_ = _star_field(3)
    exposure = make_exposure(image.astype(np.float32), variance=np.full(image.shape, SIGMA_ADU**2, np.float32))
    first = first_look(exposure, DetectionConfig(), psf_fwhm_pix=3.0)
    assert len(first) >= 50
    assert first["x"].min() >= 0 and first["x"].max() < image.shape[1]
    fwhm = psf_fwhm_from_moments(exposure, first, guess_fwhm_pix=guess)
    assert fwhm == pytest.approx(PSF_FWHM_PIX, rel=0.02)


def test_mean_sky_correction_removes_the_mode_bias_of_poisson_sky() -> None:
    """sep's mode estimate sits below a Poisson sky's mean; the clipped-mean correction brings it to the truth."""
    from calibration.background import estimate_background
    from calibration.detection import reestimate_background
    from calibration.testing import SimConfig, simulate_exposure

    sim = simulate_exposure(SimConfig(shape=(2048, 2048), n_stars=1500, mag_range=(15.0, 21.0), n_galaxies=0,
                                      n_saturated_stars=0, n_cosmic_rays=0, seed=1))
    error = {}
    for corrected in (False, True):
        exposure = sim.exposure.copy()
        first = estimate_background(exposure)
        first.subtract_from(exposure.image)
        config = DetectionConfig(mean_sky_correction=corrected)
        detect_sources(exposure, config, background_rms_adu=first, psf_fwhm_pix=3.4)
        model = reestimate_background(exposure, first, None, config)
        error[corrected] = float(model.level_image.mean()) - sim.config.sky_level_adu
        # The image has exactly the model subtracted.
        np.testing.assert_allclose(exposure.image, sim.exposure.image - model.level_image, atol=1e-3)
    assert error[False] < -0.06  # the mode's bias, ~skewness x sigma / 2 of the sky's Poisson noise
    assert abs(error[True]) < 0.05, error  # 0.002 sigma


def test_uniform_noise_uses_one_threshold_and_finds_the_same_sources() -> None:
    """Flat sky: the median rms as one number detects what the per-pixel map detects; a sky
    whose noise varies keeps the map."""
    from calibration.background import estimate_background
    from calibration.detection import uniform_rms_adu
    from calibration.testing import SimConfig, simulate_exposure

    flat = simulate_exposure(SimConfig(shape=(1024, 1024), n_stars=800, n_galaxies=0, n_cosmic_rays=0, seed=8))
    model = estimate_background(flat.exposure)
    rms = uniform_rms_adu(model, 0.05)
    assert rms == pytest.approx(flat.sky_noise_adu, rel=0.03)
    counts = {}
    for tolerance in (0.0, 0.05):
        exposure = flat.exposure.copy()
        model.subtract_from(exposure.image)
        result = detect_sources(exposure, DetectionConfig(uniform_noise_tolerance=tolerance),
                                background_rms_adu=model, psf_fwhm_pix=3.0)
        counts[tolerance] = result.n_primary
    assert abs(counts[0.05] - counts[0.0]) <= 0.01 * counts[0.0]
    # Noise of 10 ADU on the left half, 30 ADU on the right: the map is kept.
    rng = np.random.default_rng(8)
    image = rng.normal(0.0, 10.0, (512, 1024)).astype(np.float32)
    image[:, 512:] *= 3
    two = estimate_background(make_exposure(image, variance=np.full(image.shape, 100.0, np.float32)))
    assert uniform_rms_adu(two, 0.05) is None
