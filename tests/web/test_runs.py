"""Run lifecycle in-process: claim, progress, success with outputs, failure with a reason, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from calibweb.core import engine, services
from calibweb.core.models import CalibrationRun, ReferenceCatalog, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def sim_files(tmp_path_factory):
    """A small simulated exposure and its reference catalogue (truth known)."""
    from calibration.testing import make_reference_catalog, simulate_exposure, small_field_config, write_fits, write_reference_catalog

    tmp = tmp_path_factory.mktemp("sim")
    sim = simulate_exposure(small_field_config(seed=7))
    image = tmp / "sim.fits"
    write_fits(sim, image)
    ref = tmp / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=7), ref)
    return sim, image, ref


def _upload(user, path: Path):
    return services.exposure_create(user=user, uploaded_file=SimpleUploadedFile(path.name, path.read_bytes())).exposure


def _refcat(ref: Path):
    return ReferenceCatalog.objects.create(name="sim", location=str(ref), bands=["g", "r"])


def test_successful_run_stores_results_and_outputs(user, default_config, sim_files, django_capture_on_commit_callbacks):
    sim, image, ref = sim_files
    exposure = _upload(user, image)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.run_create(user=user, exposure=exposure, config=default_config, refcat=_refcat(ref))
    assert len(callbacks) == 1  # the task is sent only once the row is committed
    assert run.status == RunStatus.QUEUED and run.config_snapshot["detection"]["threshold_sigma"] == 5.0
    assert engine.execute_run(run.pk, hostname="test-host") == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error_message
    assert run.worker_host == "test-host" and run.progress == 100.0
    assert run.started_at and run.finished_at and run.finished_at >= run.started_at
    # The zero point is checked against the simulator's truth in the engine tests;
    # here: it is stored, per second, consistent with the exposure time.
    truth = sim.config.zero_point_mag - 2.5 * np.log10(sim.config.exptime_s)
    assert run.magzero == pytest.approx(truth, abs=0.05)
    assert run.magzero_rms is not None and 0 < run.magzero_rms < 0.01
    assert run.magzero_nobj >= 50
    assert run.n_sources >= 150  # completeness is an engine truth test
    assert set(run.timings) >= {"background", "detection", "psf", "measurement", "apcorr", "astrometry", "photocal"}
    assert run.astrom_offset_mean_arcsec is not None and run.astrom_offset_mean_arcsec < 0.1
    assert run.n_astrom_matches > 50 and "RA---TAN-SIP" in run.wcs_header
    names = set(run.outputs.values_list("name", flat=True))
    assert {"calexp.fits", "calexpBackground.fits", "psf.fits", "apCorr.fits", "src.fits", "src.parquet", "src.csv", "metadata.json",
            "srcMatch.fits", "srcMatchFull.fits", "astromMatch.fits", "astromMatchFull.parquet", "wcs.fits",
            "wcs_tpv.fits"} <= names
    for output in run.outputs.all():
        assert Path(output.file.path).stat().st_size == output.size_bytes > 0
    # The stored models are standard FITS files that rebuild the engine's objects.
    from astropy.io import fits

    from calibration.apcorr import ApCorrMap
    from calibration.psfmodel import psf_model_from_hdulist

    with fits.open(run.outputs.get(name="psf.fits").file.path) as hdul:
        psf = psf_model_from_hdulist(hdul)
        assert psf.image_at([256.0], [256.0], shape=(25, 25)).sum() == pytest.approx(1.0, abs=1e-3)
    with fits.open(run.outputs.get(name="apCorr.fits").file.path) as hdul:
        assert "psf_flux" in ApCorrMap.from_hdulist(hdul)


def test_a_redelivered_task_does_not_run_twice(user, default_config, sim_files):
    _, image, _ = sim_files
    run = services.run_create(user=user, exposure=_upload(user, image), config=default_config)
    assert engine.claim_run(run.pk, hostname="a")
    assert not engine.claim_run(run.pk, hostname="b")
    run.refresh_from_db()
    assert run.worker_host == "a"
    assert engine.execute_run(run.pk, hostname="b") == RunStatus.RUNNING  # nothing done by the second delivery


def test_engine_failure_marks_run_failed_with_stage_and_reason(user, default_config, make_fits):
    path = make_fits(data=np.full((300, 300), 1000.0, np.float32))  # constant: no noise, nothing to detect
    run = services.run_create(user=user, exposure=_upload(user, path), config=default_config)
    assert engine.execute_run(run.pk) == RunStatus.FAILED
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error_stage == "background"
    assert run.error_type == "BadExposureError"
    assert "constant" in run.error_message.lower()
    assert run.outputs.count() == 0


def test_cancel_queued_run_is_never_executed(client, user, default_config, make_fits):
    run = services.run_create(user=user, exposure=_upload(user, make_fits()), config=default_config)
    client.force_login(user)
    client.post(f"/runs/{run.pk}/cancel/")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert engine.execute_run(run.pk) == RunStatus.CANCELLED
    assert run.outputs.count() == 0


def test_cancel_while_running_stops_at_next_stage(user, default_config, sim_files, monkeypatch):
    _, image, _ = sim_files
    run = services.run_create(user=user, exposure=_upload(user, image), config=default_config)
    real_progress = engine._Progress.__call__

    def cancel_during_detection(self, stage, fraction):
        if stage == "detection":
            CalibrationRun.objects.filter(pk=self.run_id).update(status=RunStatus.CANCELLED)
        return real_progress(self, stage, fraction)

    monkeypatch.setattr(engine._Progress, "__call__", cancel_during_detection)
    assert engine.execute_run(run.pk) == RunStatus.CANCELLED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.outputs.count() == 0


def test_bad_config_is_refused_before_queueing(user, make_fits):
    from django.core.exceptions import ValidationError

    from calibweb.core.models import CalibrationConfig

    config = CalibrationConfig(name="bad", config={"detection": {"threshold_sigma": "five"}})
    with pytest.raises(ValidationError, match="threshold_sigma"):
        config.full_clean()
    config.save()  # an admin could bypass clean(); run_create still refuses it
    with pytest.raises(ValidationError, match="threshold_sigma"):
        services.run_create(user=user, exposure=_upload(user, make_fits()), config=config)
    assert CalibrationRun.objects.count() == 0


def test_rerun_with_another_config(client, user, default_config, make_fits):
    from calibweb.core.models import CalibrationConfig

    deep = CalibrationConfig.objects.create(name="deep", config={"detection": {"threshold_sigma": 3.0}})
    run = services.run_create(user=user, exposure=_upload(user, make_fits()), config=default_config)
    services.run_cancel(run=run, user=user)
    client.force_login(user)
    response = client.post(f"/runs/{run.pk}/rerun/", {"config": deep.pk})
    new = CalibrationRun.objects.exclude(pk=run.pk).get()
    assert response["Location"] == new.get_absolute_url()
    assert new.config == deep and new.config_snapshot["detection"]["threshold_sigma"] == 3.0


def test_start_runs_on_many_exposures(client, user, default_config, make_fits):
    a = _upload(user, make_fits("a.fits", seed=1))
    b = _upload(user, make_fits("b.fits", seed=2))
    client.force_login(user)
    response = client.post("/runs/start/", {"exposure": [a.pk, b.pk], "config": default_config.pk, "refcat": ""})
    assert response.status_code == 302
    assert set(CalibrationRun.objects.values_list("exposure_id", flat=True)) == {a.pk, b.pk}
