"""Astrometry diagnostics: residual vectors, residuals against position and magnitude,
their histograms, match distances before and after the fit, the SIP distortion.

Every scatter plot draws from one ``ColumnDataSource``, so a selection made in
one (box, lasso, tap) highlights the same stars in all the others.
"""

from __future__ import annotations

import math

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    LinearColorMapper,
    Range1d,
    Span,
)
from bokeh.palettes import Viridis256
from numpy.typing import NDArray

from ..diagnostics import AstrometryData, Columns
from ._common import (
    PANEL_W,
    add_hover,
    cds_columns,
    detector_extent,
    finish_legend,
    nice_length,
    no_data_figure,
    panel,
    scale_arrow,
    shown_note,
    stacked_status_histogram,
    status_indices,
    status_scatter,
    subtitle,
    symmetric_range,
    trend_line,
)

#: Columns of the shared source (nothing else is sent to the browser).
SOURCE_COLUMNS = ("src_id", "ref_id", "x", "y", "ref_mag", "src_mag", "dra_mas", "ddec_mas", "x_end", "y_end")

TOOLTIPS = [
    ("source id", "@src_id"), ("reference id", "@ref_id"), ("ref mag", "@ref_mag{0.000}"),
    ("src mag", "@src_mag{0.000}"), ("ΔRA", "@dra_mas{0.0} mas"), ("ΔDec", "@ddec_mas{0.0} mas"),
    ("x, y", "@x{0.0}, @y{0.0}"),
]

#: Length of the scale arrow as a fraction of the detector's longer side.
ARROW_FRACTION = 0.08


def vector_scale(res_x_mas: NDArray, res_y_mas: NDArray, shape: tuple[int, int]) -> tuple[float, float]:
    """``(scale_mas, pix_per_mas)``: a round residual length and its drawn length per mas.

    The scale arrow is a round value near the 90th percentile of the vector
    lengths; it is drawn ``ARROW_FRACTION`` of the detector's longer side long.
    """
    length = np.hypot(np.asarray(res_x_mas, float), np.asarray(res_y_mas, float))
    length = length[np.isfinite(length)]
    typical = float(np.percentile(length, 90)) if length.size else 1.0
    scale_mas = nice_length(typical)
    return scale_mas, ARROW_FRACTION * max(shape) / scale_mas


def astrometry_source(table: Columns, *, pix_per_mas: float | None) -> ColumnDataSource:
    """The shared source: plotted columns only, with the magnified vector ends (unless ``pix_per_mas`` is None)."""
    data = dict(table)
    names = SOURCE_COLUMNS
    if pix_per_mas is None:
        names = tuple(n for n in SOURCE_COLUMNS if n not in ("x_end", "y_end"))
    else:
        data["x_end"] = np.asarray(table["x"]) + pix_per_mas * np.asarray(table["res_x_mas"])
        data["y_end"] = np.asarray(table["y"]) + pix_per_mas * np.asarray(table["res_y_mas"])
    return ColumnDataSource(cds_columns(data, names), name="astrometry_matches")


def residual_vector_figure(source: ColumnDataSource, indices: dict[str, NDArray], *, shape: tuple[int, int],
                           scale_mas: float, pix_per_mas: float, vector_frame: str, grid: Columns | None = None,
                           note: str = "", width: int = 520):
    """Residual vectors (reference minus fitted position) across the detector, magnified, with a scale arrow.

    Each star's vector, or with ``grid`` (many stars) the mean vector of each
    cell; the stars are drawn as dots either way (hover, linked selection).
    """
    ny, nx = shape
    frame = "detector axes" if vector_frame == "detector" else "north up, east left assumed"
    what = "Residual vectors" if grid is None else "Mean residual vector per cell"
    fig = panel(what, "x (pix)", "y (pix)", width=width,
                height=max(200, int(width * ny / nx)), match_aspect=True,
                x_range=Range1d(-0.5, nx - 0.5), y_range=Range1d(-0.5 - 0.12 * ny, ny - 0.5))
    fig.name = "residual_vectors"
    subtitle(fig, "; ".join(t for t in (f"reference − fitted, {frame}", note) if t))
    dots = status_scatter(fig, source, "x", "y", indices)
    if grid is None:
        fig.segment("x", "y", "x_end", "y_end", source=source, line_color="#343a40", line_alpha=0.8, line_width=1,
                    name="vectors")
        for r in dots:
            r.glyph.size = 3
    else:
        cells = ColumnDataSource({
            "x": np.asarray(grid["x"], np.float32), "y": np.asarray(grid["y"], np.float32),
            "x_end": np.asarray(grid["x"] + pix_per_mas * grid["u"], np.float32),
            "y_end": np.asarray(grid["y"] + pix_per_mas * grid["v"], np.float32),
            "u": np.asarray(grid["u"], np.float32), "v": np.asarray(grid["v"], np.float32),
            "n": np.asarray(grid["n"], np.int32),
        })
        for r in dots:
            r.glyph.size, r.glyph.fill_alpha, r.glyph.line_alpha = 2, 0.25, 0.25
        seg = fig.segment("x", "y", "x_end", "y_end", source=cells, line_color="black", line_width=2.5,
                          name="cell_vectors", legend_label="mean per cell")
        add_hover(fig, [seg], [("cell centre", "@x{0}, @y{0}"), ("mean residual x, y", "@u{0.0}, @v{0.0} mas"),
                               ("stars", "@n")])
    add_hover(fig, dots, TOOLTIPS)
    scale_arrow(fig, shape=shape, length_pix=scale_mas * pix_per_mas, text=f"{scale_mas:g} mas")
    fig.add_layout(Span(location=-0.5, dimension="width", line_color="#999", line_width=1))
    finish_legend(fig, outside=True)
    return fig


def residual_scatter_figure(source: ColumnDataSource, indices: dict[str, NDArray], *, x: str, y: str,
                            x_label: str, y_label: str, y_range: Range1d, x_range=None,
                            trend: Columns | None = None, note: str = ""):
    """One residual component against a position or magnitude, zero line and binned median drawn."""
    kwargs = {"x_range": x_range} if x_range is not None else {}
    fig = panel(f"{y_label.split(' (')[0]} vs {x_label.split(' (')[0]}", x_label, y_label, y_range=y_range,
                **kwargs)
    fig.name = f"{y}_vs_{x}"
    subtitle(fig, note)
    renderers = status_scatter(fig, source, x, y, indices)
    trend_line(fig, trend)
    fig.add_layout(Span(location=0, dimension="width", line_color="#868e96", line_width=1))
    add_hover(fig, renderers, TOOLTIPS)
    finish_legend(fig, outside=True)
    return fig


def residual_histogram_figure(hist: Columns, *, label: str, rms_mas: float, n_used: int):
    """Histogram of a residual component: used, reserved and clipped stars stacked apart, +-RMS drawn."""
    title = f"{label}: RMS {rms_mas:.1f} mas ({n_used} used)" if math.isfinite(rms_mas) else f"{label}"
    fig = panel(title, f"{label} (mas)", "stars")
    fig.name = f"hist_{label}"
    stacked_status_histogram(fig, hist)
    if math.isfinite(rms_mas):
        for sign in (-1, 1):
            fig.add_layout(Span(location=sign * rms_mas, dimension="height", line_dash="dashed", line_color="black",
                                name="rms"))
    finish_legend(fig)
    return fig


def match_distance_figure(hist: Columns, *, figures: dict | None = None):
    """Distribution of match distances before (header WCS) and after the fit, log scale.

    ``figures`` may hold the engine's ``SFM_ASTROM_OFFSET_MEAN``/``_STD``
    (arcsec), shown under the title.
    """
    fig = panel("Match distance before and after the fit", "distance (mas)", "matches", x_axis_type="log")
    fig.name = "match_distance"
    figures = figures or {}
    mean, std = figures.get("SFM_ASTROM_OFFSET_MEAN"), figures.get("SFM_ASTROM_OFFSET_STD")
    if mean is not None and std is not None:
        subtitle(fig, f"after the fit: mean {1000 * mean:.1f} mas, std {1000 * std:.1f} mas")
    for name, color in (("before", "#e8590c"), ("after", "#1f5f9e")):
        counts = np.asarray(hist[name], float)
        src = ColumnDataSource({"left": hist["left"], "right": hist["right"], "top": counts})
        fig.quad(left="left", right="right", bottom=0, top="top", source=src, fill_color=color, fill_alpha=0.45,
                 line_color=color, legend_label=f"{name} the fit")
    fig.y_range.start = 0
    finish_legend(fig)
    return fig


def distortion_figure(grid: Columns | None, *, shape: tuple[int, int], width: int = PANEL_W):
    """SIP distortion over the field: its size as an image, its direction as magnified vectors."""
    if grid is None:
        return no_data_figure("SIP distortion", "the fitted WCS has no SIP terms", width=width)
    ny, nx = shape
    n = int(round(math.sqrt(len(grid["x"]))))
    length = np.asarray(grid["length_pix"], float).reshape(n, n)
    scale = nice_length(float(np.nanmax(length)) if np.isfinite(length).any() else 1.0)
    pix_per_pix = ARROW_FRACTION * max(shape) / scale
    fig = panel("SIP distortion (focal − linear position)", "x (pix)", "y (pix)", width=width,
                height=max(200, int(width * ny / nx)), match_aspect=True,
                x_range=Range1d(-0.5, nx - 0.5), y_range=Range1d(-0.5 - 0.12 * ny, ny - 0.5))
    fig.name = "sip_distortion"
    mapper = LinearColorMapper(palette=Viridis256, low=float(np.nanmin(length)), high=float(np.nanmax(length)))
    fig.image(image=[length.astype(np.float32)], x=-0.5, y=-0.5, dw=nx, dh=ny, color_mapper=mapper)
    src = ColumnDataSource({
        "x": np.asarray(grid["x"], np.float32), "y": np.asarray(grid["y"], np.float32),
        "x_end": np.asarray(grid["x"] + pix_per_pix * grid["dx_pix"], np.float32),
        "y_end": np.asarray(grid["y"] + pix_per_pix * grid["dy_pix"], np.float32),
        "length_pix": np.asarray(grid["length_pix"], np.float32),
    })
    seg = fig.segment("x", "y", "x_end", "y_end", source=src, line_color="white", line_width=1.5)
    add_hover(fig, [seg], [("x, y", "@x{0}, @y{0}"), ("distortion", "@length_pix{0.000} pix")])
    fig.add_layout(ColorBar(color_mapper=mapper, title="pix", width=8), "right")
    scale_arrow(fig, shape=shape, length_pix=scale * pix_per_pix, text=f"{scale:g} pix")
    return fig


def astrometry_layout(data: AstrometryData):
    """Every astrometry plot of a run, in one layout (the unit of ``json_item``)."""
    table = data.matches
    shape = detector_extent(data.image_shape, table["x"], table["y"])
    indices = status_indices(table["status"])
    grid = data.vector_grid
    vectors = grid if grid is not None else {"u": table["res_x_mas"], "v": table["res_y_mas"]}
    scale_mas, pix_per_mas = vector_scale(vectors["u"], vectors["v"], shape)
    source = astrometry_source(table, pix_per_mas=None if grid is not None else pix_per_mas)
    n_used = int(data.histograms["dra_mas"]["used"].sum())
    sigma = max(float(np.nanmax([data.rms_ra_mas, data.rms_dec_mas, 0.0])), 1e-3)
    y_range = symmetric_range(np.concatenate([table["dra_mas"], table["ddec_mas"]]), scale=8 * sigma, floor=3 * sigma)
    x_range_x, x_range_y = Range1d(-0.5, shape[1] - 0.5), Range1d(-0.5, shape[0] - 0.5)
    note = shown_note(len(table["x"]), data.n_matches)
    axes = (("x", "x (pix)", x_range_x), ("y", "y (pix)", x_range_y), ("ref_mag", "ref magnitude (mag)", None))
    has_mag = bool(np.isfinite(table["ref_mag"]).any())
    scatter = [
        [residual_scatter_figure(source, indices, x=axis, y=comp, x_label=axis_label, y_label=label, y_range=y_range,
                                 x_range=x_range, trend=data.trends.get(f"{comp}:{axis}"), note=note)
         if axis != "ref_mag" or has_mag else
         no_data_figure(f"{label.split(' (')[0]} vs ref magnitude", "no reference magnitudes in the matches")
         for axis, axis_label, x_range in axes]
        for comp, label in (("dra_mas", "ΔRA (mas)"), ("ddec_mas", "ΔDec (mas)"))
    ]
    hists = [
        residual_histogram_figure(data.histograms["dra_mas"], label="ΔRA", rms_mas=data.rms_ra_mas, n_used=n_used),
        residual_histogram_figure(data.histograms["ddec_mas"], label="ΔDec", rms_mas=data.rms_dec_mas, n_used=n_used),
    ]
    vector_fig = residual_vector_figure(source, indices, shape=shape, scale_mas=scale_mas, pix_per_mas=pix_per_mas,
                                        vector_frame=data.vector_frame, grid=grid, note=note)
    return column(
        row(vector_fig, column(*hists)),
        row(*scatter[0]),
        row(*scatter[1]),
        row(match_distance_figure(data.histograms["distance_mas"], figures=data.figures),
            distortion_figure(data.distortion, shape=shape)),
        name="astrometry",
    )


__all__ = [
    "astrometry_layout", "astrometry_source", "distortion_figure", "match_distance_figure",
    "residual_histogram_figure", "residual_scatter_figure", "residual_vector_figure", "vector_scale",
]
