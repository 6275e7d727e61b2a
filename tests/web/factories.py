"""Rows for the history and review tests, made directly (no FITS file, no engine)."""

from __future__ import annotations

import datetime as dt
import itertools

from calibweb.core.models import CalibrationRun, Exposure, ReviewState, RunStatus

_counter = itertools.count(1)
UTC = dt.timezone.utc


def make_exposure(owner, *, instrument: str = "CAM-A", filter_name: str = "r",
                  date_obs: dt.datetime | None = None, exptime_s: float = 30.0) -> Exposure:
    n = next(_counter)
    date_obs = date_obs or dt.datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    return Exposure.objects.create(
        file=f"exposures/test/{n}.fits", original_filename=f"exp{n}.fits", size_bytes=2880, sha256=f"{n:064x}",
        nx=64, ny=64, instrument=instrument, filter_name=filter_name, exptime_s=exptime_s, date_obs=date_obs,
        mjd_obs=(date_obs - dt.datetime(1858, 11, 17, tzinfo=UTC)).total_seconds() / 86400.0, uploaded_by=owner,
    )


def make_run(exposure: Exposure, *, user=None, status: str = RunStatus.SUCCEEDED,
             review_state: str = ReviewState.UNREVIEWED, queued_at: dt.datetime | None = None,
             **fields) -> CalibrationRun:
    """A run row; ``queued_at`` is set after the insert (the column is ``auto_now_add``)."""
    fields.setdefault("magzero", 25.0 if status == RunStatus.SUCCEEDED else None)
    run = CalibrationRun.objects.create(exposure=exposure, created_by=user or exposure.uploaded_by, status=status,
                                        review_state=review_state, **fields)
    if queued_at is not None:
        CalibrationRun.objects.filter(pk=run.pk).update(queued_at=queued_at)
        run.queued_at = queued_at
    return run
