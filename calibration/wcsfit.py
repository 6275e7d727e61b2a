"""Fit a TAN-SIP WCS to matched pixel/sky positions, and express it as TPV.

The fit works in the tangent plane, never on raw RA differences, so it is the
same at RA = 0/360 and next to (or around) a celestial pole:

1. The sky positions are projected gnomonically about a trial tangent point
   ``(ra0, dec0)`` to standard coordinates ``(xi, eta)`` (deg; FITS
   intermediate world coordinates of a TAN projection with the default
   ``LONPOLE = 180``: ``xi`` grows towards east, ``eta`` towards north).
2. ``xi`` and ``eta`` are fitted, by linear least squares, as full polynomials
   of total degree ``sip_order`` in ``u, v = pixel - CRPIX`` (pix), constant
   term included. The constant is where CRPIX lands in the plane: the tangent
   point is moved there (deprojection on the sphere) and steps 1-2 repeat until
   it moves by less than a micro-arcsecond.
3. The linear terms are the CD matrix; the higher terms, multiplied by
   ``CD^-1``, are the SIP ``A``/``B`` coefficients, since SIP defines
   ``(xi, eta) = CD (u + A(u, v), v + B(u, v))``.
4. Points whose (weighted) residual distance exceeds ``clip_sigma`` times its
   robust per-axis sigma are rejected and the fit repeats until the kept set is
   stable.
5. The inverse polynomials ``AP``/``BP`` (order ``sip_order + 1`` by default)
   are fitted on a grid covering the image, as SIP requires.

``CRPIX`` stays where the caller puts it (default: the image centre), so
``CRVAL`` is the sky position of that pixel. Pixel coordinates are 0-based
(``origin=0`` in astropy calls); the header's ``CRPIX`` is 1-based.

TPV (SCAMP/SWarp): :func:`tpv_header` rewrites a TAN-SIP WCS as ``RA---TPV``
``PVi_j`` polynomials in intermediate coordinates ``(x, y) = CD (u, v)`` (deg).
A SIP polynomial of degree n becomes a TPV polynomial of the same degree without
the radial terms; the conversion is a least-squares fit on a grid that is exact
up to rounding because both sides are polynomials of the same degree.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip
from numpy.typing import ArrayLike, NDArray

from .errors import AstrometryError
from .stats import LeastSquares

__all__ = [
    "MAX_SIP_ORDER",
    "WcsFitResult",
    "fit_tan_sip",
    "n_poly_terms",
    "sky_offsets_mas",
    "tan_deproject",
    "tan_project",
    "tpv_header",
    "tpv_wcs",
]

STAGE = "astrometry"
MAX_SIP_ORDER = 5
_MAS_PER_DEG = 3.6e6
#: Tangent-point updates stop when the constant term (deg) falls below this (~4 micro-arcsec).
_TANGENT_TOL_DEG = 1e-9


@dataclasses.dataclass(frozen=True)
class WcsFitResult:
    """A fitted TAN-SIP WCS and how the points fared.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        ``RA---TAN-SIP``/``DEC--TAN-SIP`` (plain ``TAN`` when ``sip_order`` is 1)
        for 0-based pixels, with forward ``A``/``B`` and inverse ``AP``/``BP``.
    used : numpy.ndarray of bool, shape (n,)
        Points that survived the clipping and entered the final fit.
    dra_mas, ddec_mas : numpy.ndarray, shape (n,)
        Reference minus fitted position of every point (mas), RA as
        ``dRA cos(dec)``; finite also for rejected points.
    rms_mas : float
        ``sqrt(mean(dra**2 + ddec**2))`` over the used points (mas): the
        2-D RMS distance.
    sip_order : int
        Order of the forward polynomial.
    inverse_max_error_pix : float
        Largest round-trip error ``pix -> sky -> pix`` of the inverse SIP on
        the fitting grid (pix).
    n_iter : int
        Number of clipping iterations done.
    """

    wcs: WCS
    used: NDArray[np.bool_]
    dra_mas: NDArray[np.float64]
    ddec_mas: NDArray[np.float64]
    rms_mas: float
    sip_order: int
    inverse_max_error_pix: float
    n_iter: int


def n_poly_terms(order: int) -> int:
    """Number of coefficients of a full 2-D polynomial of total degree ``order`` (per axis)."""
    return (order + 1) * (order + 2) // 2


def _terms(order: int, *, min_total: int = 0) -> list[tuple[int, int]]:
    """``(p, q)`` exponents of ``u**p v**q`` with ``min_total <= p + q <= order``."""
    return [(p, total - p) for total in range(min_total, order + 1) for p in range(total, -1, -1)]


def _design(u: NDArray[np.float64], v: NDArray[np.float64], terms: list[tuple[int, int]]) -> NDArray[np.float64]:
    """Columns ``u**p v**q`` for ``terms`` (powers by repeated products: ``**`` is slow)."""
    top = max(max(p, q) for p, q in terms)
    up, vp = [np.ones_like(u)], [np.ones_like(v)]
    for _ in range(top):
        up.append(up[-1] * u)
        vp.append(vp[-1] * v)
    out = np.empty((u.size, len(terms)))
    for k, (p, q) in enumerate(terms):
        np.multiply(up[p], vp[q], out=out[:, k])
    return out


def _lstsq(design: NDArray[np.float64], rhs: NDArray[np.float64]) -> NDArray[np.float64]:
    """One-off least squares (see :class:`~calibration.stats.LeastSquares`)."""
    return LeastSquares(design)(rhs)


def tan_project(
    ra_deg: ArrayLike, dec_deg: ArrayLike, ra0_deg: float, dec0_deg: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gnomonic (TAN) projection about ``(ra0, dec0)``.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Sky positions (deg).
    ra0_deg, dec0_deg : float
        Tangent point (deg).

    Returns
    -------
    xi_deg, eta_deg : numpy.ndarray
        Standard coordinates (deg): ``xi`` towards east, ``eta`` towards north;
        NaN for points 90 deg or more from the tangent point. RA enters only
        through sines and cosines of its difference, so 0/360 is seamless.
    """
    ra = np.radians(np.asarray(ra_deg, np.float64))
    dec = np.radians(np.asarray(dec_deg, np.float64))
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    dra = ra - ra0
    cos_dec, sin_dec = np.cos(dec), np.sin(dec)
    cos_c = sin_dec * math.sin(dec0) + cos_dec * math.cos(dec0) * np.cos(dra)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.where(cos_c > 0, cos_dec * np.sin(dra) / cos_c, np.nan)
        eta = np.where(cos_c > 0, (sin_dec * math.cos(dec0) - cos_dec * math.sin(dec0) * np.cos(dra)) / cos_c, np.nan)
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(
    xi_deg: ArrayLike, eta_deg: ArrayLike, ra0_deg: float, dec0_deg: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Inverse of :func:`tan_project`: standard coordinates (deg) to ``ra`` in [0, 360), ``dec`` (deg)."""
    xi = np.radians(np.asarray(xi_deg, np.float64))
    eta = np.radians(np.asarray(eta_deg, np.float64))
    dec0 = math.radians(dec0_deg)
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ra = np.mod(ra0_deg + np.degrees(np.arctan2(xi, denom)), 360.0)
    dec = np.degrees(np.arctan2(math.sin(dec0) + eta * math.cos(dec0), np.hypot(xi, denom)))
    return ra, dec


def sky_offsets_mas(
    ra_ref_deg: ArrayLike, dec_ref_deg: ArrayLike, ra_deg: ArrayLike, dec_deg: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Offsets ``ref - pos`` (mas) in the tangent plane at each ``pos``: ``(dRA cos dec, dDec)``.

    Exact at any separation a match can have (no raw RA difference), and the
    2-D norm equals the great-circle distance to better than 1e-9 relative at
    arcsecond separations.
    """
    ra_ref = np.radians(np.asarray(ra_ref_deg, np.float64))
    dec_ref = np.radians(np.asarray(dec_ref_deg, np.float64))
    ra = np.radians(np.asarray(ra_deg, np.float64))
    dec = np.radians(np.asarray(dec_deg, np.float64))
    dra = ra_ref - ra
    cos_c = np.sin(dec_ref) * np.sin(dec) + np.cos(dec_ref) * np.cos(dec) * np.cos(dra)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.cos(dec_ref) * np.sin(dra) / cos_c
        eta = (np.sin(dec_ref) * np.cos(dec) - np.cos(dec_ref) * np.sin(dec) * np.cos(dra)) / cos_c
    return np.degrees(xi) * _MAS_PER_DEG, np.degrees(eta) * _MAS_PER_DEG


def _mean_direction(ra_deg: NDArray[np.float64], dec_deg: NDArray[np.float64]) -> tuple[float, float]:
    """Direction of the mean unit vector (deg): a tangent point that never straddles 0/360."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    vec = np.array([np.mean(np.cos(dec) * np.cos(ra)), np.mean(np.cos(dec) * np.sin(ra)), np.mean(np.sin(dec))])
    vec /= np.linalg.norm(vec)
    return float(np.degrees(np.arctan2(vec[1], vec[0])) % 360.0), float(np.degrees(np.arcsin(vec[2])))


@dataclasses.dataclass
class _Solution:
    ra0: float
    dec0: float
    cxi: NDArray[np.float64]  # coefficients for the *normalised* design
    ceta: NDArray[np.float64]


def _solve(
    design: NDArray[np.float64], ra: NDArray[np.float64], dec: NDArray[np.float64], w: NDArray[np.float64],
    ra0: float, dec0: float,
) -> _Solution:
    """Weighted least squares with tangent-point updates (steps 1-2 of the module doc).

    ``design``'s first column must be the constant term.
    """
    solver = LeastSquares(design * w[:, None])
    for _ in range(20):
        xi, eta = tan_project(ra, dec, ra0, dec0)
        coef = solver(np.column_stack([xi * w, eta * w]))
        xi0, eta0 = float(coef[0, 0]), float(coef[0, 1])  # terms[0] is (0, 0)
        ra0, dec0 = (float(c) for c in tan_deproject(xi0, eta0, ra0, dec0))
        if math.hypot(xi0, eta0) < _TANGENT_TOL_DEG:
            break
    # Refit about the final tangent point so that the constant term is ~0 by construction.
    xi, eta = tan_project(ra, dec, ra0, dec0)
    coef = solver(np.column_stack([xi * w, eta * w]))
    return _Solution(ra0, dec0, coef[:, 0], coef[:, 1])


def fit_tan_sip(
    x_pix: ArrayLike,
    y_pix: ArrayLike,
    ra_deg: ArrayLike,
    dec_deg: ArrayLike,
    *,
    sip_order: int = 3,
    image_shape: tuple[int, int] | None = None,
    crpix_pix: tuple[float, float] | None = None,
    weights: ArrayLike | None = None,
    clip_sigma: float | None = 3.0,
    max_clip_iter: int = 5,
    inverse_order: int | None = None,
) -> WcsFitResult:
    """Fit a TAN-SIP WCS to matched pixel and sky positions.

    Parameters
    ----------
    x_pix, y_pix : array_like, shape (n,)
        0-based pixel positions (pix).
    ra_deg, dec_deg : array_like, shape (n,)
        Sky positions of the same objects (deg, ICRS).
    sip_order : int
        Total degree of the pixel-to-sky polynomial, 1..5 (1: plain TAN).
    image_shape : (ny, nx), optional
        Image size (pix). Sets the default CRPIX (the image centre) and the grid
        on which the inverse polynomial is fitted; without it the bounding box of
        the points is used.
    crpix_pix : (x, y), optional
        0-based pixel of the tangent point; default the image centre
        ``((nx - 1) / 2, (ny - 1) / 2)``.
    weights : array_like, shape (n,), optional
        Relative weights, ``1 / sigma`` of a position per axis (any unit);
        default equal weights.
    clip_sigma : float or None
        Reject points whose weighted residual distance ``chi = d * weight``
        exceeds ``clip_sigma`` times the robust sigma ``sqrt(median(chi**2) /
        (2 ln 2))`` (the median of a 2-D Gaussian's squared distance is
        ``2 sigma**2 ln 2``); None disables clipping.
    max_clip_iter : int
        Most fit-and-clip rounds.
    inverse_order : int, optional
        Order of ``AP``/``BP``; default ``sip_order + 1``.

    Returns
    -------
    WcsFitResult

    Raises
    ------
    AstrometryError
        ``stage="astrometry"`` when fewer points than polynomial terms (plus one)
        remain, or when the positions are degenerate.
    ValueError
        On a bad order or mismatched array lengths.
    """
    if not 1 <= int(sip_order) <= MAX_SIP_ORDER:
        raise ValueError(f"sip_order must be within 1..{MAX_SIP_ORDER}, got {sip_order}")
    x = np.asarray(x_pix, np.float64).ravel()
    y = np.asarray(y_pix, np.float64).ravel()
    ra = np.asarray(ra_deg, np.float64).ravel()
    dec = np.asarray(dec_deg, np.float64).ravel()
    if not x.size == y.size == ra.size == dec.size:
        raise ValueError(f"x, y, ra, dec must have one length, got {x.size}, {y.size}, {ra.size}, {dec.size}")
    w = np.ones(x.size) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.size != x.size:
        raise ValueError(f"weights has {w.size} values for {x.size} points")
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(ra) & np.isfinite(dec) & np.isfinite(w) & (w > 0)

    order = int(sip_order)
    terms = _terms(order)
    n_terms = len(terms)
    if finite.sum() < n_terms + 1:
        raise AstrometryError(
            f"{int(finite.sum())} matched stars cannot constrain a SIP order {order} WCS "
            f"({n_terms} coefficients per axis): lower the SIP order or match more stars",
            stage=STAGE, n_points=int(finite.sum()), sip_order=order, n_terms=n_terms,
        )
    if image_shape is not None:
        ny, nx = (int(s) for s in image_shape)
        box = (0.0, nx - 1.0, 0.0, ny - 1.0)
    else:
        box = (float(np.min(x[finite])), float(np.max(x[finite])), float(np.min(y[finite])), float(np.max(y[finite])))
    if crpix_pix is None:
        crpix = (0.5 * (box[0] + box[1]), 0.5 * (box[2] + box[3]))
    else:
        crpix = (float(crpix_pix[0]), float(crpix_pix[1]))
    # Normalising u, v to about +-1 keeps the design matrix well conditioned up to order 5.
    norm = max(0.5 * (box[1] - box[0]), 0.5 * (box[3] - box[2]), 1.0)
    un, vn = (x - crpix[0]) / norm, (y - crpix[1]) / norm

    used = finite.copy()
    ra0, dec0 = _mean_direction(ra[used], dec[used])
    design_all = _design(np.where(finite, un, 0.0), np.where(finite, vn, 0.0), terms)
    n_iter = 0
    while True:
        n_iter += 1
        sol = _solve(design_all[used], ra[used], dec[used], w[used], ra0, dec0)
        ra0, dec0 = sol.ra0, sol.dec0
        # Residuals of every finite point in the plane of the fitted tangent point.
        xi, eta = tan_project(ra, dec, ra0, dec0)
        rxi = (xi - design_all @ sol.cxi) * _MAS_PER_DEG
        reta = (eta - design_all @ sol.ceta) * _MAS_PER_DEG
        # Normalised distances: with weights (1/sigma) a faint star is judged by its own error.
        chi2 = np.where(finite, (rxi**2 + reta**2) * w**2, np.inf)
        if clip_sigma is None or n_iter >= max_clip_iter:
            break
        sigma = math.sqrt(float(np.median(chi2[used])) / (2.0 * math.log(2.0)))
        keep = finite & (chi2 <= (clip_sigma * sigma) ** 2) if sigma > 0 else used
        if keep.sum() < n_terms + 1 or np.array_equal(keep, used):
            break
        used = keep

    wcs, inv_err = _build_wcs(sol, terms, norm, crpix, order, box, inverse_order, image_shape)
    # Report residuals through the WCS itself (exact spherical offsets).
    fra, fdec = wcs.all_pix2world(x, y, 0)
    dra, ddec = sky_offsets_mas(ra, dec, fra, fdec)
    rms = float(np.sqrt(np.mean(dra[used] ** 2 + ddec[used] ** 2))) if used.any() else float("nan")
    return WcsFitResult(wcs=wcs, used=used, dra_mas=dra, ddec_mas=ddec, rms_mas=rms, sip_order=order,
                        inverse_max_error_pix=inv_err, n_iter=n_iter)


def _build_wcs(
    sol: _Solution, terms: list[tuple[int, int]], norm: float, crpix: tuple[float, float], order: int,
    box: tuple[float, float, float, float], inverse_order: int | None, image_shape: tuple[int, int] | None,
) -> tuple[WCS, float]:
    """Turn polynomial coefficients into an astropy TAN-SIP WCS (steps 3 and 5)."""
    # Back from the normalised design: coefficient of u**p v**q is c / norm**(p+q).
    scale = np.array([norm ** -(p + q) for p, q in terms])
    cxi, ceta = sol.cxi * scale, sol.ceta * scale
    index = {t: k for k, t in enumerate(terms)}
    cd = np.array([[cxi[index[(1, 0)]], cxi[index[(0, 1)]]], [ceta[index[(1, 0)]], ceta[index[(0, 1)]]]])
    det = float(np.linalg.det(cd))
    if not math.isfinite(det) or det == 0.0:
        raise AstrometryError("the fitted CD matrix is singular: the matched stars are degenerate (on a line?)",
                              stage=STAGE, cd_det=det)
    w = WCS(naxis=2)
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    w.wcs.crval = [sol.ra0 % 360.0, sol.dec0]
    w.wcs.cd = cd
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    if image_shape is not None:
        w.pixel_shape = (int(image_shape[1]), int(image_shape[0]))
    if order == 1:
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.set()
        return w, 0.0
    cd_inv = np.linalg.inv(cd)
    a = np.zeros((order + 1, order + 1))
    b = np.zeros_like(a)
    for (p, q), k in index.items():
        if p + q >= 2:
            a[p, q], b[p, q] = cd_inv @ np.array([cxi[k], ceta[k]])
    inv_order = order + 1 if inverse_order is None else int(inverse_order)
    ap, bp, inv_err = _fit_inverse(a, b, inv_order, crpix, box)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    w.wcs.set()
    return w, inv_err


def _fit_inverse(
    a: NDArray[np.float64], b: NDArray[np.float64], inv_order: int, crpix: tuple[float, float],
    box: tuple[float, float, float, float], n_grid: int = 50,
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Least-squares AP/BP (terms 1..inv_order) on a grid over the box plus a 2% margin."""
    mx, my = 0.02 * (box[1] - box[0]) + 1.0, 0.02 * (box[3] - box[2]) + 1.0
    gx, gy = np.meshgrid(np.linspace(box[0] - mx, box[1] + mx, n_grid), np.linspace(box[2] - my, box[3] + my, n_grid))
    u, v = gx.ravel() - crpix[0], gy.ravel() - crpix[1]
    fwd = _terms(a.shape[0] - 1, min_total=2)
    fu = u + sum(a[p, q] * u**p * v**q for p, q in fwd)
    fv = v + sum(b[p, q] * u**p * v**q for p, q in fwd)
    norm = max(float(np.max(np.abs(fu))), float(np.max(np.abs(fv))), 1.0)
    inv_terms = _terms(inv_order, min_total=1)
    design = _design(fu / norm, fv / norm, inv_terms)
    coef = _lstsq(design, np.column_stack([u - fu, v - fv]))
    ap = np.zeros((inv_order + 1, inv_order + 1))
    bp = np.zeros_like(ap)
    for k, (p, q) in enumerate(inv_terms):
        ap[p, q] = coef[k, 0] / norm ** (p + q)
        bp[p, q] = coef[k, 1] / norm ** (p + q)
    resid = design @ coef - np.column_stack([u - fu, v - fv])
    return ap, bp, float(np.max(np.hypot(resid[:, 0], resid[:, 1])))


# ---------------------------------------------------------------------- TPV
def _tpv_index(order: int) -> list[tuple[int, int, int]]:
    """``(k, i, j)``: TPV term ``k`` is ``x**i y**j`` (radial terms, k = 3, 11, 23, 39, skipped)."""
    out, k = [], 0
    for total in range(order + 1):
        for i in range(total, -1, -1):
            out.append((k, i, total - i))
            k += 1
        if total % 2 == 1:
            k += 1  # the r**total term follows the odd orders
    return out


def tpv_header(wcs: WCS, *, image_shape: tuple[int, int] | None = None) -> fits.Header:
    """TPV form (``RA---TPV``, ``PV1_k``/``PV2_k``) of a TAN or TAN-SIP WCS, for SCAMP/SWarp.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial TAN or TAN-SIP WCS with a CD (or PC/CDELT) matrix; SIP order <= 7.
    image_shape : (ny, nx), optional
        Image size (pix) over which the conversion is fitted; default
        ``wcs.pixel_shape``, else +-2048 pix about CRPIX. (The conversion is
        exact for polynomials, so the region only sets the conditioning.)

    Returns
    -------
    astropy.io.fits.Header
        ``CTYPEi``, ``CRPIXi``, ``CRVALi``, ``CDi_j``, ``CUNITi``, ``RADESYS``
        and ``PV1_0..`` / ``PV2_0..`` up to the SIP order (radial terms omitted).
        TPV's polynomial acts on ``(x, y) = CD (u, v)`` (deg) with ``xi = sum
        PV1_k T_k(x, y)`` and ``eta = sum PV2_k T_k(y, x)`` (note the swap).
    """
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.wcs.get_pc() * wcs.wcs.cdelt[:, None]
    crpix = np.asarray(wcs.wcs.crpix, float)
    sip = wcs.sip
    order = 1 if sip is None else max(sip.a_order, sip.b_order)
    if order > 7:
        raise ValueError(f"TPV holds polynomials up to order 7; this SIP has order {order}")
    if image_shape is not None:
        ny, nx = image_shape
    elif wcs.pixel_shape is not None:
        nx, ny = wcs.pixel_shape
    else:
        nx = ny = None
    if nx and ny:
        lo_u, hi_u, lo_v, hi_v = -crpix[0], nx + 1 - crpix[0], -crpix[1], ny + 1 - crpix[1]
    else:
        lo_u, hi_u, lo_v, hi_v = -2048.0, 2048.0, -2048.0, 2048.0
    n_grid = max(2 * order + 2, 12)
    gu, gv = np.meshgrid(np.linspace(lo_u, hi_u, n_grid), np.linspace(lo_v, hi_v, n_grid))
    u, v = gu.ravel(), gv.ravel()
    fu, fv = u.copy(), v.copy()
    if sip is not None:
        for p in range(sip.a.shape[0]):
            for q in range(sip.a.shape[1]):
                fu += sip.a[p, q] * u**p * v**q
        for p in range(sip.b.shape[0]):
            for q in range(sip.b.shape[1]):
                fv += sip.b[p, q] * u**p * v**q
    x, y = cd @ np.vstack([u, v])
    xi, eta = cd @ np.vstack([fu, fv])
    norm = float(max(np.max(np.abs(x)), np.max(np.abs(y))))
    index = _tpv_index(order)
    hdr = fits.Header()
    hdr["WCSAXES"] = 2
    hdr["CTYPE1"] = "RA---TPV"
    hdr["CTYPE2"] = "DEC--TPV"
    hdr["CRPIX1"], hdr["CRPIX2"] = float(crpix[0]), float(crpix[1])
    hdr["CRVAL1"], hdr["CRVAL2"] = float(wcs.wcs.crval[0]), float(wcs.wcs.crval[1])
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    for i in range(2):
        for j in range(2):
            hdr[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    hdr["RADESYS"] = wcs.wcs.radesys or "ICRS"
    for axis, (first, second, target) in ((1, (x, y, xi)), (2, (y, x, eta))):
        design = np.stack([(first / norm) ** i * (second / norm) ** j for _, i, j in index], axis=1)
        coef = _lstsq(design, target / norm)
        for (k, i, j), c in zip(index, coef):
            hdr[f"PV{axis}_{k}"] = float(c * norm ** (1 - i - j))
    return hdr


def tpv_wcs(wcs: WCS, *, image_shape: tuple[int, int] | None = None) -> WCS:
    """The TPV form of ``wcs`` as an astropy WCS (see :func:`tpv_header`)."""
    out = WCS(tpv_header(wcs, image_shape=image_shape))
    out.pixel_shape = wcs.pixel_shape
    return out
