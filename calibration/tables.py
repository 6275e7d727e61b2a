"""Catalogue tables on disk: FITS, CSV, ECSV and Parquet.

Parquet and CSV go through pyarrow alone (astropy's Parquet reader needs
pandas, and its CSV writer formats every value in Python): units and
descriptions travel as each Parquet field's metadata (``unit``,
``description``), scalar ``table.meta`` entries as the schema metadata; CSV,
as astropy's ``ascii.csv``, has a plain header line of column names and no
units. Columns become Arrow arrays over the numpy buffers
(:func:`to_arrow`), never through ``pyarrow.array``, which imports pandas
(0.4 s) to check for pandas objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    if fmt in ("parquet", "ascii.csv"):
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True)")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(to_arrow(table), out)
        else:
            _write_csv(table, out)
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


def to_arrow(table: Table, *, bool_as_text: bool = False) -> Any:
    """A ``pyarrow.Table`` of ``table``'s columns, with units, descriptions and scalar meta.

    Numeric and boolean columns of one dimension share or pack the numpy
    buffers; other columns (strings, arrays per row) go through
    ``pyarrow.array``. With ``bool_as_text`` booleans become the words
    ``True``/``False`` (dictionary-encoded), as astropy writes them to text.
    """
    import pyarrow as pa

    fields, arrays = [], []
    for name in table.colnames:
        column = table[name]
        meta = {}
        if column.unit is not None:
            meta["unit"] = column.unit.to_string()
        if column.description:
            meta["description"] = column.description
        array = _arrow_array(np.asarray(column), bool_as_text=bool_as_text)
        fields.append(pa.field(name, array.type, metadata=meta or None))
        arrays.append(array)
    schema_meta = {str(k): str(v) for k, v in table.meta.items()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema_meta))


def _arrow_array(values: np.ndarray, *, bool_as_text: bool = False) -> Any:
    """One numpy column as an Arrow array, without importing pandas where possible."""
    import pyarrow as pa

    if values.ndim == 1 and values.dtype.kind in "iuf":
        values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), values.size, [None, pa.py_buffer(values)])
    if values.ndim == 1 and values.dtype.kind == "b":
        if bool_as_text:
            codes = values.astype(np.int8)
            words = pa.Array.from_buffers(pa.utf8(), 2, [None, pa.py_buffer(np.array([0, 5, 9], np.int32)),
                                                         pa.py_buffer(b"FalseTrue")])
            return pa.DictionaryArray.from_arrays(
                pa.Array.from_buffers(pa.int8(), codes.size, [None, pa.py_buffer(codes)]), words)
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), values.size, [None, pa.py_buffer(bits)])
    return pa.array(values)


def _write_csv(table: Table, path: Path) -> None:
    """CSV as astropy writes it: bare header and values, ``True``/``False``, quotes only if needed."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    arrow = to_arrow(table, bool_as_text=True)
    plain_names = not any(c in name for name in arrow.column_names for c in ',"\r\n')
    header = "none" if plain_names else "needed"
    try:  # astropy quotes only values holding a delimiter, quote or line end
        pacsv.write_csv(arrow, path, write_options=pacsv.WriteOptions(quoting_style="none", quoting_header=header))
    except pa.ArrowInvalid:
        pacsv.write_csv(arrow, path, write_options=pacsv.WriteOptions(quoting_header=header))


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    arrow = pq.read_table(path)
    table = from_arrow(arrow)
    table.meta.update({k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items()})
    return table


def from_arrow(arrow: Any) -> Table:
    """An astropy Table of a pyarrow Table's columns, with the units and descriptions
    :func:`to_arrow` keeps in the field metadata."""
    table = Table()
    for field, column in zip(arrow.schema, arrow.columns):
        table[field.name] = column.to_numpy(zero_copy_only=False)
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        if "unit" in meta:
            table[field.name].unit = meta["unit"]
        if "description" in meta:
            table[field.name].description = meta["description"]
    return table
