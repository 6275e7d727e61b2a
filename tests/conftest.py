"""Shared fixtures: a temporary store per test, users, FITS files, a worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Figures the tests measured (load times...), printed in the run's summary: a test never
#: asserts a wall-clock time, but the figures must not get lost in captured output.
MEASURED: list[str] = []


@pytest.fixture
def report_figure():
    """Call with one line of measured figures; it is printed at the end of the run."""
    return MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured figures")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's set-up, plus: end the sessions that worker processes may
    have left on the PostgreSQL test database, so that it can be dropped."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _media_root(request, tmp_path_factory):
    """Each Django test gets its own MEDIA_ROOT and REFCAT_ROOT."""
    if "settings" not in request.fixturenames and not request.node.get_closest_marker("django_db"):
        yield None
        return
    settings = request.getfixturevalue("settings")
    media = tmp_path_factory.mktemp("media")
    settings.MEDIA_ROOT = str(media)
    settings.REFCAT_ROOT = str(media / "refcats")
    yield media


@pytest.fixture
def make_fits(tmp_path):
    """Write a small valid FITS image; keyword overrides go into the header."""
    from astropy.io import fits

    def _make(name: str = "image.fits", *, shape=(64, 64), header: dict | None = None, data=None, seed: int = 1,
              drop: tuple[str, ...] = ()) -> Path:
        rng = np.random.default_rng(seed)
        if data is None:
            data = (100 + rng.normal(0, 5, shape)).astype(np.float32)
        hdu = fits.PrimaryHDU(data)
        cards = {"INSTRUME": "TESTCAM", "FILTER": "r", "EXPTIME": 30.0, "DATE-OBS": "2026-01-02T03:04:05.5",
                 "OBJECT": "field-1"}
        cards.update(header or {})
        for key, value in cards.items():
            if key not in drop:
                hdu.header[key] = value
        path = tmp_path / name
        hdu.writeto(path, overwrite=True)
        return path

    return _make


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def default_config(db):
    from calibweb.core.models import CalibrationConfig

    return CalibrationConfig.objects.create(name="default", version=1, is_default=True, config={})


def _worker_env(settings) -> dict[str, str]:
    """Environment for a worker process that sees the test database and store."""
    from django.db import connection

    env = dict(os.environ)
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        user = db.get("USER") or ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or "5432"
        env["DATABASE_URL"] = f"postgresql://{user}@{host}:{port}/{db['NAME']}"
    env["CALIBWEB_MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    env["CALIBWEB_REFCAT_ROOT"] = str(settings.REFCAT_ROOT)
    env["CALIBWEB_QUEUE"] = settings.CELERY_TASK_DEFAULT_QUEUE
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def celery_worker_process(transactional_db, settings, tmp_path):
    """A real ``celery worker`` process on the configured broker, on a private queue."""
    import uuid

    settings.CELERY_TASK_DEFAULT_QUEUE = f"test-{uuid.uuid4().hex[:8]}"
    env = _worker_env(settings)
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "calibweb", "worker", "--loglevel", "INFO", "--concurrency", "1",
         "--pool", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-n", f"test-{uuid.uuid4().hex[:6]}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    time.sleep(0.5)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "worker.log", artifacts / "worker-last.log")


def wait_for(predicate, *, timeout_s: float = 120.0, interval_s: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
