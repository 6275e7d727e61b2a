"""Typed errors raised by the engine.

Every error carries the pipeline ``stage`` it came from and a ``figures`` dict
of the numbers that explain it (as LSST's ``AlgorithmError.metadata`` does), so
the web side can show a person what went wrong and where without parsing text.
"""

from __future__ import annotations

from typing import Any


class CalibrationError(Exception):
    """Base class of every error the engine raises on purpose.

    Parameters
    ----------
    message : str
        A sentence a person can act on ("the image is all NaN: check the
        HDU chosen", not "ValueError").
    stage : str
        Name of the pipeline stage that failed (``"read"``, ``"background"``...).
    **figures
        Numbers that explain the failure (counts, thresholds, shapes).
    """

    def __init__(self, message: str, *, stage: str = "unknown", **figures: Any) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.figures: dict[str, Any] = dict(figures)

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description: type, stage, message, figures."""
        return {
            "type": type(self).__name__,
            "stage": self.stage,
            "message": self.message,
            "figures": {k: _jsonable(v) for k, v in self.figures.items()},
        }


class ConfigError(CalibrationError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class BadExposureError(CalibrationError):
    """The exposure cannot be calibrated (not FITS, no data, all NaN, a cube...)."""


class NoSourcesError(CalibrationError):
    """Too few sources were detected or survived selection for a stage."""


class PsfError(CalibrationError):
    """The PSF could not be characterised."""


class ReferenceCatalogError(CalibrationError):
    """The reference catalogue cannot be read or does not cover the exposure."""


class AstrometryError(CalibrationError):
    """Matching or the WCS fit failed (too few matches, offset too large...)."""


class PhotometryError(CalibrationError):
    """The photometric calibration failed (too few stars, no finite zero point...)."""


class CancelledError(CalibrationError):
    """The caller asked the run to stop (raised from a progress callback)."""


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        pass
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
