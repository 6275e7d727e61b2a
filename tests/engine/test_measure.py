"""Source measurement against synthetic truth.

Images are sky-subtracted fields of pixel-integrated circular Gaussians at
known positions and fluxes, with Gaussian noise of variance
``sky_rms**2 + model / gain`` (ADU^2); the variance plane is that model variance.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy.special import erf

from calibration.configbase import config_from_dict, config_to_dict
from calibration.errors import CalibrationError, ConfigError, PsfError
from calibration.exposure import MaskPlane, make_exposure
from calibration.measure import MeasureConfig, aperture_column, measure_sources

FWHM = 3.0
SIGMA = FWHM / 2.3548200450309493
SKY_RMS = 10.0


def _profiles(centre, sigma, half):
    """Pixel-integrated 1-D Gaussian profiles, shape (n, 2*half+1), about floor(c+0.5)."""
    pix = np.floor(centre + 0.5).astype(int)
    edges = np.arange(-half, half + 2)[None, :] - 0.5 - (centre - pix)[:, None]
    cdf = 0.5 * (1 + erf(edges / (np.sqrt(2) * np.asarray(sigma, float).reshape(-1, 1))))
    return pix, np.diff(cdf, axis=1)


def _stamps(x, y, sigma, half):
    """Unit-flux pixel-integrated Gaussian stamps ``(n, k, k)`` and their centre pixels."""
    ix, px = _profiles(x, sigma, half)
    iy, py = _profiles(y, sigma, half)
    return ix, iy, py[:, :, None] * px[:, None, :]


def _render(shape, x, y, flux, sigma, half=None):
    """Sum of pixel-integrated Gaussians (vectorised with np.add.at)."""
    sigma = np.broadcast_to(np.asarray(sigma, float), np.shape(x))
    half = half or int(np.ceil(8 * sigma.max()))
    ix, iy, st = _stamps(x, y, sigma, half)
    ny, nx = shape
    img = np.zeros((ny + 2 * half + 2, nx + 2 * half + 2))
    off = np.arange(-half, half + 1)
    rows = np.broadcast_to((iy[:, None] + off + half + 1)[:, :, None], st.shape)
    cols = np.broadcast_to((ix[:, None] + off + half + 1)[:, None, :], st.shape)
    np.add.at(img, (rows, cols), flux[:, None, None] * st)
    return img[half + 1 : half + 1 + ny, half + 1 : half + 1 + nx]


class GaussianPsf:
    """Exact PSF of the test images: ``image_at`` is vectorised over positions."""

    def __init__(self, fwhm_pix: float) -> None:
        self.sigma = fwhm_pix / 2.3548200450309493

    def image_at(self, x, y, shape=(21, 21)):
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        _, _, st = _stamps(x, y, self.sigma, shape[0] // 2)
        return st / st.sum(axis=(1, 2), keepdims=True)


def _observe(rng, model, gain):
    var = SKY_RMS**2 + model / gain
    return model + rng.normal(0.0, np.sqrt(var)), var


def _detections(rng, x, y, flux, sigma):
    """What a detection stage would give: rough positions and moments."""
    n = len(x)
    return Table(
        {
            "id": np.arange(1, n + 1),
            "x": x + rng.normal(0, 0.25, n),
            "y": y + rng.normal(0, 0.25, n),
            "a": np.full(n, 0.9) * sigma,
            "b": np.full(n, 0.8) * sigma,
            "theta": rng.uniform(-1.5, 1.5, n),
            "npix": np.full(n, 30),
            "peak_value": flux / (2 * np.pi * np.asarray(sigma) ** 2),
        }
    )


def _grid_field(seed, flux, *, n_side=20, spacing=64, gain=1.0, sigma=SIGMA):
    """Isolated sources on a jittered grid; returns exposure, detections and truth."""
    rng = np.random.default_rng(seed)
    g = (np.arange(n_side) + 0.5) * spacing
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = np.broadcast_to(flux, x.shape).astype(float)
    shape = (n_side * spacing, n_side * spacing)
    model = _render(shape, x, y, flux, sigma)
    image, var = _observe(rng, model, gain)
    exposure = make_exposure(image, variance=var)
    return exposure, _detections(rng, x, y, flux, sigma), (x, y, flux)


@pytest.fixture(scope="module")
def bright_field():
    rng = np.random.default_rng(1)
    flux = np.exp(rng.uniform(np.log(5e4), np.log(5e5), 400))
    exposure, det, truth = _grid_field(2, flux)
    table = measure_sources(
        exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS, psf=GaussianPsf(FWHM)
    )
    return table, truth


def test_aperture_flux_unbiased_with_consistent_errors(bright_field):
    table, (_, _, flux) = bright_field
    ap = np.asarray(table["apflux_25_0"])
    err = np.asarray(table["apflux_25_0_err"])
    assert abs(np.mean(ap / flux - 1)) < 0.003
    pull = (ap - flux) / err
    assert abs(np.std(pull) - 1) < 0.1
    assert not np.any(table["apflux_25_0_flag"])
    # Smaller apertures hold the Gaussian's enclosed energy (pixel-integrated sigma).
    s2 = SIGMA**2 + 1 / 12
    ee6 = 1 - np.exp(-(6.0**2) / (2 * s2))
    assert abs(np.median(table["apflux_6_0"] / flux) / ee6 - 1) < 0.005
    for r in MeasureConfig().aperture_radii_pix:
        name = aperture_column(r)
        for col in (name, f"{name}_err", f"{name}_flag"):
            assert table[col].description and table[col].unit is not None


def test_psf_flux_unbiased_with_consistent_errors(bright_field):
    table, (_, _, flux) = bright_field
    psf_flux = np.asarray(table["psf_flux"])
    assert abs(np.mean(psf_flux / flux - 1)) < 0.003
    pull = (psf_flux - flux) / table["psf_flux_err"]
    assert abs(np.std(pull) - 1) < 0.1
    assert not np.any(table["psf_flux_flag"])


def test_kron_shape_background_and_flags_of_isolated_stars(bright_field):
    table, (x, y, flux) = bright_field
    # Kron apertures of 2.5 first-moment radii hold ~99% of a Gaussian.
    ratio = np.asarray(table["kron_flux"]) / flux
    assert 0.97 < np.median(ratio) < 1.0
    assert np.all(table["kron_radius"] > 1.0) and not np.any(table["kron_flux_flag"])
    # Window-deconvolved moments recover sigma^2 (+1/12 for pixel integration).
    s2 = SIGMA**2 + 1 / 12
    assert abs(np.median(table["shape_xx"]) / s2 - 1) < 0.03
    assert abs(np.median(table["shape_yy"]) / s2 - 1) < 0.03
    assert abs(np.median(table["shape_xy"])) < 0.02 * s2
    # The annulus (15-25 pix) is empty sky: the median is ~0 within its noise
    # (of the pixels sampled: every other one along each axis by default).
    lb = np.asarray(table["local_background"])
    n_sampled = np.pi * (25**2 - 15**2) / MeasureConfig().local_background_step_pix**2
    assert np.all(np.abs(lb) < 5 * 1.25 * SKY_RMS / np.sqrt(n_sampled))
    assert np.all(table["extendedness"] == 0)
    for col in ("flag_edge", "flag_saturated", "flag_bad", "flag_nodata", "centroid_flag", "shape_flag"):
        assert not np.any(table[col]), col
    assert np.all(np.hypot(table["x"] - x, table["y"] - y) < 0.05)


def _fisher_bound(x, y, flux, gain, half=12):
    """Cramer-Rao bound on x and y: inverse Fisher matrix over (x, y, flux) on the pixel grid.

    mu_i = F * Px_i * Py_i with pixel-integrated profiles; d mu / dx follows
    from d/dx of the integrated Gaussian, [phi(lo) - phi(hi)] / sigma. The
    noise is Gaussian with variance b + mu / gain.
    """
    ix, px = _profiles(x, SIGMA, half)
    iy, py = _profiles(y, SIGMA, half)

    def dprofile(centre, pix):
        edges = np.arange(-half, half + 2)[None, :] - 0.5 - (centre - pix)[:, None]
        phi = np.exp(-0.5 * (edges / SIGMA) ** 2) / (np.sqrt(2 * np.pi) * SIGMA)
        return phi[:, :-1] - phi[:, 1:]

    mu = flux[:, None, None] * py[:, :, None] * px[:, None, :]
    d_x = flux[:, None, None] * py[:, :, None] * dprofile(x, ix)[:, None, :]
    d_y = flux[:, None, None] * dprofile(y, iy)[:, :, None] * px[:, None, :]
    d_f = py[:, :, None] * px[:, None, :]
    var = SKY_RMS**2 + mu / gain
    grads = np.stack([d_x, d_y, d_f], axis=1).reshape(len(x), 3, -1)
    fisher = np.einsum("nik,njk->nij", grads / var.reshape(len(x), 1, -1), grads)
    cov = np.linalg.inv(fisher)
    return np.sqrt(cov[:, 0, 0]), np.sqrt(cov[:, 1, 1])


def test_windowed_centroid_reaches_cramer_rao_bound_and_reports_it():
    """Background-dominated stars (SNR ~ 45): the windowed centroid is efficient.

    For a Gaussian PSF and pure background noise b the bound is
    sigma_x^2 = 8 pi sigma^4 b / F^2; the Fisher matrix computed on the pixel
    grid (with the source's photon noise, gain 4 e/ADU) is the exact bound.
    """
    gain, flux = 4.0, 2000.0
    exposure, det, (x, y, f) = _grid_field(3, flux, gain=gain)
    table = measure_sources(exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS)
    assert not np.any(table["centroid_flag"])
    bx, by = _fisher_bound(x, y, f, gain)
    bound = np.sqrt(np.mean(np.concatenate([bx, by]) ** 2))
    analytic = np.sqrt(8 * np.pi * SIGMA**4 * SKY_RMS**2) / flux
    assert analytic < bound < 1.2 * analytic  # the source's photon noise adds a little
    resid = np.concatenate([table["x"] - x, table["y"] - y])
    scatter = np.std(resid)
    assert scatter / bound < 1.2
    assert abs(np.mean(resid)) < 3 * scatter / np.sqrt(resid.size)
    reported = np.sqrt(np.mean(np.concatenate([table["x_err"], table["y_err"]]) ** 2))
    assert abs(reported / scatter - 1) < 0.2
    # The pull is ~unit normal too.
    pull = resid / np.concatenate([table["x_err"], table["y_err"]])
    assert abs(np.std(pull) - 1) < 0.15


@pytest.mark.parametrize("mode", ["psf", "fwhm", "none"])
def test_extendedness_separates_stars_from_extended_blobs(mode):
    rng = np.random.default_rng(4)
    exposure, det, _ = _grid_field(
        5, 1e5, n_side=12, sigma=np.where(np.arange(144) % 2 == 0, SIGMA, 3 * SIGMA)
    )
    extended = np.arange(144) % 2 == 1
    det["a"] = det["b"] = np.where(extended, 3, 1) * SIGMA * rng.uniform(0.7, 0.9, 144)
    kwargs = {"psf": GaussianPsf(FWHM)} if mode == "psf" else {}
    if mode == "fwhm":
        kwargs["psf_fwhm_pix"] = 2.3548 * np.sqrt(SIGMA**2 + 1 / 12)  # pixel-convolved FWHM
    table = measure_sources(exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS, **kwargs)
    ext = np.asarray(table["extendedness"])
    if mode == "none":
        assert np.all(np.isnan(ext))
        assert np.all(table["psf_flux_flag"]) and np.all(np.isnan(table["psf_flux"]))
    else:
        assert np.all(ext[extended] == 1) and np.all(ext[~extended] == 0)


def _flag_scene():
    """Stars in a 200x200 image, each with one pathology."""
    rng = np.random.default_rng(6)
    x = np.array([2.0, 60.3, 120.2, 160.0, 40.0, 100.0, 100.0, 30.0, 150.0])
    y = np.array([100.0, 60.6, 60.1, 150.0, 160.0, 120.0, 100.0, 30.0, 176.0])
    flux = np.full(x.size, 2e4)
    model = _render((200, 200), x, y, flux, SIGMA)
    image, var = _observe(rng, model, 1.0)
    mask = np.zeros(image.shape, np.int32)
    mask[59:63, 59:62] |= MaskPlane.SAT  # 1: saturated core
    mask[:, 120] |= MaskPlane.BAD  # 2: bad column through the centre
    image[:, 120] = 0.0
    mask[150, 160] |= MaskPlane.CR | MaskPlane.INTRP  # 3: repaired cosmic ray on the centre
    mask[164, 40] |= MaskPlane.SAT  # 4: SAT 4 pix from the centre: not the 3x3
    mask[180:, :] |= MaskPlane.NO_DATA  # 8: 4 pix from the centre of source 8
    exposure = make_exposure(image, variance=var, mask=mask)
    det = _detections(rng, x, y, flux, SIGMA)
    det["x"], det["y"] = x, y
    det["x"][5] = np.nan  # 5: no centroid
    det["npix"][6] = 0  # 6: empty footprint with degenerate ellipse
    det["a"][6] = det["b"][6] = 0.0
    det["x"][7] = -50.0  # 7: off the image
    return exposure, det


def test_pixel_flags_and_degenerate_sources():
    exposure, det = _flag_scene()
    t = measure_sources(exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS, psf=GaussianPsf(FWHM))
    assert len(t) == len(det)
    assert list(np.flatnonzero(t["flag_edge"])) == [0, 5, 7]
    # 2.4% of the PSF is off the image: the fit uses the rest and stays good.
    assert t["apflux_6_0_flag"][0] and abs(t["psf_flux"][0] / 2e4 - 1) < 0.05
    assert list(np.flatnonzero(t["flag_saturated_center"])) == [1]
    assert list(np.flatnonzero(t["flag_saturated"])) == [1, 4]
    assert list(np.flatnonzero(t["flag_bad"])) == [2]
    assert t["apflux_3_0_flag"][2] and t["psf_flux_flag"][2]
    assert list(np.flatnonzero(t["flag_cr_center"])) == [3]
    assert list(np.flatnonzero(t["flag_interpolated_center"])) == [3]
    assert list(np.flatnonzero(t["flag_nodata"])) == [8]
    assert list(np.flatnonzero(t["centroid_flag"])) == [5, 6, 7]
    assert t["kron_flux_flag"][6] and np.isfinite(t["kron_flux"][6])  # circle fallback
    for i in (5, 7):
        assert np.isnan(t["apflux_6_0"][i]) and np.isnan(t["psf_flux"][i]) and np.isnan(t["extendedness"][i])
        assert t["apflux_6_0_flag"][i] and t["psf_flux_flag"][i]
    assert np.isnan(t["x"][5]) and t["x"][7] == -50.0
    # Unaffected measurements stay good.
    assert abs(t["psf_flux"][6] / 2e4 - 1) < 0.05


def test_segmentation_footprints_and_local_background():
    rng = np.random.default_rng(8)
    x = np.array([50.0, 70.0])
    y = np.array([50.0, 50.0])
    flux = np.array([2e4, 5e5])
    pedestal = 7.0
    model = _render((100, 140), x, y, flux, SIGMA)
    image, var = _observe(rng, model, 1.0)
    image += pedestal
    seg = np.zeros(image.shape, np.int32)
    yy, xx = np.mgrid[:100, :140]
    seg[np.hypot(xx - 50, yy - 50) < 8] = 1
    seg[np.hypot(xx - 70, yy - 50) < 12] = 2
    seg[(xx >= 80) & (xx < 83) & (yy >= 48) & (yy < 52)] = 2
    mask = np.zeros(image.shape, np.int32)
    mask[50, 81] = MaskPlane.SAT  # SAT in source 2's footprint, 11 pix from its centre
    exposure = make_exposure(image, variance=var, mask=mask)
    det = _detections(rng, x, y, flux, SIGMA)
    with_seg = measure_sources(exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS, segmentation=seg)
    without = measure_sources(exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS)
    assert list(with_seg["flag_saturated"]) == [False, True]
    assert list(without["flag_saturated"]) == [False, False]
    # The bright neighbour sits in source 1's annulus: only the footprint map removes it.
    assert abs(with_seg["local_background"][0] - pedestal) < 1.0
    assert with_seg["local_background"][0] < without["local_background"][0]
    assert not with_seg["local_background_flag"][0]


@pytest.mark.parametrize("seed", [0, 1])
def test_crowded_field_window_ignores_neighbours(seed):
    """900 stars on 512 x 512 pixels (sep-detected and deblended, as the pipeline
    does): the centroid window is set by each source's own half-light radius
    (neighbours masked through the segmentation map). Truth: nearly every
    primary keeps a windowed centroid, and bright stars are within a quarter
    pixel for 90 % of them. (With neighbours in the half-light radius, a third
    of the primaries lost their centroid and the bright 90th percentile
    reached 0.3-0.4 pix.)"""
    from scipy.spatial import cKDTree

    from calibration.detection import DetectionConfig, detect_sources

    rng = np.random.default_rng(seed)
    n, size = 900, 512
    x, y = rng.uniform(5, size - 5, n), rng.uniform(5, size - 5, n)
    flux = np.exp(rng.uniform(np.log(2e3), np.log(3e5), n))
    model = _render((size, size), x, y, flux, SIGMA)
    var = SKY_RMS**2 + model
    exposure = make_exposure(model + rng.normal(0.0, np.sqrt(var)), variance=var)
    det = detect_sources(exposure, DetectionConfig(), background_rms_adu=SKY_RMS, psf_fwhm_pix=FWHM)
    cat = measure_sources(exposure, det.catalog, MeasureConfig(), background_rms_adu=SKY_RMS,
                          segmentation=det.deblend_segmentation)
    primary = np.asarray(cat["detect_isPrimary"])
    valid = primary & ~np.asarray(cat["centroid_flag"])
    assert valid.sum() >= 0.98 * primary.sum()
    dist, idx = cKDTree(np.column_stack([x, y])).query(np.column_stack([cat["x"], cat["y"]])[valid])
    bright = (flux[idx] > 3e4) & (dist < 1.5)  # S/N > ~100, matched
    assert bright.sum() > 300
    assert np.percentile(dist[bright], 50) < 0.02
    assert np.percentile(dist[bright], 90) < 0.25


def test_many_sources_in_one_vectorised_pass():
    rng = np.random.default_rng(9)
    n = 5000
    x = rng.uniform(2, 1498, n)
    y = rng.uniform(2, 1498, n)
    flux = np.exp(rng.uniform(np.log(1e3), np.log(1e6), n))
    image, var = _observe(rng, _render((1500, 1500), x, y, flux, SIGMA), 1.0)
    exposure = make_exposure(image, variance=var)
    det = _detections(rng, x, y, flux, SIGMA)
    table = measure_sources(exposure, det, MeasureConfig(), background_rms_adu=SKY_RMS, psf=GaussianPsf(FWHM))
    assert len(table) == n
    assert np.isfinite(table["apflux_3_0"]).all() and np.isfinite(table["psf_flux"]).mean() > 0.99


def test_empty_catalogue_bad_inputs_and_config():
    exposure = make_exposure(np.zeros((50, 50)), variance=np.ones((50, 50)))
    empty = _detections(np.random.default_rng(0), np.zeros(0), np.zeros(0), np.zeros(0), SIGMA)
    t = measure_sources(exposure, empty, MeasureConfig(), background_rms_adu=1.0, psf=GaussianPsf(FWHM))
    assert len(t) == 0 and "apflux_25_0_err" in t.colnames and "extendedness" in t.colnames
    with pytest.raises(CalibrationError, match="theta"):
        measure_sources(exposure, Table({"x": [1.0], "y": [1.0], "a": [1.0], "b": [1.0]}),
                        MeasureConfig(), background_rms_adu=1.0)

    class FlatPsf:
        def image_at(self, x, y, shape):
            return np.full(shape, 1.0 / (shape[0] * shape[1]))

    det = _detections(np.random.default_rng(0), np.array([20.0, 30.0]), np.array([20.0, 25.0]),
                      np.ones(2), SIGMA)
    with pytest.raises(PsfError):
        measure_sources(exposure, det, MeasureConfig(), background_rms_adu=1.0, psf=FlatPsf())

    assert aperture_column(12.0) == "apflux_12_0" and aperture_column(4.5) == "apflux_4_5"
    assert aperture_column(2.25) == "apflux_2_25"
    config = MeasureConfig(aperture_radii_pix=(2.0, 8.0), psf_flux_weighting="uniform")
    assert config_from_dict(MeasureConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="local_background"):
        config_from_dict(MeasureConfig, {"local_background_inner_pix": 30.0})
    with pytest.raises(ConfigError, match="psf_stamp_size_pix"):
        config_from_dict(MeasureConfig, {"psf_stamp_size_pix": 20})
    with pytest.raises(ConfigError):
        config_from_dict(MeasureConfig, {"centroid_window": "sdss"})


def test_deblend_parents_keep_the_detection_centroid():
    """A deblended pair: its children get windowed centroids near the truth; the
    parent (not primary) keeps the detection centroid with centroid_flag set and
    no error, and is still measured otherwise (apertures, windowed moments)."""
    from calibration.detection import DetectionConfig, detect_sources

    rng = np.random.default_rng(3)
    x, y = np.array([60.0, 65.5, 30.0]), np.array([60.0, 61.0, 30.0])
    flux = np.array([2e5, 1.5e5, 1e5])
    model = _render((128, 128), x, y, flux, SIGMA)
    image, var = _observe(rng, model, 1.0)
    exposure = make_exposure(image, variance=var)
    det = detect_sources(exposure, DetectionConfig(), background_rms_adu=SKY_RMS, psf_fwhm_pix=FWHM)
    cat = measure_sources(exposure, det.catalog, MeasureConfig(), background_rms_adu=SKY_RMS,
                          segmentation=det.deblend_segmentation)
    parent = (np.asarray(cat["deblend_nChild"]) > 0) & ~np.asarray(cat["detect_isPrimary"], bool)
    assert parent.sum() == 1
    np.testing.assert_array_equal(cat["x"][parent], det.catalog["x"][parent])
    np.testing.assert_array_equal(cat["y"][parent], det.catalog["y"][parent])
    assert cat["centroid_flag"][parent].all() and np.isnan(cat["x_err"][parent]).all()
    assert np.isfinite(cat["apflux_6_0"][parent]).all() and np.isfinite(cat["shape_xx"][parent]).all()
    primary = np.asarray(cat["detect_isPrimary"], bool)
    assert primary.sum() == 3 and not cat["centroid_flag"][primary].any()
    for xt, yt in zip(x, y):
        d = np.hypot(cat["x"][primary] - xt, cat["y"][primary] - yt)
        assert d.min() < 0.25  # a blended neighbour 5.5 pix away pulls by ~0.1 pix
