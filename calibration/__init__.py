"""CalibWeb's calibration engine: framework-free (numpy, astropy, sep, scipy).

Never import Django, Celery or ``calibweb`` here: a test checks it.
"""

__version__ = "0.1.0"
