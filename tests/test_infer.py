"""Exposure of a user's burst (batman.infer): a robust brightness, one gain per video, --gain overrides."""
from __future__ import annotations

import numpy as np
import pytest

from batman.config import BatmanError, make_config
from batman.data.drv import folder_video, load_split
from batman.data.synth import synthesize
from batman.export import burst_video
from batman.infer import auto_gain, brightness


@pytest.fixture(scope="module")
def dark(tmp_path_factory):
    """Three static videos darkened by exactly 100 (test list only)."""
    root = tmp_path_factory.mktemp("dark")
    synthesize(root, videos=3, frames=3, size=(64, 96), seed=5, ratio=(100.0, 100.0), test_only=True)
    return root


def test_brightness_is_linear_and_ignores_a_few_hot_pixels():
    x = np.random.default_rng(0).uniform(0, 0.01, (4, 64, 64)).astype(np.float32)
    assert brightness(3 * x) == pytest.approx(3 * brightness(x), rel=1e-5)
    hot = x.copy()
    hot[:, :4, :4] = 1.0  # a lamp on 0.4% of the frame
    assert brightness(hot) < 1.2 * brightness(x)


def test_auto_gain_brings_the_burst_to_the_training_level(dark):
    """With the level of the clean long exposures, the chosen gain is the true exposure ratio (100)
    within the noise; a bright burst gets 1; a level far above caps at max_gain."""
    video = load_split(dark, "test")[0]
    reader_cfg = make_config("", {"data.max_gain": 300.0}).data
    from batman.data.dataset import FrameReader
    truth_level = brightness(FrameReader(reader_cfg).linear(video, 0)) * 100.0
    cfg = make_config("", {"data.exposure_level": truth_level}).data
    assert auto_gain(video, cfg) == pytest.approx(100.0, rel=0.05)
    assert auto_gain(video, make_config("", {"data.exposure_level": 1e-9}).data) == 1.0
    assert auto_gain(video, make_config("", {"data.exposure_level": 1e3}).data) == 300.0


def test_burst_video_uses_one_gain_and_gain_overrides(dark, capsys):
    folder = dark / "short" / load_split(dark, "test")[0].id
    cfg = make_config("", {"data.exposure_level": 0.1})
    chosen = burst_video(cfg, folder)
    assert len(set(chosen.gains)) == 1 and chosen.gains[0] > 1
    printed = capsys.readouterr()
    assert f"gain {chosen.gains[0]:.1f}, from the burst's brightness" in printed.out + printed.err
    assert burst_video(cfg, folder, gain=7.5).gains == (7.5,) * len(chosen.frames)
    with pytest.raises(BatmanError, match="--gain must be a positive"):
        burst_video(cfg, folder, gain=-1.0)
    with pytest.raises(BatmanError, match="pass --gain"):
        burst_video(make_config("", {}), folder)
    assert folder_video(folder).gains == (1.0,) * len(chosen.frames)
