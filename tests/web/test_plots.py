"""Diagnostics plots as figure objects, built from synthetic tables with known content.

The astrometric matches follow the ``astromMatchFull`` schema the astrometry
stage will write (ref_id, src_id, ref_ra, ref_dec, src_x, src_y, src_ra,
src_dec, distance_arcsec, initial_distance_arcsec, dra_mas, ddec_mas, used,
clipped, reserved, ref_mag); the photometric ones the ``srcMatchFull`` columns.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from bokeh.models import (
    Arrow,
    ColorBar,
    GlyphRenderer,
    HoverTool,
    IndexFilter,
    Label,
    Legend,
    Plot,
    Span,
    Title,
)

from calibweb.core import diagnostics, plots
from calibweb.core.plots import astrometry as pa
from calibweb.core.plots import image as pi
from calibweb.core.plots import photometry as pp

SHAPE = (300, 400)  # (ny, nx): not square, so that a swapped axis shows


def astrom_matches(n: int = 200, *, seed: int = 3, sigma_mas: float = 20.0) -> Table:
    """Synthetic ``astromMatchFull``: Gaussian residuals, a few clipped outliers, 10% reserved."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    t = Table()
    t["ref_id"] = np.arange(n, dtype=np.int64) + 10_000
    t["src_id"] = np.arange(n, dtype=np.int64) + 1
    t["src_x"] = rng.uniform(0, nx - 1, n)
    t["src_y"] = rng.uniform(0, ny - 1, n)
    t["ref_ra"] = 150.0 - (t["src_x"] - nx / 2) * 0.2 / 3600
    t["ref_dec"] = 2.0 + (t["src_y"] - ny / 2) * 0.2 / 3600
    t["src_ra"], t["src_dec"] = t["ref_ra"], t["ref_dec"]
    t["dra_mas"] = rng.normal(0, sigma_mas, n)
    t["ddec_mas"] = rng.normal(0, sigma_mas, n)
    clipped = np.zeros(n, bool)
    clipped[:5] = True
    t["dra_mas"][clipped] = 400.0
    reserved = ~clipped & (np.arange(n) % 10 == 9)
    t["distance_arcsec"] = np.hypot(t["dra_mas"], t["ddec_mas"]) / 1000
    t["initial_distance_arcsec"] = rng.uniform(0.5, 2.0, n)
    t["used"], t["clipped"], t["reserved"] = ~clipped & ~reserved, clipped, reserved
    t["ref_mag"] = rng.uniform(15, 21, n)
    return t


def astrometry_data(matches: Table, *, wcs=None, distortion=None, max_points=None) -> diagnostics.AstrometryData:
    return diagnostics.astrometry_summary(
        diagnostics.astrometry_table(matches, wcs=wcs), shape=SHAPE, distortion=distortion,
        vector_frame="detector" if wcs is not None else "sky", max_points=max_points,
    )


def photom_matches(n: int = 150, *, seed: int = 4, zp: float = 27.5, colour: bool = True) -> Table:
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    t = Table()
    t["ref_id"] = np.arange(n, dtype=np.int64) + 500
    t["src_id"] = np.arange(n, dtype=np.int64) + 1
    t["src_x"] = rng.uniform(0, nx - 1, n)
    t["src_y"] = rng.uniform(0, ny - 1, n)
    t["ref_r_mag"] = rng.uniform(15, 20, n)
    if colour:
        t["ref_g_mag"] = t["ref_r_mag"] + rng.uniform(0.2, 1.4, n)
    residual = rng.normal(0, 0.02, n)
    residual[:4] = 0.5  # outliers
    t["src_psf_flux"] = 10 ** (-0.4 * (t["ref_r_mag"] - zp - residual))
    reserved = np.arange(n) % 10 == 5
    t["photocal_reserved"] = reserved
    t["photocal_clipped"] = (np.arange(n) < 4) & ~reserved
    t["photocal_used"] = ~reserved & ~t["photocal_clipped"]
    t["photocal_residual_mag"] = residual  # ref - inst - zp
    return t


def photometry_data(matches: Table, *, zp: float = 27.5, colour_band: str | None = "g") -> diagnostics.PhotometryData:
    return diagnostics.photometry_summary(
        diagnostics.photometry_table(matches, band="r", colour_band=colour_band), band="r",
        colour_label="r - g" if colour_band else "", zero_point_mag=zp, scatter_mag=0.02, formal_error_mag=0.002,
        image_shape=SHAPE,
    )


def renderers(fig) -> list[GlyphRenderer]:
    return [r for r in fig.renderers if isinstance(r, GlyphRenderer)]


def figures_named(layout, pattern: str) -> list:
    return [m for m in layout.select({"type": Plot}) if m.name and re.fullmatch(pattern, m.name)]


# ------------------------------------------------------------------------------- astrometry


def test_astrometry_scatter_plots_share_one_source_with_only_the_plotted_columns():
    layout = pa.astrometry_layout(astrometry_data(astrom_matches()))
    scatter = figures_named(layout, r"(dra_mas|ddec_mas)_vs_(x|y|ref_mag)") + figures_named(layout, "residual_vectors")
    assert len(scatter) == 7
    sources = {id(r.data_source) for fig in scatter for r in renderers(fig) if not r.name.startswith("trend")}
    assert len(sources) == 1  # one source: a selection in one plot is a selection in all
    source = renderers(scatter[0])[0].data_source
    assert set(source.data) == set(pa.SOURCE_COLUMNS)
    assert "status" not in source.data  # strings are not sent; statuses are index views
    assert source.data["dra_mas"].dtype == np.float32 and source.data["src_id"].dtype == np.int32


def test_status_marks_select_the_right_rows_and_legends_hide_on_click():
    matches = astrom_matches()
    layout = pa.astrometry_layout(astrometry_data(matches))
    fig = figures_named(layout, "dra_mas_vs_x")[0]
    by_name = {r.name: r for r in renderers(fig) if not r.name.startswith("trend")}
    assert set(by_name) == {"used", "clipped", "reserved"}
    for name, column in (("used", "used"), ("clipped", "clipped"), ("reserved", "reserved")):
        view_filter = by_name[name].view.filter
        assert isinstance(view_filter, IndexFilter)
        assert list(view_filter.indices) == list(np.flatnonzero(matches[column]))
    assert by_name["clipped"].glyph.marker != by_name["used"].glyph.marker
    for plot in layout.select({"type": Plot}):
        for legend in plot.select({"type": Legend}):
            assert legend.click_policy == "hide"


def test_hover_shows_ids_magnitudes_and_residuals():
    layout = pa.astrometry_layout(astrometry_data(astrom_matches()))
    fig = figures_named(layout, "ddec_mas_vs_ref_mag")[0]
    hover = fig.select_one({"type": HoverTool})
    fields = " ".join(value for _, value in hover.tooltips)
    for column in ("@src_id", "@ref_id", "@ref_mag", "@src_mag", "@dra_mas", "@ddec_mas"):
        assert column in fields


def test_residual_axes_carry_units_and_the_zero_line():
    layout = pa.astrometry_layout(astrometry_data(astrom_matches()))
    fig = figures_named(layout, "dra_mas_vs_y")[0]
    assert fig.xaxis[0].axis_label == "y (pix)" and fig.yaxis[0].axis_label == "ΔRA (mas)"
    assert any(isinstance(s, Span) and s.location == 0 for s in fig.center)
    assert fig.x_range.start == -0.5 and fig.x_range.end == SHAPE[0] - 0.5


def test_residual_vectors_are_magnified_with_a_round_scale_arrow():
    data = astrometry_data(astrom_matches(sigma_mas=20.0))
    layout = pa.astrometry_layout(data)
    fig = figures_named(layout, "residual_vectors")[0]
    source = renderers(fig)[0].data_source
    scale_mas, pix_per_mas = pa.vector_scale(data.matches["res_x_mas"], data.matches["res_y_mas"], SHAPE)
    mantissa = scale_mas / 10 ** math.floor(math.log10(scale_mas))
    assert mantissa in (1.0, 2.0, 5.0)
    # Without a WCS north is up and east left: +dRA points to -x.
    np.testing.assert_allclose(source.data["x_end"] - source.data["x"], -pix_per_mas * data.matches["dra_mas"],
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(source.data["y_end"] - source.data["y"], pix_per_mas * data.matches["ddec_mas"],
                               rtol=1e-5, atol=1e-3)
    arrow = fig.select_one({"type": Arrow})
    assert arrow.x_end - arrow.x_start == pytest.approx(scale_mas * pix_per_mas)
    assert arrow.x_end - arrow.x_start == pytest.approx(pa.ARROW_FRACTION * max(SHAPE))
    assert fig.select_one({"type": Label, "name": "scale_label"}).text == f"{scale_mas:g} mas"


def test_histograms_keep_clipped_stars_apart_and_give_the_rms():
    matches = astrom_matches()
    data = astrometry_data(matches)
    layout = pa.astrometry_layout(data)
    fig = figures_named(layout, "hist_ΔRA")[0]
    quads = {r.name: r for r in renderers(fig)}
    assert set(quads) == {"hist_used", "hist_clipped", "hist_reserved"}
    counts = {k: np.sum(r.data_source.data["top"] - r.data_source.data["bottom"]) for k, r in quads.items()}
    assert counts == {"hist_used": matches["used"].sum(), "hist_clipped": matches["clipped"].sum(),
                      "hist_reserved": matches["reserved"].sum()}
    rms = math.sqrt(np.mean(np.asarray(matches["dra_mas"][matches["used"]]) ** 2))
    assert f"RMS {rms:.1f} mas" in fig.title.text
    assert sorted(s.location for s in fig.center if isinstance(s, Span)) == pytest.approx([-rms, rms])


def test_match_distance_before_and_after_share_log_bins():
    matches = astrom_matches()
    layout = pa.astrometry_layout(astrometry_data(matches))
    fig = figures_named(layout, "match_distance")[0]
    tops = [r.data_source.data["top"] for r in renderers(fig)]
    assert [t.sum() for t in tops] == [len(matches), len(matches)]
    assert fig.x_scale.__class__.__name__ == "LogScale"


def test_distortion_pattern_or_a_note_without_sip():
    assert "no SIP" in pa.distortion_figure(None, shape=SHAPE).select_one({"type": Label}).text
    n = 4
    gx, gy = np.meshgrid(np.linspace(0, 399, n), np.linspace(0, 299, n))
    dx = 1e-5 * (gx.ravel() - 200) ** 2
    grid = {"x": gx.ravel(), "y": gy.ravel(), "dx_pix": dx, "dy_pix": np.zeros(n * n), "length_pix": np.abs(dx)}
    fig = pa.distortion_figure(grid, shape=SHAPE)
    image = [r for r in renderers(fig) if type(r.glyph).__name__ == "Image"][0]
    assert image.glyph.color_mapper.high == pytest.approx(np.abs(dx).max())
    assert fig.select_one({"type": ColorBar}) is not None
    # dx peaks at 0.4 pix: a 0.5 pix scale arrow, magnified like the vectors.
    assert fig.select_one({"type": Label, "name": "scale_label"}).text == "0.5 pix"
    arrow = fig.select_one({"type": Arrow})
    vectors = [r for r in renderers(fig) if type(r.glyph).__name__ == "Segment"][0].data_source.data
    longest = np.argmax(np.abs(dx))
    assert (vectors["x_end"] - vectors["x"])[longest] / dx[longest] == pytest.approx(
        (arrow.x_end - arrow.x_start) / 0.5, rel=1e-4)


def test_astrometry_layout_serialises_for_the_browser():
    item = plots.section_item("astrometry", astrometry_data(astrom_matches()))
    assert {"target_id", "root_id", "doc"} <= set(item)
    json.dumps(item)


def test_fifty_thousand_matches_send_compact_arrays():
    data = astrometry_data(astrom_matches(50_000))
    body = json.dumps(plots.section_item("astrometry", data))
    # 10 float32/int32 columns of 50,000 rows, compressed: not a JSON list per value.
    assert len(body) < 4_000_000
    assert '"dtype":"float32"' in body.replace(" ", "")


def test_a_decimated_section_says_how_many_stars_it_shows_and_draws_the_median_of_all():
    matches = astrom_matches(20_000)
    data = astrometry_data(matches, max_points=3000)
    layout = pa.astrometry_layout(data)
    source = renderers(figures_named(layout, "residual_vectors")[0])[0].data_source
    assert len(source.data["x"]) == 3000
    assert int(np.sum(matches["clipped"])) == 5 and np.isin(np.flatnonzero(matches["clipped"]) + 1,
                                                            source.data["src_id"]).all()  # rare stars kept
    fig = figures_named(layout, "ddec_mas_vs_ref_mag")[0]
    assert fig.select_one({"type": Title, "name": "subtitle"}).text == "3000 of 20000 stars shown"
    # Many stars: the vector plot shows the mean residual per cell, from every used star.
    vectors = figures_named(layout, "residual_vectors")[0]
    cells = [r for r in renderers(vectors) if r.name == "cell_vectors"][0].data_source.data
    assert cells["n"].sum() == int(np.sum(matches["used"]))
    trend = [r for r in renderers(fig) if r.name == "trend"][0].data_source.data
    full = diagnostics.binned_median(matches["ref_mag"][matches["used"]], matches["ddec_mas"][matches["used"]])
    np.testing.assert_allclose(trend["median"], full["median"], rtol=1e-6)
    hist = figures_named(layout, "hist_ΔDec")[0]
    assert sum(np.sum(r.data_source.data["top"] - r.data_source.data["bottom"]) for r in renderers(hist)) == 20_000


# ------------------------------------------------------------------------------- photometry


def test_photometry_plots_draw_zero_point_and_clipping_limits():
    data = photometry_data(photom_matches())
    layout = pp.photometry_layout(data)
    for name in ("dmag_vs_ref_mag", "dmag_vs_colour", "dmag_vs_x", "dmag_vs_y"):
        fig = figures_named(layout, name)[0]
        spans = {s.name: [] for s in fig.center if isinstance(s, Span)}
        for s in fig.center:
            if isinstance(s, Span):
                spans[s.name].append(s.location)
        assert spans["zero_point"] == [pytest.approx(27.5)]
        low, high = sorted(spans["clip_limit"])
        assert low == pytest.approx(27.5 + data.clip_centre_mag - data.clip_halfwidth_mag)
        assert high == pytest.approx(27.5 + data.clip_centre_mag + data.clip_halfwidth_mag)


def test_photometry_dmag_is_reference_minus_instrumental():
    matches = photom_matches()
    data = photometry_data(matches)
    source = renderers(figures_named(pp.photometry_layout(data), "dmag_vs_ref_mag")[0])[0].data_source
    inst = -2.5 * np.log10(np.asarray(matches["src_psf_flux"]))
    np.testing.assert_allclose(source.data["dmag"], np.asarray(matches["ref_r_mag"]) - inst, atol=1e-4)
    np.testing.assert_allclose(source.data["colour"], matches["ref_r_mag"] - matches["ref_g_mag"], atol=1e-5)


def test_photometry_marks_used_reserved_and_rejected_stars_differently():
    layout = pp.photometry_layout(photometry_data(photom_matches()))
    fig = figures_named(layout, "dmag_vs_ref_mag")[0]
    marks = {r.name: r.glyph.marker for r in renderers(fig) if not r.name.startswith("trend")}
    assert set(marks) == {"used", "reserved", "clipped"} and len(set(marks.values())) == 3
    sources = {id(r.data_source) for f in figures_named(layout, "dmag_vs_.*|zero_point_map") for r in renderers(f)
               if not r.name or not r.name.startswith("trend")}
    assert len(sources) == 1


def test_zero_point_map_colours_residuals_symmetrically():
    data = photometry_data(photom_matches())
    fig = figures_named(pp.photometry_layout(data), "zero_point_map")[0]
    mapper = fig.select_one({"type": ColorBar}).color_mapper
    assert mapper.low == pytest.approx(-mapper.high) and mapper.high == pytest.approx(3 * data.scatter_mag)


def test_photometry_histogram_states_scatter_and_formal_error():
    data = photometry_data(photom_matches())
    fig = figures_named(pp.photometry_layout(data), "photometry_histogram")[0]
    figures = fig.select_one({"type": Title, "name": "subtitle"}).text
    assert "scatter 0.0200 mag" in figures and "formal error 0.0020 mag" in figures
    total = sum(np.sum(r.data_source.data["top"] - r.data_source.data["bottom"]) for r in renderers(fig))
    assert total == len(data.matches["status"])


def test_one_band_catalogue_has_no_colour_plot():
    data = photometry_data(photom_matches(colour=False), colour_band=None)
    layout = pp.photometry_layout(data)
    assert not figures_named(layout, "dmag_vs_colour")
    labels = [m.text for m in layout.select({"type": Label})]
    assert any("one band" in text for text in labels)


# ------------------------------------------------------------------------------------ image


def image_data(*, psf: bool = True) -> diagnostics.ImageData:
    rng = np.random.default_rng(5)
    ny, nx = SHAPE
    image = rng.normal(100, 5, SHAPE).astype(np.float32)
    sources = {"id": np.arange(1, 21), "x": rng.uniform(0, nx, 20), "y": rng.uniform(0, ny, 20),
               "sky_source": np.arange(20) >= 17, "calib_psf_used": np.arange(20) < 5,
               "calib_psf_reserved": np.arange(20) == 5, "mag": rng.uniform(15, 20, 20)}
    layers = diagnostics.overlay_layers(sources, reference={"id": np.arange(3), "x": np.ones(3), "y": np.ones(3),
                                                           "mag": np.ones(3)})
    psf_data = None
    if psf:
        k = 15
        yy, xx = np.mgrid[0:k, 0:k] - k // 2
        stamp = np.exp(-(xx**2 + yy**2) / 4.0)
        psf_data = diagnostics.PsfData(
            stamps=np.repeat((stamp / stamp.sum())[None], 9, axis=0).astype(np.float32),
            stamp_x=np.tile([66, 200, 333], 3).astype(float), stamp_y=np.repeat([50, 150, 250], 3).astype(float),
            stamp_fwhm_pix=np.full(9, 3.3), grid_n=4,
            fwhm={"x": np.zeros(16), "y": np.zeros(16), "fwhm_pix": np.linspace(3.0, 3.6, 16)}, kind="moffat",
        )
    return diagnostics.ImageData(
        zscale=diagnostics.to_uint8(image, stretch="zscale"), asinh=diagnostics.to_uint8(image, stretch="asinh"),
        shape=SHAPE, factor=1, layers=layers, layer_totals={k: len(v["x"]) for k, v in layers.items()},
        background=np.full((30, 40), 100.0, np.float32), background_factor=10,
        psf=psf_data,
    )


def test_quicklook_has_both_stretches_and_toggleable_layers():
    data = image_data()
    fig = pi.quicklook_figure(data)
    legend = fig.select_one({"type": Legend})
    assert legend.click_policy == "hide"
    labels = [item.label["value"] for item in legend.items]
    assert labels[:2] == ["image, zscale stretch", "image, asinh stretch"]
    for layer in diagnostics.LAYERS:
        assert any(label.startswith(layer) for label in labels)
    by_name = {r.name: r for r in renderers(fig)}
    assert by_name["stretch_zscale"].visible and not by_name["stretch_asinh"].visible
    assert by_name["stretch_zscale"].glyph.dw == SHAPE[1] and by_name["stretch_zscale"].glyph.dh == SHAPE[0]
    assert len(by_name["PSF stars (used)"].data_source.data["x"]) == 5
    assert len(by_name["sky sources"].data_source.data["x"]) == 3
    assert len(by_name["detected sources"].data_source.data["x"]) == 17  # sky sources are not detections
    assert not by_name["sky sources"].visible and by_name["detected sources"].visible
    tools = {type(t).__name__ for t in fig.tools}
    assert {"PanTool", "WheelZoomTool"} <= tools


def test_background_and_psf_panels():
    data = image_data()
    layout = pi.image_layout(data)
    names = {p.name for p in layout.select({"type": Plot})}
    assert {"quicklook", "background", "psf_stamps", "psf_fwhm"} <= names
    fwhm = figures_named(layout, "psf_fwhm")[0]
    mapper = fwhm.select_one({"type": ColorBar}).color_mapper
    assert (mapper.low, mapper.high) == (pytest.approx(3.0), pytest.approx(3.6))
    stamps = figures_named(layout, "psf_stamps")[0]
    texts = [m for m in stamps.center if type(m).__name__ == "LabelSet"][0].source.data["text"]
    assert len(texts) == 9 and all(t.endswith(" 3.30") for t in texts) and texts[0] == "(66, 50) 3.30"


def test_image_panels_without_psf_say_so():
    layout = pi.image_layout(image_data(psf=False))
    assert any("no PSF model" in m.text for m in layout.select({"type": Label}))


# ----------------------------------------------------------------------------------- report


def test_report_is_one_self_contained_html_file():
    rows = diagnostics.summary_rows({"MAGZERO": 24.3, "MAGZERO_RMS": 0.002}, {"detection": 0.5})
    html = plots.run_report_html(
        title="Run #1 <test>", summary=rows,
        sections={"astrometry": "no astrometric fit in this run", "photometry": photometry_data(photom_matches()),
                  "image": image_data()},
    )
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", html)
    assert "<link" not in html or not re.search(r"<link[^>]+href=[\"']?(https?:)?//", html)
    assert "Bokeh" in html and "no astrometric fit in this run" in html
    assert "Run #1 &lt;test&gt;" in html  # the title is escaped
    for tab in ("Summary", "Astrometry", "Photometry", "Image"):
        assert f'"{tab}"' in html


def test_summary_rows_carry_units_and_show_missing_values():
    rows = {r.name: r for r in diagnostics.summary_rows({"MAGZERO": 24.29894, "ASTROM_RMS_MAS": None}, {"psf": 0.25})}
    assert rows["MAGZERO"].unit == "mag" and rows["MAGZERO"].display == "24.3"
    assert rows["ASTROM_RMS_MAS"].unit == "mas" and rows["ASTROM_RMS_MAS"].display == "—"
    assert rows["SFM_ASTROM_OFFSET_MEAN"].unit == "arcsec"
    assert rows["time: psf"].value == 0.25 and rows["time: total"].unit == "s"
    div = plots.summary_div(list(rows.values()))
    assert "<td>mag</td>" in div.text


def test_wcs_turns_sky_residuals_into_detector_axes():
    """A rotated WCS: +y points east. A residual to the east must point along +y on the detector."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [200.5, 150.5]
    scale = 0.2 / 3600
    wcs.wcs.cd = [[0.0, scale], [scale, 0.0]]  # x -> +Dec, y -> +RA (east)
    matches = astrom_matches(10)
    matches["dra_mas"] = 30.0
    matches["ddec_mas"] = 0.0
    table = diagnostics.astrometry_table(matches, wcs=wcs)
    np.testing.assert_allclose(table["res_y_mas"], 30.0, rtol=1e-9)
    np.testing.assert_allclose(table["res_x_mas"], 0.0, atol=1e-9)


def test_matches_without_reference_magnitudes_still_plot():
    matches = astrom_matches()
    matches.remove_column("ref_mag")  # the engine leaves it out when the catalogue lacks the band
    layout = pa.astrometry_layout(astrometry_data(matches))
    assert figures_named(layout, "dra_mas_vs_x") and not figures_named(layout, "dra_mas_vs_ref_mag")
    assert any("no reference magnitudes" in m.text for m in layout.select({"type": Label}))
