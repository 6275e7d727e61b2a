"""Catalogue tables on disk: FITS, CSV, ECSV and Parquet.

Parquet and CSV go through pyarrow alone (astropy's Parquet reader needs
pandas, and its CSV writer formats every value in Python): units and
descriptions travel as each Parquet field's metadata (``unit``,
``description``), scalar ``table.meta`` entries as the schema metadata; CSV,
as astropy's ``ascii.csv``, has a plain header line of column names and no
units. Columns become Arrow arrays over the numpy buffers
(:func:`to_arrow`), never through ``pyarrow.array``, which imports pandas
(0.4 s) to check for pandas objects.

FITS tables of plain numeric and boolean columns are written by
:func:`write_fits_table` straight from the columns into one big-endian row
array, the same bytes as astropy's ``BinTableHDU(table)`` at a fraction of its
cost (astropy builds a structured array, a ``FITS_rec`` and a column object
per column, then byteswaps).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
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
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = to_arrow(table)
            pq.write_table(arrow, out, use_dictionary=_dictionary_columns(arrow))
            # Arrow's pool keeps the encoder's buffers (50 MB for a crowded field's catalogue),
            # which the CSV written next would stack its own on.
            pa.default_memory_pool().release_unused()
        else:
            _write_csv(table, out)
    else:
        table.write(out, format=fmt, overwrite=overwrite)
    return out


def write_fits_table(table: Table, path: str | os.PathLike[str], *, cards: Iterable[tuple[str, Any]] = (),
                     overwrite: bool = True) -> Path:
    """Write ``table`` as a binary table after an empty primary HDU; ``table.meta`` is not written.

    The file is byte for byte what ``fits.BinTableHDU(table)`` (with empty
    meta) writes after ``header[key] = value`` for each of ``cards``. Tables
    of one-dimensional bool, uint8, int16/32/64 and float32/64 columns
    without display formats go straight from the columns to the file; any
    other table, or a card that would touch the table's own keywords, goes
    through astropy.

    Raises
    ------
    OSError
        If ``path`` exists and ``overwrite`` is False.
    """
    from .io import write_fits_blocks

    out = Path(path)
    cards = list(cards)
    layout = _fits_layout(table)
    if layout is None or any(_TABLE_KEYWORD.match(key.strip().upper()) for key, _ in cards):
        bare = Table(table, copy=False)
        bare.meta = {}
        hdu = fits.BinTableHDU(bare)
        for key, value in cards:
            hdu.header[key] = value
        hdu.writeto(out, overwrite=overwrite)
        return out
    rows = np.empty(len(table), dtype=[(f"c{i}", dtype) for i, (_, _, dtype, _) in enumerate(layout)])
    for i, (name, _, _, _) in enumerate(layout):
        values = np.asarray(table[name])
        # FITS logicals are the bytes 'T' and 'F'
        rows[f"c{i}"] = np.where(values, _TRUE, _FALSE) if values.dtype.kind == "b" else values
    write_fits_blocks(out, [(_primary_header(), None), (_bintable_header(layout, len(table), cards), rows)],
                      overwrite=overwrite)
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


def _dictionary_columns(arrow: Any) -> list[str] | bool:
    """Columns worth Parquet's dictionary encoding: all but floating point.

    Measured values are nearly all distinct, so for them pyarrow builds a
    dictionary only to drop it at the size limit: two thirds of the write
    time of a float-heavy catalogue, for a larger file.
    """
    import pyarrow as pa

    names = [field.name for field in arrow.schema if not pa.types.is_floating(field.type)]
    return names or False


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
        _write_csv_parts(arrow, path, quoting_style="none", quoting_header=header)
    except pa.ArrowInvalid:
        _write_csv_parts(arrow, path, quoting_style="needed", quoting_header=header)


def _write_csv_parts(arrow: Any, path: Path, *, quoting_style: str, quoting_header: str) -> None:
    """``pyarrow.csv.write_csv``, with a big table's rows formatted on several threads.

    Formatting numbers is nearly all the cost (0.5 s for 40,000 rows of 90
    columns) and pyarrow does it on one thread without holding the GIL. So
    slices of rows are formatted side by side and written in order, a few
    at a time to bound the text held: the same text, the header coming with
    the first slice only.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def options(first: bool) -> Any:
        return pacsv.WriteOptions(include_header=first, quoting_style=quoting_style, quoting_header=quoting_header)

    n_threads = min(_CSV_THREADS, arrow.num_rows * arrow.num_columns // _CSV_VALUES_PER_PART)
    if n_threads < 2:
        pacsv.write_csv(arrow, path, write_options=options(True))
        return
    step = min(-(-arrow.num_rows // n_threads), max(1, _CSV_VALUES_PER_ROUND // (n_threads * arrow.num_columns)))
    starts = range(0, arrow.num_rows, step)

    def text(start: int) -> Any:
        sink = pa.BufferOutputStream()
        pacsv.write_csv(arrow.slice(start, step), sink, write_options=options(start == 0))
        return sink.getvalue()

    with ThreadPoolExecutor(n_threads) as pool, open(path, "wb") as out:
        for first in range(0, len(starts), n_threads):
            for part in pool.map(text, starts[first:first + n_threads]):
                out.write(part)
                del part
            pa.default_memory_pool().release_unused()  # the text of this round, before the next


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    # One file: ParquetFile, not read_table, whose dataset layer imports pandas (0.25 s a run).
    arrow = pq.ParquetFile(path).read()
    table = from_arrow(arrow)
    table.meta.update({k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items()})
    return table


def _numpy_column(column: Any) -> np.ndarray:
    """A numpy copy of an Arrow column.

    Numbers and booleans without nulls are read from the buffers: pyarrow's
    ``to_numpy`` imports pandas (0.15 s, more than reading a reference table)
    even for them. Anything else goes through ``to_numpy``.
    """
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count == 0 and (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        dtype = np.dtype(arr.type.to_pandas_dtype())  # a numpy dtype; pandas is not imported
        return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize).copy()
    if arr.null_count == 0 and pa.types.is_boolean(arr.type):
        bits = np.frombuffer(arr.buffers()[1], np.uint8)
        return np.unpackbits(bits, bitorder="little", count=arr.offset + len(arr))[arr.offset:].astype(bool)
    return arr.to_numpy(zero_copy_only=False)


def from_arrow(arrow: Any) -> Table:
    """An astropy Table of a pyarrow Table's columns, with the units and descriptions
    :func:`to_arrow` keeps in the field metadata."""
    table = Table()
    for field, column in zip(arrow.schema, arrow.columns):
        table[field.name] = _numpy_column(column)
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        if "unit" in meta:
            table[field.name].unit = meta["unit"]
        if "description" in meta:
            table[field.name].description = meta["description"]
    return table


# Threads formatting one CSV, the least number of values worth a thread, and the values formatted
# per round (about 15 bytes each as text) before they are written: 1M (15 MB of text) keeps the
# crowded field's peak memory under 8 images, 4M added 60-100 MB to it.
_CSV_THREADS = min(4, os.cpu_count() or 1)
_CSV_VALUES_PER_PART = 250_000
_CSV_VALUES_PER_ROUND = 1_000_000

# TFORM of the column dtypes written directly (numpy type code -> FITS letter).
_TFORMS = {"b1": "L", "u1": "B", "i2": "I", "i4": "J", "i8": "K", "f4": "E", "f8": "D"}
_TRUE, _FALSE = np.uint8(ord("T")), np.uint8(ord("F"))
# Keywords astropy derives from the columns: a card setting one would change the table, so astropy handles it.
_TABLE_KEYWORD = re.compile(r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|THEAP|EXTEND|EXTNAME|EXTVER|END"
                            r"|T[A-Z]{3,5}\d+)$")


def _fits_layout(table: Table) -> list[tuple[str, str, np.dtype, str | None]] | None:
    """``(name, TFORM, big-endian dtype, TUNIT)`` per column, or None when astropy must write the table."""
    if table.has_mixin_columns or table.masked or not table.colnames:
        return None
    layout = []
    for name in table.colnames:
        column = table[name]
        tform = _TFORMS.get(column.dtype.str[1:])
        if tform is None or column.ndim != 1 or getattr(column, "mask", None) is not None \
                or column.info.format is not None:
            return None
        unit = None
        if column.unit is not None:
            try:
                unit = column.unit.to_string(format="fits")
            except ValueError:  # astropy warns and drops such a unit (or raises): let it
                return None
        dtype = np.dtype(np.uint8) if tform == "L" else column.dtype.newbyteorder(">")
        layout.append((name, tform, dtype, unit))
    return layout


def _bintable_header(layout: list[tuple[str, str, np.dtype, str | None]], n_rows: int,
                     cards: list[tuple[str, Any]]) -> bytes:
    """The BINTABLE header astropy writes for ``layout``, then ``cards``, padded to the 2880-byte block."""
    images = [
        _card("XTENSION", "BINTABLE", "binary table extension"),
        _card("BITPIX", 8, "array data type"),
        _card("NAXIS", 2, "number of array dimensions"),
        _card("NAXIS1", sum(dtype.itemsize for _, _, dtype, _ in layout), "length of dimension 1"),
        _card("NAXIS2", n_rows, "length of dimension 2"),
        _card("PCOUNT", 0, "number of group parameters"),
        _card("GCOUNT", 1, "number of groups"),
        _card("TFIELDS", len(layout), "number of table fields"),
    ]
    for i, (name, tform, _, unit) in enumerate(layout, start=1):
        images.append(_card(f"TTYPE{i}", name))
        images.append(_card(f"TFORM{i}", tform))
        if unit is not None:
            images.append(_card(f"TUNIT{i}", unit))
    extra = fits.Header()
    for key, value in cards:  # through a Header, as astropy would set them: HIERARCH, updates, commentary
        extra[key] = value
    text = "".join(images) + extra.tostring(endcard=False, padding=False) + "END".ljust(80)
    return (text + " " * (-len(text) % 2880)).encode("ascii")


@functools.lru_cache(maxsize=4096, typed=True)
def _card(keyword: str, value: str | int, comment: str = "") -> str:
    """astropy's image of one card, remembered: a catalogue's column cards are the same on every write,
    and astropy takes some 50 us to format each."""
    return fits.Card(keyword, value, comment).image


@functools.lru_cache(maxsize=1)
def _primary_header() -> bytes:
    """The empty primary header astropy writes before a table extension."""
    return fits.PrimaryHDU().header.tostring().encode("ascii")
