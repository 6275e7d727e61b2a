"""Sky-source placement and sky-noise measurement against truth."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy import units as u
from astropy.table import vstack
from scipy.spatial.distance import pdist

from calibration.configbase import config_from_dict, config_to_dict
from calibration.errors import ConfigError, NoSourcesError
from calibration.exposure import MaskPlane, make_exposure
from calibration.skysources import SkySourceConfig, measure_sky_noise, place_sky_sources

SIGMA_ADU = 10.0
SIZE = 1024
AVOID = int(MaskPlane.DETECTED | MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT | MaskPlane.EDGE)


def _noise_with_detections(seed: int):
    """Gaussian noise (sky subtracted) with 40 bright 'detections' masked DETECTED,
    a BAD column and an EDGE border; masked pixels hold +1000 ADU so that an
    aperture touching one would be obvious."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, SIGMA_ADU, (SIZE, SIZE))
    mask = np.zeros((SIZE, SIZE), np.int32)
    cx, cy, rad = rng.uniform(0, SIZE, 40), rng.uniform(0, SIZE, 40), rng.uniform(5, 30, 40)
    for x0, y0, r0 in zip(cx, cy, rad):  # test fixture only: 40 disks
        x1, x2 = max(int(x0 - r0), 0), min(int(x0 + r0) + 2, SIZE)
        y1, y2 = max(int(y0 - r0), 0), min(int(y0 + r0) + 2, SIZE)
        yy, xx = np.mgrid[y1:y2, x1:x2]
        mask[y1:y2, x1:x2][(xx - x0) ** 2 + (yy - y0) ** 2 < r0**2] |= MaskPlane.DETECTED
    mask[:, 500] |= MaskPlane.BAD
    mask[:8, :] |= MaskPlane.EDGE
    mask[-8:, :] |= MaskPlane.EDGE
    image[(mask & AVOID) != 0] += 1000.0
    return make_exposure(image, mask=mask, variance=np.full((SIZE, SIZE), SIGMA_ADU**2))


def test_per_pixel_noise_matches_sigma() -> None:
    # The MAD of n aperture fluxes has a relative error of ~1.17/sqrt(n) on
    # Gaussian noise (0.71/sqrt(n) for the standard deviation). With 400
    # apertures that is 5.8 %, so a 5 % requirement would fail on ~40 % of
    # seeds. Pooling 4 images x 2000 apertures of 4 pix gives 1.3 %, and 5 %
    # is then 3.8 standard errors.
    config = SkySourceConfig(n_sources=2000, radius_pix=4.0)
    tables = []
    for seed in range(4):
        exposure = _noise_with_detections(seed=100 + seed)
        table = place_sky_sources(exposure, config, seed=seed)
        assert table.meta["n_placed"] == 2000
        tables.append(table)
    noise = measure_sky_noise(vstack(tables, metadata_conflicts="silent"), radius_pix=4.0)
    assert noise.n == 8000
    assert noise.per_pixel_rms_adu == pytest.approx(SIGMA_ADU, rel=0.05)
    # White noise in an exact-overlap aperture: variance sigma^2 sum(w^2).
    assert noise.effective_pixels == pytest.approx(45.677, rel=1e-4)
    assert noise.aperture_rms_adu == pytest.approx(SIGMA_ADU * np.sqrt(45.677), rel=0.05)
    # Residual sky: the median of 8000 fluxes has an error of 1.25 * 71 / sqrt(8000) ~ 1 ADU.
    assert abs(noise.median_flux_adu) < 5.0


def test_apertures_avoid_masked_pixels_and_each_other() -> None:
    exposure = _noise_with_detections(seed=7)
    avoid = (exposure.mask & AVOID) != 0
    config = SkySourceConfig(n_sources=400)
    table = place_sky_sources(exposure, config, seed=7)
    assert len(table) == 400 and np.all(table["sky_source"])
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    # Independent check with sep's exact overlap: no aperture of the radius
    # grown by grow_pix contains an avoided pixel or leaves the image.
    _, _, flags = sep.sum_circle(
        np.zeros((SIZE, SIZE), np.float32), x, y, config.radius_pix + config.grow_pix,
        mask=avoid, subpix=0,
    )
    assert np.all(flags & (sep.APER_HASMASKED | sep.APER_TRUNC) == 0)
    assert np.all(table["sky_flag"] == 0)
    # Fluxes are pure noise: far below the +1000 ADU/pixel of masked pixels.
    assert np.abs(table["sky_flux"]).max() < 6 * SIGMA_ADU * np.sqrt(np.pi * 64)
    assert pdist(np.column_stack([x, y])).min() >= 2 * config.radius_pix
    np.testing.assert_allclose(table["sky_flux_err"], SIGMA_ADU * np.sqrt(np.pi * 64), rtol=1e-4)
    assert table["sky_flux"].unit == u.adu and table["x"].unit == u.pix
    for col in table.itercols():
        assert col.description
    sky_plane = (exposure.mask & MaskPlane.SKY_SOURCE) != 0
    assert sky_plane.any() and not (sky_plane & avoid).any()


def test_reproducible_for_a_seed() -> None:
    config = SkySourceConfig(n_sources=100, set_mask=False)
    first = place_sky_sources(_noise_with_detections(seed=1), config, seed=42)
    again = place_sky_sources(_noise_with_detections(seed=1), config, seed=42)
    other = place_sky_sources(_noise_with_detections(seed=1), config, seed=43)
    np.testing.assert_array_equal(first["x"], again["x"])
    np.testing.assert_array_equal(first["y"], again["y"])
    np.testing.assert_array_equal(first["sky_flux"], again["sky_flux"])
    assert not np.array_equal(first["x"], other["x"])


def test_places_what_fits_and_records_it() -> None:
    exposure = make_exposure(np.zeros((200, 200)))
    exposure.mask[:] = MaskPlane.DETECTED
    exposure.mask[50:80, 20:180] = 0  # a 30 x 160 strip of free sky
    table = place_sky_sources(exposure, SkySourceConfig(n_sources=100, radius_pix=5.0), seed=3)
    # Centres need 5 + 2 + 0.71 pix of clearance: a 14 x 144 pix region, so at most
    # ~2 x 15 apertures 10 pix apart.
    assert 5 <= len(table) < 40
    assert table.meta["n_requested"] == 100 and table.meta["n_placed"] == len(table)


def test_no_room_raises() -> None:
    exposure = make_exposure(np.zeros((64, 64)))
    exposure.mask[:] = MaskPlane.DETECTED
    with pytest.raises(NoSourcesError, match="radius_pix") as info:
        place_sky_sources(exposure, SkySourceConfig(), seed=0)
    assert info.value.stage == "skysources"
    assert info.value.figures["free_fraction"] == 0.0


def test_config_round_trip_and_validation() -> None:
    config = SkySourceConfig(n_sources=50, radius_pix=6.0, min_separation_pix=20.0)
    assert config_from_dict(SkySourceConfig, config_to_dict(config)) == config
    assert config.separation_pix == 20.0 and SkySourceConfig().separation_pix == 16.0
    with pytest.raises(ConfigError, match="radius_pix"):
        config_from_dict(SkySourceConfig, {"radius_pix": 0})
    with pytest.raises(ConfigError, match="mask plane"):
        place_sky_sources(make_exposure(np.zeros((8, 8))), SkySourceConfig(avoid_planes=("X",)), seed=0)
