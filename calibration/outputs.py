"""Write a :class:`~calibration.pipeline.CalibrationResult` to a directory.

File names follow LSST's dataset names: ``calexp.fits``,
``calexpBackground.fits``, ``psf.fits`` and ``apCorr.fits`` (which LSST keeps
inside the calexp), ``src.fits`` (also Parquet and CSV), ``srcMatch.fits``
(ids and distance, match metadata in the header), ``srcMatchFull.fits``
(denormalised: ``ref_``/``src_`` columns) of the photometric calibration,
``astromMatch.fits`` / ``astromMatchFull`` (astrometric matches with
residuals), ``wcs.fits`` and ``wcs_tpv.fits`` (the fitted WCS as SIP and as
TPV headers) and ``metadata.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .configbase import config_to_dict
from .io import write_exposure, write_hdulist
from .tables import write_fits_table, write_table


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One written file: its name, what it is, its format and where it is."""

    name: str
    kind: str
    format: str
    path: Path
    description: str


def _table_for_files(table: Table) -> Table:
    """``table`` with masked columns filled, so that FITS, CSV and Parquet can hold them.

    An unmasked table is returned as it is: the writers only read it, and a
    copy of a 50,000-row catalogue costs more than writing its Parquet.
    """
    if table.masked or any(getattr(c, "mask", None) is not None for c in table.columns.values()):
        return table.filled()
    return table


def _fits_cards(table: Table, header: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Header cards of a table file: scalar ``table.meta`` then ``header``; long or odd keys as HIERARCH."""
    merged = {**{k: v for k, v in table.meta.items() if isinstance(v, (str, int, float, bool))}, **(header or {})}
    cards = []
    for key, value in merged.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        key = key.upper()
        cards.append((key if len(key) <= 8 and key.replace("-", "").replace("_", "").isalnum()
                       else f"HIERARCH {key}", value))
    return cards


def _write_table(table: Table, base: Path, *, kind: str, description: str, formats=("fits", "parquet", "csv"),
                 header: dict[str, Any] | None = None) -> list[OutputFile]:
    table = _table_for_files(table)
    files = []
    for fmt in formats:
        path = base.with_suffix(f".{fmt}")
        if fmt == "fits":
            write_fits_table(table, path, cards=_fits_cards(table, header))
        else:
            write_table(table, path)
        files.append(OutputFile(path.name, kind, fmt, path, f"{description} ({fmt.upper()})"))
    return files


def write_outputs(result, outdir: Path) -> list[OutputFile]:
    """Write every output of ``result`` into ``outdir``; return what was written."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files: list[OutputFile] = []

    calexp = outdir / "calexp.fits"
    write_exposure(result.exposure, calexp)
    files.append(OutputFile(calexp.name, "calexp", "fits", calexp,
                            "Calibrated exposure: IMAGE, MASK, VARIANCE with WCS and MAGZERO"))

    bkg = outdir / "calexpBackground.fits"
    write_hdulist(result.background.to_hdulist(), bkg)
    files.append(OutputFile(bkg.name, "background", "fits", bkg, "Background model that was subtracted"))

    psf = getattr(result, "psf", None)
    if psf is not None:
        path = outdir / "psf.fits"
        fits.HDUList([fits.PrimaryHDU(), *psf.model.to_hdulist()]).writeto(path, overwrite=True)
        files.append(OutputFile(path.name, "psf", "fits", path, "PSF model fitted on the PSF stars"))
    apcorr = getattr(result, "apcorr", None)
    if apcorr is not None:
        path = outdir / "apCorr.fits"
        fits.HDUList([fits.PrimaryHDU(), *apcorr.to_hdulist()]).writeto(path, overwrite=True)
        files.append(OutputFile(path.name, "apcorr", "fits", path, "Aperture-correction map (polynomial per flux)"))

    files += _write_table(result.sources, outdir / "src", kind="src", description="Source catalogue")

    astrom = getattr(result, "astrometry", None)
    if astrom is not None and len(astrom.matches):
        matches = astrom.matches
        ids = Table({"ref_id": matches["ref_id"], "src_id": matches["src_id"],
                     "distance_arcsec": matches["distance_arcsec"]})
        meta = {k: v for k, v in result.metadata.items() if k.startswith(("SFM_ASTROM", "ASTROM"))}
        files += _write_table(ids, outdir / "astromMatch", kind="astromMatch", formats=("fits", "csv"),
                              description="Astrometric matches: reference id, source id, distance", header=meta)
        files += _write_table(matches, outdir / "astromMatchFull", kind="astromMatchFull",
                              description="Astrometric matches with positions, residuals (mas) and used/clipped/"
                                          "reserved flags")
        path = outdir / "wcs.fits"
        fits.PrimaryHDU(header=result.exposure.wcs.to_header(relax=True)).writeto(path, overwrite=True)
        files.append(OutputFile(path.name, "wcs", "fits", path, "Fitted TAN-SIP WCS (FITS header)"))
        from .wcsfit import tpv_header

        path = outdir / "wcs_tpv.fits"
        fits.PrimaryHDU(header=tpv_header(result.exposure.wcs, image_shape=result.exposure.shape)).writeto(
            path, overwrite=True)
        files.append(OutputFile(path.name, "wcs", "fits", path, "The same WCS as TPV (for SWarp/SCAMP)"))

    if result.photom_matches is not None and len(result.photom_matches):
        matches = result.photom_matches
        ids = Table({
            "ref_id": matches["ref_id"], "src_id": matches["src_id"], "distance_arcsec": matches["distance_arcsec"],
        })
        meta = {k: v for k, v in result.metadata.items() if k.startswith(("MATCH", "MAGZERO"))}
        files += _write_table(ids, outdir / "srcMatch", kind="srcMatch", formats=("fits", "csv"),
                              description="Photometric matches: reference id, source id, distance", header=meta)
        files += _write_table(matches, outdir / "srcMatchFull", kind="srcMatchFull", formats=("fits", "parquet", "csv"),
                              description="Matches with every reference (ref_) and source (src_) column")

    md = outdir / "metadata.json"
    md.write_text(json.dumps({
        "metadata": _jsonable(result.metadata),
        "timings_s": result.timings_s,
        "warnings": result.warnings,
        "config": config_to_dict(result.config),
    }, indent=2, allow_nan=False))
    files.append(OutputFile(md.name, "metadata", "json", md, "Metadata, QA figures, timings and the config used"))
    return files


def _with_primary(hdul: fits.HDUList) -> fits.HDUList:
    """A FITS file must start with a primary HDU; models describe themselves in extensions."""
    if len(hdul) and isinstance(hdul[0], fits.PrimaryHDU):
        return hdul
    return fits.HDUList([fits.PrimaryHDU(), *hdul])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
