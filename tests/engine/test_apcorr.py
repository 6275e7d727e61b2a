"""Aperture corrections against truth: synthetic catalogues with known corrections.

Each field's flux is ``calibration_flux / c(x, y)`` times noise, with ``c`` a
known smooth function of position (the true aperture correction), plus
outliers (blended stars whose small aperture caught a neighbour).
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from calibration.apcorr import (
    ApCorrConfig,
    ApCorrMap,
    apply_aperture_corrections,
    measure_aperture_corrections,
)
from calibration.configbase import config_from_dict, config_to_dict
from calibration.errors import CalibrationError, ConfigError, NoSourcesError

NY, NX = 1536, 2048  # not square: catches swapped axes
FIELD_NOISE = 0.003  # relative noise of each field's flux


def _uv(x, y):
    return (np.asarray(x) - (NX - 1) / 2) / (NX / 2), (np.asarray(y) - (NY - 1) / 2) / (NY / 2)


#: True corrections c(x, y) = calibration flux / field flux (linear, as spatial_order=1 fits).
TRUE_LINEAR = {
    "psf_flux": lambda u, v: 1.021 + 0.012 * u - 0.008 * v,
    "apflux_3_0": lambda u, v: 1.38 + 0.06 * u + 0.035 * v,
    "apflux_4_5": lambda u, v: 1.12 + 0.025 * u + 0.012 * v,
}


def _catalogue(seed: int, n: int, truth: dict, *, outlier_fraction: float = 0.0) -> tuple[Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, NX - 0.5, n)
    y = rng.uniform(-0.5, NY - 0.5, n)
    u, v = _uv(x, y)
    cal = np.exp(rng.uniform(np.log(2e4), np.log(1e6), n))
    cat = Table()
    cat["x"], cat["y"] = x, y
    cat["apflux_12_0"] = cal * (1 + 0.001 * rng.normal(size=n))
    cat["apflux_12_0"].unit = "adu"
    cat["apflux_12_0"].description = "Aperture flux within 12 pix."
    cat["apflux_12_0_err"] = 0.001 * cal
    outlier = rng.random(n) < outlier_fraction
    for name, func in truth.items():
        flux = cal / func(u, v) * (1 + FIELD_NOISE * rng.normal(size=n))
        flux[outlier] *= 1.25  # a neighbour's light in the small aperture
        cat[name] = flux
        cat[name].unit = "adu"
        cat[name].description = f"{name} flux."
        cat[f"{name}_err"] = FIELD_NOISE * flux
        cat[f"{name}_flag"] = np.zeros(n, bool)
    return cat, outlier


def _grid(n: int = 21):
    gx, gy = np.meshgrid(np.linspace(-0.5, NX - 0.5, n), np.linspace(-0.5, NY - 0.5, n))
    return gx.ravel(), gy.ravel()


def test_linear_correction_recovered_over_the_field_with_outliers_clipped():
    cat, outlier = _catalogue(11, 600, TRUE_LINEAR, outlier_fraction=0.08)
    config = ApCorrConfig(fields=tuple(TRUE_LINEAR))
    apmap = measure_aperture_corrections(cat, np.ones(len(cat), bool), config, image_shape=(NY, NX))
    gx, gy = _grid()
    for name, func in TRUE_LINEAR.items():
        truth = func(*_uv(gx, gy))
        rel = apmap.evaluate(name, gx, gy) / truth - 1
        assert np.max(np.abs(rel)) < 1e-3, (name, np.max(np.abs(rel)))
        fit = apmap.fields[name]
        # The outliers (8%) are the ones rejected: at most a few good stars go with them.
        assert fit.n_stars == 600
        assert 600 - outlier.sum() - 15 <= fit.n_used <= 600 - outlier.sum()
        assert fit.scatter == pytest.approx(truth.mean() * np.hypot(FIELD_NOISE, 0.001), rel=0.15)
        assert 0 < fit.error < fit.scatter


def test_without_clipping_the_outliers_would_bias_the_correction():
    """Guards the previous test: the outliers are strong enough to matter."""
    cat, _ = _catalogue(11, 600, TRUE_LINEAR, outlier_fraction=0.08)
    config = ApCorrConfig(fields=("psf_flux",), n_sigma_clip=1e6)
    apmap = measure_aperture_corrections(cat, np.ones(len(cat), bool), config, image_shape=(NY, NX))
    gx, gy = _grid()
    rel = apmap.evaluate("psf_flux", gx, gy) / TRUE_LINEAR["psf_flux"](*_uv(gx, gy)) - 1
    assert np.max(np.abs(rel)) > 5e-3


def test_corrected_fluxes_are_unbiased_on_stars_not_used_in_the_fit():
    cat, outlier = _catalogue(12, 900, TRUE_LINEAR, outlier_fraction=0.05)
    use = np.zeros(len(cat), bool)
    use[:500] = True  # PSF stars; the other 400 only get corrected
    config = ApCorrConfig(fields=tuple(TRUE_LINEAR))
    apmap = measure_aperture_corrections(cat, use, config, image_shape=(NY, NX))
    out = apply_aperture_corrections(cat, apmap, config)
    others = ~use & ~outlier
    for name in TRUE_LINEAR:
        bias = np.mean(out[name][others] / out["apflux_12_0"][others]) - 1
        assert abs(bias) < 3e-3, (name, bias)
        raw_bias = np.mean(cat[name][others] / cat["apflux_12_0"][others]) - 1
        assert abs(raw_bias) > 0.01  # the correction did something
        np.testing.assert_allclose(out[f"{name}_err"], cat[f"{name}_err"] * out[f"{name}_apCorr"])
        assert not out[f"{name}_flag_apCorr"].any()
        assert np.all(out[f"{name}_apCorrErr"] == apmap.fields[name].error)
        for suffix in ("", "_apCorr", "_apCorrErr", "_flag_apCorr"):
            assert out[f"{name}{suffix}"].description, name + suffix
            assert out[f"{name}{suffix}"].unit is not None, name + suffix
    # The calibration flux is never corrected.
    np.testing.assert_array_equal(out["apflux_12_0"], cat["apflux_12_0"])
    assert "apflux_12_0_apCorr" not in out.colnames
    assert out["psf_flux"].unit == "adu"


def test_quadratic_correction_with_spatial_order_2():
    truth = {"psf_flux": lambda u, v: 1.03 + 0.01 * u + 0.015 * u**2 - 0.01 * u * v + 0.02 * v**2}
    cat, _ = _catalogue(13, 1500, truth)
    config = ApCorrConfig(fields=("psf_flux",), spatial_order=2)
    apmap = measure_aperture_corrections(cat, np.ones(len(cat), bool), config, image_shape=(NY, NX))
    gx, gy = _grid()
    rel = apmap.evaluate("psf_flux", gx, gy) / truth["psf_flux"](*_uv(gx, gy)) - 1
    assert np.max(np.abs(rel)) < 1e-3


def test_too_few_stars_raise_no_sources_error_naming_the_field():
    cat, _ = _catalogue(14, 50, TRUE_LINEAR)
    use = np.zeros(len(cat), bool)
    use[:6] = True
    with pytest.raises(NoSourcesError) as info:
        measure_aperture_corrections(cat, use, ApCorrConfig(fields=("psf_flux",)), image_shape=(NY, NX))
    err = info.value
    assert err.stage == "apcorr"
    assert err.figures["field"] == "psf_flux"
    assert err.figures["n_stars"] == 6
    assert err.figures["min_stars"] == 10
    assert "psf_flux" in err.message


def test_flagged_stars_do_not_count():
    cat, _ = _catalogue(15, 30, TRUE_LINEAR)
    cat["psf_flux_flag"][:25] = True
    with pytest.raises(NoSourcesError) as info:
        measure_aperture_corrections(cat, np.ones(len(cat), bool), ApCorrConfig(fields=("psf_flux",)),
                                     image_shape=(NY, NX))
    assert info.value.figures["n_stars"] == 5


def test_allowed_failure_is_recorded_and_flagged_on_apply():
    cat, _ = _catalogue(16, 300, TRUE_LINEAR)
    config = ApCorrConfig(fields=("psf_flux", "apflux_6_0"), allow_failure=("apflux_6_0",))
    apmap = measure_aperture_corrections(cat, np.ones(len(cat), bool), config, image_shape=(NY, NX))
    assert "apflux_6_0" in apmap.failures and "apflux_6_0" not in apmap
    cat["apflux_6_0"] = cat["psf_flux"] * 1.0
    cat["apflux_6_0_err"] = cat["psf_flux_err"] * 1.0
    out = apply_aperture_corrections(cat, apmap, config)
    assert out["apflux_6_0_flag_apCorr"].all()
    assert out["apflux_6_0_flag"].all()
    np.testing.assert_array_equal(out["apflux_6_0"], cat["apflux_6_0"])
    with pytest.raises(NoSourcesError):
        measure_aperture_corrections(cat[:0], np.zeros(0, bool), ApCorrConfig(fields=("psf_flux",)),
                                     image_shape=(NY, NX))


def test_sources_outside_the_image_or_without_position_are_flagged_not_corrected():
    cat, _ = _catalogue(17, 300, TRUE_LINEAR)
    config = ApCorrConfig(fields=("psf_flux",))
    apmap = measure_aperture_corrections(cat, np.ones(len(cat), bool), config, image_shape=(NY, NX))
    cat["x"][0] = np.nan
    cat["x"][1] = NX + 5.0
    cat["y"][2] = -3.0
    out = apply_aperture_corrections(cat, apmap, config)
    bad = np.zeros(len(cat), bool)
    bad[:3] = True
    np.testing.assert_array_equal(out["psf_flux_flag_apCorr"], bad)
    np.testing.assert_array_equal(out["psf_flux_flag"], bad)
    np.testing.assert_array_equal(out["psf_flux"][:3], cat["psf_flux"][:3])
    assert np.isnan(out["psf_flux_apCorr"][:3]).all()
    assert np.all(out["psf_flux"][3:] != cat["psf_flux"][3:])
    with pytest.raises(CalibrationError, match="already aperture-corrected"):
        apply_aperture_corrections(out, apmap, config)


def test_map_round_trips_through_dict_and_fits(tmp_path):
    cat, _ = _catalogue(18, 400, TRUE_LINEAR)
    config = ApCorrConfig(fields=tuple(TRUE_LINEAR), spatial_order=2)
    apmap = measure_aperture_corrections(cat, np.ones(len(cat), bool), config, image_shape=(NY, NX))
    path = tmp_path / "apcorr.fits"
    fits.HDUList([fits.PrimaryHDU(), *apmap.to_hdulist()]).writeto(path)
    with fits.open(path) as hdul:
        from_fits = ApCorrMap.from_hdulist(hdul)
    from_dict = ApCorrMap.from_dict(apmap.to_dict())
    gx, gy = _grid(7)
    for other in (from_fits, from_dict):
        assert other.image_shape == (NY, NX) and other.calibration_flux == "apflux_12_0"
        for name in TRUE_LINEAR:
            np.testing.assert_allclose(other.evaluate(name, gx, gy), apmap.evaluate(name, gx, gy), rtol=1e-14)
            assert other.fields[name] == apmap.fields[name]


def test_config_validation_and_json_round_trip():
    config = ApCorrConfig(fields=("psf_flux",), spatial_order=2, min_stars=20)
    assert config_from_dict(ApCorrConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="calibration flux"):
        config_from_dict(ApCorrConfig, {"fields": ["apflux_12_0", "psf_flux"]})
    with pytest.raises(ConfigError, match="min_stars"):
        config_from_dict(ApCorrConfig, {"spatial_order": 3, "min_stars": 5})
    with pytest.raises(ConfigError):
        apply_aperture_corrections(Table({"x": [1.0], "y": [1.0]}), ApCorrMap((10, 10), "apflux_12_0", {}),
                                   ApCorrConfig(allow_failure=("nope",)))
