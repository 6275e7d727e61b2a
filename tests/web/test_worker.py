"""A real Celery worker process on the configured broker, from upload to finished run."""

from __future__ import annotations

import pytest
import requests
from rest_framework.authtoken.models import Token

from calibweb.core.models import CalibrationRun, ReferenceCatalog, RunStatus
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_worker_runs_upload_to_result_and_survives_a_failure(
    live_server, celery_worker_process, user, default_config, tmp_path, make_fits
):
    from calibration.testing import make_reference_catalog, simulate_exposure, small_field_config, write_fits, write_reference_catalog
    import numpy as np

    sim = simulate_exposure(small_field_config(seed=11))
    image = tmp_path / "sim.fits"
    write_fits(sim, image)
    ref = tmp_path / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=11), ref)
    refcat = ReferenceCatalog.objects.create(name="sim", location=str(ref), bands=["g", "r"])
    session = requests.Session()
    session.headers["Authorization"] = f"Token {Token.objects.create(user=user).key}"
    api = live_server.url + "/api"

    # A run that fails in the engine (constant image) must not take the worker down.
    bad = make_fits("constant.fits", data=np.full((300, 300), 500.0, np.float32))
    with open(bad, "rb") as fh:
        bad_id = session.post(f"{api}/exposures/", files={"file": fh}).json()["id"]
    bad_run = session.post(f"{api}/runs/", json={"exposure": bad_id}).json()

    with open(image, "rb") as fh:
        response = session.post(f"{api}/exposures/", files={"file": fh})
    assert response.status_code == 201, response.text
    run = session.post(f"{api}/runs/", json={"exposure": response.json()["id"], "refcat": refcat.pk}).json()

    def finished(run_id):
        body = session.get(f"{api}/runs/{run_id}/").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    failed = wait_for(lambda: finished(bad_run["id"]), timeout_s=120, what="the failing run")
    assert failed["status"] == "failed" and failed["error_stage"] == "background"
    done = wait_for(lambda: finished(run["id"]), timeout_s=180, what="the good run")
    assert done["status"] == "succeeded", done["error_message"]
    assert celery_worker_process.poll() is None  # the worker lives on
    assert done["worker_host"].startswith("test-")
    assert done["magzero"] == pytest.approx(sim.config.zero_point_mag - 2.5 * np.log10(sim.config.exptime_s), abs=0.05)
    src = session.get(f"{api}/runs/{run['id']}/outputs/src.csv")
    assert src.status_code == 200 and src.text.splitlines()[0].startswith("id,")
    assert CalibrationRun.objects.get(pk=run["id"]).status == RunStatus.SUCCEEDED
