"""Truth tests of calibration.match.match_sky (one-to-one sky matching)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.match import match_sky, unit_vectors

ARCSEC = 1.0 / 3600.0


def _offset(ra_deg, dec_deg, east_arcsec, north_arcsec):
    """Move positions by small tangent-plane offsets (arcsec) on the true sphere."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    xi, eta = np.radians(np.asarray(east_arcsec) * ARCSEC), np.radians(np.asarray(north_arcsec) * ARCSEC)
    denom = np.cos(dec) - eta * np.sin(dec)
    new_ra = ra + np.arctan2(xi, denom)
    new_dec = np.arctan2(np.sin(dec) + eta * np.cos(dec), np.hypot(xi, denom))
    return np.degrees(new_ra) % 360.0, np.degrees(new_dec)


def test_known_offsets_recovered():
    rng = np.random.default_rng(1)
    n = 400
    ra = rng.uniform(150.0, 150.2, n)
    dec = rng.uniform(2.0, 2.2, n)
    east, north = rng.normal(0, 0.1, n), rng.normal(0, 0.1, n)
    src_ra, src_dec = _offset(ra, dec, east, north)
    perm = rng.permutation(n)
    m = match_sky(src_ra, src_dec, ra[perm], dec[perm], radius_arcsec=1.0)
    assert len(m) == n
    np.testing.assert_array_equal(m.src_index, np.arange(n))
    np.testing.assert_array_equal(perm[m.ref_index], np.arange(n))
    # the tangent-plane offset is the separation to well below a microarcsecond
    np.testing.assert_allclose(m.distance_arcsec, np.hypot(east, north), atol=1e-6)


def test_radius_is_respected():
    ra = np.array([10.0, 10.0, 10.0])
    dec = np.array([0.0, 1.0, 2.0])
    src_ra, src_dec = _offset(ra, dec, [0.0, 0.0, 0.0], [0.9, 1.1, 0.5])
    m = match_sky(src_ra, src_dec, ra, dec, radius_arcsec=1.0)
    np.testing.assert_array_equal(m.src_index, [0, 2])
    np.testing.assert_allclose(m.distance_arcsec, [0.9, 0.5], atol=1e-8)


def test_ra_wrap_at_zero():
    # each pair straddles RA = 0/360; a naive |dRA| would put them ~360 deg apart
    ref_ra, ref_dec = np.array([359.99990, 0.00005, 180.0]), np.array([0.0, 1.0, 0.0])
    src_ra, src_dec = np.array([0.00003, 359.99997]), np.array([0.0, 1.0])
    m = match_sky(src_ra, src_dec, ref_ra, ref_dec, radius_arcsec=1.0)
    np.testing.assert_array_equal(m.src_index, [0, 1])
    np.testing.assert_array_equal(m.ref_index, [0, 1])
    expected = np.array([0.00013, 0.00008 * np.cos(np.radians(1.0))]) * 3600.0
    np.testing.assert_allclose(m.distance_arcsec, expected, rtol=1e-6)


def test_near_pole_large_ra_differences():
    # at dec 89.9999 deg, RA 0 and RA 90 are 0.36 arcsec from the pole and 0.51 arcsec apart
    ref_ra, ref_dec = np.array([0.0, 200.0]), np.array([89.9999, 45.0])
    src_ra, src_dec = np.array([90.0, 200.0]), np.array([89.9999, 45.0001])
    m = match_sky(src_ra, src_dec, ref_ra, ref_dec, radius_arcsec=1.0)
    np.testing.assert_array_equal(m.src_index, [0, 1])
    np.testing.assert_array_equal(m.ref_index, [0, 1])
    np.testing.assert_allclose(m.distance_arcsec, [0.36 * np.sqrt(2), 0.36], rtol=1e-6)
    exactly_at_pole = match_sky([0.0, 123.0], [90.0, 90.0], [77.0], [90.0], radius_arcsec=0.1)
    assert len(exactly_at_pole) == 1 and exactly_at_pole.distance_arcsec[0] < 1e-9


def test_conflicts_resolved_one_to_one_closest_first():
    # refs on a line (arcsec east of a point): r0 at 0, r1 at 1.0
    # s0 at 0.4 (closest to r0, d=0.4), s1 at 0.1 (closest to r0, d=0.1): s1 wins r0,
    # s0 then takes r1 (d=0.6); s2 at 2.2 (1.2 from r1) has nothing left once r1 is taken.
    base_ra, base_dec = 45.0, 10.0
    ref_ra, ref_dec = _offset(np.full(2, base_ra), np.full(2, base_dec), [0.0, 1.0], [0.0, 0.0])
    src_ra, src_dec = _offset(np.full(3, base_ra), np.full(3, base_dec), [0.4, 0.1, 2.2], [0.0, 0.0, 0.0])
    m = match_sky(src_ra, src_dec, ref_ra, ref_dec, radius_arcsec=1.5)
    np.testing.assert_array_equal(m.src_index, [0, 1])
    np.testing.assert_array_equal(m.ref_index, [1, 0])
    np.testing.assert_allclose(m.distance_arcsec, [0.6, 0.1], atol=1e-8)
    assert len(np.unique(m.ref_index)) == len(m)


def test_chain_resolved_from_its_closest_end():
    # on a line: s0 r0 s1 r1 ... r19 s20 with gaps shrinking along the chain, so each member's
    # nearest neighbour is the next one; closest-first keeps the pairs from the far end back:
    # r_k <- s_{k+1}, and s0 is left without a partner (it needs many resolution rounds).
    n_ref = 20
    gaps = np.linspace(0.39, 0.01, 2 * n_ref)
    east = np.concatenate(([0.0], np.cumsum(gaps)))
    src_east, ref_east = east[0::2], east[1::2]
    src_ra, src_dec = _offset(np.full(n_ref + 1, 10.0), np.full(n_ref + 1, 5.0), src_east, np.zeros(n_ref + 1))
    ref_ra, ref_dec = _offset(np.full(n_ref, 10.0), np.full(n_ref, 5.0), ref_east, np.zeros(n_ref))
    m = match_sky(src_ra, src_dec, ref_ra, ref_dec, radius_arcsec=0.4)
    np.testing.assert_array_equal(m.src_index, np.arange(1, n_ref + 1))
    np.testing.assert_array_equal(m.ref_index, np.arange(n_ref))
    np.testing.assert_allclose(m.distance_arcsec, gaps[1::2], atol=1e-7)


def test_same_as_sequential_greedy_on_crowded_field():
    rng = np.random.default_rng(11)
    ra, dec = rng.uniform(30.0, 30.003, 300), rng.uniform(-5.0, -4.997, 300)
    ref_ra, ref_dec = rng.uniform(30.0, 30.003, 250), rng.uniform(-5.0, -4.997, 250)
    radius = 2.0
    m = match_sky(ra, dec, ref_ra, ref_dec, radius_arcsec=radius)
    # reference: walk every candidate pair by increasing distance (a loop, fine for a test)
    cos_sep = unit_vectors(ra, dec) @ unit_vectors(ref_ra, ref_dec).T
    sep = np.degrees(np.arccos(np.clip(cos_sep, -1, 1))) * 3600.0
    i, j = np.nonzero(sep <= radius)
    taken_s, taken_r, expected = set(), set(), {}
    for k in np.argsort(sep[i, j], kind="stable"):
        if i[k] not in taken_s and j[k] not in taken_r:
            taken_s.add(i[k]), taken_r.add(j[k])
            expected[int(i[k])] = int(j[k])
    assert len(expected) > 100
    assert dict(zip(m.src_index.tolist(), m.ref_index.tolist())) == expected


def test_empty_and_non_finite_inputs():
    m = match_sky([], [], [1.0], [2.0], radius_arcsec=1.0)
    assert len(m) == 0 and m.src_index.dtype == np.intp and m.distance_arcsec.dtype == np.float64
    assert len(match_sky([1.0], [2.0], [], [], radius_arcsec=1.0)) == 0
    m = match_sky([np.nan, 1.0], [2.0, 2.0], [1.0, np.inf], [2.0, 2.0], radius_arcsec=1.0)
    np.testing.assert_array_equal(m.src_index, [1])
    np.testing.assert_array_equal(m.ref_index, [0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        match_sky([1.0], [2.0], [1.0], [2.0], radius_arcsec=0.0)
    with pytest.raises(ValueError, match="equal length"):
        match_sky([1.0, 2.0], [2.0], [1.0], [2.0], radius_arcsec=1.0)


def test_unit_vectors_are_unit():
    rng = np.random.default_rng(3)
    v = unit_vectors(rng.uniform(0, 360, 100), rng.uniform(-90, 90, 100))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-15)


def test_large_catalogues_are_not_quadratic():
    # 1e5 x 1e5 would take ~1e10 distance evaluations if quadratic: far beyond test time
    rng = np.random.default_rng(7)
    n = 100_000
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    src_ra, src_dec = _offset(ra, dec, rng.normal(0, 0.2, n), rng.normal(0, 0.2, n))
    m = match_sky(src_ra, src_dec, ra, dec, radius_arcsec=2.0)
    assert len(m) > 0.999 * n
    assert np.mean(m.ref_index == m.src_index) > 0.999
