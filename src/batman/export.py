"""Streaming export: frames are read, enhanced and written one at a time, the recurrent state carried.

Memory does not grow with the video's length: a reader thread decodes the next frames while the
model runs, a writer thread encodes PNG and H.264 behind it, and only a couple of frames are ever in
flight. Frames larger than `tile` are cut into overlapping tiles, each with its own recurrent state,
and blended with linear ramps so no seam shows.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from batman.config import BatmanError, Config, check_options

_DONE = object()


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


class Enhancer:
    """Wraps a model for frame-by-frame inference: (C, H, W) float32 -> (sH, sW, 3) float32 in [0, 1]."""

    def __init__(self, model: torch.nn.Module, scale: int, device: torch.device | str = "cpu",
                 tile: int = 0, overlap: int = 32):
        if tile and tile <= 2 * overlap:
            raise BatmanError(f"--tile {tile} must be larger than twice --overlap {overlap}")
        self.model, self.scale, self.device = model.eval(), scale, torch.device(device)
        self.tile, self.overlap = tile, overlap
        self.states: dict = {}

    def reset(self) -> None:
        """Start a new video: every tile's recurrent state back to zeros."""
        self.states = {}

    @torch.inference_mode()
    def _run(self, key, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0).to(self.device)
        y, self.states[key] = self.model.step(t, self.states.get(key))
        return y[0].float().cpu().numpy()  # (3, sh, sw)

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


# --- threads that overlap decoding and encoding with inference ---------------------------------

def prefetch(iterable, depth: int = 2):
    """Iterate `iterable` in a background thread, at most `depth` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    error: list[BaseException] = []

    def work():
        try:
            for item in iterable:
                q.put(item)
        except BaseException as e:  # handed to the consumer, raised there
            error.append(e)
        finally:
            q.put(_DONE)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not _DONE:
        yield item
    if error:
        raise error[0]


class BackgroundWriter:
    """Runs write calls in order on one thread; `close` waits and re-raises the first error."""

    def __init__(self, depth: int = 2):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self):
        while (job := self.q.get()) is not _DONE:
            if self.error is None:
                try:
                    job()
                except BaseException as e:
                    self.error = e

    def submit(self, job) -> None:
        if self.error:
            raise self.error
        self.q.put(job)

    def close(self) -> None:
        self.q.put(_DONE)
        self.thread.join()
        if self.error:
            raise self.error


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def even_size(image: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row/column where needed."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoSink:
    """H.264 mp4 (yuv420p, imageio-ffmpeg), frame by frame."""

    def __init__(self, path: Path, fps: float):
        import imageio_ffmpeg
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.gen = path, fps, None
        self._ffmpeg = imageio_ffmpeg

    def write(self, frame_u8: np.ndarray) -> None:
        frame_u8 = even_size(frame_u8)
        if self.gen is None:
            h, w = frame_u8.shape[:2]
            self.gen = self._ffmpeg.write_frames(str(self.path), (w, h), fps=self.fps, codec="libx264",
                                                 pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                                                 ffmpeg_log_level="error")
            self.gen.send(None)
        self.gen.send(np.ascontiguousarray(frame_u8))

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()


# --- export ------------------------------------------------------------------------------------

def resolve_videos(cfg: Config, root, input_folder, split: str, videos, cache=None):
    from batman.data.drv import folder_video, load_split

    if input_folder is not None:
        if cfg.data.mode != "raw":
            raise BatmanError(f"the model was trained on {cfg.data.mode} input; --input {input_folder} holds raw "
                              f"frames: use a raw-mode checkpoint or --root with the VBM4D_rawRGB folder")
        return [folder_video(input_folder)]
    found = load_split(root, split, cfg.data.mode, cache=cache)
    if videos:
        missing = sorted(set(videos) - {v.id for v in found})
        if missing:
            raise BatmanError(f"videos {', '.join(missing)} are not in the {split} split of {root}")
        found = [v for v in found if v.id in videos]
    return found


def export(root=None, input_folder=None, model=None, out="result", split: str = "test", videos=None,
           tile: int = 0, overlap: int = 32, side_by_side: bool = False, fps: float = 20.0, frames: int = 0,
           device: str | None = None) -> list[Path]:
    """Enhance videos into OUT/video/<id>.mp4 and OUT/frames/<id>/NNNN.png; returns the mp4 paths."""
    from batman.ckpt import load_model
    from batman.data.cache import find_cache

    check_options("export", fps=fps, frames=frames, tile=tile, overlap=overlap)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, cfg = load_model(model, device)
    out = Path(out)
    written = []
    cache = find_cache(root, cfg.data.cache or None) if root else None
    for video in resolve_videos(cfg, root, input_folder, split, videos, cache):
        written += export_video(net, cfg, video, out, tile=tile, overlap=overlap, side_by_side=side_by_side,
                                fps=fps, frames=frames, device=device, cache=cache)
    tqdm.write(f"wrote {len(written)} videos into {out / 'video'} and PNG frames into {out / 'frames'}")
    return written


def export_video(net, cfg: Config, video, out: Path, tile: int = 0, overlap: int = 32,
                 side_by_side: bool = False, fps: float = 20.0, frames: int = 0, device="cpu",
                 cache=None) -> list[Path]:
    """One video, streamed: decode -> enhance -> PNG + mp4 (+ side by side), constant memory."""
    import imageio.v3 as iio

    from batman.data.dataset import iter_frames
    from batman.data.dataset import load_targets
    from batman.evaluate import baseline_isp

    n = min(len(video.frames), frames) if frames else len(video.frames)
    enhancer = Enhancer(net, cfg.model.scale, device, tile, overlap)
    frame_dir = out / "frames" / video.id
    frame_dir.mkdir(parents=True, exist_ok=True)
    main = VideoSink(out / "video" / f"{video.id}.mp4", fps)
    side = VideoSink(out / "video" / f"{video.id}_side_by_side.mp4", fps) if side_by_side else None
    isp = baseline_isp(video, cfg) if side_by_side else None
    targets = load_targets(video, n) if side_by_side and video.targets else iter(())
    writer = BackgroundWriter()
    inputs = prefetch(zip(range(n), iter_frames(video, cfg.data, cache)))
    for i, frame in tqdm(inputs, total=n, desc=f"export {video.id}", unit="frame", leave=False):
        y = to_uint8(enhancer(frame))
        writer.submit(lambda y=y, i=i: (iio.imwrite(frame_dir / f"{i + 1:04d}.png", y), main.write(y)))
        if side:
            panels = [to_uint8(isp.process(frame, cfg.model.scale)), y]
            target = next(targets, None)
            if target is not None:
                panels.append(to_uint8(target))
            writer.submit(lambda p=panels: side.write(np.concatenate(p, axis=1)))
    writer.submit(main.close)
    if side:
        writer.submit(side.close)
    writer.close()
    return [main.path] + ([side.path] if side else [])
