"""Decode every raw frame once into memory-mapped .npy counts + a manifest (`batman prepare`).

The cache stores what the canonical decode (batman.data.raw.decode_counts) gives: the packed R, G1, G2, B
mosaic summed over bin x bin blocks as exact integers, so a clip read from the cache is bit-identical
to one decoded from the raws. A job opens the cache once (`open_cache`) and hands the FrameCache to
drv.load_split and the dataset.

Layout: <cache>/manifest.json and <cache>/short/<id>/<frame name>.npy. Manifest keys are the source
paths relative to the root (`short/<id>/<name>`), so a frame's entry is found from its path alone;
an entry counts only while the source's size and mtime match. Every .npy and every manifest write is
atomic, so a prepare killed at any point leaves a consistent cache and a rerun finishes the job.
"""
from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from batman.config import BatmanError, check_options
from batman.data import drv
from batman.data.raw import decode_counts, read_header
from batman.files import (atomic_write_bytes, atomic_write_text, ensure_dir, exclusive, format_bytes, free_bytes,
                          remove_stale_temps)

MANIFEST = "manifest.json"
LOCK = ".prepare.lock"  # held while a prepare writes: a second one is refused instead of racing it
MANIFEST_VERSION = 1
DEFAULT_BIN = 2
_FLUSH_FRAMES = 64   # rewrite the manifest after this many new frames ...
_FLUSH_S = 10.0      # ... or this many seconds, so a killed prepare loses little work


# --- reading a prepared cache ---------------------------------------------------------------

def frame_key(path: str | Path) -> str:
    """The manifest key of a frame: its path relative to the root, `short/<id>/<name>`."""
    return "/".join(Path(path).parts[-3:])


def _fresh(entry: dict | None, path: Path) -> bool:
    """An entry still describes the source: same size and mtime."""
    if entry is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BatmanError(f"no prepared cache at {folder} (no {MANIFEST}): run batman prepare") from None
    except (ValueError, OSError) as e:
        raise BatmanError(f"cannot read cache manifest {path} ({e}): delete it and rerun batman prepare") from None
    if manifest.get("version") != MANIFEST_VERSION:
        raise BatmanError(f"cache manifest {path} has version {manifest.get('version')}, expected "
                          f"{MANIFEST_VERSION}: rerun batman prepare")
    return manifest


class FrameCache:
    """A prepared cache: manifest entries and memory-mapped counts, looked up by source path."""

    def __init__(self, folder: str | Path, manifest: dict, root: str | Path | None = None):
        self.folder = Path(folder)
        self.root = Path(root).resolve() if root is not None else None
        self.bin = int(manifest["bin"])
        self.frames: dict = manifest.get("frames", {})
        self.long: dict = manifest.get("long", {})

    @classmethod
    def open(cls, folder: str | Path, root: str | Path | None = None) -> "FrameCache":
        """`root`: the data set the cache was prepared for; frames of other data sets are then never looked up
        (their `short/<id>/<name>` keys can name this set's frames: every synth set has an M0000)."""
        return cls(folder, read_manifest(folder), root)

    def key(self, path: str | Path) -> str | None:
        """The frame's manifest key, or None when it lies outside this cache's data set."""
        if self.root is not None and not Path(path).resolve().is_relative_to(self.root):
            return None
        return frame_key(path)

    def entry(self, path: str | Path) -> dict | None:
        """The frame's entry (status ok or bad) while it matches the source, else None."""
        entry = self.frames.get(self.key(path))
        return entry if _fresh(entry, Path(path)) else None

    def long_exposure(self, path: str | Path) -> float | None:
        entry = self.long.get(self.key(path))
        return entry["exposure_s"] if _fresh(entry, Path(path)) else None

    def counts(self, entry: dict) -> np.ndarray:
        """The frame's counts as a read-only memory map (4, h, w)."""
        path = npy_path(self.folder, entry)
        try:
            counts = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BatmanError(f"cannot read cached frame {path} ({e}): rerun batman prepare") from None
        if list(counts.shape) != entry["shape"]:
            raise BatmanError(f"cached frame {path} has shape {counts.shape}, manifest says "
                              f"{entry['shape']}: rerun batman prepare")
        return counts


def npy_path(folder: Path, entry: dict) -> Path:
    """Where an entry's counts lie: inside the cache folder, whatever a (hand-edited) manifest says."""
    rel = PurePosixPath(str(entry.get("npy", "")))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in str(rel):
        raise BatmanError(f"cache manifest {Path(folder) / MANIFEST} names {str(rel)!r}, a path outside the "
                          f"cache: delete the manifest and rerun batman prepare")
    return Path(folder) / rel


def find_cache(root: str | Path, cache: str | Path | None = None) -> Path | None:
    """The cache to use: `cache` when given (it must be prepared), else <root>/cache when prepared, else None."""
    if cache:
        folder = Path(cache)
        if not (folder / MANIFEST).is_file():
            raise BatmanError(f"no prepared cache at {folder} (no {MANIFEST}): "
                              f"run batman prepare --root {root} --cache {folder}")
        return folder
    folder = Path(root) / "cache"
    return folder if (folder / MANIFEST).is_file() else None


def open_cache(root: str | Path, cache: str | Path | None = None) -> FrameCache | None:
    """The cache find_cache chooses, opened (manifest read once), or None when there is none."""
    folder = find_cache(root, cache)
    return FrameCache.open(folder, root) if folder else None


# --- prepare --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Task:
    path: Path
    key: str
    size: int
    mtime_ns: int


def _cache_frame(src: str, dst: str, bin: int) -> dict:
    """Worker: decode one frame and write its counts atomically; a corrupt frame comes back as bad."""
    try:
        frame = decode_counts(src, bin)
    except BatmanError as e:
        return {"status": "bad", "error": str(e)}
    buf = io.BytesIO()
    np.save(buf, frame.counts)  # into memory: np.save into a file drops a short write (file-size limit) silently
    atomic_write_bytes(dst, buf.getvalue())  # flushed to disk before the rename
    return {"status": "ok", "shape": list(frame.counts.shape), "dtype": frame.counts.dtype.name,
            "black": list(frame.black), "white": frame.white, "exposure_s": frame.exposure_s,
            "mosaic": list(frame.mosaic)}


def _npy_intact(folder: Path, entry: dict) -> bool:
    try:
        counts = np.load(npy_path(folder, entry), mmap_mode="r")
    except (OSError, ValueError, BatmanError):
        return False
    return list(counts.shape) == entry["shape"] and counts.dtype.name == entry["dtype"]


def _reusable(entry: dict | None, path: Path, folder: Path, skip_bad: bool) -> bool:
    """Skip a frame on a rerun: unchanged source and an intact .npy (or known bad, with skip_bad)."""
    if not _fresh(entry, path):
        return False
    if entry["status"] == "bad":
        return skip_bad
    return _npy_intact(folder, entry)


def _old_manifest(folder: Path, bin: int) -> dict:
    """The previous manifest when it can be resumed from, else an empty one."""
    empty = {"version": MANIFEST_VERSION, "bin": bin, "frames": {}, "long": {}}
    if not (folder / MANIFEST).is_file():
        return empty
    try:
        old = read_manifest(folder)
    except BatmanError as e:
        print(f"prepare: starting afresh ({e})")
        return empty
    if old.get("bin") != bin:
        print(f"prepare: {folder} was prepared with bin={old.get('bin')}; re-decoding with bin={bin}")
        return empty
    return old


def _frame_tasks(root: Path) -> list[_Task]:
    tasks = []
    for vid in drv.video_folders(root):
        for path in drv.list_raw_files(root / "short" / vid):
            st = path.stat()
            tasks.append(_Task(path, path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return tasks


def _long_entries(root: Path, old: dict, skip_bad: bool) -> dict:
    """Exposure of each video's long raw (header only), reused while the file is unchanged."""
    entries = {}
    for vid in drv.video_folders(root):
        path = drv.long_raw_path(root, vid)
        if path is None:
            continue
        key = path.relative_to(root).as_posix()
        if _fresh(old.get(key), path):
            entries[key] = old[key]
            continue
        try:
            exposure = read_header(path).exposure_s
        except BatmanError as e:
            if not skip_bad:
                raise BatmanError(f"corrupt long exposure raw: {e}; rerun with --skip-bad to go on") from None
            print(f"prepare: skipping {e}")
            continue
        st = path.stat()
        entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "exposure_s": exposure}
    return entries


def _estimate_bytes(tasks: list[_Task], bin: int) -> int:
    """Bytes the new .npy files need, from one header per video (uint32 where bin^2 * white > 65535)."""
    per_video: dict[Path, int] = {}
    total = 0
    for task in tasks:
        folder = task.path.parent
        if folder not in per_video:
            try:
                header = read_header(task.path)
            except BatmanError:
                header = None  # a corrupt first frame; prepare reports it properly
            if header is None:
                per_video[folder] = 0
            else:
                (h, w), itemsize = header.size, 4 if bin * bin * header.white > 65535 else 2
                per_video[folder] = 4 * (h // 2 // bin) * (w // 2 // bin) * itemsize + 128
        total += per_video[folder]
    return total


def _run(tasks: list[_Task], folder: Path, bin: int, workers: int) -> Iterator[tuple[_Task, dict]]:
    """(task, result) as frames finish: in this process for one worker, else a process pool."""
    def dst(task):
        return str(folder / (task.key + ".npy"))

    if workers == 1:
        for task in tasks:
            yield task, _cache_frame(str(task.path), dst(task), bin)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_cache_frame, str(t.path), dst(t), bin): t for t in tasks}
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    yield task, future.result()
                except Exception as e:  # a worker died or could not write: name the frame
                    raise BatmanError(f"prepare failed on {task.path} ({type(e).__name__}: {e})") from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _remove_stale_temps(folder: Path) -> None:
    """Temp files a killed run left behind: only names of files.atomic_path's pattern whose writer
    process is gone, so a user's own hidden files and a live writer's temps stay."""
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        remove_stale_temps(sub)


def _write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, sort_keys=True))


def prepare(root: str | Path, cache: str | Path | None = None, workers: int = 0, skip_bad: bool = False,
            bin: int = DEFAULT_BIN) -> Path:
    """Decode every frame under <root>/short once into <cache> (default <root>/cache); return the folder.

    Checks free space first, runs `workers` processes (0: one per core), resumes where a previous run
    stopped. A corrupt frame stops it with an error naming the file, or with `skip_bad` is listed as
    bad and left out of the data set.
    """
    check_options("prepare", workers=workers)
    root = Path(root)
    folder = ensure_dir(Path(cache) if cache else root / "cache")
    busy = f"{folder}: another `batman prepare` is writing this cache; wait for it or stop it, then rerun"
    with exclusive(folder / LOCK, busy):
        return _prepare(root, folder, workers or os.cpu_count() or 1, skip_bad, bin)


def _prepare(root: Path, folder: Path, workers: int, skip_bad: bool, bin: int) -> Path:
    """prepare's work, under the cache's lock."""
    from tqdm import tqdm
    old = _old_manifest(folder, bin)
    tasks = _frame_tasks(root)
    manifest = {"version": MANIFEST_VERSION, "bin": bin, "frames": {},
                "long": _long_entries(root, old.get("long", {}), skip_bad)}
    todo = []
    for task in tasks:
        entry = old["frames"].get(task.key)
        if _reusable(entry, task.path, folder, skip_bad):
            manifest["frames"][task.key] = entry
        else:
            todo.append(task)
    need, free = _estimate_bytes(todo, bin), free_bytes(folder)
    print(f"prepare: {len(todo)} of {len(tasks)} frames to decode into {folder} "
          f"(about {format_bytes(need)} needed, {format_bytes(free)} free)")
    if need > free:
        raise BatmanError(f"not enough free space for the cache in {folder}: about {format_bytes(need)} "
                          f"needed, {format_bytes(free)} free (free some, or pass --cache on another disk)")
    _remove_stale_temps(folder)
    try:
        _decode_all(todo, folder, manifest, bin, workers, skip_bad, tqdm)
    finally:
        if manifest != old:
            _write_manifest(folder, manifest)
    n_bad = sum(e["status"] == "bad" for e in manifest["frames"].values())
    left_out = f", {n_bad} bad frames left out" if n_bad else ""
    print(f"prepare: {len(tasks) - n_bad} frames cached in {folder}{left_out}")
    return folder


def _decode_all(todo: list[_Task], folder: Path, manifest: dict, bin: int, workers: int, skip_bad: bool,
                tqdm) -> None:
    """Decode the frames, recording each in the manifest and rewriting it every so often."""
    last_write, since_write = time.monotonic(), 0
    with tqdm(total=len(todo), desc="prepare", unit="frame", disable=None) as bar:
        for task, result in _run(todo, folder, bin, workers):
            entry = {"size": task.size, "mtime_ns": task.mtime_ns, **result}
            if result["status"] == "ok":
                entry["npy"] = task.key + ".npy"
            manifest["frames"][task.key] = entry
            bar.update()
            if result["status"] == "bad":
                if not skip_bad:
                    raise BatmanError(f"corrupt frame: {result['error']}; rerun with --skip-bad to leave it out")
                bar.write(f"prepare: bad frame left out: {result['error']}")
            since_write += 1
            if since_write >= _FLUSH_FRAMES or time.monotonic() - last_write >= _FLUSH_S:
                _write_manifest(folder, manifest)
                last_write, since_write = time.monotonic(), 0
