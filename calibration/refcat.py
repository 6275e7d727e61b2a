"""Reference catalogues: load one for a footprint and epoch, ingest a table as HATS.

A catalogue location is one of:

* a FITS, CSV, ECSV or Parquet table (read whole, then cut: fine for the
  small catalogues people upload);
* a HATS catalogue directory, or a HATS URL (``https://``, ``s3://``...):
  only the HEALPix partitions that overlap the footprint are read
  (:mod:`calibration.refcat_hats`), so a public all-sky Gaia DR3 catalogue
  can be pointed at directly.

Whatever the column convention (:mod:`calibration.refcat_columns`: simple
``ra``/``dec``/``<band>_mag``, LSST ``coord_ra``/``<band>_flux`` in nJy, Gaia
``phot_g_mean_mag``..., or an explicit map), the loaded table has canonical
columns ``id``, ``ra``, ``dec`` (deg), ``<band>_mag``, ``<band>_magErr`` and,
when known, ``pmra``, ``pmdec`` (mas/yr) and ``epoch_mjd``.

Astrometric and photometric catalogues are loaded by separate calls (as in
LSST's CalibrateTask; they may be the same location): opened HATS catalogues
and partitions read are cached, so the second call reads nothing again.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from astropy.table import Table

from .errors import ReferenceCatalogError
from .refcat_columns import (
    ColumnMap,
    canonical_column_map,
    column_map_from_json,
    detect_column_map,
    normalise_table,
    parse_epoch_mjd,
)
from .tables import read_table

__all__ = [
    "ImageFootprint",
    "ReferenceCatalog",
    "SkyFootprint",
    "cut_to_footprint",
    "ingest_reference_catalog",
    "load_reference_catalog",
    "propagate_proper_motion",
]

STAGE = "refcat"
_DAYS_PER_JYEAR = 365.25
_MAS_PER_RAD = 180.0 * 3600.0e3 / math.pi
# Fastest known proper motion (Barnard's star, 10.4 arcsec/yr), rounded up:
# the cone read from a HATS catalogue is widened by this times the epoch
# difference so that a star moving into the footprint is not left unread.
_MAX_PM_ARCSEC_PER_YR = 10.5
_MJD_J2000 = 51544.5


@dataclasses.dataclass
class ReferenceCatalog:
    """A loaded reference catalogue.

    Attributes
    ----------
    table : astropy.table.Table
        Columns ``id``, ``ra``, ``dec`` (deg) and ``<band>_mag``, ``<band>_magErr``;
        ``pmra``, ``pmdec`` (mas/yr) and ``epoch_mjd`` when known.
    bands : tuple of str
        Bands that have magnitudes.
    name : str
        Where it came from (for metadata).
    epoch_mjd : float or None
        Epoch of the positions (MJD) after loading: the requested epoch when
        proper motions were applied, else the catalogue's own when it has one.
    load_info : dict
        How it was loaded: ``kind`` (table/hats), ``convention``,
        ``partitions_read``/``partitions_total`` (HATS), ``rows_read``,
        ``rows_kept``, ``proper_motion`` (applied/none/not requested),
        ``load_s``.
    """

    table: Table
    bands: tuple[str, ...]
    name: str
    epoch_mjd: float | None = None
    load_info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def mag(self, band: str) -> tuple[np.ndarray, np.ndarray]:
        """Magnitude and error arrays of ``band`` (NaN where absent)."""
        if band not in self.bands:
            raise ReferenceCatalogError(
                f"reference catalogue {self.name} has no band {band!r}; it has {', '.join(self.bands) or 'none'}",
                stage=STAGE,
                band=band,
            )
        mag = np.asarray(self.table[f"{band}_mag"], float)
        err_col = f"{band}_magErr"
        err = np.asarray(self.table[err_col], float) if err_col in self.table.colnames else np.full(mag.shape, 0.02)
        return mag, err


# ---------------------------------------------------------------------------
# footprints


class Footprint(Protocol):
    """What the loader needs of a footprint: an enclosing cone and an exact test."""

    def cone(self) -> "SkyFootprint": ...

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class SkyFootprint:
    """A circle on the sky.

    Attributes
    ----------
    ra_deg, dec_deg : float
        Centre (deg, ICRS).
    radius_deg : float
        Radius (deg), margin included.
    """

    ra_deg: float
    dec_deg: float
    radius_deg: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ra_deg) and -90.0 <= self.dec_deg <= 90.0 and 0.0 < self.radius_deg <= 180.0):
            raise ReferenceCatalogError(
                f"bad footprint: centre ({self.ra_deg}, {self.dec_deg}) deg, radius {self.radius_deg} deg",
                stage=STAGE, ra_deg=self.ra_deg, dec_deg=self.dec_deg, radius_deg=self.radius_deg)

    def cone(self) -> "SkyFootprint":
        """Itself: a circle is its own enclosing cone."""
        return self

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """True where a position is within the radius (great-circle distance)."""
        return _separation_deg(ra_deg, dec_deg, self.ra_deg, self.dec_deg) <= self.radius_deg

    def widened(self, pad_deg: float) -> "SkyFootprint":
        """The same circle with ``pad_deg`` added to the radius (capped at 180 deg)."""
        return SkyFootprint(self.ra_deg, self.dec_deg, min(180.0, self.radius_deg + pad_deg))

    @classmethod
    def from_wcs(cls, wcs, shape: tuple[int, int], *, margin_pix: float = 0.0) -> "SkyFootprint":
        """The smallest circle about the image centre enclosing the image plus a margin.

        The boundary of the enlarged pixel rectangle is sampled (16 points an
        edge, so SIP distortion bulging an edge is caught) and the largest
        distance from the central pixel taken.
        """
        ny, nx = shape
        x0, x1 = -0.5 - margin_pix, nx - 0.5 + margin_pix
        y0, y1 = -0.5 - margin_pix, ny - 0.5 + margin_pix
        t = np.linspace(0.0, 1.0, 17)
        bx = np.concatenate([x0 + (x1 - x0) * t, np.full(17, x1), x1 - (x1 - x0) * t, np.full(17, x0)])
        by = np.concatenate([np.full(17, y0), y0 + (y1 - y0) * t, np.full(17, y1), y1 - (y1 - y0) * t])
        ra_c, dec_c = wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
        ra_b, dec_b = wcs.all_pix2world(bx, by, 0)
        radius = float(np.max(_separation_deg(ra_b, dec_b, float(ra_c[0]), float(dec_c[0]))))
        return cls(float(ra_c[0]) % 360.0, float(dec_c[0]), min(180.0, radius * (1.0 + 1e-9) + 1e-9))


@dataclasses.dataclass(frozen=True)
class ImageFootprint:
    """An image's pixel rectangle through its WCS, plus a margin.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the image (0-based pixels).
    shape : (ny, nx)
        Image shape (pixels).
    margin_pix : float
        Margin around the image (pixels).
    """

    wcs: Any
    shape: tuple[int, int]
    margin_pix: float = 0.0

    def cone(self) -> SkyFootprint:
        """Enclosing circle (see :meth:`SkyFootprint.from_wcs`)."""
        return SkyFootprint.from_wcs(self.wcs, self.shape, margin_pix=self.margin_pix)

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """True where a position falls on the image or its margin.

        Positions outside the enclosing circle are rejected before projecting:
        a far-side point can land on the image through a TAN projection.
        """
        ra = np.asarray(ra_deg, float)
        dec = np.asarray(dec_deg, float)
        keep = self.cone().contains(ra, dec)
        if keep.any():
            keep[keep] = _on_image(self.wcs, self.shape, ra[keep], dec[keep], self.margin_pix)
        return keep


def _as_footprint(footprint: Any) -> Footprint | None:
    if footprint is None or (hasattr(footprint, "cone") and hasattr(footprint, "contains")):
        return footprint
    if isinstance(footprint, tuple) and len(footprint) == 3:
        wcs, shape, margin_pix = footprint
        return ImageFootprint(wcs, tuple(shape), float(margin_pix))
    raise ReferenceCatalogError(
        f"footprint must be a SkyFootprint, an ImageFootprint or (wcs, shape, margin_pix), got "
        f"{type(footprint).__name__}", stage=STAGE)


def _separation_deg(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float) -> np.ndarray:
    """Great-circle distance (deg) by the haversine formula (exact at small angles)."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    h = np.sin((dec - dec0) / 2.0) ** 2 + np.cos(dec) * math.cos(dec0) * np.sin((ra - ra0) / 2.0) ** 2
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _on_image(wcs, shape, ra, dec, margin_pix: float) -> np.ndarray:
    ny, nx = shape
    x, y = wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0, quiet=True)
    keep = (x > -margin_pix) & (x < nx - 1 + margin_pix) & (y > -margin_pix) & (y < ny - 1 + margin_pix)
    return keep & np.isfinite(x) & np.isfinite(y)


# ---------------------------------------------------------------------------
# proper motion


def propagate_proper_motion(ra_deg: np.ndarray, dec_deg: np.ndarray, pmra_masyr: np.ndarray,
                            pmdec_masyr: np.ndarray, dt_yr: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Move positions along great circles by their proper motion.

    Each star moves from its position ``p`` along the great circle whose
    initial direction is ``pmra * east + pmdec * north`` by the angle
    ``|pm| * dt``: ``p' = p cos(theta) + u sin(theta)``. ``pmra`` is
    ``mu_alpha* = mu_alpha cos(dec)`` (Gaia's convention), so the ``cos(dec)``
    is already in it and the result is exact at any declination, including
    across RA = 0/360 and over a pole. Parallax and radial velocity are
    ignored (sub-mas over decades for all but the nearest stars, as in LSST's
    reference loader). A NaN proper motion (Gaia two-parameter sources)
    leaves the position where it is.

    Parameters
    ----------
    ra_deg, dec_deg : array_like, shape (n,)
        Positions at the catalogue epoch (deg).
    pmra_masyr, pmdec_masyr : array_like, shape (n,)
        Proper motion (mas/yr).
    dt_yr : float or array_like, shape (n,)
        Target epoch minus catalogue epoch (Julian years).

    Returns
    -------
    ra_deg, dec_deg : numpy.ndarray, shape (n,)
        Positions at the target epoch (deg), RA in [0, 360).
    """
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    mu_e = np.nan_to_num(np.asarray(pmra_masyr, float)) / _MAS_PER_RAD
    mu_n = np.nan_to_num(np.asarray(pmdec_masyr, float)) / _MAS_PER_RAD
    dt = np.asarray(dt_yr, float)
    sa, ca, sd, cd = np.sin(ra), np.cos(ra), np.sin(dec), np.cos(dec)
    p = np.stack([cd * ca, cd * sa, sd], axis=-1)
    east = np.stack([-sa, ca, np.zeros_like(sa)], axis=-1)
    north = np.stack([-sd * ca, -sd * sa, cd], axis=-1)
    mu = np.hypot(mu_e, mu_n)
    theta = mu * dt
    with np.errstate(invalid="ignore", divide="ignore"):
        direction = (mu_e[..., None] * east + mu_n[..., None] * north) / mu[..., None]
    direction = np.where(mu[..., None] > 0, direction, 0.0)
    q = p * np.cos(theta)[..., None] + direction * np.sin(theta)[..., None]
    new_ra = np.mod(np.degrees(np.arctan2(q[..., 1], q[..., 0])), 360.0)
    new_dec = np.degrees(np.arctan2(q[..., 2], np.hypot(q[..., 0], q[..., 1])))
    return new_ra, new_dec


# ---------------------------------------------------------------------------
# loading


def load_reference_catalog(
    location: str | os.PathLike[str],
    *,
    footprint: Any = None,
    epoch_mjd: float | None = None,
    column_map: ColumnMap | dict[str, Any] | None = None,
) -> ReferenceCatalog:
    """Load a reference catalogue, optionally for one footprint and epoch.

    Parameters
    ----------
    location : path or str
        A FITS/CSV/ECSV/Parquet table, a HATS catalogue directory, or a HATS
        URL (read lazily through fsspec).
    footprint : SkyFootprint, ImageFootprint or (wcs, shape, margin_pix), optional
        Keep only the objects inside it (after proper motion); from a HATS
        catalogue only the partitions overlapping it are read. None: the
        whole catalogue (refused for a URL: an all-sky catalogue would be
        downloaded).
    epoch_mjd : float, optional
        Epoch (MJD) to move positions to with the catalogue's proper motions.
        Ignored for a catalogue without proper motions.
    column_map : ColumnMap or dict, optional
        Explicit column names; default: recognise the convention.

    Returns
    -------
    ReferenceCatalog
        Canonical columns; ``load_info`` records partitions and rows read.

    Raises
    ------
    ReferenceCatalogError
        Missing path, unreadable table or URL, columns matching no convention
        (or the given map), proper motions without an epoch, or no object in
        the footprint (figures: footprint centre and radius, catalogue coverage).
    """
    t0 = time.perf_counter()
    fp = _as_footprint(footprint)
    cmap = column_map_from_json(column_map) if isinstance(column_map, dict) else column_map
    loc = str(location)
    from .refcat_hats import is_hats_location, is_remote

    if not is_remote(loc) and not Path(loc).exists():
        raise ReferenceCatalogError(f"reference catalogue {loc} does not exist", stage=STAGE, location=loc)
    if is_hats_location(loc):
        table, info, name, cat_epoch, coverage = _load_hats(loc, fp, epoch_mjd, cmap)
    else:
        table, info, name, coverage = _load_table(Path(loc), cmap)
        cat_epoch = None
    table, pm_state, epoch_out = _apply_epoch(table, epoch_mjd, cat_epoch, name)
    info["proper_motion"] = pm_state
    if fp is not None:
        table = table[fp.contains(np.asarray(table["ra"], float), np.asarray(table["dec"], float))]
        if len(table) == 0:
            cone = fp.cone()
            raise ReferenceCatalogError(
                f"reference catalogue {name} has no object within the footprint (centre "
                f"{cone.ra_deg:.5f}, {cone.dec_deg:+.5f} deg, radius {cone.radius_deg:.4f} deg)",
                stage=STAGE, footprint_ra_deg=cone.ra_deg, footprint_dec_deg=cone.dec_deg,
                footprint_radius_deg=cone.radius_deg, rows_read=info.get("rows_read"),
                **coverage(cone.ra_deg, cone.dec_deg))
    bands = tuple(c[: -len("_mag")] for c in table.colnames if c.endswith("_mag") and len(c) > len("_mag"))
    info.update(rows_kept=len(table), load_s=time.perf_counter() - t0)
    return ReferenceCatalog(table=table, bands=bands, name=name, epoch_mjd=epoch_out, load_info=info)


Coverage = Callable[[float, float], dict[str, Any]]
"""Figures on where a catalogue lies relative to a sky position (for errors)."""


#: Margin (pix) around the image when loading for an exposure: the header WCS may be
#: 250 pix off, 1 deg rotated (~50 pix at a 4k corner) and 2% off in scale (~40 pix).
EXPOSURE_MARGIN_PIX = 400.0


def load_for_exposure(location: str | os.PathLike[str], exposure, *,
                      margin_pix: float = EXPOSURE_MARGIN_PIX) -> ReferenceCatalog:
    """The part of a catalogue an exposure can match, at the exposure's epoch.

    Uses the header WCS with a margin wide enough for the astrometric matcher's
    envelope; without a WCS the whole catalogue is read (a URL then fails with
    a clear error). Proper motions are applied to ``exposure.info.mjd_obs``.
    """
    footprint = None
    if exposure.wcs is not None:
        footprint = ImageFootprint(exposure.wcs, exposure.shape, margin_pix=margin_pix)
    return load_reference_catalog(location, footprint=footprint, epoch_mjd=exposure.info.mjd_obs)


def _load_table(path: Path, cmap: ColumnMap | None) -> tuple[Table, dict[str, Any], str, Coverage]:
    try:
        raw = read_table(path)
    except ValueError as exc:
        raise ReferenceCatalogError(f"reference catalogue {path.name}: {exc}", stage=STAGE,
                                    location=str(path)) from exc
    except Exception as exc:  # astropy and pyarrow raise many types for a corrupt table
        raise ReferenceCatalogError(f"cannot read reference catalogue {path.name}: {exc}", stage=STAGE,
                                    location=str(path)) from exc
    cmap = cmap or detect_column_map(raw.colnames)
    table = normalise_table(raw, cmap, name=path.name)
    info = {"kind": "table", "convention": cmap.convention, "rows_read": len(raw)}
    ra, dec = np.asarray(table["ra"], float), np.asarray(table["dec"], float)

    def coverage(ra0: float, dec0: float) -> dict[str, Any]:
        if ra.size == 0:
            return {"catalogue_rows": 0}
        return {"catalogue_rows": int(ra.size),
                "catalogue_dec_range_deg": [float(dec.min()), float(dec.max())],
                "nearest_object_deg": float(_separation_deg(ra, dec, ra0, dec0).min())}

    return table, info, path.name, coverage


def _load_hats(loc: str, fp: Footprint | None, epoch_mjd: float | None, cmap: ColumnMap | None
               ) -> tuple[Table, dict[str, Any], str, float | None, Coverage]:
    from .refcat_columns import check_columns
    from .refcat_hats import coverage_figures, is_remote, open_hats_catalog, read_hats_cone

    cat = open_hats_catalog(loc)
    name = cat.catalog.catalog_name or Path(loc.rstrip("/")).name
    if cmap is None:
        cmap = canonical_column_map(cat.columns) if cat.canonical else detect_column_map(cat.columns)
    check_columns(cat.columns, cmap, name=name)
    if fp is None and is_remote(loc):
        raise ReferenceCatalogError(
            f"a footprint is needed to read the remote HATS catalogue {loc} ({cat.n_partitions} partitions, "
            f"{cat.total_rows or '?'} rows): reading it whole would download all of it",
            stage=STAGE, location=loc, partitions_total=cat.n_partitions)
    cone = None
    if fp is not None:
        c = fp.cone()
        # Stars that move into the footprint by the target epoch must be read.
        pad = 0.0
        if epoch_mjd is not None and cmap.pmra:
            ref_epoch = cat.epoch_mjd if cat.epoch_mjd is not None else _MJD_J2000
            dt_yr = abs(epoch_mjd - ref_epoch) / _DAYS_PER_JYEAR + (0.0 if cat.epoch_mjd is not None else 25.0)
            pad = _MAX_PM_ARCSEC_PER_YR * dt_yr / 3600.0
        c = c.widened(pad)
        cone = (c.ra_deg, c.dec_deg, c.radius_deg)
    raw, stats = read_hats_cone(cat, cmap.source_columns(), cone=cone)
    info: dict[str, Any] = {"kind": "hats", "convention": cmap.convention, **stats}
    if stats["partitions_read"] == 0 and fp is not None:
        c = fp.cone()
        raise ReferenceCatalogError(
            f"HATS catalogue {name} does not overlap the footprint (centre {c.ra_deg:.5f}, {c.dec_deg:+.5f} deg, "
            f"radius {c.radius_deg:.4f} deg): none of its {cat.n_partitions} partitions does",
            stage=STAGE, footprint_ra_deg=c.ra_deg, footprint_dec_deg=c.dec_deg, footprint_radius_deg=c.radius_deg,
            **coverage_figures(cat, c.ra_deg, c.dec_deg))
    table = normalise_table(raw, cmap, name=name, epoch_mjd=cat.epoch_mjd, keep_other_columns=False)
    return table, info, name, cat.epoch_mjd, lambda ra0, dec0: coverage_figures(cat, ra0, dec0)


def _apply_epoch(table: Table, epoch_mjd: float | None, cat_epoch: float | None, name: str
                 ) -> tuple[Table, str, float | None]:
    """Propagate positions to ``epoch_mjd``; returns the table, what was done
    and the epoch of the positions now."""
    has_pm = "pmra" in table.colnames and "pmdec" in table.colnames
    epochs = np.asarray(table["epoch_mjd"], float) if "epoch_mjd" in table.colnames else None
    own_epoch = cat_epoch
    if epochs is not None and epochs.size and np.isfinite(epochs).any():
        own_epoch = float(np.nanmedian(epochs))
    if epoch_mjd is None:
        return table, "not requested", own_epoch
    if not has_pm:
        return table, "none", own_epoch
    if epochs is None or not np.isfinite(epochs).all():
        raise ReferenceCatalogError(
            f"reference catalogue {name} has proper motions but no epoch for (some of) its positions: re-ingest "
            "it with --epoch or map an epoch column", stage=STAGE, requested_epoch_mjd=float(epoch_mjd))
    dt_yr = (float(epoch_mjd) - epochs) / _DAYS_PER_JYEAR
    # Whole columns are replaced, never written into: the table may share
    # column data with the source table it was normalised from.
    table["ra"], table["dec"] = propagate_proper_motion(table["ra"], table["dec"], table["pmra"], table["pmdec"],
                                                        dt_yr)
    table["ra"].unit = table["dec"].unit = "deg"
    table["epoch_mjd"] = np.full(len(table), float(epoch_mjd))
    table["epoch_mjd"].unit = "d"
    return table, "applied", float(epoch_mjd)


def cut_to_footprint(refcat: ReferenceCatalog, wcs, shape: tuple[int, int], *, margin_pix: float) -> ReferenceCatalog:
    """Keep the reference objects that fall on the image (plus a margin) through ``wcs``."""
    keep = _on_image(wcs, shape, refcat.table["ra"], refcat.table["dec"], margin_pix)
    return dataclasses.replace(refcat, table=refcat.table[keep])


# ---------------------------------------------------------------------------
# ingest


def ingest_reference_catalog(
    table_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    column_map: ColumnMap | dict[str, Any] | None = None,
    epoch: float | str | None = None,
    config: Any = None,
    overwrite: bool = False,
) -> Path:
    """Turn a FITS, CSV, ECSV or Parquet table into the HATS catalogue ``out_dir/name``.

    The catalogue holds the canonical columns (see :mod:`calibration.refcat_columns`)
    plus the table's other 1-D columns, so it reads back with the ``simple``
    convention whatever the input's was.

    Parameters
    ----------
    table_path : path
        Input table.
    out_dir : path
        Directory the catalogue directory is created in.
    name : str
        Catalogue name (directory name).
    column_map : ColumnMap or dict, optional
        Explicit columns; default: recognise the convention.
    epoch : float or str, optional
        Epoch of the positions when the table has no epoch column: MJD,
        Julian year or ``"J2016.0"``. Stored per row and in the properties.
    config : HatsWriteConfig, optional
        Partitioning (rows per partition, orders).
    overwrite : bool
        Replace an existing catalogue of that name.

    Returns
    -------
    pathlib.Path
        The catalogue directory (readable by ``hats.read_hats`` and
        ``lsdb.open_catalog``).

    Raises
    ------
    ReferenceCatalogError
        Missing or unreadable table, columns matching no convention, an
        unreadable epoch, an existing catalogue.
    """
    from .refcat_hats import CONVENTION_PROPERTY, EPOCH_PROPERTY, SOURCE_CONVENTION_PROPERTY, write_hats_catalog

    path = Path(table_path)
    if not path.exists():
        raise ReferenceCatalogError(f"table {path} does not exist", stage=STAGE, location=str(path))
    epoch_value = parse_epoch_mjd(epoch)
    cmap = column_map_from_json(column_map) if isinstance(column_map, dict) else column_map
    try:
        raw = read_table(path)
    except Exception as exc:  # astropy and pyarrow raise many types for a corrupt table
        raise ReferenceCatalogError(f"cannot read table {path.name}: {exc}", stage=STAGE,
                                    location=str(path)) from exc
    cmap = cmap or detect_column_map(raw.colnames)
    table = normalise_table(raw, cmap, name=path.name, epoch_mjd=epoch_value)
    if len(table) == 0:
        raise ReferenceCatalogError(f"table {path.name} has no row with a finite position", stage=STAGE,
                                    rows_read=len(raw))
    table.meta.clear()  # astropy meta (FITS cards, comments) is not Parquet schema metadata
    properties = {CONVENTION_PROPERTY: "canonical", SOURCE_CONVENTION_PROPERTY: cmap.convention,
                  "calibweb_source_table": path.name}
    if "epoch_mjd" in table.colnames:
        epochs = np.asarray(table["epoch_mjd"], float)
        if np.isfinite(epochs).all() and np.ptp(epochs) == 0:
            properties[EPOCH_PROPERTY] = repr(float(epochs[0]))
    return write_hats_catalog(table, out_dir, name=name, config=config, properties=properties, overwrite=overwrite)
