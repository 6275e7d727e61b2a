"""Diagnostics pages as files: Bokeh items per section, kept next to a run's outputs.

The service between the stored outputs (:mod:`calibweb.core.diagnostics`) and
the figures (:mod:`calibweb.core.plots`). Views serve what it builds; the
worker warms it as soon as a run succeeds, so that a person's first look at a
big run does not wait for Bokeh's Python side.
"""

from __future__ import annotations

import json
import logging

from . import diagnostics, plots

log = logging.getLogger(__name__)


def section_item_bytes(files: diagnostics.RunFiles, section: str) -> bytes:
    """The section's Bokeh ``json_item`` (cached on disk); raises DiagnosticsUnavailable."""
    return diagnostics.cached(
        files, name=f"{section}.json", version=plots.VERSION,
        build=lambda: json.dumps(plots.section_item(section, diagnostics.section_data(files, section)),
                                 separators=(",", ":")).encode(),
    )


def warm(run) -> None:
    """Build every available section of a succeeded run now; a failure only logs (the page builds it later)."""
    files = diagnostics.RunFiles.for_run(run)
    for section, available in diagnostics.available_sections(files).items():
        if not available or section not in plots.SECTION_LAYOUTS:
            continue
        try:
            section_item_bytes(files, section)
        except diagnostics.DiagnosticsUnavailable:
            continue
        except Exception:  # a plotting bug must not fail a calibrated run
            log.exception("could not prebuild the %s diagnostics of run %s", section, run.pk)
