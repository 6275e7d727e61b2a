"""Calibration history: zero-point outliers, configuration differences, QA comparison.

Pure functions on plain data (arrays, dicts, :class:`~.diagnostics.SummaryRow`
lists): the selectors fetch the rows, the views join the two, the plots draw
the result. Nothing here queries the database.

Outliers of the zero-point trend
--------------------------------
Runs are taken per instrument + filter in observation order. A run's MAGZERO
(already referred to 1 s) is compared with the **median of the previous
N = 20 runs** of the same instrument + filter that have a MAGZERO; it is an
outlier when

    |MAGZERO - median| > k * sigma,   k = 5,

with ``sigma = 1.4826 * MAD`` of those previous runs (the robust standard
deviation), at least 0.01 mag so that a very steady history does not flag
millimagnitude wobbles. Runs with fewer than 10 previous runs are not judged
(the MAD of fewer values is too noisy).

The median and MAD are robust, so an outlier among the previous runs does
not mask the next one; a step change of the instrument (a new coating, a new
detector) is flagged for about N/2 = 10 runs, after which the new level is
the median. N = 20 is about a month of nights for an instrument observing
most nights: short enough to follow seasonal changes of the zero point, long
enough for a stable median. k = 5 rather than 3 because sigma is estimated
from only 10 to 20 values: on simulated Gaussian scatter (seeded, 100,000
runs) k = 3 flags 2.3 % of normal runs, k = 5 about 0.15 % (one in ~700),
while a drop of 7.5 sigma (0.15 mag for 0.02 mag of scatter) is still caught
95 % of the time; the clouds and wrong filters worth a look are 0.1 to 1 mag
off.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from calibration.stats import MAD_TO_SIGMA

from .diagnostics import SummaryRow, summary_rows

#: N: how many previous runs of the same instrument + filter make the reference median.
OUTLIER_WINDOW = 20
#: k: a run is an outlier beyond this many robust sigmas from the reference median.
OUTLIER_K = 5.0
#: Runs with fewer previous runs than this are not judged.
OUTLIER_MIN_HISTORY = 10
#: Smallest robust sigma used (mag).
OUTLIER_SIGMA_FLOOR_MAG = 0.01


@dataclasses.dataclass(frozen=True)
class OutlierTest:
    """Parameters of :func:`flag_outliers` (the module docstring explains the defaults)."""

    window: int = OUTLIER_WINDOW
    k: float = OUTLIER_K
    min_history: int = OUTLIER_MIN_HISTORY
    sigma_floor_mag: float = OUTLIER_SIGMA_FLOOR_MAG

    def __post_init__(self):
        if not (1 <= self.min_history <= self.window):
            raise ValueError(f"need 1 <= min_history <= window, got {self.min_history} and {self.window}")
        if not self.k > 0 or not self.sigma_floor_mag >= 0:
            raise ValueError("k must be > 0 and sigma_floor_mag >= 0")


def flag_outliers(values: NDArray, groups: NDArray, *, test: OutlierTest = OutlierTest()) -> dict[str, NDArray]:
    """Judge each value against the rolling median of the previous values of its group.

    Parameters
    ----------
    values : array of float, shape (n,)
        MAGZERO of each run (mag); NaN when the run has none (it is skipped and
        does not count as a previous run).
    groups : array, shape (n,)
        Group label of each run (instrument + filter). Within a group the runs
        must be in observation order; groups may be interleaved.
    test : OutlierTest
        Window N, threshold k, minimum history and sigma floor.

    Returns
    -------
    dict of arrays, shape (n,)
        ``reference_mag`` (median of the previous runs, NaN when not judged),
        ``sigma_mag`` (robust sigma used, floor applied), ``deviation_mag``
        (value - reference), ``n_history`` (previous runs used) and ``outlier``
        (bool; False when not judged).
    """
    values = np.asarray(values, dtype=float)
    groups = np.asarray(groups)
    n = values.size
    out = {"reference_mag": np.full(n, np.nan), "sigma_mag": np.full(n, np.nan),
           "deviation_mag": np.full(n, np.nan), "n_history": np.zeros(n, dtype=np.int64),
           "outlier": np.zeros(n, dtype=bool)}
    if n == 0:
        return out
    w = test.window
    for label in np.unique(groups):
        idx = np.flatnonzero((groups == label) & np.isfinite(values))
        m = idx.size
        out["n_history"][idx] = np.minimum(np.arange(m), w)
        if m <= test.min_history:
            continue
        v = values[idx]
        # Row j of ``windows`` holds the w values before v[j] (NaN-padded at the start).
        windows = sliding_window_view(np.concatenate([np.full(w, np.nan), v]), w)[:m]
        judged = np.arange(test.min_history, m)
        hist = windows[judged]
        median = np.nanmedian(hist, axis=1)
        mad = np.nanmedian(np.abs(hist - median[:, None]), axis=1)
        sigma = np.maximum(MAD_TO_SIGMA * mad, test.sigma_floor_mag)
        deviation = v[judged] - median
        target = idx[judged]
        out["reference_mag"][target] = median
        out["sigma_mag"][target] = sigma
        out["deviation_mag"][target] = deviation
        out["outlier"][target] = np.abs(deviation) > test.k * sigma
    return out


def group_labels(instrument: NDArray, filter_name: NDArray) -> NDArray:
    """``"instrument filter"`` per run (``"?"`` for a missing part)."""
    return np.array([f"{i or '?'} {f or '?'}" for i, f in zip(instrument, filter_name)], dtype=str)


def trend_table(shown: Mapping[str, NDArray], history: Mapping[str, NDArray], *,
                test: OutlierTest = OutlierTest()) -> dict[str, NDArray]:
    """The shown runs with their group label and outlier test, in observation order.

    ``shown`` and ``history`` are tables of :data:`~.selectors.TREND_FIELDS`
    (``history``: earlier runs, judged against but not returned).
    """
    n_shown = len(shown["run_id"])
    table = {k: np.concatenate([np.asarray(history[k]), np.asarray(shown[k])]) if len(history["run_id"])
             else np.asarray(shown[k]) for k in shown}
    is_shown = np.concatenate([np.zeros(len(history["run_id"]), bool), np.ones(n_shown, bool)])
    order = np.lexsort((table["run_id"], table["date_obs"]))
    table = {k: v[order] for k, v in table.items()}
    is_shown = is_shown[order]
    table["group"] = group_labels(table["instrument"], table["filter_name"])
    table.update(flag_outliers(table["magzero"], table["group"], test=test))
    return {k: v[is_shown] for k, v in table.items()}


# ------------------------------------------------------------------------ configuration

MISSING = "(not set)"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested configuration -> ``{"stage.key": value}`` (lists and empty dicts are values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, name))
        else:
            out[name] = value
    return out


@dataclasses.dataclass(frozen=True)
class ConfigRow:
    """One dotted key of the configurations compared: its value in each (JSON text) and whether they differ."""

    key: str
    values: list[str]
    differs: bool


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def config_differences(configs: Sequence[Mapping[str, Any]]) -> list[ConfigRow]:
    """Every key of the configurations, the differing ones first (each part sorted by key)."""
    flat = [flatten_config(c or {}) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = []
    for key in keys:
        values = [_json(f[key]) if key in f else MISSING for f in flat]
        rows.append(ConfigRow(key, values, len(set(values)) > 1))
    return sorted(rows, key=lambda r: (not r.differs, r.key))


# ------------------------------------------------------------------------ QA figures

#: Stored result columns that stand in for a missing metadata key.
COLUMN_FIGURES = {
    "MAGZERO": "magzero", "MAGZERO_RMS": "magzero_rms", "MAGZERO_NOBJ": "magzero_nobj",
    "COLORTERM1": "colorterm1", "COLORTERM2": "colorterm2", "COLORTERM3": "colorterm3",
    "PHOTOM_SCATTER_MAG": "photom_scatter_mag", "SFM_ASTROM_OFFSET_MEAN": "astrom_offset_mean_arcsec",
    "SFM_ASTROM_OFFSET_STD": "astrom_offset_std_arcsec", "N_SOURCES": "n_sources",
    "N_PHOTOM_MATCHES": "n_photom_matches", "ASTROM_N_MATCHES": "n_astrom_matches", "PSF_FWHM_PIX": "psf_fwhm_pix",
    "SKY_NOISE_ADU": "sky_noise_adu", "BGMEAN": "background_adu",
}


def run_figures(run) -> dict[str, Any]:
    """A run's QA figures: its stored metadata, completed from the result columns."""
    figures = dict(run.metadata or {})
    for key, column in COLUMN_FIGURES.items():
        if figures.get(key) is None and getattr(run, column, None) is not None:
            figures[key] = getattr(run, column)
    return figures


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class QaRow:
    """One QA figure across runs: values (None when missing) and deltas against the first run."""

    name: str
    unit: str
    description: str
    values: list[Any]
    displays: list[str]
    deltas: list[float | None]

    @property
    def delta_displays(self) -> list[str]:
        return ["" if d is None else format(d, "+.4g") for d in self.deltas]

    @property
    def cells(self) -> list[tuple[str, str]]:
        """``(value, delta)`` per run, for the template."""
        return list(zip(self.displays, self.delta_displays))

    @property
    def differs(self) -> bool:
        return len(set(self.displays)) > 1


def qa_comparison(summaries: Sequence[Sequence[SummaryRow]]) -> list[QaRow]:
    """QA figures of several runs side by side (rows: figures in summary order, then stage times).

    The delta of run i is ``value_i - value_0`` when both are numbers (None for the first run).
    Figures that no run has are left out.
    """
    names: list[str] = []
    info: dict[str, SummaryRow] = {}
    for rows in summaries:
        for row in rows:
            if row.name not in info:
                names.append(row.name)
                info[row.name] = row
    by_run = [{r.name: r for r in rows} for rows in summaries]
    out = []
    for name in names:
        cells = [runs.get(name) for runs in by_run]
        values = [c.value if c is not None else None for c in cells]
        if all(c is None or c.display == "—" for c in cells):
            continue  # a figure none of the runs has
        displays = [c.display if c is not None else "—" for c in cells]
        first = _number(values[0]) if values else None
        deltas: list[float | None] = [None]
        for value in values[1:]:
            v = _number(value)
            deltas.append(v - first if v is not None and first is not None else None)
        out.append(QaRow(name, info[name].unit, info[name].description, values, displays, deltas))
    return out


def qa_rows_for_runs(runs: Sequence[Any]) -> list[QaRow]:
    """:func:`qa_comparison` of the runs' figures (metadata completed by the columns) and stage times."""
    return qa_comparison([summary_rows(run_figures(r), r.timings or {}) for r in runs])


def qa_csv_columns(rows: Sequence[QaRow], run_ids: Sequence[int]) -> dict[str, NDArray]:
    """The comparison table as CSV columns: figure, unit, each run's value, each later run's delta."""
    cols: dict[str, NDArray] = {"figure": np.array([r.name for r in rows], dtype=str),
                                "unit": np.array([r.unit for r in rows], dtype=str)}
    for i, run_id in enumerate(run_ids):
        cols[f"run{run_id}"] = np.array(["" if r.displays[i] == "—" else _csv_value(r.values[i]) for r in rows],
                                        dtype=str)
    for i, run_id in enumerate(run_ids[1:], start=1):
        cols[f"run{run_id}_minus_run{run_ids[0]}"] = np.array(
            [np.nan if r.deltas[i] is None else r.deltas[i] for r in rows], dtype=float)
    return cols


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".7g")
    return str(value)


def config_csv_columns(rows: Sequence[ConfigRow], run_ids: Sequence[int]) -> dict[str, NDArray]:
    cols: dict[str, NDArray] = {"key": np.array([r.key for r in rows], dtype=str),
                                "differs": np.array([r.differs for r in rows], dtype=bool)}
    for i, run_id in enumerate(run_ids):
        cols[f"run{run_id}"] = np.array([r.values[i] for r in rows], dtype=str)
    return cols


__all__ = ["ConfigRow", "MISSING", "OutlierTest", "QaRow", "config_csv_columns",
           "config_differences", "flag_outliers", "flatten_config", "group_labels", "qa_comparison",
           "qa_csv_columns", "qa_rows_for_runs", "run_figures", "trend_table"]
