"""Diagnostics pages in Debian's chromium: the plots render without console errors, the
screenshot is not blank, and the load time of the residual plots is measured (printed, not
asserted: a wall-clock limit would make the suite flaky on a busy machine)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from calibration.tables import read_table, write_table
from calibweb.core import diagnostics, engine, reports, services
from calibweb.core.models import CalibrationRun, ReferenceCatalog, RunOutput, RunStatus
from test_browser import ARTIFACTS, browser_page  # noqa: F401  (the fixture is used by name)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def login(page, base_url: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw-alice-123")
    page.click("#login-button")
    page.wait_for_url(re.compile(r"/exposures/$"))


def open_tab(page, name: str, *, timeout_ms: float = 60_000) -> float:
    """Open a diagnostics tab, wait until its plots are painted; the page's own load time (ms)."""
    page.click(f"#tab-{name}")
    panel = page.locator(f"#diag-{name}")
    page.wait_for_function(
        "name => ['ready', 'failed'].includes(document.getElementById('diag-' + name).dataset.state)",
        arg=name, timeout=timeout_ms,
    )
    assert panel.get_attribute("data-state") == "ready", panel.locator(".diag-state").inner_text()
    return float(panel.get_attribute("data-load-ms"))


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 24))


def add_output(run: CalibrationRun, path: Path) -> None:
    RunOutput.objects.create(run=run, name=path.name, kind=path.stem, format=path.suffix[1:],
                             file=f"runs/{run.pk}/{path.name}", size_bytes=path.stat().st_size)


def synthetic_astrometric_matches(n: int, *, x, y, ref_ra=None, ref_dec=None, seed: int = 1) -> Table:
    """Matches in the ``astromMatchFull`` schema: 15 mas Gaussian residuals, 2% clipped, 10% reserved."""
    rng = np.random.default_rng(seed)
    t = Table()
    t["ref_id"] = np.arange(n, dtype=np.int64) + 1_000_000
    t["src_id"] = np.arange(1, n + 1, dtype=np.int64)
    t["src_x"], t["src_y"] = np.asarray(x, float), np.asarray(y, float)
    t["dra_mas"] = rng.normal(0, 15, n)
    t["ddec_mas"] = rng.normal(0, 15, n)
    clipped = rng.random(n) < 0.02
    t["dra_mas"][clipped] *= 10
    t["ref_ra"] = np.asarray(ref_ra, float) if ref_ra is not None else 150.0 - t["src_x"] * 0.26 / 3600
    t["ref_dec"] = np.asarray(ref_dec, float) if ref_dec is not None else 2.2 + t["src_y"] * 0.26 / 3600
    t["src_ra"] = t["ref_ra"] - t["dra_mas"] / 3.6e6 / np.cos(np.radians(t["ref_dec"]))
    t["src_dec"] = t["ref_dec"] - t["ddec_mas"] / 3.6e6
    t["distance_arcsec"] = np.hypot(t["dra_mas"], t["ddec_mas"]) / 1000
    t["initial_distance_arcsec"] = rng.uniform(0.2, 2.0, n)
    reserved = ~clipped & (rng.random(n) < 0.1)
    t["used"], t["clipped"], t["reserved"] = ~clipped & ~reserved, clipped, reserved
    t["ref_mag"] = rng.uniform(14, 22, n)
    return t


def test_diagnostics_of_a_real_run_render_in_the_browser(
    live_server, transactional_db, browser_page, user, default_config, tmp_path, monkeypatch,  # noqa: F811
    report_figure,
):
    from calibration.testing import make_reference_catalog, simulate_exposure, small_field_config, write_fits, write_reference_catalog
    from calibweb.core import tasks

    monkeypatch.setattr(tasks.calibrate_run, "apply_async", lambda *a, **k: None)  # run in-process below
    sim = simulate_exposure(small_field_config(seed=5))
    image = tmp_path / "night1_r.fits"
    write_fits(sim, image)
    ref = tmp_path / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=5), ref)
    refcat = ReferenceCatalog.objects.create(name="sim-refcat", location=str(ref), bands=["g", "r"])
    exposure = services.exposure_create(user=user, uploaded_file=SimpleUploadedFile(image.name, image.read_bytes())).exposure
    run = services.run_create(user=user, exposure=exposure, config=default_config, refcat=refcat)
    assert engine.execute_run(run.pk, hostname="browser-test") == RunStatus.SUCCEEDED, \
        CalibrationRun.objects.get(pk=run.pk).error_message
    run.refresh_from_db()
    if not run.outputs.filter(name="astromMatchFull.parquet").exists():
        # No astrometric fit in this engine (or it failed): stand-in matches at the
        # photometric matches' positions, so that the astrometry plots render too.
        photom = read_table(Path(run.outputs.get(name="srcMatchFull.parquet").file.path))
        path = Path(settings.MEDIA_ROOT) / "runs" / str(run.pk) / "astromMatchFull.parquet"
        write_table(synthetic_astrometric_matches(len(photom), x=photom["src_x"], y=photom["src_y"],
                                                  ref_ra=photom["ref_ra"], ref_dec=photom["ref_dec"]), path)
        add_output(run, path)

    page = browser_page
    login(page, live_server.url)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    assert page.locator("#results").is_visible() and page.locator("#qa-summary").is_visible()
    assert "MAGZERO_RMS" in page.locator("#qa-summary").inner_text()
    astrometry_ms = open_tab(page, "astrometry")
    assert page.evaluate("Bokeh.version") == __import__("bokeh").__version__
    # Box-select (the active drag) across the middle of the first plot: the stars land in the
    # source every scatter plot shares, so they are highlighted in all of them.
    box = page.locator("#bk-astrometry canvas").first.bounding_box()
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.7 * box["height"], steps=5)
    page.mouse.up()
    selected = page.evaluate(
        "Bokeh.documents.map(d => d.get_model_by_name('astrometry_matches')).filter(m => m)[0].selected.indices.length")
    assert selected > 0
    ARTIFACTS.mkdir(exist_ok=True)
    shot = page.locator("#bk-astrometry").screenshot(path=str(ARTIFACTS / "diagnostics.png"))
    assert distinct_colours(shot) > 50, "the astrometry plots look blank"
    photometry_ms = open_tab(page, "photometry")
    shot = page.locator("#bk-photometry").screenshot(path=str(ARTIFACTS / "diagnostics-photometry.png"))
    assert distinct_colours(shot) > 50, "the photometry plots look blank"
    image_ms = open_tab(page, "image")
    shot = page.locator("#bk-image").screenshot(path=str(ARTIFACTS / "diagnostics-image.png"))
    assert distinct_colours(shot) > 50, "the image panels look blank"
    page.screenshot(path=str(ARTIFACTS / "diagnostics-page.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#report-download")
    report = tmp_path / "report.html"
    download.value.save_as(report)
    html = report.read_text()
    assert download.value.suggested_filename == f"run{run.pk}_report.html"
    assert "Bokeh" in html and not re.search(r"<script[^>]*\ssrc=[\"']?(https?:)?//", html)
    report_figure(f"[diagnostics] real run ({run.n_sources} sources): astrometry {astrometry_ms:.0f} ms, "
          f"photometry {photometry_ms:.0f} ms, image {image_ms:.0f} ms (request to painted, cold cache)")
    assert page.console_errors == []


def test_residual_plots_of_fifty_thousand_matches_load_time(
    live_server, transactional_db, browser_page, user, make_fits, report_figure  # noqa: F811
):
    n = 50_000
    path = make_fits("big.fits")
    exposure = services.exposure_create(user=user, uploaded_file=SimpleUploadedFile(path.name, path.read_bytes())).exposure
    run = CalibrationRun.objects.create(exposure=exposure, created_by=user, status=RunStatus.SUCCEEDED,
                                        metadata={"ASTROM_N_MATCHES": n})
    directory = Path(settings.MEDIA_ROOT) / "runs" / str(run.pk)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(2)
    matches = synthetic_astrometric_matches(n, x=rng.uniform(0, 4095, n), y=rng.uniform(0, 4095, n))
    write_table(matches, directory / "astromMatchFull.parquet")
    (directory / "metadata.json").write_text(json.dumps({"metadata": {"ASTROM_N_MATCHES": n}, "timings_s": {}}))
    for file in sorted(directory.iterdir()):
        add_output(run, file)

    page = browser_page
    login(page, live_server.url)

    def view_astrometry(reload: bool = False) -> tuple[float, float]:
        """(load time the page measured: request to painted, navigation to painted) in ms."""
        t0 = time.perf_counter()
        if reload:
            page.reload()
        else:
            page.goto(f"{live_server.url}/runs/{run.pk}/#diag-astrometry")
        page.wait_for_function("document.getElementById('diag-astrometry').dataset.state === 'ready'",
                               timeout=120_000)
        return (float(page.locator("#diag-astrometry").get_attribute("data-load-ms")),
                (time.perf_counter() - t0) * 1000)

    # What a person gets: the worker builds the diagnostics as soon as a run succeeds (engine.execute_run).
    reports.warm(run)
    first_ms, first_wall_ms = view_astrometry()
    shot = page.locator("#bk-astrometry").screenshot(path=str(ARTIFACTS / "diagnostics-50k.png"))
    assert distinct_colours(shot) > 50
    timings = page.evaluate("window.calibwebDiagnostics.timings.astrometry")
    # A run nobody prebuilt (older plotting version): the server builds the Bokeh item on request.
    for stale in (directory / diagnostics.CACHE_DIR).glob("astrometry-*.json"):
        stale.unlink()
    cold_ms, cold_wall_ms = view_astrometry(reload=True)
    report_figure(f"[diagnostics] {n} astrometric matches: residual plots of the prebuilt run loaded in {first_ms:.0f} ms "
          f"(fetch {timings['fetch_ms']:.0f} ms; navigation to painted {first_wall_ms:.0f} ms); built on request "
          f"{cold_ms:.0f} ms (navigation to painted {cold_wall_ms:.0f} ms)")
    assert page.console_errors == []
