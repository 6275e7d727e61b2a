"""calibrate() leaves its input alone unless the caller gives the exposure up (in_place)."""

from __future__ import annotations

import numpy as np

from calibration.pipeline import CalibrateConfig, calibrate
from calibration.testing import simulate_exposure, small_field_config


def test_input_exposure_is_untouched_unless_in_place() -> None:
    exposure = simulate_exposure(small_field_config(4)).exposure
    image, mask, variance = exposure.image.copy(), exposure.mask.copy(), exposure.variance.copy()
    config = CalibrateConfig(do_photo_cal=False)
    result = calibrate(exposure, config)
    assert result.exposure is not exposure
    assert np.array_equal(exposure.image, image) and np.array_equal(exposure.mask, mask)
    assert np.array_equal(exposure.variance, variance)
    in_place = calibrate(exposure, config, in_place=True)
    assert in_place.exposure is exposure
    assert not np.array_equal(exposure.image, image)  # the sky was subtracted from it
    np.testing.assert_array_equal(in_place.exposure.image, result.exposure.image)
    assert len(in_place.sources) == len(result.sources)
