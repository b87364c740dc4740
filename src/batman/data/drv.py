"""The DRV layout ("Seeing Motion in the Dark", Chen et al. ICCV 2019): splits, frames, gains, ground truth.

    short/<id>/*.ARW|*.dng          raw input frames, sorted by name
    long/<id>/*.ARW|*.dng           the long exposure raw (its exposure time sets the gains)
    long/<id>/half0001*.png         16-bit sRGB ground truth: one (static video) or one per frame
    long/<id>/synth.json            facts about a synthetic video (optional)
    VBM4D_rawRGB/<id>/*.png         the authors' pre-processed 3-channel input (mode `rawrgb`, gain 1)
    <split>_list.txt                one id per line; the official lists ship in data/splits/
    gains.json                      {"0001": 100.0, ...}: gains where the long raw is missing

The shipped lists are the official ones (github.com/cchen156/Seeing-Motion-in-the-Dark, DRV/):
129 / 24 / 49 static videos, a partition of 0001-0202. Ids starting with `M` are DRV's dynamic
videos, which have no ground truth.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from batman.config import BatmanError
from batman.data.raw import read_header

RAW_SUFFIXES = frozenset({".arw", ".dng"})
# `--input FOLDER` takes any camera's raw format that LibRaw reads (the DRV layout needs only ARW/DNG)
ANY_RAW_SUFFIXES = RAW_SUFFIXES | frozenset({".cr2", ".cr3", ".nef", ".nrw", ".raf", ".rw2", ".orf", ".pef", ".srw", ".kdc",
                                   ".dcr", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".raw", ".x3f", ".srf", ".sr2"})
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Video:
    """One video. `gains` are the EXIF exposure ratios, unclipped (the dataset clips to max_gain).

    targets: () (no ground truth), one path (static video) or one per frame. size: the raw mosaic
    (H, W) in mode raw, the PNG (H, W) in mode rawrgb.
    """
    id: str
    frames: tuple[Path, ...]
    targets: tuple[Path, ...]
    gains: tuple[float, ...]
    meta: dict = field(default_factory=dict, compare=False)
    mode: str = "raw"
    size: tuple[int, int] = (0, 0)
    wb: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # as-shot white balance R, G1, G2, B (first frame's header)
    cam_to_srgb: tuple | None = None  # the first frame's camera RGB -> linear sRGB matrix (None: unknown)

    @property
    def static(self) -> bool:
        return len(self.targets) == 1


# --- split lists ----------------------------------------------------------------------------

def check_video_id(video_id: str, where: str) -> str:
    """An id becomes a folder and file name (short/<id>/, video/<id>.mp4, frames/<id>/), so it must be a
    plain name: no separator, not '.' or '..', not absolute. `where` names its source in the error."""
    if (not video_id or video_id in (".", "..") or any(c in video_id for c in "/\\\x00")
            or re.match(r"[A-Za-z]:", video_id)):
        raise BatmanError(f"{where}: video id {video_id!r} is not a plain name (no '/', '\\', '..', "
                          f"drive or absolute path)")
    return video_id


def parse_list(text: str, source: str = "split list") -> list[str]:
    """Ids from a list file: one per line; blank lines and '#' comments ignored; each a plain name."""
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        video_id = line.split("#")[0].strip()
        if video_id:
            ids.append(check_video_id(video_id, f"{source} line {number}"))
    return ids


def split_ids(root: str | Path, split: str) -> list[str]:
    """Ids of a split: `<root>/<split>_list.txt` when present, else the shipped official list.

    `dynamic`: `<root>/dynamic_list.txt`, else the `M*` folders under short/.
    """
    root = Path(root)
    path = root / f"{split}_list.txt"
    if path.is_file():
        ids = parse_list(path.read_text(), str(path))
        if not ids:
            raise BatmanError(f"split list {path} names no videos")
        return ids
    if split == "dynamic":
        return sorted(p.name for p in (root / "short").glob("M*") if p.is_dir())
    packaged = resources.files("batman.data") / "splits" / f"{split}_list.txt"
    if not packaged.is_file():
        raise BatmanError(f"no split list {path} and no shipped list for split {split!r} "
                          f"(shipped: {', '.join(SPLITS)}, plus dynamic)")
    return parse_list(packaged.read_text())


# --- files of one video ---------------------------------------------------------------------

def list_raw_files(folder: Path, suffixes: frozenset = RAW_SUFFIXES) -> list[Path]:
    """Raw files (.ARW/.dng by default, any case) in a folder, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes),
                  key=lambda p: p.name)


def video_folders(root: Path) -> list[str]:
    """Every id with a folder under short/ (all splits and the dynamic videos)."""
    short = Path(root) / "short"
    if not short.is_dir():
        raise BatmanError(f"no short/ folder in {root}: not a DRV-layout data set")
    return sorted(p.name for p in short.iterdir() if p.is_dir())


def frame_paths(root: Path, video_id: str, mode: str = "raw") -> list[Path]:
    """The input frames of one video; a missing folder or an empty one is an error naming it."""
    top = {"raw": "short", "rawrgb": "VBM4D_rawRGB"}.get(mode)
    if top is None:
        raise BatmanError(f"unknown data mode {mode!r}: choose raw or rawrgb")
    if not (root / top).is_dir():
        raise BatmanError(f"no {top}/ folder in {root} (needed for mode {mode})")
    folder = root / top / video_id
    if not folder.is_dir():
        raise BatmanError(f"missing video folder {folder}")
    if mode == "raw":
        frames = list_raw_files(folder)
    else:
        frames = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=lambda p: p.name)
    if not frames:
        kind = ".ARW/.dng" if mode == "raw" else ".png"
        raise BatmanError(f"video folder {folder} has no {kind} frames")
    return frames


def long_raw_path(root: Path, video_id: str) -> Path | None:
    """The long exposure raw of a video, or None (then gains come from gains.json)."""
    folder = root / "long" / video_id
    files = list_raw_files(folder) if folder.is_dir() else []
    return files[0] if files else None


def target_paths(root: Path, video_id: str) -> list[Path]:
    folder = root / "long" / video_id
    return sorted(folder.glob("half[0-9][0-9][0-9][0-9]*.png"), key=lambda p: p.name) if folder.is_dir() else []


def read_meta(root: Path, video_id: str) -> dict:
    path = root / "long" / video_id / "synth.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise BatmanError(f"cannot read {path}: {e}") from None


def png_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as e:  # PIL raises many types for broken files
        raise BatmanError(f"cannot read image: {path} ({type(e).__name__}: {e})") from None


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as stored: (H, W, C) uint8 or uint16 (grey as C = 1), decoded by libpng through imagecodecs
    (Pillow, behind imageio, reads 16-bit colour PNGs as 8-bit)."""
    import imagecodecs
    path = Path(path)
    try:
        img = imagecodecs.png_decode(path.read_bytes())
    except Exception as e:  # missing file, not a PNG, corrupt data: OSError, ValueError, imagecodecs' own errors
        reason = (str(e).strip().splitlines() or [""])[0]
        raise BatmanError(f"cannot read image: {path} ({type(e).__name__}: {reason})") from None
    return img[..., None] if img.ndim == 2 else img


def read_target(path: str | Path) -> np.ndarray:
    """A PNG (ground truth, or a VBM4D input) -> float32 (H, W, 3) in [0, 1] (16-bit / 65535, 8-bit / 255)."""
    img = read_png(path)
    if img.shape[2] not in (3, 4):
        raise BatmanError(f"image {path} has {img.shape[2]} channels: expected RGB")
    scale = np.float32(65535.0 if img.dtype == np.uint16 else 255.0)
    return img[..., :3].astype(np.float32) / scale


# --- gains ----------------------------------------------------------------------------------

def gains_table(root: Path) -> dict[str, float]:
    path = root / "gains.json"
    if not path.is_file():
        return {}
    try:
        table = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise BatmanError(f"cannot read gain table {path}: expected {{\"0001\": 100.0, ...}} ({e})") from None
    bad = [k for k, v in table.items() if not v > 0]
    if bad:
        raise BatmanError(f"gain table {path}: gains must be positive (ids {', '.join(bad[:5])})")
    return table


def frame_gains(root: Path, video_id: str, frames: list[Path], exposures: list[float | None],
                long_exposure_s: float | None) -> tuple[float, ...]:
    """long exposure / frame exposure per frame; the gain table where the long raw is missing."""
    if long_exposure_s is None:
        table = gains_table(root)
        if video_id not in table:
            raise BatmanError(f"no long exposure raw with an exposure time in {root / 'long' / video_id} "
                              f"and no entry for {video_id} in {root / 'gains.json'}: cannot compute the gains")
        return (table[video_id],) * len(frames)
    missing = [f for f, e in zip(frames, exposures) if e is None]
    if missing:
        raise BatmanError(f"no exposure time in the EXIF of {missing[0]}: cannot compute its gain")
    return tuple(long_exposure_s / e for e in exposures)


# --- videos ---------------------------------------------------------------------------------

def _frame_facts(frames: list[Path], mode: str, cache) -> tuple[list[Path], list[tuple[int, int]], list]:
    """(usable frames, sizes, exposures): from a fresh cache entry when there is one, else the header.

    Frames the cache lists as bad are left out. `cache`: an open FrameCache (its `entry` and
    `long_exposure` are all this module asks of it) or None.
    """
    kept, sizes, exposures = [], [], []
    for path in frames:
        entry = cache.entry(path) if cache is not None and mode == "raw" else None
        if entry is not None and entry["status"] == "bad":
            continue
        if mode == "rawrgb":
            size, exposure = png_size(path), 1.0
        elif entry is not None:
            size, exposure = tuple(entry["mosaic"]), entry["exposure_s"]
        else:
            header = read_header(path)
            size, exposure = header.size, header.exposure_s
        kept.append(path)
        sizes.append(size)
        exposures.append(exposure)
    return kept, sizes, exposures


def _check_sizes(frames: list[Path], sizes: list[tuple[int, int]]) -> None:
    for path, size in zip(frames, sizes):
        if size != sizes[0]:
            raise BatmanError(f"frame {path} is {size[0]}x{size[1]} but {frames[0].name} is "
                              f"{sizes[0][0]}x{sizes[0][1]}: every frame of a video must have one size")


def _long_exposure(root: Path, video_id: str, cache) -> float | None:
    path = long_raw_path(root, video_id)
    if path is None:
        return None
    cached = cache.long_exposure(path) if cache is not None else None
    return cached if cached is not None else read_header(path).exposure_s


def _targets(root: Path, video_id: str, all_frames: list[Path], kept: list[Path]) -> tuple[Path, ...]:
    """One static target, or the per-frame targets of the frames kept; `M*` ids may have none."""
    targets = target_paths(root, video_id)
    if not targets:
        if video_id.startswith("M"):
            return ()
        raise BatmanError(f"no ground truth {root / 'long' / video_id / 'half0001*.png'}")
    if len(targets) == 1:
        return tuple(targets)
    if len(targets) != len(all_frames):
        raise BatmanError(f"{root / 'long' / video_id} has {len(targets)} ground truth PNGs for "
                          f"{len(all_frames)} frames: expected 1 (static) or one per frame")
    by_frame = dict(zip(all_frames, targets))
    return tuple(by_frame[f] for f in kept)


def load_video(root: str | Path, video_id: str, mode: str = "raw", cache=None) -> Video:
    """One video of a DRV-layout root. `cache`: an open prepared cache (batman.data.cache.open_cache) whose
    exposures, sizes and bad frames are used, or None."""
    check_video_id(video_id, "load_video")
    return _load_video(Path(root), video_id, mode, cache)


def _load_video(root: Path, video_id: str, mode: str, cache) -> Video:
    all_frames = frame_paths(root, video_id, mode)
    frames, sizes, exposures = _frame_facts(all_frames, mode, cache)
    if not frames:
        raise BatmanError(f"every frame of {root / 'short' / video_id} is listed as bad in the cache")
    _check_sizes(frames, sizes)
    if mode == "raw":
        gains = frame_gains(root, video_id, frames, exposures, _long_exposure(root, video_id, cache))
    else:
        gains = (1.0,) * len(frames)  # the authors' PNGs are already gained
    header = read_header(frames[0]) if mode == "raw" else None
    return Video(id=video_id, frames=tuple(frames), targets=_targets(root, video_id, all_frames, frames),
                 gains=gains, meta=read_meta(root, video_id), mode=mode, size=sizes[0],
                 wb=header.wb if header else (1.0, 1.0, 1.0, 1.0), cam_to_srgb=header.cam_to_srgb if header else None)


def load_split(root: str | Path, split: str, mode: str = "raw", cache=None) -> list[Video]:
    """The videos of a split. Pass the job's open cache (batman.data.cache.open_cache) so that frame
    headers are not re-read and frames prepare listed as bad are left out."""
    root = Path(root)
    if not root.is_dir():
        raise BatmanError(f"data set root {root} does not exist")
    return [_load_video(root, vid, mode, cache) for vid in split_ids(root, split)]


def raw_folder(folder: str | Path, what: str) -> list[Path]:
    """The raw frames of a plain folder (any camera LibRaw reads; sidecar JPEGs skipped), by name; a missing
    or empty folder is a one-line error saying what it was for (`what`: 'input', 'calibrate: dark', ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BatmanError(f"{what} folder {folder} does not exist")
    frames = list_raw_files(folder, ANY_RAW_SUFFIXES)
    if not frames:
        raise BatmanError(f"{what} folder {folder} has no raw frames (.ARW, .dng, .CR2, .NEF, ...)")
    return frames


def folder_video(folder: str | Path, gain: float = 1.0) -> Video:
    """A plain folder of raw frames (no ground truth), e.g. for `batman export --input FOLDER`; the
    gain is the same for every frame (batman.infer.auto_gain chooses it from the burst)."""
    folder = Path(folder)
    frames = raw_folder(folder, "input")
    headers = [read_header(p) for p in frames]
    sizes = [h.size for h in headers]
    _check_sizes(frames, sizes)
    return Video(id=folder.name, frames=tuple(frames), targets=(), gains=(float(gain),) * len(frames),
                 meta={}, mode="raw", size=sizes[0], wb=headers[0].wb, cam_to_srgb=headers[0].cam_to_srgb)
