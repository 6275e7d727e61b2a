"""Template hygiene: Django's {# #} comments end on their line, or they show up on the page."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def test_single_line_comments_close_on_their_line():
    offenders = [
        f"{path.relative_to(TEMPLATES)}:{number}"
        for path in TEMPLATES.rglob("*.html")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.count("{#") > line.count("#}")
    ]
    assert not offenders, f"use {{% comment %}} for multi-line comments: {offenders}"
