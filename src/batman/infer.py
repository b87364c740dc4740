"""Streaming inference: the Enhancer (a model run frame by frame, its recurrent state carried, large
frames cut into overlapping tiles and blended), and the choice made before it, the exposure (gain) of
a burst that comes with no long exposure.

Tiles: a frame larger than `tile` is cut into tiles overlapping by at least `overlap`, each with its
own recurrent state, and blended with linear ramps so no seam shows.

Two passes (export and evaluate `--two-pass`): a video known in whole may run backward first, outputs dropped,
so that the forward pass starts from a state that has seen every frame and was carried back to the first one; on
a still scene every frame then gets the last frame's quality. Not causal, and twice the time.

Self-ensemble (`ensemble` 2, 4 or 8): the video also runs flipped and transposed, each view with its own
recurrent state, and the outputs, turned back, are averaged. Training augments with the same eight views
(dataset.flip_clip), so each is an estimate of similar quality whose errors differ in part; the cost grows
with the number of views.

Exposure: a DRV video knows its gain (long exposure / frame exposure). A user's own dark burst does not, and
multiplied by 1 it goes into the network as black. The gain is chosen from the burst itself:

    gain = clip(level / brightness(burst), 1, max_gain)

where brightness is a robust mean of the frames before any gain (black-subtracted, balanced, in the
model's colour space, nothing clipped, so a dark frame's noise does not bias it) and `level` is the
same statistic of the gained training inputs (data.exposure_level, measured by `train`). One gain per
video, from its first frames, so the output does not flicker; a burst that is already bright gets 1.
"""
from __future__ import annotations

import numpy as np
import torch

from batman.config import ENSEMBLES, BatmanError, DataCfg
from batman.data.dataset import FrameReader, flip_clip

# --- the enhancer: model + tiling + state ------------------------------------------------------

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared."""
    if tile <= 0 or length <= tile:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def ramp_weights(size: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D blending weights of a tile. On a side shared with a neighbour the outer quarter of the
    overlap gets weight 0 (those pixels saw the tile's artificial border) and the next half ramps up
    linearly, so the neighbour, whose own margin lies elsewhere, covers every pixel."""
    w = np.ones(size, np.float32)
    margin, ramp_len = overlap // 4, max(overlap // 2, 1)
    ramp = np.concatenate([np.zeros(margin, np.float32),
                           (np.arange(ramp_len, dtype=np.float32) + 0.5) / ramp_len])[: size // 2]
    if overlap > 0:
        if not at_start:
            w[: len(ramp)] = ramp
        if not at_end:
            w[size - len(ramp):] = ramp[::-1]
    return w


# (hflip, vflip, transpose) of each view, in the order taken: 2 adds the transpose (exact on a packed raw,
# where it swaps G1 and G2), 4 the two that also keep the diagonals, 8 every flip and transpose
VIEWS = ((False, False, False), (False, False, True), (True, True, False), (True, True, True),
         (True, False, False), (False, True, False), (True, False, True), (False, True, True))


def unflip(y: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """The inverse of dataset.flip_clip on an output (..., 3, H, W): transpose first, then the flips."""
    if transpose:
        y = np.swapaxes(y, -1, -2)
    if vflip:
        y = y[..., ::-1, :]
    return y[..., ::-1] if hflip else y


class Enhancer:
    """Wraps a model for frame-by-frame inference: (C, H, W) float32 -> (sH, sW, 3) float32 in [0, 1].

    The model and its input run channels_last (the model is converted in place): the convolutions' fastest
    layout, measured faster than the contiguous one for every model on the CPU (`bench infer`), and the
    same output up to float rounding (tests/test_model.py). `ensemble`: views averaged (module docstring);
    `packed`: the input is a packed raw (a transpose swaps G1 and G2); `bf16`: the network under bf16 autocast
    (the recursive filter and the camera fit stay float32; faster on CPUs with native bf16 and on GPUs)."""

    def __init__(self, model: torch.nn.Module, scale: int, device: torch.device | str = "cpu",
                 tile: int = 0, overlap: int = 32, ensemble: int = 1, packed: bool = True, bf16: bool = False):
        if tile and tile <= 2 * overlap:
            raise BatmanError(f"--tile {tile} must be larger than twice --overlap {overlap}")
        if ensemble not in ENSEMBLES:
            raise BatmanError(f"--ensemble must be one of {', '.join(map(str, ENSEMBLES))}, got {ensemble}")
        self.views, self.packed = VIEWS[:ensemble], packed
        self.model, self.scale, self.device = model.eval(), scale, torch.device(device)
        if isinstance(model, torch.nn.Module):
            self.model.to(memory_format=torch.channels_last)
        self.tile, self.overlap, self.bf16 = tile, overlap, bf16
        self.states: dict = {}

    def reset(self) -> None:
        """Start a new video: every tile's recurrent state back to zeros."""
        self.states = {}

    @torch.inference_mode()
    def _step(self, key, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0).to(self.device)
        t = t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            y, self.states[key] = self.model.step(t, self.states.get(key))
        return y[0].float().cpu().numpy()  # (3, sh, sw)

    def _run(self, key, x: np.ndarray) -> np.ndarray:
        """One tile through every view, each with its own state, averaged."""
        if len(self.views) == 1:
            return self._step(key, x)
        total = sum(unflip(self._step((key, view), flip_clip(x, *view, packed=self.packed)), *view)
                    for view in self.views)
        return total / len(self.views)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        _, h, w = frame.shape
        s = self.scale
        ys, xs = tile_starts(h, self.tile, self.overlap), tile_starts(w, self.tile, self.overlap)
        if len(ys) == 1 and len(xs) == 1:
            return np.clip(self._run((0, 0), frame).transpose(1, 2, 0), 0, 1)
        th, tw = min(self.tile, h), min(self.tile, w)
        acc = np.zeros((3, h * s, w * s), np.float32)
        weight = np.zeros((h * s, w * s), np.float32)
        for y0 in ys:
            wy = ramp_weights(th * s, self.overlap * s, y0 == 0, y0 + th >= h)
            for x0 in xs:
                wx = ramp_weights(tw * s, self.overlap * s, x0 == 0, x0 + tw >= w)
                out = self._run((y0, x0), frame[:, y0:y0 + th, x0:x0 + tw])
                win = np.outer(wy, wx)
                acc[:, y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += out * win
                weight[y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += win
        return np.clip((acc / weight).transpose(1, 2, 0), 0, 1)


# --- exposure ----------------------------------------------------------------------------------

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
    reader = FrameReader(cfg)
    n = min(BURST_FRAMES, len(video.frames))
    level = float(np.mean([brightness(reader.linear(video, i)) for i in range(n)]))
    if not level > 0:
        return float(cfg.max_gain)
    return float(np.clip(cfg.exposure_level / level, 1.0, cfg.max_gain))
