"""Streaming export: frames are read, enhanced and written one at a time, the recurrent state carried.

Memory does not grow with the video's length: only a few frames are ever in flight. The model's
process only runs the model: raw frames are decoded (or read from the prepared cache) in worker
processes, PNG frames are encoded in another, and H.264 is encoded by an ffmpeg process fed through a
pipe, so none of them competes with the model's torch threads for the interpreter. With `workers=0`
everything but ffmpeg runs in this process (a reader and a writer thread), with identical output.
Frames larger than `tile` are cut into overlapping tiles by the Enhancer (batman.infer).
"""
from __future__ import annotations

import multiprocessing
import queue
import signal
import subprocess
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from batman.baselines import baseline_isp
from batman.config import BatmanError, Config, DataCfg, check_options
from batman.files import atomic_dir, atomic_path
from batman.infer import Enhancer, auto_gain

_DONE = object()
EXPORT_WORKERS = 2    # decoding processes of `export` (plus one PNG encoder); 0: threads in this process


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
    """Runs write calls in order on one thread; `close` waits and re-raises the first error, `stop`
    only waits (the error path: the jobs after a failed one are skipped)."""

    def __init__(self, depth: int = 2):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()
        self.stopped = False

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

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.q.put(_DONE)
            self.thread.join()

    def close(self) -> None:
        self.stop()
        if self.error:
            raise self.error


# --- worker processes: decoding and PNG encoding away from the model's threads ----------------

def _pool(workers: int, initializer=None, initargs=()) -> ProcessPoolExecutor:
    """Fork where the OS has it (as DataLoader does: no re-import, instant start; the children run no
    torch), else spawn."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, multiprocessing.get_context(method), initializer, initargs)


_reader = None  # the decoding worker's FrameReader and video (set once per process by _start_decoder)


def _start_decoder(cfg: DataCfg, cache, video) -> None:
    global _reader
    from batman.data.dataset import FrameReader
    _reader = (FrameReader(cfg, cache), video)


def _decode_frame(i: int) -> np.ndarray:
    reader, video = _reader
    return reader.frame(video, i)


def decoded_frames(video, cfg: DataCfg, cache, indices: range, workers: int):
    """The input frames (C, H, W) of `video` at `indices`, in that order, decoded (or read from the cache) in
    `workers` processes at most 2 * workers frames ahead; workers=0: in a thread of this process, 2 ahead."""
    from batman.data.dataset import iter_frames

    if workers <= 0:
        yield from prefetch(iter_frames(video, cfg, cache, indices))
        return
    pool = _pool(workers, _start_decoder, (cfg, cache, video))
    pending: deque[Future] = deque()
    try:
        for i in indices:
            pending.append(pool.submit(_decode_frame, i))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class PngWriter:
    """Writes PNG frames in order, encoded in one separate process (`separate`) or on the calling thread;
    at most `depth` frames in flight. `close` waits and re-raises the first error, `stop` only waits."""

    def __init__(self, separate: bool, depth: int = 4):
        self.pool = _pool(1) if separate else None
        if self.pool is not None:
            self.pool.submit(int).result()  # start the process now, from the calling thread
        self.pending: deque[Future] = deque()
        self.depth = depth

    def write(self, path: Path, image_u8: np.ndarray) -> None:
        if self.pool is None:
            write_png(path, image_u8)
            return
        self.pending.append(self.pool.submit(write_png, path, image_u8))
        if len(self.pending) > self.depth:
            self.pending.popleft().result()

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, image_u8: np.ndarray) -> None:
    """Encode in memory, write plainly: a failed write (full disk, file-size limit) is one OSError,
    where imageio's plugin would raise it twice (once more from its destructor)."""
    import imageio.v3 as iio
    path.write_bytes(iio.imwrite("<bytes>", image_u8, extension=".png"))


def even_size(image: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row/column where needed."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoSink:
    """H.264 mp4 (yuv420p) from an ffmpeg process fed frame by frame.

    `close` waits for ffmpeg and checks its exit status: a full disk, a file-size limit or a killed
    encoder is an error naming `name` (the final path), never a short file that looks finished.
    """

    def __init__(self, path: Path, fps: float, name: Path | None = None):
        self.path, self.fps, self.name = path, fps, name or path
        self.proc: subprocess.Popen | None = None
        self.log = None

    def _start(self, h: int, w: int) -> None:
        import imageio_ffmpeg
        self.log = tempfile.TemporaryFile()
        rate = str(Fraction(self.fps).limit_denominator(1001))
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", rate, "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
               "-crf", "10", "-f", "mp4", str(self.path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log)

    def write(self, frame_u8: np.ndarray) -> None:
        frame_u8 = even_size(frame_u8)
        if self.proc is None:
            self._start(*frame_u8.shape[:2])
        try:
            self.proc.stdin.write(np.ascontiguousarray(frame_u8).data)
        except OSError:  # ffmpeg died (BrokenPipe): its exit status says why
            self._fail()

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.wait() != 0:
            self._fail()
        self.log.close()

    def abort(self) -> None:
        """Stop ffmpeg without finishing the file (the error path)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log is not None:
            self.log.close()

    def _fail(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.log.seek(0)
        said = (self.log.read().decode(errors="replace").strip().splitlines() or [""])[-1][:160]
        self.log.close()
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if code == -signal.SIGXFSZ:
            why += " (file-size limit)"
        raise BatmanError(f"cannot write {self.name}: ffmpeg failed, {why}{': ' + said if said else ''}; "
                          f"check free space, permissions and file-size limits")


# --- export ------------------------------------------------------------------------------------

def burst_video(cfg: Config, folder, gain: float | None = None):
    """A folder of raw frames as a Video with one gain for every frame: `gain`, else chosen from the
    burst's brightness (infer.auto_gain); the choice is printed."""
    from batman.data.drv import check_video_id, folder_video

    if cfg.data.mode != "raw":
        raise BatmanError(f"the model was trained on {cfg.data.mode} input; --input {folder} holds raw "
                          f"frames: use a raw-mode checkpoint or --root with the VBM4D_rawRGB folder")
    video = folder_video(folder)
    check_video_id(video.id, f"--input {folder} (its folder name names the outputs)")
    if gain is not None:
        if not 0 < gain < float("inf"):
            raise BatmanError(f"--gain must be a positive number, got {gain}")
        tqdm.write(f"{video.id}: gain {gain:g}, from --gain")
        return replace(video, gains=(float(gain),) * len(video.frames))
    if not cfg.data.exposure_level > 0:
        raise BatmanError(f"the model does not record the brightness it was trained at (data.exposure_level): "
                          f"pass --gain G for {folder}")
    chosen = auto_gain(video, cfg.data)
    tqdm.write(f"{video.id}: gain {chosen:.1f}, from the burst's brightness (--gain G overrides)")
    return replace(video, gains=(chosen,) * len(video.frames))


def resolve_videos(cfg: Config, root, input_folder, split: str, videos, cache=None, gain: float | None = None):
    from batman.data.drv import check_video_id, load_split

    for video_id in videos or ():
        check_video_id(video_id, "--videos")
    if input_folder is not None:
        return [burst_video(cfg, input_folder, gain)]
    if gain is not None:
        raise BatmanError("--gain goes with --input: DRV-layout videos take their gains from the exposure times")
    found = load_split(root, split, cfg.data.mode, cache=cache)
    if videos:
        missing = sorted(set(videos) - {v.id for v in found})
        if missing:
            raise BatmanError(f"videos {', '.join(missing)} are not in the {split} split of {root}")
        found = [v for v in found if v.id in videos]
    return found


def export(root=None, input_folder=None, model=None, out="result", split: str = "test", videos=None,
           tile: int = 0, overlap: int = 32, side_by_side: bool = False, fps: float = 20.0, frames: int = 0,
           device: str | None = None, gain: float | None = None, workers: int | None = None,
           ensemble: int = 1, two_pass: bool = False, bf16: bool = False) -> list[Path]:
    """Enhance videos into OUT/video/<id>.mp4 and OUT/frames/<id>/NNNN.png; returns the mp4 paths.
    `workers`: decoding processes (and one PNG encoding process; None: EXPORT_WORKERS); 0 decodes and encodes
    in threads here; `ensemble`: views averaged (infer.Enhancer), `two_pass`: each video run backward first
    (infer's docstring), `bf16`: the network under bf16 autocast (infer.Enhancer)."""
    from batman.ckpt import load_model, resolve_device
    from batman.data.cache import open_cache

    workers = EXPORT_WORKERS if workers is None else workers
    check_options("export", fps=fps, frames=frames, tile=tile, overlap=overlap, workers=workers)
    device = resolve_device(device)
    net, cfg = load_model(model, device)  # model None: the default model, printed
    if ensemble > 1:
        tqdm.write(f"self-ensemble: {ensemble} flipped/transposed views averaged (about {ensemble}x the time)")
    if two_pass:
        tqdm.write("two passes: each video runs backward first, then forward from that state (2x the time)")
    if bf16:
        tqdm.write("bf16: the network runs under bf16 autocast (the filter and the camera fit in float32)")
    out = Path(out)
    written = []
    cache = open_cache(root, cfg.data.cache or None) if root else None
    for video in resolve_videos(cfg, root, input_folder, split, videos, cache, gain):
        written += export_video(net, cfg, video, out, tile=tile, overlap=overlap, side_by_side=side_by_side,
                                fps=fps, frames=frames, device=device, cache=cache, workers=workers,
                                ensemble=ensemble, two_pass=two_pass, bf16=bf16)
    tqdm.write(f"wrote {len(written)} videos into {out / 'video'} and PNG frames into {out / 'frames'}")
    return written


def truth_panel(target, y: np.ndarray, video_id: str, scale: int) -> np.ndarray:
    """The ground truth as the side-by-side's third panel; a truth of another size than the output (a model of
    another model.scale than the data's) is a one-line error, not numpy's."""
    panel = to_uint8(target)
    if panel.shape != y.shape:
        raise BatmanError(f"export --side-by-side: video {video_id}'s ground truth is {panel.shape[0]}x{panel.shape[1]} "
                          f"but the output is {y.shape[0]}x{y.shape[1]} (model.scale={scale}): use a model of the "
                          "data's scale, or leave out --side-by-side")
    return panel


def export_video(net, cfg: Config, video, out: Path, tile: int = 0, overlap: int = 32,
                 side_by_side: bool = False, fps: float = 20.0, frames: int = 0, device="cpu",
                 cache=None, workers: int = EXPORT_WORKERS, ensemble: int = 1,
                 two_pass: bool = False, bf16: bool = False) -> list[Path]:
    """One video, streamed: decode -> enhance -> PNG + mp4 (+ side by side), constant memory; `workers`
    decoding processes and one PNG encoding process (0: threads of this process, the same output).

    Everything goes into temporary siblings first and is moved into place only once the whole video
    is written: a frame that fails to decode, a full disk or a kill leaves the earlier export of this
    video as it was. The frames folder moves first and the main mp4 last, so an mp4 at its final name
    means the frames beside it are complete and of the same run.
    """
    from batman.data.drv import check_video_id

    check_video_id(video.id, f"video {video.id!r}")
    n = min(len(video.frames), frames) if frames else len(video.frames)
    enhancer = Enhancer(net, cfg.model.scale, device, tile, overlap, ensemble, packed=cfg.data.mode == "raw",
                        bf16=bf16)
    finals = [out / "video" / f"{video.id}.mp4"] + \
        ([out / "video" / f"{video.id}_side_by_side.mp4"] if side_by_side else [])
    with ExitStack() as outputs:  # left in reverse: frames, side by side, main mp4
        sinks = [VideoSink(outputs.enter_context(atomic_path(path, suffix=".mp4")), fps, path) for path in finals]
        frame_dir = outputs.enter_context(atomic_dir(out / "frames" / video.id))
        _stream_video(enhancer, cfg, video, n, frame_dir, sinks, cache, workers, two_pass)
    return finals


def _stream_video(enhancer: Enhancer, cfg: Config, video, n: int, frame_dir: Path, sinks: list[VideoSink],
                  cache, workers: int, two_pass: bool = False) -> None:
    """Decode, enhance and write n frames (`two_pass`: after running them backward); on any error ffmpeg and
    the workers are stopped and the error raised."""
    from batman.data.dataset import load_targets

    main, side = sinks[0], (sinks[1] if len(sinks) > 1 else None)
    isp = baseline_isp(video, cfg) if side else None
    targets = load_targets(video, n) if side and video.targets else iter(())
    pngs = PngWriter(separate=workers > 0)  # its process forks here, before the writer thread exists
    writer = BackgroundWriter()
    inputs = decoded_frames(video, cfg.data, cache, range(n), workers)
    try:
        if two_pass:  # the backward pass: the forward one starts from its state (infer's docstring)
            backward = decoded_frames(video, cfg.data, cache, range(n - 1, -1, -1), workers)
            for frame in tqdm(backward, total=n, desc=f"backward {video.id}", unit="frame", leave=False):
                enhancer(frame)
        for i, frame in tqdm(enumerate(inputs), total=n, desc=f"export {video.id}", unit="frame", leave=False):
            y = to_uint8(enhancer(frame))
            writer.submit(lambda y=y, i=i: (pngs.write(frame_dir / f"{i + 1:04d}.png", y), main.write(y)))
            if side:
                panels = [to_uint8(isp.process(frame, cfg.model.scale)), y]
                target = next(targets, None)
                if target is not None:
                    panels.append(truth_panel(target, y, video.id, cfg.model.scale))
                writer.submit(lambda p=panels: side.write(np.concatenate(p, axis=1)))
        writer.submit(pngs.close)
        for sink in sinks:
            writer.submit(sink.close)
        writer.close()
    except BaseException:
        writer.stop()
        pngs.stop()
        for sink in sinks:
            sink.abort()
        raise
    finally:
        inputs.close()  # stops the decoding workers
