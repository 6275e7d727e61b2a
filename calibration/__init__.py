"""CalibWeb's calibration engine: framework-free (numpy, astropy, sep, scipy).

Never import Django, Celery or ``calibweb`` here: a test checks it.
"""

__version__ = "0.1.0"

__all__ = ["CalibrateConfig", "CalibrationResult", "__version__", "calibrate"]


def __getattr__(name: str):
    # ``calibration.calibrate(...)`` without importing every stage on ``import calibration``.
    if name in ("calibrate", "CalibrateConfig", "CalibrationResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'calibration' has no attribute {name!r}")
