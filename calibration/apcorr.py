"""Aperture corrections (LSST's ``MeasureApCorrTask`` and ``ApplyApCorrTask``).

A small aperture or a PSF fit misses the light in the PSF's wings. On PSF
stars, the ratio ``calibration_flux / field_flux`` (a large aperture over the
flux to correct) measures the missing fraction; because the PSF varies over the
field, the ratio is fitted as a polynomial of total degree ``spatial_order`` in
the position normalised to [-1, 1] over the image (LSST uses a Chebyshev
``BoundedField``; the space of functions is the same). Every source's flux is
then multiplied by the correction at its position, so that all fields measure
the same (calibration-aperture) flux for a star. The calibration flux itself is
never corrected.

Fit: weighted least squares with weights ``1 / sigma_ratio**2`` (from the
``_err`` columns when present, else uniform), iterated ``n_iter`` times,
rejecting stars whose normalised residual ``(ratio - fit) / sigma_ratio`` is
further than ``n_sigma_clip`` robust sigma (1.4826 MAD) from the median
residual (the median, not zero, so that a first fit pulled by outliers still
keeps the good stars). The reported ``scatter`` is the robust RMS of the ratio
about the fit on the surviving stars; the correction's uncertainty
``apCorrErr`` is the RMS of the fit's own prediction error over those stars,
``scatter * sqrt(n_terms / n_used)``, the same everywhere (LSST also stores a
constant error field).

Deviations from LSST: a field missing from the catalogue, or with too few stars,
raises :class:`~calibration.errors.NoSourcesError` unless it is listed in
``allow_failure`` (LSST: the same, with ``allowFailure``); on applying, the
flux error is scaled by the correction and ``<field>_apCorrErr`` is kept in its
own column, not added to the flux error (LSST's default too).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from numpy.typing import ArrayLike, NDArray

from .configbase import doc_field
from .errors import CalibrationError, ConfigError, NoSourcesError
from .stats import mad_sigma

__all__ = [
    "ApCorrConfig",
    "ApCorrField",
    "ApCorrMap",
    "apply_aperture_corrections",
    "measure_aperture_corrections",
]

_STAGE = "apcorr"


@dataclasses.dataclass(frozen=True)
class ApCorrConfig:
    """Configuration of :func:`measure_aperture_corrections` and :func:`apply_aperture_corrections`."""

    calibration_flux: str = doc_field(
        "apflux_12_0", "Flux column (ADU) every other field is corrected to (never corrected itself)."
    )
    fields: tuple[str, ...] = doc_field(
        ("psf_flux", "apflux_3_0", "apflux_4_5", "apflux_6_0", "apflux_9_0"),
        "Flux columns (ADU) to correct; each needs <field>_err and may have <field>_flag.",
    )
    spatial_order: int = doc_field(
        1, "Total degree of the correction polynomial in normalised x, y (0-3)."
    )
    min_stars: int = doc_field(
        10, "Fewest stars a field's correction may rest on (after clipping); fewer raises NoSourcesError."
    )
    n_sigma_clip: float = doc_field(3.0, "Reject stars further than this many robust sigma from the fit.")
    n_iter: int = doc_field(3, "Rounds of fit and rejection.")
    allow_failure: tuple[str, ...] = doc_field(
        (), "Fields whose measurement may fail (skipped and flagged) instead of raising."
    )
    flag_failures_in_flux_flag: bool = doc_field(
        True,
        "When a correction cannot be applied to a source, also set its <field>_flag (LSST doFlagApCorrFailures).",
    )

    def validate(self) -> None:
        """Cross-field checks; raise ``ValueError`` on a bad value."""
        if self.calibration_flux in self.fields:
            raise ValueError(f"the calibration flux {self.calibration_flux} cannot be one of the fields corrected")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields has duplicates: {self.fields}")
        if not 0 <= self.spatial_order <= 3:
            raise ValueError(f"spatial_order must be in 0-3, got {self.spatial_order}")
        n_terms = len(_poly_terms(self.spatial_order))
        if self.min_stars < n_terms + 1:
            raise ValueError(f"min_stars ({self.min_stars}) must exceed the {n_terms} polynomial terms")
        if not self.n_sigma_clip > 0:
            raise ValueError(f"n_sigma_clip must be > 0, got {self.n_sigma_clip}")
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        stray = sorted(set(self.allow_failure) - set(self.fields))
        if stray:
            raise ValueError(f"allow_failure names fields not in fields: {stray}")


def _poly_terms(order: int) -> list[tuple[int, int]]:
    """Exponents ``(i, j)`` of ``u**i v**j`` with ``i + j <= order``, constant first."""
    return [(i, d - i) for d in range(order + 1) for i in range(d, -1, -1)]


@dataclasses.dataclass(frozen=True)
class ApCorrField:
    """The fitted correction of one flux field.

    Attributes
    ----------
    name : str
        Flux column corrected.
    coefficients : tuple of float
        Polynomial coefficients of the monomials ``u**i v**j`` (``terms``).
    spatial_order : int
    error : float
        1-sigma uncertainty of the correction (dimensionless), constant.
    scatter : float
        Robust RMS of the star ratios about the fit (dimensionless).
    n_stars, n_used : int
        Stars offered, and kept after clipping.
    """

    name: str
    coefficients: tuple[float, ...]
    spatial_order: int
    error: float
    scatter: float
    n_stars: int
    n_used: int

    @property
    def terms(self) -> list[tuple[int, int]]:
        """Exponents ``(i, j)`` of the monomials, in coefficient order."""
        return _poly_terms(self.spatial_order)


@dataclasses.dataclass
class ApCorrMap:
    """Aperture corrections of several flux fields over an image.

    Attributes
    ----------
    image_shape : (ny, nx)
        Shape of the image; positions are local 0-based pix, normalised
        ``u = (x - (nx - 1)/2) / (nx/2)``, ``v`` likewise.
    calibration_flux : str
        The flux column the corrections lead to.
    fields : dict of str to ApCorrField
        One entry per field measured.
    failures : dict of str to str
        Fields in ``allow_failure`` that could not be measured, with the reason.
    """

    image_shape: tuple[int, int]
    calibration_flux: str
    fields: dict[str, ApCorrField]
    failures: dict[str, str] = dataclasses.field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def _normalise(self, x: ArrayLike, y: ArrayLike) -> tuple[NDArray, NDArray, NDArray[np.bool_]]:
        ny, nx = self.image_shape
        xa, ya = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        with np.errstate(invalid="ignore"):
            inside = (xa >= -0.5) & (xa <= nx - 0.5) & (ya >= -0.5) & (ya <= ny - 0.5)
        return (xa - (nx - 1) / 2.0) / (nx / 2.0), (ya - (ny - 1) / 2.0) / (ny / 2.0), inside

    def evaluate(self, field: str, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Correction factor of ``field`` at positions ``(x, y)`` (local 0-based pix).

        Returns NaN outside the image (beyond its outer pixel edges) and at
        non-finite positions. Raises ``KeyError`` for a field not in the map.
        """
        fit = self.fields[field]
        uu, vv, inside = self._normalise(x, y)
        value = np.zeros(uu.shape)
        for c, (i, j) in zip(fit.coefficients, fit.terms):
            value = value + c * uu**i * vv**j
        return np.where(inside, value, np.nan)

    def evaluate_error(self, field: str, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """1-sigma error of the correction at ``(x, y)`` (NaN where :meth:`evaluate` is)."""
        _, _, inside = self._normalise(x, y)
        return np.where(inside, self.fields[field].error, np.nan)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for the run record); :meth:`from_dict` inverts it."""
        return {
            "image_shape": list(self.image_shape),
            "calibration_flux": self.calibration_flux,
            "fields": {
                name: {
                    "coefficients": list(f.coefficients),
                    "terms": [list(t) for t in f.terms],
                    "spatial_order": f.spatial_order,
                    "error": f.error,
                    "scatter": f.scatter,
                    "n_stars": f.n_stars,
                    "n_used": f.n_used,
                }
                for name, f in self.fields.items()
            },
            "failures": dict(self.failures),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ApCorrMap":
        """Inverse of :meth:`to_dict`."""
        fields = {
            name: ApCorrField(
                name=name,
                coefficients=tuple(float(c) for c in f["coefficients"]),
                spatial_order=int(f["spatial_order"]),
                error=float(f["error"]),
                scatter=float(f["scatter"]),
                n_stars=int(f["n_stars"]),
                n_used=int(f["n_used"]),
            )
            for name, f in data["fields"].items()
        }
        ny, nx = data["image_shape"]
        return cls(image_shape=(int(ny), int(nx)), calibration_flux=data["calibration_flux"], fields=fields,
                   failures=dict(data.get("failures", {})))

    def to_hdulist(self) -> fits.HDUList:
        """One ``APCORR`` binary-table extension (no primary HDU), one row per field."""
        names = list(self.fields)
        width = max([len(f.coefficients) for f in self.fields.values()] + [1])
        coef = np.full((len(names), width), np.nan)
        for row, name in enumerate(names):
            c = self.fields[name].coefficients
            coef[row, : len(c)] = c
        columns = [
            fits.Column(name="FIELD", format=f"{max([len(n) for n in names] + [1])}A", array=np.array(names)),
            fits.Column(name="SPORDER", format="K", array=np.array([self.fields[n].spatial_order for n in names])),
            fits.Column(name="COEFFS", format=f"{width}D", array=coef),
            fits.Column(name="ERROR", format="D", array=np.array([self.fields[n].error for n in names])),
            fits.Column(name="SCATTER", format="D", array=np.array([self.fields[n].scatter for n in names])),
            fits.Column(name="NSTARS", format="K", array=np.array([self.fields[n].n_stars for n in names])),
            fits.Column(name="NUSED", format="K", array=np.array([self.fields[n].n_used for n in names])),
        ]
        hdu = fits.BinTableHDU.from_columns(columns, name="APCORR")
        hdu.header["CALFLUX"] = (self.calibration_flux, "flux column the corrections lead to")
        hdu.header["IMNY"] = (self.image_shape[0], "rows of the image (normalises y)")
        hdu.header["IMNX"] = (self.image_shape[1], "columns of the image (normalises x)")
        hdu.header["POLYNORM"] = ("u=(x-(nx-1)/2)/(nx/2)", "local 0-based pix; v likewise in y")
        return fits.HDUList([hdu])

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList) -> "ApCorrMap":
        """Inverse of :meth:`to_hdulist` (reads the ``APCORR`` extension)."""
        hdu = hdul["APCORR"]
        fields = {}
        for row in hdu.data:
            name = str(row["FIELD"]).strip()
            order = int(row["SPORDER"])
            n_terms = len(_poly_terms(order))
            fields[name] = ApCorrField(
                name=name,
                coefficients=tuple(float(c) for c in np.atleast_1d(row["COEFFS"])[:n_terms]),
                spatial_order=order,
                error=float(row["ERROR"]),
                scatter=float(row["SCATTER"]),
                n_stars=int(row["NSTARS"]),
                n_used=int(row["NUSED"]),
            )
        return cls(image_shape=(int(hdu.header["IMNY"]), int(hdu.header["IMNX"])),
                   calibration_flux=str(hdu.header["CALFLUX"]), fields=fields)


def _validate(config: ApCorrConfig) -> None:
    try:
        config.validate()
    except ValueError as exc:
        raise ConfigError(f"invalid aperture-correction configuration: {exc}", stage=_STAGE) from exc


def _values(catalog: Table, name: str, fill: Any) -> NDArray:
    col = catalog[name]
    if hasattr(col, "filled"):
        col = col.filled(fill)
    return np.asarray(col)


def _flag(catalog: Table, name: str) -> NDArray[np.bool_]:
    if name in catalog.colnames:
        return _values(catalog, name, True).astype(bool)
    return np.zeros(len(catalog), bool)


def measure_aperture_corrections(
    catalog: Table,
    use: ArrayLike,
    config: ApCorrConfig | None = None,
    *,
    image_shape: tuple[int, int],
) -> ApCorrMap:
    """Fit the aperture correction of each field on the selected stars.

    Parameters
    ----------
    catalog : astropy.table.Table
        Measured sources with ``x``, ``y`` (local 0-based pix), the
        calibration flux and each field, with ``_err`` (ADU) and optional
        ``_flag`` columns.
    use : array_like of bool, shape (len(catalog),)
        Stars to fit on (the PSF stars, ``calib_psf_used``).
    config : ApCorrConfig, optional
    image_shape : (ny, nx)
        Shape of the image, for normalising positions.

    Returns
    -------
    ApCorrMap

    Raises
    ------
    NoSourcesError
        A field not in ``allow_failure`` is missing from the catalogue or has
        fewer than ``min_stars`` usable stars (before or after clipping); the
        figures name the field and the counts.
    ConfigError
        Invalid configuration.
    """
    config = config or ApCorrConfig()
    _validate(config)
    use = np.asarray(use, bool)
    if use.shape != (len(catalog),):
        raise ValueError(f"use must have shape ({len(catalog)},), got {use.shape}")
    cal = config.calibration_flux
    missing = [c for c in ("x", "y", cal, f"{cal}_err") if c not in catalog.colnames]
    if missing:
        raise NoSourcesError(
            f"aperture corrections need column(s) {', '.join(missing)}", stage=_STAGE, missing=missing
        )
    x = _values(catalog, "x", np.nan).astype(float)
    y = _values(catalog, "y", np.nan).astype(float)
    cal_flux = _values(catalog, cal, np.nan).astype(float)
    cal_err = _values(catalog, f"{cal}_err", np.nan).astype(float)
    with np.errstate(invalid="ignore"):
        base = use & np.isfinite(x) & np.isfinite(y) & np.isfinite(cal_flux) & (cal_flux > 0)
    base &= ~_flag(catalog, f"{cal}_flag")
    result = ApCorrMap(image_shape=(int(image_shape[0]), int(image_shape[1])), calibration_flux=cal, fields={})
    for name in config.fields:
        try:
            result.fields[name] = _measure_field(catalog, name, base, x, y, cal_flux, cal_err, result, config)
        except NoSourcesError as exc:
            if name not in config.allow_failure:
                raise
            result.failures[name] = exc.message
    return result


def _measure_field(
    catalog: Table, name: str, base: NDArray[np.bool_], x: NDArray, y: NDArray, cal_flux: NDArray,
    cal_err: NDArray, frame: ApCorrMap, config: ApCorrConfig,
) -> ApCorrField:
    n_selected = int(np.count_nonzero(base))
    if name not in catalog.colnames:
        raise NoSourcesError(
            f"cannot measure the aperture correction of {name}: the catalogue has no such column",
            stage=_STAGE, field=name, n_stars=0, min_stars=config.min_stars, n_selected=n_selected,
        )
    flux = _values(catalog, name, np.nan).astype(float)
    err = _values(catalog, f"{name}_err", np.nan).astype(float) if f"{name}_err" in catalog.colnames \
        else np.full(flux.size, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = base & np.isfinite(flux) & (flux > 0) & ~_flag(catalog, f"{name}_flag")
        ratio = cal_flux / flux
        sigma = ratio * np.sqrt((cal_err / cal_flux) ** 2 + (err / flux) ** 2)
    n_stars = int(ok.sum())

    def too_few(count: int, when: str) -> NoSourcesError:
        return NoSourcesError(
            f"only {count} stars {when} for the aperture correction of {name} (need {config.min_stars}): "
            "lower apcorr min_stars or spatial_order, or select more PSF stars",
            stage=_STAGE, field=name, n_stars=n_stars, n_used=count, min_stars=config.min_stars,
            n_selected=n_selected,
        )

    if n_stars < config.min_stars:
        raise too_few(n_stars, "with a usable flux")
    idx = np.flatnonzero(ok)
    r, s = ratio[idx], sigma[idx]
    weighted = np.isfinite(s).all() and (s > 0).all()
    w = 1.0 / s**2 if weighted else np.ones(idx.size)
    uu, vv, _ = frame._normalise(x[idx], y[idx])
    terms = _poly_terms(config.spatial_order)
    design = np.stack([uu**i * vv**j for i, j in terms], axis=1)
    keep = np.ones(idx.size, bool)
    for _ in range(config.n_iter):
        sw = np.sqrt(w[keep])
        coef = np.linalg.lstsq(design[keep] * sw[:, None], r[keep] * sw, rcond=None)[0]
        resid = r - design @ coef
        norm = resid * np.sqrt(w)
        centre = float(np.median(norm[keep]))
        scale = mad_sigma(norm[keep], centre=centre)
        # Centred on the median: a first fit pulled by outliers still keeps the good stars.
        new = np.abs(norm - centre) <= config.n_sigma_clip * scale if scale > 0 else keep
        if new.sum() < config.min_stars:
            raise too_few(int(new.sum()), "left after clipping")
        if np.array_equal(new, keep):
            break
        keep = new
    sw = np.sqrt(w[keep])
    coef = np.linalg.lstsq(design[keep] * sw[:, None], r[keep] * sw, rcond=None)[0]
    resid = (r - design @ coef)[keep]
    scatter = mad_sigma(resid)
    n_used = int(keep.sum())
    return ApCorrField(
        name=name,
        coefficients=tuple(float(c) for c in coef),
        spatial_order=config.spatial_order,
        error=scatter * float(np.sqrt(len(terms) / n_used)),
        scatter=scatter,
        n_stars=n_stars,
        n_used=n_used,
    )


def apply_aperture_corrections(catalog: Table, apcorr_map: ApCorrMap, config: ApCorrConfig | None = None) -> Table:
    """Multiply each field's flux and error by its aperture correction at the source.

    Parameters
    ----------
    catalog : astropy.table.Table
        Sources with ``x``, ``y`` (local 0-based pix) and the flux fields.
    apcorr_map : ApCorrMap
    config : ApCorrConfig, optional
        ``fields`` lists the columns to correct (those absent from the
        catalogue are skipped); the calibration flux is never corrected.

    Returns
    -------
    astropy.table.Table
        A copy with, for each field present: ``<field>`` and ``<field>_err``
        multiplied by the correction, ``<field>_apCorr`` (correction applied,
        dimensionless), ``<field>_apCorrErr`` (its 1-sigma error) and
        ``<field>_flag_apCorr`` (no correction could be applied: the field is not
        in the map, the position is outside the image or not finite, or the
        correction is not positive; the flux is then left as it was and, with
        ``flag_failures_in_flux_flag``, ``<field>_flag`` is set too).
    """
    config = config or ApCorrConfig()
    _validate(config)
    done = [c for c in catalog.colnames if c.endswith("_apCorr")]
    if done:
        raise CalibrationError(
            f"the catalogue is already aperture-corrected ({', '.join(done)}): correcting twice would be wrong",
            stage=_STAGE, columns=done,
        )
    out = Table(catalog, copy=True)
    x = _values(out, "x", np.nan).astype(float)
    y = _values(out, "y", np.nan).astype(float)
    for name in config.fields:
        if name not in out.colnames or name == apcorr_map.calibration_flux:
            continue
        if name in apcorr_map:
            corr = apcorr_map.evaluate(name, x, y)
            corr_err = apcorr_map.evaluate_error(name, x, y)
        else:
            corr = np.full(len(out), np.nan)
            corr_err = np.full(len(out), np.nan)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(corr) & (corr > 0)
        factor = np.where(good, corr, 1.0)
        unit = out[name].unit
        out[name] = _values(out, name, np.nan).astype(float) * factor
        out[name].unit = unit
        out[name].description = f"{_description(catalog, name)} Aperture-corrected to {apcorr_map.calibration_flux}."
        if f"{name}_err" in out.colnames:
            unit_err = out[f"{name}_err"].unit
            out[f"{name}_err"] = _values(out, f"{name}_err", np.nan).astype(float) * factor
            out[f"{name}_err"].unit = unit_err
        out[f"{name}_apCorr"] = np.where(good, corr, np.nan)
        out[f"{name}_apCorr"].unit = u.dimensionless_unscaled
        out[f"{name}_apCorr"].description = (
            f"Aperture correction applied to {name} ({apcorr_map.calibration_flux}/{name} on PSF stars, "
            "fitted over the field); NaN when none could be applied."
        )
        out[f"{name}_apCorrErr"] = np.where(good, corr_err, np.nan)
        out[f"{name}_apCorrErr"].unit = u.dimensionless_unscaled
        out[f"{name}_apCorrErr"].description = f"1-sigma error of {name}_apCorr (not included in {name}_err)."
        out[f"{name}_flag_apCorr"] = ~good
        out[f"{name}_flag_apCorr"].unit = u.dimensionless_unscaled
        out[f"{name}_flag_apCorr"].description = (
            f"No aperture correction applied to {name}: no correction measured, position outside the image, "
            "or correction not positive."
        )
        if config.flag_failures_in_flux_flag and (~good).any():
            flag_name = f"{name}_flag"
            previous = _flag(out, flag_name)
            description = out[flag_name].description if flag_name in out.colnames else f"{name} unreliable."
            out[flag_name] = previous | ~good
            out[flag_name].unit = u.dimensionless_unscaled
            out[flag_name].description = description
    return out


def _description(catalog: Table, name: str) -> str:
    text = catalog[name].description or name
    return text if text.endswith(".") else text + "."
