"""Realism report: a real-vs-synthetic classifier on intensity statistics and the radial power spectrum."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from pneumo_ml import realism
from pneumo_ml.cli import main


def test_radial_power_spectrum_sees_blur_and_noise():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 180)).astype(np.uint8)
    smooth = np.tile(np.linspace(0, 255, 180), (200, 1)).astype(np.uint8)
    rough, flat = realism.radial_power_spectrum(noise), realism.radial_power_spectrum(smooth)
    assert rough.shape == flat.shape == (realism.SPECTRUM_BINS,)
    assert rough[-1] - rough[0] > flat[-1] - flat[0]  # white noise: as much power at high frequencies as low


def test_real_radiographs_are_told_apart_from_noise():
    real = realism.read_images(realism.REAL_SAMPLES)
    assert len(real) >= 8
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, image.shape).astype(np.uint8) for image in real]
    assert realism.realism_auc(real, noise) >= 0.95


def test_cli_reports_the_distance_of_rendered_cases():
    result = CliRunner().invoke(main, ["data", "realism", "--n", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    auc = float(result.output.split("real-vs-synthetic AUC ")[1].split()[0])
    assert 0.0 <= auc <= 1.0 and "8 real, 8 synthetic images" in result.output
