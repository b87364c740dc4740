"""Metrics against scikit-image and against values known by construction."""
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from batman.metrics import MABD, luma, mabd, mabd_error, psnr, ssim


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    target = rng.random((48, 64, 3))
    return np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1), target


def test_psnr_ssim_equal_skimage(pair):
    out, target = pair
    assert psnr(out, target) == pytest.approx(peak_signal_noise_ratio(target, out, data_range=1), abs=1e-4)
    assert ssim(out, target) == pytest.approx(
        structural_similarity(target, out, data_range=1, channel_axis=-1), abs=1e-4)


def test_psnr_of_known_mse():
    target = np.zeros((8, 8, 3))
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-6)


def test_mabd_of_constant_video_is_zero():
    frame = np.random.default_rng(1).random((16, 16, 3))
    assert np.all(mabd([frame] * 5) == 0)


def test_mabd_of_a_ramp_is_the_step():
    frames = [np.full((8, 8, 3), 0.1 * t) for t in range(5)]  # luma rises by 0.1 per frame
    np.testing.assert_allclose(mabd(frames), [0.1] * 4, atol=1e-12)
    assert mabd_error(mabd(frames), np.zeros(4)) == pytest.approx(0.01)


def test_streaming_equals_batch_and_luma_weights():
    rng = np.random.default_rng(2)
    frames = [rng.random((4, 4, 3)) for _ in range(4)]
    m = MABD()
    for f in frames:
        m.add(f)
    np.testing.assert_array_equal(m.vector(), mabd(frames))
    assert luma(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
