"""Image and video quality: PSNR, SSIM (scikit-image's) and MABD temporal consistency.

Images are float (H, W, 3) in [0, 1]. MABD (Jiang & Zheng, ICCV 2019): for a video, the vector of
mean absolute differences of luma between consecutive frames; luma Y = 0.299 R + 0.587 G + 0.114 B
(ITU-R BT.601) on the sRGB values. The temporal error of an output is the mean squared difference
between its MABD vector and the ground truth's (zeros for a static scene).
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


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
