"""Choices made before inference: the exposure (gain) of a burst that comes with no long exposure.

A DRV video knows its gain (long exposure / frame exposure). A user's own dark burst does not, and
multiplied by 1 it goes into the network as black. The gain is chosen from the burst itself:

    gain = clip(level / brightness(burst), 1, max_gain)

where brightness is a robust mean of the frames before any gain (black-subtracted, balanced, in the
model's colour space, nothing clipped, so a dark frame's noise does not bias it) and `level` is the
same statistic of the gained training inputs (data.exposure_level, measured by `train`). One gain per
video, from its first frames, so the output does not flicker; a burst that is already bright gets 1.
"""
from __future__ import annotations

import numpy as np

from batman.config import DataCfg

BURST_FRAMES = 8      # frames whose brightness sets a burst's gain
SUBSAMPLE = 4         # every 4th pixel each way: the statistic of millions of pixels needs no more
WINSOR_PERCENTILE = 99.0


def brightness(linear: np.ndarray) -> float:
    """Winsorised mean of a frame's colour channels (C, H, W): values above the 99th percentile count
    as that percentile, so a street lamp does not set the exposure of a whole dark scene."""
    x = np.asarray(linear[:4], dtype=np.float32)[:, ::SUBSAMPLE, ::SUBSAMPLE].mean(axis=0)
    return float(np.minimum(x, np.percentile(x, WINSOR_PERCENTILE)).mean())


def exposure_level(videos, reader, max_videos: int = 32) -> float:
    """The median brightness of gained training inputs (first frame of up to `max_videos` videos);
    `reader`: the training data's FrameReader."""
    max_gain = reader.cfg.max_gain
    picked = videos[:: max(1, len(videos) // max_videos)][:max_videos]
    levels = [brightness(reader.linear(v, 0)) * min(v.gains[0], max_gain) for v in picked]
    return float(np.median(levels)) if levels else 0.0


def auto_gain(video, cfg: DataCfg) -> float:
    """The gain that brings the burst's brightness to cfg.exposure_level, within [1, cfg.max_gain]."""
    from batman.data.dataset import FrameReader
    reader = FrameReader(cfg)
    n = min(BURST_FRAMES, len(video.frames))
    level = float(np.mean([brightness(reader.linear(video, i)) for i in range(n)]))
    if not level > 0:
        return float(cfg.max_gain)
    return float(np.clip(cfg.exposure_level / level, 1.0, cfg.max_gain))
