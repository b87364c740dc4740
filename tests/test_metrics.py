"""Metrics against scikit-image and against values known by construction."""
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from batman.metrics import MABD, RecentUnion, RegionPSNR, drift_db, luma, mabd, mabd_error, psnr, ssim


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


def test_region_psnr_sees_only_the_masked_pixels_pooled_over_frames():
    target = np.zeros((8, 8, 3))
    ghost = target.copy()
    ghost[:2] = 0.1                          # an error only in the top two rows
    mask = np.zeros((8, 8), bool)
    region = RegionPSNR()
    assert np.isnan(region.value())
    region.add(ghost, target, mask)          # an empty mask adds nothing
    mask[:4] = True                          # half the masked pixels are wrong by 0.1: MSE 0.005
    region.add(ghost, target, mask)
    assert region.value() == pytest.approx(10 * np.log10(1 / 0.005))
    assert psnr(ghost, target) > region.value() + 2  # the whole frame (MSE 0.0025) hides the ghost
    region.add(target, target, mask)         # a clean frame of the same size halves the pooled MSE
    assert region.value() == pytest.approx(10 * np.log10(1 / 0.0025))


def test_recent_union_forgets_after_k_frames():
    union = RecentUnion(frames=2)
    a, b, none = (np.eye(3, dtype=bool), np.fliplr(np.eye(3, dtype=bool)), np.zeros((3, 3), bool))
    assert np.array_equal(union.add(a), a)
    assert np.array_equal(union.add(b), a | b)
    assert np.array_equal(union.add(none), b)
    assert not union.add(none).any()


def test_drift_compares_last_frames_with_the_first_after_warm_up():
    frames = np.r_[np.full(8, 10.0), np.full(16, 30.0), np.full(24, 29.0), np.full(16, 28.5)]
    assert drift_db(frames) == pytest.approx(-1.5)
    assert np.isnan(drift_db(frames[:39])) and drift_db(frames[:40]) == pytest.approx(-1.0)
