"""Photometry diagnostics: ``ref_mag - inst_mag`` against magnitude, colour and position
with the zero point and clipping limits, the residuals over the field, their histogram.

The scatter plots share one ``ColumnDataSource`` (linked selection).
"""

from __future__ import annotations

import math

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColorBar, ColumnDataSource, Range1d, Span
from bokeh.palettes import RdBu11
from bokeh.transform import linear_cmap

from ..diagnostics import Columns, PhotometryData
from ._common import (
    PANEL_W,
    add_hover,
    cds_columns,
    detector_extent,
    finish_legend,
    no_data_figure,
    panel,
    shown_note,
    stacked_status_histogram,
    status_indices,
    status_scatter,
    subtitle,
    trend_line,
)

SOURCE_COLUMNS = ("src_id", "ref_id", "x", "y", "ref_mag", "inst_mag", "dmag", "residual_mag", "colour")

TOOLTIPS = [
    ("source id", "@src_id"), ("reference id", "@ref_id"), ("ref mag", "@ref_mag{0.000}"),
    ("inst mag", "@inst_mag{0.000}"), ("ref − inst", "@dmag{0.000}"), ("residual", "@residual_mag{0.0000} mag"),
    ("colour", "@colour{0.000}"), ("x, y", "@x{0.0}, @y{0.0}"),
]


def photometry_source(table: Columns) -> ColumnDataSource:
    return ColumnDataSource(cds_columns(table, SOURCE_COLUMNS), name="photometry_matches")


def zero_point_lines(fig, data: PhotometryData) -> None:
    """The zero point (solid) and the clipping limits (dashed) on a ``ref - inst`` axis."""
    fig.add_layout(Span(location=data.zero_point_mag, dimension="width", line_color="black", line_width=1.5,
                        name="zero_point"))
    if math.isfinite(data.clip_halfwidth_mag):
        for sign in (-1, 1):
            level = data.zero_point_mag + data.clip_centre_mag + sign * data.clip_halfwidth_mag
            fig.add_layout(Span(location=level, dimension="width", line_color="#c92a2a", line_dash="dashed",
                                name="clip_limit"))


def dmag_range(data: PhotometryData) -> Range1d:
    """Zero point +- a width that shows the used and reserved stars and the clipping limits."""
    width = max(3.0 * data.clip_halfwidth_mag if math.isfinite(data.clip_halfwidth_mag) else 0.0,
                6.0 * data.scatter_mag if math.isfinite(data.scatter_mag) else 0.0, 0.05)
    return Range1d(data.zero_point_mag - width, data.zero_point_mag + width)


def dmag_figure(source: ColumnDataSource, indices, data: PhotometryData, *, x: str, x_label: str, y_range: Range1d,
                x_range=None):
    """``ref_mag - inst_mag`` against one quantity, zero point, clipping limits and binned median drawn."""
    kwargs = {"x_range": x_range} if x_range is not None else {}
    note = shown_note(len(data.matches["x"]), data.n_matches)
    fig = panel(f"ref − inst vs {x_label.split(' (')[0]}", x_label, f"{data.band}_ref − inst (mag)",
                y_range=y_range, **kwargs)
    fig.name = f"dmag_vs_{x}"
    subtitle(fig, note)
    renderers = status_scatter(fig, source, x, "dmag", indices)
    trend_line(fig, data.trends.get(x))
    zero_point_lines(fig, data)
    add_hover(fig, renderers, TOOLTIPS)
    finish_legend(fig, outside=True)
    return fig


def zero_point_map_figure(source: ColumnDataSource, data: PhotometryData, *, shape: tuple[int, int],
                          width: int = PANEL_W):
    """Residuals of the zero point over the field, colour-coded (blue: star brighter than the zero point says)."""
    ny, nx = shape
    half = 3.0 * data.scatter_mag if math.isfinite(data.scatter_mag) and data.scatter_mag > 0 else 0.05
    fig = panel("Zero-point residual over the field", "x (pix)", "y (pix)", width=width,
                height=max(200, int(width * ny / nx)), match_aspect=True,
                x_range=Range1d(-0.5, nx - 0.5), y_range=Range1d(-0.5, ny - 0.5))
    fig.name = "zero_point_map"
    cmap = linear_cmap("residual_mag", palette=RdBu11, low=-half, high=half, nan_color="#bbbbbb")
    r = fig.scatter("x", "y", source=source, size=7, color=cmap, line_color="#555555", line_width=0.5)
    add_hover(fig, [r], TOOLTIPS)
    fig.add_layout(ColorBar(color_mapper=cmap["transform"], title="residual (mag)", width=8), "right")
    return fig


def residual_histogram_figure(data: PhotometryData):
    """Histogram of the residuals per status; +-scatter and the clipping limits drawn."""
    hist = data.histogram
    fig = panel("Zero-point residuals", "residual (mag)", "stars", width=PANEL_W + 60)
    fig.name = "photometry_histogram"
    subtitle(fig, f"scatter {data.scatter_mag:.4f} mag, formal error {data.formal_error_mag:.4f} mag, "
                  f"{data.n_used} used")
    stacked_status_histogram(fig, hist)
    centre = data.clip_centre_mag if math.isfinite(data.clip_centre_mag) else 0.0
    for width, dash, color, name in ((data.scatter_mag, "dotted", "black", "scatter"),
                                     (data.clip_halfwidth_mag, "dashed", "#c92a2a", "clip_limit")):
        if math.isfinite(width):
            for sign in (-1, 1):
                fig.add_layout(Span(location=centre + sign * width, dimension="height", line_dash=dash,
                                    line_color=color, name=name))
    finish_legend(fig)
    return fig


def photometry_layout(data: PhotometryData):
    """Every photometry plot of a run, in one layout."""
    table = data.matches
    shape = detector_extent(data.image_shape, table["x"], table["y"])
    indices = status_indices(table["status"])
    source = photometry_source(table)
    y_range = dmag_range(data)
    has_colour = bool(data.colour_label) and np.isfinite(table["colour"]).any()
    by_mag = dmag_figure(source, indices, data, x="ref_mag", x_label=f"{data.band} reference magnitude (mag)",
                         y_range=y_range)
    by_colour = (dmag_figure(source, indices, data, x="colour", x_label=f"colour {data.colour_label} (mag)",
                             y_range=y_range) if has_colour
                 else no_data_figure("ref − inst vs colour", "the reference catalogue has one band: no colour"))
    by_x = dmag_figure(source, indices, data, x="x", x_label="x (pix)", y_range=y_range,
                       x_range=Range1d(-0.5, shape[1] - 0.5))
    by_y = dmag_figure(source, indices, data, x="y", x_label="y (pix)", y_range=y_range,
                       x_range=Range1d(-0.5, shape[0] - 0.5))
    return column(
        row(by_mag, by_colour, residual_histogram_figure(data)),
        row(by_x, by_y, zero_point_map_figure(source, data, shape=shape)),
        name="photometry",
    )


__all__ = ["dmag_figure", "photometry_layout", "photometry_source", "residual_histogram_figure",
           "zero_point_map_figure"]
