"""PSF models: an empirical pixel basis and an elliptical Moffat, both varying over the field.

Used by :mod:`calibration.psf` (which selects stars and fits these models) and by
whoever evaluates a PSF (measurement, outputs). Positions are local 0-based
pixels; images are indexed ``[y, x]``.

``image_at(x, y, shape=(k, k))`` returns the PSF at a source's position as a
``k x k`` image (sum 1) whose central pixel ``[k//2, k//2]`` is the pixel
nearest to ``(x, y)`` (``floor(x + 0.5)``) and whose first moment is at the
sub-pixel position ``(x, y)``: LSST's ``Psf.computeImage`` convention. Sub-pixel
shifts are Fourier phase shifts (sinc interpolation) of zero-padded images: for
a pixel-convolved PSF with FWHM >= 3 pix the interpolation error is < 1e-4 of
the peak, < 2e-3 at FWHM 2.1 pix. They are applied by :func:`sinc_shift` as two
small matrix products per image (the phase ramp's exact equivalent, the
periodic sinc kernel of the padded size) rather than by FFTs: the same numbers
(to 1e-14), several times faster on 25 x 25 stamps.

FWHM and ellipticity are those of the intrinsic (pixel-deconvolved) PSF: for
the Moffat model its parameters; for the pixel model those of the elliptical
Moffat, integrated over pixels, that best fits the model image, with
``q = 1/beta`` free in [1e-4, 0.9] (a Gaussian as ``q -> 0``), so that a
Gaussian or a Moffat PSF gives its exact FWHM (``2.3548 sigma`` for a Gaussian,
to 3e-5). The FWHM is the geometric mean of the major- and minor-axis FWHMs;
``e1 = (Ixx - Iyy) / (Ixx + Iyy)``, ``e2 = 2 Ixy / (Ixx + Iyy)`` (distortion
convention, the shape matrix ``M = [[1 + e1, e2], [e2, 1 - e1]] / sqrt(1 - e^2)``).

Spatial polynomials are monomials ``u**i v**j`` of total degree ``<= order``
(constant first) in ``u = (x - (nx - 1)/2) / (nx/2)``, ``v`` likewise, as in
:mod:`calibration.photocal`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import ArrayLike, NDArray

from .errors import PsfError

__all__ = [
    "FWHM_PER_SIGMA",
    "MoffatPsfModel",
    "PixelPsfModel",
    "PsfModel",
    "SpatialFrame",
    "fft_shift",
    "fit_amplitudes",
    "fit_moffat_profiles",
    "gather_stamps",
    "moment_fwhm",
    "poly_terms",
    "psf_model_from_hdulist",
    "sinc_shift",
]

_STAGE = "psf"
#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Zero padding (pix) around stamps before a Fourier shift (against wrap-around).
_FFT_PAD = 4
#: Bounds of the profile fit: q = 1/beta (1e-4: a Gaussian to 3e-5 in FWHM), |e|, FWHM (pix).
_Q_MIN, _Q_MAX = 1e-4, 0.9
_E_MAX = 0.9
_FWHM_MIN = 0.3
#: Bound on floats held per chunk of positions in image_at (memory and cache).
_CHUNK_ELEMENTS = 4_000_000


# ---------------------------------------------------------------- spatial polynomials


def poly_terms(order: int) -> list[tuple[int, int]]:
    """Exponents ``(i, j)`` of ``x**i y**j`` with ``i + j <= order``, constant first."""
    return [(i, d - i) for d in range(order + 1) for i in range(d, -1, -1)]


@dataclasses.dataclass(frozen=True)
class SpatialFrame:
    """Maps local pixel positions to [-1, 1] over the image (as photocal does)."""

    nx: int
    ny: int

    def normalise(self, x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
        xc, yc = (self.nx - 1) / 2.0, (self.ny - 1) / 2.0
        return (x - xc) / max(self.nx / 2.0, 0.5), (y - yc) / max(self.ny / 2.0, 0.5)

    def design(self, x: NDArray, y: NDArray, order: int) -> NDArray[np.float64]:
        """``(n, n_terms)`` matrix of the monomials at the positions."""
        u, v = self.normalise(np.asarray(x, float), np.asarray(y, float))
        return np.stack([u**i * v**j for i, j in poly_terms(order)], axis=-1)

    def grid(self, n: int = 5) -> tuple[NDArray, NDArray]:
        """Centres of an ``n x n`` grid of cells covering the image."""
        gx = (np.arange(n) + 0.5) * self.nx / n - 0.5
        gy = (np.arange(n) + 0.5) * self.ny / n - 0.5
        xx, yy = np.meshgrid(gx, gy)
        return xx.ravel(), yy.ravel()


# -------------------------------------------------------------------- stamp helpers


def _positions(x: ArrayLike, y: ArrayLike) -> tuple[NDArray, NDArray, bool]:
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    scalar = xa.ndim == 0 and ya.ndim == 0
    xa, ya = np.broadcast_arrays(np.atleast_1d(xa), np.atleast_1d(ya))
    return xa.ravel(), ya.ravel(), scalar


def _stamp_size(shape: Any) -> int:
    try:
        ky, kx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (k, k), got {shape!r}") from None
    if ky != kx or kx < 1:
        raise ValueError(f"shape must be square and positive, got {shape!r}")
    return kx


def gather_stamps(plane: NDArray, ix: NDArray, iy: NDArray, half: int) -> NDArray:
    """``(n, 2h+1, 2h+1)`` stamps of ``plane`` centred on pixels ``(ix, iy)`` (all inside)."""
    k = 2 * half + 1
    ix, iy = np.asarray(ix), np.asarray(iy)
    if ix.size == 0:  # also on a plane smaller than a stamp, which has no windows to view
        return np.empty((0, k, k), dtype=plane.dtype)
    # Indexing a view of all windows copies whole stamps: ~4x faster than an (n, k, k) index array.
    windows = np.lib.stride_tricks.sliding_window_view(plane, (k, k))
    return windows[iy - half, ix - half]


def _pad_size(k: int, out_size: int) -> int:
    """Odd side of the zero-padded square on which stamps are shifted (its period)."""
    size = max(k, out_size) + 2 * _FFT_PAD
    return size + 1 - size % 2


def fft_shift(images: NDArray, sx: NDArray, sy: NDArray, out_size: int) -> NDArray[np.float64]:
    """Move the content of ``(n, k, k)`` images by ``(+sx, +sy)`` pix; crop ``out_size``.

    Band-limited (sinc) interpolation by a Fourier phase ramp on images
    zero-padded to an odd size (no Nyquist ambiguity, no wrap-around of the
    content); centres of input and output are ``[k//2, k//2]`` and
    ``[out_size//2, out_size//2]``. The reference definition of the shift:
    :func:`sinc_shift` gives the same numbers faster.
    """
    n, k, _ = images.shape
    size = _pad_size(k, out_size)
    c = size // 2
    big = np.zeros((n, size, size))
    big[:, c - k // 2 : c - k // 2 + k, c - k // 2 : c - k // 2 + k] = images
    # The phase ramp is separable: two 1-d ramps instead of an (n, size, size) exponential.
    ramp_y = np.exp(-2j * np.pi * np.fft.fftfreq(size)[None, :] * np.asarray(sy, float)[:, None])
    ramp_x = np.exp(-2j * np.pi * np.fft.rfftfreq(size)[None, :] * np.asarray(sx, float)[:, None])
    spectrum = np.fft.rfft2(big)
    spectrum *= ramp_y[:, :, None]
    spectrum *= ramp_x[:, None, :]
    shifted = np.fft.irfft2(spectrum, s=(size, size))
    lo = c - out_size // 2
    return shifted[:, lo : lo + out_size, lo : lo + out_size]


def _periodic_sinc(shift: NDArray, first: int, count: int, period: int) -> NDArray[np.float64]:
    """Dirichlet kernel ``D(t) = sin(pi t) / (period sin(pi t / period))``, ``t = m - s``.

    ``(n, count)`` values for integer lags ``m = first .. first + count - 1``
    and each shift ``s``: the impulse response of a phase ramp on an odd
    ``period`` (the sum of its ``period`` Fourier modes; ``D(t + period) = D(t)``).
    """
    # t = l - r with r = s - round(s) in [-1/2, 1/2] (exact) and l = m - j an integer,
    # j = round(s) mod period. Sines of r and of whole multiples of pi/period keep full
    # relative precision as t -> 0, where sines of s lose it (s = 1 + 1e-12 would give
    # taps wrong by 1e-4), and the l-dependent factors are looked up in a small table
    # instead of evaluating (n, count) sines.
    with np.errstate(invalid="ignore"):  # a non-finite shift: NaN taps, through frac
        whole = np.round(shift)
        frac = shift - whole
        j = np.nan_to_num(np.mod(whole, period)).astype(np.int64)
    lags = np.arange(first - (period - 1), first + count)
    index = np.arange(count)[None, :] + (period - 1 - j)[:, None]  # lags[index] = m - j
    # Each l as its representative in [-(period-1)/2, (period-1)/2] (D is periodic), so that
    # sin(pi l / period) is exactly 0 only at l = 0 and not ~1e-16 at l = +-period.
    lags = lags - period * np.round(lags / period).astype(np.int64)
    angle = np.pi * lags / period
    sin_l, cos_l = np.sin(angle)[index], np.cos(angle)[index]
    # sin(pi (l - r)) = -(-1)^l sin(pi r): exactly 0 for a whole shift, so that it is the identity.
    numerator = np.where(lags % 2 == 0, -1.0, 1.0)[index] * np.sin(np.pi * frac)[:, None]
    a_r = np.pi * frac / period
    denominator = period * (sin_l * np.cos(a_r)[:, None] - cos_l * np.sin(a_r)[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        taps = numerator / denominator
    return np.where(denominator == 0.0, 1.0, taps)  # t = 0 (mod period) exactly


def _shift_matrices(shift: NDArray, k: int, out_size: int, period: int) -> NDArray[np.float64]:
    """``(n, out_size, k)`` matrices ``[i, a] = D(i - a + k//2 - out_size//2 - s)`` (Toeplitz).

    A strided view on one row of taps per shift: no ``(n, out_size, k)`` sine evaluations.
    """
    first = k // 2 - out_size // 2 - (k - 1)
    taps = _periodic_sinc(shift, first, out_size + k - 1, period)
    # windows[i, b] = taps[i + b]; reversing b gives taps[i + k - 1 - a], i.e. lag i - a + first + k - 1.
    return np.lib.stride_tricks.sliding_window_view(taps, k, axis=1)[:, :, ::-1]


def sinc_shift(images: NDArray, sx: ArrayLike, sy: ArrayLike, out_size: int) -> NDArray[np.float64]:
    """:func:`fft_shift` as two matrix products per image: ``Ky @ image @ Kx^T``.

    The phase ramp on the zero-padded square is a circular convolution with the
    periodic sinc of that period, so the same shift (to rounding, ~1e-15 of
    the peak) is a product with ``(out_size, k)`` Toeplitz matrices of its
    taps; for stamps of ~25 pix this is several times faster than the FFTs of
    the padded (often prime-sized) square, and needs no padded copy.
    """
    images = np.asarray(images, dtype=float)
    n, k, _ = images.shape
    period = _pad_size(k, out_size)
    ky = _shift_matrices(np.asarray(sy, float).reshape(n), k, out_size, period)
    kx = _shift_matrices(np.asarray(sx, float).reshape(n), k, out_size, period)
    return ky @ (images @ kx.transpose(0, 2, 1))


def _normalised(images: NDArray) -> NDArray:
    total = images.sum(axis=(1, 2))
    good = np.isfinite(total) & (total > 0)
    out = images / np.where(good, total, 1.0)[:, None, None]
    out[~good] = np.nan
    return out


# -------------------------------------------------------------- Moffat profile fitter


def _quadrature(n: int) -> tuple[NDArray, NDArray, NDArray]:
    """Gauss-Legendre nodes ``(dx, dy)`` in [-0.5, 0.5]^2 and weights summing to 1."""
    t, w = np.polynomial.legendre.leggauss(n)
    t, w = t / 2.0, w / 2.0
    return np.repeat(t, n), np.tile(t, n), np.outer(w, w).ravel()


def _n_quadrature(fwhm_pix: float) -> int:
    """Points per axis for pixel integration: relative error < 1e-4 for FWHM >= 1.5 pix at 4."""
    return 3 if fwhm_pix >= 3.0 else 4 if fwhm_pix >= 1.5 else 6


def _node_sum(values: NDArray, weights: NDArray) -> NDArray[np.float64]:
    """Quadrature sum over the last axis of ``(n, pixels, nodes)`` values.

    einsum's own loop rather than a BLAS matrix-vector product: as fast on one
    thread, and it wakes no BLAS threads (they spin after each call and, on a
    busy machine, take CPU from the caller at these sizes).
    """
    return np.einsum("npq,q->np", values, weights)


def _render_moffat(
    theta: NDArray, k: int, n_quad: int, *, derivatives: bool = False
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """Pixel-integrated elliptical Moffat of peak 1 (before integration), ``(n, k*k)``.

    ``theta`` columns: ``x0, y0`` (pix from the central pixel ``[k//2, k//2]``),
    ``fwhm`` (pix), ``e1, e2``, ``q = 1/beta``. The profile is
    ``f = (1 + c r^2)^(-1/q)``, ``c = 4 (2^q - 1) / fwhm^2``, ``r^2 = d^T M^-1 d``
    with ``M = [[1 + e1, e2], [e2, 1 - e1]] / sqrt(1 - e^2)`` (unit determinant);
    it tends to ``exp(-4 ln2 r^2 / fwhm^2)``, a Gaussian, as ``q -> 0``. With
    ``derivatives`` the analytic ``d/dtheta`` are returned as ``(n, k*k, 6)``.
    """
    n = theta.shape[0]
    h = k // 2
    gv, gu = (g.ravel().astype(float) for g in np.mgrid[-h : h + 1, -h : h + 1])
    qx, qy, qw = _quadrature(n_quad)
    x0, y0, fwhm, e1, e2, q = (theta[:, i, None, None] for i in range(6))
    dx = gu[None, :, None] + qx[None, None, :] - x0
    dy = gv[None, :, None] + qy[None, None, :] - y0
    inv_det = 1.0 / np.sqrt(1.0 - e1 * e1 - e2 * e2)
    c = 4.0 * np.expm1(q * math.log(2.0)) / (fwhm * fwhm)
    # c r^2 as one quadratic form with per-stamp coefficients: few passes over (n, pixels, nodes).
    cr2 = (c * inv_det * (1.0 - e1)) * dx * dx + (-2.0 * c * inv_det * e2) * dx * dy
    cr2 += (c * inv_det * (1.0 + e1)) * dy * dy
    g = np.log1p(cr2)
    prof = np.exp(-g / q)
    value = _node_sum(prof, qw).reshape(n, k * k)
    if not derivatives:
        return value, None
    return value, _moffat_derivatives(theta, prof, g, cr2, dx, dy, qw)


def _moffat_derivatives(
    theta: NDArray, prof: NDArray, g: NDArray, cr2: NDArray, dx: NDArray, dy: NDArray, qw: NDArray
) -> NDArray[np.float64]:
    """``d/dtheta`` of :func:`_render_moffat`'s pixel values, ``(n, pixels, 6)``.

    ``prof, g = ln(1 + c r^2), cr2 = c r^2, dx, dy`` are ``(n, pixels, nodes)``.
    All derivatives but ``q``'s are ``D = d prof / d r^2`` times a quadratic form
    in ``(dx, dy)`` whose coefficients are per stamp, so the node sums of ``D``
    times ``dx, dy, dx^2, dx dy, dy^2`` are taken first and combined after:
    six products over the nodes instead of some thirty.
    """
    fwhm, e1, e2, q = (theta[:, i, None] for i in range(2, 6))
    c = 4.0 * np.expm1(q * math.log(2.0)) / (fwhm * fwhm)
    inv_det = 1.0 / np.sqrt(1.0 - e1 * e1 - e2 * e2)
    d_r2 = prof * (-c[..., None] / (q[..., None] * (1.0 + cr2)))
    d_dx, d_dy = d_r2 * dx, d_r2 * dy
    sx, sy = _node_sum(d_dx, qw), _node_sum(d_dy, qw)
    sxx, sxy, syy = _node_sum(d_dx * dx, qw), _node_sum(d_dx * dy, qw), _node_sum(d_dy * dy, qw)
    s_r2 = inv_det * ((1.0 - e1) * sxx - 2.0 * e2 * sxy + (1.0 + e1) * syy)  # node sum of D r^2
    dc_dq_over_c = math.log(2.0) * np.exp2(q) / np.expm1(q * math.log(2.0))
    return np.stack(
        [
            -2.0 * inv_det * ((1.0 - e1) * sx - e2 * sy),  # x0
            -2.0 * inv_det * ((1.0 + e1) * sy - e2 * sx),  # y0
            -2.0 * s_r2 / fwhm,  # fwhm, through c r^2 with c ~ fwhm^-2
            inv_det * (syy - sxx) + e1 * inv_det**2 * s_r2,  # e1
            -2.0 * inv_det * sxy + e2 * inv_det**2 * s_r2,  # e2
            _node_sum(prof * g, qw) / (q * q) + dc_dq_over_c * s_r2,  # q: the exponent, then c
        ],
        axis=-1,
    )


def _clamp_theta(theta: NDArray, k: int) -> NDArray:
    out = theta.copy()
    out[:, 0:2] = np.clip(out[:, 0:2], -k / 4.0, k / 4.0)
    out[:, 2] = np.clip(out[:, 2], _FWHM_MIN, float(k))
    e = np.hypot(out[:, 3], out[:, 4])
    scale = np.where(e > _E_MAX, _E_MAX / np.maximum(e, 1e-300), 1.0)
    out[:, 3] *= scale
    out[:, 4] *= scale
    out[:, 5] = np.clip(out[:, 5], _Q_MIN, _Q_MAX)
    return out


def fit_amplitudes(
    prof: NDArray, data: NDArray, w: NDArray, background: bool
) -> tuple[NDArray, NDArray, NDArray]:
    """Weighted least-squares amplitude (and constant) per row of ``(n, p)`` arrays.

    Returns amplitude, background (0 without ``background``) and chi^2.
    """
    spp = (w * prof * prof).sum(1)
    spd = (w * prof * data).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if background:
            s1, sp, sd = w.sum(1), (w * prof).sum(1), (w * data).sum(1)
            det = spp * s1 - sp * sp
            amp = (spd * s1 - sp * sd) / det
            bkg = (spp * sd - sp * spd) / det
        else:
            amp = spd / spp
            bkg = np.zeros_like(amp)
    amp = np.where(np.isfinite(amp), amp, 0.0)
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    resid = data - amp[:, None] * prof - bkg[:, None]
    return amp, bkg, (w * resid * resid).sum(1)


def _moffat_chi2(par: NDArray, prof: NDArray, data: NDArray, w: NDArray) -> NDArray:
    """chi^2 of ``amplitude * prof + background`` (``par`` columns 0, 1) against ``data``."""
    model = par[:, 0, None] * prof + par[:, 1, None]
    return (w * (data - model) ** 2).sum(1)


def _lm_step(
    par: NDArray, prof: NDArray, dprof: NDArray, data: NDArray, w: NDArray, lam: NDArray, free: list[int]
) -> NDArray:
    """Levenberg-Marquardt step of the ``free`` parameters (columns of ``par``), damped by ``lam``."""
    jac = np.concatenate([prof[..., None], np.ones_like(prof)[..., None], par[:, 0, None, None] * dprof], axis=-1)
    jac = jac[..., free]
    resid = data - par[:, 0, None] * prof - par[:, 1, None]
    wj_t = (jac * w[:, :, None]).transpose(0, 2, 1)
    hess = wj_t @ jac  # batched matrix products: einsum's generic loop is several times slower
    grad = (wj_t @ resid[..., None])[..., 0]
    diag = np.maximum(np.einsum("nii->ni", hess), 1e-300)
    damped = hess + lam[:, None, None] * diag[:, :, None] * np.eye(len(free))
    try:
        return np.linalg.solve(damped, grad[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a degenerate stamp (all zero weight): least-norm steps
        return (np.linalg.pinv(damped) @ grad[..., None])[..., 0]


def fit_moffat_profiles(
    stamps: NDArray,
    weights: NDArray,
    *,
    fwhm_guess: NDArray,
    q_fixed: float | None = None,
    background: bool = False,
    max_iter: int = 50,
) -> dict[str, NDArray]:
    """Levenberg-Marquardt fit of the pixel-integrated elliptical Moffat, all stamps at once.

    Parameters
    ----------
    stamps, weights : ndarray, shape (n, k, k)
        Images centred on their central pixel, and per-pixel weights (1/variance).
    fwhm_guess : ndarray, shape (n,)
        Starting FWHM (pix).
    q_fixed : float, optional
        Fix ``q = 1/beta`` to this value instead of fitting it.
    background : bool
        Fit a constant background with the amplitude.
    max_iter : int
        Maximum number of Levenberg-Marquardt steps.

    Returns
    -------
    dict
        ``x0, y0`` (pix from the central pixel), ``fwhm`` (pix), ``e1, e2``,
        ``q``, ``amplitude`` (of the unit-peak profile), ``background``,
        ``chi2`` and ``ok`` (finite, positive amplitude).
    """
    n, k, _ = stamps.shape
    data = stamps.reshape(n, -1).astype(float)
    w = weights.reshape(n, -1).astype(float)
    n_quad = _n_quadrature(float(np.nanmin(fwhm_guess)) if n else 3.0)
    # Parameters: amplitude, background, then theta (x0, y0, fwhm, e1, e2, q).
    free = [0] + ([1] if background else []) + [2, 3, 4, 5, 6] + ([7] if q_fixed is None else [])
    theta = np.zeros((n, 6))
    theta[:, 2] = np.clip(np.where(np.isfinite(fwhm_guess), fwhm_guess, 3.0), 1.0, k / 2.0)
    theta[:, 5] = 0.3 if q_fixed is None else q_fixed
    theta = _clamp_theta(theta, k)
    # Profile and derivatives at the current parameters, kept until a step is accepted:
    # one rendering per iteration (the trial's), none repeated at unchanged parameters.
    prof, dprof = _render_moffat(theta, k, n_quad, derivatives=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        amp0 = (w * prof * data).sum(1) / (w * prof * prof).sum(1)
    params = np.zeros((n, 8))
    params[:, 0] = np.where(np.isfinite(amp0), amp0, 0.0)
    params[:, 2:] = theta
    chi2 = _moffat_chi2(params, prof, data, w)
    lam = np.full(n, 1e-3)
    active = np.ones(n, bool)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        par, d, ww = params[idx], data[idx], w[idx]
        delta = _lm_step(par, prof[idx], dprof[idx], d, ww, lam[idx], free)
        trial = par.copy()
        trial[:, free] += np.where(np.isfinite(delta), delta, 0.0)
        trial[:, 2:] = _clamp_theta(trial[:, 2:], k)
        t_prof, t_dprof = _render_moffat(trial[:, 2:], k, n_quad, derivatives=True)
        t_chi2 = _moffat_chi2(trial, t_prof, d, ww)
        better = t_chi2 < chi2[idx]
        gain = np.where(better, (chi2[idx] - t_chi2) / np.maximum(chi2[idx], 1e-300), 0.0)
        moved = idx[better]
        params[moved], chi2[moved] = trial[better], t_chi2[better]
        prof[moved], dprof[moved] = t_prof[better], t_dprof[better]
        lam[idx] = np.where(better, lam[idx] / 5.0, lam[idx] * 10.0)
        active[idx[(better & (gain < 1e-7)) | (lam[idx] > 1e8)]] = False
    ok = np.isfinite(params).all(1) & np.isfinite(chi2) & (params[:, 0] > 0)
    return {
        "x0": params[:, 2], "y0": params[:, 3], "fwhm": params[:, 4], "e1": params[:, 5],
        "e2": params[:, 6], "q": params[:, 7], "amplitude": params[:, 0], "background": params[:, 1],
        "chi2": chi2, "ok": ok,
    }


# ----------------------------------------------------------------------- PSF models


class PsfModel(abc.ABC):
    """A PSF that varies over the exposure (positions: local 0-based pixels).

    Attributes
    ----------
    image_shape : (ny, nx)
        Shape of the exposure the model was fitted on (normalises positions).
    spatial_order : int
        Total degree of the spatial polynomials.
    fit_bounds : (x_min, x_max, y_min, y_max) or None
        Box (local pix) holding the stars the model was fitted on. Positions
        are clamped into it before the polynomials are evaluated, so that the
        model never extrapolates (beyond it, the PSF is that at the nearest
        point of the box). None: no clamping.
    """

    kind: str = ""

    def __init__(
        self,
        *,
        image_shape: tuple[int, int],
        spatial_order: int,
        fit_bounds: tuple[float, float, float, float] | None = None,
    ) -> None:
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.spatial_order = int(spatial_order)
        self._frame = SpatialFrame(nx=self.image_shape[1], ny=self.image_shape[0])
        if fit_bounds is not None:
            fit_bounds = (float(fit_bounds[0]), float(fit_bounds[1]), float(fit_bounds[2]), float(fit_bounds[3]))
            if not (fit_bounds[0] <= fit_bounds[1] and fit_bounds[2] <= fit_bounds[3]):
                raise ValueError(f"fit_bounds must be (x_min, x_max, y_min, y_max), got {fit_bounds}")
        self.fit_bounds = fit_bounds

    def _design(self, x: NDArray, y: NDArray) -> NDArray[np.float64]:
        """Polynomial design matrix at positions clamped into ``fit_bounds``."""
        if self.fit_bounds is not None:
            x0, x1, y0, y1 = self.fit_bounds
            x, y = np.clip(x, x0, x1), np.clip(y, y0, y1)
        return self._frame.design(x, y, self.spatial_order)

    @abc.abstractmethod
    def image_at(self, x: ArrayLike, y: ArrayLike, shape: tuple[int, int] = (25, 25)) -> NDArray[np.float64]:
        """PSF images at positions ``(x, y)`` (local 0-based pix).

        Parameters
        ----------
        x, y : float or array_like of shape (n,)
            Positions (pix).
        shape : (k, k)
            Size of each image; square.

        Returns
        -------
        ndarray
            ``(k, k)`` for scalar positions, else ``(n, k, k)``, indexed
            ``[., y, x]``, each summing to 1; the central pixel ``[k//2, k//2]``
            is the pixel nearest to the position (``floor(x + 0.5)``) and the
            first moment is at the sub-pixel position. Non-finite positions
            give NaN images.
        """

    @abc.abstractmethod
    def _profile_at(self, x: NDArray, y: NDArray) -> dict[str, NDArray]:
        """Intrinsic ``fwhm`` (pix), ``e1``, ``e2`` at 1-d arrays of positions."""

    @abc.abstractmethod
    def to_hdulist(self) -> fits.HDUList:
        """Extension HDUs (no primary) describing the model, for writing with the calexp."""

    def fwhm_pix_at(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64] | float:
        """FWHM (pix) of the intrinsic (pixel-deconvolved) PSF at ``(x, y)``.

        The geometric mean of the major- and minor-axis FWHMs; exact for a
        Gaussian (``2.3548 sigma``) or a Moffat. Scalar in, scalar out.
        """
        xs, ys, scalar = _positions(x, y)
        fwhm = self._profile_at(xs, ys)["fwhm"]
        return float(fwhm[0]) if scalar else fwhm

    def shape_at(self, x: ArrayLike, y: ArrayLike) -> tuple[Any, Any]:
        """Ellipticity ``(e1, e2)`` of the intrinsic PSF at ``(x, y)`` (distortion convention).

        ``e1 = (Ixx - Iyy) / (Ixx + Iyy)``, ``e2 = 2 Ixy / (Ixx + Iyy)``;
        ``|e| = sqrt(e1**2 + e2**2)``. Scalars in, scalars out.
        """
        xs, ys, scalar = _positions(x, y)
        prof = self._profile_at(xs, ys)
        if scalar:
            return float(prof["e1"][0]), float(prof["e2"][0])
        return prof["e1"], prof["e2"]

    def field_summary(self, n_grid: int = 5) -> dict[str, float]:
        """Median FWHM (pix), e1, e2 and ``|e|`` over an ``n_grid x n_grid`` grid of the image.

        Kept once computed (25 profile fits): the fit reports it and the FITS
        header repeats it, and a fitted model does not change.
        """
        cache = self.__dict__.setdefault("_field_summary_cache", {})
        if n_grid not in cache:
            cache[n_grid] = self._field_summary(n_grid)
        return dict(cache[n_grid])

    def _field_summary(self, n_grid: int) -> dict[str, float]:
        gx, gy = self._frame.grid(n_grid)
        prof = self._profile_at(gx, gy)
        e = np.hypot(prof["e1"], prof["e2"])
        return {
            "fwhm_pix": float(np.nanmedian(prof["fwhm"])),
            "e1": float(np.nanmedian(prof["e1"])),
            "e2": float(np.nanmedian(prof["e2"])),
            "ellipticity": float(np.nanmedian(e)),
        }

    def _header(self) -> fits.Header:
        header = fits.Header()
        header["PSFMODEL"] = (self.kind, "PSF model kind (calibration.psf)")
        header["SPORDER"] = (self.spatial_order, "total degree of the spatial polynomials")
        header["IMNY"] = (self.image_shape[0], "rows of the exposure (normalises y)")
        header["IMNX"] = (self.image_shape[1], "columns of the exposure (normalises x)")
        header["POLYNORM"] = ("u=(x-(nx-1)/2)/(nx/2)", "local 0-based pix; v likewise in y")
        header["TERMS"] = (" ".join(f"{i}{j}" for i, j in poly_terms(self.spatial_order)), "ij: u^i v^j")
        if self.fit_bounds is not None:
            for key, value in zip(("FITXMIN", "FITXMAX", "FITYMIN", "FITYMAX"), self.fit_bounds):
                header[key] = (value, "box of the fitted stars (local pix)")
        summary = self.field_summary()
        header["FWHMPIX"] = (summary["fwhm_pix"], "median intrinsic FWHM over the field (pix)")
        header["ELLIP"] = (summary["ellipticity"], "median |e| over the field")
        return header


class PixelPsfModel(PsfModel):
    """Empirical pixel PSF: each pixel a polynomial of position (PSFEx-like).

    Parameters
    ----------
    coefficients : ndarray, shape (n_terms, k, k)
        Coefficient images of the monomials ``u**i v**j`` in the order of
        ``TERMS`` (constant first); ``u, v`` are positions normalised to
        [-1, 1] over the image. The model at a position is their sum weighted
        by the monomials, the pixel-convolved PSF centred on ``[k//2, k//2]``.
    image_shape : (ny, nx)
    spatial_order : int
    fit_bounds : (x_min, x_max, y_min, y_max), optional
        See :class:`PsfModel`.
    """

    kind = "pixel"

    def __init__(
        self,
        coefficients: NDArray,
        *,
        image_shape: tuple[int, int],
        spatial_order: int,
        fit_bounds: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__(image_shape=image_shape, spatial_order=spatial_order, fit_bounds=fit_bounds)
        coefficients = np.asarray(coefficients, dtype=float)
        n_terms = len(poly_terms(spatial_order))
        shape = coefficients.shape
        if len(shape) != 3 or shape[0] != n_terms or shape[1] != shape[2] or shape[1] % 2 == 0:
            raise ValueError(
                f"coefficients must be ({n_terms}, k, k) with k odd for spatial_order={spatial_order}, "
                f"got {coefficients.shape}"
            )
        self.coefficients = coefficients
        self.stamp_size = coefficients.shape[1]

    def raw_image_at(self, x: NDArray, y: NDArray) -> NDArray[np.float64]:
        """Model images at 1-d arrays of positions, unshifted (centred on the central pixel), sum 1."""
        k = self.stamp_size
        flat = np.einsum("nt,tp->np", self._design(x, y), self.coefficients.reshape(len(self.coefficients), k * k))
        return _normalised(flat.reshape(-1, k, k))

    def image_at(self, x: ArrayLike, y: ArrayLike, shape: tuple[int, int] = (25, 25)) -> NDArray[np.float64]:
        k = _stamp_size(shape)
        xs, ys, scalar = _positions(x, y)
        out = np.empty((xs.size, k, k))
        good = np.isfinite(xs) & np.isfinite(ys)
        out[~good] = np.nan
        todo = np.flatnonzero(good)
        per = max(1, _CHUNK_ELEMENTS // _pad_size(self.stamp_size, k) ** 2)
        for start in range(0, todo.size, per):
            sel = todo[start : start + per]
            out[sel] = self._centred_images(xs[sel], ys[sel], k)
        return out[0] if scalar else out

    def _centred_images(self, x: NDArray, y: NDArray, k: int) -> NDArray[np.float64]:
        """``(n, k, k)`` images, sum 1, first moment at the sub-pixel offset of finite ``(x, y)``.

        The raw model's own centroid is shifted out, so the image is centred
        where asked. The model is linear in the coefficient images, so that
        centroid comes from their sums and first moments (no pass over the
        images), and the raw images are shifted unnormalised: the shift is
        linear and its result is normalised once.
        """
        n_terms, ks, _ = self.coefficients.shape
        flat = self.coefficients.reshape(n_terms, ks * ks)
        u = np.arange(ks) - ks // 2
        moments = np.stack([flat.sum(axis=1), self.coefficients.sum(axis=1) @ u,
                            self.coefficients.sum(axis=2) @ u], axis=1)  # (terms, 3): sum, x, y moments
        design = self._design(x, y)
        # einsum rather than BLAS: products this thin gain nothing from BLAS threads, which spin
        # after the call and, on a busy machine, took as much CPU as the work itself.
        raw = np.einsum("nt,tp->np", design, flat).reshape(-1, ks, ks)
        total, first_x, first_y = np.einsum("nt,tm->mn", design, moments)
        with np.errstate(divide="ignore", invalid="ignore"):
            dx = x - np.floor(x + 0.5) - first_x / total
            dy = y - np.floor(y + 0.5) - first_y / total
        return _normalised(sinc_shift(raw, dx, dy, k))

    def _profile_at(self, x: NDArray, y: NDArray) -> dict[str, NDArray]:
        n = x.size
        result = {name: np.full(n, np.nan) for name in ("fwhm", "e1", "e2")}
        good = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        if good.size == 0:
            return result
        raw = self.raw_image_at(x[good], y[good])
        guess = moment_fwhm(raw)
        # Fit the core and near wings only: 2.5 FWHM, at least 4 pix, at most the model.
        half = int(min(self.stamp_size // 2, max(4, math.ceil(2.5 * float(np.nanmax(guess))))))
        c = self.stamp_size // 2
        core = raw[:, c - half : c + half + 1, c - half : c + half + 1]
        fit = fit_moffat_profiles(core, np.ones_like(core), fwhm_guess=guess)
        for name in result:
            result[name][good] = np.where(fit["ok"], fit[name], np.nan)
        return result

    def to_hdulist(self) -> fits.HDUList:
        hdu = fits.ImageHDU(self.coefficients.astype(np.float64), header=self._header(), name="PSF_PIXEL")
        hdu.header["STAMPPIX"] = (self.stamp_size, "side of the model images (pix)")
        return fits.HDUList([hdu])


class MoffatPsfModel(PsfModel):
    """Elliptical Moffat PSF whose FWHM and ellipticity are polynomials of position.

    Parameters
    ----------
    fwhm_coeffs, e1_coeffs, e2_coeffs : array_like, shape (n_terms,)
        Polynomial coefficients (monomials of normalised ``u, v``, constant
        first) of the intrinsic FWHM (pix) and of ``e1``, ``e2``.
    beta : float
        Moffat index (the same over the field).
    image_shape : (ny, nx)
    spatial_order : int
    fit_bounds : (x_min, x_max, y_min, y_max), optional
        See :class:`PsfModel`.
    """

    kind = "moffat"

    def __init__(
        self,
        fwhm_coeffs: ArrayLike,
        e1_coeffs: ArrayLike,
        e2_coeffs: ArrayLike,
        *,
        beta: float,
        image_shape: tuple[int, int],
        spatial_order: int,
        fit_bounds: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__(image_shape=image_shape, spatial_order=spatial_order, fit_bounds=fit_bounds)
        n_terms = len(poly_terms(spatial_order))
        self.coeffs = {
            name: np.asarray(c, dtype=float).ravel()
            for name, c in (("fwhm", fwhm_coeffs), ("e1", e1_coeffs), ("e2", e2_coeffs))
        }
        if any(c.size != n_terms for c in self.coeffs.values()):
            raise ValueError(f"each coefficient vector needs {n_terms} terms for spatial_order={spatial_order}")
        if not beta > 1.0:
            raise ValueError(f"beta must be > 1, got {beta}")
        self.beta = float(beta)

    def _profile_at(self, x: NDArray, y: NDArray) -> dict[str, NDArray]:
        design = self._design(x, y)
        out = {name: design @ c for name, c in self.coeffs.items()}
        e = np.hypot(out["e1"], out["e2"])
        scale = np.where(e > _E_MAX, _E_MAX / np.maximum(e, 1e-300), 1.0)
        out["e1"], out["e2"] = out["e1"] * scale, out["e2"] * scale
        out["fwhm"] = np.maximum(out["fwhm"], _FWHM_MIN)
        return out

    def image_at(self, x: ArrayLike, y: ArrayLike, shape: tuple[int, int] = (25, 25)) -> NDArray[np.float64]:
        k = _stamp_size(shape)
        xs, ys, scalar = _positions(x, y)
        out = np.full((xs.size, k, k), np.nan)
        todo = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
        if todo.size:
            prof = self._profile_at(xs[todo], ys[todo])
            n_quad = max(4, _n_quadrature(float(np.min(prof["fwhm"]))))
            theta = np.stack(
                [
                    xs[todo] - np.floor(xs[todo] + 0.5),
                    ys[todo] - np.floor(ys[todo] + 0.5),
                    prof["fwhm"], prof["e1"], prof["e2"], np.full(todo.size, 1.0 / self.beta),
                ],
                axis=1,
            )
            per = max(1, _CHUNK_ELEMENTS // (4 * k * k * n_quad * n_quad))
            for start in range(0, todo.size, per):
                sl = slice(start, start + per)
                img = _render_moffat(theta[sl], k, n_quad)[0].reshape(-1, k, k)
                out[todo[sl]] = _normalised(img)
        return out[0] if scalar else out

    def to_hdulist(self) -> fits.HDUList:
        terms = poly_terms(self.spatial_order)
        columns = [
            fits.Column(name="X_POWER", format="K", array=np.array([i for i, _ in terms])),
            fits.Column(name="Y_POWER", format="K", array=np.array([j for _, j in terms])),
            fits.Column(name="FWHM_PIX", format="D", array=self.coeffs["fwhm"], unit="pix"),
            fits.Column(name="E1", format="D", array=self.coeffs["e1"]),
            fits.Column(name="E2", format="D", array=self.coeffs["e2"]),
        ]
        hdu = fits.BinTableHDU.from_columns(columns, header=self._header(), name="PSF_MOFFAT")
        hdu.header["BETA"] = (self.beta, "Moffat index")
        return fits.HDUList([hdu])


def psf_model_from_hdulist(hdul: fits.HDUList) -> PsfModel:
    """Rebuild a model from :meth:`PsfModel.to_hdulist` output (or a file holding it).

    Raises
    ------
    PsfError
        No ``PSF_PIXEL`` or ``PSF_MOFFAT`` extension.
    """
    names = [h.name for h in hdul]

    def common(header: fits.Header) -> dict[str, Any]:
        keys = ("FITXMIN", "FITXMAX", "FITYMIN", "FITYMAX")
        return {
            "image_shape": (header["IMNY"], header["IMNX"]),
            "spatial_order": header["SPORDER"],
            "fit_bounds": tuple(header[k] for k in keys) if all(k in header for k in keys) else None,
        }

    if "PSF_PIXEL" in names:
        hdu = hdul["PSF_PIXEL"]
        return PixelPsfModel(np.asarray(hdu.data, dtype=float), **common(hdu.header))
    if "PSF_MOFFAT" in names:
        hdu = hdul["PSF_MOFFAT"]
        data = hdu.data
        return MoffatPsfModel(data["FWHM_PIX"], data["E1"], data["E2"], beta=hdu.header["BETA"], **common(hdu.header))
    raise PsfError("no PSF_PIXEL or PSF_MOFFAT extension in the file", stage=_STAGE, extensions=names)


def moment_fwhm(images: NDArray) -> NDArray[np.float64]:
    """FWHM (pix) of a Gaussian with the images' second moments, pixel width removed.

    A start value only: the positive part of each image is used, and a Moffat's
    wings make it an overestimate.
    """
    k = images.shape[-1]
    u = np.arange(k) - k // 2
    pos = np.maximum(images, 0.0)
    total = pos.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        px, py = pos.sum(axis=1) / total[:, None], pos.sum(axis=2) / total[:, None]
        cx, cy = (px * u).sum(1), (py * u).sum(1)
        var = ((px * (u - cx[:, None]) ** 2).sum(1) + (py * (u - cy[:, None]) ** 2).sum(1)) / 2.0 - 1.0 / 12.0
    return FWHM_PER_SIGMA * np.sqrt(np.clip(np.where(np.isfinite(var), var, 1.0), 0.1, None))
