"""Colour terms fixed from the configuration's library (per instrument, filter, catalogue)."""

from __future__ import annotations

import math

import pytest

from calibration.colorterms import ColortermEntry, find_colorterm
from calibration.pipeline import calibrate, config_from_json, config_to_dict
from calibration.refcat import load_for_exposure
from calibration.testing import make_reference_catalog, simulate_exposure, small_field_config, write_reference_catalog

TERM = (0.02, 0.08, -0.03)  # simulator convention: colour g - r


def test_lookup_uses_patterns_and_the_first_match():
    library = (
        ColortermEntry(instrument="HSC", filter="HSC-R*", refcat="ps1*", primary="r", secondary="i", c1=0.1),
        ColortermEntry(instrument="*", filter="r", primary="r", secondary="g", c1=0.2),
    )
    assert find_colorterm(library, instrument="hsc", filter_name="HSC-R2", refcat="ps1_pv3").c1 == 0.1
    assert find_colorterm(library, instrument="DECam", filter_name="r", refcat="gaia").c1 == 0.2
    assert find_colorterm(library, instrument="DECam", filter_name="z", refcat="gaia") is None


def test_library_round_trips_through_json_and_is_validated():
    data = {"photocal": {"colorterm_library": [{"instrument": "SimCam", "filter": "r", "primary": "r",
                                                "secondary": "g", "c1": -0.08}]}}
    config = config_from_json(data)
    assert config.photocal.colorterm_library[0].c1 == -0.08
    assert config_from_json(config_to_dict(config)) == config
    from calibration.errors import ConfigError

    with pytest.raises(ConfigError, match="primary"):
        config_from_json({"photocal": {"colorterm_library": [{"instrument": "x"}]}})


@pytest.mark.parametrize("instrument, applies", [("SimCam", True), ("OtherCam", False)])
def test_matching_entry_is_applied_and_written(tmp_path, instrument, applies):
    sim = simulate_exposure(small_field_config(seed=12, instrument=instrument, colour_range_mag=(-0.5, 2.5)))
    path = tmp_path / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=12, colour_term=TERM), path)
    refcat = load_for_exposure(path, sim.exposure)
    # Instrument band r, colour r - g = -(g - r): the simulator's c1 changes sign.
    entry = {"instrument": "SimCam", "filter": "r", "primary": "r", "secondary": "g",
             "c0": TERM[0], "c1": -TERM[1], "c2": TERM[2], "source": "simulator truth"}
    config = config_from_json({"photocal": {"colorterm_library": [entry]}})
    md = calibrate(sim.exposure, config, astrom_refcat=refcat, photom_refcat=refcat).metadata
    truth = sim.config.zero_point_mag - 2.5 * math.log10(sim.config.exptime_s)
    if applies:
        assert (md["COLORTERM1"], md["COLORTERM2"], md["COLORTERM3"]) == (TERM[0], -TERM[1], TERM[2])
        assert md["MAGZERO"] == pytest.approx(truth, abs=0.01)
    else:
        assert (md["COLORTERM1"], md["COLORTERM2"], md["COLORTERM3"]) == (0.0, 0.0, 0.0)
        assert abs(md["MAGZERO"] - truth) > 0.02  # the colour term is missing, and it shows
