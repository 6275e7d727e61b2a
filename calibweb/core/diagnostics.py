"""Diagnostics of a run: its stored outputs as plain tables, for the plots and the CSV exports.

Everything here reads the files a successful run stored (written by
:mod:`calibration.outputs`), never the engine's objects in memory, and returns
plain data: a *table* is a ``dict`` of equal-length 1-d numpy arrays
(:data:`Columns`), images are 2-d arrays indexed ``[y, x]``, positions are
local 0-based pixels (the engine's conventions). No plotting here:
:mod:`calibweb.core.plots` turns these into Bokeh models; the views join the two.

Only :meth:`RunFiles.for_run` touches the database; every other function
takes a :class:`RunFiles` (file name -> path) or tables, so that it can be
tested on synthetic files.

What is sent to the browser is cut down here: only matched stars (at most
:data:`MAX_PLOTTED_ROWS` of them, a seeded sample with the clipped stars
first, while histograms, RMS and binned medians use every star), the
brightest :data:`MAX_LAYER_MARKERS` markers of an image layer, images
block-averaged to at most ``max_side`` pixels and scaled to 8 bits. The CSV
exports hold every row.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

Columns = dict[str, NDArray]

#: Files read (names as stored by ``calibration.outputs``).
CALEXP = "calexp.fits"
BACKGROUND = "calexpBackground.fits"
PSF = "psf.fits"
SOURCES = "src.parquet"
PHOTOM_MATCHES = "srcMatchFull.parquet"
ASTROM_MATCHES = "astromMatchFull.parquet"
METADATA = "metadata.json"

#: Sections of the diagnostics page and the file each needs.
SECTION_FILES = {"astrometry": ASTROM_MATCHES, "photometry": PHOTOM_MATCHES, "image": CALEXP}

#: 1 sigma in units of the interquartile range (Gaussian), as calibration.photocal.
IQ_TO_STDEV = 0.741301109252802
MAS_PER_DEG = 3.6e6


class DiagnosticsUnavailable(Exception):
    """A diagnostic cannot be built from this run's outputs; ``str()`` says why, for a person."""


# ----------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The stored output files of one run: ``name -> path``."""

    paths: Mapping[str, Path]

    @classmethod
    def for_run(cls, run) -> "RunFiles":
        """Files of a :class:`~calibweb.core.models.CalibrationRun` (its ``RunOutput`` rows)."""
        return cls({o.name: Path(o.file.path) for o in run.outputs.all()})

    @classmethod
    def in_directory(cls, directory: Path) -> "RunFiles":
        """Every file of a directory written by ``calibration.outputs.write_outputs``."""
        return cls({p.name: p for p in Path(directory).iterdir() if p.is_file()})

    def has(self, name: str) -> bool:
        return name in self.paths and Path(self.paths[name]).is_file()

    def path(self, name: str) -> Path:
        """Path of ``name``; :class:`DiagnosticsUnavailable` when the run has no such file."""
        if not self.has(name):
            raise DiagnosticsUnavailable(f"this run has no {name}")
        return Path(self.paths[name])

    def signature(self) -> str:
        """Changes when a file is added, removed or rewritten (for caches)."""
        parts = []
        for name in sorted(self.paths):
            path = Path(self.paths[name])
            if path.is_file():
                st = path.stat()
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


def available_sections(files: RunFiles) -> dict[str, bool]:
    """Which diagnostics sections this run's outputs can show."""
    return {section: files.has(name) for section, name in SECTION_FILES.items()}


def load_run_metadata(files: RunFiles) -> dict[str, Any]:
    """``metadata.json``: ``{"metadata", "timings_s", "warnings", "config"}`` (empty parts when absent)."""
    data: dict[str, Any] = {}
    if files.has(METADATA):
        data = json.loads(files.path(METADATA).read_text())
    return {"metadata": data.get("metadata") or {}, "timings_s": data.get("timings_s") or {},
            "warnings": data.get("warnings") or [], "config": data.get("config") or {}}


def _read_table(path: Path):
    from calibration.tables import read_table

    return read_table(path)


def read_calexp_wcs(files: RunFiles):
    """``(wcs, (ny, nx))`` of the calexp's IMAGE HDU; ``(None, shape)`` without a celestial WCS.

    ``(None, None)`` when the run has no calexp. The WCS is for local 0-based
    pixels (``origin=0`` in astropy's calls).
    """
    if not files.has(CALEXP):
        return None, None
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    header = fits.getheader(files.path(CALEXP), "IMAGE")
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        return None, shape
    return wcs, shape


def pixel_scale_mas(wcs) -> float:
    """Mean pixel scale (mas per pixel) of a celestial WCS at its reference point."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * MAS_PER_DEG)


# ----------------------------------------------------------------------------- tables


def _col(table, name: str, dtype=np.float64) -> NDArray:
    return np.asarray(table[name], dtype=dtype)


def _names(table) -> list[str]:
    return list(table.colnames) if hasattr(table, "colnames") else list(table)


def _status(n: int, *, used: NDArray, clipped: NDArray, reserved: NDArray) -> NDArray:
    """One label per star: ``reserved`` > ``clipped`` > ``used`` > ``unused`` (first that applies)."""
    out = np.full(n, "unused", dtype=object)
    out[used] = "used"
    out[clipped] = "clipped"
    out[reserved] = "reserved"
    return out.astype(str)


def to_csv(columns: Columns) -> str:
    """CSV text of a table: a header line, then one line per row (floats to 7 significant digits).

    Text cells that start like a spreadsheet formula get a leading ``'`` (OWASP's
    advice against CSV injection): instrument and filter names come from headers.
    """
    names = list(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    formatted = []
    for name in names:
        col = np.asarray(columns[name])
        if col.dtype.kind == "f":
            formatted.append(["" if not math.isfinite(v) else format(v, ".7g") for v in col.tolist()])
        elif col.dtype.kind == "b":
            formatted.append(["true" if v else "false" for v in col.tolist()])
        else:
            formatted.append([_safe_cell(v) for v in col.tolist()])
    writer.writerows(zip(*formatted))
    return buf.getvalue()


def _safe_cell(value: Any) -> str:
    """Text that a spreadsheet will not run as a formula (header strings are user input)."""
    text = str(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def histogram(values: NDArray, groups: Mapping[str, NDArray], *, bins: int = 40,
              half_range: float | None = None, log: bool = False) -> Columns:
    """Counts per bin of ``values`` for each boolean mask in ``groups``.

    Linear bins over ``[-half_range, half_range]`` (values beyond it are
    counted in the end bins, so no star disappears), or with ``log``
    logarithmic bins over the positive values. Returns ``left``, ``right``
    (bin edges) and one count column per group.
    """
    values = np.asarray(values, float)
    finite = np.isfinite(values)
    if log:
        pos = values[finite & (values > 0)]
        lo, hi = (float(pos.min()), float(pos.max())) if pos.size else (1e-3, 1.0)
        if hi <= lo:
            lo, hi = lo / 2.0, hi * 2.0
        edges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1)
        clipped_values = np.clip(values, edges[0], edges[-1] * (1 - 1e-12))
    else:
        if half_range is None or not half_range > 0:
            half_range = float(np.nanmax(np.abs(values[finite]))) if finite.any() else 1.0
            half_range = half_range or 1.0
        edges = np.linspace(-half_range, half_range, bins + 1)
        clipped_values = np.clip(values, -half_range, half_range * (1 - 1e-12))
    out: Columns = {"left": edges[:-1], "right": edges[1:]}
    for name, mask in groups.items():
        sel = np.asarray(mask, bool) & finite
        out[name] = np.histogram(clipped_values[sel], bins=edges)[0]
    return out


def robust_sigma(values: NDArray) -> float:
    """``0.741 * IQR`` of the finite values (NaN if none)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    q1, q3 = np.percentile(v, [25, 75])
    return float(IQ_TO_STDEV * (q3 - q1))


def rms(values: NDArray) -> float:
    """Root mean square of the finite values (NaN if none)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(np.sqrt(np.mean(v * v))) if v.size else float("nan")


#: Most stars sent to the browser per section's scatter plots. Canvas drawing costs
#: about 10 us per marker and plot in chromium, so 50,000 stars in 7 linked plots take
#: seconds to paint, and show no more than 5,000 do at 400 px. Histograms, RMS and the
#: binned medians are computed from every star; the CSV exports hold every star.
MAX_PLOTTED_ROWS = 5000


def decimate(table: Columns, *, max_rows: int | None, keep: NDArray | None = None, seed: int = 0,
             keep_fraction: float = 0.25) -> Columns:
    """At most ``max_rows`` rows of ``table``, in their order.

    Rows where ``keep`` is true (the rare clipped stars) are taken first, up
    to ``keep_fraction`` of the rows; the rest is a seeded random sample of
    the other rows. ``max_rows=None`` returns the table itself.
    """
    n = len(next(iter(table.values())))
    if max_rows is None or n <= max_rows:
        return table
    rng = np.random.default_rng(seed)
    first = np.flatnonzero(np.zeros(n, bool) if keep is None else np.asarray(keep, bool))
    cap = int(max_rows * keep_fraction)
    if first.size > cap:
        first = rng.choice(first, cap, replace=False)
    rest = np.setdiff1d(np.arange(n), first, assume_unique=True)
    chosen = np.sort(np.concatenate([first, rng.choice(rest, max_rows - first.size, replace=False)]))
    return {k: np.asarray(v)[chosen] for k, v in table.items()}


def binned_median(x: NDArray, y: NDArray, *, bins: int = 12, min_count: int = 5) -> Columns:
    """Median of ``y`` in equal-count bins of ``x``: ``x`` (bin median), ``median``, ``sigma`` (0.741 IQR), ``n``.

    Bins with fewer than ``min_count`` stars are left out.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: Columns = {"x": np.zeros(0), "median": np.zeros(0), "sigma": np.zeros(0), "n": np.zeros(0, np.int64)}
    if x.size < min_count:
        return out
    order = np.argsort(x, kind="stable")
    parts = [p for p in np.array_split(order, min(bins, max(1, x.size // min_count))) if p.size >= min_count]
    rows = [(np.median(x[p]), np.median(y[p]), robust_sigma(y[p]), p.size) for p in parts]
    return {"x": np.array([r[0] for r in rows]), "median": np.array([r[1] for r in rows]),
            "sigma": np.array([r[2] for r in rows]), "n": np.array([r[3] for r in rows], np.int64)}


def binned_vectors(x: NDArray, y: NDArray, u: NDArray, v: NDArray, *, shape: tuple[int, int],
                   stars_per_cell: int = 25, max_side: int = 20, min_count: int = 3) -> Columns:
    """Mean of the vectors ``(u, v)`` in a ``k x k`` grid of cells over the image.

    ``k`` gives about ``stars_per_cell`` stars per cell (2 to ``max_side``).
    Returns ``x, y`` (pix, cell centres), ``u, v`` (means) and ``n`` for the
    cells holding at least ``min_count`` stars.
    """
    x, y, u, v = (np.asarray(a, float) for a in (x, y, u, v))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(u) & np.isfinite(v)
    x, y, u, v = x[ok], y[ok], u[ok], v[ok]
    ny, nx = shape
    k = int(np.clip(round(math.sqrt(max(x.size, 1) / stars_per_cell)), 2, max_side))
    ix = np.clip(((x + 0.5) / nx * k).astype(int), 0, k - 1)
    iy = np.clip(((y + 0.5) / ny * k).astype(int), 0, k - 1)
    cell = iy * k + ix
    n = np.bincount(cell, minlength=k * k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.bincount(cell, u, minlength=k * k) / n
        mv = np.bincount(cell, v, minlength=k * k) / n
    good = n >= min_count
    cx = ((np.arange(k * k) % k) + 0.5) * nx / k - 0.5
    cy = ((np.arange(k * k) // k) + 0.5) * ny / k - 0.5
    return {"x": cx[good], "y": cy[good], "u": mu[good], "v": mv[good], "n": n[good]}


#: Above this many used stars the vector plot shows mean vectors per cell, not each star's.
VECTOR_GRID_MIN_STARS = 1000


# ------------------------------------------------------------------------- astrometry


@dataclasses.dataclass(frozen=True)
class AstrometryData:
    """What the astrometry plots show.

    Attributes
    ----------
    matches : Columns
        The astrometric matches plotted (see :func:`astrometry_table`): all of
        them, or :data:`MAX_PLOTTED_ROWS` of them, clipped stars first
        (:func:`decimate`).
    n_matches : int
        Number of matches in the run (``len(matches)`` unless decimated).
    vector_grid : Columns or None
        With more than :data:`VECTOR_GRID_MIN_STARS` used stars, their mean
        residual per cell (:func:`binned_vectors` of ``res_x_mas, res_y_mas``).
    trends : dict of str to Columns
        Binned median of the used stars' residuals, keyed ``"<residual>:<axis>"``
        (``dra_mas:x``, ``ddec_mas:ref_mag``, ...), from every star.
    histograms : dict of str to Columns
        ``dra_mas``, ``ddec_mas`` (counts per status) and ``distance_mas``
        (``before``/``after`` the fit), from :func:`astrometry_histograms`.
    distortion : Columns or None
        SIP distortion on a grid (:func:`sip_distortion_grid`); None without SIP.
    image_shape : (ny, nx) or None
        Shape of the exposure (pix).
    vector_frame : str
        ``"detector"`` when the residual vectors were turned into detector
        axes with the fitted WCS; ``"sky"`` when no WCS was available and
        north up, east left is assumed.
    rms_ra_mas, rms_dec_mas : float
        RMS of the used stars' residuals (mas).
    figures : dict
        Metadata QA figures (``ASTROM_RMS_MAS``, ``ASTROM_N_MATCHES``, ...).
    """

    matches: Columns
    n_matches: int
    vector_grid: Columns | None
    trends: dict[str, Columns]
    histograms: dict[str, Columns]
    distortion: Columns | None
    image_shape: tuple[int, int] | None
    vector_frame: str
    rms_ra_mas: float
    rms_dec_mas: float
    figures: dict[str, Any]


def astrometry_table(matches, *, wcs=None, src_mag: tuple[NDArray, NDArray] | None = None) -> Columns:
    """Plotted columns of an ``astromMatchFull`` table.

    Parameters
    ----------
    matches : astropy.table.Table or mapping
        Columns ``ref_id, src_id, src_x, src_y, dra_mas, ddec_mas,
        distance_arcsec, initial_distance_arcsec, used, clipped, reserved``
        and, when the reference catalogue has the band, ``ref_mag``.
        ``dra_mas, ddec_mas`` are reference minus fitted position: along +RA
        (east) times cos(dec), and along +Dec.
    wcs : astropy.wcs.WCS, optional
        The fitted WCS: turns ``(dra, ddec)`` into detector axes with the
        local linear part (``pixel_scale_matrix``). Without it the vectors
        are drawn as if north were up and east left (``res_x = -dra``).
    src_mag : (ids, mags), optional
        Calibrated magnitudes of the sources by id (from ``src.parquet``).

    Returns
    -------
    Columns
        ``src_id, ref_id, x, y`` (pix), ``ref_mag``, ``src_mag`` (mag, NaN
        when unknown), ``dra_mas, ddec_mas``, ``res_x_mas, res_y_mas``
        (residual along detector +x, +y, mas), ``distance_mas,
        initial_distance_mas`` and ``status`` (``used``, ``clipped``,
        ``reserved``, ``unused``).
    """
    n = len(matches["src_id"])
    dra, ddec = _col(matches, "dra_mas"), _col(matches, "ddec_mas")
    if wcs is not None:
        # pixel_scale_matrix: d(xi, eta)/d(x, y) in deg/pix, xi towards +RA (east).
        inverse = np.linalg.inv(wcs.celestial.pixel_scale_matrix * MAS_PER_DEG)  # pix/mas
        scale = pixel_scale_mas(wcs)
        res_x = (inverse[0, 0] * dra + inverse[0, 1] * ddec) * scale
        res_y = (inverse[1, 0] * dra + inverse[1, 1] * ddec) * scale
    else:
        res_x, res_y = -dra, ddec
    src_ids = _col(matches, "src_id", np.int64)
    mags = np.full(n, np.nan)
    if src_mag is not None:
        ids, values = np.asarray(src_mag[0], np.int64), np.asarray(src_mag[1], float)
        order = np.argsort(ids)
        pos = np.clip(np.searchsorted(ids[order], src_ids), 0, max(ids.size - 1, 0))
        if ids.size:
            found = ids[order][pos] == src_ids
            mags[found] = values[order][pos[found]]
    return {
        "src_id": src_ids,
        "ref_id": _col(matches, "ref_id", np.int64),
        "x": _col(matches, "src_x"),
        "y": _col(matches, "src_y"),
        "ref_mag": _col(matches, "ref_mag") if "ref_mag" in _names(matches) else np.full(n, np.nan),
        "src_mag": mags,
        "dra_mas": dra,
        "ddec_mas": ddec,
        "res_x_mas": res_x,
        "res_y_mas": res_y,
        "distance_mas": _col(matches, "distance_arcsec") * 1000.0,
        "initial_distance_mas": _col(matches, "initial_distance_arcsec") * 1000.0,
        "status": _status(n, used=_col(matches, "used", bool), clipped=_col(matches, "clipped", bool),
                          reserved=_col(matches, "reserved", bool)),
    }


def astrometry_histograms(table: Columns, *, bins: int = 40) -> dict[str, Columns]:
    """Residual histograms (per status) and match distances before and after the fit."""
    status = table["status"]
    groups = {name: status == name for name in ("used", "clipped", "reserved")}
    out = {}
    for comp in ("dra_mas", "ddec_mas"):
        sigma = robust_sigma(table[comp][groups["used"]])
        half = 6.0 * sigma if math.isfinite(sigma) and sigma > 0 else None
        out[comp] = histogram(table[comp], groups, bins=bins, half_range=half)
    both = np.concatenate([table["initial_distance_mas"], table["distance_mas"]])
    n = len(status)
    dist = histogram(both, {"before": np.arange(2 * n) < n, "after": np.arange(2 * n) >= n}, bins=bins, log=True)
    out["distance_mas"] = dist
    return out


def sip_distortion_grid(wcs, shape: tuple[int, int], *, n: int = 16) -> Columns | None:
    """SIP distortion (focal minus linear pixel position) on an ``n x n`` grid of the image.

    Returns ``x, y`` (pix, local 0-based cell centres), ``dx_pix, dy_pix``
    and ``length_pix``; None when the WCS has no SIP terms.
    """
    if wcs is None or getattr(wcs, "sip", None) is None:
        return None
    ny, nx = shape
    gx = (np.arange(n) + 0.5) * nx / n - 0.5
    gy = (np.arange(n) + 0.5) * ny / n - 0.5
    xx, yy = (a.ravel() for a in np.meshgrid(gx, gy))
    # astropy returns x - CRPIX + A(u, v) (x in the origin's convention, u = x + 1 - CRPIX).
    foc = wcs.sip_pix2foc(np.column_stack([xx, yy]), 0)
    dx = foc[:, 0] - (xx - wcs.wcs.crpix[0])
    dy = foc[:, 1] - (yy - wcs.wcs.crpix[1])
    return {"x": xx, "y": yy, "dx_pix": dx, "dy_pix": dy, "length_pix": np.hypot(dx, dy)}


def _source_mags(files: RunFiles) -> tuple[NDArray, NDArray] | None:
    if not files.has(SOURCES):
        return None
    src = _read_table(files.path(SOURCES))
    if "mag" not in src.colnames:
        return None
    return np.asarray(src["id"], np.int64), np.asarray(src["mag"], float)


def astrometry_summary(table: Columns, *, shape: tuple[int, int] | None, vector_frame: str,
                       distortion: Columns | None = None, figures: Mapping[str, Any] | None = None,
                       max_points: int | None = MAX_PLOTTED_ROWS) -> AstrometryData:
    """Everything the astrometry plots need from an :func:`astrometry_table` (pure)."""
    used = table["status"] == "used"
    trends = {f"{comp}:{axis}": binned_median(table[axis][used], table[comp][used])
              for comp in ("dra_mas", "ddec_mas") for axis in ("x", "y", "ref_mag")}
    grid = None
    if used.sum() > VECTOR_GRID_MIN_STARS:
        extent = shape or (int(np.nanmax(table["y"])) + 1, int(np.nanmax(table["x"])) + 1)
        grid = binned_vectors(table["x"][used], table["y"][used], table["res_x_mas"][used], table["res_y_mas"][used],
                              shape=extent)
    return AstrometryData(
        matches=decimate(table, max_rows=max_points, keep=table["status"] == "clipped"),
        n_matches=len(used),
        vector_grid=grid,
        trends=trends,
        histograms=astrometry_histograms(table),
        distortion=distortion,
        image_shape=shape,
        vector_frame=vector_frame,
        rms_ra_mas=rms(table["dra_mas"][used]),
        rms_dec_mas=rms(table["ddec_mas"][used]),
        figures=dict(figures or {}),
    )


def astrometry_data(files: RunFiles, *, max_points: int | None = MAX_PLOTTED_ROWS) -> AstrometryData:
    """Load the astrometric matches, residuals in detector axes and the SIP pattern."""
    if not files.has(ASTROM_MATCHES):
        raise DiagnosticsUnavailable("no astrometric fit in this run")
    wcs, shape = read_calexp_wcs(files)
    table = astrometry_table(_read_table(files.path(ASTROM_MATCHES)), wcs=wcs, src_mag=_source_mags(files))
    md = load_run_metadata(files)["metadata"]
    keys = ("ASTROM_RMS_MAS", "ASTROM_N_MATCHES", "ASTROM_N_USED", "SFM_ASTROM_OFFSET_MEAN", "SFM_ASTROM_OFFSET_STD")
    return astrometry_summary(
        table, shape=shape, vector_frame="detector" if wcs is not None else "sky",
        distortion=sip_distortion_grid(wcs, shape) if shape else None, figures={k: md.get(k) for k in keys},
        max_points=max_points,
    )


# ------------------------------------------------------------------------- photometry


@dataclasses.dataclass(frozen=True)
class PhotometryData:
    """What the photometry plots show.

    Attributes
    ----------
    matches : Columns
        The photometric matches plotted (see :func:`photometry_table`; at
        most :data:`MAX_PLOTTED_ROWS`, clipped stars first).
    n_matches : int
    trends : dict of str to Columns
        Binned median of the used stars' ``dmag`` against ``ref_mag``,
        ``colour``, ``x``, ``y`` (keyed by the axis), from every star.
    histogram : Columns
        Residual counts per status (:func:`histogram`).
    band, colour_label : str
        Calibrated reference band; colour axis label (``""`` without a second band).
    zero_point_mag : float
        Zero point for the exposure (``ref_mag = inst_mag + zero_point_mag``).
    clip_centre_mag, clip_halfwidth_mag : float
        Clipping limits ``centre +- halfwidth`` on the residuals (mag).
    scatter_mag, formal_error_mag : float
        Robust star-to-star scatter and formal error of the zero point (mag).
    n_used : int
    image_shape : (ny, nx) or None
    """

    matches: Columns
    n_matches: int
    trends: dict[str, Columns]
    histogram: Columns
    band: str
    colour_label: str
    zero_point_mag: float
    clip_centre_mag: float
    clip_halfwidth_mag: float
    scatter_mag: float
    formal_error_mag: float
    n_used: int
    image_shape: tuple[int, int] | None


def photometry_table(matches, *, band: str, flux_field: str = "psf_flux", colour_band: str | None = None) -> Columns:
    """Plotted columns of a ``srcMatchFull`` table.

    ``inst_mag = -2.5 log10(src_<flux_field>)`` and ``dmag = ref_<band>_mag -
    inst_mag`` as in ``calibration.photometry``; ``residual_mag`` is the
    engine's (``dmag`` minus zero point and model terms; NaN for stars not
    selected). ``colour = ref_<band>_mag - ref_<colour_band>_mag`` (NaN
    without a colour band). ``status``: ``reserved``, ``clipped``, ``used``
    or ``unused``.
    """
    n = len(matches["src_id"])
    flux = _col(matches, f"src_{flux_field}")
    with np.errstate(divide="ignore", invalid="ignore"):
        inst = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    ref = _col(matches, f"ref_{band}_mag")
    colour = ref - _col(matches, f"ref_{colour_band}_mag") if colour_band else np.full(n, np.nan)
    residual = (_col(matches, "photocal_residual_mag") if "photocal_residual_mag" in _names(matches)
                else np.full(n, np.nan))
    return {
        "src_id": _col(matches, "src_id", np.int64),
        "ref_id": _col(matches, "ref_id", np.int64),
        "x": _col(matches, "src_x"),
        "y": _col(matches, "src_y"),
        "ref_mag": ref,
        "inst_mag": inst,
        "dmag": ref - inst,
        "residual_mag": residual,
        "colour": colour,
        "status": _status(n, used=_col(matches, "photocal_used", bool), clipped=_col(matches, "photocal_clipped", bool),
                          reserved=_col(matches, "photocal_reserved", bool)),
    }


def clip_limits(residual_used: NDArray, *, n_sigma: float, sigma_max_mag: float | None) -> tuple[float, float]:
    """``(centre, halfwidth)`` of the last clip of ``calibration.photocal``, from its survivors.

    When the engine clipped a star, its last iteration computed the clip from
    the surviving stars (median, ``0.741 * IQR`` with its quartile indices,
    capped at ``sigma_max_mag``) and stopped because they no longer changed:
    this recomputes that clip exactly. When nothing was clipped the engine may
    have stopped at its first, histogram-based clip, which the survivors do
    not give; the caller then does not draw limits (see :func:`photometry_data`).
    """
    d = np.sort(np.asarray(residual_used, float)[np.isfinite(residual_used)])
    n = d.size
    if n == 0:
        return float("nan"), float("nan")
    q3, q1 = d[min(int(0.75 * n + 0.5), n - 1)], d[min(int(0.25 * n + 0.5), n - 1)]
    sig = IQ_TO_STDEV * (q3 - q1)
    if sigma_max_mag is not None:
        sig = min(sig, sigma_max_mag)
    return float(np.median(d)), float(n_sigma * sig)


def _other_band(colnames, band: str, preferred: str | None) -> str | None:
    bands = [c[len("ref_"): -len("_mag")] for c in colnames if c.startswith("ref_") and c.endswith("_mag")]
    if preferred and preferred in bands and preferred != band:
        return preferred
    others = [b for b in bands if b != band]
    return others[0] if others else None


def photometry_summary(table: Columns, *, band: str, colour_label: str = "", zero_point_mag: float | None = None,
                       n_sigma: float = 3.0, sigma_max_mag: float | None = 0.25, clip_sigma_mag: float | None = None,
                       scatter_mag: float | None = None, formal_error_mag: float | None = None,
                       image_shape: tuple[int, int] | None = None,
                       max_points: int | None = MAX_PLOTTED_ROWS) -> PhotometryData:
    """Everything the photometry plots need from a :func:`photometry_table` (pure).

    ``zero_point_mag``, ``scatter_mag`` and ``clip_sigma_mag`` are the
    engine's figures when known (metadata); otherwise the zero point and
    scatter are estimated from the used stars and the clipping limits from
    the survivors (:func:`clip_limits`), or not drawn when no star was clipped.
    """
    used = table["status"] == "used"
    res_used = table["residual_mag"][used]
    if clip_sigma_mag is not None:
        centre, half = float(np.median(res_used)) if used.any() else 0.0, n_sigma * float(clip_sigma_mag)
    elif (table["status"] == "clipped").any():
        centre, half = clip_limits(res_used, n_sigma=n_sigma, sigma_max_mag=sigma_max_mag)
    else:
        centre, half = float(np.median(res_used)) if used.any() else float("nan"), float("nan")
    scatter = float(scatter_mag) if scatter_mag is not None else robust_sigma(res_used)
    if zero_point_mag is None:
        zero_point_mag = float(np.nanmedian(table["dmag"][used])) if used.any() else float("nan")
    groups = {name: table["status"] == name for name in ("used", "clipped", "reserved")}
    widths = [w for w in (2.0 * half, 5.0 * scatter) if math.isfinite(w) and w > 0]
    return PhotometryData(
        matches=decimate(table, max_rows=max_points, keep=table["status"] == "clipped"),
        n_matches=len(used),
        trends={axis: binned_median(table[axis][used], table["dmag"][used]) for axis in ("ref_mag", "colour", "x", "y")},
        histogram=histogram(table["residual_mag"], groups, half_range=max(widths) if widths else None),
        band=band,
        colour_label=colour_label,
        zero_point_mag=float(zero_point_mag),
        clip_centre_mag=centre,
        clip_halfwidth_mag=half,
        scatter_mag=scatter,
        formal_error_mag=float(formal_error_mag) if formal_error_mag is not None else float("nan"),
        n_used=int(used.sum()),
        image_shape=image_shape,
    )


def photometry_data(files: RunFiles, *, max_points: int | None = MAX_PLOTTED_ROWS) -> PhotometryData:
    """Load the photometric matches with the zero point and clipping limits."""
    if not files.has(PHOTOM_MATCHES):
        raise DiagnosticsUnavailable("no photometric calibration in this run")
    meta = load_run_metadata(files)
    md, pc = meta["metadata"], meta["config"].get("photocal", {})
    raw = _read_table(files.path(PHOTOM_MATCHES))
    band = md.get("PHOTOM_BAND") or _other_band(raw.colnames, "", None)
    if not band or f"ref_{band}_mag" not in raw.colnames:
        raise DiagnosticsUnavailable("the photometric matches have no reference magnitude of the calibrated band")
    colour_band = _other_band(raw.colnames, band, pc.get("colorterm_secondary"))
    flux_field = md.get("PHOTOM_FLUX_FIELD") or pc.get("flux_field") or "psf_flux"
    _, shape = read_calexp_wcs(files)
    return photometry_summary(
        photometry_table(raw, band=band, flux_field=flux_field, colour_band=colour_band),
        band=band, colour_label=f"{band} - {colour_band}" if colour_band else "",
        # inst mags here are of the calibration flux, without the total-flux factor
        zero_point_mag=md.get("ZERO_POINT_MAG_CALIB_APERTURE", md.get("ZERO_POINT_MAG")),
        n_sigma=float(pc.get("n_sigma", 3.0)),
        sigma_max_mag=pc.get("sigma_max_mag", 0.25), clip_sigma_mag=md.get("PHOTOM_CLIP_SIGMA_MAG"),
        scatter_mag=md.get("PHOTOM_SCATTER_MAG"), formal_error_mag=md.get("MAGZERO_RMS"), image_shape=shape,
        max_points=max_points,
    )


# ------------------------------------------------------------------------------ image


def block_factor(shape: tuple[int, ...], max_side: int) -> int:
    """Smallest block size ``f`` such that no side of ``shape`` divided into ``f``-pixel blocks exceeds ``max_side``."""
    return max(1, math.ceil(max(shape) / max_side))


def block_average(image: NDArray, max_side: int) -> tuple[NDArray[np.float32], int]:
    """Mean over ``f x f`` blocks (NaN ignored) so that no side exceeds ``max_side``; ``(image, f)``.

    Edge blocks are padded with NaN (not dropped), so block ``[j, i]`` covers
    pixels ``[j f, (j + 1) f)`` and the result spans the whole image.
    """
    image = np.asarray(image, np.float32)
    ny, nx = image.shape
    f = block_factor(image.shape, max_side)
    if f == 1:
        return image.copy(), 1
    py, px = -ny % f, -nx % f
    padded = np.pad(image, ((0, py), (0, px)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block stays NaN
        return np.nanmean(blocks, axis=(1, 3)).astype(np.float32), f


def background_image(path, max_side: int) -> tuple[NDArray[np.float32] | None, int]:
    """The subtracted sky level of a ``calexpBackground.fits``, block-averaged to ``max_side``; ``(image, f)``.

    Averaged from the stored mesh without the full plane (files of earlier
    versions hold the plane itself); ``(None, 1)`` when the file is not a
    background model.
    """
    from astropy.io import fits

    from calibration.background import BackgroundModel
    from calibration.errors import CalibrationError

    with fits.open(path, memmap=True) as hdul:
        if "LEVEL" in hdul:
            return block_average(np.asarray(hdul["LEVEL"].data, np.float32), max_side)
        try:
            model = BackgroundModel.from_hdulist(hdul)
        except CalibrationError:
            return None, 1
    f = block_factor(model.shape, max_side)
    # From the mesh: the full plane would cost 64 MB and 0.2 s for a 4096x4096 image.
    return model.binned_level(f), f


def to_uint8(image: NDArray, *, stretch: str) -> NDArray[np.uint8]:
    """Display levels 0-255 of an image: ``zscale`` (linear between IRAF zscale limits) or ``asinh``.

    ``asinh`` takes the zscale lower limit as black and the 99.8th percentile
    as white, with ``asinh(x / 0.1)`` in between. NaN becomes 0.
    """
    from astropy.visualization import AsinhStretch, ZScaleInterval

    data = np.asarray(image, float)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.uint8)
    lo, hi = ZScaleInterval().get_limits(data[finite])
    if stretch == "asinh":
        hi = max(float(np.percentile(data[finite], 99.8)), hi)
        norm = np.clip((data - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        norm = AsinhStretch(a=0.1)(np.where(finite, norm, 0.0))
    elif stretch == "zscale":
        norm = np.clip((data - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    else:
        raise ValueError(f"stretch must be 'zscale' or 'asinh', got {stretch!r}")
    return np.where(finite, np.round(norm * 255.0), 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class PsfData:
    """PSF model at a few positions and its FWHM over the field.

    Attributes
    ----------
    stamps : ndarray, shape (n, k, k)
        Model images (sum 1) at ``stamp_x, stamp_y`` (pix).
    stamp_fwhm_pix : ndarray, shape (n,)
    fwhm : Columns
        ``x, y`` (pix, grid cell centres), ``fwhm_pix`` on a ``grid_n x grid_n`` grid.
    grid_n : int
    kind : str
        ``pixel`` or ``moffat``.
    """

    stamps: NDArray
    stamp_x: NDArray
    stamp_y: NDArray
    stamp_fwhm_pix: NDArray
    fwhm: Columns
    grid_n: int
    kind: str


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Quick-look of the calibrated exposure with overlay layers, background and PSF.

    Attributes
    ----------
    zscale, asinh : ndarray of uint8, shape (my, mx)
        Display levels of the block-averaged image (see :func:`to_uint8`).
    shape : (ny, nx)
        Full-resolution shape; the quick-look covers pixels ``-0.5 .. nx - 0.5``.
    factor : int
        Block size of the quick-look (1: full resolution).
    layers : dict of str to Columns
        Overlay markers: ``x, y`` (pix), ``id`` and ``mag`` (NaN if unknown);
        the brightest :data:`MAX_LAYER_MARKERS` of each layer.
    layer_totals : dict of str to int
        Markers of each layer before that cut.
    background : ndarray of float32 or None
        Block-averaged background model that was subtracted (ADU).
    background_factor : int
    psf : PsfData or None
    """

    zscale: NDArray[np.uint8]
    asinh: NDArray[np.uint8]
    shape: tuple[int, int]
    factor: int
    layers: dict[str, Columns]
    layer_totals: dict[str, int]
    background: NDArray[np.float32] | None
    background_factor: int
    psf: PsfData | None


#: Overlay layers, in legend order.
LAYERS = ("detected sources", "PSF stars (used)", "PSF stars (reserved)", "matched reference stars", "sky sources")


#: Most markers per overlay layer: the brightest are kept (see MAX_PLOTTED_ROWS).
MAX_LAYER_MARKERS = 5000


def brightest(layer: Columns, max_rows: int | None) -> Columns:
    """The ``max_rows`` brightest rows of a marker table (by ``mag``; unknown magnitudes last)."""
    n = len(layer["x"])
    if max_rows is None or n <= max_rows:
        return layer
    mag = np.where(np.isfinite(layer["mag"]), layer["mag"], np.inf)
    chosen = np.sort(np.argsort(mag, kind="stable")[:max_rows])
    return {k: np.asarray(v)[chosen] for k, v in layer.items()}


def overlay_layers(sources, *, reference: Columns | None = None) -> dict[str, Columns]:
    """Marker tables per layer from a ``src`` table (and matched reference stars in pixels)."""
    n = len(sources["id"])
    names = _names(sources)

    def flag(name: str) -> NDArray:
        return _col(sources, name, bool) if name in names else np.zeros(n, bool)

    base = {"id": _col(sources, "id", np.int64), "x": _col(sources, "x"), "y": _col(sources, "y"),
            "mag": _col(sources, "mag") if "mag" in names else np.full(n, np.nan)}
    sky = flag("sky_source")
    masks = {"detected sources": ~sky, "PSF stars (used)": flag("calib_psf_used"),
             "PSF stars (reserved)": flag("calib_psf_reserved"), "sky sources": sky}
    layers = {name: {k: v[mask] for k, v in base.items()} for name, mask in masks.items()}
    empty = {"id": np.zeros(0, np.int64), "x": np.zeros(0), "y": np.zeros(0), "mag": np.zeros(0)}
    layers["matched reference stars"] = reference if reference is not None else empty
    return {name: layers[name] for name in LAYERS}


def reference_positions(matches, *, wcs=None) -> Columns:
    """Matched reference stars in pixels: the WCS at ``ref_ra, ref_dec`` (else the source position)."""
    names = _names(matches)
    x, y = _col(matches, "src_x"), _col(matches, "src_y")
    if wcs is not None and "ref_ra" in names and "ref_dec" in names:
        rx, ry = wcs.celestial.all_world2pix(_col(matches, "ref_ra"), _col(matches, "ref_dec"), 0, quiet=True)
        x, y = np.where(np.isfinite(rx), rx, x), np.where(np.isfinite(ry), ry, y)
    mag_col = "ref_mag" if "ref_mag" in names else next(
        (c for c in names if c.startswith("ref_") and c.endswith("_mag")), None)
    n = len(x)
    return {"id": _col(matches, "ref_id", np.int64), "x": x, "y": y,
            "mag": _col(matches, mag_col) if mag_col else np.full(n, np.nan)}


def psf_data(files: RunFiles, *, n_side: int = 3, stamp_pix: int = 25, grid_n: int = 8) -> PsfData | None:
    """PSF model images on an ``n_side x n_side`` grid of positions and the FWHM on a ``grid_n`` grid."""
    if not files.has(PSF):
        return None
    from astropy.io import fits

    from calibration.psfmodel import psf_model_from_hdulist

    with fits.open(files.path(PSF)) as hdul:
        model = psf_model_from_hdulist(hdul)
    ny, nx = model.image_shape

    def cells(n: int) -> tuple[NDArray, NDArray]:
        gx = (np.arange(n) + 0.5) * nx / n - 0.5
        gy = (np.arange(n) + 0.5) * ny / n - 0.5
        xx, yy = np.meshgrid(gx, gy)
        return xx.ravel(), yy.ravel()

    sx, sy = cells(n_side)
    stamps = model.image_at(np.round(sx), np.round(sy), shape=(stamp_pix, stamp_pix))
    gx, gy = cells(grid_n)
    fwhm = np.asarray(model.fwhm_pix_at(np.concatenate([gx, np.round(sx)]), np.concatenate([gy, np.round(sy)])))
    return PsfData(
        stamps=np.asarray(stamps, np.float32), stamp_x=np.round(sx), stamp_y=np.round(sy),
        stamp_fwhm_pix=fwhm[gx.size:], fwhm={"x": gx, "y": gy, "fwhm_pix": fwhm[: gx.size]},
        grid_n=grid_n, kind=model.kind,
    )


def image_data(files: RunFiles, *, max_side: int = 1024, background_max_side: int = 256,
               max_markers: int | None = MAX_LAYER_MARKERS) -> ImageData:
    """Quick-look, overlay layers, background and PSF panel of a run."""
    from astropy.io import fits

    if not files.has(CALEXP):
        raise DiagnosticsUnavailable("this run has no calibrated exposure (calexp.fits)")
    with fits.open(files.path(CALEXP), memmap=True) as hdul:
        full = np.asarray(hdul["IMAGE"].data, dtype=np.float32)
        shape = full.shape
        small, factor = block_average(full, max_side)
        del full
    wcs, _ = read_calexp_wcs(files)
    layers = overlay_layers({"id": np.zeros(0, np.int64), "x": np.zeros(0), "y": np.zeros(0)})
    reference = None
    if files.has(ASTROM_MATCHES):
        reference = reference_positions(_read_table(files.path(ASTROM_MATCHES)), wcs=wcs)
    elif files.has(PHOTOM_MATCHES):
        reference = reference_positions(_read_table(files.path(PHOTOM_MATCHES)), wcs=wcs)
    if files.has(SOURCES):
        layers = overlay_layers(_read_table(files.path(SOURCES)), reference=reference)
    elif reference is not None:
        layers["matched reference stars"] = reference
    background, bfactor = None, 1
    if files.has(BACKGROUND):
        background, bfactor = background_image(files.path(BACKGROUND), background_max_side)
    return ImageData(
        zscale=to_uint8(small, stretch="zscale"), asinh=to_uint8(small, stretch="asinh"),
        shape=(int(shape[0]), int(shape[1])), factor=factor,
        layers={name: brightest(layer, max_markers) for name, layer in layers.items()},
        layer_totals={name: len(layer["x"]) for name, layer in layers.items()},
        background=background, background_factor=bfactor, psf=psf_data(files),
    )


def section_data(files: RunFiles, section: str):
    """The data of one page section: ``astrometry``, ``photometry`` or ``image``."""
    loaders = {"astrometry": astrometry_data, "photometry": photometry_data, "image": image_data}
    if section not in loaders:
        raise DiagnosticsUnavailable(f"unknown diagnostics section {section!r}")
    return loaders[section](files)


# ------------------------------------------------------------------------------ cache

#: Directory, next to a run's outputs, of the serialised plots (derived data: safe to delete).
CACHE_DIR = ".diagnostics-cache"


def cached(files: RunFiles, *, name: str, version: str, build: Callable[[], bytes]) -> bytes:
    """``build()``, kept on disk next to the run's outputs and returned from there next time.

    A finished run's outputs do not change, and building a section's Bokeh
    models costs a second or more of Python per request, so the result is
    stored under a name made of ``name`` (e.g. ``astrometry.json``),
    ``version`` (of the plotting code) and :meth:`RunFiles.signature`; a
    changed output or version builds anew (and removes the stale file).
    Where the store is not writable the result is simply not kept.
    """
    key = hashlib.sha256(f"{version}\n{files.signature()}".encode()).hexdigest()[:16]
    stem, dot, suffix = name.partition(".")
    directory = _cache_dir(files)
    target = directory / f"{stem}-{key}{dot}{suffix}" if directory else None
    if target is not None and target.is_file():
        return target.read_bytes()
    body = build()
    if target is not None:
        try:
            directory.mkdir(exist_ok=True)
            for stale in directory.glob(f"{stem}-*{dot}{suffix}"):
                stale.unlink(missing_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError:
            log.warning("could not keep the diagnostics cache %s", target, exc_info=True)
    return body


def _cache_dir(files: RunFiles) -> Path | None:
    parents = {Path(p).parent for p in files.paths.values()}
    return next(iter(parents)) / CACHE_DIR if len(parents) == 1 else None


def all_section_data(files: RunFiles) -> dict[str, Any]:
    """Every section's data, or the reason (a string) why it cannot be shown: for the report."""
    out: dict[str, Any] = {}
    for section in SECTION_FILES:
        try:
            out[section] = section_data(files, section)
        except DiagnosticsUnavailable as exc:
            out[section] = str(exc)
    return out


# ---------------------------------------------------------------------------- summary


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One QA figure: its name, value (None if the run has none), unit and meaning."""

    name: str
    value: float | int | str | None
    unit: str
    description: str

    @property
    def display(self) -> str:
        """The value for a person (``—`` when missing)."""
        v = self.value
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "—"
        if isinstance(v, bool) or isinstance(v, str):
            return str(v)
        if isinstance(v, int):
            return str(v)
        return format(v, ".4g") if abs(v) < 1e4 else format(v, ".6g")


#: (metadata key, unit, description), in display order.
SUMMARY_FIGURES = (
    ("MAGZERO", "mag", "zero point for 1 s"),
    ("MAGZERO_RMS", "mag", "formal error of the zero point"),
    ("MAGZERO_NOBJ", "stars", "stars used in the zero point"),
    ("ZERO_POINT_MAG", "mag", "zero point for the exposure time"),
    ("PHOTOM_SCATTER_MAG", "mag", "robust star-to-star scatter of the zero point"),
    ("PHOTOM_RESERVED_SCATTER_MAG", "mag", "scatter of the reserved stars"),
    ("PHOTOM_RESERVED_BIAS_MAG", "mag", "median residual of the reserved stars"),
    ("COLORTERM1", "mag", "colour term c0"),
    ("COLORTERM2", "mag/mag", "colour term c1"),
    ("COLORTERM3", "mag/mag²", "colour term c2"),
    ("N_PHOTOM_MATCHES", "matches", "photometric matches"),
    ("SFM_ASTROM_OFFSET_MEAN", "arcsec", "mean match distance after the WCS fit"),
    ("SFM_ASTROM_OFFSET_STD", "arcsec", "standard deviation of the match distances after the fit"),
    ("ASTROM_RMS_MAS", "mas", "RMS of the astrometric residuals"),
    ("ASTROM_N_MATCHES", "matches", "astrometric matches"),
    ("ASTROM_N_USED", "stars", "stars used in the astrometric fit"),
    ("N_SOURCES", "sources", "sources in the output catalogue"),
    ("PSF_FWHM_PIX", "pix", "PSF FWHM (median over the field)"),
    ("PSF_FWHM_ARCSEC", "arcsec", "PSF FWHM"),
    ("PSF_ELLIPTICITY", "", "median PSF ellipticity |e|"),
    ("SKY_NOISE_ADU", "ADU/pix", "per-pixel sky noise from sky sources"),
    ("BGMEAN", "ADU", "mean background level"),
)


def summary_rows(metadata: Mapping[str, Any], timings_s: Mapping[str, float]) -> list[SummaryRow]:
    """QA figures of a run with their units, then the time of each stage and the total."""
    rows = [SummaryRow(key, metadata.get(key), unit, text) for key, unit, text in SUMMARY_FIGURES]
    for stage, seconds in timings_s.items():
        rows.append(SummaryRow(f"time: {stage}", float(seconds), "s", f"wall-clock time of stage {stage}"))
    if timings_s:
        rows.append(SummaryRow("time: total", float(sum(timings_s.values())), "s", "sum of the stage times"))
    return rows


def summary_columns(rows: list[SummaryRow]) -> Columns:
    return {"name": np.array([r.name for r in rows]), "value": np.array([r.display for r in rows]),
            "unit": np.array([r.unit for r in rows]), "description": np.array([r.description for r in rows])}


# ------------------------------------------------------------------------ CSV exports


#: Dataset name -> (section, description). One CSV endpoint each.
DATASETS = {
    "summary": ("summary", "QA figures with units"),
    "astrometry-matches": ("astrometry", "astrometric matches: positions, residuals, distances, status"),
    "astrometry-histograms": ("astrometry", "histograms of the residuals and match distances"),
    "astrometry-distortion": ("astrometry", "SIP distortion on a grid"),
    "photometry-matches": ("photometry", "photometric matches: magnitudes, residuals, status"),
    "photometry-histogram": ("photometry", "histogram of the zero-point residuals"),
    "image-overlays": ("image", "markers of the quick-look layers"),
    "image-quicklook": ("image", "block-averaged quick-look levels (0-255, zscale)"),
    "image-background": ("image", "block-averaged background model"),
    "psf-fwhm": ("image", "PSF FWHM over the field"),
    "psf-stamps": ("image", "PSF model images at a few positions"),
}


def _image_long(image: NDArray, factor: int, value: str) -> Columns:
    my, mx = image.shape
    jj, ii = np.mgrid[0:my, 0:mx]
    return {"x_pix": (ii.ravel() + 0.5) * factor - 0.5, "y_pix": (jj.ravel() + 0.5) * factor - 0.5,
            value: image.ravel()}


def _concat(parts: list[Columns], label: str, labels: list[str]) -> Columns:
    out: Columns = {label: np.concatenate([np.full(len(next(iter(p.values()))), name) for p, name in zip(parts, labels)])}
    for key in parts[0]:
        out[key] = np.concatenate([p[key] for p in parts])
    return out


def dataset(files: RunFiles, name: str) -> Columns:
    """The table behind a plot, by dataset name (:data:`DATASETS`).

    Raises
    ------
    DiagnosticsUnavailable
        Unknown name, or the run lacks what the dataset is made from.
    """
    if name not in DATASETS:
        raise DiagnosticsUnavailable(f"unknown dataset {name!r}")
    if name == "summary":
        meta = load_run_metadata(files)
        return summary_columns(summary_rows(meta["metadata"], meta["timings_s"]))
    if name.startswith("astrometry"):
        data = astrometry_data(files, max_points=None)
        if name == "astrometry-matches":
            return data.matches
        if name == "astrometry-histograms":
            res = [{"left": h["left"], "right": h["right"], "used": h["used"], "clipped": h["clipped"],
                    "reserved": h["reserved"]} for h in (data.histograms["dra_mas"], data.histograms["ddec_mas"])]
            return _concat(res, "quantity", ["dra_mas", "ddec_mas"])
        if data.distortion is None:
            raise DiagnosticsUnavailable("the fitted WCS has no SIP distortion")
        return data.distortion
    if name.startswith("photometry"):
        data = photometry_data(files, max_points=None)
        return data.matches if name == "photometry-matches" else data.histogram
    if name in ("image-overlays", "image-quicklook", "image-background"):
        img = image_data(files, max_markers=None)
        if name == "image-overlays":
            return _concat(list(img.layers.values()), "layer", list(img.layers))
        if name == "image-quicklook":
            return _image_long(img.zscale, img.factor, "level")
        if img.background is None:
            raise DiagnosticsUnavailable("this run has no background model")
        return _image_long(img.background, img.background_factor, "background_adu")
    psf = psf_data(files)
    if psf is None:
        raise DiagnosticsUnavailable("this run has no PSF model")
    if name == "psf-fwhm":
        return psf.fwhm
    n, k, _ = psf.stamps.shape
    jj, ii = np.mgrid[0:k, 0:k]
    return {"stamp_x_pix": np.repeat(psf.stamp_x, k * k), "stamp_y_pix": np.repeat(psf.stamp_y, k * k),
            "dx_pix": np.tile(ii.ravel() - k // 2, n), "dy_pix": np.tile(jj.ravel() - k // 2, n),
            "value": psf.stamps.reshape(-1)}


# ------------------------------------------------------------------------------- page


#: Section name -> (tab title, what the page says when the run lacks it).
SECTION_INFO = {
    "astrometry": ("Astrometry", "no astrometric fit in this run"),
    "photometry": ("Photometry", "no photometric calibration in this run (no reference catalogue chosen, "
                                 "or the zero point could not be fitted)"),
    "image": ("Image", "no calibrated exposure in this run"),
}


@dataclasses.dataclass(frozen=True)
class PageSection:
    """One tab of the run page: whether it has plots, why not, and its CSV datasets."""

    name: str
    title: str
    available: bool
    missing: str
    datasets: list[tuple[str, str]]


def dataset_available(files: RunFiles, name: str) -> bool:
    """Cheap check (file presence, a header) that :func:`dataset` can make ``name``."""
    section = DATASETS[name][0]
    if section == "summary":
        return True
    if not files.has(SECTION_FILES[section]):
        return False
    if name == "astrometry-distortion":
        wcs, _ = read_calexp_wcs(files)
        return wcs is not None and getattr(wcs, "sip", None) is not None
    if name == "image-background":
        return files.has(BACKGROUND)
    if name.startswith("psf-"):
        return files.has(PSF)
    return True


def page_sections(files: RunFiles) -> list[PageSection]:
    """The plot sections of a run page, with the CSV datasets each can offer."""
    available = available_sections(files)
    out = []
    for name, (title, missing) in SECTION_INFO.items():
        datasets = [(ds, text) for ds, (section, text) in DATASETS.items()
                    if section == name and available[name] and dataset_available(files, ds)]
        out.append(PageSection(name, title, available[name], missing, datasets))
    return out


def run_summary_rows(files: RunFiles, *, metadata: Mapping[str, Any], timings_s: Mapping[str, float]) -> list[SummaryRow]:
    """Summary of a run from its ``metadata.json``, else from the given (stored-column) values."""
    meta = load_run_metadata(files)
    return summary_rows(meta["metadata"] or metadata, meta["timings_s"] or timings_s)
