"""Uploading exposures: facts from the header, duplicates, and every bad input refused cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from django.core.files.uploadedfile import SimpleUploadedFile

from calibweb.core.models import Exposure

pytestmark = pytest.mark.django_db


def _post(client, path: Path, name: str | None = None):
    upload = SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="application/fits")
    return client.post("/exposures/upload/", {"files": [upload]})


def _stored_files(media: Path) -> list[Path]:
    return [p for p in (media / "exposures").rglob("*") if p.is_file()] if (media / "exposures").exists() else []


def test_upload_reads_header_facts(client, user, make_fits, _media_root):
    client.force_login(user)
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [32.5, 32.5]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    path = make_fits(header=dict(w.to_header()))
    response = _post(client, path, name="../../etc/evil name.fits")
    assert response.status_code == 200, response.content
    result = response.json()["results"][0]
    assert result["ok"]
    exposure = Exposure.objects.get(pk=result["id"])
    assert exposure.instrument == "TESTCAM"
    assert exposure.filter_name == "r"
    assert exposure.exptime_s == 30.0
    assert exposure.date_obs.isoformat().startswith("2026-01-02T03:04:05.5")
    assert exposure.mjd_obs == pytest.approx(61042.128, abs=1e-3)
    assert (exposure.nx, exposure.ny) == (64, 64)
    assert exposure.has_wcs
    assert exposure.ra_deg == pytest.approx(150.0, abs=1e-4)
    assert exposure.dec_deg == pytest.approx(2.0, abs=1e-4)
    # The stored name is the app's, never the client's path.
    assert exposure.original_filename == "evil name.fits"
    assert "evil" not in exposure.file.name and ".." not in exposure.file.name
    assert Path(exposure.file.path).read_bytes() == path.read_bytes()
    # The page shows the facts and the escaped header.
    page = client.get(exposure.get_absolute_url()).content.decode()
    assert "TESTCAM" in page and "field-1" in page


def test_header_strings_are_escaped(client, user, make_fits):
    client.force_login(user)
    path = make_fits(header={"OBJECT": "<script>alert(1)</script>"})
    exposure_id = _post(client, path).json()["results"][0]["id"]
    page = client.get(f"/exposures/{exposure_id}/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_same_file_is_stored_once(client, user, make_fits, _media_root):
    client.force_login(user)
    path = make_fits()
    first = _post(client, path).json()["results"][0]
    second = _post(client, path, name="copy.fits").json()["results"][0]
    assert second["ok"] and second["id"] == first["id"] and not second["created"]
    assert Exposure.objects.count() == 1
    assert len(_stored_files(_media_root)) == 1


def _truncated(make_fits, tmp_path):
    path = make_fits(shape=(200, 200))
    data = path.read_bytes()
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _no_data(make_fits, tmp_path):
    hdu = fits.PrimaryHDU()
    hdu.header.update({"FILTER": "r", "DATE-OBS": "2026-01-02T03:04:05"})
    path = tmp_path / "nodata.fits"
    hdu.writeto(path)
    return path


BAD_INPUTS = {
    "not FITS": (lambda mk, tmp: _write(tmp / "notes.fits", b"hello, this is not a FITS file\n" * 100), "FITS"),
    "empty": (lambda mk, tmp: _write(tmp / "empty.fits", b""), "empty"),
    "truncated": (_truncated, "truncated"),
    "no data": (_no_data, "data"),
    "cube": (lambda mk, tmp: mk(data=np.zeros((3, 32, 32), np.float32)), "cube"),
    "missing DATE-OBS": (lambda mk, tmp: mk(drop=("DATE-OBS",)), "DATE-OBS"),
    "malformed DATE-OBS": (lambda mk, tmp: mk(header={"DATE-OBS": "yesterday at noon"}), "yesterday at noon"),
    "missing FILTER": (lambda mk, tmp: mk(drop=("FILTER",)), "filter"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_uploads_are_refused_with_a_reason(case, client, user, make_fits, tmp_path, _media_root):
    client.force_login(user)
    make, expected = BAD_INPUTS[case]
    path = make(make_fits, tmp_path)
    response = _post(client, path)
    assert response.status_code == 400
    result = response.json()["results"][0]
    assert not result["ok"]
    assert expected.lower() in result["error"].lower(), result["error"]
    assert path.name in result["error"]
    assert Exposure.objects.count() == 0
    assert _stored_files(_media_root) == []


def test_upload_over_size_limit_is_refused(client, user, make_fits, settings, _media_root):
    client.force_login(user)
    settings.MAX_UPLOAD_BYTES = 10_000
    path = make_fits(shape=(100, 100))
    response = _post(client, path)
    assert response.status_code == 400
    assert "limit" in response.json()["results"][0]["error"]
    assert Exposure.objects.count() == 0
    assert _stored_files(_media_root) == []


def test_one_bad_file_does_not_lose_the_good_ones(client, user, make_fits, tmp_path):
    client.force_login(user)
    good = make_fits("good.fits")
    bad = _write(tmp_path / "bad.fits", b"junk" * 10)
    response = client.post("/exposures/upload/", {"files": [
        SimpleUploadedFile(good.name, good.read_bytes()), SimpleUploadedFile(bad.name, bad.read_bytes())]})
    results = response.json()["results"]
    assert [r["ok"] for r in results] == [True, False]
    assert Exposure.objects.count() == 1
