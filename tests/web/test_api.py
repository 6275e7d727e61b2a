"""The JSON API with token authentication."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from calibweb.core.models import CalibrationRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    client = APIClient()
    token = Token.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def test_token_is_obtained_with_password(client, user):
    response = client.post("/api/token/", {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 200 and len(response.json()["token"]) == 40


def test_upload_list_get_and_header(api, make_fits):
    path = make_fits()
    with open(path, "rb") as fh:
        response = api.post("/api/exposures/", {"file": fh}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["filter_name"] == "r" and body["nx"] == 64
    assert api.get("/api/exposures/").json()["count"] == 1
    assert api.get(f"/api/exposures/{body['id']}/").json()["sha256"] == body["sha256"]
    header = api.get(f"/api/exposures/{body['id']}/header/").json()["header"]
    assert ["FILTER", "r"] == header[[c[0] for c in header].index("FILTER")][:2]
    with open(path, "rb") as fh:
        again = api.post("/api/exposures/", {"file": fh}, format="multipart")
    assert again.status_code == 200 and again.json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"drop": ("DATE-OBS",)}, "DATE-OBS"), ({"header": {"DATE-OBS": "2026-13-45"}}, "2026-13-45"),
     ({"drop": ("FILTER",)}, "filter")],
)
def test_bad_upload_is_a_400_with_a_reason(api, make_fits, kwargs, reason):
    path = make_fits(**kwargs)
    with open(path, "rb") as fh:
        response = api.post("/api/exposures/", {"file": fh}, format="multipart")
    assert response.status_code == 400
    assert reason.lower() in response.json()["detail"].lower()


def test_missing_file_field_is_a_400(api):
    response = api.post("/api/exposures/", {}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()


def test_create_run_get_status_and_cancel(api, make_fits, default_config, django_capture_on_commit_callbacks):
    with open(make_fits(), "rb") as fh:
        exposure_id = api.post("/api/exposures/", {"file": fh}, format="multipart").json()["id"]
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post("/api/runs/", {"exposure": exposure_id}, format="json")
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["status"] == "queued" and run["config"] == default_config.pk
    assert api.get(f"/api/runs/{run['id']}/").json()["status"] == "queued"
    assert api.post(f"/api/runs/{run['id']}/cancel/").json()["status"] == "cancelled"
    assert api.post(f"/api/runs/{run['id']}/cancel/").status_code == 409
    assert CalibrationRun.objects.get(pk=run["id"]).status == "cancelled"


def test_run_on_invisible_exposure_is_404(api, other_user, make_fits, default_config):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from calibweb.core import services

    path = make_fits()
    theirs = services.exposure_create(user=other_user, uploaded_file=SimpleUploadedFile(path.name, path.read_bytes()))
    assert api.post("/api/runs/", {"exposure": theirs.exposure.pk}, format="json").status_code == 404


def test_configs_refcats_and_schema(api, default_config):
    assert api.get("/api/configs/").json()["results"][0]["name"] == "default"
    assert api.get("/api/refcats/").status_code == 200
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/runs/" in schema.content
