"""Catalogue tables on disk (calibration.tables): CSV and Parquet through pyarrow, FITS tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from calibration import tables
from calibration.tables import read_table, write_fits_table, write_table


def _table() -> Table:
    t = Table({
        "id": np.arange(4, dtype=">i8"),  # big-endian, as from a FITS file
        "x": np.array([0.1, np.nan, 3.25, -1e-30]),
        "f": np.array([1.5, 2.0, 3.0, 4.0], np.float32),
        "flag": np.array([True, False, True, False]),
    })
    t["x"].unit, t["x"].description = "pix", "column x"
    t.meta["ZP"] = 27.5
    return t


def test_csv_is_what_astropy_writes(tmp_path):
    t = _table()
    write_table(t, tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text().splitlines()
    assert text[0] == "id,x,f,flag"  # bare header, as the web's downloads expect
    assert text[1] == "0,0.1,1.5,True"
    assert text[2] == "1,nan,2,False"
    back = read_table(tmp_path / "t.csv")
    assert back.colnames == t.colnames
    np.testing.assert_array_equal(back["id"], t["id"])
    np.testing.assert_array_equal(back["x"], t["x"])  # shortest round-trip repr: exact
    np.testing.assert_array_equal(np.asarray(back["f"], np.float32), t["f"])
    assert list(back["flag"]) == ["True", "False", "True", "False"]  # astropy reads its own CSV so too


def test_csv_quotes_only_values_that_need_it(tmp_path):
    t = Table({"name": ["a", "b,c"], "v": [1, 2]})
    write_table(t, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "name,v"
    back = read_table(tmp_path / "t.csv")
    assert list(back["name"]) == ["a", "b,c"]


def test_parquet_keeps_units_descriptions_and_meta(tmp_path):
    t = _table()
    write_table(t, tmp_path / "t.parquet")
    back = read_table(tmp_path / "t.parquet")
    assert back.colnames == t.colnames
    assert back["x"].unit == "pix" and back["x"].description == "column x"
    assert back.meta["ZP"] == "27.5"
    assert back["flag"].dtype == bool and list(back["flag"]) == [True, False, True, False]
    np.testing.assert_array_equal(back["id"], t["id"])
    np.testing.assert_array_equal(back["f"], t["f"])


def test_numeric_tables_are_written_and_read_without_importing_pandas(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from astropy.table import Table\n"
        "from calibration.tables import read_table, write_table\n"
        "t = Table({'a': np.arange(3.0), 'b': np.array([True, False, True]), 'c': np.arange(3)})\n"
        f"write_table(t, {str(tmp_path / 't.csv')!r})\n"
        f"write_table(t, {str(tmp_path / 't.parquet')!r})\n"
        f"back = read_table({str(tmp_path / 't.parquet')!r})\n"
        "assert list(back['b']) == [True, False, True] and back['c'].dtype == t['c'].dtype\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_arrow_columns_of_every_kind_come_back_as_numpy():
    import pyarrow as pa

    from calibration.tables import from_arrow

    whole = pa.table({
        "i": pa.array([1, 2, 3, 4, 5], pa.int32()), "f": pa.array([0.5, 1.5, 2.5, 3.5, 4.5], pa.float32()),
        "b": pa.array([True, False, True, True, False]), "n": pa.array([1.0, None, 3.0, 4.0, 5.0]),
        "s": pa.array(["a", "b", "c", "d", "e"]),
    })
    for arrow in (whole, whole.slice(1, 3), pa.concat_tables([whole.slice(0, 2), whole.slice(2, 3)])):
        t = from_arrow(arrow)
        for name in arrow.column_names:
            expected = arrow.column(name).to_numpy(zero_copy_only=False)
            assert t[name].dtype == expected.dtype or name == "s", name
            np.testing.assert_array_equal(np.asarray(t[name]), expected)


CARDS = [("ZP", 27.5), ("FITOK", True), ("N", 3), ("NOTE", "a note"), ("HIERARCH THRESHOLD_SIGMA", 5.0),
         ("COMMENT", "free text"), ("LONGTEXT", "x" * 100), ("ZP", 27.25)]


def _astropy_fits(table: Table, path, cards=()) -> bytes:
    """What the outputs wrote before write_fits_table: astropy's BinTableHDU of the table, then the cards."""
    bare = Table(table, copy=False)
    bare.meta = {}
    hdu = fits.BinTableHDU(bare)
    for key, value in cards:
        hdu.header[key] = value
    hdu.writeto(path)
    return path.read_bytes()


def _numeric_table(n: int = 5) -> Table:
    rng = np.random.default_rng(4)
    t = _table()[[i % 4 for i in range(n)]]
    t["dimless"] = rng.normal(size=n)
    t["dimless"].unit = ""
    t["i2"] = np.arange(n, dtype=np.int16) - 2
    t["i4"] = np.arange(n, dtype=">i4") * 1000
    t["u1"] = np.arange(n, dtype=np.uint8)
    t["edge"] = np.array([np.inf, -np.inf, -0.0, 1e308, 5e-324] * n)[:n]
    t["area"] = np.arange(n, dtype=np.int64)
    t["area"].unit = "pix2"
    return t


@pytest.mark.parametrize("n", [0, 1, 7, 3001])
def test_fits_table_is_the_file_astropy_writes(tmp_path, n):
    t = _numeric_table(n)
    assert tables._fits_layout(t) is not None  # the direct path
    write_fits_table(t, tmp_path / "fast.fits", cards=CARDS)
    assert (tmp_path / "fast.fits").read_bytes() == _astropy_fits(t, tmp_path / "astropy.fits", CARDS)
    with fits.open(tmp_path / "fast.fits") as hdul:
        assert hdul[1].columns["x"].unit == "pix" and hdul[1].header["HIERARCH THRESHOLD_SIGMA"] == 5.0
        np.testing.assert_array_equal(hdul[1].data["flag"], t["flag"])
        np.testing.assert_array_equal(hdul[1].data["edge"], t["edge"])


@pytest.mark.parametrize("change", ["strings", "masked", "format", "array_cells", "uint16", "int8", "card"])
def test_other_fits_tables_go_through_astropy(tmp_path, change):
    t = _numeric_table()
    cards = list(CARDS)
    if change == "strings":
        t["name"] = ["a", "bb", "ccc", "", "e"]
    elif change == "masked":
        t["m"] = MaskedColumn([1, 2, 3, 4, 5], mask=[0, 1, 0, 0, 1])
    elif change == "format":
        t["x"].info.format = ".3f"
    elif change == "array_cells":
        t["v"] = np.ones((5, 3))
    elif change == "uint16":
        t["u"] = np.arange(5, dtype=np.uint16)
    elif change == "int8":
        t["b"] = np.arange(5, dtype=np.int8)
    else:
        cards.append(("TUNIT2", "deg"))  # would rewrite a column's unit
    assert change == "card" or tables._fits_layout(t) is None
    write_fits_table(t, tmp_path / "fast.fits", cards=cards)
    assert (tmp_path / "fast.fits").read_bytes() == _astropy_fits(t, tmp_path / "astropy.fits", cards)


def test_parquet_holds_the_same_table_as_pyarrows_default(tmp_path):
    import pyarrow.parquet as pq

    t = _numeric_table(50)
    t["x"] = np.linspace(0, 1, 50)  # no NaN: pyarrow's equals holds NaN unequal
    t["edge"] = np.arange(50.0)
    write_table(t, tmp_path / "t.parquet")
    pq.write_table(tables.to_arrow(t), tmp_path / "default.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(pq.read_table(tmp_path / "default.parquet"),
                                                         check_metadata=True)


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b,c"]])
def test_csv_in_parallel_parts_is_the_same_text(tmp_path, monkeypatch, names):
    import pyarrow.csv as pacsv

    t = _numeric_table(101)
    t["s"] = ["plain", "with,comma", "q\"uote"] * 33 + ["x", "y"]
    t.rename_columns(["id", "x"], names)
    header = "none" if "," not in "".join(names) else "needed"
    pacsv.write_csv(tables.to_arrow(t, bool_as_text=True), tmp_path / "one.csv",
                    write_options=pacsv.WriteOptions(quoting_header=header))
    monkeypatch.setattr(tables, "_CSV_THREADS", 3)
    monkeypatch.setattr(tables, "_CSV_VALUES_PER_PART", 1)
    monkeypatch.setattr(tables, "_CSV_VALUES_PER_ROUND", 200)  # slices of a few rows, in many rounds
    write_table(t, tmp_path / "parts.csv")
    assert (tmp_path / "parts.csv").read_text() == (tmp_path / "one.csv").read_text()
    t.remove_column("s")  # no value to quote: the unquoted style
    pacsv.write_csv(tables.to_arrow(t, bool_as_text=True), tmp_path / "one.csv",
                    write_options=pacsv.WriteOptions(quoting_style="none", quoting_header=header))
    write_table(t, tmp_path / "parts.csv")
    assert (tmp_path / "parts.csv").read_text() == (tmp_path / "one.csv").read_text()
