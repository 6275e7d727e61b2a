"""Bokeh plots of a run's diagnostics and of the calibration trends: pure functions, data in,
Bokeh models out.

Inputs are the plain tables and small dataclasses of
:mod:`calibweb.core.diagnostics` (which reads the stored outputs); nothing
here queries the database, checks permissions or reads files. The views embed
the results with ``json_item`` (one item per section, fetched by the page) or
``file_html`` (the self-contained report).

Conventions: positions in local 0-based pixels, residuals in mas (astrometry)
or mag (photometry), units in every axis label; one ``ColumnDataSource`` per
section shared by its scatter plots, so a selection in one highlights the same
stars everywhere; per-status marks from ``_common.STATUS_STYLE``; legends hide
what is clicked.
"""

from __future__ import annotations

from typing import Any

import bokeh
from bokeh.embed import json_item

from .astrometry import astrometry_layout
from .image import image_layout
from .photometry import photometry_layout
from .report import report_html, report_layout, summary_div
from .trends import trends_layout

#: Changes whenever the plots change, so that cached items are rebuilt.
VERSION = f"1/bokeh-{bokeh.__version__}"

#: Section name -> function from its data to its layout.
SECTION_LAYOUTS = {"astrometry": astrometry_layout, "photometry": photometry_layout, "image": image_layout}


def section_item(section: str, data: Any) -> dict:
    """The ``json_item`` of one section (for ``Bokeh.embed.embed_item`` in the page)."""
    return json_item(SECTION_LAYOUTS[section](data))


def trends_item(table, *, run_url: str, note: str = "") -> dict:
    """The ``json_item`` of the trend plots (see :func:`.trends.trends_layout`)."""
    return json_item(trends_layout(table, run_url=run_url, note=note))


def run_report_html(*, title: str, summary, sections) -> str:
    """The full report of a run (see :func:`.report.report_html`)."""
    return report_html(title=title, summary=summary, sections=sections, builders=SECTION_LAYOUTS)


__all__ = ["SECTION_LAYOUTS", "VERSION", "astrometry_layout", "image_layout", "photometry_layout", "report_html",
           "report_layout", "run_report_html", "section_item", "summary_div", "trends_item", "trends_layout"]
