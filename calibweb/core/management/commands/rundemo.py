"""Start the whole app for a newcomer: migrate, demo data, web server and a worker.

Uses whatever the environment configures (embedded SQLite and filesystem
broker by default). Stops both processes on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from django.core.management import call_command
from django.core.management.base import BaseCommand

from .demo_setup import DEMO_PASSWORD, DEMO_USER


class Command(BaseCommand):
    help = "Migrate, create demo data, then run the web server and a Celery worker until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("CALIBWEB_PORT", "8000")))
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--workers", type=int, default=1, help="Worker processes (celery --concurrency).")

    def handle(self, *args, port: int, host: str, workers: int, **options):
        t0 = time.monotonic()
        # A plain `kill` must stop the server and the worker too, not orphan them.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("demo_setup")
        env = dict(os.environ)
        py = sys.executable
        worker = subprocess.Popen(
            [py, "-m", "celery", "-A", "calibweb", "worker", "--loglevel", "INFO", "--concurrency", str(workers),
             "--without-gossip", "--without-mingle", "-Q", _queue()],
            env=env,
        )
        web = subprocess.Popen([py, "manage.py", "runserver", f"{host}:{port}", "--noreload"], env=env)
        url = f"http://{host}:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        self.stdout.write(self.style.SUCCESS(
            f"\nCalibWeb is up at {url}  (log in as {DEMO_USER} / {DEMO_PASSWORD}), "
            f"ready after {time.monotonic() - t0:.1f} s. Ctrl-C stops the server and the worker.\n"
        ))
        try:
            while worker.poll() is None and web.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            for proc in (web, worker):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (web, worker):
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _queue() -> str:
    from django.conf import settings

    return settings.CELERY_TASK_DEFAULT_QUEUE
