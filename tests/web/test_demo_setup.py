"""The newcomer's data: demo user, configurations, a SIMULATED exposure and catalogue, a queued run."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from calibweb.core.models import CalibrationConfig, CalibrationRun, Exposure, ReferenceCatalog, RunStatus

pytestmark = pytest.mark.django_db


def test_demo_setup_is_complete_and_idempotent(settings, tmp_path):
    settings.REFCAT_ROOT = str(tmp_path / "refcats")
    call_command("demo_setup")
    call_command("demo_setup")
    user = get_user_model().objects.get(username="demo")
    assert user.check_password("calibweb-demo")
    assert CalibrationConfig.objects.filter(is_default=True).count() == 1
    refcat = ReferenceCatalog.objects.get(name="demo-simulated")
    assert "SIMULATED" in refcat.description
    exposure = Exposure.objects.get(original_filename="demo_simulated_r.fits")
    run = CalibrationRun.objects.get(exposure=exposure)
    assert run.status == RunStatus.QUEUED and run.refcat == refcat
