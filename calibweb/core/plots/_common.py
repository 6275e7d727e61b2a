"""Shared pieces of the diagnostics plots: marks per star status, tools, sources, scale bars."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from bokeh.models import CDSView, ColumnDataSource, HoverTool, IndexFilter, Range1d, Title
from bokeh.plotting import figure
from numpy.typing import NDArray

#: Tools of every data plot (selection tools link the plots that share a source). Few on
#: purpose: each tool is several Bokeh models, and the models, not the data, set the
#: time to build and serialise a section.
TOOLS = "pan,wheel_zoom,box_select,lasso_select,tap,reset,save"

#: Mark of each star status, in legend order. Used: filled circles; the others
#: differ in shape *and* colour so that they read in grey too.
STATUS_STYLE = {
    "used": {"marker": "circle", "color": "#1f5f9e", "size": 4, "alpha": 0.6},
    "reserved": {"marker": "triangle", "color": "#2b8a3e", "size": 7, "alpha": 0.9},
    "clipped": {"marker": "x", "color": "#c92a2a", "size": 7, "alpha": 0.9},
    "unused": {"marker": "square", "color": "#868e96", "size": 4, "alpha": 0.5},
}

#: Plot size (px) of the small panels.
PANEL_W, PANEL_H = 390, 300


def cds_columns(table: Mapping[str, NDArray], names: Sequence[str]) -> dict[str, NDArray]:
    """Only ``names``, in compact dtypes: float32 for floats, int32 for ids when they fit."""
    out = {}
    for name in names:
        col = np.asarray(table[name])
        if col.dtype.kind == "f":
            out[name] = col.astype(np.float32)
        elif col.dtype.kind in "iu":
            small = col.size == 0 or (col.min() >= np.iinfo(np.int32).min and col.max() <= np.iinfo(np.int32).max)
            out[name] = col.astype(np.int32) if small else col.astype(np.float64)
        elif col.dtype.kind == "b":
            out[name] = col.astype(bool)
        else:
            out[name] = col
    return out


def status_indices(status: NDArray) -> dict[str, NDArray[np.int32]]:
    """Row indices of each status present, in :data:`STATUS_STYLE` order."""
    status = np.asarray(status)
    out = {}
    for name in STATUS_STYLE:
        idx = np.flatnonzero(status == name).astype(np.int32)
        if idx.size:
            out[name] = idx
    return out


def status_scatter(fig, source: ColumnDataSource, x: str, y: str, indices: Mapping[str, NDArray], *,
                   legend: bool = True) -> list:
    """One scatter renderer per status on a shared source (so selections link across plots).

    Each renderer gets its own ``CDSView``: BokehJS draws no legend glyphs in a
    plot whose renderers share a view with another plot's.
    """
    renderers = []
    for name, idx in indices.items():
        style = STATUS_STYLE[name]
        kwargs = {"legend_label": f"{name} ({idx.size})"} if legend else {}
        renderers.append(fig.scatter(
            x, y, source=source, view=CDSView(filter=IndexFilter(indices=idx)), marker=style["marker"],
            size=style["size"], color=style["color"], alpha=style["alpha"], name=name, **kwargs,
        ))
    return renderers


#: Tools of the image panels (nothing to select there).
IMAGE_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def panel(title: str, x_label: str, y_label: str, *, width: int = PANEL_W, height: int = PANEL_H,
          tools: str = TOOLS, **kwargs):
    """A figure with the house tools and axis labels (units in the labels)."""
    active = "box_select" if "box_select" in tools else "pan"
    fig = figure(title=title, width=width, height=height, tools=tools, active_drag=active,
                 x_axis_label=x_label, y_axis_label=y_label, toolbar_location="above", **kwargs)
    fig.title.text_font_size = "11pt"
    return fig


def finish_legend(fig, *, location: str = "top_right", outside: bool = False) -> None:
    """Click a legend entry to hide its marks; ``outside``: in rows above the plot, off the data."""
    if not fig.legend:
        return
    legend = fig.legend[0]
    legend.click_policy = "hide"
    legend.label_text_font_size = "8pt"
    legend.background_fill_alpha = 0.7
    legend.padding = 2
    legend.spacing = 0
    legend.glyph_height = legend.glyph_width = 14
    legend.label_height = 14
    if outside:
        fig.center = [m for m in fig.center if m is not legend]
        legend.orientation = "horizontal"
        legend.ncols = 2 if len(legend.items) > 2 else len(legend.items)
        legend.margin = 0
        legend.border_line_alpha = 0
        fig.above = [legend, *fig.above]  # the first is nearest the plot: subtitles stay under the title
    else:
        legend.location = location


def subtitle(fig, text: str) -> None:
    """A second, smaller title line (figures, notes) under the title."""
    if text:
        fig.add_layout(Title(text=text, text_font_size="9pt", text_font_style="normal", name="subtitle"), "above")


def add_hover(fig, renderers: list, tooltips: list[tuple[str, str]]) -> HoverTool:
    tool = HoverTool(renderers=renderers, tooltips=tooltips)
    fig.add_tools(tool)
    return tool


def nice_length(value: float) -> float:
    """A round number (1, 2 or 5 times a power of ten) near ``value`` (> 0)."""
    if not (value > 0 and math.isfinite(value)):
        return 1.0
    exp = math.floor(math.log10(value))
    base = value / 10**exp
    step = 1.0 if base < 1.5 else 2.0 if base < 3.5 else 5.0 if base < 7.5 else 10.0
    return step * 10**exp


def symmetric_range(values: NDArray, *, scale: float, floor: float, centre: float = 0.0, pad: float = 1.1) -> Range1d:
    """``centre +- h``: all finite values up to ``scale`` (a robust width), at least ``floor``."""
    v = np.asarray(values, float)
    v = np.abs(v[np.isfinite(v)] - centre)
    span = float(v.max()) * pad if v.size else floor
    h = max(min(span, scale), floor)
    return Range1d(centre - h, centre + h)


def detector_extent(shape: tuple[int, int] | None, x: NDArray, y: NDArray) -> tuple[int, int]:
    """``(ny, nx)`` of the exposure, or the data's extent when the shape is unknown."""
    if shape:
        return int(shape[0]), int(shape[1])
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    fx, fy = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
    return (int(math.ceil(fy.max())) + 1 if fy.size else 1, int(math.ceil(fx.max())) + 1 if fx.size else 1)


def no_data_figure(title: str, message: str, *, width: int = PANEL_W, height: int = 120):
    """A small empty figure that says why there is nothing to show (no widgets bundle needed)."""
    from bokeh.models import Label

    fig = figure(title=title, width=width, height=height, toolbar_location=None, x_range=(0, 1), y_range=(0, 1))
    fig.axis.visible = False
    fig.grid.visible = False
    fig.scatter([], [])  # a plot without renderers is flagged by Bokeh's validation
    fig.add_layout(Label(x=0.5, y=0.5, text=message, text_align="center", text_baseline="middle",
                         text_color="#5b6475", text_font_size="10pt"))
    return fig


def stacked_status_histogram(fig, hist: Mapping[str, NDArray]) -> None:
    """Quads of ``hist`` (``left``, ``right`` and a count column per status): used, reserved, clipped stacked."""
    bottom = np.zeros(len(hist["left"]))
    for name in ("used", "reserved", "clipped"):
        counts = np.asarray(hist.get(name, np.zeros_like(bottom)), float)
        if counts.sum() == 0:
            continue
        src = ColumnDataSource({"left": np.asarray(hist["left"], np.float32),
                                "right": np.asarray(hist["right"], np.float32),
                                "bottom": bottom.astype(np.float32), "top": (bottom + counts).astype(np.float32)})
        fig.quad(left="left", right="right", bottom="bottom", top="top", source=src, name=f"hist_{name}",
                 fill_color=STATUS_STYLE[name]["color"], fill_alpha=0.6, line_color="white",
                 legend_label=f"{name} ({int(counts.sum())})")
        bottom = bottom + counts
    fig.y_range.start = 0


def trend_line(fig, trend: Mapping[str, NDArray] | None, *, label: str = "median of all used") -> None:
    """The binned median of every used star (the scatter may show a sample), as a black line."""
    if trend is None or len(trend["x"]) == 0:
        return
    src = ColumnDataSource({"x": np.asarray(trend["x"], np.float32), "median": np.asarray(trend["median"], np.float32)})
    fig.line("x", "median", source=src, line_color="black", line_width=2, legend_label=label, name="trend")


def shown_note(shown: int, total: int) -> str:
    """``""`` when every star is drawn, else ``"5000 of 50000 stars shown"``."""
    return "" if shown >= total else f"{shown} of {total} stars shown"


def scale_arrow(fig, *, shape: tuple[int, int], length_pix: float, text: str) -> None:
    """A scale arrow ``length_pix`` long with its label, in the strip under the detector (y < 0)."""
    from bokeh.models import Arrow, Label, VeeHead

    ny, nx = shape
    x0, y0 = 0.05 * nx, -0.06 * ny
    fig.add_layout(Arrow(end=VeeHead(size=8, fill_color="black"), x_start=x0, y_start=y0, x_end=x0 + length_pix,
                         y_end=y0, line_width=2, name="scale_arrow"))
    fig.add_layout(Label(x=x0 + length_pix + 0.02 * nx, y=y0, text=text, text_baseline="middle",
                         text_font_size="9pt", name="scale_label"))
