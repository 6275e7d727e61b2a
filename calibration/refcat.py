"""Reference catalogues: read a table, normalise its columns, cut to a footprint.

This first version reads FITS, CSV and Parquet tables with ``ra``/``dec`` in
degrees and ``<band>_mag``/``<band>_magErr`` columns (what the simulator
writes). HATS catalogues and the other column conventions come with the
astrometry stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from .errors import ReferenceCatalogError
from .tables import read_table

STAGE = "refcat"


@dataclass
class ReferenceCatalog:
    """A loaded reference catalogue.

    Attributes
    ----------
    table : astropy.table.Table
        Columns ``id``, ``ra``, ``dec`` (deg) and ``<band>_mag``, ``<band>_magErr``.
    bands : tuple of str
        Bands that have magnitudes.
    name : str
        Where it came from (for metadata).
    """

    table: Table
    bands: tuple[str, ...]
    name: str

    def mag(self, band: str) -> tuple[np.ndarray, np.ndarray]:
        """Magnitude and error arrays of ``band`` (NaN where absent)."""
        if band not in self.bands:
            raise ReferenceCatalogError(
                f"reference catalogue {self.name} has no band {band!r}; it has {', '.join(self.bands) or 'none'}",
                stage=STAGE,
                band=band,
            )
        mag = np.asarray(self.table[f"{band}_mag"], float)
        err_col = f"{band}_magErr"
        err = np.asarray(self.table[err_col], float) if err_col in self.table.colnames else np.full(mag.shape, 0.02)
        return mag, err


def load_reference_catalog(location: str | Path) -> ReferenceCatalog:
    """Read a reference table from a FITS, CSV or Parquet file.

    Raises
    ------
    ReferenceCatalogError
        Missing file, unreadable format, no ``ra``/``dec`` columns.
    """
    path = Path(location)
    if not path.exists():
        raise ReferenceCatalogError(f"reference catalogue {path} does not exist", stage=STAGE, location=str(path))
    try:
        table = read_table(path)
    except ValueError as exc:
        raise ReferenceCatalogError(f"reference catalogue {path.name}: {exc}", stage=STAGE) from exc
    except Exception as exc:  # astropy and pyarrow raise many types for a corrupt table
        raise ReferenceCatalogError(f"cannot read reference catalogue {path.name}: {exc}", stage=STAGE) from exc
    for col in ("ra", "dec"):
        if col not in table.colnames:
            raise ReferenceCatalogError(
                f"reference catalogue {path.name} has no {col!r} column (degrees); columns: {', '.join(table.colnames[:20])}",
                stage=STAGE,
            )
    if "id" not in table.colnames:
        table["id"] = np.arange(1, len(table) + 1)
    bands = tuple(c[: -len("_mag")] for c in table.colnames if c.endswith("_mag"))
    return ReferenceCatalog(table=table, bands=bands, name=path.name)


def cut_to_footprint(refcat: ReferenceCatalog, wcs, shape: tuple[int, int], *, margin_pix: float) -> ReferenceCatalog:
    """Keep the reference objects that fall on the image (plus a margin) through ``wcs``."""
    ny, nx = shape
    x, y = wcs.all_world2pix(np.asarray(refcat.table["ra"], float), np.asarray(refcat.table["dec"], float), 0, quiet=True)
    keep = (x > -margin_pix) & (x < nx - 1 + margin_pix) & (y > -margin_pix) & (y < ny - 1 + margin_pix)
    keep &= np.isfinite(x) & np.isfinite(y)
    return ReferenceCatalog(table=refcat.table[keep], bands=refcat.bands, name=refcat.name)
