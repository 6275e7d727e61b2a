"""Test and demo support: synthetic exposures with known truth.

Import from here: ``from calibration.testing import SimConfig, simulate_exposure``.
See :mod:`calibration.testing.simulate` for the exact definitions (zero point,
PSF, WCS, noise) and :mod:`calibration.testing.refcat` for the reference
catalogue relation.
"""

from .refcat import make_reference_catalog, write_reference_catalog
from .simfits import make_header, write_fits
from .simulate import SimConfig, SimulatedExposure, make_wcs, simulate_exposure, sip_terms, small_field_config

__all__ = [
    "SimConfig",
    "SimulatedExposure",
    "make_header",
    "make_reference_catalog",
    "make_wcs",
    "simulate_exposure",
    "sip_terms",
    "small_field_config",
    "write_fits",
    "write_reference_catalog",
]
