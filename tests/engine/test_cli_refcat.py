"""``calibrate refcat ingest``: a table in, a HATS catalogue out, errors as exit status 2."""

from __future__ import annotations

import json

import hats
import numpy as np
from astropy.table import Table

from calibration.cli import main
from calibration.refcat import SkyFootprint, load_reference_catalog
from calibration.tables import write_table


def _table(n: int = 800, seed: int = 4) -> Table:
    rng = np.random.default_rng(seed)
    return Table({"RA_ICRS": rng.uniform(210.0, 211.0, n), "DE_ICRS": rng.uniform(-1.0, 0.0, n),
                  "gmag": rng.uniform(14.0, 20.0, n), "e_gmag": np.full(n, 0.03)})


def test_ingest_simple_table(tmp_path, capsys):
    rng = np.random.default_rng(1)
    t = Table({"ra": rng.uniform(10, 11, 500), "dec": rng.uniform(20, 21, 500), "r_mag": rng.uniform(15, 19, 500),
               "r_magErr": np.full(500, 0.02)})
    write_table(t, tmp_path / "ref.csv")
    code = main(["refcat", "ingest", str(tmp_path / "ref.csv"), "--name", "myref", "--out", str(tmp_path / "cats"),
                 "--max-rows-per-partition", "100"])
    out = capsys.readouterr().out
    assert code == 0
    assert "500 rows in" in out and "bands r" in out
    cat = hats.read_hats(tmp_path / "cats" / "myref")
    assert cat.catalog_info.total_rows == 500 and len(cat.get_healpix_pixels()) >= 5
    ref = load_reference_catalog(tmp_path / "cats" / "myref", footprint=SkyFootprint(10.5, 20.5, 0.2))
    assert 0 < len(ref.table) < 500 and ref.bands == ("r",)


def test_ingest_with_inline_and_file_column_map_and_epoch(tmp_path, capsys):
    write_table(_table(), tmp_path / "vizier.fits")
    cmap = {"ra": "RA_ICRS", "dec": "DE_ICRS", "mags": [["g", "gmag", "e_gmag"]]}
    code = main(["refcat", "ingest", str(tmp_path / "vizier.fits"), "--name", "inline", "--out", str(tmp_path),
                 "--column-map", json.dumps(cmap), "--epoch", "J2000"])
    assert code == 0
    assert "epoch MJD 51544.500" in capsys.readouterr().out
    (tmp_path / "map.json").write_text(json.dumps(cmap))
    code = main(["refcat", "ingest", str(tmp_path / "vizier.fits"), "--name", "fromfile", "--out", str(tmp_path),
                 "--column-map", str(tmp_path / "map.json")])
    assert code == 0
    for name in ("inline", "fromfile"):
        ref = load_reference_catalog(tmp_path / name)
        assert len(ref.table) == 800 and ref.bands == ("g",)
        np.testing.assert_allclose(ref.mag("g")[1], 0.03)


def test_ingest_errors_exit_2_with_stage(tmp_path, capsys):
    write_table(_table(), tmp_path / "vizier.parquet")
    code = main(["refcat", "ingest", str(tmp_path / "vizier.parquet"), "--name", "x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "failed in stage 'refcat'" in err and "RA_ICRS" in err  # lists the columns it found
    assert main(["refcat", "ingest", str(tmp_path / "missing.csv"), "--name", "x", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["refcat", "ingest", str(tmp_path / "vizier.parquet"), "--name", "x", "--out", str(tmp_path),
                 "--column-map", "{not json"]) == 2
    assert main(["refcat", "ingest", str(tmp_path / "vizier.parquet"), "--name", "x", "--out", str(tmp_path),
                 "--column-map", '{"ra": "RA_ICRS", "dec": "DE_ICRS"}', "--epoch", "soon"]) == 2
    assert "epoch 'soon' is not understood" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
