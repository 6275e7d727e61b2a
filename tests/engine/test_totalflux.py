"""Curve-of-growth correction from the calibration aperture to total flux."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from calibration.totalflux import TotalFluxConfig, measure_total_flux_correction


def _stars(growth: dict[float, float], *, n: int = 60, noise: float = 0.002, seed: int = 1) -> Table:
    """Isolated PSF stars whose apertures hold ``growth[r]`` times the 12 pix flux."""
    rng = np.random.default_rng(seed)
    t = Table()
    t["x"] = np.arange(n) * 100.0
    t["y"] = np.full(n, 50.0)
    cal = rng.uniform(1e4, 1e5, n)
    t["apflux_12_0"] = cal
    t["apflux_12_0_err"] = cal * noise / 2
    for r, ratio in growth.items():
        name = f"apflux_{r:g}".replace(".", "_") + ("_0" if float(r).is_integer() else "")
        t[name] = cal * ratio * (1 + rng.normal(0, noise, n))
        t[f"{name}_err"] = cal * noise
    t["calib_psf_used"] = np.ones(n, bool)
    return t


def test_factor_is_read_where_the_curve_flattens():
    corr = measure_total_flux_correction(_stars({17.0: 1.010, 25.0: 1.0105}), "apflux_12_0")
    assert corr is not None and corr.flattened
    assert corr.radius_pix == 17.0
    assert corr.factor == pytest.approx(1.010, abs=0.001)
    assert corr.factor_err < 0.001
    assert corr.curve[0] == (12.0, 1.0, 0.0)


def test_a_curve_that_keeps_growing_uses_the_outermost_aperture_and_says_so():
    corr = measure_total_flux_correction(_stars({17.0: 1.02, 25.0: 1.04}), "apflux_12_0")
    assert corr is not None and not corr.flattened
    assert corr.radius_pix == 25.0 and corr.factor == pytest.approx(1.04, abs=0.001)


def test_no_light_outside_gives_one():
    corr = measure_total_flux_correction(_stars({17.0: 1.0, 25.0: 1.0}), "apflux_12_0")
    assert corr is not None and corr.factor == 1.0 and corr.radius_pix == 12.0


def test_crowded_stars_are_left_out_and_too_few_gives_none():
    t = _stars({17.0: 1.01, 25.0: 1.01}, n=8)
    t["x"] = np.arange(8) * 10.0  # every star has a neighbour inside 25 pix
    assert measure_total_flux_correction(t, "apflux_12_0") is None
    assert measure_total_flux_correction(_stars({17.0: 1.01}, n=3), "apflux_12_0", TotalFluxConfig(min_stars=5)) is None


def test_config_is_validated():
    with pytest.raises(ValueError, match="min_stars"):
        TotalFluxConfig(min_stars=0).validate()
