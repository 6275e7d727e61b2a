"""Celery tasks: thin, take an id, delegate to :mod:`.engine`."""

from __future__ import annotations

from celery import shared_task

from calibweb.celery import app  # noqa: F401  (services use app.control.revoke)

from . import engine


@shared_task(bind=True, acks_late=True, name="calibweb.calibrate_run")
def calibrate_run(self, run_id: int) -> str:
    """Calibrate run ``run_id``; a redelivered message finds it claimed and returns."""
    return engine.execute_run(run_id, hostname=self.request.hostname)
