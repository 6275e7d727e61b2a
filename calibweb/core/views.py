"""HTML views: small functions over services and selectors."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from . import diagnostics, history, plots, reports, selectors, services
from .forms import CommentForm, RerunForm, ReviewForm, RunFilterForm, RunForm
from .models import RunStatus
from .paging import IdsFirstPaginator
from .selectors import exposures_visible, runs_visible

#: Runs per page of the runs list.
RUNS_PER_PAGE = 50
#: Most runs drawn by the trend plots (the most recent of the selection; the CSV has the same rows).
TRENDS_MAX_RUNS = 10_000
#: Most runs compared at once.
COMPARE_MAX_RUNS = 6


def _error_text(exc: ValidationError) -> str:
    return " ".join(exc.messages)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("exposure-list")


@require_GET
def exposure_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(exposures_visible(request.user), 25).get_page(request.GET.get("page"))
    return render(request, "core/exposure_list.html", {
        "page": page, "run_form": RunForm(), "max_upload_mb": settings.MAX_UPLOAD_BYTES // (1024 * 1024),
    })


@require_POST
def exposure_upload(request: HttpRequest) -> JsonResponse:
    """Store the posted files; one JSON result per file (the page shows each)."""
    files = request.FILES.getlist("files")
    if not files:
        return JsonResponse({"results": [], "error": "No file was sent: choose one or more FITS files."}, status=400)
    results = []
    for uploaded in files:
        try:
            outcome = services.exposure_create(user=request.user, uploaded_file=uploaded)
        except PermissionDenied as exc:
            return JsonResponse({"results": [], "error": str(exc)}, status=403)
        except ValidationError as exc:
            results.append({"name": uploaded.name, "ok": False, "error": _error_text(exc)})
            continue
        exposure = outcome.exposure
        results.append({
            "name": uploaded.name, "ok": True, "id": exposure.pk, "url": exposure.get_absolute_url(),
            "created": outcome.created,
            "note": "" if outcome.created else f"already uploaded as exposure #{exposure.pk}",
        })
    status = 200 if all(r["ok"] for r in results) else 400
    return JsonResponse({"results": results}, status=status)


@require_GET
def exposure_detail(request: HttpRequest, pk: int) -> HttpResponse:
    exposure = get_object_or_404(exposures_visible(request.user), pk=pk)
    runs = selectors.mark_current(list(exposure.runs.select_related("config", "refcat", "created_by")
                                       .defer(*selectors.RUN_LIST_DEFERRED)[:50]))
    return render(request, "core/exposure_detail.html", {
        "exposure": exposure, "runs": runs, "run_form": RunForm(), "current_run": selectors.current_run(exposure),
    })


@require_POST
def runs_start(request: HttpRequest) -> HttpResponse:
    """Start one run per selected exposure."""
    form = RunForm(request.POST)
    ids = [int(i) for i in request.POST.getlist("exposure") if i.isdigit()]
    exposures = list(exposures_visible(request.user).filter(pk__in=ids))
    back = request.POST.get("next") or "exposure-list"
    if not exposures:
        messages.error(request, "Select at least one exposure to calibrate.")
        return redirect(back if back.startswith("/") else "exposure-list")
    if not form.is_valid():
        messages.error(request, "Choose a configuration: " + "; ".join(
            f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect(back if back.startswith("/") else "exposure-list")
    try:
        runs = services.runs_create_many(
            user=request.user, exposures=exposures, config=form.cleaned_data["config"],
            refcat=form.cleaned_data["refcat"],
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return redirect(back if back.startswith("/") else "exposure-list")
    if len(runs) == 1:
        return redirect(runs[0])
    messages.success(request, f"Queued {len(runs)} runs.")
    return redirect("run-list")


def _filter_form(request: HttpRequest) -> tuple[RunFilterForm, selectors.RunFilters]:
    form = RunFilterForm(request.GET or None, choices=selectors.filter_choices(request.user))
    return form, form.filters()


@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    """Visible runs: filtered (instrument, filter, dates, status, review, config, user), sorted, paginated."""
    form, filters = _filter_form(request)
    sort = request.GET.get("sort", selectors.DEFAULT_SORT)
    if sort.lstrip("-") not in selectors.SORTS:
        sort = selectors.DEFAULT_SORT
    page = IdsFirstPaginator(selectors.runs_for_list(request.user, filters, sort=sort), RUNS_PER_PAGE).get_page(
        request.GET.get("page"))
    selectors.mark_current(page.object_list)
    return render(request, "core/run_list.html", {"page": page, "form": form, "filters": filters, "sort": sort})


@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    outputs = run.outputs.all()
    selectors.mark_current([run])
    context = {
        "run": run, "outputs": outputs, "rerun_form": RerunForm(initial={"config": run.config_id}),
        "timings": sorted(run.timings.items(), key=lambda kv: -kv[1]) if run.timings else [],
        "review_events": selectors.review_events(run), "can_review": selectors.can_review(request.user),
        "review_form": ReviewForm(), "comment_form": CommentForm(),
    }
    if run.status == RunStatus.SUCCEEDED:
        files = diagnostics.RunFiles({o.name: o.file.path for o in outputs})
        context["diagnostic_sections"] = diagnostics.page_sections(files)
        context["qa_summary"] = diagnostics.run_summary_rows(files, metadata=run.metadata, timings_s=run.timings)
    return render(request, "core/run_detail.html", context)


def _succeeded_run(request: HttpRequest, pk: int):
    """A run the user may see that has outputs (404 otherwise, as for a run of someone else)."""
    return get_object_or_404(runs_visible(request.user), pk=pk, status=RunStatus.SUCCEEDED)


@require_GET
def run_diagnostics_item(request: HttpRequest, pk: int, section: str) -> HttpResponse:
    """One diagnostics section as a Bokeh ``json_item`` (fetched by the run page)."""
    run = _succeeded_run(request, pk)
    if section not in plots.SECTION_LAYOUTS:
        raise Http404(f"unknown diagnostics section {section!r}")
    files = diagnostics.RunFiles.for_run(run)
    try:
        body = reports.section_item_bytes(files, section)
    except diagnostics.DiagnosticsUnavailable as exc:
        return JsonResponse({"error": str(exc)}, status=404)
    return HttpResponse(body, content_type="application/json")


@require_GET
def run_diagnostics_csv(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    """The data behind a plot as CSV (one dataset per name of ``diagnostics.DATASETS``)."""
    run = _succeeded_run(request, pk)
    try:
        columns = diagnostics.dataset(diagnostics.RunFiles.for_run(run), name)
    except diagnostics.DiagnosticsUnavailable as exc:
        raise Http404(str(exc)) from exc
    response = HttpResponse(diagnostics.to_csv(columns), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run{run.pk}_{name}.csv"'
    return response


@require_GET
def run_report(request: HttpRequest, pk: int) -> HttpResponse:
    """The run's full diagnostics as one self-contained HTML file (BokehJS inlined)."""
    run = _succeeded_run(request, pk)
    files = diagnostics.RunFiles.for_run(run)
    html = diagnostics.cached(files, name="report.html", version=plots.VERSION, build=lambda: plots.run_report_html(
        title=f"CalibWeb run #{run.pk}: exposure #{run.exposure_id} {run.exposure.original_filename}",
        summary=diagnostics.run_summary_rows(files, metadata=run.metadata, timings_s=run.timings),
        sections=diagnostics.all_section_data(files),
    ).encode())
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run{run.pk}_report.html"'
    return response


@require_GET
def run_status(request: HttpRequest, pk: int) -> JsonResponse:
    """What the run page polls: status, stage, progress, and whether to reload."""
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    return JsonResponse({
        "id": run.pk, "status": run.status, "status_display": run.get_status_display(), "stage": run.stage,
        "progress": run.progress, "error_stage": run.error_stage, "error_message": run.error_message,
        "active": run.is_active,
    })


@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    try:
        cancelled = services.run_cancel(run=run, user=request.user)
    except PermissionDenied as exc:
        messages.error(request, str(exc))
        return redirect(run)
    if cancelled:
        messages.success(request, f"Run #{run.pk} cancelled.")
    else:
        messages.info(request, f"Run #{run.pk} had already ended ({run.get_status_display().lower()}).")
    return redirect(run)


@require_POST
def run_rerun(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    form = RerunForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a configuration for the new run.")
        return redirect(run)
    try:
        new = services.run_rerun(run=run, user=request.user, config=form.cleaned_data["config"])
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return redirect(run)
    messages.success(request, f"Run #{new.pk} queued with {new.config}.")
    return redirect(new)


@require_GET
def output_download(request: HttpRequest, pk: int, name: str) -> FileResponse:
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    output = get_object_or_404(run.outputs, name=name)
    content_types = {"fits": "application/fits", "csv": "text/csv", "parquet": "application/vnd.apache.parquet",
                     "json": "application/json"}
    return FileResponse(
        output.file.open("rb"), as_attachment=True, filename=f"run{run.pk}_{output.name}",
        content_type=content_types.get(output.format, "application/octet-stream"),
    )


# ---------------------------------------------------------------------------- review


@require_POST
def run_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Set the review state (reviewers and staff; anyone else gets a 403)."""
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    if not selectors.can_review(request.user):
        raise PermissionDenied("Only reviewers can approve, reject or flag runs.")
    form = ReviewForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a verdict: " + "; ".join(" ".join(v) for v in form.errors.values()))
        return redirect(run)
    try:
        services.review_run(user=request.user, run=run, state=form.cleaned_data["state"],
                            comment=form.cleaned_data["comment"])
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return redirect(run)
    messages.success(request, f"Run #{run.pk} marked {run.get_review_state_display().lower()}.")
    return redirect(reverse("run-detail", args=[run.pk]) + "#review")


@require_POST
def run_comment(request: HttpRequest, pk: int) -> HttpResponse:
    """Add a comment to the run's thread (anyone who can see the run)."""
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    form = CommentForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Write a comment first: " + "; ".join(" ".join(v) for v in form.errors.values()))
        return redirect(run)
    try:
        services.comment_on_run(user=request.user, run=run, text=form.cleaned_data["text"])
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return redirect(run)
    return redirect(reverse("run-detail", args=[run.pk]) + "#review")


# ---------------------------------------------------------------------------- trends


def _trends(request: HttpRequest):
    form, filters = _filter_form(request)
    rows = selectors.trend_rows(request.user, filters, limit=TRENDS_MAX_RUNS, history=history.OUTLIER_WINDOW)
    return form, rows, history.trend_table(rows.shown, rows.history)


def _trends_note(shown: int, total: int) -> str:
    test = history.OutlierTest()
    runs = f"{total} runs" if shown == total else f"the {shown} most recent of {total} runs"
    return (f"{runs}; ringed: more than {test.k:g} robust sigma from the median of the previous "
            f"{test.window} runs of the same instrument + filter")


@require_GET
def run_trends(request: HttpRequest) -> HttpResponse:
    """MAGZERO, astrometric scatter and PSF FWHM against observation date, outliers flagged."""
    form, rows, table = _trends(request)
    n = len(table["run_id"])
    run_url = reverse("run-detail", args=[987654321]).replace("987654321", "@run_id")
    item = plots.trends_item(table, run_url=run_url, note=_trends_note(n, rows.total))
    outliers = [{"run_id": int(table["run_id"][i]), "date_obs": table["date_obs"][i].item(),
                 "group": table["group"][i], "magzero": float(table["magzero"][i]),
                 "reference_mag": float(table["reference_mag"][i]), "deviation_mag": float(table["deviation_mag"][i]),
                 "sigma_mag": float(table["sigma_mag"][i])}
                for i in reversed(range(n)) if table["outlier"][i]]
    return render(request, "core/run_trends.html", {
        "form": form, "item": item, "shown": n, "total": rows.total, "outliers": outliers,
        "test": history.OutlierTest(), "max_runs": TRENDS_MAX_RUNS,
    })


@require_GET
def run_trends_csv(request: HttpRequest) -> HttpResponse:
    """The rows of the trend plots, with the outlier test, as CSV."""
    _, _, table = _trends(request)
    columns = {"run_id": table["run_id"], "exposure_id": table["exposure_id"],
               "date_obs_utc": table["date_obs"].astype("datetime64[ms]").astype(str),
               "instrument": table["instrument"], "filter": table["filter_name"],
               "review_state": table["review_state"], "magzero": table["magzero"],
               "magzero_rms": table["magzero_rms"], "astrom_offset_std_arcsec": table["astrom_offset_std_arcsec"],
               "psf_fwhm_pix": table["psf_fwhm_pix"], "reference_median_mag": table["reference_mag"],
               "robust_sigma_mag": table["sigma_mag"], "deviation_mag": table["deviation_mag"],
               "n_history": table["n_history"], "outlier": table["outlier"]}
    response = HttpResponse(diagnostics.to_csv(columns), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="calibweb_trends.csv"'
    return response


# ------------------------------------------------------------------------ comparison


def _compare_ids(request: HttpRequest) -> list[int]:
    """Run ids from ``?ids=1,2`` or ``?ids=1&ids=2`` (checkboxes), in order, without repeats."""
    ids: list[int] = []
    for value in request.GET.getlist("ids"):
        for part in value.split(","):
            part = part.strip()
            if part.isdigit() and int(part) not in ids:
                ids.append(int(part))
    return ids


def _compared_runs(request: HttpRequest):
    """The runs to compare, or an error text (too few or too many); 404 when one is not visible."""
    ids = _compare_ids(request)
    if len(ids) < 2:
        return None, "Select at least two runs to compare (tick them in the runs list)."
    if len(ids) > COMPARE_MAX_RUNS:
        return None, f"Compare at most {COMPARE_MAX_RUNS} runs at a time ({len(ids)} selected)."
    runs = selectors.runs_for_comparison(request.user, ids)
    if len(runs) != len(ids):
        raise Http404("one of these runs does not exist or is not yours to see")
    return runs, ""


@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    """Two or more runs side by side: QA figures with deltas, configuration differences, residual plots."""
    runs, error = _compared_runs(request)
    if runs is None:
        return render(request, "core/run_compare.html", {"error": error}, status=400)
    selectors.mark_current(runs)
    config_rows = history.config_differences([r.config_snapshot for r in runs])
    available = [diagnostics.available_sections(diagnostics.RunFiles({o.name: o.file.path for o in r.outputs.all()}))
                 if r.status == RunStatus.SUCCEEDED else {} for r in runs]
    plot_rows = [{"name": name, "title": title, "dataset": f"{name}-matches",
                  "missing": diagnostics.SECTION_INFO[name][1] if name in diagnostics.SECTION_INFO else "",
                  "cells": [{"run": r, "available": a.get(name, False)} for r, a in zip(runs, available)]}
                 for name, title in (("astrometry", "Astrometric residuals"), ("photometry", "Photometric residuals"))]
    return render(request, "core/run_compare.html", {
        "runs": runs, "qa_rows": history.qa_rows_for_runs(runs), "config_rows": config_rows,
        "n_config_differences": sum(r.differs for r in config_rows),
        "same_exposure": len({r.exposure_id for r in runs}) == 1, "ids": ",".join(str(r.pk) for r in runs),
        "plot_rows": plot_rows,
    })


@require_GET
def run_compare_csv(request: HttpRequest, table: str) -> HttpResponse:
    """The comparison as CSV: ``qa`` (figures, values, deltas against the first run) or ``config``."""
    runs, error = _compared_runs(request)
    if runs is None:
        return HttpResponse(error, status=400, content_type="text/plain; charset=utf-8")
    ids = [r.pk for r in runs]
    if table == "qa":
        columns = history.qa_csv_columns(history.qa_rows_for_runs(runs), ids)
    elif table == "config":
        columns = history.config_csv_columns(history.config_differences([r.config_snapshot for r in runs]), ids)
    else:
        raise Http404(f"unknown comparison table {table!r}")
    response = HttpResponse(diagnostics.to_csv(columns), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="compare_{"_".join(map(str, ids))}_{table}.csv"'
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
