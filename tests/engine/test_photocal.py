"""Truth tests of calibration.photocal (zero point, colour terms, spatial terms)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calibration.configbase import config_docs, config_from_dict, config_to_dict
from calibration.errors import ConfigError, PhotometryError
from calibration.photocal import (
    PhotoCalConfig,
    apply_colorterm,
    colorterm_mag_err,
    fit_zero_point,
)

ZP = 27.345
REF_ERR = 0.003


@dataclasses.dataclass
class Stars:
    inst: np.ndarray
    inst_err: np.ndarray
    ref: np.ndarray
    ref_err: np.ndarray
    inlier: np.ndarray
    rng: np.random.Generator


def make_stars(seed: int, n: int = 500, *, outlier_fraction: float = 0.1, const_err: float | None = None,
               offset=None) -> Stars:
    """Stars of 16-21.5 mag, errors 0.005 (bright) to 0.1 mag (faint), a fraction shifted by 0.3-2 mag.

    ``offset(rng)`` may return a per-star term added to the truth's ``ref - inst`` (colour or
    position dependence of the zero point).
    """
    rng = np.random.default_rng(seed)
    true = rng.uniform(16.0, 21.5, n)
    if const_err is None:
        inst_err = np.clip(0.005 * 10 ** (0.325 * (true - 17.0)), 0.005, 0.1)
    else:
        inst_err = np.full(n, const_err)
    ref_err = np.full(n, REF_ERR)
    ref = true + rng.normal(0.0, ref_err)
    inst = true - ZP + rng.normal(0.0, inst_err)
    outliers = rng.permutation(n)[: int(outlier_fraction * n)]
    # galaxies (aperture misses flux) and variables: either sign, 0.3-2 mag
    inst[outliers] += rng.choice([-1.0, 1.0], outliers.size) * rng.uniform(0.3, 2.0, outliers.size)
    inlier = np.ones(n, dtype=bool)
    inlier[outliers] = False
    return Stars(inst, inst_err, ref, ref_err, inlier, rng)


def fit(stars: Stars, config: PhotoCalConfig | None = None, seed: int = 42, **kwargs):
    return fit_zero_point(stars.inst, stars.inst_err, stars.ref, stars.ref_err,
                          config=config or PhotoCalConfig(), seed=seed, **kwargs)


def test_zero_point_recovered_despite_outliers():
    stars = make_stars(1)
    r = fit(stars)
    assert abs(r.zero_point_mag - ZP) < 3 * r.zero_point_err_mag
    assert abs(r.zero_point_mag - ZP) < 0.002
    assert r.n_input == 500 and r.n_reserved == 50
    assert not (r.used & ~stars.inlier).any(), "an outlier survived the clipping"
    assert not (r.used & r.reserved).any()
    assert r.n_used == r.used.sum() and r.n_clipped == r.clipped.sum() == 450 - r.n_used
    # formal error = LSST's sigma = sqrt(1/sum w); compare with all fitted inliers (the clip drops
    # faint inliers, which carry little weight)
    w = 1.0 / (stars.inst_err**2 + stars.ref_err**2)
    analytic = np.sqrt(1.0 / w[stars.inlier & ~r.reserved].sum())
    assert r.zero_point_err_mag == pytest.approx(analytic, rel=0.10)
    assert r.zero_point_err_mag == pytest.approx(np.sqrt(1.0 / w[r.used].sum()), rel=1e-12)
    np.testing.assert_allclose(r.residual_mag, stars.ref - stars.inst - r.zero_point_mag)


def test_reserved_scatter_matches_injected_scatter():
    stars = make_stars(2, n=5000, const_err=0.03)
    r = fit(stars)
    injected = np.hypot(0.03, REF_ERR)
    assert r.n_reserved == 500
    assert r.reserved_scatter_mag == pytest.approx(injected, rel=0.15)
    assert abs(r.reserved_bias_mag) < 3 * 1.25 * injected / np.sqrt(r.n_reserved_used)
    assert r.scatter_mag == pytest.approx(injected, rel=0.10)
    assert r.scatter_std_mag == pytest.approx(injected, rel=0.10)
    # the outliers among the reserved stars are left out of their statistics, inliers kept
    assert r.n_reserved_used == pytest.approx((r.reserved & stars.inlier).sum(), abs=3)


def test_fitted_colour_terms_recovered():
    c1, c2 = 0.1, -0.02
    n = 5000

    def stars_with_colour(seed):
        stars = make_stars(seed, n=n)
        colour = stars.rng.uniform(0.0, 1.5, n)
        # Colorterm convention: ref + c1 colour + c2 colour^2 is the magnitude in the instrument band
        stars.inst += c1 * colour + c2 * colour**2
        return stars, colour

    stars, colour = stars_with_colour(3)
    config = PhotoCalConfig(fit_colorterms=True, colorterm_primary="g", colorterm_secondary="r")
    r = fit(stars, config, colour=colour, secondary_mag_err=np.full(n, 0.004))
    assert abs(r.colorterm_c1 - c1) < 3 * r.colorterm_c1_err and abs(r.colorterm_c1 - c1) < 0.005
    assert abs(r.colorterm_c2 - c2) < 3 * r.colorterm_c2_err and abs(r.colorterm_c2 - c2) < 0.003
    assert abs(r.zero_point_mag - ZP) < 3 * r.zero_point_fit_err_mag
    assert r.zero_point_fit_err_mag > r.zero_point_err_mag  # covariance with c1, c2 included
    assert r.colorterm_c0 == 0.0  # absorbed in the zero point
    assert not (r.used & ~stars.inlier).any()
    with pytest.raises(PhotometryError, match="colour"):
        fit(stars, config)


def test_fixed_colour_terms_applied_by_caller():
    c0, c1, c2 = 0.01, 0.08, -0.01
    stars = make_stars(4)
    n = stars.inst.size
    colour = stars.rng.uniform(-0.5, 2.0, n)
    stars.inst += c0 + c1 * colour + c2 * colour**2
    sec_err = np.full(n, 0.004)
    config = PhotoCalConfig(colorterm_primary="g", colorterm_secondary="r",
                            colorterm_c0=c0, colorterm_c1=c1, colorterm_c2=c2)
    # as LSST's extractMagArrays: the reference magnitudes are transformed before the fit
    ref = apply_colorterm(stars.ref, stars.ref - colour, c0, c1, c2)
    ref_err = colorterm_mag_err(stars.ref_err, sec_err, colour, c1, c2)
    r = fit_zero_point(stars.inst, stars.inst_err, ref, ref_err, config=config, seed=0)
    assert abs(r.zero_point_mag - ZP) < 3 * r.zero_point_err_mag
    assert (r.colorterm_c0, r.colorterm_c1, r.colorterm_c2) == (c0, c1, c2)
    assert r.colorterm_c1_err is None and r.zero_point_fit_err_mag is None
    # the colour is not needed (and not applied a second time) when the terms are fixed
    again = fit_zero_point(stars.inst, stars.inst_err, ref, ref_err, config=config, seed=0, colour=colour)
    assert again.zero_point_mag == r.zero_point_mag


def test_apply_colorterm_and_error_propagation():
    primary, secondary = np.array([18.0, 20.0]), np.array([17.5, 21.0])
    np.testing.assert_allclose(apply_colorterm(primary, secondary, 0.01, 0.1, -0.02),
                               primary + 0.01 + 0.1 * np.array([0.5, -1.0]) - 0.02 * np.array([0.25, 1.0]))
    # numerical derivatives of apply_colorterm against the analytic propagation
    ep, es, h = np.array([0.01, 0.03]), np.array([0.02, 0.01]), 1e-6
    base = apply_colorterm(primary, secondary, 0, 0.1, -0.02)
    dp = (apply_colorterm(primary + h, secondary, 0, 0.1, -0.02) - base) / h
    ds = (apply_colorterm(primary, secondary + h, 0, 0.1, -0.02) - base) / h
    np.testing.assert_allclose(colorterm_mag_err(ep, es, primary - secondary, 0.1, -0.02),
                               np.hypot(dp * ep, ds * es), rtol=1e-5)


@pytest.mark.parametrize(("order", "n", "tol_mag"), [(1, 2000, 0.002), (2, 6000, 0.003)])
def test_spatial_gradient_recovered(order, n, tol_mag):
    # a quadratic is less well pinned at the corners: more stars and 3 mmag for order 2
    nx, ny = 2048, 4096
    stars = make_stars(5, n=n)
    x, y = stars.rng.uniform(-0.5, nx - 0.5, n), stars.rng.uniform(-0.5, ny - 0.5, n)

    def truth(x, y):  # 20 mmag across the field in x, plus a 5 mmag bowl in y for order 2
        bowl = 0.005 * ((y - (ny - 1) / 2) / (ny / 2)) ** 2 if order == 2 else 0.0
        return ZP + 0.020 * (x / (nx - 1) - 0.5) + bowl

    stars.inst -= truth(x, y) - ZP
    r = fit(stars, PhotoCalConfig(spatial_order=order), x=x, y=y, image_shape=(ny, nx))
    corners_x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
    corners_y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    np.testing.assert_allclose(r.zero_point_at(corners_x, corners_y), truth(corners_x, corners_y), atol=tol_mag)
    assert r.zero_point_mag == pytest.approx(truth((nx - 1) / 2, (ny - 1) / 2), abs=0.002)
    assert r.spatial_terms == (("x", "y") if order == 1 else ("x", "y", "x2", "xy", "y2"))
    assert not (r.used & ~stars.inlier).any()


def test_degenerate_colours_raise():
    stars = make_stars(11)
    config = PhotoCalConfig(fit_colorterms=True, colorterm_primary="g", colorterm_secondary="r")
    with pytest.raises(PhotometryError, match="span too little"):
        fit(stars, config, colour=np.full(stars.inst.size, 0.7))


def test_too_few_stars_raises_with_figures():
    stars = make_stars(6, n=3, outlier_fraction=0.0)
    with pytest.raises(PhotometryError) as info:
        fit(stars, PhotoCalConfig(reserve_fraction=0.5))
    err = info.value
    assert err.stage == "photocal"
    assert err.figures["n_input"] == 3 and err.figures["n_finite"] == 3 and err.figures["n_fit"] == 1
    assert "reserve_fraction" in err.message
    json.dumps(err.to_dict())


def test_no_finite_values_raises():
    nan = np.full(10, np.nan)
    with pytest.raises(PhotometryError, match="finite") as info:
        fit_zero_point(nan, nan, np.arange(10.0), np.full(10, 0.01), config=PhotoCalConfig(), seed=0)
    assert info.value.figures["n_finite"] == 0 and info.value.figures["n_input"] == 10


def test_nan_inputs_ignored():
    stars = make_stars(7)
    bad = np.zeros(stars.inst.size, dtype=bool)
    bad[[3, 50, 120, 400]] = True
    stars.inst[3], stars.inst_err[50], stars.ref[120], stars.ref_err[400] = np.nan, np.nan, np.inf, -0.01
    r = fit(stars)
    assert r.n_finite == 496
    assert not (r.used | r.reserved | r.clipped)[bad].any()
    assert np.isnan(r.residual_mag[bad]).all()
    assert abs(r.zero_point_mag - ZP) < 0.002
    # without reservation the fit is exactly the fit of the clean stars
    config = PhotoCalConfig(reserve_fraction=0.0)
    clean = Stars(stars.inst[~bad], stars.inst_err[~bad], stars.ref[~bad], stars.ref_err[~bad],
                  stars.inlier[~bad], stars.rng)
    assert fit(stars, config).zero_point_mag == fit(clean, config).zero_point_mag


def test_deterministic_with_seed():
    stars = make_stars(8)
    a, b, c = fit(stars, seed=5), fit(stars, seed=5), fit(stars, seed=6)
    assert a.zero_point_mag == b.zero_point_mag
    np.testing.assert_array_equal(a.reserved, b.reserved)
    np.testing.assert_array_equal(a.used, b.used)
    assert not np.array_equal(a.reserved, c.reserved)


def test_noiseless_stars_all_used():
    inst = np.linspace(-12.0, -6.0, 50)
    r = fit_zero_point(inst, np.full(50, 0.01), inst + ZP, np.zeros(50),
                       config=PhotoCalConfig(reserve_fraction=0.0), seed=0)
    assert r.zero_point_mag == pytest.approx(ZP, abs=1e-12)
    assert r.n_used == 50
    assert r.zero_point_err_mag == pytest.approx(0.01 / np.sqrt(50))


def test_median_option_and_magnitude_range():
    stars = make_stars(9)
    r = fit(stars, PhotoCalConfig(use_median=True, mag_min=17.0, mag_max=20.0))
    assert abs(r.zero_point_mag - ZP) < 0.003
    in_range = (stars.ref >= 17.0) & (stars.ref <= 20.0)
    assert r.n_selected == in_range.sum()
    assert not (r.used | r.reserved)[~in_range].any()


def test_result_to_dict_is_strict_json():
    stars = make_stars(10)
    r = fit(stars, PhotoCalConfig(reserve_fraction=0.0))
    d = r.to_dict()
    assert np.isnan(r.reserved_scatter_mag) and d["reserved_scatter_mag"] is None
    assert "used" not in d and d["zero_point_mag"] == r.zero_point_mag
    json.dumps(d, allow_nan=False)
    full = r.to_dict(arrays=True)
    assert len(full["used"]) == 500 and full["residual_mag"][0] == r.residual_mag[0]
    json.dumps(full, allow_nan=False)


def test_config_documented_round_trips_and_validates():
    assert all(doc.strip() for doc in config_docs(PhotoCalConfig).values())
    config = PhotoCalConfig(mag_min=16.0, mag_max=21.0, spatial_order=1, colorterm_c1=0.1,
                            colorterm_primary="g", colorterm_secondary="r")
    assert config_from_dict(PhotoCalConfig, json.loads(json.dumps(config_to_dict(config)))) == config
    for bad in ({"mag_min": 20.0, "mag_max": 19.0}, {"reserve_fraction": 1.0}, {"n_sigma": 0.0},
                {"spatial_order": 3}, {"sigma_max_mag": -1.0}, {"fit_colorterms": True},
                {"min_n_stars": 0}):
        with pytest.raises(ConfigError):
            config_from_dict(PhotoCalConfig, bad)
