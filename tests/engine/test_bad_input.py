"""Bad exposures fail the whole task with a typed error naming the stage, never a numpy traceback."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.errors import BadExposureError, CalibrationError, NoSourcesError
from calibration.exposure import ExposureInfo, make_exposure
from calibration.pipeline import calibrate

_RNG = np.random.default_rng(1)

CASES = {
    "empty": (np.zeros((0, 0), np.float32), BadExposureError, "smaller than one background box"),
    "all NaN": (np.full((256, 256), np.nan, np.float32), BadExposureError, "masked"),
    "all zero": (np.zeros((256, 256), np.float32), BadExposureError, "constant image"),
    "constant": (np.full((256, 256), 500.0, np.float32), BadExposureError, "constant image"),
    "smaller than the background box": (_RNG.normal(100, 5, (20, 20)).astype(np.float32), BadExposureError,
                                        "box_size_pix"),
    "no stars": (_RNG.normal(1000, 30, (256, 256)).astype(np.float32), NoSourcesError, "no sources above"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_exposure_gives_a_typed_error(name):
    image, error, words = CASES[name]
    with pytest.raises(error) as exc:
        calibrate(make_exposure(image))
    assert exc.value.stage in ("background", "detection")
    assert words in exc.value.message
    assert exc.value.to_dict()["type"] == error.__name__


def test_fully_saturated_exposure_gives_a_typed_error():
    image = np.full((256, 256), 65535.0, np.float32)
    info = ExposureInfo(saturation_adu=60000.0)
    with pytest.raises(CalibrationError) as exc:
        calibrate(make_exposure(image, info=info))
    assert isinstance(exc.value, (BadExposureError, NoSourcesError))
    assert exc.value.stage == "background"
