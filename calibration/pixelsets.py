"""Sets of pixels held as sorted flat indices (``y * width + x``): neighbours and growth.

Footprints, cosmic-ray hits and masks of a few percent of an image are kept
this way instead of as image-sized planes; these are the operations the
stages share on them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["grow_square", "touching_pairs"]


def touching_pairs(pix: np.ndarray, width: int, labels: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(a, b)`` in ``pix`` (sorted flat indices) of every pair of 8-connected pixels.

    Each pair appears once: ``pix[b]`` is the right, lower-left, lower or
    lower-right neighbour of ``pix[a]``. With ``labels`` (one per pixel) only
    the pairs whose labels differ, dropped direction by direction: the
    footprints of a crowded image hold tens of millions of pairs inside
    themselves, and holding them all at once costs hundreds of MB.
    """
    if pix.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    col = pix % width
    # Right neighbour: the next pixel of the sorted list, unless it wraps to the next row.
    right = (pix[1:] == pix[:-1] + 1) & (col[:-1] != width - 1)
    if labels is not None:
        right &= labels[1:] != labels[:-1]
    right = np.flatnonzero(right)
    first, second = [right], [right + 1]
    # The three pixels of the row below are consecutive values: one search
    # finds the first, each present one moves the next one place further.
    pos = np.searchsorted(pix, pix + (width - 1))
    last = pix.size - 1
    for off, wraps in ((width - 1, col == 0), (width, None), (width + 1, col == width - 1)):
        pos = np.minimum(pos, last)
        present = pix[pos] == pix + off
        hit = present if wraps is None else present & ~wraps
        if labels is not None:
            hit = hit & (labels[pos] != labels)  # not in place: hit may be present
        first.append(np.flatnonzero(hit))
        second.append(pos[hit])
        pos = pos + present
    return np.concatenate(first), np.concatenate(second)


def grow_square(core: np.ndarray, shape: tuple[int, int], grow_pix: int) -> np.ndarray:
    """Sorted flat indices of ``core`` grown by a square of half-side ``grow_pix`` (inside the image)."""
    if grow_pix <= 0 or core.size == 0:
        return np.unique(core)
    ny, nx = shape
    dy, dx = (g.ravel() for g in np.mgrid[-grow_pix : grow_pix + 1, -grow_pix : grow_pix + 1])
    iy, ix = np.divmod(core, nx)
    yy, xx = iy[:, None] + dy[None, :], ix[:, None] + dx[None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.unique(yy[inside] * nx + xx[inside])
