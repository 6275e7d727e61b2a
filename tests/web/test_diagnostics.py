"""Diagnostics: the service on stored outputs (truth known), the views (who may see what),
CSV exports and the self-contained HTML report."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from django.core.files.uploadedfile import SimpleUploadedFile

from calibration.photocal import PhotoCalConfig, fit_zero_point
from calibration.psfmodel import MoffatPsfModel
from calibration.tables import write_table
from calibration.testing import small_field_config
from calibration.testing.simwcs import make_wcs
from calibweb.core import diagnostics, services
from calibweb.core.models import CalibrationRun, RunOutput, RunStatus

SHAPE = (150, 200)  # (ny, nx)
SIP_A = (4e-5, 0.0, 0.0)  # A_2_0 only: x distortion = 4e-5 u^2 pix
N_ASTROM = 120


# ------------------------------------------------------------------ synthetic stored outputs


def write_outputs(directory: Path, *, astrometry: bool = True, seed: int = 11) -> dict:
    """The files a successful run stores, small and with known content; returns the truth."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ny, nx = SHAPE
    cfg = small_field_config(seed=seed, shape=SHAPE, sip_a=SIP_A, sip_b=(0.0, 0.0, 0.0))
    wcs = make_wcs(cfg)
    image = rng.normal(0.0, 10.0, SHAPE).astype(np.float32)
    image[70:75, 100:105] += 500.0
    ext = fits.ImageHDU(image, header=wcs.to_header(relax=True), name="IMAGE")
    fits.HDUList([fits.PrimaryHDU(), ext, fits.ImageHDU(np.zeros(SHAPE, np.int32), name="MASK"),
                  fits.ImageHDU(np.ones(SHAPE, np.float32), name="VARIANCE")]).writeto(directory / "calexp.fits")
    level = (1000.0 + 0.5 * np.arange(nx)[None, :] + np.zeros(SHAPE)).astype(np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(level, name="LEVEL"),
                  fits.ImageHDU(np.full(SHAPE, 30.0, np.float32), name="RMS")]).writeto(directory / "calexpBackground.fits")
    psf = MoffatPsfModel([3.0, 0.2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], beta=3.0, image_shape=SHAPE,
                         spatial_order=1)
    fits.HDUList([fits.PrimaryHDU(), *psf.to_hdulist()]).writeto(directory / "psf.fits")

    n_src = 60
    src = Table()
    src["id"] = np.arange(1, n_src + 1, dtype=np.int64)
    src["x"] = rng.uniform(0, nx - 1, n_src)
    src["y"] = rng.uniform(0, ny - 1, n_src)
    src["sky_source"] = np.arange(n_src) >= 55
    src["calib_psf_used"] = np.arange(n_src) < 8
    src["calib_psf_reserved"] = np.arange(n_src) == 8
    src["mag"] = rng.uniform(15, 20, n_src)
    write_table(src, directory / "src.parquet")

    # Photometric matches whose clipping is the engine's own (fit_zero_point).
    n_ph = 50
    zp = 27.3
    prng = np.random.default_rng(seed)
    ref_r = prng.uniform(15, 20, n_ph)
    offset = prng.normal(0, 0.02, n_ph)
    offset[:3] = [0.6, -0.5, 0.4]
    inst = ref_r - zp - offset
    pc = PhotoCalConfig(reserve_fraction=0.1)
    fit = fit_zero_point(inst, np.full(n_ph, 0.01), ref_r, np.full(n_ph, 0.01), config=pc, seed=1)
    ph = Table()
    ph["ref_id"] = np.arange(n_ph, dtype=np.int64) + 900
    ph["src_id"] = src["id"][:n_ph]
    ph["distance_arcsec"] = rng.uniform(0, 0.1, n_ph)
    ph["ref_ra"], ph["ref_dec"] = wcs.all_pix2world(src["x"][:n_ph], src["y"][:n_ph], 0)
    ph["ref_g_mag"] = ref_r + 0.5
    ph["ref_r_mag"] = ref_r
    ph["src_x"], ph["src_y"] = src["x"][:n_ph], src["y"][:n_ph]
    ph["src_psf_flux"] = 10 ** (-0.4 * inst)
    ph["photocal_used"], ph["photocal_reserved"], ph["photocal_clipped"] = fit.used, fit.reserved, fit.clipped
    ph["photocal_residual_mag"] = fit.residual_mag
    write_table(ph, directory / "srcMatchFull.parquet")

    if astrometry:
        am = Table()
        am["ref_id"] = np.arange(N_ASTROM, dtype=np.int64) + 5000
        am["src_id"] = np.arange(1, N_ASTROM + 1, dtype=np.int64)
        am["src_x"] = rng.uniform(0, nx - 1, N_ASTROM)
        am["src_y"] = rng.uniform(0, ny - 1, N_ASTROM)
        am["src_ra"], am["src_dec"] = wcs.all_pix2world(am["src_x"], am["src_y"], 0)
        am["dra_mas"] = rng.normal(0, 15, N_ASTROM)
        am["ddec_mas"] = rng.normal(0, 15, N_ASTROM)
        am["ref_ra"] = am["src_ra"] + am["dra_mas"] / 3.6e6 / np.cos(np.radians(am["src_dec"]))
        am["ref_dec"] = am["src_dec"] + am["ddec_mas"] / 3.6e6
        am["distance_arcsec"] = np.hypot(am["dra_mas"], am["ddec_mas"]) / 1000
        am["initial_distance_arcsec"] = rng.uniform(0.3, 1.5, N_ASTROM)
        clipped = np.arange(N_ASTROM) < 4
        reserved = np.arange(N_ASTROM) % 10 == 9
        am["used"], am["clipped"], am["reserved"] = ~clipped & ~reserved, clipped, reserved
        am["ref_mag"] = rng.uniform(15, 20, N_ASTROM)
        write_table(am, directory / "astromMatchFull.parquet")

    metadata = {
        "metadata": {"MAGZERO": zp - 2.5 * np.log10(30.0), "MAGZERO_RMS": fit.zero_point_err_mag,
                     "MAGZERO_NOBJ": int(fit.n_used), "ZERO_POINT_MAG": fit.zero_point_mag, "PHOTOM_BAND": "r",
                     "PHOTOM_FLUX_FIELD": "psf_flux", "PHOTOM_SCATTER_MAG": fit.scatter_mag, "PSF_FWHM_PIX": 3.0,
                     "SKY_NOISE_ADU": 10.0, "ASTROM_RMS_MAS": 21.0 if astrometry else None},
        "timings_s": {"detection": 0.25, "photocal": 0.05},
        "warnings": [],
        "config": {"photocal": {"n_sigma": pc.n_sigma, "sigma_max_mag": pc.sigma_max_mag, "flux_field": "psf_flux"}},
    }
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return {"fit": fit, "zp": zp, "offset": offset}


@pytest.fixture
def stored(tmp_path):
    truth = write_outputs(tmp_path / "out")
    return diagnostics.RunFiles.in_directory(tmp_path / "out"), truth


def make_run(owner, make_fits, *, astrometry: bool = True, status: str = RunStatus.SUCCEEDED) -> CalibrationRun:
    """A run row with the synthetic outputs stored as its RunOutput rows."""
    from django.conf import settings

    path = make_fits(f"e{owner.pk}.fits", seed=owner.pk)
    exposure = services.exposure_create(
        user=owner, uploaded_file=SimpleUploadedFile(path.name, path.read_bytes())).exposure
    run = CalibrationRun.objects.create(exposure=exposure, created_by=owner, status=status,
                                        metadata={"MAGZERO": 23.6}, timings={"detection": 0.25})
    directory = Path(settings.MEDIA_ROOT) / "runs" / str(run.pk)
    write_outputs(directory, astrometry=astrometry)
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        RunOutput.objects.create(run=run, name=file.name, kind=file.stem, format=file.suffix[1:],
                                 file=f"runs/{run.pk}/{file.name}", size_bytes=file.stat().st_size)
    return run


def read_csv(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


# ----------------------------------------------------------------------------- the service


def test_clip_limits_are_those_the_engine_applied(stored):
    files, truth = stored
    data = diagnostics.photometry_data(files)
    fit = truth["fit"]
    residual = np.asarray(fit.residual_mag)
    inside = np.abs(residual - data.clip_centre_mag) <= data.clip_halfwidth_mag
    assert fit.clipped.sum() >= 3  # the outliers were rejected
    assert inside[fit.used].all() and not inside[fit.clipped].any()
    assert data.clip_halfwidth_mag == pytest.approx(PhotoCalConfig().n_sigma * fit.clip_sigma_mag)
    assert data.zero_point_mag == pytest.approx(fit.zero_point_mag)
    assert data.colour_label == "r - g" and data.band == "r"
    np.testing.assert_allclose(data.matches["dmag"], truth["zp"] + truth["offset"], atol=1e-9)  # ref - inst


def test_sip_distortion_grid_is_the_sip_polynomial(stored):
    files, truth = stored
    wcs, shape = diagnostics.read_calexp_wcs(files)
    assert shape == SHAPE
    grid = diagnostics.sip_distortion_grid(wcs, shape, n=5)
    u = grid["x"] - (wcs.wcs.crpix[0] - 1)
    np.testing.assert_allclose(grid["dx_pix"], SIP_A[0] * u**2, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grid["dy_pix"], 0.0, atol=1e-9)
    assert diagnostics.sip_distortion_grid(None, shape) is None


def test_astrometry_data_from_stored_files(stored):
    files, _ = stored
    data = diagnostics.astrometry_data(files)
    assert data.vector_frame == "detector" and data.image_shape == SHAPE
    table = data.matches
    assert len(table["src_id"]) == N_ASTROM
    assert list(np.unique(table["status"])) == ["clipped", "reserved", "used"]
    # The simulator's WCS has east to -x and north to +y (no rotation): detector = sky axes, x flipped.
    np.testing.assert_allclose(table["res_x_mas"], -table["dra_mas"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table["res_y_mas"], table["ddec_mas"], rtol=1e-6, atol=1e-6)
    # Source magnitudes joined by id from src.parquet (ids 1..60 exist, the others do not).
    assert np.isfinite(table["src_mag"][:60]).all() and np.isnan(table["src_mag"][60:]).all()
    hist = data.histograms["dra_mas"]
    assert hist["used"].sum() + hist["clipped"].sum() + hist["reserved"].sum() == N_ASTROM
    assert data.distortion is not None


def test_no_astrometric_fit_is_said_plainly(tmp_path):
    write_outputs(tmp_path, astrometry=False)
    files = diagnostics.RunFiles.in_directory(tmp_path)
    with pytest.raises(diagnostics.DiagnosticsUnavailable, match="no astrometric fit in this run"):
        diagnostics.astrometry_data(files)
    assert diagnostics.available_sections(files) == {"astrometry": False, "photometry": True, "image": True}


def test_background_panel_is_rebuilt_from_the_stored_mesh(tmp_path):
    """An engine-written calexpBackground holds only the mesh: the panel shows the sky level it stands for."""
    from calibration.background import BackgroundConfig, estimate_background
    from calibration.exposure import make_exposure

    ny, nx = 300, 400
    sky = 1000.0 + 0.2 * np.arange(nx)[None, :] + 0.1 * np.arange(ny)[:, None]
    noise = np.random.default_rng(3).normal(0.0, 10.0, (ny, nx))
    model = estimate_background(make_exposure(sky + noise), BackgroundConfig(box_size_pix=64))
    model.to_hdulist().writeto(tmp_path / "calexpBackground.fits")
    image, factor = diagnostics.background_image(tmp_path / "calexpBackground.fits", 100)
    assert factor == 4 and image.shape == (75, 100)
    np.testing.assert_allclose(image, model.level_image.reshape(75, 4, 100, 4).mean(axis=(1, 3)), atol=1e-3)
    truth = sky.reshape(75, 4, 100, 4).mean(axis=(1, 3))
    assert np.abs(image - truth).max() < 10.0  # the sky it shows is the sky (within 1 sigma at the edges)
    # Partial edge blocks (300 / 7 and 400 / 7 are not whole): the same as averaging the plane.
    image, factor = diagnostics.background_image(tmp_path / "calexpBackground.fits", 60)
    expected, f = diagnostics.block_average(model.level_image, 60)
    assert factor == f == 7 and image.shape == expected.shape == (43, 58)
    np.testing.assert_allclose(image, expected, atol=1e-3)
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "other.fits")
    assert diagnostics.background_image(tmp_path / "other.fits", 100) == (None, 1)


def test_image_is_block_averaged_and_scaled_to_bytes(stored):
    files, _ = stored
    data = diagnostics.image_data(files, max_side=64)
    assert data.factor == 4 and data.zscale.shape == (38, 50) and data.zscale.dtype == np.uint8
    assert data.zscale[70 // 4, 100 // 4] == 255  # the bright square is white
    assert data.background.shape == (150, 200) and data.background_factor == 1
    assert len(data.layers["sky sources"]["x"]) == 5 and len(data.layers["detected sources"]["x"]) == 55
    refs = data.layers["matched reference stars"]
    assert len(refs["x"]) == N_ASTROM  # from the astrometric matches, placed by the WCS
    assert data.psf.stamps.shape == (9, 25, 25)
    np.testing.assert_allclose(data.psf.stamps.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert 2.5 < np.median(data.psf.fwhm["fwhm_pix"]) < 3.5


def test_block_average_ignores_nan_and_keeps_edges():
    image = np.arange(35, dtype=np.float32).reshape(5, 7)
    image[0, 0] = np.nan
    small, factor = diagnostics.block_average(image, 3)
    assert factor == 3 and small.shape == (2, 3)
    assert small[0, 0] == pytest.approx(np.nanmean(image[:3, :3]))
    assert small[1, 2] == pytest.approx(image[3:, 6:].mean())


def test_histogram_counts_every_star_once_even_beyond_the_range():
    values = np.array([-100.0, -1.0, 0.0, 1.0, 100.0, np.nan])
    groups = {"a": np.array([1, 1, 1, 0, 0, 1], bool), "b": np.array([0, 0, 0, 1, 1, 0], bool)}
    hist = diagnostics.histogram(values, groups, bins=4, half_range=2.0)  # edges -2, -1, 0, 1, 2
    assert hist["a"].tolist() == [1, 1, 1, 0] and hist["b"].tolist() == [0, 0, 0, 2]
    assert hist["left"][0] == -2.0 and hist["right"][-1] == 2.0


def test_decimation_keeps_rare_rows_first_and_the_order():
    table = {"i": np.arange(100), "rare": np.arange(100) % 25 == 0}
    out = diagnostics.decimate(table, max_rows=20, keep=table["rare"], seed=1)
    assert len(out["i"]) == 20 and set(range(0, 100, 25)) <= set(out["i"].tolist())
    assert (np.diff(out["i"]) > 0).all()
    # Rows to keep first are capped at a quarter; the rest is a sample of all others, so the
    # common rows stay visible when the "rare" ones are many.
    many = {"i": np.arange(1000), "rare": np.arange(1000) < 900}
    out = diagnostics.decimate(many, max_rows=100, keep=many["rare"], seed=1)
    assert out["rare"].sum() >= 25 and (~out["rare"]).sum() >= 3
    assert diagnostics.decimate(table, max_rows=None)["i"] is table["i"]


def test_brightest_markers_are_kept():
    layer = {"x": np.arange(5.0), "y": np.zeros(5), "id": np.arange(5), "mag": np.array([20, np.nan, 15, 18, 16.0])}
    assert diagnostics.brightest(layer, 3)["id"].tolist() == [2, 3, 4]


def test_binned_median_follows_a_trend():
    x = np.linspace(0, 100, 1000)
    out = diagnostics.binned_median(x, 2.0 * x, bins=10)
    assert len(out["x"]) == 10 and out["n"].sum() == 1000
    np.testing.assert_allclose(out["median"], 2.0 * out["x"], rtol=1e-9)


def test_csv_export_writes_floats_booleans_and_missing_values():
    text = diagnostics.to_csv({"id": np.array([1, 2]), "v": np.array([0.1234567891, np.nan]),
                               "ok": np.array([True, False]), "status": np.array(["used", "clipped"])})
    assert text.splitlines() == ["id,v,ok,status", "1,0.1234568,true,used", "2,,false,clipped"]


def test_section_json_is_built_once_and_rebuilt_when_an_output_changes(stored):
    files, _ = stored
    calls = []

    def build():
        calls.append(1)
        return f"build {len(calls)}".encode()

    first = diagnostics.cached(files, name="photometry.json", version="v1", build=build)
    assert diagnostics.cached(files, name="photometry.json", version="v1", build=build) == first == b"build 1"
    assert diagnostics.cached(files, name="photometry.json", version="v2", build=build) == b"build 2"
    cache = files.path("metadata.json").parent / diagnostics.CACHE_DIR
    assert len(list(cache.glob("photometry-*.json"))) == 1  # the stale one is gone
    files.path("metadata.json").write_text(files.path("metadata.json").read_text() + " ")
    assert diagnostics.cached(files, name="photometry.json", version="v2", build=build) == b"build 3"


# ------------------------------------------------------------------------------ the views


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["diagnostics/astrometry.json", "diagnostics/photometry-matches.csv", "report.html"])
def test_diagnostics_need_login(client, user, make_fits, suffix):
    run = make_run(user, make_fits)
    response = client.get(f"/runs/{run.pk}/{suffix}")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["diagnostics/astrometry.json", "diagnostics/photometry-matches.csv", "report.html"])
def test_other_users_runs_are_404(client, user, other_user, make_fits, suffix):
    run = make_run(other_user, make_fits)
    client.force_login(user)
    assert client.get(f"/runs/{run.pk}/{suffix}").status_code == 404
    client.force_login(other_user)
    assert client.get(f"/runs/{run.pk}/{suffix}").status_code == 200


@pytest.mark.django_db
def test_runs_without_outputs_have_no_diagnostics(client, user, make_fits):
    run = make_run(user, make_fits, status=RunStatus.FAILED)
    client.force_login(user)
    assert client.get(f"/runs/{run.pk}/diagnostics/photometry.json").status_code == 404
    assert client.get(f"/runs/{run.pk}/report.html").status_code == 404
    assert 'id="diagnostics"' not in client.get(f"/runs/{run.pk}/").content.decode()


@pytest.mark.django_db
def test_run_page_has_tabs_report_link_and_keeps_its_results(client, user, make_fits):
    run = make_run(user, make_fits)
    client.force_login(user)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    for element in ('id="results"', 'id="magzero"', 'id="run-status"', 'id="diagnostics"', 'id="qa-summary"',
                    f'href="/runs/{run.pk}/report.html"', f'data-item-url="/runs/{run.pk}/diagnostics/astrometry.json"'):
        assert element in page
    assert "/static/bokeh/js/bokeh.min.js" in page and "cdn." not in page
    assert f'href="/runs/{run.pk}/diagnostics/astrometry-distortion.csv"' in page  # the WCS has SIP
    # The page itself carries no plot data: that comes from the json endpoints.
    assert len(page) < 40_000


@pytest.mark.django_db
def test_run_page_says_when_there_is_no_astrometric_fit(client, user, make_fits):
    run = make_run(user, make_fits, astrometry=False)
    client.force_login(user)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "No astrometric fit in this run." in page
    assert f"/runs/{run.pk}/diagnostics/astrometry.json" not in page
    response = client.get(f"/runs/{run.pk}/diagnostics/astrometry.json")
    assert response.status_code == 404 and response.json() == {"error": "no astrometric fit in this run"}


@pytest.mark.django_db
@pytest.mark.parametrize("section", ["astrometry", "photometry", "image"])
def test_section_items_are_bokeh_json(client, user, make_fits, section):
    run = make_run(user, make_fits)
    client.force_login(user)
    response = client.get(f"/runs/{run.pk}/diagnostics/{section}.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    item = response.json()
    assert {"doc", "root_id"} <= set(item)
    roots = item["doc"]["roots"]
    assert roots[0]["attributes"]["name"] == section
    assert client.get(f"/runs/{run.pk}/diagnostics/{section}.json").content == response.content  # cached


@pytest.mark.django_db
def test_unknown_section_or_dataset_is_404(client, user, make_fits):
    run = make_run(user, make_fits)
    client.force_login(user)
    assert client.get(f"/runs/{run.pk}/diagnostics/nothing.json").status_code == 404
    assert client.get(f"/runs/{run.pk}/diagnostics/nothing.csv").status_code == 404


@pytest.mark.django_db
def test_csv_exports_hold_the_plotted_data(client, user, make_fits):
    run = make_run(user, make_fits)
    client.force_login(user)
    response = client.get(f"/runs/{run.pk}/diagnostics/astrometry-matches.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="run{run.pk}_astrometry-matches.csv"'
    rows = read_csv(response)
    assert len(rows) == N_ASTROM
    assert {"src_id", "ref_id", "x", "y", "dra_mas", "ddec_mas", "res_x_mas", "res_y_mas", "status"} <= set(rows[0])
    assert sum(r["status"] == "clipped" for r in rows) == 4
    photometry = read_csv(client.get(f"/runs/{run.pk}/diagnostics/photometry-matches.csv"))
    assert {r["status"] for r in photometry} >= {"used", "clipped", "reserved"}
    summary = {r["name"]: r for r in read_csv(client.get(f"/runs/{run.pk}/diagnostics/summary.csv"))}
    assert summary["PSF_FWHM_PIX"]["value"] == "3" and summary["PSF_FWHM_PIX"]["unit"] == "pix"
    for name, (section, _) in diagnostics.DATASETS.items():
        response = client.get(f"/runs/{run.pk}/diagnostics/{name}.csv")
        assert response.status_code == 200, name
        assert len(read_csv(response)) > 0, name


@pytest.mark.django_db
def test_report_is_a_self_contained_html_download(client, user, make_fits):
    run = make_run(user, make_fits)
    client.force_login(user)
    response = client.get(f"/runs/{run.pk}/report.html")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert response["Content-Disposition"] == f'attachment; filename="run{run.pk}_report.html"'
    html = response.content.decode()
    assert not re.search(r"<script[^>]*\ssrc=[\"']?(https?:)?//", html)
    assert not re.search(r"<link[^>]*\shref=[\"']?(https?:)?//", html)
    assert "Bokeh" in html and html.count("<script") >= 2  # BokehJS inlined, then the document
    assert f"CalibWeb run #{run.pk}" in html and "MAGZERO_RMS" in html


def test_csv_text_cells_cannot_run_as_formulas():
    import numpy as np

    from calibweb.core.diagnostics import to_csv

    text = to_csv({"instrument": np.array(["=HYPERLINK(\"http://x\")", "@SUM(A1)", "SimCam"], dtype=object),
                   "value": np.array([-1.5, 2.0, 3.0])})
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1] == ["'=HYPERLINK(\"http://x\")", "-1.5"] and rows[2][0] == "'@SUM(A1)"
    assert rows[3] == ["SimCam", "3"]
