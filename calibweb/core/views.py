"""HTML views: small functions over services and selectors."""

from __future__ import annotations


from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import diagnostics, plots, reports, services
from .forms import RerunForm, RunForm
from .models import RunStatus
from .selectors import exposures_visible, runs_visible


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
    runs = exposure.runs.select_related("config", "refcat").all()[:50]
    return render(request, "core/exposure_detail.html", {"exposure": exposure, "runs": runs, "run_form": RunForm()})


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


@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    runs = runs_visible(request.user)
    status = request.GET.get("status", "")
    if status in RunStatus.values:
        runs = runs.filter(status=status)
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    return render(request, "core/run_list.html", {"page": page, "status": status, "statuses": RunStatus.choices})


@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(runs_visible(request.user), pk=pk)
    outputs = run.outputs.all()
    context = {
        "run": run, "outputs": outputs, "rerun_form": RerunForm(initial={"config": run.config_id}),
        "timings": sorted(run.timings.items(), key=lambda kv: -kv[1]) if run.timings else [],
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


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
