"""write_outputs' fast writers change no output: every file as astropy's and pyarrow's plain paths write it.

One small simulated field, calibrated with astrometry and photometry so that
every output exists, is written twice: as it is, and with the fast paths
switched off (astropy's ``writeto`` for the FITS images, ``BinTableHDU`` for
the tables, one pyarrow CSV writer, pyarrow's default Parquet encoding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration import io, tables
from calibration.outputs import write_outputs
from calibration.pipeline import calibrate
from calibration.refcat import load_for_exposure
from calibration.testing import make_reference_catalog, simulate_exposure, small_field_config, write_reference_catalog


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    sim = simulate_exposure(small_field_config(seed=12))
    path = tmp_path_factory.mktemp("ref") / "ref.parquet"
    write_reference_catalog(make_reference_catalog(sim, seed=12), path)
    result = calibrate(sim.exposure, astrom_refcat=load_for_exposure(path, sim.exposure),
                       photom_refcat=load_for_exposure(path, sim.exposure))
    assert result.astrometry is not None and result.photom_matches is not None, result.warnings
    return result


def _slow_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route every writer through the library calls the outputs used before the fast paths."""
    monkeypatch.setattr(io, "_plain_images", lambda hdul, path: False)
    monkeypatch.setattr(tables, "_fits_layout", lambda table: None)
    monkeypatch.setattr(tables, "_CSV_THREADS", 1)
    monkeypatch.setattr(tables, "_dictionary_columns", lambda arrow: True)


def _same_parquet(a: Path, b: Path) -> None:
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.equals(tb.schema, check_metadata=True)
    assert [f.metadata for f in ta.schema] == [f.metadata for f in tb.schema]
    for name in ta.column_names:  # Table.equals holds NaN unequal to itself
        x, y = ta[name].to_numpy(), tb[name].to_numpy()
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_every_output_file_is_unchanged(result, tmp_path, monkeypatch):
    fast = write_outputs(result, tmp_path / "fast")
    with monkeypatch.context() as patch:
        _slow_paths(patch)
        slow = write_outputs(result, tmp_path / "slow")
    assert [(f.name, f.kind, f.format, f.description) for f in fast] == \
        [(f.name, f.kind, f.format, f.description) for f in slow]
    names = {f.name for f in fast}
    assert {"calexp.fits", "calexpBackground.fits", "src.fits", "srcMatchFull.parquet", "astromMatch.csv"} <= names
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == sorted(names)
    for name in sorted(names):
        a, b = tmp_path / "fast" / name, tmp_path / "slow" / name
        if name.endswith(".parquet"):  # re-encoded (no float dictionaries): the same table, other bytes
            _same_parquet(a, b)
        else:  # FITS, CSV and JSON: the same bytes
            assert a.read_bytes() == b.read_bytes(), name


def test_writing_leaves_the_result_untouched(result, tmp_path):
    image, variance, mask = result.exposure.image.copy(), result.exposure.variance.copy(), result.exposure.mask.copy()
    sources = result.sources.copy()
    write_outputs(result, tmp_path)
    assert result.exposure.image.dtype.isnative and np.array_equal(result.exposure.image, image)
    assert np.array_equal(result.exposure.variance, variance) and np.array_equal(result.exposure.mask, mask)
    assert result.sources.colnames == sources.colnames
    for name in sources.colnames:
        assert np.array_equal(result.sources[name], sources[name], equal_nan=sources[name].dtype.kind == "f")
