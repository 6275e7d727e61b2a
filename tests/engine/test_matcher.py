"""Truth tests of calibration.matcher: pattern matching from a rough header WCS.

Fields are built from the simulator's true and header WCSs
(``calibration.testing.make_wcs``): stars uniform over the image grown by 400 pix,
a power-law magnitude distribution, sources = stars on the image (85% detected,
the 10 brightest saturated and missing, centroid noise 0.03 pix, magnitudes in
another band with 0.3 mag colour scatter, plus 20% spurious faint sources),
references = every star (positions exact: the matcher only needs pixels).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from calibration.configbase import config_from_dict, config_to_dict
from calibration.errors import AstrometryError
from calibration.matcher import MatcherConfig, match_pattern
from calibration.testing import SimConfig, make_wcs

SIP_A = (4e-6, -2e-6, 3e-6, 1e-9, 0.0, 5e-10, 0.0)
SIP_B = (-3e-6, 2e-6, 1e-6, 0.0, -1e-9, 0.0, 7e-10)


@dataclasses.dataclass
class Field:
    sim: SimConfig
    header_wcs: object
    sx: np.ndarray
    sy: np.ndarray
    sflux: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    truth: np.ndarray  # reference index of each source, -1 for spurious ones

    def match(self, config: MatcherConfig | None = None, **kwargs):
        return match_pattern(self.sx, self.sy, self.sflux, self.ra, self.dec, self.mag, self.header_wcs,
                             image_shape=self.sim.shape, config=config, **kwargs)

    def expected_transform(self) -> tuple[complex, float, float]:
        """Shift, rotation and scale that undo the header error (see calibration.matcher's conventions)."""
        o = complex(*self.sim.header_offset_pix)
        rot = math.radians(self.sim.header_rotation_deg)
        scale = 1.0 + self.sim.header_scale_fraction
        return -scale * np.exp(1j * rot) * o, self.sim.header_rotation_deg, scale


def make_field(seed: int, *, n_stars: int = 5000, shape=(2048, 2048), pixel_scale_arcsec: float = 0.2,
               ra: float = 150.0, dec: float = 2.2, header_sip: bool = True, n_saturated: int = 10,
               **header) -> Field:
    sim = SimConfig(shape=shape, pixel_scale_arcsec=pixel_scale_arcsec, ra_deg=ra, dec_deg=dec, rotation_deg=30.0,
                    sip_a=SIP_A, sip_b=SIP_B, header_sip=header_sip, **header)
    true_wcs, header_wcs = make_wcs(sim), make_wcs(sim, header=True)
    rng = np.random.default_rng(seed)
    ny, nx = shape
    margin = 400
    n_all = int(n_stars * (nx + 2 * margin) * (ny + 2 * margin) / (nx * ny))
    x = rng.uniform(-margin, nx - 1 + margin, n_all)
    y = rng.uniform(-margin, ny - 1 + margin, n_all)
    mag = 14.0 + 8.0 * rng.power(3, n_all)
    sra, sdec = true_wcs.all_pix2world(x, y, 0)
    on_image = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    detected = on_image & (rng.uniform(size=n_all) < 0.85)
    detected[np.argsort(np.where(detected, mag, np.inf))[:n_saturated]] = False  # saturated: no source
    idx = np.flatnonzero(detected)
    other_band = mag[idx] + rng.normal(0.0, 0.3, idx.size)
    n_fake = idx.size // 5
    sx = np.concatenate([x[idx] + rng.normal(0, 0.03, idx.size), rng.uniform(0, nx - 1, n_fake)])
    sy = np.concatenate([y[idx] + rng.normal(0, 0.03, idx.size), rng.uniform(0, ny - 1, n_fake)])
    smag = np.concatenate([other_band, rng.uniform(17.0, 23.0, n_fake)])
    truth = np.concatenate([idx, np.full(n_fake, -1)])
    return Field(sim, header_wcs, sx, sy, 10 ** (-0.4 * (smag - 25.0)), sra, sdec, mag, truth)


def assert_correct(field: Field, pm, *, min_fraction: float = 0.8, min_correct: float = 0.99) -> None:
    correct = field.truth[pm.src_index] == pm.ref_index
    assert correct.mean() > min_correct, f"{(~correct).sum()} wrong matches of {len(pm)}"
    findable = np.count_nonzero(field.truth >= 0)
    assert len(pm) > min_fraction * findable
    assert np.unique(pm.src_index).size == len(pm) and np.unique(pm.ref_index).size == len(pm)


@pytest.mark.parametrize(
    "offset, rotation, scale_error",
    [
        ((0.0, 0.0), 0.0, 0.0),
        ((250.0, 0.0), 0.0, 0.0),
        ((0.0, -250.0), 1.0, 0.02),
        ((-177.0, 177.0), -1.0, -0.02),   # 250 pix along a diagonal
        ((177.0, 177.0), 1.0, -0.02),
        ((-120.0, -200.0), -0.6, 0.015),
    ],
)
def test_envelope_of_header_errors(offset, rotation, scale_error):
    field = make_field(11, header_offset_pix=offset, header_rotation_deg=rotation, header_scale_fraction=scale_error)
    pm = field.match()
    assert_correct(field, pm)
    shift, rot, scale = field.expected_transform()
    # The true header error is a similarity only up to the SIP terms it moves (< 0.5 pix here).
    assert abs(complex(pm.shift_x_pix, pm.shift_y_pix) - shift) < 0.5
    assert pm.rotation_deg == pytest.approx(rot, abs=0.01)
    assert pm.scale == pytest.approx(scale, abs=2e-4)
    assert pm.rms_pix < 0.5 and pm.offset_pix == pytest.approx(abs(shift), abs=0.5)
    assert pm.n_expected_random < 0.1 * len(pm)


def test_header_without_distortion():
    # Many telescopes write a plain TAN header: the ~9 pix distortion is then unmodelled. Patterns
    # are still found; the matches far from the centre wait for the SIP fit. Residuals of ~1.5 pix
    # within the 3 pix tolerance let ~2% chance neighbours in (the sky match and fit weed them out).
    field = make_field(12, header_sip=False, header_offset_pix=(100.0, 50.0), header_rotation_deg=0.5)
    pm = field.match()
    assert_correct(field, pm, min_fraction=0.6, min_correct=0.97)
    assert 1.0 < pm.rms_pix < 2.5


def test_sparse_field():
    field = make_field(13, n_stars=18, n_saturated=1)
    assert np.count_nonzero(field.truth >= 0) < 18
    pm = field.match()
    assert len(pm) >= 8
    assert np.all(field.truth[pm.src_index] == pm.ref_index)


def test_small_image():
    field = make_field(14, shape=(512, 512), n_stars=300, pixel_scale_arcsec=0.26, header_offset_pix=(30.0, -20.0),
                       header_rotation_deg=0.3)
    assert_correct(field, field.match())


@pytest.mark.parametrize("ra, dec", [(0.005, -5.0), (0.0, 89.97), (45.0, -89.4)])
def test_anywhere_on_the_sky(ra, dec):
    field = make_field(15, n_stars=2000, ra=ra, dec=dec, header_offset_pix=(-200.0, 80.0), header_rotation_deg=-0.8,
                       header_scale_fraction=0.01)
    assert_correct(field, field.match())


@pytest.mark.parametrize(
    "header",
    [
        dict(header_rotation_deg=5.0),
        dict(header_offset_pix=(600.0, 0.0)),
        dict(header_offset_pix=(400.0, -300.0)),
        dict(header_scale_fraction=0.1),
    ],
)
def test_beyond_the_envelope_fails_cleanly(header):
    field = make_field(16, **header)
    with pytest.raises(AstrometryError) as info:
        field.match()
    err = info.value
    assert err.stage == "astrometry"
    assert err.figures["max_offset_pix"] == 300.0 and err.figures["max_rotation_deg"] == 1.5
    assert "n_matches" in err.figures and "n_bright_expected_random" in err.figures
    assert "envelope" in err.message or "off by more than" in err.message


def test_wider_envelope_on_request():
    field = make_field(17, header_rotation_deg=5.0, header_offset_pix=(500.0, 0.0))
    pm = field.match(MatcherConfig(max_rotation_deg=6.0, max_offset_pix=600.0))
    assert_correct(field, pm)
    assert pm.rotation_deg == pytest.approx(5.0, abs=0.01)


def test_no_catalogue_overlap():
    field = make_field(18)
    far_ra = np.mod(field.ra + 1.0, 360.0)  # the catalogue of a field one degree away
    with pytest.raises(AstrometryError) as info:
        match_pattern(field.sx, field.sy, field.sflux, far_ra, field.dec, field.mag, field.header_wcs,
                      image_shape=field.sim.shape)
    err = info.value
    assert err.stage == "astrometry" and err.figures["n_refs_near_field"] == 0
    assert err.figures["n_refs"] == field.ra.size
    assert "pointing" in err.message


def test_unrelated_catalogue_over_the_field():
    # Stars of the right density and brightness on the field, but not these stars.
    field = make_field(19)
    other = make_field(20)
    with pytest.raises(AstrometryError) as info:
        match_pattern(field.sx, field.sy, field.sflux, other.ra, other.dec, other.mag, field.header_wcs,
                      image_shape=field.sim.shape)
    err = info.value
    assert err.message.startswith("no pattern match")
    assert err.figures["n_bright_matches"] < err.figures["n_bright_needed"]


def test_too_few_sources():
    field = make_field(21)
    with pytest.raises(AstrometryError, match="usable sources") as info:
        match_pattern(field.sx[:4], field.sy[:4], field.sflux[:4], field.ra, field.dec, field.mag,
                      field.header_wcs, image_shape=field.sim.shape)
    assert info.value.figures["n_sources"] == 4


def test_order_of_inputs_does_not_matter_and_nan_never_matches():
    field = make_field(22, n_stars=1500, header_offset_pix=(40.0, 40.0))
    pm = field.match()
    rng = np.random.default_rng(0)
    perm = rng.permutation(field.sx.size)
    sx, sy = field.sx[perm].copy(), field.sy[perm].copy()
    sx[:10] = np.nan
    shuffled = match_pattern(sx, sy, field.sflux[perm], field.ra, field.dec, field.mag,
                             field.header_wcs, image_shape=field.sim.shape)
    assert not np.isin(np.arange(10), shuffled.src_index).any()
    pairs = set(zip(perm[shuffled.src_index].tolist(), shuffled.ref_index.tolist()))
    assert len(pairs & set(zip(pm.src_index.tolist(), pm.ref_index.tolist()))) > 0.98 * len(pm)


def test_references_without_magnitudes():
    # Without magnitudes the catalogue's order is taken as brightness order: sort it by magnitude.
    field = make_field(23, n_stars=1500)
    order = np.argsort(field.mag)
    pm = match_pattern(field.sx, field.sy, field.sflux, field.ra[order], field.dec[order], None, field.header_wcs,
                       image_shape=field.sim.shape)
    assert np.all(field.truth[pm.src_index] == order[pm.ref_index])


def test_config_validation_and_json():
    with pytest.raises(ValueError, match="max_rotation_deg"):
        MatcherConfig(max_rotation_deg=30.0).validate()
    with pytest.raises(ValueError, match="min_pair_length_pix"):
        MatcherConfig(tolerance_pix=20.0).validate()
    with pytest.raises(ValueError, match="n_brightest_refs"):
        MatcherConfig(n_brightest_sources=80, n_brightest_refs=50).validate()
    config = MatcherConfig(max_offset_pix=400.0, tolerance_pix=4.0)
    assert config_from_dict(MatcherConfig, config_to_dict(config)) == config
