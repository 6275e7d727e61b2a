"""Shared pixel-set operations against brute force on random masks."""

from __future__ import annotations

import numpy as np

from calibration.pixelsets import grow_square, touching_pairs


def test_touching_pairs_are_the_8_connected_neighbours() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((23, 17)) < 0.3
    pix = np.flatnonzero(mask)
    a, b = touching_pairs(pix, 17)
    found = {(int(pix[i]), int(pix[j])) for i, j in zip(a, b)}
    expected = set()
    for y, x in zip(*np.nonzero(mask)):
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < 23 and 0 <= xx < 17 and mask[yy, xx]:
                expected.add((int(y * 17 + x), int(yy * 17 + xx)))
    assert found == expected
    assert touching_pairs(np.zeros(0, np.int64), 17)[0].size == 0
    # With labels: only the pairs across two labels.
    labels = rng.integers(1, 4, pix.size)
    a, b = touching_pairs(pix, 17, labels=labels)
    where = {int(p): int(lab) for p, lab in zip(pix, labels)}
    assert {(int(pix[i]), int(pix[j])) for i, j in zip(a, b)} == {(p, q) for p, q in expected if where[p] != where[q]}


def test_grow_square_is_a_square_dilation_inside_the_image() -> None:
    rng = np.random.default_rng(4)
    mask = rng.random((20, 30)) < 0.02
    grown = np.zeros_like(mask)
    grown.ravel()[grow_square(np.flatnonzero(mask), mask.shape, 2)] = True
    expected = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask)):
        expected[max(y - 2, 0): y + 3, max(x - 2, 0): x + 3] = True
    assert np.array_equal(grown, expected)
