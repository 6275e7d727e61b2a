#!/usr/bin/env python
"""Benchmark of the history pages (runs list, trends, comparison) with 100,000 runs.

Seeds the database configured by the environment (``DATABASE_URL``) with
``--runs`` calibration runs (default 100,000) of ~70,000 exposures spread over
four instruments, fifteen instrument + filter pairs and five years of nights,
with realistic statuses, review states, results (a zero point that drifts and
has cloudy nights, astrometric scatter, seeing) and stored JSON of the usual
size (engine configuration snapshot, metadata, a FITS header), plus the review
events of the reviewed runs. Then it times the pages through Django's test
client, as a member of the team that owns most of the data (visibility rules
apply) and as a superuser, and prints a table: median and slowest of
``--repeat`` requests after one warm-up, the number of SQL queries and the
response size.

Run it against PostgreSQL, in a database of its own::

    createdb -h 127.0.0.1 -U postgres calibweb_bench
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/calibweb_bench \\
        PYTHONPATH=. .venv/bin/python benchmarks/bench_history.py
    # again later: the seeded rows are kept and reused; --reseed starts over

It refuses a database whose name does not contain "bench" (it writes 100,000
rows) unless given ``--allow-any-database``. Seeding takes a few minutes; the
timings a few seconds. ``--explain`` also prints the query plans of the list
queries (PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "calibweb.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from calibweb.core import selectors  # noqa: E402
from calibweb.core.engine import validate_engine_config  # noqa: E402
from calibweb.core.models import (  # noqa: E402
    CalibrationConfig,
    CalibrationRun,
    Exposure,
    ReferenceCatalog,
    ReviewAction,
    ReviewEvent,
    ReviewState,
    RunStatus,
)

SEED = 20261201
PREFIX = "bench-"
UTC = dt.timezone.utc
START = dt.datetime(2021, 1, 1, tzinfo=UTC)
YEARS = 5
#: instrument -> (share of the exposures, filters, zero point of each filter for 1 s, median FWHM in pix)
INSTRUMENTS = {
    "WFC-1": (0.45, {"g": 26.10, "r": 26.35, "i": 26.05, "z": 25.20}, 3.4),
    "WFC-2": (0.30, {"u": 23.80, "g": 25.90, "r": 26.20, "i": 25.95}, 3.9),
    "NIRCAM-X": (0.15, {"J": 24.60, "H": 24.90, "Ks": 24.30}, 2.6),
    "SPEC-IMG": (0.10, {"V": 25.10, "R": 25.30}, 4.5),
}
HEADER_CARDS = 40


# ----------------------------------------------------------------------------- seeding


@contextlib.contextmanager
def explicit_timestamps():
    """Let bulk_create keep the given ``queued_at`` / ``uploaded_at`` / ``created_at`` (auto_now_add)."""
    fields = [CalibrationRun._meta.get_field("queued_at"), Exposure._meta.get_field("uploaded_at"),
              ReviewEvent._meta.get_field("created_at")]
    for f in fields:
        f.auto_now_add = False
    try:
        yield
    finally:
        for f in fields:
            f.auto_now_add = True


def make_people():
    User = get_user_model()
    users = {}
    for name in ("alice", "bob", "carol", "dave", "rita", "erin", "frank"):
        users[name], _ = User.objects.get_or_create(username=PREFIX + name)
    users["admin"], _ = User.objects.get_or_create(username=PREFIX + "admin",
                                                   defaults={"is_staff": True, "is_superuser": True})
    team_a, _ = Group.objects.get_or_create(name=PREFIX + "team-a")
    team_b, _ = Group.objects.get_or_create(name=PREFIX + "team-b")
    reviewers, _ = Group.objects.get_or_create(name="reviewers")
    for name in ("alice", "bob", "carol", "dave", "rita"):
        users[name].groups.add(team_a)
    for name in ("erin", "frank"):
        users[name].groups.add(team_b)
    users["rita"].groups.add(reviewers)
    return users


def make_configs(user):
    configs = []
    for name, config in (("default", {}), ("deep", {"detection": {"threshold_sigma": 3.0}}),
                         ("fast", {"cosmic_rays": {"enabled": False}})):
        c, _ = CalibrationConfig.objects.get_or_create(name=PREFIX + name, version=1,
                                                       defaults={"config": config, "created_by": user})
        configs.append((c, validate_engine_config(config)))
    refcat, _ = ReferenceCatalog.objects.get_or_create(name=PREFIX + "refcat", defaults={"location": "none.parquet"})
    return configs, refcat


def header(rng, instrument: str, filter_name: str, date_obs: dt.datetime, exptime: float) -> list:
    cards = [["SIMPLE", True, "conforms to FITS standard"], ["BITPIX", -32, "array data type"],
             ["NAXIS", 2, ""], ["NAXIS1", 4096, ""], ["NAXIS2", 4096, ""], ["INSTRUME", instrument, "instrument"],
             ["FILTER", filter_name, "filter"], ["EXPTIME", exptime, "[s] exposure time"],
             ["DATE-OBS", date_obs.isoformat(), "UTC start"], ["OBJECT", f"field-{rng.integers(1000)}", ""]]
    for i in range(HEADER_CARDS - len(cards)):
        cards.append([f"HIERARCH BENCH KEY{i:02d}", float(rng.normal()), "telemetry value of the observatory"])
    return cards


def metadata(mz: float, rms: float, nobj: int, astrom: float, fwhm: float) -> dict:
    md = {"MAGZERO": mz, "MAGZERO_RMS": rms, "MAGZERO_NOBJ": nobj, "SFM_ASTROM_OFFSET_STD": astrom,
          "PSF_FWHM_PIX": fwhm, "PHOTOM_BAND": "r", "PHOTOM_FLUX_FIELD": "psf_flux"}
    for i in range(25):
        md[f"QA_FIGURE_{i:02d}"] = round(mz * 0.01 * i, 6)
    return md


def seed(n_runs: int, *, batch: int = 2000) -> None:
    rng = np.random.default_rng(SEED)
    users = make_people()
    configs, refcat = make_configs(users["alice"])
    team_a = [users[n] for n in ("alice", "bob", "carol", "dave")]
    team_b = [users["erin"], users["frank"]]
    rita = users["rita"]

    n_exposures = int(n_runs * 0.7)
    names = list(INSTRUMENTS)
    shares = np.array([INSTRUMENTS[n][0] for n in names])
    instrument_idx = rng.choice(len(names), size=n_exposures, p=shares / shares.sum())
    # Exposures in time order: nights over YEARS years, 00:00-10:00 UTC.
    seconds = np.sort(rng.uniform(0, YEARS * 365.25 * 86400, n_exposures))
    seconds = np.floor(seconds / 86400) * 86400 + rng.uniform(0, 10 * 3600, n_exposures)
    clouds = rng.random(n_exposures) < 0.02

    t0 = time.perf_counter()
    exposure_ids: list[int] = []
    facts: list[tuple] = []
    with explicit_timestamps():
        for lo in range(0, n_exposures, batch):
            rows = []
            for i in range(lo, min(lo + batch, n_exposures)):
                inst = names[instrument_idx[i]]
                filters = INSTRUMENTS[inst][1]
                filt = list(filters)[rng.integers(len(filters))]
                date_obs = START + dt.timedelta(seconds=float(seconds[i]))
                exptime = float(rng.choice([30.0, 60.0, 120.0, 300.0]))
                owner = team_a[rng.integers(len(team_a))] if rng.random() < 0.8 else team_b[rng.integers(2)]
                rows.append(Exposure(
                    file=f"exposures/bench/{i}.fits", original_filename=f"{inst}_{filt}_{i:06d}.fits",
                    size_bytes=67_115_520, sha256=f"{PREFIX}{i:058d}", nx=4096, ny=4096, instrument=inst,
                    filter_name=filt, exptime_s=exptime, date_obs=date_obs,
                    mjd_obs=59215.0 + float(seconds[i]) / 86400.0, has_wcs=True, ra_deg=float(rng.uniform(0, 360)),
                    dec_deg=float(rng.uniform(-30, 60)), object_name="bench field",
                    header=header(rng, inst, filt, date_obs, exptime), uploaded_by=owner,
                    uploaded_at=date_obs + dt.timedelta(hours=12),
                ))
                facts.append((inst, filt, float(seconds[i]), bool(clouds[i]), owner, date_obs))
            with transaction.atomic():
                created = Exposure.objects.bulk_create(rows)
            exposure_ids += [e.pk for e in created]
        print(f"  {n_exposures} exposures in {time.perf_counter() - t0:.0f} s", flush=True)

        # One run per exposure, then reruns of a random 30 % until n_runs.
        which = np.concatenate([np.arange(n_exposures), rng.choice(n_exposures, n_runs - n_exposures)])
        which.sort(kind="stable")
        t0 = time.perf_counter()
        n_done = 0
        for lo in range(0, n_runs, batch):
            rows = []
            for k in range(lo, min(lo + batch, n_runs)):
                i = int(which[k])
                inst, filt, sec, cloudy, owner, date_obs = facts[i]
                u = rng.random()
                status = (RunStatus.SUCCEEDED if u < 0.88 else RunStatus.FAILED if u < 0.96 else
                          RunStatus.CANCELLED if u < 0.98 else RunStatus.QUEUED if u < 0.99 else RunStatus.RUNNING)
                config, snapshot = configs[0] if rng.random() < 0.7 else configs[1 + rng.integers(2)]
                queued = date_obs + dt.timedelta(hours=float(rng.uniform(12, 24 * 30)))
                run = CalibrationRun(
                    exposure_id=exposure_ids[i], config=config, config_snapshot=snapshot, refcat=refcat,
                    created_by=owner, status=status, stage="done" if status == RunStatus.SUCCEEDED else "detection",
                    progress=100.0 if status == RunStatus.SUCCEEDED else 40.0, queued_at=queued,
                    engine_version="0.1.0", timings={"background": 1.2, "detection": 3.4, "photocal": 0.2},
                )
                if status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED):
                    run.started_at = queued + dt.timedelta(seconds=5)
                    run.finished_at = queued + dt.timedelta(seconds=float(rng.uniform(20, 200)))
                if status == RunStatus.FAILED:
                    run.error_stage, run.error_type = "astrometry", "AstrometryError"
                    run.error_message = "too few matches between the sources and the reference catalogue"
                if status == RunStatus.SUCCEEDED:
                    years = sec / (365.25 * 86400)
                    zp = INSTRUMENTS[inst][1][filt] - 0.02 * years + 0.03 * np.sin(2 * np.pi * years)
                    zp += rng.normal(0, 0.02) - (rng.uniform(0.1, 1.5) if cloudy else 0.0)
                    fwhm = INSTRUMENTS[inst][2] * float(np.exp(rng.normal(0, 0.2)))
                    astrom = 0.06 * float(np.exp(rng.normal(0, 0.3)))
                    rms, nobj = float(rng.uniform(0.002, 0.01)), int(rng.integers(50, 500))
                    run.magzero, run.magzero_rms, run.magzero_nobj = float(zp), rms, nobj
                    run.photom_scatter_mag = rms * np.sqrt(nobj)
                    run.astrom_offset_mean_arcsec, run.astrom_offset_std_arcsec = astrom * 0.8, astrom
                    run.n_sources, run.n_astrom_matches, run.n_photom_matches = nobj * 10, nobj * 3, nobj
                    run.psf_fwhm_pix, run.sky_noise_adu, run.background_adu = fwhm, 12.0, 1000.0
                    run.metadata = metadata(float(zp), rms, nobj, astrom, fwhm)
                    v = rng.random()
                    state = (ReviewState.APPROVED if v < 0.55 else ReviewState.REJECTED if v < 0.60 else
                             ReviewState.NEEDS_ATTENTION if v < 0.65 else ReviewState.UNREVIEWED)
                elif status == RunStatus.FAILED and rng.random() < 0.3:
                    state = ReviewState.REJECTED
                else:
                    state = ReviewState.UNREVIEWED
                if state != ReviewState.UNREVIEWED:
                    run.review_state, run.reviewed_by = state, rita
                    run.reviewed_at = queued + dt.timedelta(days=float(rng.uniform(0.5, 5)))
                rows.append(run)
            with transaction.atomic():
                created = CalibrationRun.objects.bulk_create(rows)
                events = [ReviewEvent(run_id=r.pk, user=rita, username=rita.username, action=ReviewAction.REVIEW,
                                      state=r.review_state, previous_state=ReviewState.UNREVIEWED,
                                      comment="checked the zero point and the residuals", created_at=r.reviewed_at)
                          for r in created if r.review_state != ReviewState.UNREVIEWED]
                ReviewEvent.objects.bulk_create(events)
            n_done += len(rows)
            if n_done % 20000 < batch:
                print(f"  {n_done} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    if connection.vendor == "postgresql":
        # What autovacuum does soon after a bulk load: statistics for the planner and the
        # visibility map that lets the list queries read ids from the indexes alone.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def clear() -> None:
    User = get_user_model()
    bench_users = User.objects.filter(username__startswith=PREFIX)
    CalibrationRun.objects.filter(exposure__uploaded_by__in=bench_users).delete()
    Exposure.objects.filter(uploaded_by__in=bench_users).delete()


def bench_run_count() -> int:
    return CalibrationRun.objects.filter(exposure__sha256__startswith=PREFIX).count()


# ----------------------------------------------------------------------------- timing


def time_page(client: Client, url: str, repeat: int) -> dict:
    client.get(url)  # warm-up (connection, template and plan caches)
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}")
    return {"url": url, "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times),
            "queries": len(queries), "kb": len(response.content) / 1024}


def explain(user, filters: selectors.RunFilters, sort: str, offset: int = 0) -> str:
    """Plans of what a list page runs: the count, then the page's ids (see ``calibweb.core.paging``)."""
    qs = selectors.runs_for_list(user, filters, sort=sort)
    count_sql, params = qs.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN ANALYZE SELECT COUNT(*) FROM ({count_sql}) AS page", params)
        count_plan = "\n".join(row[0] for row in cursor.fetchall())
    ids_plan = qs.values_list("pk", flat=True)[offset:offset + 50].explain(analyze=True)
    return f"count:\n{count_plan}\nids of the page:\n{ids_plan}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs to seed (default 100000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page (default 5)")
    parser.add_argument("--reseed", action="store_true", help="delete the benchmark's rows and seed again")
    parser.add_argument("--explain", action="store_true", help="print the plans of the list queries")
    parser.add_argument("--allow-any-database", action="store_true",
                        help="seed even if the database name does not contain 'bench'")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    db = connection.settings_dict
    if "bench" not in str(db["NAME"]) and not args.allow_any_database:
        print(f"refusing to seed {args.runs} runs into database {db['NAME']!r}: use a database whose name "
              "contains 'bench' (see the docstring) or pass --allow-any-database", file=sys.stderr)
        return 2
    print(f"database: {connection.vendor} {db['NAME']}")
    call_command("migrate", verbosity=0)
    have = bench_run_count()
    if args.reseed or have != args.runs:
        if have:
            print(f"removing the {have} benchmark runs found")
            clear()
        print(f"seeding {args.runs} runs")
        t0 = time.perf_counter()
        seed(args.runs)
        print(f"seeded in {time.perf_counter() - t0:.0f} s")
    else:
        print(f"reusing the {have} seeded runs (--reseed to start over)")

    User = get_user_model()
    member = User.objects.get(username=PREFIX + "alice")
    admin = User.objects.get(username=PREFIX + "admin")
    visible = selectors.runs_visible(member).count()
    pages = -(-visible // 50)
    print(f"{CalibrationRun.objects.count()} runs in the database, {visible} visible to {member.username} "
          f"({pages} pages of 50)")
    filtered = "instrument=WFC-1&filter_name=r&review_state=approved&date_from=2024-01-01&date_to=2024-06-30"
    cases = [
        ("runs list, first page", member, "/runs/"),
        ("runs list, first page (superuser)", admin, "/runs/"),
        ("runs list, filtered (instrument, filter, review, 6 months)", member, f"/runs/?{filtered}"),
        ("runs list, filtered by status=failed", member, "/runs/?status=failed"),
        ("runs list, sorted by observation date", member, "/runs/?sort=-date_obs"),
        ("runs list, sorted by MAGZERO", member, "/runs/?sort=magzero"),
        (f"runs list, deep page ({pages - 10} of {pages})", member, f"/runs/?page={pages - 10}"),
        ("trends, one instrument + filter", member, "/runs/trends/?instrument=WFC-1&filter_name=r"),
        ("trends, one instrument + filter, one year", member,
         "/runs/trends/?instrument=WFC-1&filter_name=r&date_from=2024-01-01&date_to=2024-12-31"),
        ("trends, everything (10,000 most recent drawn)", member, "/runs/trends/"),
        ("trends CSV, one instrument + filter", member, "/runs/trends.csv?instrument=WFC-1&filter_name=r"),
    ]
    ids = list(selectors.runs_visible(member).filter(status=RunStatus.SUCCEEDED).values_list("pk", flat=True)[:3])
    cases.append(("comparison of 3 runs", member, f"/runs/compare/?ids={','.join(map(str, ids))}"))
    clients = {}
    results = []
    for label, user, url in cases:
        if user.pk not in clients:
            clients[user.pk] = Client()
            clients[user.pk].force_login(user)
        r = time_page(clients[user.pk], url, args.repeat)
        r["case"] = label
        results.append(r)
        print(f"  {label:<58} {r['median_ms']:8.1f} ms  (max {r['max_ms']:7.1f})  {r['queries']:3d} queries  "
              f"{r['kb']:8.1f} kB", flush=True)

    print()
    print(f"| page ({args.runs:,} runs, {connection.vendor}) | median (ms) | slowest (ms) | queries | size (kB) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['median_ms']:.0f} | {r['max_ms']:.0f} | {r['queries']} | {r['kb']:.0f} |")
    print(f"\n{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Django {django.get_version()}, {args.repeat} requests per page "
          "after one warm-up")
    if args.explain and connection.vendor == "postgresql":
        for title, filters, sort, offset in (
                ("first page", selectors.RunFilters(), selectors.DEFAULT_SORT, 0),
                ("deep page", selectors.RunFilters(), selectors.DEFAULT_SORT, (pages - 10) * 50),
                ("filtered", selectors.RunFilters(instrument="WFC-1", filter_name="r", review_state="approved"),
                 selectors.DEFAULT_SORT, 0),
                ("by observation date", selectors.RunFilters(), "-date_obs", 0)):
            print(f"\n--- plan: {title}\n{explain(member, filters, sort, offset)}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "vendor": connection.vendor, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
