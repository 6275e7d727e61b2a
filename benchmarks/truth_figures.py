"""Print the part-1 truth figures (the numbers the truth tests assert) for the closing notes.

Runs the fields of ``tests/engine/test_pipeline_truth.py`` and prints the
measured value beside each test's limit: completeness above S/N 10, false
detections, centroid scatter over the Cramer-Rao bound, PSF-flux bias after
aperture correction, PSF FWHM and sky-source noise.

Run: ``PYTHONPATH=.:tests/engine .venv/bin/python benchmarks/truth_figures.py``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

import test_pipeline_truth as t
from calibration.pipeline import CalibrateConfig, calibrate
from calibration.skysources import SkySourceConfig
from calibration.testing import SimConfig, simulate_exposure


def main() -> None:
    cfg = SimConfig(shape=(1024, 1024), n_stars=500, mag_range=(15.0, 20.5), count_slope_dex_per_mag=0.15,
                    n_galaxies=0, n_saturated_stars=0, n_cosmic_rays=0, seed=21)
    sim = simulate_exposure(cfg)
    result = calibrate(sim.exposure, CalibrateConfig(sky_sources=SkySourceConfig(n_sources=1000)))
    sources = result.sources[~np.asarray(result.sources["sky_source"], bool)]
    snr, crb = t._ideal(sim)
    dist, idx = t._nearest(sources, sim.truth)

    resolvable = (snr > 10) & (t._neighbour_distance(sim.truth) > 4 * sim.config.psf_fwhm_pix)
    print(f"completeness above S/N 10: {np.mean(dist[resolvable] < 1.5):.4f} of {resolvable.sum()} clean stars"
          " (limit > 0.99)")
    primary = np.asarray(sources["detect_isPrimary"], bool)
    tree = cKDTree(np.column_stack([np.asarray(sim.truth["x"]), np.asarray(sim.truth["y"])]))
    d, _ = tree.query(np.column_stack([np.asarray(sources["x"])[primary], np.asarray(sources["y"])[primary]]))
    print(f"false detections: {np.sum(d > 3.0)} of {primary.sum()} (limit < 0.5%)")
    use = sim.isolated(15.0) & (dist < 1.5) & (snr > 20) & (snr < 300)
    for axis in ("x", "y"):
        err = np.asarray(sources[axis])[idx[use]] - np.asarray(sim.truth[axis])[use]
        print(f"centroid {axis} scatter / Cramer-Rao bound: {np.sqrt(np.mean((err / crb[use]) ** 2)):.3f}"
              f" ({use.sum()} stars; limit < 1.2)")
    use = sim.isolated(15.0) & (dist < 1.5) & (snr > 50)
    true_flux = np.asarray(sim.truth["flux_adu"], float)[use]
    flux = np.asarray(sources["psf_flux"], float)[idx[use]]
    weight = (true_flux / np.asarray(sources["psf_flux_err"], float)[idx[use]]) ** 2
    bias = float(np.sum(weight * flux / true_flux) / np.sum(weight) - 1.0)
    print(f"PSF-flux bias after aperture correction: {bias * 100:+.3f}% ({use.sum()} stars; limit 0.3%)")
    print(f"PSF FWHM: {result.psf.fwhm_pix:.4f} pix (truth {sim.config.psf_fwhm_pix}; limit 2%)")
    print(f"sky-source noise: {result.metadata['SKY_NOISE_ADU']:.3f} ADU (injected {sim.sky_noise_adu:.3f};"
          " limit 5%)")


if __name__ == "__main__":
    main()
