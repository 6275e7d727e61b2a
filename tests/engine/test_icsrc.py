"""CalibrateTask.copyIcSourceFields: fields of a given characterisation catalogue copied by position."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from calibration.errors import ConfigError
from calibration.pipeline import calibrate, copy_ic_source_fields
from calibration.testing import simulate_exposure, small_field_config


def test_fields_are_copied_from_the_nearest_source_within_the_radius():
    sources = Table({"x": [10.0, 50.0, 90.0], "y": [10.0, 50.0, 90.0]})
    ic = Table({"x": [11.0, 54.0], "y": [10.5, 50.0], "calib_psf_used": [True, True], "score": [1.5, 2.5]})
    copy_ic_source_fields(sources, ic, ("calib_psf_used", "score"), radius_pix=3.0)
    assert list(sources["calib_psf_used"]) == [True, False, False]  # the second is 4 pix away
    assert sources["score"][0] == 1.5 and np.isnan(sources["score"][1])


def test_a_missing_field_is_a_config_error():
    with pytest.raises(ConfigError, match="nope"):
        copy_ic_source_fields(Table({"x": [1.0], "y": [1.0]}), Table({"x": [1.0], "y": [1.0]}), ("nope",),
                              radius_pix=3.0)


def test_pipeline_takes_the_psf_stars_of_a_given_icsrc():
    sim = simulate_exposure(small_field_config(seed=4))
    first = calibrate(sim.exposure)
    ic = first.sources[np.asarray(first.sources["calib_psf_used"], bool)]
    ic = ic[: len(ic) // 2]  # another characterisation that used half of those stars
    second = calibrate(sim.exposure, ic_source_cat=ic)
    assert int(np.sum(second.sources["calib_psf_used"])) == len(ic)
