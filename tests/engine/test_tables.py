"""Catalogue tables on disk (calibration.tables): CSV and Parquet through pyarrow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from astropy.table import Table

from calibration.tables import read_table, write_table


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


def test_numeric_tables_are_written_without_importing_pandas(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from astropy.table import Table\n"
        "from calibration.tables import write_table\n"
        "t = Table({'a': np.arange(3.0), 'b': np.array([True, False, True]), 'c': np.arange(3)})\n"
        f"write_table(t, {str(tmp_path / 't.csv')!r})\n"
        f"write_table(t, {str(tmp_path / 't.parquet')!r})\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
