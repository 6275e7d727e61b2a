"""The run's full report: one self-contained HTML file (BokehJS inlined, no network)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import Div, TabPanel, Tabs
from bokeh.resources import INLINE

from ..diagnostics import SummaryRow

#: Section name -> tab title, in report order.
SECTION_TITLES = {"astrometry": "Astrometry", "photometry": "Photometry", "image": "Image"}


def summary_div(rows: Sequence[SummaryRow]) -> Div:
    """The QA figures as an HTML table (name, value, unit, meaning), values escaped."""
    body = "".join(
        f"<tr><th>{html.escape(r.name)}</th><td class='value'>{html.escape(r.display)}</td>"
        f"<td>{html.escape(r.unit)}</td><td>{html.escape(r.description)}</td></tr>"
        for r in rows
    )
    return Div(
        text="<table class='qa-summary' style='border-collapse:collapse;font-size:13px'>"
        "<thead><tr><th>figure</th><th>value</th><th>unit</th><th>meaning</th></tr></thead>"
        f"<tbody>{body}</tbody></table>",
        stylesheets=[":host table.qa-summary th, :host table.qa-summary td "
                     "{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"],
        name="summary",
    )


def report_layout(*, title: str, summary: Sequence[SummaryRow], sections: Mapping[str, Any],
                  builders: Mapping[str, Any]):
    """Tabs: the summary, then each section's layout, or why it is missing.

    ``sections`` maps a section name to its data, or to a string saying why
    there is none; ``builders`` maps a section name to its layout function.
    """
    panels = [TabPanel(child=summary_div(summary), title="Summary")]
    for name, tab_title in SECTION_TITLES.items():
        data = sections.get(name, "not available for this run")
        child = Div(text=f"<p>{html.escape(data)}</p>") if isinstance(data, str) else builders[name](data)
        panels.append(TabPanel(child=child, title=tab_title))
    return column(Div(text=f"<h1 style='font-size:20px;margin:0'>{html.escape(title)}</h1>"), Tabs(tabs=panels))


def report_html(*, title: str, summary: Sequence[SummaryRow], sections: Mapping[str, Any],
                builders: Mapping[str, Any]) -> str:
    """The report as one HTML document with BokehJS inlined (``INLINE`` resources)."""
    return file_html(report_layout(title=title, summary=summary, sections=sections, builders=builders),
                     resources=INLINE, title=title)
