"""Catalogue tables on disk: FITS, CSV, ECSV and Parquet.

Parquet goes through pyarrow alone (astropy's Parquet reader needs pandas):
units and descriptions travel as each field's metadata (``unit``,
``description``), scalar ``table.meta`` entries as the schema metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.table import Table

_FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".gz": "fits", ".csv": "ascii.csv",
            ".ecsv": "ascii.ecsv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: str | os.PathLike[str]) -> str:
    """Format name from the file suffix; ValueError naming the accepted ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"unknown table format {suffix!r} for {Path(path).name}: use .fits, .csv, .ecsv or .parquet")
    return _FORMATS[suffix]


def write_table(table: Table, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write ``table`` in the format given by the suffix of ``path``."""
    out = Path(path)
    fmt = table_format(out)
    if fmt == "parquet":
        _write_parquet(table, out, overwrite=overwrite)
    else:
        table.write(out, format=fmt, overwrite=overwrite)
    return out


def read_table(path: str | os.PathLike[str]) -> Table:
    """Read a table in the format given by the suffix of ``path``."""
    src = Path(path)
    fmt = table_format(src)
    if fmt == "parquet":
        return _read_parquet(src)
    return Table.read(src, format=fmt)


def _write_parquet(table: Table, path: Path, *, overwrite: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True)")
    fields, arrays = [], []
    for name in table.colnames:
        column = table[name]
        meta = {}
        if column.unit is not None:
            meta["unit"] = column.unit.to_string()
        if column.description:
            meta["description"] = column.description
        array = pa.array(np.asarray(column))
        fields.append(pa.field(name, array.type, metadata=meta or None))
        arrays.append(array)
    schema_meta = {str(k): str(v) for k, v in table.meta.items()}
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema_meta)), path)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    arrow = pq.read_table(path)
    table = Table()
    for field, column in zip(arrow.schema, arrow.columns):
        table[field.name] = column.to_numpy(zero_copy_only=False)
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        if "unit" in meta:
            table[field.name].unit = meta["unit"]
        if "description" in meta:
            table[field.name].description = meta["description"]
    table.meta.update({k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items()})
    return table
