"""HATS reference catalogues: write one from a table, read the partitions a cone touches.

HATS (Hierarchical Adaptive Tiling Scheme, the layout LINCC's ``hats`` and
``lsdb`` use for Gaia, PS1 and ZTF) shards a catalogue into Parquet files by
HEALPix pixel, each pixel as deep as needed to hold at most N rows::

    NAME/hats.properties            catalogue properties (Java properties file)
    NAME/partition_info.csv         Norder,Npix of every partition
    NAME/dataset/_metadata          every partition's Parquet footer
    NAME/dataset/_common_metadata   the schema
    NAME/dataset/Norder=k/Dir=d/Npix=p.parquet

Writing is done here with pyarrow and hats' own helpers (spatial index,
Parquet metadata, partition info, properties) rather than ``hats-import``,
which brings dask and a cluster for what is, for a reference catalogue of a
few million rows, one in-memory sort. Reading goes through ``hats.read_hats``
(local directories and fsspec URLs alike, read lazily: properties, partition
list and schema first, then only the partitions the cone overlaps, only the
columns asked for, and inside a partition only the row groups whose
``_healpix_29`` range meets the cone).

``hats`` is imported inside the functions: it pulls in numba and mocpy, and a
pipeline run against a plain FITS catalogue should not pay for them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from .configbase import doc_field
from .errors import ConfigError, ReferenceCatalogError
from .tables import from_arrow

__all__ = [
    "CONVENTION_PROPERTY",
    "EPOCH_PROPERTY",
    "HatsCatalog",
    "HatsWriteConfig",
    "assign_partitions",
    "clear_cache",
    "is_hats_location",
    "is_remote",
    "open_hats_catalog",
    "read_hats_cone",
    "write_hats_catalog",
]

STAGE = "refcat"
SPATIAL_INDEX_COLUMN = "_healpix_29"  # hats' name for the order-29 nested pixel of each row
SPATIAL_INDEX_ORDER = 29
EPOCH_PROPERTY = "calibweb_epoch_mjd"
# "canonical" on catalogues written by the ingest: their columns are read as
# they are, never re-interpreted by name (an ingested Gaia table keeps
# Gaia's band names but not Gaia's column meanings).
CONVENTION_PROPERTY = "calibweb_convention"
SOURCE_CONVENTION_PROPERTY = "calibweb_source_convention"
# Beyond this many disjoint _healpix_29 ranges the row filter is more work
# for Arrow than the rows it would save.
_MAX_FILTER_RANGES = 256


@dataclasses.dataclass(frozen=True)
class HatsWriteConfig:
    """How a table is cut into HEALPix partitions when written as HATS."""

    max_rows_per_partition: int = doc_field(
        100_000, "Most rows in one partition; a pixel holding more is split into its four children.")
    lowest_order: int = doc_field(0, "Shallowest HEALPix order of a partition (0: 12 pixels of 58.6 deg).")
    highest_order: int = doc_field(
        10, "Deepest HEALPix order of a partition (10: 3.4 arcmin pixels); a pixel at this order may hold "
            "more than max_rows_per_partition.")
    zstd_level: int = doc_field(
        3, "zstd compression level of the Parquet files. hats' default, 15, writes a float-heavy catalogue "
           "about 12x slower for files only ~4% smaller; reading speed is the same.")

    def validate(self) -> None:
        """Cross-field checks."""
        if self.max_rows_per_partition < 1:
            raise ConfigError(f"max_rows_per_partition must be >= 1, got {self.max_rows_per_partition}",
                              stage="config")
        if not 0 <= self.lowest_order <= self.highest_order <= 19:
            raise ConfigError(f"need 0 <= lowest_order <= highest_order <= 19, got {self.lowest_order}, "
                              f"{self.highest_order}", stage="config")
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"zstd_level must be within 1..22, got {self.zstd_level}", stage="config")


@dataclasses.dataclass(frozen=True)
class HatsCatalog:
    """An opened HATS catalogue: properties and partition list, no data yet.

    Attributes
    ----------
    location : str
        Directory or URL it was opened from.
    catalog : hats.catalog.Catalog
        hats' catalogue object (partition tree, schema, properties).
    columns : tuple of str
        Column names of its schema.
    n_partitions : int
        Number of HEALPix partitions.
    total_rows : int or None
        Row count from the properties, when recorded.
    epoch_mjd : float or None
        Catalogue-level epoch of the positions (MJD) written by
        :func:`write_hats_catalog`, when known.
    canonical : bool
        Written by this package's ingest: columns already canonical.
    """

    location: str
    catalog: Any
    columns: tuple[str, ...]
    n_partitions: int
    total_rows: int | None
    epoch_mjd: float | None
    canonical: bool = False


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True for a URL (``https://``, ``s3://``...), which is read through fsspec."""
    return "://" in str(location)


def is_hats_location(location: str | os.PathLike[str]) -> bool:
    """True for a URL or a local directory holding HATS properties."""
    if is_remote(location):
        return True
    path = Path(location)
    return path.is_dir() and ((path / "hats.properties").exists() or (path / "properties").exists()
                              or (path / "collection.properties").exists())


# ---------------------------------------------------------------------------
# writing


def assign_partitions(healpix29: np.ndarray, *, max_rows: int, lowest_order: int,
                      highest_order: int) -> tuple[np.ndarray, np.ndarray]:
    """HEALPix partition (order, pixel) of each row, as deep as needed for ``max_rows``.

    Top-down: a pixel holding at most ``max_rows`` rows is a partition; a
    fuller one is split into its four children at the next order, down to
    ``highest_order``, where what is left is kept whatever its size. Empty
    pixels get no partition. The partitions never overlap (a row has exactly
    one), as HATS requires.

    Parameters
    ----------
    healpix29 : numpy.ndarray of int64, shape (n,)
        Nested HEALPix index at order 29 of each row.
    max_rows, lowest_order, highest_order : int
        See :class:`HatsWriteConfig`.

    Returns
    -------
    order, pixel : numpy.ndarray of int64, shape (n,)
        Partition order and nested pixel index (at that order) of each row.
    """
    h = np.asarray(healpix29, np.int64)
    row_order = np.full(h.size, -1, np.int64)
    row_pixel = np.zeros(h.size, np.int64)
    pending = np.arange(h.size)
    for order in range(lowest_order, highest_order + 1):
        if pending.size == 0:
            break
        pixel = h[pending] >> (2 * (SPATIAL_INDEX_ORDER - order))
        _, inverse, counts = np.unique(pixel, return_inverse=True, return_counts=True)
        final = np.ones(counts.size, bool) if order == highest_order else counts <= max_rows
        rows = final[inverse]
        row_order[pending[rows]] = order
        row_pixel[pending[rows]] = pixel[rows]
        pending = pending[~rows]
    return row_order, row_pixel


def write_hats_catalog(table: Table, out_dir: str | os.PathLike[str], *, name: str,
                       config: HatsWriteConfig | None = None, properties: dict[str, str] | None = None,
                       overwrite: bool = False) -> Path:
    """Write a canonical reference table as the HATS catalogue ``out_dir/name``.

    The catalogue is built in a hidden sibling directory and renamed into
    place at the end, so a reader never sees half of one.

    Parameters
    ----------
    table : astropy.table.Table
        Columns ``ra``, ``dec`` (deg) and any others (1-D); written in the
        order given, after a ``_healpix_29`` spatial index column.
    out_dir : path
        Parent directory (created if missing).
    name : str
        Catalogue name: directory name and ``obs_collection`` property.
    config : HatsWriteConfig, optional
        Partitioning; defaults to ``HatsWriteConfig()``.
    properties : dict, optional
        Extra ``hats.properties`` entries (strings).
    overwrite : bool
        Replace an existing catalogue of that name.

    Returns
    -------
    pathlib.Path
        The catalogue directory.

    Raises
    ------
    ReferenceCatalogError
        An empty table, a bad name, or an existing catalogue without ``overwrite``.
    """
    import pyarrow.parquet as pq
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io import file_io, paths
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.pixel_math import HealpixPixel
    from hats.pixel_math.spatial_index import compute_spatial_index

    config = config or HatsWriteConfig()
    config.validate()
    if not name or "/" in name or name.startswith("."):
        raise ReferenceCatalogError(f"catalogue name {name!r} must be a plain directory name", stage=STAGE,
                                    name=name)
    if len(table) == 0:
        raise ReferenceCatalogError(f"cannot write {name}: the table has no rows", stage=STAGE, n_rows=0)
    parent = Path(out_dir)
    final_dir = parent / name
    if final_dir.exists() and not overwrite:
        raise ReferenceCatalogError(f"{final_dir} already exists (pass overwrite to replace it)", stage=STAGE,
                                    path=str(final_dir))
    parent.mkdir(parents=True, exist_ok=True)

    ra = np.asarray(table["ra"], float)
    dec = np.asarray(table["dec"], float)
    healpix29 = compute_spatial_index(ra, dec).astype(np.int64)
    # Rows sorted by the order-29 index: every partition is then one slice,
    # and rows inside it are in the HATS order (row groups cover compact areas).
    sort = np.argsort(healpix29, kind="stable")
    healpix29 = healpix29[sort]
    order, pixel = assign_partitions(healpix29, max_rows=config.max_rows_per_partition,
                                     lowest_order=config.lowest_order, highest_order=config.highest_order)
    arrow = _to_arrow(table, sort, healpix29)
    write_kwargs = file_io.get_parquet_write_table_kwargs(arrow.schema, write_table_kwargs={
        "compression": "zstd", "compression_level": config.zstd_level})

    work = parent / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        starts = np.flatnonzero(np.r_[True, (order[1:] != order[:-1]) | (pixel[1:] != pixel[:-1])])
        ends = np.r_[starts[1:], order.size]
        pixels = []
        for start, end in zip(starts, ends):
            hp_pixel = HealpixPixel(int(order[start]), int(pixel[start]))
            target = paths.new_pixel_catalog_file(work, hp_pixel)
            pq.write_table(arrow.slice(int(start), int(end - start)), target.path, **write_kwargs)
            pixels.append(hp_pixel)
        total = write_parquet_metadata(work)
        PartitionInfo.from_healpix(pixels).write_to_file(catalog_path=work)
        info = TableProperties(
            catalog_name=name, catalog_type="object", total_rows=int(total), ra_column="ra", dec_column="dec",
            healpix_column=SPATIAL_INDEX_COLUMN, healpix_order=SPATIAL_INDEX_ORDER,
            hats_max_rows=int(config.max_rows_per_partition),
            moc_sky_fraction=float(PartitionInfo.from_healpix(pixels).calculate_fractional_coverage()),
            **TableProperties.new_provenance_dict(work, builder="calibweb refcat ingest"),
            **(properties or {}),
        )
        info.to_properties_file(work)
        _move_into_place(work, final_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    clear_cache()
    return final_dir


def _move_into_place(work: Path, final_dir: Path) -> None:
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final_dir, old)
    os.replace(work, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _to_arrow(table: Table, sort: np.ndarray, healpix29: np.ndarray):
    """pyarrow table of ``table[sort]`` with the spatial index first; units and
    descriptions as field metadata (as :mod:`calibration.tables` writes them)."""
    import pyarrow as pa

    fields = [pa.field(SPATIAL_INDEX_COLUMN, pa.int64())]
    arrays = [pa.array(healpix29)]
    for col_name in table.colnames:
        column = table[col_name]
        if col_name == SPATIAL_INDEX_COLUMN or getattr(column, "ndim", 1) != 1:
            continue  # a stale index is recomputed; vector cells have no place in a refcat
        data = column[sort]
        mask = np.ma.getmaskarray(data) if hasattr(data, "mask") else None
        values = np.ma.getdata(data)
        values = values.astype(values.dtype.newbyteorder("="), copy=False)  # FITS is big-endian; Arrow is not
        array = pa.array(values, mask=mask if mask is not None and mask.any() else None)
        meta = {}
        if getattr(column, "unit", None) is not None:
            meta["unit"] = column.unit.to_string()
        if getattr(column, "description", None):
            meta["description"] = column.description
        fields.append(pa.field(col_name, array.type, metadata=meta or None))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# ---------------------------------------------------------------------------
# reading


def _stamp(location: str) -> int | None:
    """Modification time of a local catalogue's properties, so a re-ingested
    catalogue at the same path is not served from the cache."""
    if is_remote(location):
        return None
    for fname in ("hats.properties", "properties", "collection.properties"):
        path = Path(location) / fname
        if path.exists():
            return path.stat().st_mtime_ns
    return None


def open_hats_catalog(location: str | os.PathLike[str]) -> HatsCatalog:
    """Open a HATS catalogue (or the main catalogue of a HATS collection) lazily.

    Only the properties, the partition list and the schema are read. Opened
    catalogues are cached per location (a local one until its properties file
    changes), so loading the astrometric and the photometric catalogue from
    the same place costs one open.

    Raises
    ------
    ReferenceCatalogError
        Nothing readable as HATS at ``location`` (missing directory, bad URL,
        network failure, not a catalogue of objects).
    """
    loc = str(location)
    return _open_cached(loc, _stamp(loc))


@functools.lru_cache(maxsize=8)
def _open_cached(location: str, stamp: int | None) -> HatsCatalog:
    import hats
    from hats.catalog.catalog_collection import CatalogCollection
    from hats.catalog.healpix_dataset.healpix_dataset import HealpixDataset

    where = "URL" if is_remote(location) else "directory"
    try:
        # The MOC (point_map.fits) can be hundreds of MB for an all-sky
        # catalogue; partitions alone are enough to choose what to read.
        catalog = hats.read_hats(location, read_moc=False)
    except Exception as exc:  # fsspec, aiohttp, pydantic and pyarrow raise many types
        raise ReferenceCatalogError(
            f"cannot read the HATS catalogue at {where} {location}: {type(exc).__name__}: {exc}",
            stage=STAGE, location=location) from exc
    if isinstance(catalog, CatalogCollection):
        catalog = catalog.main_catalog
    if not isinstance(catalog, HealpixDataset) or catalog.catalog_info.catalog_type not in ("object", "source"):
        raise ReferenceCatalogError(
            f"the HATS dataset at {location} is not a catalogue of objects "
            f"(type {getattr(catalog.catalog_info, 'catalog_type', '?')})", stage=STAGE, location=location)
    columns = tuple(catalog.schema.names) if catalog.schema is not None else ()
    extra = catalog.catalog_info.extra_dict()
    epoch = extra.get(EPOCH_PROPERTY)
    return HatsCatalog(location=location, catalog=catalog, columns=columns,
                       n_partitions=len(catalog.get_healpix_pixels()),
                       total_rows=catalog.catalog_info.total_rows,
                       epoch_mjd=None if epoch is None else float(epoch),
                       canonical=extra.get(CONVENTION_PROPERTY) == "canonical")


def read_hats_cone(cat: HatsCatalog, columns: tuple[str, ...], *, cone: tuple[float, float, float] | None
                   ) -> tuple[Table, dict[str, Any]]:
    """Rows of the partitions that a cone overlaps (all partitions without one).

    Parameters
    ----------
    cat : HatsCatalog
        From :func:`open_hats_catalog`.
    columns : tuple of str
        Columns to read (others are not fetched).
    cone : (ra_deg, dec_deg, radius_deg), optional
        The region wanted. Rows outside it may still be returned (whole row
        groups are read); the caller cuts exactly.

    Returns
    -------
    table : astropy.table.Table
        The rows read, ``columns`` only.
    stats : dict
        ``partitions_read`` (those the cone overlaps), ``partitions_total``
        and ``rows_read``.
    """
    import pyarrow as pa

    catalog = cat.catalog
    if cone is not None:
        ra, dec, radius = cone
        catalog = catalog.filter_by_cone(float(ra) % 360.0, float(dec), max(float(radius), 1e-6) * 3600.0)
    pixels = catalog.get_healpix_pixels()
    stats: dict[str, Any] = {"partitions_read": len(pixels), "partitions_total": cat.n_partitions}
    if not pixels:
        stats["rows_read"] = 0
        return Table({c: np.zeros(0) for c in columns}), stats
    healpix_filter = _healpix_ranges(cat, cone) if cone is not None else None
    read_cols = tuple(columns)
    pieces = [_read_partition(cat.location, _stamp(cat.location), p.order, p.pixel, read_cols, healpix_filter)
              for p in pixels]
    arrow = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
    stats["rows_read"] = arrow.num_rows
    return from_arrow(arrow), stats


def coverage_figures(cat: HatsCatalog, ra_deg: float, dec_deg: float) -> dict[str, Any]:
    """Where the catalogue is, for an error message: partition count, sky
    fraction, Dec range of partition centres and the nearest partition centre."""
    import cdshealpix.nested as chn
    from astropy import units as u

    pixels = cat.catalog.get_healpix_pixels()
    if not pixels:
        return {"catalogue_partitions": 0}
    lon, lat = [], []
    for order in sorted({p.order for p in pixels}):
        ipix = np.array([p.pixel for p in pixels if p.order == order], np.uint64)
        lo, la = chn.healpix_to_lonlat(ipix, order)
        lon.append(lo.to_value(u.deg))
        lat.append(la.to_value(u.deg))
    lon, lat = np.concatenate(lon), np.concatenate(lat)
    from .match import unit_vectors

    cosang = unit_vectors(lon, lat) @ unit_vectors([ra_deg], [dec_deg])[0]
    return {
        "catalogue_partitions": len(pixels),
        "catalogue_sky_fraction": float(cat.catalog.partition_info.calculate_fractional_coverage()),
        "catalogue_partition_dec_range_deg": [float(lat.min()), float(lat.max())],
        "nearest_partition_centre_deg": float(np.degrees(np.arccos(np.clip(cosang.max(), -1.0, 1.0)))),
    }


def clear_cache() -> None:
    """Forget opened catalogues and cached partitions (tests; after an ingest)."""
    _open_cached.cache_clear()
    _read_partition.cache_clear()


def _healpix_ranges(cat: HatsCatalog, cone: tuple[float, float, float]) -> tuple | None:
    """``(column, (lo, hi), ...)``: half-open ranges of the spatial index
    column covering the cone, for a row filter that also skips row groups by
    their statistics; None when the catalogue has no spatial index or the
    cone needs too many ranges."""
    from astropy import units as u
    from mocpy import MOC

    info = cat.catalog.catalog_info
    column = info.healpix_column or (SPATIAL_INDEX_COLUMN if SPATIAL_INDEX_COLUMN in cat.columns else None)
    index_order = info.healpix_order or SPATIAL_INDEX_ORDER
    if column is None or column not in cat.columns or index_order > SPATIAL_INDEX_ORDER:
        return None
    ra, dec, radius = cone
    # Cells about half the radius across: a few dozen ranges, a tight cover.
    depth = int(np.clip(np.floor(np.log2(58.6 / max(radius / 2.0, 1e-5))), 0, index_order))
    moc = MOC.from_cone(lon=(ra % 360.0) * u.deg, lat=dec * u.deg, radius=max(radius, 1e-6) * u.deg, max_depth=depth)
    ranges = np.asarray(moc.to_depth29_ranges, dtype=np.uint64)
    if ranges.shape[0] == 0 or ranges.shape[0] > _MAX_FILTER_RANGES:
        return None
    shift = np.uint64(2 * (SPATIAL_INDEX_ORDER - index_order))
    lo = ranges[:, 0] >> shift
    hi = ((ranges[:, 1] - np.uint64(1)) >> shift) + np.uint64(1)
    return (column,) + tuple((int(a), int(b)) for a, b in zip(lo, hi))


@functools.lru_cache(maxsize=32)
def _read_partition(location: str, stamp: int | None, order: int, pixel: int, columns: tuple[str, ...],
                    healpix_filter: tuple | None):
    """One partition's columns as an (immutable, so safely shared) pyarrow table."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from hats.io import paths
    from hats.pixel_math import HealpixPixel

    cat = open_hats_catalog(location)
    path = paths.pixel_catalog_file(cat.catalog.catalog_base_dir, HealpixPixel(order, pixel),
                                    npix_suffix=cat.catalog.catalog_info.npix_suffix)
    filters = None
    if healpix_filter is not None:
        column, *ranges = healpix_filter
        field = pc.field(column)
        filters = functools.reduce(lambda a, b: a | b, [(field >= lo) & (field < hi) for lo, hi in ranges])
    try:
        if not is_remote(location):
            return pq.read_table(str(path), columns=list(columns), filters=filters)
        try:
            # Range requests: the footer, then only the wanted columns of
            # the row groups that the filter keeps.
            return pq.read_table(path.path, filesystem=path.fs, columns=list(columns), filters=filters)
        except ValueError as exc:
            if "range" not in str(exc).lower():
                raise
            # A plain HTTP server (no Range support): fetch the whole file.
            import pyarrow as pa

            return pq.read_table(pa.BufferReader(path.read_bytes()), columns=list(columns), filters=filters)
    except Exception as exc:  # pyarrow/fsspec: missing file, network, corrupt footer
        raise ReferenceCatalogError(
            f"cannot read partition Norder={order} Npix={pixel} of {location}: {type(exc).__name__}: {exc}",
            stage=STAGE, location=location, order=order, pixel=pixel) from exc
