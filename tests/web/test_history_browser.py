"""History and review in Debian's chromium: the trend plots and the side-by-side residual plots
render without console errors, and a reviewer approves a run with the form."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
from django.contrib.auth.models import Group

from calibweb.core.models import ReviewEvent, ReviewState
from factories import make_exposure, make_run
from test_browser import ARTIFACTS, browser_page  # noqa: F401  (the fixture is used by name)
from test_diagnostics_browser import distinct_colours, login

pytestmark = [pytest.mark.browser, pytest.mark.slow]

UTC = dt.timezone.utc


def wait_ready(page, selector: str, timeout_ms: float = 60_000) -> None:
    page.wait_for_function(
        "s => ['ready', 'failed'].includes((document.querySelector(s) || {dataset: {}}).dataset.state)",
        arg=selector, timeout=timeout_ms,
    )
    element = page.locator(selector)
    assert element.get_attribute("data-state") == "ready", element.inner_text()


def test_trends_compare_and_review_in_the_browser(live_server, transactional_db, browser_page, user,  # noqa: F811
                                                   make_fits):
    from test_diagnostics import make_run as make_run_with_outputs

    user.groups.add(Group.objects.get_or_create(name="reviewers")[0])
    rng = np.random.default_rng(3)
    runs = []
    for night in range(40):
        exposure = make_exposure(user, filter_name="r" if night % 2 else "g",
                                 date_obs=dt.datetime(2026, 2, 1, tzinfo=UTC) + dt.timedelta(days=night))
        runs.append(make_run(exposure, magzero=25.0 + rng.normal(0, 0.02) - (0.7 if night == 33 else 0.0),
                             astrom_offset_std_arcsec=0.05, psf_fwhm_pix=3.0))
    with_outputs = make_run_with_outputs(user, make_fits)
    other = make_run(with_outputs.exposure)

    page = browser_page
    login(page, live_server.url)
    page.goto(f"{live_server.url}/runs/trends/")
    wait_ready(page, "#bk-trends")
    shot = page.locator("#bk-trends").screenshot(path=str(ARTIFACTS / "trends.png"))
    assert distinct_colours(shot) > 20
    assert page.locator("#outliers tbody tr").count() == 1
    # Clicking a point opens its run: the outlier (night 33), at its place on the canvas.
    point = page.evaluate("""() => {
        const doc = Bokeh.documents[0];
        const figure = doc.get_model_by_name("magzero_trend");
        const data = doc.get_model_by_name("outliers").data_source.data;
        const view = Bokeh.index.find_one(figure);
        view.el.scrollIntoView({block: "center"});
        const rect = view.el.getBoundingClientRect();
        return {x: rect.left + view.frame.x_scale.compute(data.date_obs[0]),
                y: rect.top + view.frame.y_scale.compute(data.magzero[0]), id: Number(data.run_id[0])};
    }""")
    assert point["id"] == runs[33].pk
    page.mouse.click(point["x"], point["y"])
    page.wait_for_url(re.compile(rf"/runs/{runs[33].pk}/$"))
    assert page.locator("h1").inner_text().startswith(f"Run #{runs[33].pk} ")

    page.goto(f"{live_server.url}/runs/compare/?ids={with_outputs.pk},{other.pk}")
    wait_ready(page, f"#bk-astrometry-{with_outputs.pk}")
    assert "No astrometric fit in this run." in page.locator("#compare-astrometry").inner_text()  # the other run
    page.click("#compare-photometry summary")
    wait_ready(page, f"#bk-photometry-{with_outputs.pk}")
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)

    page.goto(f"{live_server.url}/runs/?filter_name=r&sort=-magzero")
    page.check(f"input[name=ids][value='{runs[1].pk}']")
    page.check(f"input[name=ids][value='{runs[3].pk}']")
    page.screenshot(path=str(ARTIFACTS / "runs-list.png"), full_page=True)
    page.click("#compare-button")
    page.wait_for_url(re.compile(r"/runs/compare/\?ids="))
    assert page.locator("#compare-runs thead th").count() == 3

    target = runs[0]
    page.goto(f"{live_server.url}/runs/{target.pk}/")
    page.check("#review-form input[value=approved]")
    page.fill("#review-form textarea", "zero point <b>checked</b>")
    page.click("#review-button")
    page.wait_for_url(re.compile(rf"/runs/{target.pk}/#review$"))
    assert page.locator("#review-state").inner_text() == "Approved"
    assert page.locator("#current-badge").count() == 1
    assert "zero point <b>checked</b>" in page.locator("#review-thread").inner_text()  # shown as text
    page.locator("#review").screenshot(path=str(ARTIFACTS / "review.png"))
    target.refresh_from_db()
    assert target.review_state == ReviewState.APPROVED
    assert ReviewEvent.objects.get(run=target).username == "alice"
    assert page.console_errors == []
