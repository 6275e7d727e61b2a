"""Calibration trends: MAGZERO (per 1 s) against observation date per instrument + filter,
the astrometric scatter and the PSF FWHM beside it, outliers marked.

Input is the table of :func:`calibweb.core.history.trend_table` (one row per
succeeded run, in observation order). One ``ColumnDataSource`` for all runs,
shared by the three plots (a run clicked or selected in one is highlighted in
the others), coloured and shaped by instrument + filter in the browser
(``factor_cmap``), so that the number of Bokeh models does not grow with the
number of groups: Bokeh's Python side costs about a millisecond per model,
the data far less. The x ranges are linked. Clicking a point opens its run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DatetimeAxis, DatetimeTicker, DatetimeTickFormatter, Grid, OpenURL, TapTool
from bokeh.palettes import Category10_10, Category20_20
from bokeh.transform import factor_cmap, factor_mark
from numpy.typing import NDArray

from ._common import add_hover, no_data_figure, panel, subtitle

#: Columns of the trend table sent to the browser.
SOURCE_COLUMNS = ("run_id", "date_obs", "magzero", "magzero_rms", "astrom_offset_std_arcsec", "psf_fwhm_pix",
                  "reference_mag", "deviation_mag")

#: Few tools on purpose (each is several Bokeh models): drag to pan, wheel to zoom, click to open.
TREND_TOOLS = "pan,wheel_zoom,tap,reset,save"
#: Marker shapes, cycled with the colours once there are more groups than colours.
MARKERS = ("circle", "square", "triangle", "diamond", "inverted_triangle", "hex")
OUTLIER_STYLE = {"marker": "circle", "size": 14, "fill_alpha": 0.0, "line_color": "#c92a2a", "line_width": 2}

MAIN_W, MAIN_H = 640, 440
SIDE_W, SIDE_H = 440, 220


def group_styles(groups: list[str]) -> dict[str, dict[str, str]]:
    """Colour and marker of each group, in the given order (10 colours, then 20, then shapes cycle)."""
    palette = Category10_10 if len(groups) <= 10 else Category20_20
    return {g: {"color": palette[i % len(palette)], "marker": MARKERS[(i // len(palette)) % len(MARKERS)]}
            for i, g in enumerate(groups)}


def _source(table: Mapping[str, NDArray], mask: NDArray, labels: NDArray, name: str) -> ColumnDataSource:
    data = {}
    for key in SOURCE_COLUMNS:
        col = np.asarray(table[key])[mask]
        # float32 keeps 0.1 mmag at 25 mag; MAGZERO stays float64 (its hover shows 0.1 mmag).
        data[key] = col.astype(np.float32) if col.dtype.kind == "f" and key != "magzero" else col
    data["group"] = labels[mask]
    return ColumnDataSource(data, name=name)


def _tooltips(value: str, label: str) -> list[tuple[str, str]]:
    return [("run", "#@run_id"), ("observed", "@date_obs{%F %T}"), ("instrument filter", "@group"), (label, value)]


def _date_panel(title: str, y_label: str, *, width: int, height: int, ticker, formatter, **kwargs):
    """A panel with a date axis below; the three panels share one ticker and formatter (fewer models)."""
    fig = panel(title, "", y_label, width=width, height=height, tools=TREND_TOOLS, x_axis_type=None, **kwargs)
    fig.add_layout(DatetimeAxis(ticker=ticker, formatter=formatter, axis_label="observation date (UTC)"), "below")
    fig.add_layout(Grid(dimension=0, ticker=ticker))
    return fig


def trends_layout(table: Mapping[str, NDArray], *, run_url: str, note: str = ""):
    """The three trend plots in one layout.

    Parameters
    ----------
    table : dict of arrays
        :func:`~calibweb.core.history.trend_table` output: ``run_id``,
        ``date_obs`` (datetime64, UTC), ``group``, ``magzero`` (mag, for 1 s),
        ``magzero_rms`` (mag), ``astrom_offset_std_arcsec`` (arcsec),
        ``psf_fwhm_pix`` (pix), ``reference_mag``, ``deviation_mag`` (mag),
        ``outlier`` (bool).
    run_url : str
        URL of a run page with ``@run_id`` where the id goes (Bokeh's
        ``OpenURL`` fills it in for the point clicked).
    note : str
        Subtitle of the MAGZERO plot (how many runs are shown, the outlier test).
    """
    n = len(table["run_id"])
    if n == 0:
        return column(no_data_figure("Zero point (MAGZERO) trend", "no succeeded runs match these filters",
                                     width=MAIN_W), name="trends")
    group_col = np.asarray(table["group"]).astype(str)
    groups, counts = np.unique(group_col, return_counts=True)
    first_seen = np.argsort([np.flatnonzero(group_col == g)[0] for g in groups], kind="stable")
    # The legend label of a group carries its count: "WFC-1 r (1234)".
    label_of = {g: f"{g} ({c})" for g, c in zip(groups, counts)}
    factors = [label_of[groups[i]] for i in first_seen]
    labels = np.array([label_of[g] for g in group_col], dtype=object)
    styles = group_styles(factors)
    colours = factor_cmap("group", [styles[f]["color"] for f in factors], factors)
    markers = factor_mark("group", [styles[f]["marker"] for f in factors], factors)
    source = _source(table, np.ones(n, bool), labels, name="trend runs")
    formatters = {"@date_obs": "datetime"}

    dates = {"ticker": DatetimeTicker(), "formatter": DatetimeTickFormatter()}
    mz = _date_panel("Zero point (MAGZERO, for 1 s) by observation date", "MAGZERO (mag)", width=MAIN_W,
                     height=MAIN_H, **dates)
    mz.name = "magzero_trend"
    subtitle(mz, note)
    astrom = _date_panel("Astrometric scatter", "std of match distances (arcsec)", width=SIDE_W, height=SIDE_H,
                         x_range=mz.x_range, **dates)
    astrom.name = "astrom_trend"
    fwhm = _date_panel("PSF FWHM", "FWHM (pix)", width=SIDE_W, height=SIDE_H, x_range=mz.x_range, **dates)
    fwhm.name = "fwhm_trend"

    common = {"source": source, "marker": markers, "color": colours, "size": 6, "alpha": 0.75}
    mz_renderers = [mz.scatter("date_obs", "magzero", legend_field="group", name="runs", **common)]
    astrom_r = astrom.scatter("date_obs", "astrom_offset_std_arcsec", name="runs", **common)
    fwhm_r = fwhm.scatter("date_obs", "psf_fwhm_pix", name="runs", **common)

    outlier = np.asarray(table["outlier"], bool)
    if outlier.any():
        out_source = _source(table, outlier, labels, name="trend outliers")
        mz_renderers.append(mz.scatter("date_obs", "magzero", source=out_source, name="outliers",
                                       legend_label=f"outlier ({int(outlier.sum())})", **OUTLIER_STYLE))

    add_hover(mz, mz_renderers, [*_tooltips("@magzero{0.0000} mag", "MAGZERO"),
                                 ("recent median", "@reference_mag{0.0000} mag"),
                                 ("deviation", "@deviation_mag{+0.0000} mag")]).formatters = formatters
    add_hover(astrom, [astrom_r], _tooltips("@astrom_offset_std_arcsec{0.000} arcsec", "scatter")
              ).formatters = formatters
    add_hover(fwhm, [fwhm_r], _tooltips("@psf_fwhm_pix{0.00} pix", "FWHM")).formatters = formatters
    open_run = OpenURL(url=run_url, same_tab=True)
    for fig in (mz, astrom, fwhm):
        for tool in fig.select(type=TapTool):
            tool.callback = open_run

    legend = mz.legend[0]
    legend.label_text_font_size = "8pt"
    mz.center = [m for m in mz.center if m is not legend]
    mz.add_layout(legend, "right")
    mz.width = MAIN_W + 150
    return row(mz, column(astrom, fwhm), name="trends")


__all__ = ["SOURCE_COLUMNS", "group_styles", "trends_layout"]
