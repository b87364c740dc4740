"""Training clips and full-frame streams from DRV-layout videos.

Raw mode: counts (from the cache, or decoded) -> normalize -> x the as-shot white balance (data.white_balance)
-> the file's camera -> linear sRGB matrix (data.colour) -> x gain -> clip to [0, 1], on the packed
grid binned by cfg.bin. Every packed pixel is a whole 2x2 Bayer tile, so crops at any offset and
flips keep R, G1, G2, B meaning; only a transpose moves G1 (the red row's green) into the red
column, which is G2's place, so it swaps those two channels.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from batman.config import BatmanError, DataCfg
from batman.data.cache import FrameCache
from batman.data.drv import Video, png_size, read_target
from batman.data.raw import decode_counts, normalize


def input_grid(video: Video, bin: int) -> tuple[int, int]:
    """(h, w) of the model's input: the packed mosaic binned by `bin` (raw), the PNG size (rawrgb)."""
    h, w = video.size
    return (h // 2 // bin, w // 2 // bin) if video.mode == "raw" else (h, w)


def flip_clip(x: np.ndarray, hflip: bool, vflip: bool, transpose: bool, packed: bool) -> np.ndarray:
    """Flip / transpose the last two axes of (..., C, H, W); on a packed raw a transpose swaps G1 and G2."""
    if hflip:
        x = x[..., ::-1]
    if vflip:
        x = x[..., ::-1, :]
    if transpose:
        x = np.swapaxes(x, -1, -2)
        if packed:  # channels after the fourth (the noise map) do not move
            x = x[..., [0, 2, 1, 3, *range(4, x.shape[-3])], :, :]
    return np.ascontiguousarray(x)


def gained(x: np.ndarray, gain: float, max_gain: float) -> np.ndarray:
    """x * min(gain, max_gain), clipped to [0, 1] in place."""
    x *= np.float32(min(gain, max_gain))
    return np.clip(x, 0.0, 1.0, out=x)


def to_linear_srgb(packed: np.ndarray, cam_to_srgb) -> np.ndarray:
    """Packed balanced camera R, G1, G2, B (4, h, w) -> packed linear sRGB (isp.packed_colour_matrix)."""
    from batman.isp import packed_colour_matrix
    m = packed_colour_matrix(cam_to_srgb).astype(np.float32)
    return np.einsum("ij,jhw->ihw", m, packed, optimize=True).astype(np.float32, copy=False)


def with_noise_map(x: np.ndarray, gain: float, max_gain: float) -> np.ndarray:
    """Append a constant channel log(gain) / log(max_gain): the noise level of a gained frame of one sensor."""
    level = np.float32(np.log(max(min(gain, max_gain), 1.0)) / np.log(max(max_gain, 2.0)))
    return np.concatenate([x, np.full((1, *x.shape[1:]), level, np.float32)])


@dataclass(frozen=True)
class Window:
    """A crop on the input grid: rows y..y+h, columns x..x+w."""
    y: int
    x: int
    h: int
    w: int

    def scaled(self, s: int) -> tuple[slice, slice]:
        return slice(self.y * s, (self.y + self.h) * s), slice(self.x * s, (self.x + self.w) * s)


class FrameReader:
    """Reads one input frame (C, h, w) of a window, from the cache (open, see cache.open_cache) when it has
    the frame."""

    def __init__(self, cfg: DataCfg, cache: FrameCache | None = None):
        if cfg.colour not in ("srgb", "camera"):
            raise BatmanError(f"data.colour must be srgb or camera, got {cfg.colour!r}")
        self.cfg = cfg
        self.cache = cache
        if self.cache is not None and self.cache.bin != cfg.bin:
            raise BatmanError(f"cache {self.cache.folder} was prepared with bin={self.cache.bin} but "
                              f"data.bin={cfg.bin}: rerun batman prepare with bin {cfg.bin} or use another cache")

    def frame(self, video: Video, i: int, window: Window | None = None) -> np.ndarray:
        """Float32 (C, h, w) of frame i, gained and clipped; the whole frame when window is None."""
        x = gained(self.linear(video, i, window), video.gains[i], self.cfg.max_gain)
        return with_noise_map(x, video.gains[i], self.cfg.max_gain) if self.cfg.noise_map else x

    def linear(self, video: Video, i: int, window: Window | None = None) -> np.ndarray:
        """Float32 (C, h, w) of frame i before the gain: black-subtracted, normalised, balanced and in the
        colour space of data.colour, nothing clipped (a dark frame's mean stays unbiased)."""
        path = video.frames[i]
        rows, cols = window.scaled(1) if window else (slice(None), slice(None))
        if video.mode == "rawrgb":
            return np.ascontiguousarray(read_target(path)[rows, cols].transpose(2, 0, 1))
        x = self._raw(path, rows, cols)
        if self.cfg.white_balance:
            x *= np.asarray(video.wb, dtype=np.float32).reshape(-1, 1, 1)
        if self.cfg.colour == "srgb" and video.cam_to_srgb is not None:
            x = to_linear_srgb(x, video.cam_to_srgb)
        return x

    def _raw(self, path: Path, rows: slice, cols: slice) -> np.ndarray:
        entry = self.cache.entry(path) if self.cache is not None else None
        if entry is not None and entry["status"] == "ok":
            counts, black, white = self.cache.counts(entry)[:, rows, cols], entry["black"], entry["white"]
        else:
            decoded = decode_counts(path, self.cfg.bin)
            counts, black, white = decoded.counts[:, rows, cols], decoded.black, decoded.white
        return normalize(counts, black, white, self.cfg.bin)


def _crop_size(cfg: DataCfg) -> tuple[int, int] | None:
    crop = cfg.crop
    return None if not crop or tuple(crop) == (0, 0) else (int(crop[0]), int(crop[1]))


def _even(n: int) -> int:
    return n // 2 * 2


class ClipDataset(torch.utils.data.Dataset):
    """Clips of cfg.frames frames: dict(input (T, C, H, W), target (T, 3, sH, sW), id, start, crop).

    Training: len = videos x cfg.clips_per_video; item i draws a window of frames, a crop at even
    offsets and flips from np.random.default_rng((seed, epoch, i)). Evaluation (train=False): one item
    per video, the first T frames, a centre crop (the full frame when cfg.crop is (0, 0)).
    A static video's target is one image expanded over T (no copies). `crop` is the (y, x) of the
    window on the input grid before any flip.
    """

    def __init__(self, videos: list[Video], cfg: DataCfg, scale: int = 1, train: bool = True, seed: int = 0,
                 cache: FrameCache | None = None):
        if not videos:
            raise BatmanError("no videos to make clips from")
        self.videos, self.cfg, self.scale, self.train, self.seed = list(videos), cfg, scale, train, seed
        self.reader = FrameReader(cfg, cache)
        self.crop = _crop_size(cfg)
        self.epoch = 0
        for video in self.videos:
            self._check(video)

    def _check(self, video: Video) -> None:
        if video.mode != self.cfg.mode:
            raise BatmanError(f"video {video.id} was loaded in mode {video.mode} but data.mode={self.cfg.mode}")
        if not video.targets:
            raise BatmanError(f"video {video.id} has no ground truth (long/{video.id}/half0001*.png): "
                              "it cannot make training or evaluation clips")
        if len(video.frames) < self.cfg.frames:
            raise BatmanError(f"video {video.id} has {len(video.frames)} frames, fewer than the clip "
                              f"length data.frames={self.cfg.frames}")
        h, w = input_grid(video, self.cfg.bin)
        for target in video.targets:
            th, tw = png_size(target)
            if (th, tw) != (h * self.scale, w * self.scale):
                grid = f"bin={self.cfg.bin} gives" if video.mode == "raw" else "the rawRGB input is"
                raise BatmanError(f"video {video.id}: {grid} {h}x{w} but {'/'.join(target.parts[-3:])} "
                                  f"is {th}x{tw} (scale {self.scale})")
        if self.crop and (self.crop[0] > h or self.crop[1] > w):
            raise BatmanError(f"video {video.id}: crop {self.crop[0]}x{self.crop[1]} is larger than its "
                              f"input grid {h}x{w}")

    def set_epoch(self, epoch: int) -> None:
        """Draw new clips: item i's randomness comes from (seed, epoch, i)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos) * (self.cfg.clips_per_video if self.train else 1)

    def _plan(self, video: Video, i: int) -> tuple[int, list[Window], tuple[bool, bool, bool]]:
        """(first frame, one crop window per frame, (hflip, vflip, transpose)) of item i."""
        h, w = input_grid(video, self.cfg.bin)
        ch, cw = self.crop or (h, w)
        t = self.cfg.frames
        if not self.train:
            return 0, [Window(_even((h - ch) // 2), _even((w - cw) // 2), ch, cw)] * t, (False, False, False)
        rng = np.random.default_rng((self.seed, self.epoch, i))
        start = int(rng.integers(0, len(video.frames) - t + 1))
        hflip, vflip, transpose = (bool(b) for b in rng.integers(0, 2, size=3))
        transpose = transpose and self.cfg.augment and cw <= h and ch <= w
        if transpose:  # read the window the other way round so that it comes out ch x cw
            ch, cw = cw, ch
        flips = (hflip, vflip, transpose) if self.cfg.augment else (False, False, False)
        pan = video.static and rng.random() < self.cfg.motion
        speed = self.cfg.motion_speed if pan else 0
        ys = _pan_offsets(rng, h - ch, t, speed)
        xs = _pan_offsets(rng, w - cw, t, speed)
        return start, [Window(y, x, ch, cw) for y, x in zip(ys, xs)], flips

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        video = self.videos[i % len(self.videos)]
        start, windows, flips = self._plan(video, i)
        clip = np.stack([self.reader.frame(video, start + k, win) for k, win in enumerate(windows)])
        clip = flip_clip(clip, *flips, packed=video.mode == "raw")
        target = torch.from_numpy(flip_clip(self._target(video, start, windows), *flips, packed=False))
        if target.shape[0] == 1:
            target = target.expand(self.cfg.frames, *target.shape[1:])
        return {"input": torch.from_numpy(clip), "target": target, "id": video.id, "start": start,
                "crop": (windows[0].y, windows[0].x)}

    def _target(self, video: Video, start: int, windows: list[Window]) -> np.ndarray:
        """(T or 1, 3, sH, sW): a still static video's one image, else one crop per frame."""
        if video.static:
            if all(win == windows[0] for win in windows):
                windows = windows[:1]
            image = read_target(video.targets[0])
            images = (image for _ in windows)
        else:
            images = (read_target(p) for p in video.targets[start:start + len(windows)])
        return np.stack([image[win.scaled(self.scale)].transpose(2, 0, 1) for image, win in zip(images, windows)])


def _pan_offsets(rng: np.random.Generator, room: int, frames: int, speed: int) -> list[int]:
    """Even crop offsets along one axis for `frames` frames: still (speed 0) at a random place, or moving
    at a random constant velocity up to `speed` pixels per frame, as far as `room` allows."""
    v = float(rng.uniform(-speed, speed)) if speed else 0.0
    v = max(-room, min(room, v * (frames - 1))) / max(frames - 1, 1)
    lo = max(0.0, -v * (frames - 1))
    first = lo + float(rng.uniform(0, room - abs(v) * (frames - 1))) if room else 0.0
    return [_even(int(round(first + v * k))) for k in range(frames)]


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and random in each DataLoader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def iter_frames(video: Video, cfg: DataCfg, cache: FrameCache | None = None,
                indices=None) -> Iterator[np.ndarray]:
    """Every full input frame of a video (or those at `indices`, in their order), float32 (C, H, W) gained and
    clipped, one at a time."""
    reader = FrameReader(cfg, cache)
    for i in range(len(video.frames)) if indices is None else indices:
        yield reader.frame(video, i)


def load_targets(video: Video, n_frames: int = 0) -> Iterator[np.ndarray]:
    """The ground truth (H, W, 3) of the first n_frames frames (0: all), one at a time; a static
    video's single target is read once and yielded, read-only, for every frame."""
    if not video.targets:
        raise BatmanError(f"video {video.id} has no ground truth")
    return _targets(video, n_frames or len(video.frames))


def _targets(video: Video, n: int) -> Iterator[np.ndarray]:
    if video.static:
        target = read_target(video.targets[0])
        target.flags.writeable = False
        for _ in range(n):
            yield target
        return
    for path in video.targets[:n]:
        yield read_target(path)
