"""Command line: ``calibrate run IMAGE.fits --out DIR [--refcat REF] [--config CONFIG.json]``.

``calibrate measure`` is the same without a reference catalogue (the first
half of the pipeline). A progress line per stage goes to stderr and the
per-stage timings are printed at the end. Exit status 2 on a calibration
error, with the stage and the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import CalibrationError


def _progress(stream):
    state = {"stage": None, "t0": time.perf_counter()}

    def report(stage: str, fraction: float) -> None:
        if stage != state["stage"]:
            state["stage"] = stage
            print(f"[{100 * fraction:5.1f}%] {stage} ...", file=stream, flush=True)

    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calibrate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("measure", "detect and measure sources"),
                            ("run", "detect, measure and calibrate against a reference catalogue")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("image", type=Path, help="FITS exposure")
        p.add_argument("--out", type=Path, required=True, help="output directory")
        p.add_argument("--hdu", default=None, help="image HDU index or name (default: first 2-D image)")
        p.add_argument("--config", type=Path, help="JSON file with configuration overrides")
        if name == "run":
            p.add_argument("--refcat", type=Path, required=True, help="reference catalogue (.fits, .csv, .parquet)")
    args = parser.parse_args(argv)

    from .io import read_exposure
    from .outputs import write_outputs
    from .pipeline import calibrate, config_from_json
    from .refcat import load_reference_catalog

    try:
        overrides = json.loads(args.config.read_text()) if args.config else {}
        config = config_from_json(overrides)
        if args.command == "measure":
            config = config_from_json({**overrides, "do_photo_cal": False})
        hdu = int(args.hdu) if args.hdu is not None and str(args.hdu).isdigit() else args.hdu
        t0 = time.perf_counter()
        print("[  0.0%] read ...", file=sys.stderr, flush=True)
        exposure = read_exposure(args.image, hdu=hdu)
        read_s = time.perf_counter() - t0
        refcat = load_reference_catalog(args.refcat) if args.command == "run" else None
        result = calibrate(exposure, config, photom_refcat=refcat, progress=_progress(sys.stderr))
        t1 = time.perf_counter()
        files = write_outputs(result, args.out)
        timings = {"read": read_s, **{k: v for k, v in result.timings_s.items() if k != "read"},
                   "write": time.perf_counter() - t1}
    except CalibrationError as exc:
        print(f"calibrate: failed in stage '{exc.stage}': {exc.message}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2
    print(f"\n{len(result.sources)} sources; outputs in {args.out}:")
    for f in files:
        print(f"  {f.name:28s} {f.description}")
    md = result.metadata
    if md.get("MAGZERO") is not None:
        print(f"MAGZERO {md['MAGZERO']:.4f}  MAGZERO_RMS {md['MAGZERO_RMS']:.4f}  MAGZERO_NOBJ {md['MAGZERO_NOBJ']}")
    for w in result.warnings:
        print(f"warning: {w}")
    print("\ntimings (s):")
    for stage, seconds in timings.items():
        print(f"  {stage:14s} {seconds:8.3f}")
    print(f"  {'total':14s} {sum(timings.values()):8.3f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
