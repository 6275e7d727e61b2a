"""Image diagnostics: quick-look of the calibrated exposure with toggleable overlays,
the background model, the PSF model at a few positions and its FWHM over the field.

Images arrive already block-averaged and, for the quick-look, scaled to 8 bits
(:mod:`calibweb.core.diagnostics`), so what is sent stays small.
"""

from __future__ import annotations

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColorBar, ColumnDataSource, LabelSet, Legend, LegendItem, LinearColorMapper, Range1d
from bokeh.palettes import Greys256, Inferno256, Viridis256

from ..diagnostics import ImageData, PsfData
from ._common import IMAGE_TOOLS, PANEL_W, add_hover, cds_columns, no_data_figure, panel

#: Marker of each overlay layer (screen-sized, outlines only so the image shows through).
LAYER_STYLE = {
    "detected sources": {"marker": "circle", "line_color": "#ffb000", "size": 12, "line_width": 1.2},
    "PSF stars (used)": {"marker": "cross", "line_color": "#37b24d", "size": 18, "line_width": 2},
    "PSF stars (reserved)": {"marker": "x", "line_color": "#15aabf", "size": 16, "line_width": 2},
    "matched reference stars": {"marker": "diamond", "line_color": "#e64980", "size": 16, "line_width": 1.5},
    "sky sources": {"marker": "square", "line_color": "#4dabf7", "size": 10, "line_width": 1},
}
#: Layers shown when the page opens (the others are a legend click away).
VISIBLE_LAYERS = ("detected sources", "PSF stars (used)", "matched reference stars")


def quicklook_figure(data: ImageData, *, width: int = 760):
    """The calibrated exposure (zscale; asinh a legend click away) with its overlay layers."""
    ny, nx = data.shape
    height = max(250, min(900, int(width * ny / nx)))
    note = "full resolution" if data.factor == 1 else f"{data.factor}×{data.factor} pixel blocks"
    fig = panel(f"Calibrated exposure ({nx} × {ny} pix, {note})", "x (pix)", "y (pix)", width=width + 210,
                height=height, match_aspect=True, x_range=Range1d(-0.5, nx - 0.5), y_range=Range1d(-0.5, ny - 0.5),
                tools=IMAGE_TOOLS)
    fig.name = "quicklook"
    grey = LinearColorMapper(palette=Greys256[::-1], low=0, high=255)
    items = []
    for stretch, image in (("zscale", data.zscale), ("asinh", data.asinh)):
        r = fig.image(image=[image], x=-0.5, y=-0.5, dw=nx, dh=ny, color_mapper=grey, name=f"stretch_{stretch}")
        r.visible = stretch == "zscale"
        items.append(LegendItem(label=f"image, {stretch} stretch", renderers=[r]))
    markers = []
    for name, layer in data.layers.items():
        style = LAYER_STYLE[name]
        src = ColumnDataSource(cds_columns(layer, ("id", "x", "y", "mag")), name=f"layer_{name}")
        r = fig.scatter("x", "y", source=src, marker=style["marker"], size=style["size"], fill_alpha=0,
                        line_color=style["line_color"], line_width=style["line_width"], name=name)
        r.visible = name in VISIBLE_LAYERS
        markers.append(r)
        shown, total = len(layer["x"]), data.layer_totals.get(name, len(layer["x"]))
        count = f"{shown}" if shown >= total else f"brightest {shown} of {total}"
        items.append(LegendItem(label=f"{name} ({count})", renderers=[r]))
    add_hover(fig, markers, [("layer", "$name"), ("id", "@id"), ("mag", "@mag{0.000}"), ("x, y", "@x{0.0}, @y{0.0}")])
    legend = Legend(items=items, click_policy="hide", label_text_font_size="9pt", name="layers")
    fig.add_layout(legend, "right")
    fig.grid.visible = False
    return fig


def background_figure(background, *, factor: int, shape: tuple[int, int], width: int = PANEL_W):
    """The background model that was subtracted (ADU), block-averaged."""
    if background is None:
        return no_data_figure("Background model", "this run has no background model", width=width)
    bg = np.asarray(background, np.float32)
    finite = bg[np.isfinite(bg)]
    lo, hi = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
    note = "" if factor == 1 else f", {factor}×{factor} blocks"
    return _field_map(bg, f"Background model (ADU{note})", name="background", low=lo,
                      high=hi if hi > lo else lo + 1.0, hover=("background", "@image{0.00} ADU"), unit="ADU", shape=shape, width=width)


def _field_map(values, title: str, *, name: str, low: float, high: float, hover: tuple[str, str], unit: str,
               shape: tuple[int, int], width: int):
    """A quantity sampled on a grid, stretched over the detector's pixel extent, with a colour bar."""
    ny, nx = shape
    mapper = LinearColorMapper(palette=Viridis256, low=low, high=high, nan_color="white")
    fig = panel(title, "x (pix)", "y (pix)", width=width, height=max(200, int((width - 60) * ny / nx)),
                match_aspect=True, x_range=Range1d(-0.5, nx - 0.5), y_range=Range1d(-0.5, ny - 0.5),
                tools=IMAGE_TOOLS)
    fig.name = name
    r = fig.image(image=[values], x=-0.5, y=-0.5, dw=nx, dh=ny, color_mapper=mapper)
    add_hover(fig, [r], [("x, y", "$x{0}, $y{0}"), hover])
    fig.add_layout(ColorBar(color_mapper=mapper, title=unit, width=8), "right")
    return fig


def psf_stamps_figure(psf: PsfData | None, *, width: int = PANEL_W):
    """The PSF model at a grid of positions, tiled as on the detector (log10 of the peak)."""
    if psf is None:
        return no_data_figure("PSF model", "this run has no PSF model", width=width)
    n, k, _ = psf.stamps.shape
    side = int(round(np.sqrt(n)))
    gap = max(6, k // 4)  # room for a label under each tile
    size = side * k + (side - 1) * gap
    tiles = np.full((size + gap, size), np.nan, np.float32)  # one more gap at the bottom for the labels
    label = {"x": [], "y": [], "text": []}
    for index in range(n):
        j, i = divmod(index, side)  # positions come row by row in y, as the grid
        stamp = np.asarray(psf.stamps[index], float)
        peak = np.nanmax(stamp) if np.isfinite(stamp).any() else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.log10(np.clip(stamp / peak, 1e-3, None))
        y0, x0 = gap + j * (k + gap), i * (k + gap)
        tiles[y0:y0 + k, x0:x0 + k] = level
        label["x"].append(x0 + k / 2 - 0.5)
        label["y"].append(y0 - 1.0)
        label["text"].append(f"({psf.stamp_x[index]:.0f}, {psf.stamp_y[index]:.0f}) {psf.stamp_fwhm_pix[index]:.2f}")
    mapper = LinearColorMapper(palette=Inferno256, low=-3.0, high=0.0, nan_color="white")
    fig = panel(f"PSF model ({psf.kind}): (x, y) FWHM in pix", "", "", width=width,
                height=width - 40, match_aspect=True, x_range=Range1d(-0.5, size - 0.5),
                y_range=Range1d(-0.5, size + gap - 0.5), tools=IMAGE_TOOLS)
    fig.name = "psf_stamps"
    fig.image(image=[tiles], x=-0.5, y=-0.5, dw=size, dh=size + gap, color_mapper=mapper)
    fig.add_layout(LabelSet(x="x", y="y", text="text", source=ColumnDataSource(label), text_align="center",
                            text_baseline="top", text_font_size="8pt", text_color="#1d2330"))
    fig.add_layout(ColorBar(color_mapper=mapper, title="log₁₀", width=8), "right")
    fig.axis.visible = False
    fig.grid.visible = False
    return fig


def fwhm_map_figure(psf: PsfData | None, *, shape: tuple[int, int], width: int = PANEL_W):
    """The PSF FWHM (pix) over the field, from the model on a grid."""
    if psf is None:
        return no_data_figure("PSF FWHM", "this run has no PSF model", width=width)
    grid = np.asarray(psf.fwhm["fwhm_pix"], np.float32).reshape(psf.grid_n, psf.grid_n)
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return _field_map(grid, f"PSF FWHM over the field: {np.nanmedian(grid):.2f} pix median", name="psf_fwhm",
                      low=lo, high=hi if hi > lo else lo + 0.01, hover=("FWHM", "@image{0.000} pix"), unit="pix",
                      shape=shape, width=width)


def image_layout(data: ImageData):
    """Quick-look with layers on top, background and PSF panels below."""
    return column(
        quicklook_figure(data),
        row(background_figure(data.background, factor=data.background_factor, shape=data.shape),
            psf_stamps_figure(data.psf), fwhm_map_figure(data.psf, shape=data.shape)),
        name="image",
    )


__all__ = ["LAYER_STYLE", "background_figure", "fwhm_map_figure", "image_layout", "psf_stamps_figure",
           "quicklook_figure"]
