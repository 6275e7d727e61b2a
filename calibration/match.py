"""Sky matching helpers: one-to-one nearest-neighbour matches on the sphere.

Used by the photometric calibration (as LSST's ``DirectMatchTask`` is by
``PhotoCalTask``) once the WCS is known; the astrometric pattern matcher lives
elsewhere.

Positions are turned into unit vectors and put in a :class:`scipy.spatial.cKDTree`,
so matching is ``O(n log n)``, has no trouble at RA = 0/360 and is exact near
the poles. Distances are chords on the unit sphere converted to angles with
``theta = 2 arcsin(c / 2)``, which keeps full double precision at milliarcsecond
separations.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

__all__ = ["SkyMatch", "match_sky", "unit_vectors"]

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi


@dataclasses.dataclass(frozen=True)
class SkyMatch:
    """One-to-one matches between a source and a reference list.

    Attributes
    ----------
    src_index : numpy.ndarray of intp, shape (n_match,)
        Index into the source arrays, sorted ascending.
    ref_index : numpy.ndarray of intp, shape (n_match,)
        Index into the reference arrays of the matched partner.
    distance_arcsec : numpy.ndarray of float64, shape (n_match,)
        Great-circle separation of each pair (arcsec).
    """

    src_index: NDArray[np.intp]
    ref_index: NDArray[np.intp]
    distance_arcsec: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.src_index.size)


def unit_vectors(ra_deg: ArrayLike, dec_deg: ArrayLike) -> NDArray[np.float64]:
    """Cartesian unit vectors of sky positions.

    Parameters
    ----------
    ra_deg, dec_deg : array_like, shape (n,)
        Right ascension and declination (deg).

    Returns
    -------
    numpy.ndarray, shape (n, 3)
        ``(cos d cos a, cos d sin a, sin d)`` per row.
    """
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    cos_dec = np.cos(dec)
    return np.column_stack((cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)))


def _empty() -> SkyMatch:
    return SkyMatch(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float64))


def _check(ra: ArrayLike, dec: ArrayLike, what: str) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    ra_a = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec_a = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    if ra_a.shape != dec_a.shape or ra_a.ndim != 1:
        raise ValueError(f"{what}: ra and dec must be 1-D of equal length, got {ra_a.shape} and {dec_a.shape}")
    finite = np.flatnonzero(np.isfinite(ra_a) & np.isfinite(dec_a))
    return unit_vectors(ra_a[finite], dec_a[finite]), finite


def _greedy_one_to_one(
    i: NDArray[np.intp], j: NDArray[np.intp], d: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Closest-pair-first one-to-one assignment of candidate pairs ``(i, j, d)``.

    Equivalent to walking the pairs in increasing ``d`` and keeping each pair
    whose source and reference are both still free, but done in rounds: in each
    round every pair that is the nearest remaining candidate of both its source
    and its reference is accepted (the globally closest pair always is, so every
    round makes progress), then pairs touching an accepted member are dropped.
    """
    order = np.lexsort((j, i, d))  # by distance; ties broken by index, deterministic
    i, j, d = i[order], j[order], d[order]
    keep_i, keep_j, keep_d = [], [], []
    while i.size:
        # first occurrence in distance order = the nearest candidate of that member
        _, first_i = np.unique(i, return_index=True)
        _, first_j = np.unique(j, return_index=True)
        best = np.zeros(i.size, dtype=bool)
        best[first_i] = True
        mutual = best.copy()
        best[:] = False
        best[first_j] = True
        mutual &= best
        keep_i.append(i[mutual])
        keep_j.append(j[mutual])
        keep_d.append(d[mutual])
        alive = ~(np.isin(i, i[mutual]) | np.isin(j, j[mutual]))
        i, j, d = i[alive], j[alive], d[alive]
    if not keep_i:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float64)
    return np.concatenate(keep_i), np.concatenate(keep_j), np.concatenate(keep_d)


def match_sky(
    src_ra_deg: ArrayLike,
    src_dec_deg: ArrayLike,
    ref_ra_deg: ArrayLike,
    ref_dec_deg: ArrayLike,
    *,
    radius_arcsec: float,
) -> SkyMatch:
    """Match sources to references one-to-one within a radius, closest pairs first.

    Parameters
    ----------
    src_ra_deg, src_dec_deg : array_like, shape (n_src,)
        Source positions (deg). Non-finite positions never match.
    ref_ra_deg, ref_dec_deg : array_like, shape (n_ref,)
        Reference positions (deg). Non-finite positions never match.
    radius_arcsec : float
        Maximum separation of a match (arcsec), > 0 and < 180 deg.

    Returns
    -------
    SkyMatch
        Each source and each reference appears at most once. Conflicts are
        resolved globally by distance: the closest pair is kept, then the
        closest pair among the remaining free members, and so on (LSST's
        ``afw.table.matchRaDec(closest=True)`` only makes each source pick its
        nearest reference; here references are unique too). Empty inputs give
        an empty match.

    Raises
    ------
    ValueError
        If the radius is not a positive finite angle below 180 deg, or the
        ra/dec arrays of one list differ in length.
    """
    radius = float(radius_arcsec)
    if not np.isfinite(radius) or radius <= 0 or radius >= 180.0 * 3600.0:
        raise ValueError(f"radius_arcsec must be in (0, 648000), got {radius_arcsec!r}")
    src_xyz, src_idx = _check(src_ra_deg, src_dec_deg, "sources")
    ref_xyz, ref_idx = _check(ref_ra_deg, ref_dec_deg, "references")
    if src_idx.size == 0 or ref_idx.size == 0:
        return _empty()

    max_chord = 2.0 * np.sin(0.5 * radius / _ARCSEC_PER_RAD)
    src_tree = cKDTree(src_xyz)
    ref_tree = cKDTree(ref_xyz)
    pairs = src_tree.sparse_distance_matrix(ref_tree, max_chord, output_type="ndarray")
    if pairs.size == 0:
        return _empty()
    i, j, chord = _greedy_one_to_one(
        pairs["i"].astype(np.intp), pairs["j"].astype(np.intp), pairs["v"].astype(np.float64)
    )
    distance = 2.0 * np.arcsin(np.minimum(0.5 * chord, 1.0)) * _ARCSEC_PER_RAD
    order = np.argsort(i, kind="stable")
    return SkyMatch(src_idx[i[order]], ref_idx[j[order]], distance[order])
