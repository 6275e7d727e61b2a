"""Reference-catalogue column conventions, mapped onto one canonical table.

Every reference catalogue, whatever it was written by, is turned into the
same columns before the pipeline sees it:

``id``
    Integer id (the source's own when it has one, else 1..n).
``ra``, ``dec``
    ICRS position (deg) at the catalogue epoch (or at the exposure's epoch
    once proper motions have been applied).
``<band>_mag``, ``<band>_magErr``
    AB (or the survey's own) magnitude and its 1-sigma error (mag).
``pmra``, ``pmdec``
    Proper motion (mas/yr), ``pmra`` being ``mu_alpha* = mu_alpha cos(dec)``
    as in Gaia; present only when the source has proper motions.
``epoch_mjd``
    Epoch of ``ra``/``dec`` (MJD); present only when known.

Three source conventions are recognised by their column names
(:func:`detect_column_map`):

``simple``
    ``ra``/``dec`` (deg) with ``<band>_mag``/``<band>_magErr``: what the
    simulator writes. Optional ``pmra``/``pmdec`` (mas/yr) and ``epoch_mjd``
    or ``epoch`` (MJD, or Julian year when the values are below 10000 or the
    column unit says so).
``lsst``
    ``coord_ra``/``coord_dec`` (rad) with ``<band>_flux``/``<band>_fluxErr``
    (nJy), as LSST's ``ReferenceObjectLoader`` catalogues; optional
    ``pm_ra``/``pm_dec`` (rad/yr) and ``epoch`` (MJD). Fluxes become AB
    magnitudes: ``mag = -2.5 log10(flux_nJy) + 31.4``.
``gaia``
    Gaia archive columns: ``ra``/``dec`` (deg), ``source_id``,
    ``phot_{g,bp,rp}_mean_mag`` with errors from
    ``phot_*_mean_flux_over_error`` (plus the passband zero-point
    uncertainty, as Gaia's documentation recommends), ``pmra``/``pmdec``
    (mas/yr) and ``ref_epoch`` (Julian year). Bands are named
    ``phot_g_mean``, ``phot_bp_mean``, ``phot_rp_mean``, as LSST's Gaia
    reference catalogues name them.

Anything else needs an explicit :class:`ColumnMap` (JSON-serialisable, so the
command line takes it as ``--column-map``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
from astropy import units as u
from astropy.table import Table

from .configbase import config_from_dict, config_to_dict, doc_field
from .errors import ConfigError, ReferenceCatalogError

__all__ = [
    "AB_NJY_ZERO_POINT_MAG",
    "ColumnMap",
    "canonical_column_map",
    "GAIA_ZERO_POINT_ERR_MAG",
    "detect_column_map",
    "flux_njy_to_mag",
    "flux_njy_err_to_mag_err",
    "column_map_from_json",
    "jyear_to_mjd",
    "normalise_table",
    "parse_epoch_mjd",
]

STAGE = "refcat"

#: AB magnitude of 1 nJy: ``-2.5 log10(1e-9 Jy / 3631 Jy)`` = 31.3996, which
#: LSST rounds to 31.4 (``lsst.afw.image.PhotoCalib``'s nJy convention).
AB_NJY_ZERO_POINT_MAG = 31.4

#: Gaia (E)DR3 passband zero-point uncertainties (mag), added in quadrature to
#: the photon-noise error, as the Gaia archive documentation recommends.
GAIA_ZERO_POINT_ERR_MAG = {"phot_g_mean": 0.0027553202, "phot_bp_mean": 0.0027901700,
                           "phot_rp_mean": 0.0037793818}

_MAG_PER_LN_FLUX = 2.5 / math.log(10.0)  # d(mag) = 1.0857 d(flux)/flux
_MJD_J2000 = 51544.5  # MJD of J2000.0 (2000-01-01T12:00 TT)
_DAYS_PER_JYEAR = 365.25
# An MJD below this would be before 1886: no modern catalogue; so smaller
# epoch values are taken as Julian years (2016.0), larger ones as MJD.
_JYEAR_MJD_SPLIT = 10000.0

CANONICAL = ("id", "ra", "dec", "pmra", "pmdec", "epoch_mjd")


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Where a source table keeps each canonical reference-catalogue column.

    Every ``str`` field names a column of the source table. Photometry entries
    are lists ``[band, value column]`` or ``[band, value column, error column]``.
    """

    convention: str = doc_field("custom", "Label of the convention (simple, lsst, gaia, custom), for metadata.")
    ra: str = doc_field("ra", "Column of the right ascension (unit: coord_unit).")
    dec: str = doc_field("dec", "Column of the declination (unit: coord_unit).")
    coord_unit: Literal["deg", "rad"] = doc_field(
        "deg", "Unit of ra/dec when the column carries no unit of its own (deg or rad).")
    id: str | None = doc_field(None, "Column of an integer object id; None: number the rows 1..n.")
    mags: tuple[tuple[str, ...], ...] = doc_field(
        (), "Magnitudes: [band, magnitude column (mag), optional error column (mag)] per band.")
    mags_snr: tuple[tuple[str, ...], ...] = doc_field(
        (), "Magnitudes with a S/N column: [band, magnitude column, S/N column]; error = 1.0857/SNR (mag).")
    fluxes_njy: tuple[tuple[str, ...], ...] = doc_field(
        (), "Fluxes: [band, flux column (nJy), optional error column (nJy)]; mag = -2.5 log10(flux) + 31.4.")
    mag_err_floor_mag: tuple[tuple[str, float], ...] = doc_field(
        (), "[band, floor (mag)] added in quadrature to that band's magnitude error (calibration floor).")
    pmra: str | None = doc_field(None, "Column of mu_alpha* = mu_alpha cos(dec) (unit: pm_unit); None: no pm.")
    pmdec: str | None = doc_field(None, "Column of mu_delta (unit: pm_unit); None: no proper motion.")
    pm_unit: Literal["mas/yr", "rad/yr"] = doc_field(
        "mas/yr", "Unit of pmra/pmdec when the columns carry no unit of their own.")
    epoch: str | None = doc_field(None, "Column of the epoch of ra/dec; None: use the catalogue-level epoch.")
    epoch_unit: Literal["auto", "mjd", "jyear"] = doc_field(
        "auto", "Unit of the epoch column: mjd, jyear (Julian year), or auto (the column unit, else "
                "values < 10000 are Julian years).")

    def validate(self) -> None:
        """Cross-field checks (called by :func:`config_from_dict`)."""
        for field_name in ("mags", "mags_snr", "fluxes_njy"):
            for entry in getattr(self, field_name):
                if not 2 <= len(entry) <= 3 or not all(isinstance(s, str) and s for s in entry):
                    raise ConfigError(
                        f"{field_name}: each entry is [band, column] or [band, column, error column], got "
                        f"{list(entry)}", stage="config")
        for entry in self.mags_snr:
            if len(entry) != 3:
                raise ConfigError(f"mags_snr: each entry is [band, magnitude column, S/N column], got {list(entry)}",
                                  stage="config")
        if (self.pmra is None) != (self.pmdec is None):
            raise ConfigError("give both pmra and pmdec columns, or neither", stage="config")
        bands = self.bands
        if len(set(bands)) != len(bands):
            raise ConfigError(f"a band is listed twice: {list(bands)}", stage="config")

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names, in the order mags, mags_snr, fluxes_njy."""
        return tuple(e[0] for e in (*self.mags, *self.mags_snr, *self.fluxes_njy))

    def source_columns(self) -> tuple[str, ...]:
        """Every source column this map reads (for a column-selective Parquet read)."""
        cols = [self.ra, self.dec, self.id, self.pmra, self.pmdec, self.epoch]
        for entry in (*self.mags, *self.mags_snr, *self.fluxes_njy):
            cols.extend(entry[1:])
        return tuple(dict.fromkeys(c for c in cols if c))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what :func:`column_map_from_json` reads back)."""
        return config_to_dict(self)


def column_map_from_json(data: dict[str, Any] | None) -> ColumnMap:
    """Build a :class:`ColumnMap` from a JSON mapping; ConfigError names a bad key."""
    return config_from_dict(ColumnMap, data)


def flux_njy_to_mag(flux_njy: np.ndarray) -> np.ndarray:
    """AB magnitude of a flux (nJy); NaN where the flux is not positive."""
    flux = np.asarray(flux_njy, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, -2.5 * np.log10(flux) + AB_NJY_ZERO_POINT_MAG, np.nan)


def flux_njy_err_to_mag_err(flux_njy: np.ndarray, flux_err_njy: np.ndarray) -> np.ndarray:
    """Magnitude error (mag) of a flux and its error (both nJy), to first order."""
    flux = np.asarray(flux_njy, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, _MAG_PER_LN_FLUX * np.asarray(flux_err_njy, float) / flux, np.nan)


def jyear_to_mjd(jyear: float | np.ndarray) -> float | np.ndarray:
    """MJD of a Julian-year epoch (``J2016.0`` -> 57388.5)."""
    return _MJD_J2000 + (np.asarray(jyear, float) - 2000.0) * _DAYS_PER_JYEAR


def parse_epoch_mjd(value: float | int | str | None) -> float | None:
    """An epoch as MJD, from an MJD number, a Julian year or a ``"J2016.0"`` string.

    Numbers below 10000 are Julian years (an MJD that small predates 1886).

    Raises
    ------
    ReferenceCatalogError
        A string that is neither a number nor ``J<year>``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            if text[:1] in ("J", "j"):
                return float(jyear_to_mjd(float(text[1:])))
            number = float(text)
        except ValueError as exc:
            raise ReferenceCatalogError(
                f"epoch {value!r} is not understood: give an MJD (57388.5) or a Julian year (J2016.0)",
                stage=STAGE, epoch=value) from exc
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ReferenceCatalogError(f"epoch {value!r} is not finite", stage=STAGE, epoch=str(value))
    return float(jyear_to_mjd(number)) if number < _JYEAR_MJD_SPLIT else number


def detect_column_map(colnames: list[str] | tuple[str, ...]) -> ColumnMap:
    """The column map of a known convention, recognised from the column names.

    Gaia is tried first (its ``phot_g_mean_mag`` would otherwise read as a
    ``simple`` band called ``phot_g_mean``), then LSST, then ``simple``. A
    table that already has ``phot_*_mean_magErr`` columns is canonical (an
    ingested Gaia catalogue), not Gaia's own.

    Raises
    ------
    ReferenceCatalogError
        No convention fits; the message lists the columns found and what each
        convention expects.
    """
    names = list(colnames)
    have = set(names)
    gaia_bands = [b for b in ("g", "bp", "rp") if f"phot_{b}_mean_mag" in have]
    if {"ra", "dec"} <= have and gaia_bands and not any(f"phot_{b}_mean_magErr" in have for b in gaia_bands):
        return _gaia_map(have)
    if {"coord_ra", "coord_dec"} <= have:
        return _lsst_map(names, have)
    if {"ra", "dec"} <= have:
        return _simple_map(names, have)
    shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
    raise ReferenceCatalogError(
        "reference catalogue columns match no known convention: expected ra/dec (deg) with <band>_mag, "
        "coord_ra/coord_dec (rad) with <band>_flux (nJy), or Gaia's ra/dec/phot_g_mean_mag; give a column map "
        f"for other names. Columns found: {shown}",
        stage=STAGE, columns_found=names[:100],
        expected=["ra", "dec", "<band>_mag", "coord_ra", "coord_dec", "<band>_flux", "phot_g_mean_mag"],
    )


def _suffixed(names: list[str], suffix: str) -> list[str]:
    return [c[: -len(suffix)] for c in names if c.endswith(suffix) and len(c) > len(suffix)]


def _epoch_column(have: set[str], *candidates: str) -> str | None:
    return next((c for c in candidates if c in have), None)


def _simple_map(names: list[str], have: set[str]) -> ColumnMap:
    mags = tuple((b, f"{b}_mag", f"{b}_magErr") if f"{b}_magErr" in have else (b, f"{b}_mag")
                 for b in _suffixed(names, "_mag"))
    pm = {"pmra", "pmdec"} <= have
    epoch = _epoch_column(have, "epoch_mjd", "epoch")
    return ColumnMap(convention="simple", ra="ra", dec="dec", coord_unit="deg", id="id" if "id" in have else None,
                     mags=mags, pmra="pmra" if pm else None, pmdec="pmdec" if pm else None, pm_unit="mas/yr",
                     epoch=epoch, epoch_unit="mjd" if epoch == "epoch_mjd" else "auto")


def canonical_column_map(colnames: list[str] | tuple[str, ...]) -> ColumnMap:
    """The map of a table already in canonical form (an ingested catalogue),
    whatever its band names look like."""
    return dataclasses.replace(_simple_map(list(colnames), set(colnames)), convention="canonical")


def _lsst_map(names: list[str], have: set[str]) -> ColumnMap:
    fluxes = tuple((b, f"{b}_flux", f"{b}_fluxErr") if f"{b}_fluxErr" in have else (b, f"{b}_flux")
                   for b in _suffixed(names, "_flux"))
    if {"pm_ra", "pm_dec"} <= have:  # LSST's own refcats: rad/yr
        pmra, pmdec, pm_unit = "pm_ra", "pm_dec", "rad/yr"
    elif {"pmra", "pmdec"} <= have:
        pmra, pmdec, pm_unit = "pmra", "pmdec", "mas/yr"
    else:
        pmra = pmdec = None
        pm_unit = "mas/yr"
    return ColumnMap(convention="lsst", ra="coord_ra", dec="coord_dec", coord_unit="rad",
                     id="id" if "id" in have else None, fluxes_njy=fluxes, pmra=pmra, pmdec=pmdec, pm_unit=pm_unit,
                     epoch=_epoch_column(have, "epoch", "epoch_mjd"), epoch_unit="auto")


def _gaia_map(have: set[str]) -> ColumnMap:
    mags_snr, mags, floors = [], [], []
    for b in ("g", "bp", "rp"):
        band, mag, snr = f"phot_{b}_mean", f"phot_{b}_mean_mag", f"phot_{b}_mean_flux_over_error"
        if mag not in have:
            continue
        if snr in have:
            mags_snr.append((band, mag, snr))
        else:
            mags.append((band, mag))
        floors.append((band, GAIA_ZERO_POINT_ERR_MAG[band]))
    pm = {"pmra", "pmdec"} <= have
    return ColumnMap(convention="gaia", ra="ra", dec="dec", coord_unit="deg",
                     id="source_id" if "source_id" in have else ("id" if "id" in have else None),
                     mags=tuple(mags), mags_snr=tuple(mags_snr), mag_err_floor_mag=tuple(floors),
                     pmra="pmra" if pm else None, pmdec="pmdec" if pm else None, pm_unit="mas/yr",
                     epoch=_epoch_column(have, "ref_epoch", "epoch"), epoch_unit="jyear" if "ref_epoch" in have
                     else "auto")


def check_columns(colnames: list[str] | tuple[str, ...], column_map: ColumnMap, *, name: str) -> None:
    """Raise a ReferenceCatalogError naming every column the map wants but the table lacks."""
    have = set(colnames)
    missing = [c for c in column_map.source_columns() if c not in have]
    if missing:
        shown = ", ".join(list(colnames)[:30]) + (" ..." if len(colnames) > 30 else "")
        raise ReferenceCatalogError(
            f"reference catalogue {name} lacks the column(s) {', '.join(missing)} that the "
            f"{column_map.convention} column map expects; columns found: {shown}",
            stage=STAGE, missing=missing, expected=list(column_map.source_columns()),
            columns_found=list(colnames)[:100])


def normalise_table(table: Table, column_map: ColumnMap, *, name: str = "reference catalogue",
                    epoch_mjd: float | None = None, keep_other_columns: bool = True) -> Table:
    """Canonical reference table (see the module docstring) from a source table.

    Parameters
    ----------
    table : astropy.table.Table
        Source table, its columns named as ``column_map`` says.
    column_map : ColumnMap
        Where each canonical column comes from.
    name : str
        Catalogue name, for error messages.
    epoch_mjd : float, optional
        Catalogue-level epoch of the positions (MJD), used when the map names
        no epoch column; becomes the ``epoch_mjd`` column.
    keep_other_columns : bool
        Carry the source columns the map does not use along unchanged (unless
        their names clash with a canonical one).

    Returns
    -------
    astropy.table.Table
        Canonical columns, rows with a non-finite position dropped, RA wrapped
        into [0, 360).

    Raises
    ------
    ReferenceCatalogError
        A column the map names is missing.
    ConfigError
        An inconsistent map (a band twice, pmra without pmdec...).
    """
    column_map.validate()  # a map built in Python skipped config_from_dict's check
    check_columns(table.colnames, column_map, name=name)
    out = Table(meta=dict(table.meta))
    n = len(table)
    out["id"] = (np.asarray(table[column_map.id]) if column_map.id else np.arange(1, n + 1, dtype=np.int64))
    out["ra"] = np.mod(_to_unit(table[column_map.ra], column_map.coord_unit, u.deg), 360.0)
    out["dec"] = _to_unit(table[column_map.dec], column_map.coord_unit, u.deg)
    out["ra"].unit = out["dec"].unit = u.deg
    floors = {band: float(f) for band, f in column_map.mag_err_floor_mag}
    for entry in column_map.mags:
        mag = _as_float(table[entry[1]])
        _set_band(out, entry[0], mag, _as_float(table[entry[2]]) if len(entry) == 3 else None, floors)
    for band, mag_col, snr_col in column_map.mags_snr:
        with np.errstate(divide="ignore", invalid="ignore"):
            err = _MAG_PER_LN_FLUX / _as_float(table[snr_col])
        _set_band(out, band, _as_float(table[mag_col]), err, floors)
    for entry in column_map.fluxes_njy:
        flux = _to_unit(table[entry[1]], "nJy", u.nJy)
        err = (flux_njy_err_to_mag_err(flux, _to_unit(table[entry[2]], "nJy", u.nJy)) if len(entry) == 3
               else None)
        _set_band(out, entry[0], flux_njy_to_mag(flux), err, floors)
    if column_map.pmra:
        pm_unit = u.mas / u.yr if column_map.pm_unit == "mas/yr" else u.rad / u.yr
        out["pmra"] = _to_unit(table[column_map.pmra], pm_unit, u.mas / u.yr)
        out["pmdec"] = _to_unit(table[column_map.pmdec], pm_unit, u.mas / u.yr)
        out["pmra"].unit = out["pmdec"].unit = u.mas / u.yr
    if column_map.epoch:
        out["epoch_mjd"] = _epoch_to_mjd(table[column_map.epoch], column_map.epoch_unit)
    elif epoch_mjd is not None:
        out["epoch_mjd"] = np.full(n, float(epoch_mjd))
    if "epoch_mjd" in out.colnames:
        out["epoch_mjd"].unit = u.d
    if keep_other_columns:
        used = set(column_map.source_columns())
        for col in table.colnames:
            if col not in used and col not in out.colnames:
                out[col] = table[col]
    out.meta["REFCONV"] = column_map.convention
    good = np.isfinite(np.asarray(out["ra"], float)) & np.isfinite(np.asarray(out["dec"], float))
    return out if good.all() else out[good]


def _set_band(out: Table, band: str, mag: np.ndarray, err: np.ndarray | None, floors: dict[str, float]) -> None:
    """Add ``<band>_mag`` and, when there is an error, ``<band>_magErr``: a band
    without errors gets no error column, so :meth:`ReferenceCatalog.mag` gives
    its nominal error as for any catalogue without one."""
    out[f"{band}_mag"] = mag
    out[f"{band}_mag"].unit = u.mag
    if err is None:
        return
    if band in floors:
        err = np.hypot(err, floors[band])
    out[f"{band}_magErr"] = err
    out[f"{band}_magErr"].unit = u.mag


def _as_float(column: Any) -> np.ndarray:
    """Float array of a column, masked entries as NaN."""
    data = np.ma.asarray(column)
    return np.ma.filled(data.astype(float), np.nan)


def _to_unit(column: Any, declared: str | u.UnitBase, target: u.UnitBase) -> np.ndarray:
    """Column values in ``target``: through the column's own unit when it has a
    convertible one, else through the ``declared`` unit."""
    values = _as_float(column)
    own = getattr(column, "unit", None)
    unit = own if own is not None and own.is_equivalent(target) else u.Unit(declared)
    return values if unit == target else (values * unit).to_value(target)


def _epoch_to_mjd(column: Any, epoch_unit: str) -> np.ndarray:
    values = _as_float(column)
    if epoch_unit == "auto":
        own = getattr(column, "unit", None)
        if own is not None and own.is_equivalent(u.yr):
            # A time unit: "yr" marks a Julian-year epoch, "d" an MJD.
            epoch_unit = "jyear" if own.to(u.d) > 300.0 else "mjd"
        else:
            finite = values[np.isfinite(values)]
            epoch_unit = "jyear" if finite.size and np.median(finite) < _JYEAR_MJD_SPLIT else "mjd"
    return jyear_to_mjd(values) if epoch_unit == "jyear" else values
