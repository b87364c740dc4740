"""Sensor noise models: shot noise grows with signal, Tukey tails, row banding, the ADC, the sampler."""
from __future__ import annotations

import numpy as np
import pytest

from batman.data.noise import (SENSORS, NoiseParams, ReadNoise, RowNoise, ShotNoise, add_sensor_noise,
                               quantize, sample_noise_params, tukey_lambda_variance)

BLACK, WHITE = 512, 16383


def flat_variance(signal_dn: float, params: NoiseParams, seed: int = 0) -> float:
    mosaic = np.full((256, 256), BLACK + signal_dn, dtype=np.float32)
    noisy = add_sensor_noise(mosaic, BLACK, WHITE, params, np.random.default_rng(seed))
    return float(noisy.astype(np.float64).var())


def test_variance_is_k_times_signal_plus_read_variance():
    params = NoiseParams(k=0.8, read_scale=3.0, read_lambda=None, row_sigma=0.0)
    read_var = 3.0 ** 2 + 1 / 12  # Gaussian read noise + rounding
    variances = [flat_variance(s, params) for s in (20.0, 100.0, 400.0)]
    for s, var in zip((20.0, 100.0, 400.0), variances):
        assert var == pytest.approx(params.k * s + read_var, rel=0.05)
    assert variances[0] < variances[1] < variances[2]


def test_shot_noise_keeps_the_mean_and_is_zero_without_signal():
    rng = np.random.default_rng(1)
    signal = np.full(100_000, 50.0, dtype=np.float32)
    assert ShotNoise(k=2.0)(signal, rng).mean() == pytest.approx(50.0, rel=0.01)
    assert not ShotNoise(k=2.0)(np.zeros(10, dtype=np.float32), rng).any()


@pytest.mark.parametrize("lam", [-0.02, 0.0, 0.05])
def test_tukey_read_noise_has_heavier_tails_than_gaussian_of_same_sd(lam):
    rng = np.random.default_rng(2)
    zeros = np.zeros(400_000, dtype=np.float32)
    tukey = ReadNoise(scale=2.0, lam=lam)(zeros, rng).astype(np.float64)
    gauss = ReadNoise(scale=tukey.std())(zeros, rng).astype(np.float64)
    # the closed-form variance is what the synth.json levels mean in DN^2
    assert tukey.var() == pytest.approx(ReadNoise(scale=2.0, lam=lam).variance, rel=0.03)

    def kurtosis(x):
        return float(np.mean((x - x.mean()) ** 4) / x.var() ** 2)

    def beyond_4sd(x):
        return float(np.mean(np.abs(x) > 4 * x.std()))

    assert kurtosis(tukey) > kurtosis(gauss) + 0.3
    assert beyond_4sd(tukey) > 5 * beyond_4sd(gauss)


def test_tukey_variance_formula_is_continuous_at_zero():
    assert tukey_lambda_variance(1e-4) == pytest.approx(tukey_lambda_variance(0.0), rel=1e-3)


def test_row_noise_is_one_offset_per_row():
    signal = np.random.default_rng(3).random((64, 32)).astype(np.float32)
    diff = RowNoise(sigma=2.0)(signal, np.random.default_rng(4)) - signal
    assert np.allclose(diff, diff[:, :1], atol=1e-5)
    assert 1.0 < diff[:, 0].std() < 3.0


def test_output_is_uint16_clipped_to_zero_and_white():
    mosaic = np.full((32, 32), BLACK, dtype=np.float32)
    mosaic[:16] = WHITE + 500.0  # above white: must clip
    params = NoiseParams(k=1.0, read_scale=400.0, read_lambda=0.0, row_sigma=50.0)  # reaches below 0
    noisy = add_sensor_noise(mosaic, BLACK, WHITE, params, np.random.default_rng(5))
    assert noisy.dtype == np.uint16
    assert noisy.max() == WHITE and noisy.min() == 0
    clean = add_sensor_noise(mosaic, BLACK, WHITE, None, np.random.default_rng(5))
    assert np.array_equal(clean, quantize(mosaic, WHITE)) and clean.max() == WHITE


def test_sampler_is_seeded_within_range_and_follows_the_fit():
    sensor = SENSORS["fullframe14"]
    draws = [sample_noise_params(np.random.default_rng(s)) for s in range(300)]
    assert sample_noise_params(np.random.default_rng(7)) == sample_noise_params(np.random.default_rng(7))
    ks = np.array([p.k for p in draws])
    assert sensor.k_range[0] <= ks.min() and ks.max() <= sensor.k_range[1]
    log_read = np.log([p.read_scale for p in draws])
    slope = np.polyfit(np.log(ks), log_read, 1)[0]
    assert slope == pytest.approx(sensor.read.slope, abs=0.15)
    assert all(sensor.tukey_lambda[0] <= p.read_lambda <= sensor.tukey_lambda[1] for p in draws)
