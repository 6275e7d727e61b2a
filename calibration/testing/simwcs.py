"""The simulator's WCS: TAN or TAN-SIP, true and header (perturbed) versions.

``CD = s [[-cos t, sin t], [sin t, cos t]]`` with ``s`` the pixel scale (deg)
and ``t`` the rotation (the angle of +y from north towards east); ``CRVAL`` is
the field centre at local pixel ``((nx - 1) / 2, (ny - 1) / 2)``, i.e. FITS
``CRPIX = ((nx + 1) / 2, (ny + 1) / 2)``. SIP coefficients act on
``u, v = pixel - CRPIX`` (pix) as usual: ``x_focal = u + sum A_p_q u^p v^q``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from astropy.wcs import WCS, Sip

if TYPE_CHECKING:
    from .simulate import SimConfig

__all__ = ["SIP_LENGTH_TO_ORDER", "make_wcs", "sip_terms"]


def sip_terms(order: int) -> list[tuple[int, int]]:
    """SIP ``(p, q)`` exponents in the order used by ``SimConfig.sip_a``/``sip_b``.

    Terms of total order 2..``order``, each order listed with ``p`` descending:
    order 2 -> ``(2,0), (1,1), (0,2)``; order 3 adds ``(3,0), (2,1), (1,2), (0,3)``.
    """
    return [(p, total - p) for total in range(2, order + 1) for p in range(total, -1, -1)]


SIP_LENGTH_TO_ORDER = {len(sip_terms(o)): o for o in (2, 3, 4)}


def make_wcs(cfg: "SimConfig", *, header: bool = False) -> WCS:
    """The true (``header=False``) or header WCS of ``cfg``, for local 0-based pixels.

    The header WCS has ``CRPIX`` moved by ``cfg.header_offset_pix``, rotation
    ``t + cfg.header_rotation_deg`` and scale ``s (1 + cfg.header_scale_fraction)``,
    and keeps the SIP terms unless ``cfg.header_sip`` is False. SIP inverse
    (AP/BP) coefficients of one order higher are fitted over the image so that
    the header is complete; the forward (A/B) terms are the truth.
    """
    ny, nx = cfg.shape
    xc, yc = cfg.centre_pix
    scale = cfg.pixel_scale_arcsec / 3600.0
    rot = cfg.rotation_deg
    crpix = np.array([xc + 1.0, yc + 1.0])  # FITS CRPIX is 1-based
    if header:
        scale *= 1.0 + cfg.header_scale_fraction
        rot += cfg.header_rotation_deg
        crpix = crpix + np.asarray(cfg.header_offset_pix, float)
    t = math.radians(rot)
    cd = scale * np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])
    use_sip = bool(cfg.sip_a or cfg.sip_b) and (cfg.header_sip or not header)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if use_sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crpix = crpix
    w.wcs.crval = [cfg.ra_deg % 360.0, cfg.dec_deg]
    w.wcs.cd = cd
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (nx, ny)
    if use_sip:
        a, b = _sip_matrix(cfg.sip_a, cfg.sip_b)
        ap, bp = _fit_sip_inverse(a, b, nx, ny, crpix)
        w.sip = Sip(a, b, ap, bp, crpix)
    w.wcs.set()
    return w


def _sip_matrix(sip_a: tuple[float, ...], sip_b: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    order = max(SIP_LENGTH_TO_ORDER.get(len(sip_a), 2), SIP_LENGTH_TO_ORDER.get(len(sip_b), 2))
    mats = []
    for coeffs in (sip_a, sip_b):
        m = np.zeros((order + 1, order + 1))
        for (p, q), value in zip(sip_terms(order), coeffs):
            m[p, q] = value
        mats.append(m)
    return mats[0], mats[1]


def _fit_sip_inverse(
    a: np.ndarray, b: np.ndarray, nx: int, ny: int, crpix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares AP/BP (order + 1, all terms p + q >= 1) over the image."""
    order = a.shape[0] - 1
    inv_order = order + 1
    gy, gx = np.mgrid[0:ny:complex(0, 40), 0:nx:complex(0, 40)]
    u = gx.ravel() + 1.0 - crpix[0]
    v = gy.ravel() + 1.0 - crpix[1]
    fu = u + _poly(a, u, v)
    fv = v + _poly(b, u, v)
    terms = [(p, q) for total in range(1, inv_order + 1) for p in range(total, -1, -1) for q in [total - p]]
    design = np.stack([fu**p * fv**q for p, q in terms], axis=1)
    ap = np.zeros((inv_order + 1, inv_order + 1))
    bp = np.zeros_like(ap)
    for target, out in ((u - fu, ap), (v - fv, bp)):
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        for (p, q), c in zip(terms, coef):
            out[p, q] = c
    return ap, bp


def _poly(m: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(u)
    for p in range(m.shape[0]):
        for q in range(m.shape[1]):
            if m[p, q]:
                out += m[p, q] * u**p * v**q
    return out
