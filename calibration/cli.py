"""Command line: ``calibrate run IMAGE.fits --refcat REF [--photo-refcat REF] [--config CONFIG.json] --out DIR``.

``calibrate measure`` is the same without a reference catalogue (the first
half of the pipeline). A progress line per stage goes to stderr and the
per-stage timings are printed at the end. Exit status 2 on a calibration
error, with the stage and the reason on stderr.

``calibrate refcat ingest TABLE --name NAME --out DIR`` turns a table into a
HATS reference catalogue (same exit status on failure).
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
            p.add_argument("--refcat", required=True,
                           help="astrometric (and, without --photo-refcat, photometric) reference catalogue: "
                                "a HATS directory or URL, or a .fits/.csv/.parquet table")
            p.add_argument("--photo-refcat", default=None,
                           help="separate photometric reference catalogue (same forms as --refcat)")
    _add_refcat_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "refcat":
        return _refcat_command(args)

    from .io import read_exposure
    from .outputs import write_outputs
    from .pipeline import calibrate, config_from_json
    from .refcat import load_for_exposure

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
        astrom_refcat = photom_refcat = None
        if args.command == "run":
            astrom_refcat = photom_refcat = load_for_exposure(args.refcat, exposure)
            if args.photo_refcat:
                photom_refcat = load_for_exposure(args.photo_refcat, exposure)
        result = calibrate(exposure, config, astrom_refcat=astrom_refcat, photom_refcat=photom_refcat, in_place=True,
                           progress=_progress(sys.stderr))
        t1 = time.perf_counter()
        files = write_outputs(result, args.out)
        timings = {"read": read_s, **{k: v for k, v in result.timings_s.items() if k != "read"},
                   "write": time.perf_counter() - t1}
    except (CalibrationError, OSError, json.JSONDecodeError) as exc:
        return _fail(exc)
    print(f"\n{len(result.sources)} sources; outputs in {args.out}:")
    for f in files:
        print(f"  {f.name:28s} {f.description}")
    md = result.metadata
    if md.get("SFM_ASTROM_OFFSET_MEAN") is not None:
        print(f"astrometry: {md.get('ASTROMETRY')}, {md.get('ASTROM_N_USED')} stars, offset mean "
              f"{1000 * md['SFM_ASTROM_OFFSET_MEAN']:.1f} mas, std {1000 * md['SFM_ASTROM_OFFSET_STD']:.1f} mas")
    if md.get("MAGZERO") is not None:
        print(f"MAGZERO {md['MAGZERO']:.4f}  MAGZERO_RMS {md['MAGZERO_RMS']:.4f}  MAGZERO_NOBJ {md['MAGZERO_NOBJ']}")
    for w in result.warnings:
        print(f"warning: {w}")
    print("\ntimings (s):")
    for stage, seconds in timings.items():
        print(f"  {stage:14s} {seconds:8.3f}")
    print(f"  {'total':14s} {sum(timings.values()):8.3f}")
    return 0


def _fail(exc: Exception) -> int:
    """One line on stderr naming the stage and the reason; exit status 2."""
    if isinstance(exc, CalibrationError):
        print(f"calibrate: failed in stage '{exc.stage}': {exc.message}", file=sys.stderr)
    else:
        print(f"calibrate: {exc}", file=sys.stderr)
    return 2


def _add_refcat_parser(sub) -> None:
    """``calibrate refcat ingest TABLE --name NAME --out DIR``: a table becomes a HATS catalogue."""
    refcat = sub.add_parser("refcat", help="reference catalogue tools")
    refcat_sub = refcat.add_subparsers(dest="refcat_command", required=True)
    p = refcat_sub.add_parser(
        "ingest", help="turn a FITS, CSV or Parquet table into a HATS catalogue",
        description="Write TABLE as the HATS catalogue OUT/NAME (HEALPix-sharded Parquet, readable by hats and "
                    "lsdb). Recognised columns: ra/dec (deg) with <band>_mag/<band>_magErr; LSST coord_ra/coord_dec "
                    "(rad) with <band>_flux/<band>_fluxErr (nJy); Gaia ra/dec/phot_g_mean_mag...; optional "
                    "pmra/pmdec (mas/yr) and an epoch column. Other names need --column-map.")
    p.add_argument("table", type=Path, help="input table (.fits, .csv, .ecsv, .parquet)")
    p.add_argument("--name", required=True, help="catalogue name (the directory created under --out)")
    p.add_argument("--out", type=Path, required=True, help="directory the catalogue is written in")
    p.add_argument("--column-map", help='JSON object, or a file holding one, e.g. \'{"ra": "RA_ICRS", "dec": '
                                        '"DE_ICRS", "mags": [["g", "gmag", "e_gmag"]]}\'')
    p.add_argument("--epoch", help="epoch of the positions when the table has no epoch column: MJD, Julian year "
                                   "or J2016.0")
    p.add_argument("--max-rows-per-partition", type=int, default=None,
                   help="most rows in one HEALPix partition (default 100000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing catalogue of that name")


def _refcat_command(args) -> int:
    """Run ``calibrate refcat ...``; exit status 2 on a calibration error."""
    from .configbase import config_from_dict
    from .refcat import ingest_reference_catalog
    from .refcat_hats import HatsWriteConfig, open_hats_catalog

    try:
        column_map = None
        if args.column_map:
            text = args.column_map.strip()
            column_map = json.loads(text if text.startswith("{") else Path(text).read_text())
        overrides = {} if args.max_rows_per_partition is None else {
            "max_rows_per_partition": args.max_rows_per_partition}
        t0 = time.perf_counter()
        path = ingest_reference_catalog(args.table, args.out, name=args.name, column_map=column_map,
                                        epoch=args.epoch, config=config_from_dict(HatsWriteConfig, overrides),
                                        overwrite=args.overwrite)
        elapsed = time.perf_counter() - t0
        # Re-open through hats (properties, partitions, schema; no data): what a run will see.
        cat = open_hats_catalog(path)
    except (CalibrationError, OSError, json.JSONDecodeError) as exc:
        return _fail(exc)
    bands = [c[: -len("_mag")] for c in cat.columns if c.endswith("_mag")]
    epoch = "unknown" if cat.epoch_mjd is None else f"MJD {cat.epoch_mjd:.3f}"
    if cat.epoch_mjd is None and "epoch_mjd" in cat.columns:
        epoch = "per row (epoch_mjd column)"
    print(f"HATS catalogue {path}")
    print(f"  {cat.total_rows} rows in {cat.n_partitions} partitions; bands {', '.join(bands) or 'none'}")
    print(f"  proper motions {'yes' if 'pmra' in cat.columns else 'no'}; epoch {epoch}; written in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
