"""Nothing without login; users see their own and their groups' exposures; admin is staff only; CSRF on."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from calibweb.core import services

pytestmark = pytest.mark.django_db


def _exposure(owner, make_fits, seed=1):
    path = make_fits(f"e{seed}.fits", seed=seed)
    return services.exposure_create(user=owner, uploaded_file=SimpleUploadedFile(path.name, path.read_bytes())).exposure


@pytest.mark.parametrize("url", ["/", "/exposures/", "/runs/", "/exposures/1/"])
def test_pages_need_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_api_needs_authentication(client):
    assert client.get("/api/exposures/").status_code == 401


def test_users_see_own_and_group_exposures_only(client, user, other_user, django_user_model, make_fits):
    mine = _exposure(user, make_fits, 1)
    theirs = _exposure(other_user, make_fits, 2)
    client.force_login(user)
    assert client.get(f"/exposures/{mine.pk}/").status_code == 200
    assert client.get(f"/exposures/{theirs.pk}/").status_code == 404
    listing = client.get("/exposures/").content.decode()
    assert mine.original_filename in listing and theirs.original_filename not in listing
    team = Group.objects.create(name="team")
    user.groups.add(team)
    other_user.groups.add(team)
    assert client.get(f"/exposures/{theirs.pk}/").status_code == 200
    stranger = django_user_model.objects.create_user("carol", password="pw-carol-123")
    client.force_login(stranger)
    assert client.get(f"/exposures/{mine.pk}/").status_code == 404


def test_admin_is_for_staff_only(client, user, django_user_model):
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    staff = django_user_model.objects.create_user("sam", password="pw-sam-12345", is_staff=True, is_superuser=True)
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/core/calibrationrun/").status_code == 200


def test_csrf_is_enforced(user, make_fits):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    path = make_fits()
    response = client.post("/exposures/upload/", {"files": [SimpleUploadedFile(path.name, path.read_bytes())]})
    assert response.status_code == 403
