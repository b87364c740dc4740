"""Image and video quality: PSNR, SSIM (scikit-image's), MABD temporal consistency, ghosting and drift.

Images are float (H, W, 3) in [0, 1]. MABD (Jiang & Zheng, ICCV 2019): for a video, the vector of
mean absolute differences of luma between consecutive frames; luma Y = 0.299 R + 0.587 G + 0.114 B
(ITU-R BT.601) on the sRGB values. The temporal error of an output is the mean squared difference
between its MABD vector and the ground truth's (zeros for a static scene).

Ghosting (synthetic videos with motion masks, batman.data.motion): PSNR over the pixels a mask selects,
pooled over the whole video, 10 log10(1 / (sum of squared errors / number of values)), so that frames
whose mask is small weigh little. Regions: `moving` (the scene changed since the previous frame) and
`uncovered` (disoccluded in the last UNCOVERED_FRAMES frames: the union of the per-frame masks).
Drift: mean PSNR of the last DRIFT_SPAN frames minus that of the DRIFT_SPAN frames after DRIFT_WARMUP
(negative: quality falls as the recurrence runs on).
"""
from __future__ import annotations

from collections import deque

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
UNCOVERED_FRAMES = 4   # a pixel counts as recently uncovered for this many frames
DRIFT_WARMUP = 8       # frames left out before the drift's first window (the recurrence settling)
DRIFT_SPAN = 16        # frames in each of the drift's two windows


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(np.clip(target, 0, 1), np.clip(output, 0, 1), data_range=1.0))


def ssim(output: np.ndarray, target: np.ndarray) -> float:
    return float(structural_similarity(np.clip(target, 0, 1), np.clip(output, 0, 1), data_range=1.0,
                                       channel_axis=-1))


def luma(image: np.ndarray) -> np.ndarray:
    return np.tensordot(image[..., :3], np.asarray(LUMA_WEIGHTS, dtype=np.float64), axes=([-1], [0]))


class MABD:
    """Streaming MABD: feed frames one at a time, memory independent of the video's length."""

    def __init__(self):
        self.previous: np.ndarray | None = None
        self.values: list[float] = []

    def add(self, frame: np.ndarray) -> None:
        y = luma(np.clip(frame, 0, 1))
        if self.previous is not None:
            self.values.append(float(np.mean(np.abs(y - self.previous))))
        self.previous = y

    def vector(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)


def mabd(frames) -> np.ndarray:
    """MABD vector of a sequence of (H, W, 3) frames (length T - 1)."""
    m = MABD()
    for f in frames:
        m.add(f)
    return m.vector()


def mabd_error(output_mabd: np.ndarray, target_mabd: np.ndarray) -> float:
    """Mean squared difference of two MABD vectors; a static truth has a zero vector."""
    target_mabd = np.broadcast_to(target_mabd, output_mabd.shape)
    return float(np.mean((output_mabd - target_mabd) ** 2)) if output_mabd.size else 0.0


class RegionPSNR:
    """PSNR over the masked pixels of a whole video, pooled: feed (output, target, mask) per frame."""

    def __init__(self):
        self.squared_error, self.count = 0.0, 0

    def add(self, output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        """mask: (H, W) bool on the images' grid."""
        if mask.any():
            diff = np.clip(output, 0, 1)[mask].astype(np.float64) - np.clip(target, 0, 1)[mask]
            self.squared_error += float(np.sum(diff ** 2))
            self.count += diff.size

    def value(self) -> float:
        """The PSNR in dB; nan when no pixel was selected, inf when every selected one is exact."""
        if not self.count:
            return float("nan")
        mse = self.squared_error / self.count
        return float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf")


class RecentUnion:
    """The union of the last `frames` masks (e.g. what was uncovered recently)."""

    def __init__(self, frames: int = UNCOVERED_FRAMES):
        self.masks: deque = deque(maxlen=frames)

    def add(self, mask: np.ndarray) -> np.ndarray:
        self.masks.append(mask)
        return np.logical_or.reduce(list(self.masks))


def drift_db(psnr_frames, warmup: int = DRIFT_WARMUP, span: int = DRIFT_SPAN) -> float:
    """Mean PSNR of the last `span` frames minus that of frames [warmup, warmup + span); nan when the
    video is shorter than warmup + 2 span (the windows would overlap)."""
    values = np.asarray(psnr_frames, dtype=np.float64)
    if values.size < warmup + 2 * span:
        return float("nan")
    return float(values[-span:].mean() - values[warmup:warmup + span].mean())
