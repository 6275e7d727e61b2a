"""Synthetic exposures with known truth, for truth tests, benchmarks and demos.

:func:`simulate_exposure` renders stars, galaxies, sky, saturation with bleed
trails, cosmic rays and bad columns from a :class:`SimConfig` and a seed, and
returns a :class:`SimulatedExposure` holding the
:class:`~calibration.exposure.Exposure` together with its truth.

Definitions (exact; tests rely on them)
---------------------------------------
Coordinates
    ``x, y`` are local 0-based pixel coordinates of the exposure's arrays
    (``image[y, x]``); the parent (detector) frame is ``x + xy0[0], y + xy0[1]``.
    The field centre is ``xc = (nx - 1) / 2, yc = (ny - 1) / 2`` (local).
Photometry
    An object of magnitude ``mag`` (the exposure's own band and instrumental
    system) puts ``flux_adu = 10**(-0.4 * (mag - zero_point_mag))`` ADU into the
    exposure, i.e. ``mag = zero_point_mag - 2.5 log10(flux_adu)``. The zero point
    is for the whole exposure (not per second): with ``exptime_s`` it is
    ``zero_point_mag - 2.5 log10(exptime_s)`` per second. The rendered light of
    an object sums to ``flux_adu`` exactly (less what falls off the image).
Colours
    Every object has ``colour = <colour_bands[0]>_mag - <colour_bands[1]>_mag``
    drawn uniformly in ``colour_range_mag``. ``filter_name`` is one of the two
    colour bands and its magnitude is ``mag``; the other band's magnitude
    follows from the colour.
PSF
    An elliptical Moffat (index ``psf_moffat_beta``) or Gaussian profile whose
    geometric-mean FWHM before pixel integration is
    ``psf_fwhm_pix + gx (x - xc) / 1000 + gy (y - yc) / 1000`` (``gx, gy`` the
    ``psf_fwhm_gradient_*`` fields), cut at ``psf_truncation_fwhm`` FWHM and
    renormalised, integrated over each pixel (Gauss-Legendre quadrature). A
    pixel-integrated image has second moments larger by 1/12 pix^2 per axis
    (Sheppard), see :meth:`SimulatedExposure.psf_fwhm_pix`.
Sky
    ``sky(x, y) = sky_level_adu + sky_gradient_x_adu_per_pix (x - xc)
    + sky_gradient_y_adu_per_pix (y - yc)`` ADU per pixel.
Noise
    Electrons are Poisson with mean ``gain_e_per_adu * model`` plus Gaussian read
    noise ``read_noise_e``; the image is electrons / gain. The variance plane is
    ``model / gain + (read_noise_e / gain)**2`` (ADU^2) computed from the
    noiseless model, so it is the variance actually injected.
WCS
    TAN (TAN-SIP with ``sip_a``/``sip_b``) with ``CRVAL = (ra_deg, dec_deg)`` at
    the field centre, ``CD = s [[-cos t, sin t], [sin t, cos t]]`` (``s`` the
    pixel scale in deg, ``t = rotation_deg``, the angle of +y from north towards
    east). The header WCS (``exposure.wcs``) has ``CRPIX`` moved by
    ``header_offset_pix``, rotation ``t + header_rotation_deg`` and scale
    ``s (1 + header_scale_fraction)``: a source that truly sits at the field
    centre is predicted by the header WCS at ``(xc, yc) + header_offset_pix``.

Random numbers come from independent streams ``default_rng([seed, k])``, one per
component (stars, galaxies, noise...), so switching off cosmic rays does not move
the stars.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from ..configbase import doc_field
from ..errors import ConfigError
from ..exposure import MASK_DTYPE, Exposure, ExposureInfo, MaskPlane, make_exposure
from . import render
from .simfits import make_header, write_fits
from .simwcs import SIP_LENGTH_TO_ORDER, make_wcs, sip_terms

__all__ = [
    "SimConfig",
    "SimulatedExposure",
    "simulate_exposure",
    "make_wcs",
    "sip_terms",
]

# Random-number stream keys (one independent stream per component).
_STREAM_STARS = 1
_STREAM_SATURATED = 2
_STREAM_GALAXIES = 3
_STREAM_COSMICS = 4
_STREAM_NOISE = 5


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated exposure (see the module docstring)."""

    shape: tuple[int, int] = doc_field((1024, 1024), "Image shape (ny, nx) in pixels.")
    seed: int = doc_field(1, "Seed of every random choice; same seed, same exposure.")
    noise: bool = doc_field(True, "Add Poisson and read noise; False gives the noiseless model image.")
    xy0: tuple[int, int] = doc_field((100, 200), "Parent-frame (x0, y0) of pixel [0, 0] (LTV1 = -x0).")
    # Stars
    n_stars: int = doc_field(1000, "Number of (unsaturated-by-design) stars placed uniformly on the image.")
    mag_range: tuple[float, float] = doc_field((14.0, 23.0), "Bright and faint limits (mag) of the stars.")
    count_slope_dex_per_mag: float = doc_field(
        0.3, "Slope of the number counts: dN/dmag proportional to 10**(slope * mag); 0 is uniform."
    )
    colour_bands: tuple[str, str] = doc_field(("g", "r"), "Bands (b0, b1) defining colour = b0_mag - b1_mag.")
    colour_range_mag: tuple[float, float] = doc_field((0.2, 1.4), "Uniform range of the colour (mag).")
    n_saturated_stars: int = doc_field(
        2, "Extra bright stars whose noiseless peak above sky is 2-30 times (saturation_adu - sky)."
    )
    # Galaxies
    n_galaxies: int = doc_field(20, "Number of extended Sersic galaxies (is_galaxy in the truth).")
    galaxy_mag_range: tuple[float, float] = doc_field((17.0, 21.0), "Uniform magnitude range of galaxies.")
    galaxy_half_light_radius_pix: tuple[float, float] = doc_field(
        (2.0, 5.0), "Uniform range of the semi-major half-light radius (pix) before the PSF."
    )
    galaxy_axis_ratio: tuple[float, float] = doc_field((0.4, 1.0), "Uniform range of the axis ratio b/a.")
    galaxy_sersic_n: float = doc_field(1.0, "Sersic index of every galaxy (1 exponential disc, 4 de Vaucouleurs).")
    galaxy_truncation_hlr: float = doc_field(5.0, "Galaxy profiles are cut at this many half-light radii.")
    # Photometry, sky, detector
    zero_point_mag: float = doc_field(
        28.0, "Instrumental zero point of the whole exposure: flux_adu = 10**(-0.4 (mag - zero_point_mag))."
    )
    exptime_s: float = doc_field(30.0, "Exposure time (s), written as EXPTIME.")
    sky_level_adu: float = doc_field(1000.0, "Sky level (ADU per pixel) at the field centre.")
    sky_gradient_x_adu_per_pix: float = doc_field(0.0, "Sky gradient along x (ADU per pixel per pixel).")
    sky_gradient_y_adu_per_pix: float = doc_field(0.0, "Sky gradient along y (ADU per pixel per pixel).")
    gain_e_per_adu: float = doc_field(1.5, "Gain (electrons per ADU), written as GAIN.")
    read_noise_e: float = doc_field(6.0, "Read noise (electrons), written as RDNOISE.")
    saturation_adu: float = doc_field(60000.0, "Full-well/ADC level (ADU): pixels are clipped there, SATURATE.")
    bad_columns: tuple[int, ...] = doc_field((), "Local x indices of dead columns, set to bad_column_value_adu.")
    bad_column_value_adu: float = doc_field(0.0, "Pixel value of the bad columns (ADU).")
    n_cosmic_rays: int = doc_field(10, "Number of cosmic-ray tracks (1-3 pixels each, not PSF-blurred).")
    cosmic_ray_peak_adu: tuple[float, float] = doc_field(
        (1000.0, 8000.0), "Uniform range of a cosmic-ray track's peak (ADU above sky)."
    )
    # PSF
    psf_model: Literal["moffat", "gaussian"] = doc_field("moffat", "PSF profile: 'moffat' or 'gaussian'.")
    psf_moffat_beta: float = doc_field(3.5, "Moffat index beta (> 1.5).")
    psf_fwhm_pix: float = doc_field(3.0, "PSF FWHM (pix, geometric mean, before pixel integration) at the centre.")
    psf_fwhm_gradient_x_per_1000pix: float = doc_field(0.0, "Change of FWHM (pix) per 1000 pix along x.")
    psf_fwhm_gradient_y_per_1000pix: float = doc_field(0.0, "Change of FWHM (pix) per 1000 pix along y.")
    psf_e1: float = doc_field(0.0, "PSF ellipticity e1 = (Ixx - Iyy) / (Ixx + Iyy).")
    psf_e2: float = doc_field(0.0, "PSF ellipticity e2 = 2 Ixy / (Ixx + Iyy).")
    psf_truncation_fwhm: float = doc_field(5.0, "PSF profile cut at r_eff = this many FWHM, then renormalised.")
    pixel_quadrature_order: int = doc_field(
        0, "Gauss-Legendre nodes per pixel axis for pixel integration; 0 picks 4 if FWHM < 2.5 pix, else 3."
    )
    # Astrometry
    ra_deg: float = doc_field(150.0, "Right ascension (deg, ICRS) of the field centre.")
    dec_deg: float = doc_field(2.2, "Declination (deg, ICRS) of the field centre.")
    pixel_scale_arcsec: float = doc_field(0.26, "Pixel scale (arcsec per pixel) at the field centre.")
    rotation_deg: float = doc_field(0.0, "Angle of the +y axis from north towards east (deg).")
    sip_a: tuple[float, ...] = doc_field(
        (), "SIP A coefficients (pix) in sip_terms() order: 3 values (order 2), 7 (order 3) or empty."
    )
    sip_b: tuple[float, ...] = doc_field((), "SIP B coefficients, same layout as sip_a.")
    header_offset_pix: tuple[float, float] = doc_field(
        (0.0, 0.0), "Header WCS error: (dx, dy) pix by which it mispredicts positions at the centre."
    )
    header_rotation_deg: float = doc_field(0.0, "Header WCS error: extra rotation (deg).")
    header_scale_fraction: float = doc_field(0.0, "Header WCS error: fractional pixel-scale error.")
    header_sip: bool = doc_field(True, "Write the SIP distortion into the header WCS too.")
    # Metadata
    filter_name: str = doc_field("r", "Band of the exposure; must be one of colour_bands.")
    instrument: str = doc_field("SimCam", "Instrument name (INSTRUME).")
    object_name: str = doc_field("SIMFIELD", "OBJECT card.")
    date_obs: str = doc_field("2024-03-15T03:12:45.000", "UTC start of the exposure, ISO 8601 (DATE-OBS).")

    def validate(self) -> None:
        """Cross-field checks; raises ``ValueError`` naming the field."""
        ny, nx = self.shape
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if ny < 16 or nx < 16:
            raise ValueError(f"shape {self.shape} too small (each side >= 16)")
        for name in ("n_stars", "n_saturated_stars", "n_galaxies", "n_cosmic_rays"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("mag_range", "colour_range_mag", "galaxy_mag_range", "galaxy_half_light_radius_pix",
                     "galaxy_axis_ratio", "cosmic_ray_peak_adu"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (low, high), got {(lo, hi)}")
        if not 0 < self.galaxy_axis_ratio[0] <= self.galaxy_axis_ratio[1] <= 1:
            raise ValueError("galaxy_axis_ratio must lie in (0, 1]")
        if self.galaxy_half_light_radius_pix[0] <= 0 or self.galaxy_sersic_n <= 0:
            raise ValueError("galaxy sizes and sersic index must be > 0")
        if self.filter_name not in self.colour_bands:
            raise ValueError(f"filter_name {self.filter_name!r} must be one of colour_bands {self.colour_bands}")
        if self.colour_bands[0] == self.colour_bands[1]:
            raise ValueError("colour_bands must be two different bands")
        if self.gain_e_per_adu <= 0 or self.read_noise_e < 0 or self.exptime_s <= 0:
            raise ValueError("gain_e_per_adu and exptime_s must be > 0, read_noise_e >= 0")
        if self.sky_level_adu < 0:
            raise ValueError("sky_level_adu must be >= 0")
        corners = [self.sky_adu_at(x, y) for x in (0, nx - 1) for y in (0, ny - 1)]
        if min(corners) < 0:
            raise ValueError("the sky gradient makes the sky negative at a corner")
        if self.saturation_adu <= max(corners):
            raise ValueError("saturation_adu must exceed the sky level everywhere")
        for col in self.bad_columns:
            if not 0 <= col < nx:
                raise ValueError(f"bad column {col} outside 0..{nx - 1}")
        if self.psf_model == "moffat" and self.psf_moffat_beta <= 1.5:
            raise ValueError("psf_moffat_beta must be > 1.5")
        fwhm = [self.fwhm_at(x, y) for x in (0, nx - 1) for y in (0, ny - 1)]
        if min(fwhm) < 1.0:
            raise ValueError(f"PSF FWHM falls to {min(fwhm):.2f} pix < 1 pix somewhere on the image")
        if self.psf_e1**2 + self.psf_e2**2 >= 0.81:
            raise ValueError("PSF ellipticity |e| must be < 0.9")
        if self.psf_truncation_fwhm < 2.0:
            raise ValueError("psf_truncation_fwhm must be >= 2")
        if self.pixel_quadrature_order < 0 or self.pixel_quadrature_order > 12:
            raise ValueError("pixel_quadrature_order must be 0 (auto) or 1..12")
        if self.pixel_scale_arcsec <= 0 or not -90 < self.dec_deg < 90:
            raise ValueError("pixel_scale_arcsec must be > 0 and dec_deg inside (-90, 90)")
        for name in ("sip_a", "sip_b"):
            n = len(getattr(self, name))
            if n and n not in SIP_LENGTH_TO_ORDER:
                raise ValueError(f"{name} needs 3 (order 2), 7 (order 3) or 12 (order 4) values, got {n}")
        if abs(self.header_scale_fraction) >= 0.5:
            raise ValueError("header_scale_fraction must be within (-0.5, 0.5)")
        Time(self.date_obs, format="isot", scale="utc")  # raises ValueError if unparsable

    # Field-dependent quantities, usable before simulation.
    @property
    def centre_pix(self) -> tuple[float, float]:
        """``(xc, yc)``: local coordinates of the field centre."""
        return ((self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)

    def fwhm_at(self, x: Any, y: Any) -> Any:
        """PSF FWHM (pix, before pixel integration) at local ``(x, y)``."""
        xc, yc = self.centre_pix
        return (
            self.psf_fwhm_pix
            + self.psf_fwhm_gradient_x_per_1000pix * (np.asarray(x) - xc) / 1000.0
            + self.psf_fwhm_gradient_y_per_1000pix * (np.asarray(y) - yc) / 1000.0
        )

    def sky_adu_at(self, x: Any, y: Any) -> Any:
        """Sky (ADU per pixel) at local ``(x, y)``."""
        xc, yc = self.centre_pix
        return (
            self.sky_level_adu
            + self.sky_gradient_x_adu_per_pix * (np.asarray(x) - xc)
            + self.sky_gradient_y_adu_per_pix * (np.asarray(y) - yc)
        )


@dataclasses.dataclass
class SimulatedExposure:
    """A simulated exposure and its truth.

    Attributes
    ----------
    exposure : Exposure
        Image (ADU, sky included), mask (``BAD`` columns, ``SAT`` pixels),
        variance, header WCS (possibly perturbed), info, header and ``xy0``.
    truth : astropy.table.Table
        One row per star and galaxy (see :func:`simulate_exposure`).
    true_wcs : astropy.wcs.WCS
        The WCS used to place the sources (local 0-based pixels, ``origin=0``).
    header_wcs : astropy.wcs.WCS
        The WCS written in the header (``exposure.wcs``).
    config : SimConfig
        The configuration simulated.
    model_image : ndarray of float32, shape (ny, nx)
        The noiseless image (sky, sources, cosmic rays, saturation, bad columns).
    sky_noise_adu : float
        Per-pixel noise std (ADU) of sky plus read noise at the field centre:
        ``sqrt(sky / gain + (read_noise_e / gain)**2)``.
    cosmic_ray_pixels : ndarray of int, shape (n, 2)
        ``(y, x)`` of every pixel hit by a cosmic ray.
    bad_columns : tuple of int
        Local x of the bad columns.
    bad_pixel_mask : ndarray of bool, shape (ny, nx)
        True on bad columns.
    """

    exposure: Exposure
    truth: Table
    true_wcs: WCS
    header_wcs: WCS
    config: SimConfig
    model_image: np.ndarray
    sky_noise_adu: float
    cosmic_ray_pixels: np.ndarray
    bad_columns: tuple[int, ...]
    bad_pixel_mask: np.ndarray

    def psf_fwhm_pix(self, x: Any, y: Any, *, pixel_convolved: bool = False) -> Any:
        """True PSF FWHM (pix) at local ``(x, y)``.

        With ``pixel_convolved=False`` (default) this is the geometric-mean FWHM
        of the profile before pixel integration. With ``True`` it is the FWHM a
        second-moment (Gaussian-equivalent) measurement of the pixelated image
        gives: ``sqrt(fwhm**2 + 8 ln 2 / 12)``, exact for a Gaussian PSF.
        """
        fwhm = self.config.fwhm_at(x, y)
        if pixel_convolved:
            return np.sqrt(fwhm**2 + 8.0 * math.log(2.0) / 12.0)
        return fwhm

    def sky_adu(self, x: Any, y: Any) -> Any:
        """True sky level (ADU per pixel) at local ``(x, y)``."""
        return self.config.sky_adu_at(x, y)

    def psf_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """True pixel-integrated PSF for a source at local ``(x, y)``.

        Parameters
        ----------
        x, y : float
            Source position (pix, local 0-based).
        size : int, optional
            Odd side of the returned stamp; default: the full rendered stamp.

        Returns
        -------
        ndarray of float64, shape (size, size)
            Indexed ``[y, x]``; element ``[size // 2, size // 2]`` is image pixel
            ``(round(x), round(y))``. The full stamp sums to 1 (the profile is
            truncated at ``psf_truncation_fwhm``); a smaller ``size`` crops it.
        """
        return _psf_stamps(self.config, np.array([float(x)]), np.array([float(y)]), size=size)[0][0]

    def isolated(self, radius_pix: float = 15.0) -> np.ndarray:
        """Truth rows free of neighbours and defects within ``radius_pix``.

        True where no other truth object lies within ``radius_pix``, the
        ``2 radius + 1`` box around the object is inside the image and holds no
        ``BAD``/``SAT`` pixel and no cosmic-ray pixel, and the object is not
        saturated.
        """
        t = self.truth
        x, y = np.asarray(t["x"]), np.asarray(t["y"])
        ny, nx = self.exposure.shape
        r = int(math.ceil(radius_pix))
        if len(t) > 1:
            from scipy.spatial import cKDTree

            dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
            ok = dist[:, 1] > radius_pix
        else:
            ok = np.ones(len(t), bool)
        ok &= (x >= r) & (x <= nx - 1 - r) & (y >= r) & (y <= ny - 1 - r)
        ok &= ~np.asarray(t["is_saturated"])
        defect = (self.exposure.mask & (MaskPlane.BAD | MaskPlane.SAT)) != 0
        if len(self.cosmic_ray_pixels):
            defect = defect.copy()
            defect[self.cosmic_ray_pixels[:, 0], self.cosmic_ray_pixels[:, 1]] = True
        # box sums of defects via a 2-D cumulative sum
        cs = np.pad(defect.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
        x0, x1 = np.clip(ix - r, 0, nx), np.clip(ix + r + 1, 0, nx)
        y0, y1 = np.clip(iy - r, 0, ny), np.clip(iy + r + 1, 0, ny)
        nbad = cs[y1, x1] - cs[y0, x1] - cs[y1, x0] + cs[y0, x0]
        return ok & (nbad == 0)


def small_field_config(seed: int, **overrides: Any) -> SimConfig:
    """A 512x512 field with enough bright stars for a PSF model and a zero point.

    For quick end-to-end tests: 300 stars of 14-20 mag (about 150 usable for
    the zero point, 30+ PSF stars), 5 galaxies; every other setting default.
    """
    values: dict[str, Any] = {"shape": (512, 512), "n_stars": 300, "mag_range": (14.0, 20.0), "n_galaxies": 5}
    values.update(overrides)
    return SimConfig(seed=seed, **values)


def simulate_exposure(config: SimConfig | None = None, **overrides: Any) -> SimulatedExposure:
    """Simulate an exposure with known truth.

    Parameters
    ----------
    config : SimConfig, optional
        Defaults to ``SimConfig()``.
    **overrides
        Field values replacing those of ``config`` (``n_stars=10, noise=False``).

    Returns
    -------
    SimulatedExposure
        Its ``truth`` table has one row per object: ``id`` (1.., stars first),
        ``x, y`` (local pix, the centroid of the rendered light), ``x_parent,
        y_parent``, ``ra, dec`` (deg, ``true_wcs`` at ``x, y``), ``mag``,
        ``flux_adu``, ``<band>_mag`` for both colour bands, ``colour``,
        ``is_galaxy``, ``is_saturated`` (noiseless peak incl. sky reaches
        saturation), ``peak_adu`` (brightest pixel above sky, before clipping),
        ``fwhm_pix`` (PSF at the position) and ``half_light_radius_pix``
        (0 for stars).

    Raises
    ------
    ConfigError
        When the configuration fails :meth:`SimConfig.validate`.
    """
    cfg = config if config is not None else SimConfig()
    if overrides:
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except TypeError as exc:
            raise ConfigError(f"SimConfig: {exc}", stage="simulate") from exc
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"SimConfig: {exc}", stage="simulate") from exc

    ny, nx = cfg.shape
    xc, yc = cfg.centre_pix
    true_wcs = make_wcs(cfg)
    header_wcs = make_wcs(cfg, header=True)

    # --- sources -------------------------------------------------------------------
    rng = _rng(cfg, _STREAM_STARS)
    n = cfg.n_stars
    sx = rng.uniform(0.0, nx - 1.0, n)
    sy = rng.uniform(0.0, ny - 1.0, n)
    smag = _power_law_mags(rng, n, *cfg.mag_range, cfg.count_slope_dex_per_mag)
    scol = rng.uniform(*cfg.colour_range_mag, n)

    rng = _rng(cfg, _STREAM_SATURATED)
    m = cfg.n_saturated_stars
    margin = min(20.0, (min(nx, ny) - 1) / 4.0)
    tx = rng.uniform(margin, nx - 1.0 - margin, m)
    ty = rng.uniform(margin, ny - 1.0 - margin, m)
    ratio = np.exp(rng.uniform(math.log(2.0), math.log(30.0), m))
    tcol = rng.uniform(*cfg.colour_range_mag, m)
    if m:
        stamps, _, _ = _psf_stamps(cfg, tx, ty)
        peak_frac = stamps.max(axis=(1, 2))
        tflux = ratio * (cfg.saturation_adu - cfg.sky_adu_at(tx, ty)) / peak_frac
        tmag = cfg.zero_point_mag - 2.5 * np.log10(tflux)
    else:
        tmag = np.zeros(0)

    star_x = np.concatenate([sx, tx])
    star_y = np.concatenate([sy, ty])
    star_mag = np.concatenate([smag, tmag])
    star_col = np.concatenate([scol, tcol])
    star_flux = 10.0 ** (-0.4 * (star_mag - cfg.zero_point_mag))

    model = np.zeros((ny, nx), np.float64)
    star_peak = _render_stars(cfg, model, star_x, star_y, star_flux)

    rng = _rng(cfg, _STREAM_GALAXIES)
    g = cfg.n_galaxies
    gx = rng.uniform(0.0, nx - 1.0, g)
    gy = rng.uniform(0.0, ny - 1.0, g)
    gmag = rng.uniform(*cfg.galaxy_mag_range, g)
    gcol = rng.uniform(*cfg.colour_range_mag, g)
    ghlr = rng.uniform(*cfg.galaxy_half_light_radius_pix, g)
    gq = rng.uniform(*cfg.galaxy_axis_ratio, g)
    gpa = rng.uniform(0.0, math.pi, g)
    gflux = 10.0 ** (-0.4 * (gmag - cfg.zero_point_mag))
    gpeak = _render_galaxies(cfg, model, gx, gy, gflux, ghlr, gq, gpa)

    # --- sky, cosmic rays, saturation ----------------------------------------------
    model += cfg.sky_adu_at(np.arange(nx)[None, :], np.arange(ny)[:, None])
    cr_pix, cr_add = _cosmic_rays(cfg, _rng(cfg, _STREAM_COSMICS))
    if len(cr_pix):
        np.add.at(model, (cr_pix[:, 0], cr_pix[:, 1]), cr_add)
    saturated = render.bleed_columns(model, cfg.saturation_adu)

    # --- noise and defects -----------------------------------------------------------
    gain, rn = cfg.gain_e_per_adu, cfg.read_noise_e
    variance = (model / gain + (rn / gain) ** 2).astype(np.float32)
    if cfg.noise:
        rng = _rng(cfg, _STREAM_NOISE)
        electrons = rng.poisson(model * gain).astype(np.float64)
        electrons += rng.normal(0.0, rn, model.shape)
        image = electrons / gain
        del electrons
        np.minimum(image, cfg.saturation_adu, out=image)  # ADC/full-well ceiling
        image[saturated] = cfg.saturation_adu
    else:
        image = model.copy()
    bad = np.zeros((ny, nx), bool)
    if cfg.bad_columns:
        cols = np.asarray(cfg.bad_columns, int)
        bad[:, cols] = True
        image[:, cols] = cfg.bad_column_value_adu
        model[:, cols] = cfg.bad_column_value_adu
    mask = np.zeros((ny, nx), MASK_DTYPE)
    mask[bad] |= MaskPlane.BAD
    mask[saturated] |= MaskPlane.SAT

    # --- truth table -----------------------------------------------------------------
    ns = len(star_x)
    x_all = np.concatenate([star_x, gx])
    y_all = np.concatenate([star_y, gy])
    mag_all = np.concatenate([star_mag, gmag])
    col_all = np.concatenate([star_col, gcol])
    flux_all = np.concatenate([star_flux, gflux])
    peak_all = np.concatenate([star_peak, gpeak])
    is_gal = np.concatenate([np.zeros(ns, bool), np.ones(g, bool)])
    sky_at = cfg.sky_adu_at(x_all, y_all)
    is_sat = peak_all + sky_at >= cfg.saturation_adu
    truth = _truth_table(cfg, true_wcs, x_all, y_all, mag_all, col_all, flux_all, peak_all, is_gal, is_sat,
                         np.concatenate([np.zeros(ns), ghlr]))

    info = ExposureInfo(
        instrument=cfg.instrument,
        filter_name=cfg.filter_name,
        exptime_s=cfg.exptime_s,
        date_obs=cfg.date_obs,
        mjd_obs=float(Time(cfg.date_obs, format="isot", scale="utc").mjd),
        gain_e_per_adu=gain,
        read_noise_e=rn,
        saturation_adu=cfg.saturation_adu,
        exposure_id=cfg.seed,
        object_name=cfg.object_name,
    )
    exposure = make_exposure(
        image.astype(np.float32),
        variance=variance,
        mask=mask,
        wcs=header_wcs.deepcopy(),
        info=info,
        header=make_header(cfg, header_wcs),
        xy0=(int(cfg.xy0[0]), int(cfg.xy0[1])),
    )
    return SimulatedExposure(
        exposure=exposure,
        truth=truth,
        true_wcs=true_wcs,
        header_wcs=header_wcs,
        config=cfg,
        model_image=model.astype(np.float32),
        sky_noise_adu=math.sqrt(cfg.sky_adu_at(xc, yc) / gain + (rn / gain) ** 2),
        cosmic_ray_pixels=np.unique(cr_pix, axis=0),
        bad_columns=tuple(int(c) for c in cfg.bad_columns),
        bad_pixel_mask=bad,
    )


# ---------------------------------------------------------------------------------------
# helpers


def _rng(cfg: SimConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(cfg.seed), stream])


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Magnitudes with dN/dm proportional to 10**(slope m) on [lo, hi] (inverse CDF)."""
    u = rng.uniform(0.0, 1.0, n)
    if slope == 0 or hi == lo:
        return lo + u * (hi - lo)
    k = slope * math.log(10.0)
    # CDF(m) = (exp(k (m - lo)) - 1) / (exp(k (hi - lo)) - 1)
    return lo + np.log1p(u * np.expm1(k * (hi - lo))) / k


def _quadrature_order(cfg: SimConfig) -> int:
    if cfg.pixel_quadrature_order:
        return cfg.pixel_quadrature_order
    ny, nx = cfg.shape
    fmin = min(cfg.fwhm_at(x, y) for x in (0, nx - 1) for y in (0, ny - 1))
    return 4 if fmin < 2.5 else 3


def _stamp_half(cfg: SimConfig) -> int:
    ny, nx = cfg.shape
    fmax = max(cfg.fwhm_at(x, y) for x in (0, nx - 1) for y in (0, ny - 1))
    shape = render.shape_matrix(cfg.psf_e1, cfg.psf_e2)
    return render.stamp_half_size(fmax, shape, cfg.psf_truncation_fwhm)


def _psf_stamps(
    cfg: SimConfig, x: np.ndarray, y: np.ndarray, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    half = _stamp_half(cfg)
    stamps, ix, iy = render.psf_stamps(
        x, y, cfg.fwhm_at(x, y),
        half=half, model=cfg.psf_model, beta=cfg.psf_moffat_beta,
        shape=render.shape_matrix(cfg.psf_e1, cfg.psf_e2),
        truncation_fwhm=cfg.psf_truncation_fwhm, order=_quadrature_order(cfg),
    )
    if size is not None:
        if size < 1 or size % 2 == 0:
            raise ValueError(f"size must be a positive odd integer, got {size}")
        h = size // 2
        padded = np.pad(stamps, ((0, 0), (max(h - half, 0),) * 2, (max(h - half, 0),) * 2))
        c = padded.shape[1] // 2
        stamps = padded[:, c - h:c + h + 1, c - h:c + h + 1]
    return stamps, ix, iy


def _render_stars(cfg: SimConfig, image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Add point sources into ``image``; return each one's peak pixel (ADU)."""
    half = _stamp_half(cfg)
    q = _quadrature_order(cfg)
    peak = np.zeros(len(x))
    for sl in render.batches(len(x), (2 * half + 1) ** 2 * q * q):
        stamps, ix, iy = _psf_stamps(cfg, x[sl], y[sl])
        stamps *= flux[sl, None, None]
        peak[sl] = stamps.max(axis=(1, 2))
        render.add_stamps(image, stamps, ix, iy)
    return peak


def _render_galaxies(
    cfg: SimConfig, image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
    hlr: np.ndarray, q: np.ndarray, pa: np.ndarray,
) -> np.ndarray:
    peak = np.zeros(len(x))
    shape = render.shape_matrix(cfg.psf_e1, cfg.psf_e2)
    for i in range(len(x)):
        stamp, ix, iy = render.galaxy_stamp(
            float(x[i]), float(y[i]),
            half_light_radius_pix=float(hlr[i]), sersic_n=cfg.galaxy_sersic_n, axis_ratio=float(q[i]),
            position_angle_rad=float(pa[i]), truncation_hlr=cfg.galaxy_truncation_hlr,
            psf_fwhm_pix=float(cfg.fwhm_at(x[i], y[i])), psf_model=cfg.psf_model,
            psf_beta=cfg.psf_moffat_beta, psf_shape=shape, psf_truncation_fwhm=cfg.psf_truncation_fwhm,
        )
        stamp *= flux[i]
        peak[i] = stamp.max()
        render.add_stamps(image, stamp[None], np.array([ix]), np.array([iy]))
    return peak


def _cosmic_rays(cfg: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(y, x)`` and ADU of 1-3 pixel straight cosmic-ray tracks."""
    ny, nx = cfg.shape
    n = cfg.n_cosmic_rays
    length = rng.integers(1, 4, n)
    directions = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])
    step = directions[rng.integers(0, 4, n)]
    y0 = rng.integers(3, ny - 3, n)
    x0 = rng.integers(3, nx - 3, n)
    peak = rng.uniform(*cfg.cosmic_ray_peak_adu, n)
    pix, adu = [], []
    for i in range(n):
        k = np.arange(length[i])
        pix.append(np.stack([y0[i] + k * step[i, 0], x0[i] + k * step[i, 1]], axis=1))
        amp = peak[i] * rng.uniform(0.5, 1.0, length[i])
        amp[rng.integers(0, length[i])] = peak[i]
        adu.append(amp)
    if not pix:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    return np.concatenate(pix).astype(np.int64), np.concatenate(adu)


def _truth_table(
    cfg: SimConfig, wcs: WCS, x: np.ndarray, y: np.ndarray, mag: np.ndarray, colour: np.ndarray,
    flux: np.ndarray, peak: np.ndarray, is_gal: np.ndarray, is_sat: np.ndarray, hlr: np.ndarray,
) -> Table:
    ra, dec = wcs.all_pix2world(x, y, 0)
    b0, b1 = cfg.colour_bands
    if cfg.filter_name == b1:
        m1, m0 = mag, mag + colour
    else:
        m0, m1 = mag, mag - colour
    t = Table()
    t.meta["ZP_MAG"] = cfg.zero_point_mag
    t.meta["FILTER"] = cfg.filter_name
    t.meta["SEED"] = cfg.seed

    def col(name: str, data: Any, unit: str | None, description: str) -> None:
        t[name] = data
        t[name].unit = unit
        t[name].description = description

    col("id", np.arange(1, len(x) + 1, dtype=np.int64), None, "Truth id (stars first, then galaxies)")
    col("x", x, "pix", "Local 0-based x of the rendered light's centroid")
    col("y", y, "pix", "Local 0-based y of the rendered light's centroid")
    col("x_parent", x + cfg.xy0[0], "pix", "Parent-frame x (x + xy0[0])")
    col("y_parent", y + cfg.xy0[1], "pix", "Parent-frame y (y + xy0[1])")
    col("ra", np.mod(ra, 360.0), "deg", "ICRS right ascension from true_wcs at (x, y)")
    col("dec", dec, "deg", "ICRS declination from true_wcs at (x, y)")
    col("mag", mag, "mag", f"Magnitude in the exposure band {cfg.filter_name} (instrumental system)")
    col("flux_adu", flux, "adu", "Total flux in the exposure: 10**(-0.4 (mag - zero_point_mag))")
    col(f"{b0}_mag", m0, "mag", f"True {b0} magnitude")
    col(f"{b1}_mag", m1, "mag", f"True {b1} magnitude")
    col("colour", colour, "mag", f"{b0}_mag - {b1}_mag")
    col("is_galaxy", is_gal, None, "Extended (Sersic) source")
    col("is_saturated", is_sat, None, "Noiseless peak pixel plus sky reaches saturation_adu")
    col("peak_adu", peak, "adu", "Brightest pixel of the object alone, above sky, before clipping")
    col("fwhm_pix", cfg.fwhm_at(x, y), "pix", "True PSF FWHM at (x, y), before pixel integration")
    col("half_light_radius_pix", hlr, "pix", "Semi-major half-light radius before the PSF (0 for stars)")
    return t


# Re-exported for ``from calibration.testing.simulate import ...``.
from .refcat import make_reference_catalog, write_reference_catalog  # noqa: E402

__all__ += ["make_reference_catalog", "write_reference_catalog", "write_fits", "make_header"]
