"""The whole task (FITS in, every output written) against SExtractor alone, side by side.

Issue "Engine, part 2": the whole calibration of a 4096x4096 exposure with
several thousand stars must take no longer than SExtractor alone (Debian's
``source-extractor``, one thread) on the same file. For each case this script

1. simulates the exposure with ``calibration.testing`` (SIP distortion, a
   header WCS 40 px / 0.3 deg / 0.5% off) and a reference catalogue drawn
   from its truth, written to ``benchmarks/out/``;
2. runs SExtractor once on it (5 sigma, 5 pixels, 128 px background mesh,
   Gaussian filter, 12 px aperture + AUTO flux), in its own process;
3. runs ``python -m calibration run IMAGE --refcat REF --out DIR`` in its own
   process (read, every stage, every output written), and reads the
   per-stage timings from its ``metadata.json``;
4. reports wall times, the ratio engine / SExtractor, the peak resident
   memory of each process (``wait4`` rusage), and the accuracy against the
   truth (WCS RMS over the field in mas, MAGZERO error in mmag).

SExtractor runs at the engine's depth: DETECT_THRESH = 5 sqrt(sum k^2) / sum k
for its 5x5 Gaussian filter k (its threshold is in units of the unfiltered
noise, the engine's of the filtered). The simulation and the accuracy check run
in child processes so that the timed processes start small (a forked child
starts with its parent's resident size as its ru_maxrss).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_calibrate.py [--quick] [--scaling]``.
``--quick``: 2048x2048 only. ``--scaling``: also 1k..100k stars on 4096x4096
(slow: the simulation of 100k stars alone takes minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "calibrate"


GAUSS_5x5 = """\
0.092163 0.221178 0.296069 0.221178 0.092163
0.221178 0.530797 0.710525 0.530797 0.221178
0.296069 0.710525 0.951108 0.710525 0.296069
0.221178 0.530797 0.710525 0.530797 0.221178
0.092163 0.221178 0.296069 0.221178 0.092163
"""


def _run(cmd: list[str], **kwargs) -> tuple[float, float, int]:
    """Wall time (s), peak RSS (MB) and exit status of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def _simulate(size: int, n_stars: int, seed: int, workdir: Path):
    """Runs in a child process (``--simulate``) so that the parent stays small: a
    forked child inherits the parent's resident size as its starting ru_maxrss."""
    from calibration.testing import SimConfig, make_reference_catalog, simulate_exposure, write_fits
    from calibration.testing import write_reference_catalog

    sim = simulate_exposure(SimConfig(
        shape=(size, size), n_stars=n_stars, mag_range=(15.0, 23.0), n_galaxies=n_stars // 50,
        n_cosmic_rays=size // 20, pixel_scale_arcsec=0.2, sip_a=(4e-7, 0.0, 2e-7, 1e-10, 0.0, 0.0, 0.0),
        sip_b=(0.0, 3e-7, 0.0, 0.0, 0.0, 0.0, 1e-10),
        header_offset_pix=(40.0, -25.0), header_rotation_deg=0.3, header_scale_fraction=0.005, seed=seed))
    image = workdir / "image.fits"
    write_fits(sim, image)
    ref = workdir / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=seed, position_err_mas=5.0), ref)
    (workdir / "truth.json").write_text(json.dumps({
        "true_wcs": sim.true_wcs.to_header(relax=True).tostring(),
        "magzero": sim.config.zero_point_mag - 2.5 * math.log10(sim.config.exptime_s),
        "shape": list(sim.exposure.shape), "image_mb": sim.exposure.image.nbytes / 2**20}))


def _sextractor_files(workdir: Path, thresh: float) -> Path:
    (workdir / "bench.param").write_text("NUMBER\nX_IMAGE\nY_IMAGE\nFLUX_APER\nFLUXERR_APER\nFLUX_AUTO\nFLAGS\n")
    (workdir / "gauss.conv").write_text("CONV NORM\n# 5x5 Gaussian, FWHM 3 pix\n" + GAUSS_5x5)
    settings = {
        "CATALOG_TYPE": "FITS_LDAC", "PARAMETERS_NAME": "bench.param", "DETECT_TYPE": "CCD",
        "DETECT_MINAREA": "5", "DETECT_THRESH": f"{thresh:.3f}", "ANALYSIS_THRESH": f"{thresh:.3f}", "FILTER": "Y",
        "FILTER_NAME": "gauss.conv", "DEBLEND_NTHRESH": "32", "DEBLEND_MINCONT": "0.005", "CLEAN": "Y",
        "PHOT_APERTURES": "24", "SATUR_LEVEL": "60000", "GAIN": "1.5", "PIXEL_SCALE": "0.2",
        "BACK_SIZE": "128", "BACK_FILTERSIZE": "3", "CHECKIMAGE_TYPE": "NONE", "VERBOSE_TYPE": "QUIET",
        "NTHREADS": "1", "STARNNW_NAME": "/dev/null", "WRITE_XML": "N",
    }
    sex = workdir / "bench.sex"
    sex.write_text("".join(f"{k:<18}{v}\n" for k, v in settings.items()))
    return sex


def _accuracy(workdir: Path) -> dict:
    """Runs in a child process (``--accuracy``): the engine's outputs against the truth."""
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    truth = json.loads((workdir / "truth.json").read_text())
    true_wcs = WCS(fits.Header.fromstring(truth["true_wcs"]))
    outdir = workdir / "engine"
    md = json.loads((outdir / "metadata.json").read_text())
    out = {"timings_s": md["timings_s"], "warnings": md["warnings"]}
    meta = md["metadata"]
    truth_zp = truth["magzero"]
    if meta.get("MAGZERO") is not None:
        out["magzero_error_mmag"] = 1000.0 * (meta["MAGZERO"] - truth_zp)
        out["magzero_nobj"] = meta.get("MAGZERO_NOBJ")
    out["n_sources"] = meta.get("N_SOURCES")
    out["n_astrom_matches"] = meta.get("N_ASTROM_MATCHES")
    wcs_path = outdir / "wcs.fits"
    if wcs_path.exists():
        wcs = WCS(fits.getheader(wcs_path))
        ny, nx = truth["shape"]
        y, x = np.mgrid[0:ny:64, 0:nx:64].reshape(2, -1).astype(float)
        ra, dec = wcs.all_pix2world(x, y, 0)
        ra0, dec0 = true_wcs.all_pix2world(x, y, 0)
        dra = ((ra - ra0 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec0))
        out["wcs_rms_mas"] = float(np.sqrt(np.mean(dra**2 + (dec - dec0) ** 2)) * 3.6e6)
    return out


def _child_json(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_case(size: int, n_stars: int, seed: int) -> dict:
    workdir = OUT / f"{size}_{n_stars}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    _child_json(["--simulate", str(size), str(n_stars), str(seed), str(workdir)])
    truth = json.loads((workdir / "truth.json").read_text())
    image, ref = workdir / "image.fits", workdir / "ref.parquet"
    result = {"size": size, "n_stars": n_stars, "simulate_s": time.perf_counter() - t0, "image_mb": truth["image_mb"]}
    sex_bin = shutil.which("source-extractor") or shutil.which("sex")
    if sex_bin:
        # Same depth as the engine's 5 sigma on the PSF-filtered image: SExtractor's
        # DETECT_THRESH is in units of the unfiltered noise, which the normalised
        # 5x5 Gaussian filter reduces by sqrt(sum k^2) / sum k.
        kernel = [[float(v) for v in line.split()] for line in GAUSS_5x5.strip().splitlines()]
        flat = [v for row in kernel for v in row]
        thresh = 5.0 * math.sqrt(sum(v * v for v in flat)) / sum(flat)
        sex = _sextractor_files(workdir, thresh)
        wall, rss, code = _run([sex_bin, str(image), "-c", str(sex), "-CATALOG_NAME", str(workdir / "sex.cat")],
                               cwd=workdir)
        result.update(sextractor_s=wall, sextractor_rss_mb=rss, sextractor_ok=code == 0, sextractor_thresh=thresh)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, rss, code = _run([sys.executable, "-m", "calibration", "run", str(image), "--refcat", str(ref),
                            "--out", str(workdir / "engine")], env=env)
    result.update(engine_s=wall, engine_rss_mb=rss, engine_ok=code == 0)
    if code == 0:
        result.update(_child_json(["--accuracy", str(workdir)]))
    if result.get("sextractor_s"):
        result["ratio"] = result["engine_s"] / result["sextractor_s"]
        result["n_sextractor"] = _child_json(["--count", str(workdir / "sex.cat")])["n"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 2048x2048 case")
    parser.add_argument("--scaling", action="store_true", help="1k..100k stars on 4096x4096 as well")
    parser.add_argument("--simulate", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", help=argparse.SUPPRESS)
    parser.add_argument("--count", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        size, n, seed, workdir = args.simulate
        _simulate(int(size), int(n), int(seed), Path(workdir))
        print(json.dumps({"ok": True}))
        return
    if args.accuracy:
        print(json.dumps(_accuracy(Path(args.accuracy)), default=float))
        return
    if args.count:
        from astropy.io import fits

        with fits.open(args.count) as hdul:
            print(json.dumps({"n": len(hdul["LDAC_OBJECTS"].data)}))
        return
    cases = [(2048, 1500)] if args.quick else [(4096, 6000), (4096, 50000)]
    if args.scaling:
        cases += [(4096, n) for n in (1000, 20000, 100000)]
    results = []
    for size, n in cases:
        r = bench_case(size, n, seed=7)
        results.append(r)
        print(json.dumps(r, default=float), flush=True)
    print("\n size  stars  sources  SExtr_sources  SExtractor_s  engine_s  ratio  engine_peak_MB (x image)  WCS_mas"
          "  dZP_mmag")
    for r in results:
        print(f"{r['size']:5d} {r['n_stars']:6d} {r.get('n_sources') or 0:8d} {r.get('n_sextractor') or 0:14d} "
              f"{r.get('sextractor_s', float('nan')):12.2f} "
              f"{r['engine_s']:9.2f} {r.get('ratio', float('nan')):6.2f} {r['engine_rss_mb']:9.0f} "
              f"({r['engine_rss_mb'] / r['image_mb']:.1f}x) {r.get('wcs_rms_mas', float('nan')):9.2f} "
              f"{r.get('magzero_error_mmag', float('nan')):9.2f}")
    print("\nper-stage (s):")
    for r in results:
        t = r.get("timings_s", {})
        print(f"  {r['size']}/{r['n_stars']}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
