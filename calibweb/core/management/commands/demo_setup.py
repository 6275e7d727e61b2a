"""Create the demo user, the default configuration and simulated demo data.

Idempotent: running it twice changes nothing. The demo exposure and its
reference catalogue are made by the project's own simulator from a fixed seed
and are labelled SIMULATED everywhere they appear.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand

from calibweb.core import services
from calibweb.core.models import REVIEWERS_GROUP, ROLE_GROUPS, CalibrationConfig, Exposure, ReferenceCatalog

DEMO_USER = "demo"
DEMO_PASSWORD = "calibweb-demo"
DEMO_SEED = 20261123


class Command(BaseCommand):
    help = ("Create the demo user (in demo-team and reviewers), the role groups, the default configuration, and a "
            "simulated exposure with its reference catalogue.")

    def add_arguments(self, parser):
        parser.add_argument("--no-data", action="store_true", help="Only the user and configuration.")

    def handle(self, *args, no_data: bool = False, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True})
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        team, _ = Group.objects.get_or_create(name="demo-team")
        user.groups.add(team)
        # Role groups (also made by migration 0003); the demo user reviews.
        for name in ROLE_GROUPS:
            Group.objects.get_or_create(name=name)
        user.groups.add(Group.objects.get(name=REVIEWERS_GROUP))
        if not CalibrationConfig.objects.exists():
            CalibrationConfig.objects.create(
                name="default", version=1, is_default=True, config={}, created_by=user,
                description="Engine defaults: 5-sigma detection, 12-pixel calibration aperture, LSST zero-point clipping.",
            )
            CalibrationConfig.objects.create(
                name="deep-detection", version=1, config={"detection": {"threshold_sigma": 3.0}}, created_by=user,
                description="3-sigma detection threshold for faint sources.",
            )
        if not no_data:
            self._demo_data(user)
        self.stdout.write(self.style.SUCCESS(f"demo user: {DEMO_USER} / {DEMO_PASSWORD}"))

    def _demo_data(self, user) -> None:
        from calibration.testing import SimConfig, make_reference_catalog, simulate_exposure, write_fits, write_reference_catalog

        # The header WCS is off by a few tens of pixels, as real headers are: the astrometric fit corrects it.
        sim = simulate_exposure(SimConfig(shape=(1024, 1024), n_stars=800, seed=DEMO_SEED,
                                          header_offset_pix=(25.0, -15.0), header_rotation_deg=0.2))
        refcat_dir = Path(settings.REFCAT_ROOT)
        refcat_dir.mkdir(parents=True, exist_ok=True)
        ref_path = refcat_dir / "demo_simulated.parquet"
        if not ref_path.exists():
            write_reference_catalog(make_reference_catalog(sim, seed=DEMO_SEED), ref_path)
        ReferenceCatalog.objects.get_or_create(
            name="demo-simulated",
            defaults={
                "location": ref_path.name, "bands": ["g", "r"], "epoch": 2016.0,
                "description": f"SIMULATED reference catalogue made by calibration.testing, seed {DEMO_SEED}, "
                "matching the demo exposure. Not real data.",
            },
        )
        if Exposure.objects.filter(original_filename="demo_simulated_r.fits").exists():
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "demo_simulated_r.fits"
            write_fits(sim, path)
            upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="application/fits")
            exposure = services.exposure_create(user=user, uploaded_file=upload).exposure
        # A first run, queued now, so the worker has results to show when the page opens.
        services.run_create(user=user, exposure=exposure, config=CalibrationConfig.objects.get(is_default=True),
                            refcat=ReferenceCatalog.objects.get(name="demo-simulated"))
        self.stdout.write("demo exposure and reference catalogue created (SIMULATED); a first run is queued")
