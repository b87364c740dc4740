"""One raw file: read it with rawpy, pack its Bayer mosaic to canonical R, G1, G2, B, bin and normalise
it (the canonical decode the cache and the dataset share), write DNGs.

Canonical order whatever the sensor's CFA phase: G1 is the green in the red row, G2 the green in
the blue row. Black and white levels always come from the file (no hard-coded white point).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from batman.config import BatmanError
from batman.files import format_bytes

CANONICAL = ("R", "G1", "G2", "B")


@dataclass
class RawFrame:
    """A Bayer frame. `bayer_u16` is the visible area (H, W); black/white in sensor units."""
    path: str
    bayer_u16: np.ndarray
    pattern: str                     # 2x2 CFA letters row-major, e.g. "RGGB", "GRBG"
    black: tuple[float, ...]         # per canonical channel R, G1, G2, B
    white: float
    exposure_s: float | None = None
    make: str = ""
    model: str = ""
    wb: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # camera white balance multipliers R, G1, G2, B
    cam_to_srgb: np.ndarray | None = field(default=None, repr=False)  # 3x3 camera RGB -> linear sRGB, when known

    @property
    def height(self) -> int:
        return int(self.bayer_u16.shape[0])

    @property
    def width(self) -> int:
        return int(self.bayer_u16.shape[1])


def canonical_offsets(pattern: str) -> list[tuple[int, int]]:
    """(row, col) inside the 2x2 tile of R, G1, G2, B for a pattern such as 'GRBG'."""
    pattern = pattern.upper()
    if sorted(pattern) != ["B", "G", "G", "R"]:
        raise ValueError(f"not a Bayer pattern: {pattern!r}")
    pos = {c: (i // 2, i % 2) for i, c in enumerate(pattern) if c != "G"}
    r_row, b_row = pos["R"][0], pos["B"][0]
    g1 = (r_row, 1 - pos["R"][1])
    g2 = (b_row, 1 - pos["B"][1])
    return [pos["R"], g1, g2, pos["B"]]


def shift_pattern(pattern: str, rows: int, cols: int) -> str:
    """The pattern seen after cropping `rows` rows and `cols` columns off the top-left."""
    grid = [pattern[0:2], pattern[2:4]]
    return "".join(grid[(r + rows) % 2][(c + cols) % 2] for r in range(2) for c in range(2))


def _pattern_letters(raw_pattern: np.ndarray, color_desc: bytes) -> str:
    desc = color_desc.decode("ascii", "replace")
    return "".join("G" if desc[i] == "G" else desc[i] for i in raw_pattern.flatten())


def _bayer_problem(rp) -> str | None:
    """Why a rawpy object is not a 2x2 RGB Bayer raw, or None when it is one."""
    import rawpy
    if rp.raw_type != rawpy.RawType.Flat:
        return f"raw_type {rp.raw_type.name}: not a single-plane colour filter array"
    if rp.raw_pattern is None:
        return "no colour filter pattern"
    if rp.raw_pattern.shape != (2, 2):
        return f"{rp.raw_pattern.shape[0]}x{rp.raw_pattern.shape[1]} colour filter (e.g. X-Trans), not 2x2 Bayer"
    letters = _pattern_letters(rp.raw_pattern, rp.color_desc)
    if sorted(letters) != ["B", "G", "G", "R"]:
        return f"colour filter {letters} (colours {rp.color_desc.decode(errors='replace')}), not RGGB-type"
    return None


def printable(text: str, limit: int = 64) -> str:
    """A string from a file, safe to print: control characters (terminal escapes, newlines) become
    '?' and the length is capped, so a crafted Make tag cannot rewrite the user's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text.strip("\x00 "))[:limit]


def _make_model(path: Path) -> tuple[str, str]:
    """Make and model from the TIFF header (ARW, DNG, NEF are TIFF); empty when unreadable."""
    try:
        import tifffile
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            make = tags.get("Make")
            model = tags.get("Model")
            return (printable(str(make.value)) if make else "", printable(str(model.value)) if model else "")
    except Exception:  # a header tifffile cannot parse (KDC, corrupt files): make/model stay unknown
        return "", ""


def _check_file(path: Path) -> None:
    """A raw path must be a regular file; a folder named x.dng is not 'no such file'."""
    if path.is_dir():
        raise BatmanError(f"cannot read raw: {path} (a folder, not a raw file)")
    if not path.exists():
        raise BatmanError(f"cannot read raw: {path} (no such file)")
    if not path.is_file():
        raise BatmanError(f"cannot read raw: {path} (not a regular file)")


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown (then no check is made)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def decode_bytes(raw_h: int, raw_w: int, h: int, w: int, pixels: bool = True) -> int:
    """Memory a decode needs: LibRaw's uint16 raw buffer, plus (`pixels`) our uint16 copy of the
    visible area and the float32 packing that follows it."""
    return raw_h * raw_w * 2 + (h * w * (2 + 4) if pixels else 0)


def _check_memory(path: Path, rp, pixels: bool = True) -> None:
    """Refuse a frame too large to decode here, from its size alone (rawpy's `sizes` is the one fact
    it gives before LibRaw unpacks: even the pattern and levels make it allocate the raw buffer)."""
    need = decode_bytes(rp.sizes.raw_height, rp.sizes.raw_width, rp.sizes.height, rp.sizes.width, pixels)
    have = available_memory_bytes()
    if have is not None and need > have:
        raise BatmanError(f"cannot read raw: {path} ({rp.sizes.width}x{rp.sizes.height}: decoding needs about "
                          f"{format_bytes(need)}, only {format_bytes(have)} of memory is available)")


@contextmanager
def _captured_stderr_fd(messages: list[str]):
    """LibRaw prints problems ('Unexpected end of file') straight to fd 2: keep them for our error."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            messages += [line.split(": ")[-1] for line in text.splitlines() if line.strip()]


def _index_at(rp) -> dict[tuple[int, int], int]:
    """LibRaw's colour index at each (row, col) of the 2x2 tile."""
    return {(r, c): int(rp.raw_pattern[r, c]) for r in range(2) for c in range(2)}


def _canonical_wb(rp, offsets, index_at) -> tuple[float, ...]:
    """As-shot white balance multipliers R, G1, G2, B normalised to G1 = 1 (ones when missing)."""
    wb_raw = list(rp.camera_whitebalance)
    if wb_raw[3] == 0:  # dcraw convention: a zero fourth multiplier means "same as green"
        wb_raw[3] = wb_raw[1]
    wb = [float(wb_raw[index_at[o]]) for o in offsets]
    if not all(np.isfinite(wb)) or min(wb) <= 0:
        return (1.0, 1.0, 1.0, 1.0)
    return tuple(v / wb[1] for v in wb)


class RawHeader(NamedTuple):
    size: tuple[int, int]       # visible mosaic (H, W)
    exposure_s: float | None
    white: float
    wb: tuple[float, ...]       # as-shot white balance R, G1, G2, B (ones for a non-Bayer file)
    cam_to_srgb: tuple | None = None  # 3x3 camera RGB -> linear sRGB (rows), when the file says


def read_header(path: str | Path) -> RawHeader:
    """Size, exposure, white level, white balance and colour matrix from a raw file's header, without copying
    pixels. (rawpy unpacks the raw buffer for anything but the size, so a frame too large for the
    memory is refused from its size first.)"""
    import rawpy
    _check_file(Path(path))
    rp = rawpy.RawPy()
    try:
        rp.open_file(str(path))
        _check_memory(Path(path), rp, pixels=False)
        size = (int(rp.sizes.height), int(rp.sizes.width))
        shutter = float(rp.other.shutter_speed)
        wb, matrix = (1.0, 1.0, 1.0, 1.0), None
        if not _bayer_problem(rp):
            pattern = _pattern_letters(rp.raw_pattern, rp.color_desc)
            wb = _canonical_wb(rp, canonical_offsets(pattern), _index_at(rp))
            matrix = _camera_matrix(rp)
        return RawHeader(size, shutter if shutter > 0 else None, float(rp.white_level), wb,
                         None if matrix is None else tuple(map(tuple, matrix.tolist())))
    except BatmanError:
        raise
    except Exception as e:  # LibRaw errors: unreadable or unsupported header
        raise BatmanError(f"cannot read raw: {path} ({type(e).__name__}: {e})") from None
    finally:
        rp.close()


def _camera_matrix(rp) -> np.ndarray | None:
    """Camera RGB -> linear sRGB: LibRaw's color_matrix (filled for DNGs from ColorMatrix1), else
    derived from rgb_xyz_matrix (XYZ -> camera, filled for most proprietary raws), else None."""
    from batman.isp import cam_to_srgb_from_xyz

    direct = np.array(rp.color_matrix, dtype=np.float64)[:3, :3]
    if np.isfinite(direct).all() and np.abs(direct).sum() > 0:
        return direct
    xyz_to_cam = np.array(rp.rgb_xyz_matrix, dtype=np.float64)[:3]
    if np.isfinite(xyz_to_cam).all() and np.abs(xyz_to_cam).sum() > 0:
        return cam_to_srgb_from_xyz(xyz_to_cam)
    return None


def _levels(rp, path: Path) -> dict:
    """The facts of an open rawpy file, no pixel copied: pattern, per-channel black in canonical
    order, white, white balance, exposure, visible size. A non-Bayer file is refused."""
    problem = _bayer_problem(rp)
    if problem:
        raise BatmanError(f"not a Bayer raw: {path} ({problem})")
    pattern = _pattern_letters(rp.raw_pattern, rp.color_desc)
    by_index = list(rp.black_level_per_channel)
    index_at = _index_at(rp)
    offsets = canonical_offsets(pattern)
    shutter = float(rp.other.shutter_speed)
    return {"pattern": pattern, "black": tuple(float(by_index[index_at[o]]) for o in offsets),
            "white": float(rp.white_level), "wb": _canonical_wb(rp, offsets, index_at),
            "exposure_s": shutter if shutter > 0 else None,
            "height": int(rp.sizes.height), "width": int(rp.sizes.width)}


@contextmanager
def _open_raw(path: Path):
    """rawpy.imread (header parsed, no pixel decoded yet), LibRaw's complaints turned into one line."""
    import rawpy
    _check_file(path)
    libraw_says: list[str] = []
    try:
        with _captured_stderr_fd(libraw_says), rawpy.imread(str(path)) as rp:
            yield rp
    except BatmanError:
        raise
    except Exception as e:  # rawpy.LibRawError and friends: unreadable, truncated, unsupported
        detail = "; ".join(libraw_says) or f"{type(e).__name__}: {e}"
        raise BatmanError(f"cannot read raw: {path} ({detail})") from None


def read_raw(path: str | Path) -> RawFrame:
    """Read a Bayer raw file. Raises BatmanError 'cannot read raw' or 'not a Bayer raw'; a frame too
    large for the available memory is refused from its header, with the size."""
    path = Path(path)
    with _open_raw(path) as rp:
        _check_memory(path, rp)
        facts = _levels(rp, path)
        bayer = np.array(rp.raw_image_visible, dtype=np.uint16, copy=True)
        cam_to_srgb = _camera_matrix(rp)
    black, white = facts["black"], facts["white"]
    if bayer.ndim != 2 or min(bayer.shape) < 2:
        raise BatmanError(f"cannot read raw: {path} (mosaic of shape {bayer.shape})")
    if not white > max(black):
        raise BatmanError(f"cannot read raw: {path} (white level {white} not above black {max(black)})")
    make, model = _make_model(path)
    return RawFrame(path=str(path), bayer_u16=bayer, pattern=facts["pattern"], black=black, white=white,
                    exposure_s=facts["exposure_s"], make=make, model=model, wb=facts["wb"],
                    cam_to_srgb=cam_to_srgb)


def read_info(path: str | Path) -> dict:
    """The facts `batman inspect` prints, without copying, packing or converting a pixel: the size
    comes from the header and a frame whose raw buffer does not fit in memory is refused with it.
    (rawpy has LibRaw unpack the raw buffer once for the pattern and levels: no header-only path.)"""
    path = Path(path)
    with _open_raw(path) as rp:
        _check_memory(path, rp, pixels=False)
        facts = _levels(rp, path)
    make, model = _make_model(path)
    return {"path": str(path), "make": make, "model": model, "pattern": facts["pattern"],
            "black": list(facts["black"]), "white": facts["white"], "height": facts["height"],
            "width": facts["width"], "exposure_s": facts["exposure_s"]}


def raw_info(frame: RawFrame) -> dict:
    """The facts `batman inspect --check` prints, from a decoded frame."""
    return {"path": frame.path, "make": frame.make, "model": frame.model, "pattern": frame.pattern,
            "black": list(frame.black), "white": frame.white, "height": frame.height,
            "width": frame.width, "exposure_s": frame.exposure_s}


# --- the canonical decode: counts, then float32 -----------------------------------------------
# One decode serves the cache and the raws: `decode_counts` gives the packed R, G1, G2, B mosaic summed
# over bin x bin blocks as exact integers (what `batman prepare` stores), `normalize` turns counts into
# float32. A clip read from the cache is therefore bit-identical to one decoded from the raws.

@dataclass(frozen=True)
class FrameCounts:
    """counts: (4, h, w) uint16 (uint32 when a sum exceeds 65535) R, G1, G2, B summed over bin x bin."""
    counts: np.ndarray
    black: tuple[float, ...]     # per canonical channel, sensor units
    white: float
    exposure_s: float | None
    mosaic: tuple[int, int]      # visible mosaic (H, W) of the source


def pack_counts(bayer_u16: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W) mosaic -> (4, H//2, W//2) uint16 R, G1, G2, B (odd edges cropped), values untouched."""
    h, w = bayer_u16.shape[0] // 2 * 2, bayer_u16.shape[1] // 2 * 2
    return np.stack([bayer_u16[dy:h:2, dx:w:2] for dy, dx in canonical_offsets(pattern)])


def bin_counts(packed: np.ndarray, bin: int) -> np.ndarray:
    """Sum bin x bin blocks exactly; uint16 when every sum fits, else uint32 (odd edges cropped)."""
    if bin == 1:
        return np.ascontiguousarray(packed)
    c, h, w = packed.shape
    h, w = h // bin, w // bin
    sums = np.zeros((c, h, w), dtype=np.uint32)
    for dy in range(bin):  # bin^2 strided adds: 4x faster than a reshape-sum over the block axes
        for dx in range(bin):
            sums += packed[:, dy : h * bin : bin, dx : w * bin : bin]
    return sums.astype(np.uint16) if sums.size == 0 or sums.max() <= 65535 else sums


def decode_counts(path: str | Path, bin: int) -> FrameCounts:
    """Read one raw file and bin its packed mosaic: the data the cache stores."""
    frame = read_raw(path)
    return FrameCounts(counts=bin_counts(pack_counts(frame.bayer_u16, frame.pattern), bin),
                       black=tuple(frame.black), white=frame.white, exposure_s=frame.exposure_s,
                       mosaic=(frame.height, frame.width))


def normalize(counts: np.ndarray, black, white: float, bin: int) -> np.ndarray:
    """counts (4, h, w) -> float32 (counts / bin^2 - black) / (white - black), below-black values kept.

    Element-wise, so normalising a crop equals cropping the normalised frame bit for bit.
    """
    x = np.asarray(counts).astype(np.float32)  # exact: sums stay below 2**24
    if bin > 1:
        x /= np.float32(bin * bin)
    black = np.asarray(black, dtype=np.float32).reshape(-1, 1, 1)
    x -= black
    x /= np.float32(white) - black
    return x


def pack_bayer(frame: RawFrame) -> np.ndarray:
    """(H, W) mosaic -> float32 (4, H//2, W//2) R, G1, G2, B, black-subtracted, / (white - black):
    the canonical decode without binning.

    Odd trailing rows/columns are cropped. Values below black become slightly negative (kept:
    clipping at 0 would bias the mean of dark noisy pixels); callers clip after applying the gain.
    """
    return normalize(pack_counts(frame.bayer_u16, frame.pattern), frame.black, frame.white, bin=1)


def unpack_bayer(packed: np.ndarray, pattern: str) -> np.ndarray:
    """Inverse of pack_bayer's layout: (4, h, w) R, G1, G2, B -> (2h, 2w) mosaic in `pattern`."""
    _, h, w = packed.shape
    mosaic = np.empty((2 * h, 2 * w), dtype=packed.dtype)
    for c, (dy, dx) in enumerate(canonical_offsets(pattern)):
        mosaic[dy::2, dx::2] = packed[c]
    return mosaic


def bin2x2(packed: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks of each channel: (C, H, W) -> (C, H//2, W//2) (odd edges cropped)."""
    c, h, w = packed.shape
    h2, w2 = h // 2, w // 2
    x = packed[:, : 2 * h2, : 2 * w2].reshape(c, h2, 2, w2, 2)
    return x.mean(axis=(2, 4), dtype=np.float32)


_CFA_CODE = {"R": 0, "G": 1, "B": 2}


def write_dng(path: str | Path, bayer_u16: np.ndarray, pattern: str, black: float | tuple,
              white: float, exposure_s: float, wb: tuple[float, float, float] | None = None,
              color_matrix: np.ndarray | None = None, make: str = "batman", model: str = "synthetic",
              iso: int | None = None) -> None:
    """Write a CFA DNG that rawpy reads back bit-exact (tifffile; atomic).

    black: one level or four per 2x2 tile position (row-major). wb: R, G, B multipliers, stored as
    AsShotNeutral = 1/wb. color_matrix: XYZ -> camera 3x3 (DNG ColorMatrix1). iso: EXIF ISOSpeedRatings.
    """
    import tifffile
    from fractions import Fraction

    from batman.files import atomic_path

    def rational(v: float) -> tuple[int, int]:
        f = Fraction(v).limit_denominator(1_000_000)
        return f.numerator, f.denominator

    def rationals(values, signed=False) -> tuple:
        out = []
        for v in values:
            n, d = rational(float(v))
            out += [n, d]
        return tuple(out)

    blacks = (black,) * 4 if np.isscalar(black) else tuple(black)
    extratags = [
        (271, "s", 0, make, True),
        (272, "s", 0, model, True),
        (33421, "H", 2, (2, 2), True),                              # CFARepeatPatternDim
        (33422, "B", 4, tuple(_CFA_CODE[c] for c in pattern.upper()), True),  # CFAPattern
        (33434, "2I", 1, rational(exposure_s), True),               # ExposureTime
        (50706, "B", 4, (1, 4, 0, 0), True),                        # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),                        # DNGBackwardVersion
        (50708, "s", 0, f"{make} {model}", True),                   # UniqueCameraModel
        (50713, "H", 2, (2, 2), True),                              # BlackLevelRepeatDim
        (50714, "2I", 4, rationals(blacks), True),                  # BlackLevel
        (50717, "I", 1, int(white), True),                          # WhiteLevel
    ]
    if iso is not None:
        extratags.append((34855, "H", 1, int(iso), True))              # ISOSpeedRatings
    if wb is not None:
        extratags.append((50728, "2I", 3, rationals([1.0 / v for v in wb]), True))  # AsShotNeutral
    if color_matrix is not None:
        extratags.append((50721, "2i", 9, rationals(np.asarray(color_matrix).flatten()), True))
        extratags.append((50778, "H", 1, 21, True))                 # CalibrationIlluminant1 = D65
    with atomic_path(path, suffix=".dng") as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(bayer_u16, dtype=np.uint16), photometric=32803,
                         compression=None, subfiletype=0, extratags=extratags, metadata=None)
