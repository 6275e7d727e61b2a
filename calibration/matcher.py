"""Pattern matching of detected sources to reference stars from a rough header WCS.

The job of LSST's ``MatchPessimisticBTask``: find which source is which
reference star when the header WCS is off by up to a few hundred pixels, a
degree of rotation and a few per cent of scale, and say so clearly when no
consistent pattern exists.

Method (all steps vectorised; Python loops only over a handful of hypotheses)

1. References are projected to pixels through the header WCS (SIP included),
   keeping those that can land on the image once the header error is undone.
   Positions are then taken relative to the image centre, where the header
   error is a similarity transform ``z_src = w z_ref + t`` in complex notation
   (``w = scale * exp(i rotation)``, ``t`` the shift).
2. The brightest ``n_brightest_sources`` sources and the brightest references
   form pairs. References are taken 1.5 times as dense as the sources (some
   bright ones saturate, colours reorder them) over the image grown by the
   envelope, at most ``n_brightest_refs``. A source pair and an ordered
   reference pair are a candidate when their lengths agree within the scale
   envelope and the position tolerance, their directions within the rotation
   envelope, and the shift they imply (with ``w = 1``) within the offset
   envelope plus what rotation and scale can move a point that far from the
   centre. Candidates are found by a sorted search on the reference pairs'
   angles, in chunks of bounded memory.
3. Each candidate implies ``w`` (ratio of the pair vectors). True candidates
   share one ``w``; the most populated cells of ``(ln |w|, arg w)`` (at most
   three) are taken in turn, and the candidates consistent with a cell vote for
   their two point correspondences (source i is reference k, source j is
   reference l). A true correspondence collects a vote from nearly every other
   true star, a false one only chance votes (the voting matrix of Groth 1986
   and Valdes et al. 1995, with pairs instead of triangles: the envelope makes
   pairs selective enough).
4. The candidates whose correspondences are best supported are hypotheses;
   each gives ``w`` and ``t`` from its two points exactly. Each is refined by
   least squares on the matches it predicts among the ``n_verify`` brightest
   sources and scored by their number; the search stops at a clear winner. The
   best one is refined on the full lists.
5. The solution is accepted only when its number of matches among the bright
   stars (and among all stars) would arise by chance, for any of the distinct
   similarity transforms inside the envelope, with a probability below
   ``false_alarm_probability`` (a Poisson tail with a trials factor: chance
   matches are many in dense fields, and a search over hypotheses finds the
   luckiest transform), number at least ``min_matches``, and lie inside the
   envelope; otherwise
   :class:`~calibration.errors.AstrometryError` says why, with figures.

Sign conventions: ``shift_*_pix`` is where a star that the header WCS puts at
the image centre is measured, minus the image centre (pix); ``rotation_deg`` is
counter-clockwise in the ``(x, y)`` pixel plane from the header-predicted to
the measured positions; ``scale`` is measured over predicted distances. A
header whose pixel scale is ``(1 + f)`` times the true one and whose +y axis is
turned by ``d`` (towards east, as in :mod:`calibration.testing.simwcs`) gives
``scale = 1 + f`` and ``rotation_deg = d`` for the usual east-left orientation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from astropy.wcs import WCS
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from scipy.special import pdtrc

from .configbase import doc_field
from .errors import AstrometryError
from .match import unit_vectors

__all__ = ["MatcherConfig", "PatternMatch", "match_pattern", "project_refs"]

STAGE = "astrometry"
#: Largest number of (source pair, reference pair) candidates held in memory at once.
_CHUNK = 2_000_000
#: Hypotheses refined and scored in step 4.
_N_HYPOTHESES = 12


@dataclasses.dataclass(frozen=True)
class MatcherConfig:
    """Configuration of the pattern matcher (LSST ``MatchPessimisticBConfig`` analogue)."""

    max_offset_pix: float = doc_field(
        300.0, "Largest header pointing error tolerated (pix, at the image centre); LSST maxOffsetPix is 250."
    )
    max_rotation_deg: float = doc_field(
        1.5, "Largest header rotation error tolerated (deg); LSST maxRotationDeg is 1. At most 20."
    )
    max_scale_fraction: float = doc_field(
        0.03, "Largest fractional header pixel-scale error tolerated (0.03 = 3%); at most 0.2."
    )
    tolerance_pix: float = doc_field(
        3.0,
        "Position tolerance of a pattern (pix): centroid error plus distortion the header WCS does not model. "
        "Raise it for a header without the camera's distortion.",
    )
    n_brightest_sources: int = doc_field(50, "Brightest sources used to build patterns (LSST numBrightStars).")
    n_brightest_refs: int = doc_field(
        300,
        "Most reference stars used to build patterns. The matcher takes 1.5 times as many references per unit "
        "area as sources (some saturate, colours differ), over the image grown by the offset envelope.",
    )
    min_pair_length_pix: float = doc_field(
        30.0, "Shortest star pair used (pix); short pairs give poorly defined directions."
    )
    min_matches: int = doc_field(6, "Fewest matched stars that can confirm a pattern solution.")
    false_alarm_probability: float = doc_field(
        1e-3,
        "Largest chance probability of a solution's match count (Poisson, times the number of distinct "
        "transforms in the envelope); smaller is stricter.",
    )
    n_verify: int = doc_field(
        400, "Brightest sources (and twice as many references) on which hypotheses are scored."
    )

    def validate(self) -> None:
        """Cross-field checks; raises ``ValueError``."""
        if not 0 <= self.max_offset_pix:
            raise ValueError(f"max_offset_pix must be >= 0, got {self.max_offset_pix}")
        if not 0 <= self.max_rotation_deg <= 20:
            raise ValueError(f"max_rotation_deg must be within 0..20, got {self.max_rotation_deg}")
        if not 0 <= self.max_scale_fraction <= 0.2:
            raise ValueError(f"max_scale_fraction must be within 0..0.2, got {self.max_scale_fraction}")
        if not self.tolerance_pix > 0:
            raise ValueError(f"tolerance_pix must be > 0, got {self.tolerance_pix}")
        if self.n_brightest_sources < 3 or self.n_brightest_refs < 3:
            raise ValueError("n_brightest_sources and n_brightest_refs must be >= 3")
        if self.n_brightest_sources > 300 or self.n_brightest_refs > 1000:
            raise ValueError("n_brightest_sources must be <= 300 and n_brightest_refs <= 1000 (pairs grow as n^2)")
        if not self.min_pair_length_pix >= 2 * self.tolerance_pix:
            raise ValueError("min_pair_length_pix must be >= 2 * tolerance_pix")
        if self.min_matches < 3:
            raise ValueError(f"min_matches must be >= 3, got {self.min_matches}")
        if not 0 < self.false_alarm_probability < 1:
            raise ValueError(f"false_alarm_probability must be within (0, 1), got {self.false_alarm_probability}")
        if self.n_brightest_refs < self.n_brightest_sources:
            raise ValueError("n_brightest_refs must be >= n_brightest_sources")
        if self.n_verify < self.n_brightest_sources:
            raise ValueError("n_verify must be >= n_brightest_sources")


@dataclasses.dataclass(frozen=True)
class PatternMatch:
    """The pattern matcher's answer.

    Attributes
    ----------
    src_index, ref_index : numpy.ndarray of intp, shape (n_match,)
        Matched pairs, as indices into the source and reference inputs; each
        source and each reference at most once.
    distance_pix : numpy.ndarray, shape (n_match,)
        Distance of each pair after the similarity transform (pix).
    shift_x_pix, shift_y_pix : float
        Measured minus header-predicted position of a star the header WCS puts
        at the image centre (pix).
    rotation_deg : float
        Rotation from predicted to measured positions (deg, counter-clockwise
        in the pixel plane).
    scale : float
        Measured over predicted distances.
    rms_pix : float
        RMS of ``distance_pix``.
    n_expected_random : float
        Matches that randomly placed stars would give at the final radius.
    radius_pix : float
        Final match radius (pix).
    n_votes : int
        Votes of the best-supported correspondence (diagnostic).
    """

    src_index: NDArray[np.intp]
    ref_index: NDArray[np.intp]
    distance_pix: NDArray[np.float64]
    shift_x_pix: float
    shift_y_pix: float
    rotation_deg: float
    scale: float
    rms_pix: float
    n_expected_random: float
    radius_pix: float
    n_votes: int

    def __len__(self) -> int:
        return int(self.src_index.size)

    @property
    def offset_pix(self) -> float:
        """Length of the shift (pix)."""
        return math.hypot(self.shift_x_pix, self.shift_y_pix)



def _poisson_isf(p: float, mu: float) -> float:
    """``scipy.stats.poisson.isf(p, mu)``: the smallest count whose survival (P(X > k)) is <= p.

    Written with ``scipy.special.pdtrc`` because importing scipy.stats costs 0.7 s
    per process, a third of a small image's calibration.
    """
    if mu <= 0:
        return 0.0
    k = np.arange(0, int(mu + 20.0 * np.sqrt(mu) + 60.0))
    below = np.flatnonzero(pdtrc(k, mu) <= p)
    return float(k[below[0]]) if below.size else float(k[-1])

def project_refs(
    ref_ra_deg: ArrayLike, ref_dec_deg: ArrayLike, wcs: WCS, image_shape: tuple[int, int], *, margin_pix: float
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Reference stars predicted by ``wcs`` within ``margin_pix`` of the image.

    Stars further than the image's half-diagonal plus the margin (on the sky,
    from the header's image centre) are dropped before the (iterative) SIP
    inversion, which may not converge far outside the image.

    Returns
    -------
    index : numpy.ndarray of intp
        Indices of the kept references.
    x_pix, y_pix : numpy.ndarray
        Their predicted 0-based pixel positions.
    """
    ra = np.asarray(ref_ra_deg, np.float64)
    dec = np.asarray(ref_dec_deg, np.float64)
    ny, nx = image_shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    corners_x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, xc])
    corners_y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, yc])
    cra, cdec = wcs.all_pix2world(corners_x, corners_y, 0)
    centre = unit_vectors(cra[-1:], cdec[-1:])[0]
    corner_sep = np.arccos(np.clip(unit_vectors(cra[:4], cdec[:4]) @ centre, -1.0, 1.0))
    # Degrees per pixel from the diagonal: good to the few per cent needed for a cut.
    rad_per_pix = float(np.max(corner_sep)) / math.hypot(xc, yc) if max(nx, ny) > 1 else 1e-6
    limit = float(np.max(corner_sep)) + 1.5 * margin_pix * rad_per_pix
    ok = np.isfinite(ra) & np.isfinite(dec)
    sep = np.full(ra.size, np.inf)
    sep[ok] = np.arccos(np.clip(unit_vectors(ra[ok], dec[ok]) @ centre, -1.0, 1.0))
    near = np.flatnonzero(sep <= min(limit, math.radians(80.0)))
    if near.size == 0:
        return near, np.zeros(0), np.zeros(0)
    x, y = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    keep &= (x > -margin_pix) & (x < nx - 1 + margin_pix) & (y > -margin_pix) & (y < ny - 1 + margin_pix)
    return near[keep], x[keep], y[keep]


def _brightest(brightness: NDArray[np.float64], n: int) -> NDArray[np.intp]:
    """Indices of the ``n`` largest values (NaN last), brightest first, ties by index."""
    key = np.where(np.isfinite(brightness), -brightness, np.inf)
    return np.argsort(key, kind="stable")[:n]


def _fit_similarity(zr: NDArray[np.complex128], zs: NDArray[np.complex128]) -> tuple[complex, complex]:
    """Least-squares ``w, t`` of ``zs = w zr + t`` (complex)."""
    mr, ms = zr.mean(), zs.mean()
    dr, ds = zr - mr, zs - ms
    denom = float(np.sum(np.abs(dr) ** 2))
    w = complex(np.sum(np.conj(dr) * ds) / denom) if denom > 0 else 1.0 + 0j
    return w, complex(ms - w * mr)


def _nearest_one_to_one(
    tree: cKDTree, zr: NDArray[np.complex128], radius: float
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Each reference's nearest source within ``radius``; a source keeps only its closest reference."""
    if zr.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0)
    d, s = tree.query(np.column_stack([zr.real, zr.imag]), distance_upper_bound=radius)
    r = np.flatnonzero(np.isfinite(d))
    d, s = d[r], s[r]
    order = np.lexsort((r, d))
    _, first = np.unique(s[order], return_index=True)
    keep = order[first]
    return s[keep].astype(np.intp), r[keep].astype(np.intp), d[keep]


def _refine(
    tree: cKDTree, zs: NDArray[np.complex128], zr: NDArray[np.complex128], w: complex, t: complex,
    radii: tuple[float, ...],
) -> tuple[complex, complex, NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Match, refit the similarity, and repeat for each radius in turn."""
    si = ri = np.zeros(0, np.intp)
    d = np.zeros(0)
    for radius in radii:
        si, ri, d = _nearest_one_to_one(tree, w * zr + t, radius)
        if si.size >= 3:
            w, t = _fit_similarity(zr[ri], zs[si])
    si, ri, d = _nearest_one_to_one(tree, w * zr + t, radii[-1])
    return w, t, si, ri, d


def _pairs(z: NDArray[np.complex128], min_len: float, *, ordered: bool):
    n = z.size
    i, j = np.triu_indices(n, 1)
    if ordered:
        i, j = np.concatenate([i, j]), np.concatenate([j, i])
    vec = z[j] - z[i]
    length = np.abs(vec)
    keep = length >= min_len
    i, j, vec, length = i[keep], j[keep], vec[keep], length[keep]
    return i, j, np.angle(vec), length, 0.5 * (z[i] + z[j])


def _candidates(
    zs: NDArray[np.complex128], zr: NDArray[np.complex128], config: MatcherConfig
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Step 2: (source pair, reference pair) candidates as ``(i, j, k, l, length)``."""
    tol = config.tolerance_pix
    max_rot = math.radians(config.max_rotation_deg)
    ms = config.max_scale_fraction
    si, sj, s_ang, s_len, s_mid = _pairs(zs, config.min_pair_length_pix, ordered=False)
    ri, rj, r_ang, r_len, r_mid = _pairs(zr, config.min_pair_length_pix * (1 - ms), ordered=True)
    empty = np.zeros(0, np.intp)
    if si.size == 0 or ri.size == 0:
        return empty, empty, empty, empty, np.zeros(0)
    order = np.argsort(r_ang, kind="stable")
    ang_sorted = r_ang[order]
    # Angles wrap: search a copy extended by one turn either side.
    ang_ext = np.concatenate([ang_sorted - 2 * np.pi, ang_sorted, ang_sorted + 2 * np.pi])
    idx_ext = np.concatenate([order, order, order])
    delta = np.minimum(max_rot + np.arcsin(np.minimum(1.0, 2.0 * tol / s_len)), np.pi)
    lo = np.searchsorted(ang_ext, s_ang - delta, side="left")
    hi = np.searchsorted(ang_ext, s_ang + delta, side="right")
    counts = hi - lo
    # |w - 1| <= |s - 1| + s |exp(i rot) - 1| <= ms + (1 + ms) max_rot: how far the header error moves
    # a point per unit distance from the centre.
    reach_per_pix = ms + (1.0 + ms) * max_rot
    out: list[tuple[np.ndarray, ...]] = []
    ends = np.cumsum(counts)
    start = 0
    while start < si.size:
        # Largest block of source pairs whose candidates fit in one chunk (at least one pair).
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + _CHUNK, side="right")), start + 1)
        c = counts[start:stop]
        total = int(c.sum())
        if total:
            rep = np.repeat(np.arange(start, stop), c)
            offs = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            r = idx_ext[lo[rep] + offs]
            ls, lr = s_len[rep], r_len[r]
            ok = (ls + 2 * tol >= lr * (1 - ms)) & (ls - 2 * tol <= lr * (1 + ms))
            rep, r = rep[ok], r[ok]
            shift = np.abs(s_mid[rep] - r_mid[r])
            ok = shift <= config.max_offset_pix + np.abs(r_mid[r]) * reach_per_pix + 2.0 * tol
            rep, r = rep[ok], r[ok]
            out.append((si[rep], sj[rep], ri[r], rj[r], s_len[rep]))
        start = stop
    if not out:
        return empty, empty, empty, empty, np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*out))  # type: ignore[return-value]


def _n_trials(config: MatcherConfig, tol: float, radius_pix: float) -> float:
    """Number of distinguishable similarity transforms in the envelope (the trials factor).

    Shifts are distinct every ``tol`` pixels; rotations and scales when they
    move the image corners (``radius_pix`` from the centre) by ``tol``.
    """
    shifts = max(1.0, ((config.max_offset_pix + tol) / tol) ** 2)
    rotations = max(1.0, 2.0 * math.radians(config.max_rotation_deg) * radius_pix / tol)
    scales = max(1.0, 2.0 * config.max_scale_fraction * radius_pix / tol)
    return shifts * rotations * scales


def _mode_bin(tol: float, size_pix: int) -> float:
    """Bin (rad, and ln-scale units) of the mode search: the precision of a half-image-long pair."""
    return max(4.0 * tol / max(size_pix, 1), 1e-4)


def _modes(lw: NDArray[np.complex128], length: NDArray[np.float64], tol: float, size_pix: int,
           config: MatcherConfig, n_modes: int = 3) -> list[complex]:
    """Most populated cells of ``(ln scale, rotation)`` among the candidates, best first.

    True candidates share one similarity, so they pile up in one cell (after a
    3x3 smoothing that makes the peak independent of the grid phase); random
    ones spread over the whole envelope. Long pairs define the cell precisely,
    so only pairs at least a quarter of the image long are counted when there
    are enough of them.
    """
    h = _mode_bin(tol, size_pix)
    precise = length >= 0.25 * size_pix
    if precise.sum() < 20:
        precise = np.ones(lw.size, bool)
    half_s = config.max_scale_fraction + 4.0 * tol / config.min_pair_length_pix + h
    half_r = math.radians(config.max_rotation_deg) + 4.0 * tol / config.min_pair_length_pix + h
    ns, nr = int(math.ceil(2 * half_s / h)) + 1, int(math.ceil(2 * half_r / h)) + 1
    hist, es, er = np.histogram2d(lw.real[precise], lw.imag[precise], bins=(ns, nr),
                                  range=((-half_s, -half_s + ns * h), (-half_r, -half_r + nr * h)))
    padded = np.pad(hist, 1)
    smooth = sum(padded[a:a + ns, b:b + nr] for a in range(3) for b in range(3))
    modes: list[complex] = []
    taken: list[tuple[int, int]] = []
    for flat in np.argsort(-smooth, axis=None, kind="stable"):
        a, b = divmod(int(flat), nr)
        if smooth[a, b] <= 0 or len(modes) == n_modes:
            break
        if any(abs(a - a0) <= 2 and abs(b - b0) <= 2 for a0, b0 in taken):
            continue
        taken.append((a, b))
        modes.append(complex(0.5 * (es[a] + es[a + 1]), 0.5 * (er[b] + er[b + 1])))
    return modes or [0j]


def _fail(message: str, **figures) -> AstrometryError:
    return AstrometryError(message, stage=STAGE, **figures)


def match_pattern(
    src_x_pix: ArrayLike,
    src_y_pix: ArrayLike,
    src_flux: ArrayLike,
    ref_ra_deg: ArrayLike,
    ref_dec_deg: ArrayLike,
    ref_mag: ArrayLike | None,
    wcs: WCS,
    *,
    image_shape: tuple[int, int],
    config: MatcherConfig | None = None,
) -> PatternMatch:
    """Match sources to reference stars starting from a rough header WCS.

    Parameters
    ----------
    src_x_pix, src_y_pix : array_like, shape (n_src,)
        0-based source positions (pix). Non-finite positions never match.
    src_flux : array_like, shape (n_src,)
        Any flux (only its order matters: brightest first).
    ref_ra_deg, ref_dec_deg : array_like, shape (n_ref,)
        Reference positions (deg).
    ref_mag : array_like, shape (n_ref,), or None
        Reference magnitudes (only their order matters); None: the given order
        is taken as brightest first.
    wcs : astropy.wcs.WCS
        The header WCS (0-based pixels).
    image_shape : (ny, nx)
        Image size (pix).
    config : MatcherConfig, optional
        Defaults when None.

    Returns
    -------
    PatternMatch
        Matches within ``tolerance_pix`` after the fitted similarity transform.

    Raises
    ------
    AstrometryError
        ``stage="astrometry"``: too few sources or references, no reference
        star near the field through the header WCS, no pattern significantly
        better than chance (the pointing error exceeds the envelope, or the
        catalogue does not overlap the field), or a solution outside the
        envelope. ``figures`` carry the counts and the envelope.
    """
    config = config or MatcherConfig()
    config.validate()
    sx = np.asarray(src_x_pix, np.float64).ravel()
    sy = np.asarray(src_y_pix, np.float64).ravel()
    sflux = np.asarray(src_flux, np.float64).ravel()
    ny, nx = (int(s) for s in image_shape)
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    envelope = dict(max_offset_pix=config.max_offset_pix, max_rotation_deg=config.max_rotation_deg,
                    max_scale_fraction=config.max_scale_fraction)

    src_ok = np.flatnonzero(np.isfinite(sx) & np.isfinite(sy))
    # Margin for references: the offset envelope plus what rotation and scale move the corners.
    reach = config.max_offset_pix + math.hypot(xc, yc) * (math.radians(config.max_rotation_deg)
                                                        + config.max_scale_fraction) + config.tolerance_pix
    ref_all, rx, ry = project_refs(ref_ra_deg, ref_dec_deg, wcs, (ny, nx), margin_pix=reach)
    n_ref_total = int(np.asarray(ref_ra_deg).size)
    if src_ok.size < config.min_matches:
        raise _fail(f"only {src_ok.size} usable sources for pattern matching; at least {config.min_matches} are "
                    "needed: lower the S/N cut or check the detection", n_sources=int(src_ok.size),
                    min_matches=config.min_matches)
    if ref_all.size < config.min_matches:
        raise _fail(
            f"only {ref_all.size} of {n_ref_total} reference stars fall on or near the image through the header "
            "WCS: check the pointing (RA/DEC, CRVAL) and that the reference catalogue covers this field",
            n_refs_near_field=int(ref_all.size), n_refs=n_ref_total, min_matches=config.min_matches, **envelope)

    tol = config.tolerance_pix
    zs_all = (sx[src_ok] - xc) + 1j * (sy[src_ok] - yc)
    zr_all = (rx - xc) + 1j * (ry - yc)
    s_bright = _brightest(sflux[src_ok], max(config.n_verify, config.n_brightest_sources))
    if ref_mag is None:
        r_order = np.arange(ref_all.size)
    else:
        rmag = np.asarray(ref_mag, np.float64).ravel()[ref_all]
        r_order = _brightest(-rmag, ref_all.size)
    r_bright = r_order[: max(2 * config.n_verify, config.n_brightest_refs)]

    area = float((nx + 2 * reach) * (ny + 2 * reach))
    n_s = min(config.n_brightest_sources, src_ok.size)
    n_r = int(np.clip(round(1.5 * n_s * area / float(nx * ny)), n_s, config.n_brightest_refs))
    zs_p = zs_all[s_bright[:n_s]]
    zr_p = zr_all[r_bright[:n_r]]
    i, j, k, l, length = _candidates(zs_p, zr_p, config)
    if i.size == 0:
        raise _fail("no pair of bright sources resembles a pair of reference stars within the envelope: the "
                    "header WCS is further off than the matcher tolerates, or the catalogue misses this field",
                    n_sources=int(src_ok.size), n_refs_near_field=int(ref_all.size), **envelope)

    # Step 3: modes of (log scale, rotation), then votes of the candidates consistent with a mode.
    lw = np.log((zs_p[j] - zs_p[i]) / (zr_p[l] - zr_p[k]))  # real: ln(scale), imag: rotation (rad)
    zs_v, zr_v = zs_all[s_bright], zr_all[r_bright]
    tree_v = cKDTree(np.column_stack([zs_v.real, zs_v.imag]))
    # Random expectation on the bright lists: sources that fall within tol of one of the references
    # predicted near them, plus the two stars every hypothesis matches by construction.
    n_expected_v = zs_v.size * zr_v.size * math.pi * tol**2 / area
    p_single = config.false_alarm_probability / _n_trials(config, tol, math.hypot(xc, yc))
    # poisson.isf(p, mu) is the largest count chance exceeds with probability p: one more is needed.
    need_v = max(config.min_matches, 2.0 + _poisson_isf(p_single, n_expected_v) + 1.0)
    best: tuple[int, complex, complex] | None = None
    n_votes = 0
    for mode in _modes(lw, length, tol, max(nx, ny), config):
        if best is not None and best[0] >= 2 * need_v + 10:
            break  # a clear solution already: other modes are chance alignments
        near = np.abs(lw - mode) <= 4.0 * tol / length + _mode_bin(tol, max(nx, ny))
        if not near.any():
            continue
        ci, cj, ck, cl, clen = i[near], j[near], k[near], l[near], length[near]
        votes = (np.bincount(ci * n_r + ck, minlength=zs_p.size * n_r)
                 + np.bincount(cj * n_r + cl, minlength=zs_p.size * n_r))
        strength = np.minimum(votes[ci * n_r + ck], votes[cj * n_r + cl])
        n_votes = max(n_votes, int(votes.max()))
        # Step 4: hypotheses from the best-supported candidates, longest pairs first among equals.
        order = np.lexsort((-clen, -strength))
        picks = list(order[: _N_HYPOTHESES // 2])
        strong = order[strength[order] >= 0.5 * strength[order[0]]]
        picks += list(strong[np.argsort(-clen[strong], kind="stable")][: _N_HYPOTHESES // 2])
        for c in dict.fromkeys(int(p) for p in picks):  # unique, in order
            w = (zs_p[cj[c]] - zs_p[ci[c]]) / (zr_p[cl[c]] - zr_p[ck[c]])
            t = zs_p[ci[c]] - w * zr_p[ck[c]]
            w, t, si, _, _ = _refine(tree_v, zs_v, zr_v, w, t, (4 * tol, 2 * tol, tol))
            if best is None or si.size > best[0]:
                best = (int(si.size), w, t)
            if best[0] >= 2 * need_v + 10:
                break
    if best is None:
        raise _fail("no pattern match: no two pairs of stars agree on a rotation and scale within the envelope",
                    n_sources=int(src_ok.size), n_refs_near_field=int(ref_all.size), n_candidates=int(i.size),
                    **envelope)

    # Step 5: test against chance on the bright lists (where chance is small), refine on the full lists.
    n_bright, w, t = best
    tree = cKDTree(np.column_stack([zs_all.real, zs_all.imag]))
    w, t, si, ri, d = _refine(tree, zs_all, zr_all, w, t, (2 * tol, tol, tol))
    n_expected = src_ok.size * zr_all.size * math.pi * tol**2 / area
    need = max(config.min_matches, _poisson_isf(p_single, n_expected) + 1.0)
    scale, rotation = abs(w), math.degrees(math.atan2(w.imag, w.real))
    figures = dict(n_matches=int(si.size), n_expected_random=round(n_expected, 2), n_needed=math.ceil(need),
                   n_bright_matches=n_bright, n_bright_expected_random=round(n_expected_v, 2),
                   n_bright_needed=math.ceil(need_v), n_sources=int(src_ok.size),
                   n_refs_near_field=int(ref_all.size), n_votes=n_votes, shift_x_pix=round(t.real, 2),
                   shift_y_pix=round(t.imag, 2), rotation_deg=round(rotation, 4), scale=round(scale, 5), **envelope)
    if n_bright < need_v or si.size < need:
        raise _fail(
            f"no pattern match: the best solution matches {n_bright} of the {zs_v.size} brightest sources where "
            f"chance gives {n_expected_v:.1f} and {math.ceil(need_v)} are needed ({si.size} of all {src_ok.size}, "
            f"chance {n_expected:.1f}). The header WCS may be off by more than {config.max_offset_pix:g} pix, "
            f"{config.max_rotation_deg:g} deg or {100 * config.max_scale_fraction:g}% in scale, or the reference "
            "catalogue may not cover the field", **figures)
    # A solution at the edge of the envelope is only measured to about tol at the corners.
    precision = 2.0 * tol / max(math.hypot(xc, yc), 1.0)
    if (abs(t) > config.max_offset_pix + tol or abs(rotation) > config.max_rotation_deg + math.degrees(precision)
            or abs(scale - 1.0) > config.max_scale_fraction + precision):
        raise _fail(
            f"the pattern solution (shift {abs(t):.0f} pix, rotation {rotation:.2f} deg, scale {scale:.4f}) lies "
            "outside the matcher's envelope: widen max_offset_pix/max_rotation_deg/max_scale_fraction if the "
            "header is known to be that far off", **figures)
    order = np.argsort(si, kind="stable")
    si, ri, d = si[order], ri[order], d[order]
    return PatternMatch(
        src_index=src_ok[si], ref_index=ref_all[ri], distance_pix=d, shift_x_pix=float(t.real),
        shift_y_pix=float(t.imag), rotation_deg=rotation, scale=scale,
        rms_pix=float(np.sqrt(np.mean(d**2))) if d.size else float("nan"),
        n_expected_random=n_expected, radius_pix=tol, n_votes=n_votes,
    )
