"""Classical baselines: what the model is compared with in evaluate's table (`--baselines` picks them;
`traditional` and `mean` by default, the BM3D/BM4D ones cost seconds per frame), export's side by side
and bench quality. Each streams: push(frame) -> the outputs ready now, flush() -> the rest.
- `traditional`: the gained input x_t through a plain camera pipeline P (average greens, white
  balance, colour matrix, gamma, tone curve): s_t = P(x_t), sRGB (H, W, 3);
- `mean`: the causal running mean through the same pipeline, P(mean(x_1..x_t)), a strong baseline on
  static scenes and a ghosting one on moving scenes;
- `bm3d`: BM3D (Dabov et al. 2007; the `bm3d` package, opponent colour space) on each s_t with
  sigma_t = median(|HH(s_t)|) / 0.6745, Donoho's estimate from the finest diagonal Haar band;
- `mean-bm3d`: BM3D on P(mean(x_1..x_t)) with sigma = sigma_1 / sqrt(t), where the one-frame sRGB
  noise sigma_1 = 1.4826 MAD(s_i - s_{i-1}) / sqrt(2) is averaged over the pairs seen so far (the
  difference of two frames of a static scene holds twice the noise variance and none of the scene);
  Donoho's estimate until the second frame. P is not linear, so 1/sqrt(t) is an approximation;
- `bm4d`: BM4D (Maggioni et al. 2013; the `bm4d` package) on (T, H, W) stacks of s_t, one per
  opponent colour channel: the non-causal peer. It needs the clip, so it runs on windows of
  BM4D_WINDOW frames (memory and time bounded, every frame scored, possible jumps at window edges),
  sigma the median of the window's Donoho estimates.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from batman.config import BatmanError, Config
from batman.data.raw import read_raw
from batman.isp import traditional_pipeline

TRADITIONAL, TEMPORAL_MEAN = "traditional", "temporal mean"
BM3D, MEAN_BM3D, BM4D = "BM3D", "temporal mean + BM3D", "BM4D"
BM4D_WINDOW = 16      # frames per BM4D volume (a 918x1374 DRV window: 16 x 15 MB of sRGB)
BM4D_MIN_FRAMES = 5   # BM4D's Wiener blocks are 5x5x5: shorter windows are mirrored in time
MAD_TO_SIGMA = 1.4826  # sigma = 1.4826 x median absolute deviation for Gaussian noise (1 / 0.6745)
OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])  # as bm3d's 'opp'


@dataclass
class BaselineISP:
    """The plain camera pipeline for one video: white balance and camera -> sRGB matrix."""
    wb: np.ndarray
    cam_to_srgb: np.ndarray
    packed: bool = True  # input is packed R, G1, G2, B (raw mode), else camera RGB (rawrgb)

    def process(self, frame: np.ndarray, scale: int = 1) -> np.ndarray:
        """Gained model input (C, H, W) -> sRGB (sH, sW, 3); rawRGB skips the green average and
        channels past the colour ones (the noise map) are ignored."""
        packed = frame[:4] if self.packed else np.stack([frame[0], frame[1], frame[1], frame[2]])
        return upscale(traditional_pipeline(packed, self.wb, self.cam_to_srgb), scale)


def baseline_isp(video, cfg: Config) -> BaselineISP:
    """The pipeline that finishes the model's input: with data.white_balance the input is already
    balanced (the pipeline's own balance is 1), with data.colour=srgb already in linear sRGB (its matrix
    is the identity); what is left comes from the synthetic metadata, else the first raw frame."""
    if cfg.data.mode != "raw":
        return BaselineISP(np.ones(3), np.eye(3), packed=False)
    meta = getattr(video, "meta", None) or {}
    balanced, in_srgb = cfg.data.white_balance, cfg.data.colour == "srgb" and video.cam_to_srgb is not None
    if balanced and in_srgb:
        return BaselineISP(np.ones(3), np.eye(3))
    if "wb" in meta and "cam_to_srgb" in meta:
        wb, matrix = np.asarray(meta["wb"], float)[:3], np.asarray(meta["cam_to_srgb"], float)
    else:
        frame = read_raw(video.frames[0])
        wb = np.asarray(frame.wb, float)[[0, 1, 3]]
        matrix = frame.cam_to_srgb if frame.cam_to_srgb is not None else np.eye(3)
    return BaselineISP(np.ones(3) if balanced else wb, np.eye(3) if in_srgb else matrix)


def upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) -> (sH, sW, 3) by repeating pixels (denoisers run before it: repeats hide the noise)."""
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else rgb


def mad_sigma(image: np.ndarray) -> float:
    """Donoho's noise estimate of an (H, W[, C]) image: median(|HH|) / 0.6745 per channel, averaged,
    HH = (x00 - x01 - x10 + x11) / 2 on 2x2 blocks (the finest diagonal orthonormal Haar band, where
    a smooth scene leaves little and white noise keeps its variance)."""
    x = np.asarray(image, dtype=np.float64)
    x = x[..., None] if x.ndim == 2 else x
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    hh = (x[0:h:2, 0:w:2] - x[0:h:2, 1:w:2] - x[1:h:2, 0:w:2] + x[1:h:2, 1:w:2]) / 2
    return float(np.mean(np.median(np.abs(hh).reshape(-1, x.shape[-1]), axis=0))) * MAD_TO_SIGMA


def difference_sigma(current: np.ndarray, previous: np.ndarray) -> float:
    """One frame's noise sigma from two frames of a static scene: 1.4826 MAD(d) / sqrt(2), d = their
    difference per channel, averaged (the MAD shrugs off the few pixels that moved)."""
    d = np.asarray(current, dtype=np.float64) - np.asarray(previous, dtype=np.float64)
    d = d.reshape(-1, d.shape[-1]) if d.ndim == 3 else d.reshape(-1, 1)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    return float(np.mean(mad)) * MAD_TO_SIGMA / math.sqrt(2)


def require(package: str, method: str):
    """Import an optional denoiser package, or a one-line error saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise BatmanError(f"the {method} baseline needs the {package} package: `make install` (pinned in "
                          f"requirements.txt) or pip install 'batman[classical]'") from None


def bm3d_rgb(srgb: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D of an sRGB (H, W, 3) image with white noise of `sigma` (opponent colour space)."""
    bm3d = require("bm3d", BM3D)
    return np.asarray(bm3d.bm3d_rgb(srgb, max(sigma, 1e-6)), dtype=np.float32)


def bm4d_clip(clip: np.ndarray, sigma: float) -> np.ndarray:
    """BM4D of a (T, H, W, 3) sRGB clip with white noise of `sigma` per channel: each opponent colour
    channel (T, H, W) is one volume, sigma scaled by the norm of its transform row; a clip shorter than
    BM4D's blocks is mirrored in time first and cut back after.

    Why opponent channels: colour noise is correlated across R, G, B after the colour matrix; on dark
    synthetic clips they beat one volume per R, G, B channel and opponent channels sharing the luma's
    block matches (docs/RESULTS.md, "BM4D colour space"; bm4d 4.2.5 returns NaNs when Wiener matches
    are shared)."""
    bm4d = require("bm4d", BM4D)
    t = clip.shape[0]
    padded = np.pad(clip, ((0, max(0, BM4D_MIN_FRAMES - t)), (0, 0), (0, 0), (0, 0)), mode="symmetric")
    opponent = padded.astype(np.float64) @ OPPONENT.T
    sigmas = max(sigma, 1e-6) * np.sqrt((OPPONENT ** 2).sum(axis=1))
    out = np.stack([bm4d.bm4d(opponent[..., c], s) for c, s in enumerate(sigmas)], axis=-1)
    return (out @ np.linalg.inv(OPPONENT).T)[:t].astype(np.float32)


class FrameNoise:
    """Causal estimate of one frame's sRGB noise sigma: difference_sigma averaged over the consecutive
    pairs seen so far, mad_sigma of the first frame until a second one arrives."""

    def __init__(self):
        self.previous, self.first, self.pairs = None, 0.0, []

    def add(self, srgb: np.ndarray) -> float:
        if self.previous is None:
            self.first = mad_sigma(srgb)
        else:
            self.pairs.append(difference_sigma(srgb, self.previous))
        self.previous = srgb
        return float(np.mean(self.pairs)) if self.pairs else self.first


class Traditional:
    """A classical baseline for one video: push(frame) -> the outputs ready now (one per frame for the
    causal ones), flush() -> the rest at the end. frame: gained model input (C, H, W)."""
    name = TRADITIONAL

    def __init__(self, isp: BaselineISP, scale: int = 1):
        self.isp, self.scale = isp, scale

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [self.isp.process(frame, self.scale)]

    def flush(self) -> list[np.ndarray]:
        return []


class TemporalMean(Traditional):
    """The causal running mean through the pipeline, P(mean(x_1..x_t)): a float64 running sum and a count.
    `mean` alone (no pipeline) serves every other user of the temporal mean."""
    name = TEMPORAL_MEAN

    def __init__(self, isp: BaselineISP, scale: int = 1):
        super().__init__(isp, scale)
        self.sum, self.count = None, 0

    def mean(self, frame: np.ndarray) -> np.ndarray:
        """The mean of the frames added so far, this one included, float32."""
        self.sum = frame.astype(np.float64) if self.sum is None else self.sum + frame
        self.count += 1
        return (self.sum / self.count).astype(np.float32)

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [self.isp.process(self.mean(frame), self.scale)]


class BM3DFrames(Traditional):
    name = BM3D

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        srgb = self.isp.process(frame)
        return [upscale(bm3d_rgb(srgb, mad_sigma(srgb)), self.scale)]


class MeanBM3D(TemporalMean):
    name = MEAN_BM3D

    def __init__(self, isp: BaselineISP, scale: int = 1):
        super().__init__(isp, scale)
        self.noise = FrameNoise()

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        mean = self.isp.process(self.mean(frame))
        sigma = self.noise.add(self.isp.process(frame)) / math.sqrt(self.count)
        return [upscale(bm3d_rgb(mean, sigma), self.scale)]


class BM4DWindows(Traditional):
    name = BM4D

    def __init__(self, isp: BaselineISP, scale: int = 1, window: int = BM4D_WINDOW):
        super().__init__(isp, scale)
        self.window, self.frames = window, []

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.frames.append(self.isp.process(frame))
        return self.flush() if len(self.frames) >= self.window else []

    def flush(self) -> list[np.ndarray]:
        if not self.frames:
            return []
        clip, self.frames = np.stack(self.frames), []
        sigma = float(np.median([mad_sigma(f) for f in clip]))
        return [upscale(f, self.scale) for f in bm4d_clip(clip, sigma)]


BASELINES = {"traditional": Traditional, "mean": TemporalMean, "bm3d": BM3DFrames, "mean-bm3d": MeanBM3D,
             "bm4d": BM4DWindows}
DEFAULT_BASELINES = ("traditional", "mean")
NEEDS = {"bm3d": "bm3d", "mean-bm3d": "bm3d", "bm4d": "bm4d"}


def check_baselines(names) -> tuple[str, ...]:
    """Known names, each once, with their packages importable; else a one-line error. `none` alone: no baselines."""
    names = tuple(dict.fromkeys(names))
    if "none" in names:
        others = [n for n in names if n != "none"]
        if others:
            raise BatmanError(f"baseline 'none' means no baselines: it cannot be given with {others[0]!r}")
        return ()
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise BatmanError(f"unknown baseline {unknown[0]!r}: choose from {', '.join(BASELINES)}")
    for n in names:
        if n in NEEDS:
            require(NEEDS[n], BASELINES[n].name)
    return names
