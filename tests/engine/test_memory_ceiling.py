"""A guard against memory regressions of part 1 on a crowded field.

The requirement (peak below 8x the image on 4096 x 4096) is measured by
``benchmarks/bench_part1.py``, not here: its margin is too small for a test.
This test runs the benchmark's own child process (read, calibrate, write) on a
crowded 2048 x 2048 simulation and checks its peak resident memory, beyond
what the imports take, against a ceiling of 16 images: today about 10 (fixed
allocations weigh more on a small image). A change of 2026-12-01 that grew the
mean-sky mask as a sparse set of millions of blocks took this to 92 images,
and nothing else in the suite saw it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SIZE, N_STARS = 2048, 12_500  # the crowded benchmark's star density
CEILING_IMAGES = 16.0


def test_crowded_field_peak_memory_stays_under_a_ceiling(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_part1 as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    image = tmp_path / "crowded.fits"
    bench.simulate(bench.Case("crowded", "crowded", SIZE, N_STARS), image)
    out = bench.run_engine(image, tmp_path / "out")
    assert out["ok"], out.get("error")
    assert out["n_primary"] > 0.5 * N_STARS / 2  # a crowded field was measured, not an empty one
    growth_images = (out["peak_rss_mb"] - out["baseline_rss_mb"]) * 2**20 / (SIZE * SIZE * 4)
    assert growth_images < CEILING_IMAGES, (
        f"part 1 on a crowded {SIZE}x{SIZE} field grew by {growth_images:.1f} images "
        f"({out['peak_rss_mb']:.0f} MB peak): see benchmarks/bench_part1.py")
