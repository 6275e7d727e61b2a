"""Calibration history: the runs list (filters, sorting, pagination, visibility, query count),
the outlier test of the zero-point trend (synthetic data, planted outliers), the trends page
and its CSV, the comparison of runs (configuration differences, QA deltas, CSV)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import numpy as np
import pytest
from django.contrib.auth.models import Group

from calibweb.core import history, plots, selectors
from calibweb.core.models import CalibrationConfig, ReviewState, RunStatus
from factories import make_exposure, make_run

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 10, 2, 0, tzinfo=UTC)


def read_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def listed_ids(response) -> list[int]:
    return [r.pk for r in response.context["page"].object_list]


# ================================================================ outliers: pure, synthetic


def steady_series(n: int, *, level: float = 25.0, sigma: float = 0.02, seed: int = 5) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0.0, sigma, n)


def test_a_planted_outlier_is_flagged_and_nothing_else():
    values = steady_series(60)
    values[40] -= 0.5  # clouds
    out = history.flag_outliers(values, np.full(60, "CAM r"))
    assert np.flatnonzero(out["outlier"]).tolist() == [40]
    assert out["deviation_mag"][40] == pytest.approx(-0.5, abs=0.05)
    assert out["reference_mag"][40] == pytest.approx(25.0, abs=0.02)
    assert 0.01 <= out["sigma_mag"][40] < 0.04  # robust sigma of N(0, 0.02) from 20 values
    # The outlier does not disturb the judgement of the next runs (median and MAD are robust).
    assert not out["outlier"][41:].any()


def test_runs_without_enough_history_are_not_judged():
    values = steady_series(10)
    values[3] += 1.0
    out = history.flag_outliers(values, np.full(10, "g"), test=history.OutlierTest(window=20, min_history=5))
    assert not out["outlier"][:5].any() and np.isnan(out["reference_mag"][:5]).all()
    assert out["n_history"].tolist() == list(range(10))
    assert np.isfinite(out["reference_mag"][5:]).all()


def test_the_window_is_the_previous_n_runs_of_the_same_group_only():
    n = 50
    a, b = steady_series(n, level=25.0, seed=1), steady_series(n, level=24.0, seed=2)
    values = np.empty(2 * n)
    values[0::2], values[1::2] = a, b  # interleaved in observation order
    groups = np.array(["A r", "B r"] * n)
    values[61] += 0.3  # a run of group B (odd index)
    out = history.flag_outliers(values, groups)
    assert np.flatnonzero(out["outlier"]).tolist() == [61]
    assert out["reference_mag"][61] == pytest.approx(24.0, abs=0.02)
    # Exactly N previous values: the median of run j is that of values j-N..j-1 of its group.
    j = 30
    np.testing.assert_allclose(out["reference_mag"][2 * j], np.median(a[j - 20:j]))


def test_a_step_change_is_flagged_until_the_median_follows():
    values = np.concatenate([steady_series(40, seed=3), steady_series(40, level=25.3, seed=4)])
    out = history.flag_outliers(values, np.full(80, "g"))
    flagged = np.flatnonzero(out["outlier"])
    assert flagged[0] == 40 and 8 <= flagged.size <= 12 and flagged[-1] < 52
    assert not out["outlier"][:40].any()


def test_missing_zero_points_are_skipped_and_the_sigma_floor_applies():
    values = np.full(30, 25.0)  # perfectly steady: MAD = 0, the floor (0.01 mag) applies
    values[[10, 11]] = np.nan
    values[20] = 25.04  # 4 floors: not an outlier at k = 5
    values[25] = 25.06  # 6 floors: an outlier
    out = history.flag_outliers(values, np.full(30, "g"))
    assert np.flatnonzero(out["outlier"]).tolist() == [25]
    assert np.isnan(out["reference_mag"][[10, 11]]).all() and not out["outlier"][[10, 11]].any()
    assert out["sigma_mag"][20] == history.OUTLIER_SIGMA_FLOOR_MAG
    assert out["n_history"][12] == 10  # the two NaN are not previous runs


def test_the_first_shown_runs_are_judged_against_the_history_before_them():
    days = np.array([np.datetime64("2026-01-01T00:00") + np.timedelta64(i, "D") for i in range(40)])
    values = steady_series(40)
    values[30] += 0.4

    def table(sl):
        k = len(values[sl])
        return {"run_id": np.arange(40)[sl] + 1, "exposure_id": np.arange(40)[sl] + 1,
                "date_obs": days[sl].astype("datetime64[ms]"), "instrument": np.full(k, "CAM"),
                "filter_name": np.full(k, "r"), "review_state": np.full(k, "unreviewed"),
                "magzero": values[sl], "magzero_rms": np.full(k, 0.003),
                "astrom_offset_std_arcsec": np.full(k, 0.05), "psf_fwhm_pix": np.full(k, 3.0)}

    shown = history.trend_table(table(slice(30, 40)), table(slice(10, 30)))
    assert shown["run_id"].tolist() == list(range(31, 41))
    assert shown["outlier"].tolist() == [True] + [False] * 9
    assert shown["group"][0] == "CAM r" and shown["n_history"][0] == 20
    alone = history.trend_table(table(slice(30, 40)), table(slice(0, 0)))
    assert not alone["outlier"].any()  # without history the first runs cannot be judged


def test_outlier_test_parameters_are_checked():
    with pytest.raises(ValueError):
        history.OutlierTest(window=5, min_history=6)


# ======================================================== config differences, QA deltas


def test_config_is_flattened_to_dotted_keys_and_differences_come_first():
    a = {"detection": {"threshold_sigma": 5.0, "mask_planes": ["BAD"]}, "photocal": {"n_sigma": 3.0}, "x": {}}
    b = {"detection": {"threshold_sigma": 3.0, "mask_planes": ["BAD"]}, "photocal": {"n_sigma": 3.0},
         "astrometry": {"order": 3}}
    assert history.flatten_config(a) == {"detection.threshold_sigma": 5.0, "detection.mask_planes": ["BAD"],
                                         "photocal.n_sigma": 3.0, "x": {}}
    rows = history.config_differences([a, b])
    assert [(r.key, r.values, r.differs) for r in rows] == [
        ("astrometry.order", [history.MISSING, "3"], True),
        ("detection.threshold_sigma", ["5.0", "3.0"], True),
        ("x", ["{}", history.MISSING], True),
        ("detection.mask_planes", ['["BAD"]', '["BAD"]'], False),
        ("photocal.n_sigma", ["3.0", "3.0"], False),
    ]


def test_qa_deltas_are_against_the_first_run():
    from calibweb.core.diagnostics import summary_rows

    rows = history.qa_comparison([summary_rows({"MAGZERO": 25.0, "MAGZERO_NOBJ": 100}, {"detection": 1.0}),
                                  summary_rows({"MAGZERO": 25.1, "MAGZERO_NOBJ": 90}, {}),
                                  summary_rows({"MAGZERO": None}, {"detection": 1.5})])
    by_name = {r.name: r for r in rows}
    assert by_name["MAGZERO"].deltas[0] is None
    assert by_name["MAGZERO"].deltas[1] == pytest.approx(0.1) and by_name["MAGZERO"].deltas[2] is None
    assert by_name["MAGZERO_NOBJ"].delta_displays == ["", "-10", ""]
    assert by_name["time: detection"].displays == ["1", "—", "1.5"] and by_name["MAGZERO"].differs


# ====================================================================== the runs list


@pytest.fixture
def seeded(db, user, other_user, django_user_model):
    """Runs of alice's team over two instruments, two filters, statuses, review states, configs, users.

    alice and carol are a team; bob (other_user) is outside it and has runs of his own.
    """
    carol = django_user_model.objects.create_user("carol", password="pw-carol-123")
    team = Group.objects.create(name="team")
    user.groups.add(team)
    carol.groups.add(team)
    default = CalibrationConfig.objects.create(name="default", config={})
    deep = CalibrationConfig.objects.create(name="deep", config={"detection": {"threshold_sigma": 3.0}})
    runs = []
    statuses = [RunStatus.SUCCEEDED] * 5 + [RunStatus.FAILED]
    reviews = [ReviewState.APPROVED, ReviewState.UNREVIEWED, ReviewState.REJECTED, ReviewState.NEEDS_ATTENTION]
    i = 0
    for instrument in ("CAM-A", "CAM-B"):
        for filter_name in ("g", "r"):
            for night in range(6):
                owner = user if night % 2 == 0 else carol
                exposure = make_exposure(owner, instrument=instrument, filter_name=filter_name,
                                         date_obs=T0 + dt.timedelta(days=night, minutes=i))
                status = statuses[i % len(statuses)]
                runs.append(make_run(
                    exposure, user=carol if i % 3 == 0 else user, status=status,
                    review_state=reviews[i % 4] if status == RunStatus.SUCCEEDED else ReviewState.UNREVIEWED,
                    config=deep if i % 5 == 0 else default, queued_at=T0 + dt.timedelta(days=30, minutes=i),
                    magzero=(25.0 + 0.01 * i) if status == RunStatus.SUCCEEDED else None,
                    psf_fwhm_pix=3.0 + 0.01 * i, astrom_offset_std_arcsec=0.05,
                ))
                i += 1
    theirs = make_run(make_exposure(other_user, instrument="CAM-A", filter_name="g", date_obs=T0))
    return {"runs": runs, "carol": carol, "default": default, "deep": deep, "theirs": theirs}


def _expected(runs, predicate) -> set[int]:
    return {r.pk for r in runs if predicate(r)}


@pytest.mark.parametrize(("params", "predicate"), [
    ({"instrument": "CAM-B"}, lambda r: r.exposure.instrument == "CAM-B"),
    ({"filter_name": "g"}, lambda r: r.exposure.filter_name == "g"),
    ({"date_from": "2026-01-12", "date_to": "2026-01-13"},
     lambda r: dt.date(2026, 1, 12) <= r.exposure.date_obs.date() <= dt.date(2026, 1, 13)),
    ({"date_from": "2026-01-15"}, lambda r: r.exposure.date_obs.date() >= dt.date(2026, 1, 15)),
    ({"status": "failed"}, lambda r: r.status == "failed"),
    ({"review_state": "needs_attention"}, lambda r: r.review_state == "needs_attention"),
    ({"instrument": "CAM-A", "filter_name": "r", "status": "succeeded"},
     lambda r: (r.exposure.instrument, r.exposure.filter_name, r.status) == ("CAM-A", "r", "succeeded")),
])
def test_each_filter_narrows_the_list(client, user, seeded, params, predicate):
    client.force_login(user)
    response = client.get("/runs/", params)
    expected = _expected(seeded["runs"], predicate)
    assert 0 < len(expected) < len(seeded["runs"])
    assert set(listed_ids(response)) == expected
    assert response.context["page"].paginator.count == len(expected)


def test_config_and_user_filters(client, user, seeded):
    client.force_login(user)
    deep = seeded["deep"]
    assert set(listed_ids(client.get("/runs/", {"config": deep.pk}))) == _expected(
        seeded["runs"], lambda r: r.config_id == deep.pk)
    carol = seeded["carol"]
    assert set(listed_ids(client.get("/runs/", {"user": carol.pk}))) == _expected(
        seeded["runs"], lambda r: r.created_by_id == carol.pk)
    exposure_id = seeded["runs"][3].exposure_id
    response = client.get("/runs/", {"exposure": exposure_id})
    assert listed_ids(response) == [seeded["runs"][3].pk] and 'id="exposure-filter"' in response.content.decode()


def test_filter_choices_come_from_visible_data_only(client, user, seeded):
    client.force_login(user)
    form = client.get("/runs/").context["form"]
    assert [c for c, _ in form.fields["instrument"].choices] == ["", "CAM-A", "CAM-B"]
    assert {label for _, label in form.fields["user"].choices} == {"anyone", "alice", "carol"}  # not bob


def test_bad_filter_values_are_reported_and_left_out(client, user, seeded):
    client.force_login(user)
    response = client.get("/runs/", {"status": "bogus", "date_from": "yesterday", "instrument": "CAM-A"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Select a valid choice" in page and "Enter a valid date" in page
    assert set(listed_ids(response)) == _expected(seeded["runs"], lambda r: r.exposure.instrument == "CAM-A")
    response = client.get("/runs/", {"date_from": "2026-01-14", "date_to": "2026-01-12"})
    assert "The end date is before the start date." in response.content.decode()
    assert response.context["page"].paginator.count == len(seeded["runs"])


def test_other_teams_runs_are_never_listed(client, user, other_user, seeded):
    client.force_login(user)
    assert seeded["theirs"].pk not in listed_ids(client.get("/runs/", {"instrument": "CAM-A", "filter_name": "g"}))
    client.force_login(other_user)
    assert listed_ids(client.get("/runs/")) == [seeded["theirs"].pk]


@pytest.mark.parametrize("sort", ["magzero", "-magzero", "fwhm", "-date_obs", "date_obs", "queued", "-id",
                                  "instrument", "review", "-status"])
def test_sorting(client, user, seeded, sort):
    client.force_login(user)
    runs = list(selectors.runs_visible(user).filter(pk__in=[r.pk for r in seeded["runs"]]))
    key = sort.lstrip("-")
    attr = {"magzero": lambda r: r.magzero, "fwhm": lambda r: r.psf_fwhm_pix,
            "date_obs": lambda r: r.exposure.date_obs, "queued": lambda r: r.queued_at, "id": lambda r: r.pk,
            "instrument": lambda r: (r.exposure.instrument, r.exposure.filter_name, r.exposure.date_obs),
            "review": lambda r: (r.review_state, r.queued_at), "status": lambda r: (r.status, r.queued_at)}[key]
    present = [r for r in runs if attr(r) is not None]
    missing = [r for r in runs if attr(r) is None]  # no MAGZERO: last in both directions
    expected = sorted(present, key=lambda r: (attr(r), r.pk), reverse=sort.startswith("-")) + sorted(
        missing, key=lambda r: r.pk, reverse=sort.startswith("-"))
    response = client.get("/runs/", {"sort": sort})
    assert listed_ids(response) == [r.pk for r in expected]
    page = response.content.decode()
    assert f'class="sort {"desc" if sort.startswith("-") else "asc"}" data-sort="{key}"' in page


def test_unknown_sort_falls_back_to_the_newest_first(client, user, seeded):
    client.force_login(user)
    ids = listed_ids(client.get("/runs/", {"sort": "password"}))
    assert ids == [r.pk for r in sorted(seeded["runs"], key=lambda r: r.queued_at, reverse=True)]


def test_pagination_keeps_filters_and_pages_do_not_overlap(client, user, seeded, settings, monkeypatch):
    from calibweb.core import views

    monkeypatch.setattr(views, "RUNS_PER_PAGE", 7)
    client.force_login(user)
    params = {"instrument": "CAM-A", "sort": "-magzero"}
    first = client.get("/runs/", params)
    seen = listed_ids(first)
    assert len(seen) == 7
    assert 'href="?instrument=CAM-A&amp;sort=-magzero&amp;page=2" rel="next"' in first.content.decode()
    expected = _expected(seeded["runs"], lambda r: r.exposure.instrument == "CAM-A")
    assert first.context["page"].paginator.num_pages == 2 and len(expected) == 12
    last = listed_ids(client.get("/runs/", {**params, "page": 2}))
    seen += last
    assert len(last) == 5 and len(seen) == len(set(seen)) and set(seen) == expected
    magzero = {r.pk: r.magzero for r in seeded["runs"]}
    values = [magzero[i] for i in seen if magzero[i] is not None]
    assert values == sorted(values, reverse=True)  # the order runs across pages
    assert listed_ids(client.get("/runs/", {**params, "page": 99})) == last  # past the end: the last page


def test_the_list_page_makes_a_fixed_number_of_queries(client, user, seeded, django_assert_max_num_queries):
    client.force_login(user)
    client.get("/runs/")  # warm the session
    with django_assert_max_num_queries(12) as captured:
        response = client.get("/runs/", {"sort": "-date_obs"})
    assert len(listed_ids(response)) == len(seeded["runs"])
    sql = " ".join(q["sql"] for q in captured.captured_queries)
    assert '"header"' not in sql and '"config_snapshot"' not in sql  # large columns stay out of the list


def test_the_compare_checkboxes_and_the_trends_link_carry_the_selection(client, user, seeded):
    client.force_login(user)
    page = client.get("/runs/", {"instrument": "CAM-B", "sort": "magzero"}).content.decode()
    assert 'form method="get" action="/runs/compare/" id="compare-form"' in page
    assert f'name="ids" value="{seeded["runs"][-1].pk}"' in page
    assert 'id="trends-link" href="/runs/trends/?instrument=CAM-B"' in page


# ============================================================================ trends


@pytest.fixture
def trend_runs(db, user):
    """30 nights of CAM-A r (a planted outlier on night 25) and 30 of CAM-A g, plus failed runs."""
    runs = {}
    for filter_name, level in (("r", 25.0), ("g", 25.4)):
        values = steady_series(30, level=level, seed=7 if filter_name == "r" else 8)
        if filter_name == "r":
            values[25] -= 0.6
        for night in range(30):
            exposure = make_exposure(user, instrument="CAM-A", filter_name=filter_name,
                                     date_obs=T0 + dt.timedelta(days=night, hours=1 if filter_name == "g" else 0))
            runs[(filter_name, night)] = make_run(exposure, magzero=float(values[night]), magzero_rms=0.003,
                                                  astrom_offset_std_arcsec=0.04, psf_fwhm_pix=3.2)
        make_run(make_exposure(user, instrument="CAM-A", filter_name=filter_name, date_obs=T0),
                 status=RunStatus.FAILED)
    return runs


def test_trend_rows_are_succeeded_visible_runs_in_observation_order(user, other_user, trend_runs):
    make_run(make_exposure(other_user, instrument="CAM-A", filter_name="r", date_obs=T0))
    rows = selectors.trend_rows(user, selectors.RunFilters(filter_name="r"), limit=10, history=20)
    assert rows.total == 30
    assert rows.shown["run_id"].tolist() == [trend_runs[("r", n)].pk for n in range(20, 30)]
    assert rows.history["run_id"].tolist() == [trend_runs[("r", n)].pk for n in range(0, 20)]
    assert (np.diff(rows.shown["date_obs"]) > np.timedelta64(0)).all()


def test_trends_page_draws_the_plots_and_lists_the_outlier(client, user, trend_runs):
    client.force_login(user)
    response = client.get("/runs/trends/")
    assert response.status_code == 200
    page = response.content.decode()
    outlier = trend_runs[("r", 25)]
    table = page.split('id="outliers"')[1].split("</table>")[0]
    assert f'href="/runs/{outlier.pk}/"' in table and table.count("<tr>") == 2  # header + the planted one
    assert "/static/bokeh/js/bokeh.min.js" in page and "cdn." not in page
    item = json.loads(page.split('<script id="trends-item" type="application/json">')[1].split("</script>")[0])
    text = json.dumps(item)
    for name in ("magzero_trend", "astrom_trend", "fwhm_trend", "outliers"):
        assert f'"name":"{name}"' in text.replace(" ", "")
    assert "/runs/@run_id/" in text and "OpenURL" in text and "TapTool" in text
    assert response.context["total"] == response.context["shown"] == 60


def test_trends_csv_holds_the_plotted_rows_with_the_outlier_test(client, user, trend_runs):
    client.force_login(user)
    response = client.get("/runs/trends.csv", {"filter_name": "r"})
    assert response["Content-Type"].startswith("text/csv")
    rows = read_csv(response)
    assert [int(r["run_id"]) for r in rows] == [trend_runs[("r", n)].pk for n in range(30)]
    assert [int(r["run_id"]) for r in rows if r["outlier"] == "true"] == [trend_runs[("r", 25)].pk]
    first = rows[0]
    assert set(first) >= {"date_obs_utc", "instrument", "filter", "magzero", "astrom_offset_std_arcsec",
                          "psf_fwhm_pix", "reference_median_mag", "robust_sigma_mag", "deviation_mag"}
    assert first["date_obs_utc"].startswith("2026-01-10T02:00") and first["reference_median_mag"] == ""
    assert float(rows[25]["deviation_mag"]) == pytest.approx(-0.6, abs=0.06)


def test_trends_share_the_list_filters_and_show_only_visible_runs(client, user, other_user, trend_runs):
    client.force_login(other_user)
    assert read_csv(client.get("/runs/trends.csv")) == []
    page = client.get("/runs/trends/").content.decode()
    assert "no succeeded runs match these filters" in page
    client.force_login(user)
    rows = read_csv(client.get("/runs/trends.csv", {"date_from": "2026-01-20", "date_to": "2026-01-21"}))
    assert {r["date_obs_utc"][:10] for r in rows} == {"2026-01-20", "2026-01-21"} and len(rows) == 4
    assert 'id="list-link" href="/runs/?date_from=2026-01-20' in client.get(
        "/runs/trends/", {"date_from": "2026-01-20"}).content.decode()


def test_trend_plot_links_ranges_and_opens_runs():
    from bokeh.models import OpenURL, Plot, TapTool

    k = 12
    table = {"run_id": np.arange(k) + 1, "date_obs": np.datetime64("2026-01-01", "ms") + np.arange(k) * 86_400_000,
             "group": np.array(["A r"] * 6 + ["A g"] * 6), "magzero": np.linspace(25, 25.1, k),
             "magzero_rms": np.full(k, 0.003), "astrom_offset_std_arcsec": np.full(k, 0.05),
             "psf_fwhm_pix": np.full(k, 3.0), "reference_mag": np.full(k, np.nan),
             "deviation_mag": np.full(k, np.nan), "outlier": np.arange(k) == 7,
             "review_state": np.full(k, "approved")}
    layout = plots.trends_layout(table, run_url="/runs/@run_id/")
    figs = {f.name: f for f in layout.select({"type": Plot})}
    assert set(figs) == {"magzero_trend", "astrom_trend", "fwhm_trend"}
    assert figs["astrom_trend"].x_range is figs["magzero_trend"].x_range is figs["fwhm_trend"].x_range
    for fig in figs.values():
        taps = fig.select(type=TapTool)
        assert len(taps) == 1 and isinstance(taps[0].callback, OpenURL)
        assert taps[0].callback.url == "/runs/@run_id/"
    # One source for all runs, shared by the three plots; colour and legend per instrument + filter.
    runs = [r for f in figs.values() for r in f.renderers if r.name == "runs"]
    assert len(runs) == 3 and len({id(r.data_source) for r in runs}) == 1
    assert runs[0].data_source.data["group"].tolist() == ["A r (6)"] * 6 + ["A g (6)"] * 6
    assert runs[0].glyph.fill_color.transform.factors == ["A r (6)", "A g (6)"]
    items = figs["magzero_trend"].legend[0].items
    assert items[0].label.field == "group" and items[1].label.value == "outlier (1)"
    outliers = [r for r in figs["magzero_trend"].renderers if r.name == "outliers"]
    assert outliers[0].data_source.data["run_id"].tolist() == [8]


# ======================================================================== comparison


@pytest.fixture
def pair(db, user):
    exposure = make_exposure(user)
    base = {"detection": {"threshold_sigma": 5.0, "min_pixels": 5}, "photocal": {"n_sigma": 3.0}}
    deep = {"detection": {"threshold_sigma": 3.0, "min_pixels": 5}, "photocal": {"n_sigma": 3.0}}
    a = make_run(exposure, config_snapshot=base, magzero=25.00, metadata={"MAGZERO": 25.00, "MAGZERO_NOBJ": 120},
                 timings={"detection": 1.0})
    b = make_run(exposure, config_snapshot=deep, magzero=25.03, metadata={"MAGZERO": 25.03, "MAGZERO_NOBJ": 150},
                 timings={"detection": 1.6}, psf_fwhm_pix=3.1)
    return a, b


def test_compare_shows_config_differences_and_qa_deltas(client, user, pair):
    a, b = pair
    client.force_login(user)
    response = client.get("/runs/compare/", {"ids": f"{a.pk},{b.pk}"})
    assert response.status_code == 200
    page = response.content.decode()
    config = page.split('id="compare-config"')[1].split("</table>")[0]
    assert 'data-key="detection.threshold_sigma"' in config and "<code>5.0</code>" in config
    assert "detection.min_pixels" not in config  # equal keys only in the full list
    assert response.context["n_config_differences"] == 1
    qa = page.split('id="compare-qa"')[1].split("</table>")[0]
    row = qa.split('data-figure="MAGZERO"')[1].split("</tr>")[0]
    assert "25.03" in row and "Δ +0.03" in row and 'class="differs"' in qa
    row = qa.split('data-figure="MAGZERO_NOBJ"')[1].split("</tr>")[0]
    assert "Δ +30" in row
    row = qa.split('data-figure="PSF_FWHM_PIX"')[1].split("</tr>")[0]  # from the column (not in metadata)
    assert "3.1" in row and "—" in row
    assert 'id="different-exposures"' not in page


def test_compare_accepts_checkbox_ids_and_keeps_their_order(client, user, pair):
    a, b = pair
    client.force_login(user)
    response = client.get(f"/runs/compare/?ids={b.pk}&ids={a.pk}")
    assert [r.pk for r in response.context["runs"]] == [b.pk, a.pk]
    assert "Δ -0.03" in response.content.decode()


def test_compare_csv_tables(client, user, pair):
    a, b = pair
    client.force_login(user)
    rows = {r["figure"]: r for r in read_csv(client.get("/runs/compare/qa.csv", {"ids": f"{a.pk},{b.pk}"}))}
    assert rows["MAGZERO"][f"run{a.pk}"] == "25" and rows["MAGZERO"][f"run{b.pk}"] == "25.03"
    assert float(rows["MAGZERO"][f"run{b.pk}_minus_run{a.pk}"]) == pytest.approx(0.03)
    assert rows["time: detection"][f"run{b.pk}_minus_run{a.pk}"] == "0.6"
    assert rows["PSF_FWHM_PIX"][f"run{a.pk}"] == "" and rows["PSF_FWHM_PIX"][f"run{b.pk}"] == "3.1"
    assert "MAGZERO_RMS" not in rows  # a figure neither run has
    config = read_csv(client.get("/runs/compare/config.csv", {"ids": f"{a.pk},{b.pk}"}))
    assert config[0] == {"key": "detection.threshold_sigma", "differs": "true", f"run{a.pk}": "5.0",
                         f"run{b.pk}": "3.0"}
    assert len(config) == 3
    assert client.get("/runs/compare/other.csv", {"ids": f"{a.pk},{b.pk}"}).status_code == 404


def test_compare_needs_two_visible_runs(client, user, other_user, pair):
    a, b = pair
    client.force_login(user)
    response = client.get("/runs/compare/", {"ids": str(a.pk)})
    assert response.status_code == 400 and "at least two runs" in response.content.decode()
    assert client.get("/runs/compare/", {"ids": "1,2,3,4,5,6,7"}).status_code == 400
    theirs = make_run(make_exposure(other_user))
    assert client.get("/runs/compare/", {"ids": f"{a.pk},{theirs.pk}"}).status_code == 404
    assert client.get("/runs/compare/qa.csv", {"ids": f"{a.pk},{theirs.pk}"}).status_code == 404


def test_compare_embeds_each_runs_residual_plots_side_by_side(client, user, make_fits):
    from test_diagnostics import make_run as make_run_with_outputs

    with_outputs = make_run_with_outputs(user, make_fits)
    failed = make_run(with_outputs.exposure, status=RunStatus.FAILED)
    other_night = make_run(make_exposure(user, date_obs=T0 + dt.timedelta(days=1)))
    client.force_login(user)
    page = client.get("/runs/compare/", {"ids": f"{with_outputs.pk},{failed.pk},{other_night.pk}"}).content.decode()
    for section in ("astrometry", "photometry"):
        block = page.split(f'id="compare-{section}"')[1].split("</details>")[0]
        assert f'data-item-url="/runs/{with_outputs.pk}/diagnostics/{section}.json"' in block
        assert f'href="/runs/{with_outputs.pk}/diagnostics/{section}-matches.csv"' in block
        assert "The run failed: no plots." in block
        assert block.count('class="compare-col"') == 3
    assert 'id="different-exposures"' in page
    assert "/static/calibweb/bokeh_items.js" in page
