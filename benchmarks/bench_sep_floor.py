#!/usr/bin/env python
"""The floor under a sep-based engine: sep doing only SExtractor's own work, beside SExtractor.

The speed targets of the issues "Engine, part 1" and "Engine, part 2" ask the
engine to take no longer than SExtractor alone on the same file, reasoning that
"sep alone does background + extraction of such an image in about a third of
SExtractor's time". This script measures that premise. On the same simulated
files as ``bench_part1.py`` and ``bench_calibrate.py`` it runs

1. SExtractor (Debian ``source-extractor``, one thread) with the configuration
   of the matching benchmark, at the engine's depth;
2. in a fresh Python process, the sep calls that the engine itself cannot do
   without, on that same file, and nothing else: read the FITS image,
   ``sep.Background`` (128 px boxes, 3x3 filter) and its subtraction,
   ``sep.extract`` with the same 5x5 filter, threshold, minimum area,
   deblending and pixel stack as the engine's defaults (without sep's
   cleaning, which the engine replaces by its own; with the segmentation map
   that step 3 needs), then what SExtractor's parameter list asks for, each measured the cheapest
   way the engine does it:

   * ``part1`` (bench_part1's list): windowed centroid (XWIN) in a window of
     the PSF's sigma, 7 exact circular apertures (3-25 px), Kron radius + AUTO
     flux; a FITS table written;
   * ``part2`` (bench_calibrate's list): one 12 px aperture, AUTO flux; a
     FITS table written.

   No first look, no re-estimated background, PSF model, cosmic rays, sky
   sources, local background, PSF flux, aperture corrections, astrometry,
   photometry or calexp: what is timed is a lower bound for an engine whose
   pixel work is sep's. The imports are timed separately and left out of the
   floor (a Celery worker pays them once).
3. then, in the same process, the two stages both issues require beyond
   SExtractor's output that are one call each, timed apart as "+required":
   the sky estimated again with the footprints masked (LSST's
   reEstimateBackground: ``sep.Background`` with the segmentation as mask,
   subtracted) and the calexp written (IMAGE, a 16-bit MASK with DETECTED
   set, VARIANCE from the sky noise and a gain). floor + required is still a
   lower bound: it has no PSF model, cosmic rays, sky sources, PSF fluxes or
   aperture corrections.

Run from the project root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sep_floor.py [--crowded]

``--crowded`` adds bench_part1's 50,000-star image (about a minute more).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RADII_PIX = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0)
PSF_FWHM_PIX = 3.0  # the simulations' PSF
GAIN = 1.5  # any positive number: only the cost of the variance plane is timed


def sep_child(fits_path: str, mode: str, thresh: float, outdir: str) -> dict:
    """sep doing SExtractor's work on one file, once, in this (fresh) process."""
    t0 = time.perf_counter()
    import numpy as np
    import sep
    from astropy.io import fits
    from astropy.table import Table

    import_s = time.perf_counter() - t0
    from bench_part1 import GAUSS_3_5X5, conv_kernel

    from calibration.detection import DetectionConfig
    from calibration.io import write_hdulist

    kernel = np.array(conv_kernel(GAUSS_3_5X5))
    # The engine's buffers: sep initialises the whole pixel stack on every
    # extract, so a larger one than the engine's (10M: +0.15-0.45 s here) would
    # inflate the floor.
    sep.set_extract_pixstack(DetectionConfig().pixstack_pix)
    sep.set_sub_object_limit(DetectionConfig().sub_object_limit)
    stages: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = now - since
        return now

    t = time.perf_counter()
    image = np.ascontiguousarray(fits.getdata(fits_path), dtype=np.float32)
    t = lap("read", t)
    raw = image.copy()  # for the re-estimate: cheaper than adding the model back
    bkg = sep.Background(image, bw=128, bh=128, fw=3, fh=3)
    bkg.subfrom(image)
    rms = bkg.globalrms
    t = lap("background", t)
    obj, seg = sep.extract(image, thresh, err=rms, minarea=5, filter_kernel=kernel, filter_type="conv",
                           deblend_nthresh=32, deblend_cont=0.005, clean=False, segmentation_map=True)
    t = lap("extract", t)
    x, y, a, b = obj["x"], obj["y"], obj["a"], obj["b"]
    theta = np.clip(obj["theta"], -np.pi / 2, np.pi / 2)
    cols = {"x": x, "y": y}
    if mode == "part1":
        cols["xwin"], cols["ywin"], _ = sep.winpos(image, x, y, PSF_FWHM_PIX / 2.3548, subpix=5)
        t = lap("winpos", t)
        n, k = x.size, len(RADII_PIX)
        flux, ferr, _ = sep.sum_circle(image, np.repeat(x, k), np.repeat(y, k), np.tile(RADII_PIX, n), err=rms,
                                       subpix=0)
        cols["flux_aper"], cols["fluxerr_aper"] = flux.reshape(n, k), ferr.reshape(n, k)
        t = lap("apertures", t)
    else:
        cols["flux_aper"], cols["fluxerr_aper"], _ = sep.sum_circle(image, x, y, 12.0, err=rms, subpix=5)
        t = lap("apertures", t)
    kron, _ = sep.kron_radius(image, x, y, a, b, theta, 6.0)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 1.0)
    cols["flux_auto"], cols["fluxerr_auto"], _ = sep.sum_ellipse(image, x, y, a, b, theta, 2.5 * kron, err=rms,
                                                                 subpix=5)
    t = lap("auto", t)
    Table(cols).write(Path(outdir) / "sep.fits", overwrite=True)
    t = lap("write", t)
    floor_s = sum(stages.values())
    # Two stages the issues require beyond SExtractor's output, each as one
    # sep/numpy/astropy call: the sky estimated again with the footprints
    # masked (LSST's reEstimateBackground), and the calexp (IMAGE, a 16-bit
    # MASK with DETECTED set, VARIANCE from the sky noise and the gain).
    bkg2 = sep.Background(raw, mask=seg > 0, bw=128, bh=128, fw=3, fh=3)
    bkg2.subfrom(raw)
    t = lap("reestimate", t)
    mask = np.where(seg > 0, np.int16(32), np.int16(0))
    variance = np.maximum(raw, 0, dtype=np.float32)
    variance *= np.float32(1.0 / GAIN)
    variance += np.float32(bkg2.globalrms ** 2)
    # The engine's writer: astropy's bytes without its in-place byteswaps (0.4-0.8 s with writeto here).
    write_hdulist(fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(raw, name="IMAGE"), fits.ImageHDU(mask, name="MASK"),
                                fits.ImageHDU(variance, name="VARIANCE")]), Path(outdir) / "calexp.fits")
    lap("calexp", t)
    return {"import_s": import_s, "stages_s": stages, "floor_s": floor_s, "floor_plus_s": sum(stages.values()),
            "n": int(x.size)}


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


def bench_image(name: str, image: Path, mode: str, sex: Path, sex_bin: str, thresh: float, workdir: Path) -> dict:
    import bench_part1

    # bench_part1's runner: the threshold on the command line, SExtractor's own wall time.
    sx = bench_part1.run_sextractor(sex_bin, sex, image, workdir, thresh, "floor")
    if not sx["ok"]:
        sys.exit(f"SExtractor failed on {name}: {sx.get('error')}")
    out = _run([sys.executable, __file__, "--_sep", str(image), mode, f"{thresh:.6f}", str(workdir)])
    res = json.loads(out.strip().splitlines()[-1])
    sex_s = sx["wall_s"]
    res.update(name=name, mode=mode, sextractor_s=sex_s, ratio=res["floor_s"] / sex_s,
               ratio_plus=res["floor_plus_s"] / sex_s)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crowded", action="store_true", help="also bench_part1's 50,000-star image")
    parser.add_argument("--_sep", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._sep:
        fits_path, mode, thresh, outdir = args._sep
        print(json.dumps(sep_child(fits_path, mode, float(thresh), outdir)))
        return
    sys.path.insert(0, str(HERE))
    import bench_calibrate
    import bench_part1

    sex_bin = shutil.which("source-extractor") or shutil.which("sex")
    if not sex_bin:
        sys.exit("SExtractor not found: apt-get install source-extractor")
    # SExtractor's DETECT_THRESH is in units of the unfiltered noise; the engine's
    # 5 sigma is on the filtered image (bench_part1's "equal depth").
    thresh = 5.0 * bench_part1.conv_noise_factor(bench_part1.GAUSS_3_5X5)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_sep_floor_") as tmp:
        workdir = Path(tmp)
        sex1, _, _ = bench_part1.sextractor_config(workdir, min_pixels=5, radii=RADII_PIX,
                                                   nnw=bench_part1.find_nnw(sex_bin), seeing_arcsec=0.6)
        part1 = [("typical_5000", 5000)] + ([("crowded_50000", 50000)] if args.crowded else [])
        for name, n_stars in part1:
            image = workdir / f"{name}.fits"
            _run([sys.executable, str(HERE / "bench_part1.py"), "--_simulate", "4096", str(n_stars), str(image)])
            results.append(bench_image(name, image, "part1", sex1, sex_bin, thresh, workdir))
            print(json.dumps(results[-1]), flush=True)
        cal = workdir / "calibrate"
        cal.mkdir()
        _run([sys.executable, str(HERE / "bench_calibrate.py"), "--simulate", "4096", "6000", "7", str(cal)])
        sex2 = bench_calibrate._sextractor_files(cal, thresh)
        results.append(bench_image("calibrate_6000", cal / "image.fits", "part2", sex2, sex_bin, thresh, cal))
        print(json.dumps(results[-1]), flush=True)
    print("\nimage            work    n_sep  SExtractor_s  sep_floor_s  floor/SExtractor  +required_s  "
          "+required/SExtractor  sep_imports_s   per stage (s)")
    for r in results:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items())
        print(f"{r['name']:16s} {r['mode']:6s} {r['n']:6d} {r['sextractor_s']:13.2f} {r['floor_s']:12.2f} "
              f"{r['ratio']:17.2f} {r['floor_plus_s']:12.2f} {r['ratio_plus']:21.2f} {r['import_s']:14.2f}   {stages}")
    print("\nbackground + extract alone / SExtractor's whole run: "
          + ", ".join(f"{r['name']} {(r['stages_s']['background'] + r['stages_s']['extract']) / r['sextractor_s']:.2f}"
                      for r in results))
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"bench_sep_floor_{stamp}.json").write_text(json.dumps(results, indent=2))
    print(f"\nSExtractor DETECT_THRESH {thresh:.3f} (the engine's 5 sigma on the filtered image)")


if __name__ == "__main__":
    main()
