"""Settings come from the environment; a bad value stops the process with the variable's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from calibweb.env import database_from_url, env_bool, env_int

ROOT = Path(__file__).resolve().parents[2]


def test_database_urls():
    pg = database_from_url("postgresql://u:p%40ss@db.example:6543/calib?sslmode=require")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == ("u", "p@ss", "db.example", "6543", "calib")
    assert pg["OPTIONS"] == {"sslmode": "require"}
    assert database_from_url("sqlite:////abs/path/db.sqlite3")["NAME"] == "/abs/path/db.sqlite3"
    with pytest.raises(ImproperlyConfigured, match="unsupported scheme"):
        database_from_url("mysql://x/y")
    with pytest.raises(ImproperlyConfigured, match="no database name"):
        database_from_url("postgresql://host:5432/")


def test_typed_env_helpers(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env_bool("X_BOOL", False)
    monkeypatch.setenv("X_INT", "lots")
    with pytest.raises(ImproperlyConfigured, match="X_INT='lots'"):
        env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("X_INT", 1, minimum=1)


def test_bad_setting_stops_startup_with_a_message(tmp_path):
    env = dict(os.environ, CALIBWEB_MAX_UPLOAD_MB="lots", CALIBWEB_DATA_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "CALIBWEB_MAX_UPLOAD_MB='lots': expected an integer" in out.stderr


@pytest.mark.django_db
def test_bokehjs_is_served_by_the_app(client, user):
    response = client.get("/static/bokeh/js/bokeh.min.js")
    assert response.status_code == 200
    assert b"Bokeh" in b"".join(response.streaming_content)[:5000]
