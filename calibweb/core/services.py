"""Writes: every change to exposures and runs goes through these functions.

Views and API views stay thin and call these with keyword-only arguments
(HackSoftware's ``services.py``); the Celery task calls :mod:`.engine`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone as dj_timezone

from .engine import header_facts, validate_engine_config
from .models import (
    ACTIVE_STATUSES,
    REVIEW_VERDICTS,
    ROLE_GROUPS,
    CalibrationConfig,
    CalibrationRun,
    Exposure,
    ReferenceCatalog,
    ReviewAction,
    ReviewEvent,
    ReviewState,
    RunStatus,
)

log = logging.getLogger(__name__)


class UploadError(ValidationError):
    """An uploaded file was refused; ``message`` says why and what to do."""


@dataclass(frozen=True)
class UploadOutcome:
    exposure: Exposure
    created: bool


def _require_submitter(user) -> None:
    from .selectors import can_submit

    if not can_submit(user):
        raise PermissionDenied("Viewers can only look: ask an administrator to take you out of the 'viewers' "
                               "group to upload exposures or start runs.")


def _store_dir() -> Path:
    path = Path(settings.MEDIA_ROOT) / "exposures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def exposure_create(*, user, uploaded_file: UploadedFile, hdu: int | None = None) -> UploadOutcome:
    """Validate and store one uploaded FITS file; nothing is kept on failure.

    The bytes are copied to a temporary file in the store (hashing on the
    way, refusing past ``MAX_UPLOAD_BYTES``), the header is read and checked by
    the engine, and only then the file is moved to its final, app-generated
    name and the row saved; the file is removed again if the row cannot be.

    Raises
    ------
    PermissionDenied
        The user is a viewer (viewers only look).
    UploadError
        Empty, too large, not FITS, truncated, no image, a cube, missing or
        malformed DATE-OBS/FILTER...
    """
    _require_submitter(user)
    limit = settings.MAX_UPLOAD_BYTES
    client_name = os.path.basename(uploaded_file.name or "upload.fits")[:255]
    if uploaded_file.size is not None and uploaded_file.size > limit:
        raise UploadError(
            f"{client_name} is {uploaded_file.size / 1e6:.1f} MB, over the upload limit of {limit / 1e6:.0f} MB "
            "(CALIBWEB_MAX_UPLOAD_MB)."
        )
    store = _store_dir()
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".fits", dir=store)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in uploaded_file.chunks():
                size += len(chunk)
                if size > limit:
                    raise UploadError(
                        f"{client_name} is over the upload limit of {limit / 1e6:.0f} MB (CALIBWEB_MAX_UPLOAD_MB)."
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise UploadError(f"{client_name} is empty (0 bytes): choose a FITS image file.")
        sha = digest.hexdigest()
        existing = Exposure.objects.filter(sha256=sha).first()
        if existing is not None:
            if existing.uploaded_by_id == user.pk or _shares_group(user, existing.uploaded_by):
                return UploadOutcome(existing, False)
            raise UploadError(f"{client_name} is already stored by another team (same SHA-256); ask them to share it.")
        facts = header_facts(tmp, hdu=hdu, name=client_name)
        final_rel = f"exposures/{dj_timezone.now():%Y/%m}/{sha[:24]}.fits"
        final = Path(settings.MEDIA_ROOT) / final_rel
        final.parent.mkdir(parents=True, exist_ok=True)
        exposure = Exposure(
            original_filename=client_name,
            size_bytes=size,
            sha256=sha,
            uploaded_by=user,
            **facts,
        )
        exposure.file.name = final_rel
        os.replace(tmp, final)
        try:
            exposure.save()
        except IntegrityError:
            final.unlink(missing_ok=True)
            raise UploadError(f"{client_name} was uploaded at the same moment by someone else; reload the page.")
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return UploadOutcome(exposure, True)
    finally:
        tmp.unlink(missing_ok=True)


def _shares_group(user, other) -> bool:
    """Whether ``user`` and ``other`` are in a common team (role groups do not count)."""
    if other is None:
        return False
    return user.groups.exclude(name__in=ROLE_GROUPS).filter(pk__in=other.groups.values("pk")).exists()


def default_config() -> CalibrationConfig | None:
    return CalibrationConfig.objects.filter(is_default=True).first()


def run_create(
    *,
    user,
    exposure: Exposure,
    config: CalibrationConfig | None = None,
    refcat: ReferenceCatalog | None = None,
) -> CalibrationRun:
    """Queue a calibration run; the Celery task is sent when the transaction commits."""
    _require_submitter(user)
    from . import tasks

    config = config or default_config()
    if config is not None and not config.is_active:
        raise ValidationError(f"Configuration {config} is inactive; choose another one.")
    snapshot = validate_engine_config(config.config if config else {})
    from calibration import __version__ as engine_version

    task_id = str(uuid.uuid4())
    with transaction.atomic():
        run = CalibrationRun.objects.create(
            exposure=exposure,
            config=config,
            config_snapshot=snapshot,
            refcat=refcat,
            created_by=user,
            status=RunStatus.QUEUED,
            stage="queued",
            celery_task_id=task_id,
            engine_version=engine_version,
        )
        run_id = run.pk
        queue = settings.CELERY_TASK_DEFAULT_QUEUE
        transaction.on_commit(
            lambda: tasks.calibrate_run.apply_async(args=[run_id], task_id=task_id, queue=queue)
        )
    return run


def runs_create_many(*, user, exposures, config=None, refcat=None) -> list[CalibrationRun]:
    """Queue one run per exposure (the 'calibrate selected' action)."""
    with transaction.atomic():
        return [run_create(user=user, exposure=e, config=config, refcat=refcat) for e in exposures]


def run_cancel(*, run: CalibrationRun, user) -> bool:
    """Cancel a queued or running run. Returns False when it had already ended.

    A queued run is cancelled at once (its task finds it not QUEUED and does
    nothing); a running one is marked cancelled and the engine stops at its
    next progress report.
    """
    if run.created_by_id not in (None, user.pk) and not user.is_staff and not _shares_group(user, run.created_by):
        raise PermissionDenied("You can only cancel your own or your group's runs.")
    now = dj_timezone.now()
    updated = CalibrationRun.objects.filter(pk=run.pk, status__in=ACTIVE_STATUSES).update(
        status=RunStatus.CANCELLED, finished_at=now, error_message=f"Cancelled by {user.get_username()}."
    )
    if updated and run.celery_task_id:
        from .tasks import app

        app.control.revoke(run.celery_task_id)
    run.refresh_from_db()
    return bool(updated)


def run_rerun(*, run: CalibrationRun, user, config: CalibrationConfig | None = None) -> CalibrationRun:
    """Start a new run on the same exposure, with another config if given."""
    return run_create(user=user, exposure=run.exposure, config=config or run.config, refcat=run.refcat)


#: Longest comment accepted (characters).
MAX_COMMENT_CHARS = 5000


def _check_visible(user, run: CalibrationRun) -> None:
    from .selectors import runs_visible

    if not runs_visible(user).filter(pk=run.pk).exists():
        raise PermissionDenied(f"Run #{run.pk} is not visible to you.")


def _clean_comment(text: str | None) -> str:
    text = (text or "").strip()
    if len(text) > MAX_COMMENT_CHARS:
        raise ValidationError(f"The comment is {len(text)} characters long; the limit is {MAX_COMMENT_CHARS}.")
    return text


def review_run(*, user, run: CalibrationRun, state: str, comment: str = "") -> ReviewEvent:
    """Set a run's review state (approved, rejected, needs attention) and log it, atomically.

    Only reviewers (group ``reviewers``) and staff may review. A run is
    reviewed once it has ended; only a succeeded run can be approved (the
    latest approved run of an exposure is its current calibration). Setting
    the state it already has is allowed and logged (a second opinion).

    Raises
    ------
    PermissionDenied
        The user is not a reviewer, or cannot see the run.
    ValidationError
        Unknown state, the run is still active, approval of a run that did not
        succeed, or a comment over :data:`MAX_COMMENT_CHARS`.
    """
    from .selectors import can_review

    if not can_review(user):
        raise PermissionDenied(
            "Only reviewers can approve, reject or flag runs: ask an administrator to add you to the "
            "'reviewers' group. You can still comment."
        )
    _check_visible(user, run)
    if state not in REVIEW_VERDICTS:
        choices = ", ".join(s.value for s in REVIEW_VERDICTS)
        raise ValidationError(f"Unknown review state {state!r}: choose one of {choices}.")
    comment = _clean_comment(comment)
    with transaction.atomic():
        locked = CalibrationRun.objects.select_for_update().only("pk", "status", "review_state").get(pk=run.pk)
        if locked.status in ACTIVE_STATUSES:
            raise ValidationError(f"Run #{run.pk} is still {locked.status}: review it once it has ended.")
        if state == ReviewState.APPROVED and locked.status != RunStatus.SUCCEEDED:
            raise ValidationError(f"Run #{run.pk} {locked.status}: only a succeeded run can be approved.")
        now = dj_timezone.now()
        CalibrationRun.objects.filter(pk=run.pk).update(review_state=state, reviewed_by=user, reviewed_at=now)
        event = ReviewEvent.objects.create(
            run_id=run.pk, user=user, username=user.get_username(), action=ReviewAction.REVIEW, state=state,
            previous_state=locked.review_state, comment=comment,
        )
    run.review_state, run.reviewed_by, run.reviewed_at = state, user, now
    log.info("run %s reviewed by %s: %s -> %s", run.pk, user.get_username(), event.previous_state, state)
    return event


def comment_on_run(*, user, run: CalibrationRun, text: str) -> ReviewEvent:
    """Add a comment to a run's thread (anyone who can see the run; the state is unchanged).

    Raises
    ------
    PermissionDenied
        The user cannot see the run.
    ValidationError
        Empty comment, or longer than :data:`MAX_COMMENT_CHARS`.
    """
    _check_visible(user, run)
    text = _clean_comment(text)
    if not text:
        raise ValidationError("The comment is empty: write something to post.")
    return ReviewEvent.objects.create(run=run, user=user, username=user.get_username(), action=ReviewAction.COMMENT,
                                      comment=text)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
