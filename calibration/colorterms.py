"""Colour-term library: fixed colour terms per instrument, filter and reference catalogue.

A reference catalogue's bands are not the instrument's; LSST's ``ColortermLibrary``
maps (reference catalogue, instrument filter) to ``ref_mag = primary + c0 +
c1 (primary - secondary) + c2 (primary - secondary)**2``. Here the library is
part of the configuration (``photocal.colorterm_library``), so an observatory
keeps its measured terms in its CalibrationConfig: fit them once on a good
night (``fit_colorterms``), then fix them. Entries match with shell-style
patterns (``fnmatch``, case-insensitive) on the instrument, the filter and the
catalogue name; the first entry that matches wins.
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

from .configbase import doc_field

__all__ = ["ColortermEntry", "find_colorterm"]


@dataclasses.dataclass(frozen=True)
class ColortermEntry:
    """One colour term of the library."""

    instrument: str = doc_field("*", "Instrument name pattern (INSTRUME), e.g. 'HSC' or '*'.")
    filter: str = doc_field("*", "Filter name pattern of the exposure, e.g. 'r' or 'HSC-R*'.")
    refcat: str = doc_field("*", "Reference catalogue name pattern, e.g. 'ps1*'.")
    primary: str = doc_field("", "Reference band of the primary magnitude.")
    secondary: str = doc_field("", "Reference band subtracted from primary: the colour.")
    c0: float = doc_field(0.0, "Constant (mag).")
    c1: float = doc_field(0.0, "Linear coefficient (mag/mag).")
    c2: float = doc_field(0.0, "Quadratic coefficient (mag/mag^2).")
    source: str = doc_field("", "Where the numbers come from (a paper, a night, a fit), for the record.")

    def validate(self) -> None:
        if not self.primary or not self.secondary:
            raise ValueError("a colour-term entry needs primary and secondary bands")
        if self.primary == self.secondary:
            raise ValueError(f"primary and secondary are both {self.primary!r}")

    def matches(self, instrument: str, filter_name: str, refcat: str) -> bool:
        return (fnmatchcase((instrument or "").lower(), self.instrument.lower())
                and fnmatchcase((filter_name or "").lower(), self.filter.lower())
                and fnmatchcase((refcat or "").lower(), self.refcat.lower()))


def find_colorterm(library: tuple[ColortermEntry, ...], *, instrument: str, filter_name: str,
                   refcat: str) -> ColortermEntry | None:
    """The first entry matching the exposure and catalogue, or None."""
    for entry in library:
        if entry.matches(instrument, filter_name, refcat):
            return entry
    return None
