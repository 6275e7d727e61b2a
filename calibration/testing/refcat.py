"""Reference catalogues derived from a simulation's truth.

The relation between the exposure and the catalogue (exact, before noise):

``ref_<b>_mag = <b>_mag - (c0 + c1 C + c2 C**2)`` for every requested band ``b``,
with ``<b>_mag`` the truth magnitude, ``C = <colour_bands[0]>_mag -
<colour_bands[1]>_mag`` the true colour and ``colour_term = (c0, c1, c2)``.
Hence, for the exposure's band ``f`` (``filter_name``),

``zero_point_mag - 2.5 log10(flux_adu) = mag = ref_<f>_mag + c0 + c1 C + c2 C**2``

and the catalogue's colour ``ref_<b0>_mag - ref_<b1>_mag`` equals ``C``. Each
``ref_<b>_mag`` then gets independent Gaussian noise of ``mag_err`` (the
``<b>_magErr`` column). With the default ``colour_term = (0, 0, 0)`` the
catalogue magnitudes are the exposure's magnitudes plus noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.table import Table
from astropy.time import Time

if TYPE_CHECKING:
    from .simulate import SimulatedExposure

__all__ = ["make_reference_catalog", "write_reference_catalog"]

_STREAM_REFCAT = 100


def make_reference_catalog(
    sim: "SimulatedExposure",
    *,
    bands: tuple[str, ...] | None = None,
    mag_err: float = 0.01,
    seed: int | None = None,
    margin_deg: float = 0.02,
    extra_stars: int = 0,
    colour_term: tuple[float, float, float] = (0.0, 0.0, 0.0),
    missing_fraction: float = 0.0,
    mag_limit: float | None = None,
    position_err_mas: float = 0.0,
    proper_motion: bool = False,
    pm_sigma_mas_per_yr: float = 10.0,
    epoch: float = 2016.0,
) -> Table:
    """A reference catalogue of the simulation's stars (never its galaxies).

    Parameters
    ----------
    sim : SimulatedExposure
        The simulation whose truth the catalogue is drawn from.
    bands : tuple of str, optional
        Bands to list; each must be one of ``sim.config.colour_bands`` (the
        default, both).
    mag_err : float
        Gaussian magnitude noise (mag), also the ``<band>_magErr`` column.
    seed : int, optional
        Seed of the catalogue's own noise and extra stars (combined with the
        simulation seed); default 0.
    margin_deg : float
        Stars are added beyond the image edges out to this distance (deg),
        at the density and magnitude distribution of the image's stars; they
        are not in the image (``truth_id = -1``).
    extra_stars : int
        Catalogue-only stars scattered over the image area that are *not* in
        the image (spurious or variable entries; ``truth_id = -1``).
    colour_term : (c0, c1, c2)
        See the module docstring for the exact relation.
    missing_fraction : float
        Fraction (0..1) of the image's stars left out at random.
    mag_limit : float, optional
        Drop entries fainter than this in the exposure's band (or the last
        listed band when the exposure's band is not listed).
    position_err_mas : float
        Gaussian scatter per axis of the positions (mas); adds ``ra_err`` and
        ``dec_err`` columns (mas) when > 0.
    proper_motion : bool
        Give each star ``pmra`` (mu_alpha cos delta) and ``pmdec`` (mas/yr,
        Gaussian with ``pm_sigma_mas_per_yr``) and list positions at ``epoch``,
        such that propagating linearly to the exposure's DATE-OBS gives the
        truth position. Adds ``pmra``, ``pmdec`` and ``epoch`` columns.
    epoch : float
        Julian-year epoch of the positions when ``proper_motion`` is set.

    Returns
    -------
    astropy.table.Table
        Columns ``id`` (1..n), ``truth_id`` (truth id or -1), ``ra``, ``dec``
        (deg, ICRS), ``<band>_mag``, ``<band>_magErr`` and the optional ones
        above; sorted by ``dec``. ``meta`` records the parameters.
    """
    cfg = sim.config
    b0, b1 = cfg.colour_bands
    bands = tuple(cfg.colour_bands if bands is None else bands)
    unknown = [b for b in bands if b not in cfg.colour_bands]
    if unknown or not bands:
        raise ValueError(f"bands {bands} must be a non-empty subset of the simulation's {cfg.colour_bands}")
    if not 0.0 <= missing_fraction <= 1.0:
        raise ValueError(f"missing_fraction must be within 0..1, got {missing_fraction}")
    if mag_err < 0 or margin_deg < 0 or extra_stars < 0 or position_err_mas < 0:
        raise ValueError("mag_err, margin_deg, extra_stars and position_err_mas must be >= 0")
    rng = np.random.default_rng([int(cfg.seed), _STREAM_REFCAT, int(seed or 0)])

    truth = sim.truth[~np.asarray(sim.truth["is_galaxy"])]
    keep = rng.uniform(0.0, 1.0, len(truth)) >= missing_fraction
    truth = truth[keep]
    ids = [np.asarray(truth["id"], np.int64)]
    xs, ys = [np.asarray(truth["x"])], [np.asarray(truth["y"])]
    mags, cols = [np.asarray(truth["mag"])], [np.asarray(truth["colour"])]

    # Stars outside the image (margin) and catalogue-only stars inside it.
    ny, nx = cfg.shape
    density = cfg.n_stars / float(nx * ny)
    m_pix = margin_deg * 3600.0 / cfg.pixel_scale_arcsec
    lo_x, hi_x, lo_y, hi_y = -0.5 - m_pix, nx - 0.5 + m_pix, -0.5 - m_pix, ny - 0.5 + m_pix
    n_ext = int(round(density * (hi_x - lo_x) * (hi_y - lo_y)))
    ex = rng.uniform(lo_x, hi_x, n_ext)
    ey = rng.uniform(lo_y, hi_y, n_ext)
    outside = (ex < -0.5) | (ex > nx - 0.5) | (ey < -0.5) | (ey > ny - 0.5)
    ex, ey = ex[outside], ey[outside]
    ix = rng.uniform(-0.5, nx - 0.5, extra_stars)
    iy = rng.uniform(-0.5, ny - 0.5, extra_stars)
    from .simulate import _power_law_mags  # shared number-count law

    n_new = len(ex) + extra_stars
    ids.append(np.full(n_new, -1, np.int64))
    xs.append(np.concatenate([ex, ix]))
    ys.append(np.concatenate([ey, iy]))
    mags.append(_power_law_mags(rng, n_new, *cfg.mag_range, cfg.count_slope_dex_per_mag))
    cols.append(rng.uniform(*cfg.colour_range_mag, n_new))

    truth_id = np.concatenate(ids)
    x, y = np.concatenate(xs), np.concatenate(ys)
    mag, colour = np.concatenate(mags), np.concatenate(cols)
    ra, dec = sim.true_wcs.all_pix2world(x, y, 0)
    ra = np.mod(ra, 360.0)
    band_mag = {b1: mag, b0: mag + colour} if cfg.filter_name == b1 else {b0: mag, b1: mag - colour}

    c0, c1, c2 = (float(c) for c in colour_term)
    shift = c0 + c1 * colour + c2 * colour**2
    out = Table()
    out.meta.update({
        "FILTER": cfg.filter_name, "CT_C0": c0, "CT_C1": c1, "CT_C2": c2, "MAGERR": float(mag_err),
        "COLOUR": f"{b0}-{b1}", "SIMSEED": int(cfg.seed),
        "RELATION": f"mag = ref_{cfg.filter_name}_mag + c0 + c1 C + c2 C^2, C = {b0}_mag - {b1}_mag",
    })
    n = len(x)
    if position_err_mas > 0:
        cosd = np.cos(np.radians(dec))
        ra = np.mod(ra + rng.normal(0.0, position_err_mas, n) / 3.6e6 / cosd, 360.0)
        dec = dec + rng.normal(0.0, position_err_mas, n) / 3.6e6
    if proper_motion:
        pmra = rng.normal(0.0, pm_sigma_mas_per_yr, n)
        pmdec = rng.normal(0.0, pm_sigma_mas_per_yr, n)
        dt_yr = float(Time(cfg.date_obs, format="isot", scale="utc").jyear) - float(epoch)
        dec_ep = dec - pmdec * dt_yr / 3.6e6
        ra = np.mod(ra - pmra * dt_yr / 3.6e6 / np.cos(np.radians(dec)), 360.0)
        dec = dec_ep
        out.meta["EPOCH"] = float(epoch)

    def col(name: str, data: np.ndarray, unit: str | None, description: str) -> None:
        out[name] = data
        out[name].unit = unit
        out[name].description = description

    order = np.argsort(dec, kind="stable")
    col("id", np.arange(1, n + 1, dtype=np.int64), None, "Reference id")
    col("truth_id", truth_id[order], None, "Simulation truth id, -1 if the star is not in the image")
    col("ra", ra[order], "deg", "ICRS right ascension at the catalogue epoch")
    col("dec", dec[order], "deg", "ICRS declination at the catalogue epoch")
    if position_err_mas > 0:
        col("ra_err", np.full(n, position_err_mas), "mas", "Position error along RA (mu_alpha cos delta)")
        col("dec_err", np.full(n, position_err_mas), "mas", "Position error along Dec")
    for b in bands:
        noisy = band_mag[b] - shift + rng.normal(0.0, mag_err, n)
        col(f"{b}_mag", noisy[order], "mag", f"Reference {b} magnitude")
        col(f"{b}_magErr", np.full(n, float(mag_err)), "mag", f"Error of {b}_mag")
    if proper_motion:
        col("pmra", pmra[order], "mas / yr", "Proper motion mu_alpha cos delta")
        col("pmdec", pmdec[order], "mas / yr", "Proper motion mu_delta")
        col("epoch", np.full(n, float(epoch)), "yr", "Julian-year epoch of ra, dec")
    if mag_limit is not None:
        band = cfg.filter_name if cfg.filter_name in bands else bands[-1]
        out = out[out[f"{band}_mag"] <= mag_limit]
        out["id"] = np.arange(1, len(out) + 1, dtype=np.int64)
    return out


def write_reference_catalog(
    table: Table, path: str | os.PathLike[str], *, overwrite: bool = True
) -> Path:
    """Write a reference catalogue as FITS (``.fits``/``.fit``/``.fits.gz``), CSV or Parquet.

    CSV files carry no units or metadata; FITS and ECSV keep both; Parquet is
    written with pyarrow (no pandas needed) and keeps units and descriptions as
    field metadata and ``meta`` as schema metadata, all as strings.
    """
    from ..tables import write_table

    return write_table(table, path, overwrite=overwrite)
