"""In Debian's chromium: log in, upload, start a run, watch it finish, read MAGZERO, download."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from calibweb.core.models import ReferenceCatalog

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.slow]

CHROMIUM = os.environ.get("CALIBWEB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def browser_page():
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: bin/test installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        context = browser.new_context(accept_downloads=True, viewport={"width": 1300, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.console_errors = errors
        yield page
        context.close()
        browser.close()


def test_upload_run_and_download_in_the_browser(
    live_server, celery_worker_process, browser_page, user, default_config, tmp_path
):
    from calibration.testing import make_reference_catalog, simulate_exposure, small_field_config, write_fits, write_reference_catalog

    sim = simulate_exposure(small_field_config(seed=5))
    image = tmp_path / "night1_r.fits"
    write_fits(sim, image)
    ref = tmp_path / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=5), ref)
    ReferenceCatalog.objects.create(name="sim-refcat", location=str(ref), bands=["g", "r"])

    page = browser_page
    page.goto(live_server.url + "/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw-alice-123")
    page.click("#login-button")
    page.wait_for_url(re.compile(r"/exposures/$"))

    page.set_input_files("#file-input", str(image))
    link = page.locator("#upload-results a", has_text="open exposure")
    link.wait_for(timeout=30_000)
    assert page.locator("#upload-results progress").first.get_attribute("value") == "100"
    link.click()
    page.wait_for_url(re.compile(r"/exposures/\d+/$"))
    assert page.locator("#facts").inner_text().count("512 × 512") == 1

    page.select_option("select[name=refcat]", label="sim-refcat")
    page.click("#start-run-button")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    # The page updates itself (no manual reload) until the run ends.
    page.locator("#results, #run-error").first.wait_for(timeout=180_000)
    if page.locator("#run-error").count():
        pytest.fail(f"the run failed: {page.locator('#run-error').inner_text()}")
    assert page.locator("#run-status").inner_text() == "Succeeded"
    magzero = page.locator("#magzero").inner_text()
    value = float(magzero.split()[0])
    assert abs(value - (sim.config.zero_point_mag - 2.5 * __import__("math").log10(sim.config.exptime_s))) < 0.05

    with page.expect_download() as info:
        page.click("a.download:text('src.csv')")
    download = info.value
    path = tmp_path / "downloaded.csv"
    download.save_as(path)
    assert path.read_text().startswith("id,")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-page.png"), full_page=True)
    assert page.console_errors == []
