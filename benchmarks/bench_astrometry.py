#!/usr/bin/env python
"""Benchmark of the astrometric calibration: pattern matcher and WCS fit.

For 1k, 5k, 20k and 100k sources (and about as many reference stars) on a
4096 x 4096 field at 0.2 arcsec/pix with an order-3 SIP distortion of ~35 pix
at the corners, and a header WCS off by 200 pix, 0.8 deg and 1.5% in scale,
the script times

* ``match``: :func:`calibration.matcher.match_pattern` alone;
* ``wcsfit``: one :func:`calibration.wcsfit.fit_tan_sip` (order 3, clipped) on
  the final matches;
* ``total``: :func:`calibration.astrometry.fit_astrometry` (selection, pattern
  match, three match-and-fit iterations, match table);

each the median of ``--repeat`` runs, and checks the result against the true
WCS (RMS over a 41 x 41 grid, mas). Catalogues are built from the true WCS, no
pixels are rendered: sources with centroid noise of 0.01-0.05 pix from their
S/N, 10% spurious; references with 7 mas noise, 10% of the stars missing and
5% catalogue-only entries.

Run from the project root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_astrometry.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_astrometry.py --sizes 1000,5000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from astropy.table import Table

from calibration.astrometry import AstrometryConfig, fit_astrometry, select_sources
from calibration.matcher import match_pattern
from calibration.testing import SimConfig, make_wcs
from calibration.wcsfit import fit_tan_sip, sky_offsets_mas

SEED = 20261201
SHAPE = (4096, 4096)
# ~35 pix at the corners of a 4096 field (u, v up to 2048 pix).
SIP_A = (4e-6, -2e-6, 3e-6, 1e-9, 0.0, 5e-10, 0.0)
SIP_B = (-3e-6, 2e-6, 1e-6, 0.0, -1e-9, 0.0, 7e-10)


def make_catalogues(n_sources: int, seed: int):
    """True and header WCS, a source table of ~n_sources rows and a reference table."""
    sim = SimConfig(shape=SHAPE, pixel_scale_arcsec=0.2, ra_deg=150.0, dec_deg=2.2, rotation_deg=30.0,
                    sip_a=SIP_A, sip_b=SIP_B, header_offset_pix=(-150.0, 130.0), header_rotation_deg=0.8,
                    header_scale_fraction=0.015)
    true_wcs, header_wcs = make_wcs(sim), make_wcs(sim, header=True)
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    margin = 300
    n_on_image = int(n_sources / 1.1)  # the spurious 10% bring it to n_sources
    n_all = int(n_on_image * (nx + 2 * margin) * (ny + 2 * margin) / (nx * ny))
    x = rng.uniform(-margin, nx - 1 + margin, n_all)
    y = rng.uniform(-margin, ny - 1 + margin, n_all)
    lo, hi = 10 ** (0.3 * 15.0), 10 ** (0.3 * 22.0)
    mag = np.log10(lo + rng.uniform(size=n_all) * (hi - lo)) / 0.3
    ra, dec = true_wcs.all_pix2world(x, y, 0)
    star = np.flatnonzero((x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1))
    snr_star = 10 ** (-0.4 * (mag[star] - 24.5))
    sigma = np.clip(0.5 / snr_star, 0.01, 0.05)
    n_fake = star.size // 10
    src = Table()
    src["id"] = np.arange(1, star.size + n_fake + 1)
    src["x"] = np.concatenate([x[star] + rng.normal(0, 1, star.size) * sigma, rng.uniform(0, nx - 1, n_fake)])
    src["y"] = np.concatenate([y[star] + rng.normal(0, 1, star.size) * sigma, rng.uniform(0, ny - 1, n_fake)])
    src["x_err"] = src["y_err"] = np.concatenate([sigma, np.full(n_fake, 0.05)])
    smag = np.concatenate([mag[star] + rng.normal(0, 0.2, star.size), rng.uniform(19.0, 22.0, n_fake)])
    src["psf_flux"] = 10 ** (-0.4 * (smag - 27.0))
    src["psf_flux_err"] = src["psf_flux"] / 10 ** (-0.4 * (smag - 24.5))
    keep = rng.uniform(size=n_all) > 0.1
    n_only = n_all // 20
    ex, ey = rng.uniform(-margin, nx - 1 + margin, (2, n_only))
    xra, xdec = true_wcs.all_pix2world(ex, ey, 0)
    rra, rdec = np.concatenate([ra[keep], xra]), np.concatenate([dec[keep], xdec])
    rra = np.mod(rra + rng.normal(0, 7.0, rra.size) / 3.6e6 / np.cos(np.radians(rdec)), 360.0)
    rdec = rdec + rng.normal(0, 7.0, rdec.size) / 3.6e6
    refs = Table({"id": np.arange(1, rra.size + 1), "ra": rra, "dec": rdec,
                  "ra_err": np.full(rra.size, 7.0), "dec_err": np.full(rra.size, 7.0),
                  "r_mag": np.concatenate([mag[keep], rng.uniform(15.0, 22.0, n_only)])})
    return true_wcs, header_wcs, src, refs


def grid_rms_mas(truth, fitted) -> float:
    ny, nx = SHAPE
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 41), np.linspace(0, ny - 1, 41))
    r1, d1 = truth.all_pix2world(gx.ravel(), gy.ravel(), 0)
    r2, d2 = fitted.all_pix2world(gx.ravel(), gy.ravel(), 0)
    return float(np.sqrt(np.mean(np.square(np.hypot(*sky_offsets_mas(r1, d1, r2, d2))))))


def timed(func, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def run(n_sources: int, repeat: int) -> dict:
    true_wcs, header_wcs, src, refs = make_catalogues(n_sources, SEED)
    config = AstrometryConfig()
    good, flux, _ = select_sources(src, config)
    s = src[good]
    t_match, pm = timed(lambda: match_pattern(s["x"], s["y"], flux[good], refs["ra"], refs["dec"], refs["r_mag"],
                                              header_wcs, image_shape=SHAPE, config=config.matcher), repeat)
    t_total, res = timed(lambda: fit_astrometry(src, refs, header_wcs, SHAPE, config, ref_band="r"), repeat)
    m = res.matches[~np.asarray(res.matches["reserved"])]
    t_fit, _ = timed(lambda: fit_tan_sip(m["src_x"], m["src_y"], m["ref_ra"], m["ref_dec"], sip_order=3,
                                         image_shape=SHAPE), repeat)
    return {
        "n_src": len(src), "n_selected": int(good.sum()), "n_ref": len(refs), "t_match": t_match,
        "t_wcsfit": t_fit, "t_total": t_total, "n_pattern": len(pm), "n_matches": res.metadata["ASTROM_N_MATCHES"],
        "n_used": res.metadata["ASTROM_N_USED"], "fit_rms": res.metadata["ASTROM_RMS_MAS"],
        "reserved_rms": res.metadata["ASTROM_RESERVED_RMS_MAS"], "truth_rms": grid_rms_mas(true_wcs, res.wcs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000,100000", help="comma-separated source counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median reported)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# bench_astrometry: {SHAPE[1]}x{SHAPE[0]} px at 0.2 arcsec/px, seed {SEED}, median of {args.repeat}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}")
    header = ("| sources | selected | refs | match s | wcsfit s | total s | pattern matches | matches | used | "
              "fit RMS mas | reserved RMS mas | vs truth RMS mas |")
    print(header)
    print("|" + "|".join(["---:"] * (header.count("|") - 1)) + "|")
    for n in sizes:
        r = run(n, args.repeat)
        print(f"| {r['n_src']:,} | {r['n_selected']:,} | {r['n_ref']:,} | {r['t_match']:.3f} | {r['t_wcsfit']:.3f} "
              f"| {r['t_total']:.3f} | {r['n_pattern']:,} | {r['n_matches']:,} | {r['n_used']:,} "
              f"| {r['fit_rms']:.1f} | {r['reserved_rms']:.1f} | {r['truth_rms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
