"""`batman bench data`: training clips/s from the prepared cache vs decoding the raws."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from batman.bench.common import machine_info, write_json
from batman.config import BatmanError, DataCfg
from batman.data.cache import open_cache, prepare
from batman.data.dataset import ClipDataset
from batman.data.drv import load_split
from batman.data.raw import write_dng
from batman.report import markdown_table


def bench_data(out: Path | None = None, quick: bool = False) -> dict:
    """Clips/s read from the prepared cache vs decoded from the raws (clip_rates), as a table.

    Quick uses 1024x1536 mosaics: the default 256x256 crop does not fit a smaller input grid.
    """
    kwargs = dict(size=(1024, 1536), clips=4, reps=3) if quick else dict(size=(2048, 3072), clips=8, reps=5)
    result = clip_rates(**kwargs)
    report = "\n".join([
        f"bench data: {result['clips']} training clips of {result['frames']} frames, crop {tuple(result['crop'])}, "
        f"Bayer {result['size'][0]}x{result['size'][1]} DNG, median of {result['reps']} interleaved repetitions "
        f"(cold = page cache dropped first)", "",
        markdown_table(["pages", "cache (clips/s)", "decode (clips/s)", "cache / decode"],
                       [[k, f"{result[f'cache_{k}']:.1f}", f"{result[f'decode_{k}']:.1f}",
                         f"{result[f'speedup_{k}']:.1f}x"] for k in ("warm", "cold")])])
    print(report)
    result = {"machine": machine_info(), **result, "report": report}
    if out is not None:
        write_json(Path(out) / "data.json", result)
    return result


def _bench_tree(root: Path, size: tuple[int, int], videos: int, frames: int) -> None:
    """A DRV-layout tree of random dark DNG frames at `size` (Bayer H, W) with blank 8-bit ground truth."""
    rng = np.random.default_rng(0)
    h, w = size
    for v in range(videos):
        vid = f"{v + 1:04d}"
        for f in range(frames):
            bayer = rng.integers(500, 900, size=(h, w), dtype=np.uint16)
            write_dng(root / "short" / vid / f"{f + 1:05d}.dng", bayer, "RGGB", 512, 16383, 0.01)
        write_dng(root / "long" / vid / "long.dng", np.full((32, 32), 4000, np.uint16), "RGGB", 512, 16383, 1.0)
        iio.imwrite(root / "long" / vid / "half0001.png", np.zeros((h // 4, w // 4, 3), np.uint8))
    (root / "train_list.txt").write_text("".join(f"{v + 1:04d}\n" for v in range(videos)))


def _drop_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to forget these files' pages, so the next read comes from disk (Linux)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _clips_per_s(dataset, clips: int) -> float:
    start = time.perf_counter()
    for i in range(clips):
        dataset[i]
    return clips / (time.perf_counter() - start)


def clip_rates(root: str | Path | None = None, size: tuple[int, int] = (2048, 3072), clips: int = 8,
               reps: int = 5, frames: int = 8, cache: str | Path | None = None) -> dict:
    """Training clips/s read from the cache vs decoded from the raws, side by side on the same clips.

    Without `root`, a synthetic set of 2 videos x `frames` DNG frames at `size` (Bayer) is written to a
    temporary folder and prepared. Each repetition times both paths warm (files in the page cache) and
    cold (pages dropped first); the medians are reported. The two paths' tensors are checked equal.
    """
    with tempfile.TemporaryDirectory(prefix="batman-bench-data-") as tmp:
        if root is None:
            root = Path(tmp) / "drv"
            _bench_tree(root, size, videos=2, frames=frames)
            cache = prepare(root, cache=Path(tmp) / "cache")
        root = Path(root)
        cache = open_cache(root, cache)
        if cache is None:
            raise BatmanError(f"no prepared cache for {root}: run batman prepare --root {root} first")
        videos = load_split(root, "train", cache=cache)
        cfg = DataCfg(root=str(root), frames=min(frames, min(len(v.frames) for v in videos)))
        cached, decoded = ClipDataset(videos, cfg, cache=cache), ClipDataset(videos, cfg)
        clips = min(clips, len(cached))
        for i in range(clips):
            if not torch.equal(cached[i]["input"], decoded[i]["input"]):
                raise BatmanError(f"bench data: clip {i} differs between the cache and the raws")
        files = [Path(p) for v in videos for p in v.frames] + sorted(cache.folder.rglob("*.npy"))
        rates: dict[str, list[float]] = {k: [] for k in ("cache_warm", "decode_warm", "cache_cold", "decode_cold")}
        for _ in range(reps):
            for name, dataset in (("cache", cached), ("decode", decoded)):
                rates[f"{name}_warm"].append(_clips_per_s(dataset, clips))
                _drop_page_cache(files)
                rates[f"{name}_cold"].append(_clips_per_s(dataset, clips))
    result = {k: statistics.median(v) for k, v in rates.items()}
    result.update(speedup_warm=result["cache_warm"] / result["decode_warm"],
                  speedup_cold=result["cache_cold"] / result["decode_cold"],
                  clips=clips, reps=reps, frames=cfg.frames, crop=list(cfg.crop), bin=cfg.bin, size=list(size))
    print(f"bench data: {clips} clips of {cfg.frames} frames, crop {cfg.crop}, median of {reps}: "
          f"cache {result['cache_warm']:.1f} clips/s vs decode {result['decode_warm']:.1f} "
          f"({result['speedup_warm']:.1f}x) warm; cache {result['cache_cold']:.1f} vs decode "
          f"{result['decode_cold']:.1f} ({result['speedup_cold']:.1f}x) cold")
    return result
