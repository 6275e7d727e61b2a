"""The bridge between Django and the engine (``calibration``).

Only this module and :mod:`.tasks` import both. ``execute_run`` is the service
behind the Celery task: claim the run, read the exposure, call
``calibration.calibrate``, store outputs and result columns, or record the
failure with its stage and reason.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import CalibrationRun, RunOutput, RunStatus

log = logging.getLogger(__name__)

# Progress is written at most this often, so that a fast engine does not
# turn into a stream of UPDATEs.
_PROGRESS_INTERVAL_S = 0.5


def validate_engine_config(data: Any) -> dict:
    """Full engine configuration (defaults filled in) from user JSON.

    Raises
    ------
    ValidationError
        With the engine's message, which names the offending key.
    """
    from calibration.configbase import config_to_dict
    from calibration.errors import ConfigError
    from calibration.pipeline import config_from_json

    try:
        return config_to_dict(config_from_json(data))
    except ConfigError as exc:
        raise ValidationError(f"Invalid configuration: {exc.message}") from exc


def header_facts(path: Path, *, hdu: int | None, name: str) -> dict[str, Any]:
    """Model fields of an :class:`~.models.Exposure` from a FITS file's header.

    Raises
    ------
    services.UploadError
        When the engine refuses the file; the message names the file.
    """
    from calibration.errors import BadExposureError
    from calibration.io import read_header_facts

    from .services import UploadError

    try:
        facts = read_header_facts(path, hdu=hdu)
    except BadExposureError as exc:
        raise UploadError(f"{name}: {exc.message}") from exc
    date_obs = None
    if facts.date_obs:
        from datetime import datetime, timezone as dt_timezone

        date_obs = datetime.fromisoformat(facts.date_obs.replace("Z", "+00:00"))
        if date_obs.tzinfo is None:
            date_obs = date_obs.replace(tzinfo=dt_timezone.utc)
    return {
        "hdu_index": facts.hdu_index,
        "instrument": (facts.instrument or "")[:80],
        "filter_name": (facts.filter_name or "")[:80],
        "exptime_s": facts.exptime_s,
        "date_obs": date_obs,
        "mjd_obs": facts.mjd_obs,
        "nx": facts.nx,
        "ny": facts.ny,
        "has_wcs": facts.has_wcs,
        "ra_deg": facts.ra_deg,
        "dec_deg": facts.dec_deg,
        "object_name": (getattr(facts, "object_name", None) or "")[:120],
        "header": [list(card) for card in facts.cards],
        "warnings": list(facts.warnings),
    }


def claim_run(run_id: int, *, hostname: str) -> bool:
    """Move a QUEUED run to RUNNING; False if it was not queued (cancelled, redelivered)."""
    return bool(
        CalibrationRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.RUNNING, started_at=timezone.now(), worker_host=hostname[:255], stage="read", progress=0.0
        )
    )


class _Progress:
    """Writes stage and percentage to the run row; stops the engine on cancel."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.last = 0.0
        self.last_stage = ""

    def __call__(self, stage: str, fraction: float) -> None:
        from calibration.errors import CancelledError

        now = time.monotonic()
        if stage == self.last_stage and now - self.last < _PROGRESS_INTERVAL_S:
            return
        self.last, self.last_stage = now, stage
        updated = CalibrationRun.objects.filter(pk=self.run_id, status=RunStatus.RUNNING).update(
            stage=stage, progress=round(100.0 * fraction, 1)
        )
        if not updated:
            raise CancelledError("the run was cancelled", stage=stage)


def execute_run(run_id: int, *, hostname: str | None = None) -> str:
    """Run the engine for a claimed-or-queued run; returns the final status."""
    from calibration.errors import CalibrationError, CancelledError

    hostname = hostname or socket.gethostname()
    if not claim_run(run_id, hostname=hostname):
        log.info("run %s was not queued (cancelled or already taken): nothing to do", run_id)
        return CalibrationRun.objects.filter(pk=run_id).values_list("status", flat=True).first() or "missing"
    run = CalibrationRun.objects.select_related("exposure", "refcat").get(pk=run_id)
    progress = _Progress(run_id)
    workdir = Path(tempfile.mkdtemp(prefix=f"run-{run_id}-", dir=_runs_tmp_dir()))
    try:
        result, files = _run_engine(run, progress, workdir)
        _store_success(run, result, files)
        # The run is done and visible; prebuild its diagnostics pages for the first visitor.
        from . import reports

        reports.warm(CalibrationRun.objects.get(pk=run.pk))
        return RunStatus.SUCCEEDED
    except CancelledError:
        log.info("run %s cancelled during %s", run_id, progress.last_stage)
        return RunStatus.CANCELLED
    except CalibrationError as exc:
        store_failure(run_id, stage=exc.stage or progress.last_stage, error_type=type(exc).__name__, message=exc.message)
        return RunStatus.FAILED
    except MemoryError:
        store_failure(
            run_id, stage=progress.last_stage, error_type="MemoryError",
            message="The worker ran out of memory; try a smaller image or a worker with more memory.",
        )
        return RunStatus.FAILED
    except SoftTimeLimitExceeded:
        store_failure(
            run_id, stage=progress.last_stage, error_type="TimeLimitExceeded",
            message="The run took longer than CALIBWEB_TASK_SOFT_TIME_LIMIT_S seconds and was stopped; "
            "raise the limit or calibrate a smaller image.",
        )
        return RunStatus.FAILED
    except Exception as exc:
        # An engine bug must still end the run with a reason, and the worker lives on.
        log.exception("run %s crashed in stage %s", run_id, progress.last_stage)
        store_failure(
            run_id, stage=progress.last_stage, error_type=type(exc).__name__,
            message=f"Internal error in stage '{progress.last_stage}': {exc}. This is a bug; please report it.",
        )
        return RunStatus.FAILED
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _runs_tmp_dir() -> Path:
    path = Path(settings.MEDIA_ROOT) / "runs" / ".tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_engine(run: CalibrationRun, progress: _Progress, workdir: Path):
    from calibration.io import read_exposure
    from calibration.outputs import write_outputs
    from calibration.pipeline import calibrate, config_from_json
    from calibration.refcat import load_for_exposure

    progress("read", 0.0)
    t0 = time.perf_counter()
    exposure = read_exposure(Path(run.exposure.file.path), hdu=run.exposure.hdu_index)
    read_s = time.perf_counter() - t0
    if not exposure.info.exposure_id:
        exposure.info.exposure_id = run.exposure_id
    config = config_from_json(run.config_snapshot)
    refcat = None
    if run.refcat is not None:
        refcat = load_for_exposure(_refcat_location(run.refcat.location), exposure)
    result = calibrate(exposure, config, astrom_refcat=refcat, photom_refcat=refcat, progress=progress,
                       in_place=True)
    progress("write", 0.95)
    t0 = time.perf_counter()
    files = write_outputs(result, workdir)
    result.timings_s = {"read": read_s, **result.timings_s, "write": time.perf_counter() - t0}
    return result, files


def _refcat_location(location: str) -> str:
    """A URL as given; a relative path under REFCAT_ROOT."""
    if "://" in location:
        return location
    path = Path(location)
    return str(path if path.is_absolute() else Path(settings.REFCAT_ROOT) / path)


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _store_success(run: CalibrationRun, result, files) -> None:
    """Move outputs into the store and write the result columns in one transaction."""
    final_dir = Path(settings.MEDIA_ROOT) / "runs" / str(run.pk)
    final_dir.mkdir(parents=True, exist_ok=True)
    md = result.metadata
    moved: list[Path] = []
    try:
        with transaction.atomic():
            locked = CalibrationRun.objects.select_for_update().get(pk=run.pk)
            if locked.status != RunStatus.RUNNING:
                from calibration.errors import CancelledError

                raise CancelledError("the run was cancelled while its outputs were written", stage="write")
            RunOutput.objects.filter(run=run).delete()
            for out in files:
                target = final_dir / out.name
                shutil.move(str(out.path), target)
                moved.append(target)
                RunOutput.objects.create(
                    run=run, name=out.name, kind=out.kind, format=out.format,
                    file=f"runs/{run.pk}/{out.name}", size_bytes=target.stat().st_size,
                    description=out.description[:200],
                )
            wcs_header = ""
            if result.exposure.wcs is not None:
                wcs_header = result.exposure.wcs.to_header(relax=True).tostring(sep="\n")
            CalibrationRun.objects.filter(pk=run.pk).update(
                status=RunStatus.SUCCEEDED, stage="done", progress=100.0, finished_at=timezone.now(),
                magzero=_num(md.get("MAGZERO")), magzero_rms=_num(md.get("MAGZERO_RMS")),
                magzero_nobj=int(md.get("MAGZERO_NOBJ") or 0),
                colorterm1=_num(md.get("COLORTERM1")), colorterm2=_num(md.get("COLORTERM2")),
                colorterm3=_num(md.get("COLORTERM3")),
                photom_scatter_mag=_num(md.get("PHOTOM_SCATTER_MAG")),
                astrom_offset_mean_arcsec=_num(md.get("SFM_ASTROM_OFFSET_MEAN")),
                astrom_offset_std_arcsec=_num(md.get("SFM_ASTROM_OFFSET_STD")),
                n_sources=md.get("N_SOURCES"), n_astrom_matches=md.get("N_ASTROM_MATCHES"),
                n_photom_matches=md.get("N_PHOTOM_MATCHES"),
                psf_fwhm_pix=_num(md.get("PSF_FWHM_PIX")), sky_noise_adu=_num(md.get("SKY_NOISE_ADU")),
                background_adu=_num(md.get("BGMEAN")),
                wcs_header=wcs_header, timings={k: round(v, 4) for k, v in result.timings_s.items()},
                metadata=_jsonable(md), warnings=list(result.warnings),
            )
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise


def store_failure(run_id: int, *, stage: str, error_type: str, message: str) -> None:
    CalibrationRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
        status=RunStatus.FAILED, finished_at=timezone.now(), error_stage=(stage or "")[:40],
        error_type=error_type[:80], error_message=message,
    )


def _jsonable(md: dict) -> dict:
    out = {}
    for key, value in md.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        else:
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                out[key] = str(value)
    return out
