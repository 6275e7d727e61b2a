#!/usr/bin/env python
"""Benchmark of the engine's part 1 (read + calibrate without photocal + write),
side by side with SExtractor on the same simulated images.

For every case the script

1. simulates an exposure with :mod:`calibration.testing` from a fixed seed and
   writes it to a FITS file in a temporary directory;
2. runs ``read_exposure`` + ``calibrate(do_photo_cal=False, no refcat)`` +
   ``write_outputs`` in a fresh Python subprocess (so the peak RSS belongs to
   that one run) and records the wall and CPU time of every stage (read,
   the stages of ``CalibrationResult.timings_s`` including psf and apcorr,
   write), the peak RSS
   (absolute and minus the peak after the imports) and the CPU time. The peak
   is the child's ``VmHWM`` (equal to its ``ru_maxrss``, also recorded, now that
   the benchmark process itself stays small: the simulation runs in its own
   subprocess, because Linux carries a parent's RSS over fork+exec into the
   child's ``ru_maxrss``); then runs the same child again under tracemalloc
   for the peak of the traced (numpy and Python) allocations;
3. runs SExtractor (Debian ``source-extractor``, ``-NTHREADS 1``) on the same
   file with a comparable configuration (see :func:`sextractor_config`), twice:
   at ``DETECT_THRESH 5`` (the same number as the engine's ``threshold_sigma``)
   and at the threshold that reaches the same depth as the engine (SExtractor
   compares the *filtered* image with ``DETECT_THRESH`` times the *unfiltered*
   pixel noise, the engine with ``threshold_sigma`` times the noise of the
   filtered image, i.e. a factor ``sqrt(sum k^2)`` ~ 0.22 lower in ADU);
4. prints per-stage times, the engine/SExtractor time ratios, peak memory / image
   size ratios (requirement: < 8) and the scaling of the total time with the
   number of sources (log-log slope), and writes everything to a JSON file in
   ``benchmarks/out/``.

Run from the project root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_part1.py            # full (4096x4096)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_part1.py --quick    # 1024x1024, ~1 min

See ``benchmarks/README.md`` for what is measured and the figures obtained.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "out"

SEED = 20261123
#: Magnitude range of the simulated stars: the faint end (20.5) lies above the
#: engine's 5-sigma limit (~21.1 mag for the default sky, gain and 3 px PSF), so
#: nearly every injected star is a detectable source and "n_stars" means sources.
MAG_RANGE = (15.0, 20.5)
SCALING_STARS = (1_000, 3_000, 10_000, 30_000, 100_000)
MAX_MEMORY_RATIO = 8.0
#: SExtractor's gauss_3.0_5x5.conv (Gaussian of FWHM 3 pixels), as shipped.
GAUSS_3_5X5 = """CONV NORM
# 5x5 convolution mask of a gaussian PSF with FWHM = 3.0 pixels.
0.092163 0.221178 0.296069 0.221178 0.092163
0.221178 0.530797 0.710525 0.530797 0.221178
0.296069 0.710525 0.951108 0.710525 0.296069
0.221178 0.530797 0.710525 0.530797 0.221178
0.092163 0.221178 0.296069 0.221178 0.092163
"""
SEX_PARAMS = (
    "NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "ERRX2WIN_IMAGE",
    "FLUX_APER(7)", "FLUXERR_APER(7)", "FLUX_AUTO", "FLUXERR_AUTO",
    "A_IMAGE", "B_IMAGE", "THETA_IMAGE", "FLAGS", "CLASS_STAR",
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    group: str  # "typical", "crowded" or "scaling"
    size: int
    n_stars: int


def cases(quick: bool) -> list[Case]:
    """The images to benchmark; ``--quick`` keeps the star densities on 1024x1024."""
    if quick:
        size, div = 1024, 16  # 1/16 of the area, same densities
    else:
        size, div = 4096, 1
    out = [
        Case(f"typical_{size}_{5000 // div}", "typical", size, 5000 // div),
        Case(f"crowded_{size}_{50000 // div}", "crowded", size, 50000 // div),
    ]
    out += [Case(f"scaling_{size}_{n // div}", "scaling", size, n // div) for n in SCALING_STARS]
    return out


# --------------------------------------------------------------------------- child


def proc_status_mb(*keys: str) -> dict[str, float | None]:
    """``VmHWM``/``VmRSS`` of this process (MB) from /proc/self/status; None if unavailable.

    ``VmHWM`` is the peak RSS of the current address space, which starts afresh at
    ``exec``; ``ru_maxrss`` does not: Linux carries the parent's RSS at ``fork``
    over ``exec``, so a child of a big parent reports the parent's size.
    """
    out: dict[str, float | None] = {k: None for k in keys}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in out:
                out[name] = int(value.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def child_main(fits_path: str, outdir: str, trace: bool = False) -> None:
    """Run part 1 on one file; print one JSON line with the figures.

    With ``trace`` the run is made under :mod:`tracemalloc` (numpy reports its
    array buffers to it) and only the memory figures count: tracing slows the
    interpreter, so the benchmark takes its times from an untraced run.
    """
    import resource

    if trace:
        import tracemalloc

        tracemalloc.start()
    t_start = time.perf_counter()
    from calibration.io import read_exposure
    from calibration.outputs import write_outputs
    from calibration.pipeline import CalibrateConfig, calibrate

    import numpy as np

    import_s = time.perf_counter() - t_start
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = proc_status_mb("VmHWM", "VmRSS")
    out: dict = {"ok": False, "import_s": import_s, "ru_maxrss_baseline_mb": baseline_kb / 1024.0,
                 "baseline_rss_mb": base["VmHWM"] if base["VmHWM"] is not None else baseline_kb / 1024.0,
                 "rss_after_imports_mb": base["VmRSS"]}
    if trace:
        tracemalloc.reset_peak()
        out["tracemalloc_baseline_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
    cpu: dict[str, float] = {}
    hwm: dict[str, float | None] = {}
    last: list = [None, 0.0]

    def progress(stage_name: str, _fraction: float) -> None:
        # calibrate() reports each stage at its start and at its end.
        now = time.process_time()
        if last[0] == stage_name:
            cpu[stage_name] = cpu.get(stage_name, 0.0) + now - last[1]
            hwm[stage_name] = proc_status_mb("VmHWM")["VmHWM"]
        last[0], last[1] = stage_name, now

    stage = "read"
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        exposure = read_exposure(fits_path)
        out["read_s"] = time.perf_counter() - t0
        cpu["read"] = time.process_time() - c0
        hwm["read"] = proc_status_mb("VmHWM")["VmHWM"]
        out["image_shape"] = list(exposure.image.shape)
        stage = "calibrate"
        config = CalibrateConfig(do_photo_cal=False)
        out["min_pixels"] = config.detection.min_pixels
        out["threshold_sigma"] = config.detection.threshold_sigma
        t0 = time.perf_counter()
        result = calibrate(exposure, config, photom_refcat=None, progress=progress, in_place=True)
        out["calibrate_s"] = time.perf_counter() - t0
        out["stages_s"] = {k: v for k, v in result.timings_s.items() if k != "read"}
        del exposure
        stage = "write"
        t0, c0 = time.perf_counter(), time.process_time()
        files = write_outputs(result, Path(outdir))
        out["write_s"] = time.perf_counter() - t0
        cpu["write"] = time.process_time() - c0
        hwm["write"] = proc_status_mb("VmHWM")["VmHWM"]
        out["stages_cpu_s"] = cpu
        out["total_cpu_s"] = sum(cpu.values())
        out["vmhwm_after_stage_mb"] = hwm
        out["output_mb"] = sum(f.path.stat().st_size for f in files) / 2**20
        src = result.sources
        sky = np.asarray(src["sky_source"], bool) if "sky_source" in src.colnames else np.zeros(len(src), bool)
        primary = np.asarray(src["detect_isPrimary"], bool) if "detect_isPrimary" in src.colnames else ~sky
        out["n_rows"] = len(src)
        out["n_primary"] = int(np.count_nonzero(primary & ~sky))
        out["n_sky"] = int(np.count_nonzero(sky))
        out["n_parents_deblended"] = int(np.count_nonzero(~primary & ~sky))
        out["psf_fwhm_pix"] = float(result.metadata.get("PSF_FWHM_PIX") or float("nan"))
        out["total_s"] = out["read_s"] + out["calibrate_s"] + out["write_s"]
        out["ok"] = True
    except Exception as exc:  # report, never crash the benchmark
        out["error"] = f"{stage}: {type(exc).__name__}: {exc}"
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak = proc_status_mb("VmHWM")["VmHWM"]
    out["peak_rss_mb"] = peak if peak is not None else out["ru_maxrss_mb"]
    out["peak_rss_source"] = "VmHWM" if peak is not None else "ru_maxrss"
    print("BENCH_JSON " + json.dumps(out), flush=True)


def exec_main(cmd: list[str]) -> None:
    """Run ``cmd`` from this small process and print its wall time, CPU time and peak RSS.

    A grandchild forked from a ~10 MB helper gets an honest ``ru_maxrss``; one
    forked straight from the benchmark would inherit the benchmark's RSS.
    """
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        res = {"returncode": os.waitstatus_to_exitcode(status), "wall_s": wall,
               "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024.0,
               "stdout": fo.read()[-2000:], "stderr": fe.read()[-4000:]}
    print("BENCH_JSON " + json.dumps(res), flush=True)


def simulate_main(size: str, n_stars: str, path: str) -> None:
    """Simulate one case and write it (run in a subprocess so the benchmark stays small)."""
    from calibration.testing import SimConfig, simulate_exposure, write_fits

    t0 = time.perf_counter()
    cfg = SimConfig(shape=(int(size), int(size)), seed=SEED, n_stars=int(n_stars), mag_range=MAG_RANGE)
    sim = simulate_exposure(cfg)
    write_fits(sim, path, hdu_layout="simple", dtype="float32")
    info = {"simulate_s": time.perf_counter() - t0, "n_truth": len(sim.truth),
            "psf_fwhm_pix": cfg.psf_fwhm_pix, "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
            "file_mb": Path(path).stat().st_size / 2**20}
    print("BENCH_JSON " + json.dumps(info), flush=True)


# --------------------------------------------------------------------------- parent helpers


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _bench_json(stdout: str) -> dict | None:
    line = next((ln for ln in stdout.splitlines()[::-1] if ln.startswith("BENCH_JSON ")), None)
    return None if line is None else json.loads(line[len("BENCH_JSON "):])


def run_reaped(cmd: list[str], *, cwd: str | None = None, env: dict | None = None):
    """Run ``cmd`` reaping it with os.wait4 to get its own rusage (CPU, max RSS)."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return proc.returncode, fo.read(), fe.read(), wall, ru


def find_sextractor() -> str | None:
    for name in ("source-extractor", "sex"):
        path = shutil.which(name)
        if path:
            return path
    if os.path.exists("/usr/bin/source-extractor"):
        return "/usr/bin/source-extractor"
    return None


def sextractor_version(binary: str) -> str:
    try:
        res = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
        return (res.stdout + res.stderr).strip().splitlines()[0]
    except Exception as exc:  # pragma: no cover - informative only
        return f"unknown ({exc})"


def find_nnw(binary: str) -> str | None:
    prefix = Path(binary).resolve().parent.parent / "share"
    for cand in (prefix / "source-extractor" / "default.nnw", prefix / "sextractor" / "default.nnw",
                 Path("/usr/share/source-extractor/default.nnw"), Path("/usr/share/sextractor/default.nnw")):
        if cand.exists():
            return str(cand)
    return None


def conv_kernel(conv_text: str) -> list[list[float]]:
    """The rows of a SExtractor .conv kernel."""
    return [[float(v) for v in line.split()] for line in conv_text.splitlines()
            if line.strip() and not line.startswith(("CONV", "#"))]


def conv_noise_factor(conv_text: str) -> float:
    """sqrt(sum k^2) / sum k of a .conv kernel: filtered-image noise per unit pixel noise."""
    flat = [v for row in conv_kernel(conv_text) for v in row]
    return math.sqrt(sum(v * v for v in flat)) / sum(flat)


def sextractor_config(workdir: Path, *, min_pixels: int, radii: tuple[float, ...], nnw: str | None,
                      seeing_arcsec: float) -> tuple[Path, Path, Path]:
    """Write default.sex-like files into ``workdir``; return (sex, param, conv) paths."""
    conv = workdir / "gauss_3.0_5x5.conv"
    conv.write_text(GAUSS_3_5X5)
    params = [p for p in SEX_PARAMS if nnw is not None or p != "CLASS_STAR"]
    param = workdir / "bench.param"
    param.write_text("\n".join(params) + "\n")
    diameters = ",".join(f"{2 * r:g}" for r in radii)
    settings = {
        "CATALOG_TYPE": "FITS_LDAC",
        "PARAMETERS_NAME": str(param),
        "DETECT_TYPE": "CCD",
        "DETECT_MINAREA": str(min_pixels),
        "DETECT_THRESH": "5",
        "ANALYSIS_THRESH": "5",
        "FILTER": "Y",
        "FILTER_NAME": str(conv),
        "DEBLEND_NTHRESH": "32",
        "DEBLEND_MINCONT": "0.005",
        "CLEAN": "Y",
        "CLEAN_PARAM": "1.0",
        "MASK_TYPE": "CORRECT",
        "PHOT_APERTURES": diameters,
        "PHOT_AUTOPARAMS": "2.5,3.5",
        "SATUR_KEY": "SATURATE",
        "GAIN_KEY": "GAIN",
        "MAG_ZEROPOINT": "0.0",
        "PIXEL_SCALE": "0",
        "SEEING_FWHM": f"{seeing_arcsec:.3f}",
        "BACK_TYPE": "AUTO",
        "BACK_SIZE": "128",
        "BACK_FILTERSIZE": "3",
        "BACKPHOTO_TYPE": "GLOBAL",
        "CHECKIMAGE_TYPE": "NONE",
        # Crowded fields overflow the default stacks (3000 objects, 300000 pixels);
        # the pixel stack matches the engine's sep pixstack (DetectionConfig.pixstack_pix).
        "MEMORY_OBJSTACK": "60000",
        "MEMORY_PIXSTACK": "1000000",
        "MEMORY_BUFSIZE": "1024",
        "VERBOSE_TYPE": "QUIET",
        "WRITE_XML": "N",
        "NTHREADS": "1",
    }
    if nnw is not None:
        settings["STARNNW_NAME"] = nnw
    sex = workdir / "bench.sex"
    sex.write_text("".join(f"{k:<18}{v}\n" for k, v in settings.items()))
    return sex, param, conv


def run_sextractor(binary: str, sex: Path, fits_path: Path, workdir: Path, thresh: float, tag: str) -> dict:
    cat = workdir / f"{fits_path.stem}_{tag}.ldac"
    cmd = [binary, str(fits_path), "-c", str(sex), "-CATALOG_NAME", str(cat),
           "-DETECT_THRESH", f"{thresh:.4f}", "-ANALYSIS_THRESH", f"{thresh:.4f}", "-NTHREADS", "1"]
    helper = [sys.executable, "-S", str(Path(__file__).resolve()), "--_exec", *cmd]
    rc0, stdout0, stderr0, _, _ = run_reaped(helper, cwd=str(workdir))
    res = _bench_json(stdout0)
    if res is None:
        return {"ok": False, "detect_thresh": thresh, "error": f"helper failed ({rc0}): {stderr0.strip()[-800:]}"}
    rc, stdout, stderr = res["returncode"], res["stdout"], res["stderr"]
    out = {"ok": rc == 0, "detect_thresh": thresh, "wall_s": res["wall_s"], "returncode": rc,
           "cpu_s": res["cpu_s"], "peak_rss_mb": res["peak_rss_mb"]}
    if rc != 0:
        out["error"] = (stderr or stdout).strip()[-800:]
        return out
    try:
        from astropy.io import fits

        with fits.open(cat) as hdul:
            out["n_sources"] = int(len(hdul["LDAC_OBJECTS"].data))
    except Exception as exc:
        out["ok"] = False
        out["error"] = f"cannot read catalogue {cat}: {exc}"
    warn = [line for line in (stderr or "").splitlines() if "WARNING" in line.upper()]
    if warn:
        out["warnings"] = warn[:5]
    cat.unlink(missing_ok=True)
    return out


def run_engine(fits_path: Path, outdir: Path, *, trace: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_trace" if trace else "--_child", str(fits_path),
           str(outdir)]
    rc, stdout, stderr, wall, ru = run_reaped(cmd, cwd=str(ROOT), env=_child_env())
    out = _bench_json(stdout)
    if out is None:
        return {"ok": False, "error": f"child exited {rc} without a result: {(stderr or stdout).strip()[-800:]}",
                "process_wall_s": wall}
    out["process_wall_s"] = wall
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    out["process_ru_maxrss_mb"] = ru.ru_maxrss / 1024.0  # inflated by the parent's RSS (see proc_status_mb)
    return out


def simulate(case: Case, path: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_simulate", str(case.size), str(case.n_stars), str(path)]
    rc, stdout, stderr, wall, _ = run_reaped(cmd, cwd=str(ROOT), env=_child_env())
    info = _bench_json(stdout)
    if rc != 0 or info is None:
        raise RuntimeError(f"simulation of {case.name} failed ({rc}): {(stderr or stdout).strip()[-2000:]}")
    return info


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx > 0 else None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "scipy", "astropy", "sep"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": mem_gb, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


# --------------------------------------------------------------------------- report


def fmt(v, spec=".2f", width=0):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        s = "-"
    else:
        s = format(v, spec)
    return s.rjust(width) if width else s


#: Stages of part 1 in pipeline order (stages that are always skipped here, such as
#: photocal and astrometry without a reference catalogue, are left out of the tables).
PART1_STAGES = ("read", "background", "cosmic_rays", "detection", "sky_sources", "psf", "measurement",
                "apcorr", "write")


def _stage_value(e: dict, name: str, cpu: bool) -> float | None:
    if cpu:
        return (e.get("stages_cpu_s") or {}).get(name)
    if name in ("read", "write"):
        return e.get(f"{name}_s")
    return e["stages_s"].get(name)


def print_report(results: list[dict], report: dict) -> None:
    stage_names = list(PART1_STAGES)
    for cpu in (False, True):
        print(f"\nEngine part 1, {'CPU' if cpu else 'wall'} time per stage (s)")
        head = f"{'case':<22}" + "".join(f"{s[:11]:>12}" for s in stage_names) + f"{'total':>9}"
        head += "" if cpu else f"{'process':>9}"
        print(head)
        print("-" * len(head))
        for r in results:
            e = r["engine"]
            if not e.get("ok"):
                print(f"{r['case']['name']:<22}  FAILED: {e.get('error')}")
                continue
            vals = [_stage_value(e, s, cpu) for s in stage_names]
            line = f"{r['case']['name']:<22}" + "".join(fmt(v, ".2f", 12) for v in vals)
            line += fmt(e.get("total_cpu_s"), ".2f", 9) if cpu else (
                fmt(e["total_s"], ".2f", 9) + fmt(e["process_wall_s"], ".2f", 9))
            print(line)

    print("\nEngine vs SExtractor (single thread) and peak memory")
    head = (f"{'case':<22}{'n_eng':>8}{'t_eng':>8}{'n_sx5':>8}{'t_sx5':>7}{'ratio5':>8}"
            f"{'n_sxEq':>8}{'t_sxEq':>8}{'ratioEq':>8}{'peakMB':>8}{'dMB':>8}{'peak/img':>9}{'d/img':>7}{'sxMB':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        e, s5, se = r["engine"], r.get("sextractor") or {}, r.get("sextractor_equal_depth") or {}
        print(f"{r['case']['name']:<22}" + fmt(e.get("n_primary"), "d", 8) + fmt(e.get("total_s"), ".2f", 8)
              + fmt(s5.get("n_sources"), "d", 8) + fmt(s5.get("wall_s"), ".2f", 7) + fmt(r.get("ratio_vs_sex5"), ".1f", 8)
              + fmt(se.get("n_sources"), "d", 8) + fmt(se.get("wall_s"), ".2f", 8) + fmt(r.get("ratio_vs_sex_eq"), ".1f", 8)
              + fmt(e.get("peak_rss_mb"), ".0f", 8) + fmt(r.get("peak_delta_mb"), ".0f", 8)
              + fmt(r.get("memory_ratio_abs"), ".1f", 9) + fmt(r.get("memory_ratio_delta"), ".1f", 7)
              + fmt(s5.get("peak_rss_mb"), ".0f", 7))
    print("  n_eng: primary sources (sky sources excluded); t_eng: read+calibrate+write in the child;")
    print("  sx5: SExtractor at DETECT_THRESH 5; sxEq: at the engine-equivalent depth "
          f"(DETECT_THRESH {report.get('sex_equal_depth_thresh') or float('nan'):.2f}); ratio = t_eng / t_sex;")
    print(f"  peakMB: peak RSS of the engine child (VmHWM); dMB: minus its post-import peak; sxMB: SExtractor peak RSS")
    print(f"  peak/img, d/img: peak RSS (absolute, minus post-import baseline) / image bytes "
          f"(requirement < {MAX_MEMORY_RATIO:g})")
    traced = [r for r in results if r.get("tracemalloc_ratio") is not None]
    if traced:
        print("\nPeak of traced allocations (tracemalloc, second run of the engine child)")
        for r in traced:
            t = r["engine_traced"]
            print(f"{r['case']['name']:<22}{fmt(t.get('tracemalloc_peak_mb'), '.0f', 8)} MB"
                  f"{fmt(r['tracemalloc_ratio'], '.2f', 8)} x image")

    sc = report.get("scaling")
    if sc:
        print(f"\nScaling on {sc['size']}x{sc['size']} (engine total time vs sources)")
        print(f"{'n_stars':>9}{'n_found':>9}{'t_eng_s':>9}{'t/1k src':>9}{'t_meas':>8}{'t_sx5':>8}{'t_sxEq':>8}"
              f"{'n_sxEq':>8}{'slope':>7}")
        prev = None
        for row in sc["rows"]:
            per_k = row["t_eng_s"] / row["n_found"] * 1000 if row["n_found"] and row["t_eng_s"] else None
            local = None if prev is None else loglog_slope([prev["n_found"], row["n_found"]],
                                                           [prev["t_eng_s"], row["t_eng_s"]])
            print(fmt(row["n_stars"], "d", 9) + fmt(row["n_found"], "d", 9) + fmt(row["t_eng_s"], ".2f", 9)
                  + fmt(per_k, ".2f", 9) + fmt(row.get("t_measure_s"), ".2f", 8)
                  + fmt(row.get("t_sex5_s"), ".2f", 8) + fmt(row.get("t_sex_eq_s"), ".2f", 8)
                  + fmt(row.get("n_sex_eq"), "d", 8) + fmt(local, ".2f", 7))
            prev = row
        print("  slope: local log-log slope of engine time vs sources found, from the previous row")
        print(f"  log-log slope of engine time vs sources found: {fmt(sc.get('slope_engine_vs_found'), '.2f')}"
              f" (vs stars injected: {fmt(sc.get('slope_engine_vs_injected'), '.2f')});"
              f" measurement stage alone: {fmt(sc.get('slope_measurement_vs_found'), '.2f')};"
              f" SExtractor (equal depth): {fmt(sc.get('slope_sex_eq_vs_found'), '.2f')}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1024x1024 images with the same star densities (~1 min)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only the matching cases "
                    "(e.g. 'typical,crowded' or 'scaling')")
    ap.add_argument("--no-sextractor", action="store_true", help="skip the SExtractor comparison")
    ap.add_argument("--workdir", default=None, help="directory for the FITS files (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the FITS files and engine outputs")
    ap.add_argument("--out", default=None, help="JSON result file (default benchmarks/out/bench_part1_<mode>_<time>.json)")
    ap.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's JSON and exit")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the second engine run per image under tracemalloc (peak of traced allocations)")
    ap.add_argument("--_child", nargs=2, metavar=("FITS", "OUTDIR"), help=argparse.SUPPRESS)
    ap.add_argument("--_trace", nargs=2, metavar=("FITS", "OUTDIR"), help=argparse.SUPPRESS)
    ap.add_argument("--_simulate", nargs=3, metavar=("SIZE", "NSTARS", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        child_main(*args._child)
        return 0
    if args._trace:
        child_main(*args._trace, trace=True)
        return 0
    if args._simulate:
        simulate_main(*args._simulate)
        return 0
    if args.report:
        old = json.loads(Path(args.report).read_text())
        print(f"{old.get('mode')} run of {old.get('started')} on {old.get('machine', {}).get('cores')} cores "
              f"({old.get('machine', {}).get('cpu')}), load average {old.get('load_average_start')}")
        print_report(old["cases"], old)
        return 0

    selected = cases(args.quick)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        selected = [c for c in selected if any(k in c.name for k in keys)]
    if not selected:
        print("no case selected", file=sys.stderr)
        return 2

    sys.path.insert(0, str(ROOT))
    from calibration.measure import MeasureConfig
    from calibration.pipeline import CalibrateConfig

    engine_cfg = CalibrateConfig(do_photo_cal=False)
    radii = tuple(MeasureConfig().aperture_radii_pix)
    min_pixels = engine_cfg.detection.min_pixels

    sex_bin = None if args.no_sextractor else find_sextractor()
    if not args.no_sextractor and sex_bin is None:
        print("NOTE: SExtractor not found (/usr/bin/source-extractor missing): the comparison is skipped.\n"
              "      Install it with:  apt-get install -y source-extractor", flush=True)
    noise_factor = conv_noise_factor(GAUSS_3_5X5)
    eq_thresh = engine_cfg.detection.threshold_sigma * noise_factor

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    out_json = Path(args.out) if args.out else OUT_DIR / f"bench_part1_{'quick' if args.quick else 'full'}_{stamp}.json"

    tmp_owned = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_part1_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "benchmark": "bench_part1",
        "mode": "quick" if args.quick else "full",
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "seed": SEED,
        "mag_range": MAG_RANGE,
        "engine_config": {"threshold_sigma": engine_cfg.detection.threshold_sigma, "min_pixels": min_pixels,
                          "deblend_nthresh": engine_cfg.detection.deblend_nthresh,
                          "deblend_min_contrast": engine_cfg.detection.deblend_min_contrast,
                          "background_box_pix": engine_cfg.background.box_size_pix,
                          "background_filter_boxes": engine_cfg.background.filter_size_boxes,
                          "aperture_radii_pix": radii, "do_photo_cal": False},
        "sextractor": None,
        "sex_equal_depth_thresh": eq_thresh,
        "sex_filter_noise_factor": noise_factor,
        "cases": [],
    }
    sex_cfg = None
    if sex_bin:
        nnw = find_nnw(sex_bin)
        if nnw is None:
            print("NOTE: default.nnw not found: CLASS_STAR dropped from the SExtractor parameters.")
        sex_cfg, _, _ = sextractor_config(workdir, min_pixels=min_pixels, radii=radii, nnw=nnw,
                                          seeing_arcsec=3.0 * 0.26)
        report["sextractor"] = {"binary": sex_bin, "version": sextractor_version(sex_bin), "nnw": nnw,
                                "config": sex_cfg.read_text()}
        print(f"SExtractor: {report['sextractor']['version']} ({sex_bin})")

    print(f"{len(selected)} case(s), work dir {workdir}", flush=True)
    try:
        for case in selected:
            fits_path = workdir / f"{case.name}.fits"
            print(f"\n[{case.name}] simulating {case.size}x{case.size} with {case.n_stars} stars ...", flush=True)
            sim = simulate(case, fits_path)
            print(f"[{case.name}] simulated in {sim['simulate_s']:.1f} s; engine part 1 ...", flush=True)
            outdir = workdir / f"out_{case.name}"
            eng = run_engine(fits_path, outdir)
            if eng.get("ok"):
                print(f"[{case.name}] engine {eng['total_s']:.2f} s, {eng['n_primary']} sources, "
                      f"peak RSS {eng['peak_rss_mb']:.0f} MB", flush=True)
            else:
                print(f"[{case.name}] engine FAILED: {eng.get('error')}", flush=True)
            if not args.keep:
                shutil.rmtree(outdir, ignore_errors=True)
            row: dict = {"case": dataclasses.asdict(case), "simulation": sim, "engine": eng}
            if not args.no_tracemalloc:
                traced = run_engine(fits_path, outdir, trace=True)
                shutil.rmtree(outdir, ignore_errors=True)
                row["engine_traced"] = {k: traced.get(k) for k in (
                    "ok", "error", "tracemalloc_peak_mb", "tracemalloc_baseline_mb", "peak_rss_mb", "baseline_rss_mb")}
                if traced.get("tracemalloc_peak_mb") is not None:
                    row["tracemalloc_ratio"] = traced["tracemalloc_peak_mb"] * 2**20 / (case.size * case.size * 4)
                    print(f"[{case.name}] tracemalloc peak {traced['tracemalloc_peak_mb']:.0f} MB "
                          f"({row['tracemalloc_ratio']:.1f} x image)", flush=True)
            image_bytes = case.size * case.size * 4
            row["image_mb"] = image_bytes / 2**20
            if "peak_rss_mb" in eng:
                row["peak_delta_mb"] = eng["peak_rss_mb"] - eng["baseline_rss_mb"]
                row["memory_ratio_abs"] = eng["peak_rss_mb"] * 2**20 / image_bytes
                row["memory_ratio_delta"] = row["peak_delta_mb"] * 2**20 / image_bytes
                row["memory_ok"] = row["memory_ratio_delta"] < MAX_MEMORY_RATIO
            if sex_cfg is not None:
                for key, thresh, tag in (("sextractor", 5.0, "t5"), ("sextractor_equal_depth", eq_thresh, "teq")):
                    sx = run_sextractor(sex_bin, sex_cfg, fits_path, workdir, thresh, tag)
                    row[key] = sx
                    if sx.get("ok"):
                        print(f"[{case.name}] SExtractor DETECT_THRESH {thresh:.2f}: {sx['wall_s']:.2f} s, "
                              f"{sx['n_sources']} sources", flush=True)
                    else:
                        print(f"[{case.name}] SExtractor FAILED: {sx.get('error')}", flush=True)
                if eng.get("ok"):
                    for key, rkey in (("sextractor", "ratio_vs_sex5"), ("sextractor_equal_depth", "ratio_vs_sex_eq")):
                        if row[key].get("ok") and row[key]["wall_s"] > 0:
                            row[rkey] = eng["total_s"] / row[key]["wall_s"]
            if not args.keep:
                fits_path.unlink(missing_ok=True)
            report["cases"].append(row)
    finally:
        if tmp_owned and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    scaling = [r for r in report["cases"] if r["case"]["group"] == "scaling" and r["engine"].get("ok")]
    if scaling:
        rows = [{"n_stars": r["case"]["n_stars"], "n_found": r["engine"]["n_primary"],
                 "t_eng_s": r["engine"]["total_s"], "t_measure_s": r["engine"]["stages_s"].get("measurement"),
                 "t_sex5_s": (r.get("sextractor") or {}).get("wall_s"),
                 "t_sex_eq_s": (r.get("sextractor_equal_depth") or {}).get("wall_s"),
                 "n_sex_eq": (r.get("sextractor_equal_depth") or {}).get("n_sources")} for r in scaling]
        report["scaling"] = {
            "size": scaling[0]["case"]["size"],
            "rows": rows,
            "slope_engine_vs_found": loglog_slope([r["n_found"] for r in rows], [r["t_eng_s"] for r in rows]),
            "slope_engine_vs_injected": loglog_slope([r["n_stars"] for r in rows], [r["t_eng_s"] for r in rows]),
            "slope_measurement_vs_found": loglog_slope([r["n_found"] for r in rows], [r["t_measure_s"] for r in rows]),
            "slope_sex_eq_vs_found": loglog_slope([r["n_sex_eq"] or 0 for r in rows],
                                                  [r["t_sex_eq_s"] or 0 for r in rows]),
        }
    report["load_average_end"] = os.getloadavg()
    report["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    print_report(report["cases"], report)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults written to {out_json}")
    failed = [r["case"]["name"] for r in report["cases"] if not r["engine"].get("ok")]
    if failed:
        print(f"engine failed on: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_exec":  # before argparse: the command has its own options
        exec_main(sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
