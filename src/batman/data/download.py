"""Download DRV: resumable HTTP with retries, size- and CRC-verified archives, zip-slip-safe extraction.

State lives in `<root>/.download/`: `NAME.zip.part` while downloading, `NAME.zip` once its size
matches the server's, `NAME.extracting/` while unpacking, `NAME.done` (JSON) once the part is in
place. A rerun skips finished parts without a request, resumes a partial file with an HTTP Range
request and redoes an interrupted extraction from the kept archive.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from batman.config import BatmanError
from batman.files import atomic_write_text, ensure_dir, exclusive, format_bytes, free_bytes

DRV_URL = "https://storage.googleapis.com/isl-datasets/DRV"

# Part name -> the top-level folder it fills; short1..short5 all add video ids to short/.
PART_FOLDERS = {"long": "long", "VBM4D_rawRGB": "VBM4D_rawRGB", "short1": "short", "short2": "short",
                "short3": "short", "short4": "short", "short5": "short"}
PART_SETS = {"raw": ("long", "short1", "short2", "short3", "short4", "short5"),
             "preprocessed": ("long", "VBM4D_rawRGB"),
             "all": tuple(PART_FOLDERS)}

# Archive sizes in bytes, checked against the server and the received file when present. Empty
# because they have not been measured from the real host yet: fill them from the `zip_bytes` of
# a finished part's `<root>/.download/NAME.done`.
KNOWN_SIZES: dict[str, int] = {}

# A member may expand to at most MAX_RATIO times its compressed size once it is larger than
# RATIO_FROM_BYTES: DRV's PNGs and ARWs barely compress, a zip bomb expands a thousandfold.
MAX_RATIO = 100
RATIO_FROM_BYTES = 1 << 20

RETRIES = 5          # tries in a row that got no further before giving up on a file
BACKOFF_S = 1.0      # wait after the first failed try; doubles after each further one
TIMEOUT_S = 60.0     # connect and per-read socket timeout
CHUNK_BYTES = 1 << 20
STATE_DIR = ".download"
USER_AGENT = "batman-download/0.1"


class _Retry(Exception):
    """A transient failure (connection, timeout, 5xx, short body): worth another try."""


@dataclass
class _Transfer:
    url: str
    part: Path
    expected_bytes: int | None
    total: int | None = None     # the file's size as the server reports it
    received: int = 0            # bytes read from the network, all tries together


def _say(msg: str) -> None:
    print(msg, flush=True)


# --- parts and URLs ---------------------------------------------------------------------------

def resolve_parts(parts: str) -> list[str]:
    """`raw`, `preprocessed`, `all` or a comma list of part names (any case) -> part names, in order."""
    by_lower = {name.lower(): name for name in (*PART_SETS, *PART_FOLDERS)}
    names: list[str] = []
    for token in (t.strip() for t in parts.split(",")):
        if not token:
            continue
        key = by_lower.get(token.lower())
        if key is None:
            raise BatmanError(f"unknown part {token!r} in --parts; valid: {', '.join(PART_SETS)} "
                              f"or a comma list of {', '.join(PART_FOLDERS)}")
        names += [n for n in PART_SETS.get(key, (key,)) if n not in names]
    if not names:
        raise BatmanError(f"--parts is empty; give {', '.join(PART_SETS)} or a comma list of "
                          f"{', '.join(PART_FOLDERS)}")
    return names


def _check_url_base(url_base: str) -> str:
    if not re.match(r"https?://[^/]", url_base):
        raise BatmanError(f"--url-base {url_base!r}: expected an http:// or https:// URL such as {DRV_URL}")
    return url_base.rstrip("/")


def _check_space(folder: Path, need: int, what: str) -> None:
    free = free_bytes(folder)
    if free < need:
        raise BatmanError(f"{folder}: {what} needs {format_bytes(need)} free, only {format_bytes(free)} left; "
                          f"free some space or choose another --root, then rerun (finished work is kept)")


# --- HTTP -------------------------------------------------------------------------------------

def fetch(url: str, dest: str | Path, *, expected_bytes: int | None = None, retries: int = RETRIES,
          backoff_s: float = BACKOFF_S, timeout_s: float = TIMEOUT_S) -> int:
    """Download `url` to `dest` through `dest.part`, resuming what is there; return the bytes received.

    `dest` appears (os.replace) only when its size equals the server's total and `expected_bytes`.
    The try budget counts tries in a row that did not grow the .part, so a long download survives
    many dropped connections but a dead server fails after `retries` tries. Before the body is read,
    the disk must hold the rest of the archive plus about its size again for the extraction.
    """
    dest = Path(dest)
    t = _Transfer(url, dest.with_name(dest.name + ".part"), expected_bytes)
    failures = 0
    while True:
        size_before = _size(t.part)
        try:
            _fetch_once(t, timeout_s)
            break
        except _Retry as e:
            failures = 1 if _size(t.part) > size_before else failures + 1
            if failures >= max(1, retries):
                raise BatmanError(f"{url}: giving up after {failures} tries without progress ({e}); check the "
                                  f"network and --url-base, then rerun to resume") from None
            delay_s = backoff_s * 2 ** (failures - 1)
            _say(f"{dest.name}: {e}; try {failures + 1} of {retries} in {delay_s:g} s")
            time.sleep(delay_s)
    size = _size(t.part)
    if t.total is None:
        _say(f"{dest.name}: the server sent no size; relying on the zip check")
    if expected_bytes is not None and size != expected_bytes:
        t.part.unlink()
        raise BatmanError(f"{url}: received {size} bytes, expected {expected_bytes} (KNOWN_SIZES); removed the "
                          f"partial file, rerun to download it again")
    os.replace(t.part, dest)
    return t.received


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fetch_once(t: _Transfer, timeout_s: float) -> None:
    """One request: continue `t.part` from its size; return when complete, raise _Retry when cut short."""
    have = _size(t.part)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(t.url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        with e:
            return _on_http_error(t, e, have)
    except (OSError, http.client.HTTPException) as e:  # refused, reset, DNS, timeout (URLError is an OSError)
        raise _Retry(_reason(e)) from None
    with resp:
        start, total = _body_range(resp, t.url)
        _set_total(t, total)
        if start > have:
            raise _Retry(f"the server resumed at byte {start}, the partial file has {have}")
        if total is not None:
            # The archive's rest plus its extraction: zip sizes are unknown until the download ends,
            # and DRV's images are already compressed, so the archive's size is the estimate.
            _check_space(t.part.parent, total - start + total,
                         f"{t.url} (archive {format_bytes(total - start)} + extraction about {format_bytes(total)})")
        _stream(resp, t, start)
    size = _size(t.part)
    if t.total is not None and size != t.total:
        raise _Retry(f"connection closed after {size} of {t.total} bytes")


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def _on_http_error(t: _Transfer, e: urllib.error.HTTPError, have: int) -> None:
    if e.code == 416 and have:
        total = _content_range_total(e.headers.get("Content-Range", ""))
        if total == have:  # the .part was already complete (stopped before its rename)
            return _set_total(t, total)
        t.part.unlink()
        raise _Retry(f"HTTP 416 for the {have}-byte partial file; starting it again")
    if e.code >= 500 or e.code in (408, 429):
        raise _Retry(f"HTTP {e.code} {e.reason}")
    raise BatmanError(f"{t.url}: HTTP {e.code} {e.reason}; check --url-base and --parts")


def _content_range_total(value: str) -> int | None:
    m = re.search(r"/(\d+)\s*$", value or "")
    return int(m[1]) if m else None


def _body_range(resp, url: str) -> tuple[int, int | None]:
    """(first byte of the body in the file, the file's total size or None) of a 200 or 206 answer."""
    if resp.status == 206:
        value = resp.headers.get("Content-Range", "")
        m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
        if not m:
            raise _Retry(f"unreadable Content-Range {value!r}")
        return int(m[1]), (int(m[3]) if m[3] != "*" else None)
    if resp.status == 200:
        length = resp.headers.get("Content-Length", "")
        return 0, (int(length) if length.strip().isdigit() else None)
    raise BatmanError(f"{url}: unexpected HTTP {resp.status} {resp.reason}; check --url-base")


def _set_total(t: _Transfer, total: int | None) -> None:
    if total is None:
        return
    if t.expected_bytes is not None and total != t.expected_bytes:
        raise BatmanError(f"{t.url}: the server reports {total} bytes, expected {t.expected_bytes} (KNOWN_SIZES); "
                          f"check --url-base, or update KNOWN_SIZES if the data set was re-released")
    if t.total is not None and total != t.total:
        t.part.unlink(missing_ok=True)
        raise BatmanError(f"{t.url}: the server reported {t.total} bytes, then {total}; the file changed or the "
                          f"server is misbehaving; removed the partial file, rerun to start again")
    t.total = total


def _stream(resp, t: _Transfer, start: int) -> None:
    """Write the body into `t.part` from byte `start`; what lay beyond is cut off first."""
    try:
        with open(t.part, "r+b" if t.part.exists() else "wb") as f, \
                tqdm(total=t.total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=t.part.name.removesuffix(".part"), disable=None, dynamic_ncols=True) as bar:
            f.seek(start)
            f.truncate()  # a server that ignores Range sends from byte 0: restart, never append
            while chunk := _read_chunk(resp):
                f.write(chunk)
                t.received += len(chunk)
                bar.update(len(chunk))
    except OSError as e:
        raise BatmanError(f"{t.part}: cannot write ({e.strerror or e}); check free space and permissions") from None


def _read_chunk(resp) -> bytes:
    try:
        return resp.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as e:
        raise _Retry(_reason(e)) from None


# --- extraction -------------------------------------------------------------------------------

def extract(archive: str | Path, root: str | Path, part: str) -> dict:
    """Check and unpack `archive` (the DRV part `part`) into `root`; return {'members', 'bytes'}.

    Every member name is checked before anything is written. Files are written to a staging folder
    inside root (each CRC checked as it is read) and moved into place only when all of them passed,
    folders that exist already being merged. A broken or unsafe archive is removed, so that a rerun
    downloads it again, and nothing of it is extracted.
    """
    archive, root = Path(archive), Path(root)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        _refuse(archive, f"not a readable zip ({e})")
    with zf:
        plan = _plan_members(zf, archive, part)
        total = sum(info.file_size for info, _ in plan)
        _check_space(root, total, f"extracting {archive.name} ({len(plan)} members)")
        staging = root / STATE_DIR / f"{part}.extracting"
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
        try:
            _unpack(zf, plan, staging, archive)
            for entry in sorted(staging.iterdir()):
                _merge(entry, root / entry.name, archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {"members": len(plan), "bytes": total}


def _refuse(archive: Path, why: str):
    archive.unlink(missing_ok=True)
    raise BatmanError(f"{archive}: {why}; removed it and extracted nothing, rerun to download it again")


def _plan_members(zf: zipfile.ZipFile, archive: Path, part: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """(member, path relative to root) for every member worth extracting; refuses the archive on an unsafe one."""
    plan = []
    for info in zf.infolist():
        problem = _unsafe(info) or _absurd(info)
        if problem:
            _refuse(archive, f"member {info.filename!r} {problem}, refusing the archive")
        rel = _target(info.filename, PART_FOLDERS[part], part)
        if rel is not None:
            plan.append((info, rel))
    return plan


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    """Why writing this member could land outside the staging folder (zip slip), or None."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a special file"
    name = info.filename.replace("\\", "/")  # archives made on Windows may use either separator
    if name.startswith("/"):
        return "has an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "has a drive letter"
    if ".." in name.split("/"):
        return "climbs out with '..'"
    if not any(p not in ("", ".") for p in name.split("/")):
        return "has an empty name"
    return None


def _absurd(info: zipfile.ZipInfo) -> str | None:
    """Why a member's declared size cannot be real data of DRV's (a zip bomb), or None."""
    if info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return (f"declares {format_bytes(info.file_size)} from {format_bytes(info.compress_size)} compressed "
                f"(more than {MAX_RATIO}x: a zip bomb)")
    return None


def _target(name: str, folder: str, part: str) -> PurePosixPath | None:
    """Where a (safe) member goes: always under the part's folder, e.g. short3/0101/x -> short/0101/x."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if parts[0] == "__MACOSX":  # resource forks from macOS's archiver
        return None
    if parts[0] != folder:
        if parts[0].lower() == part.lower():
            parts[0] = folder
        else:  # an archive without its top folder must not scatter ids into root
            parts.insert(0, folder)
    return PurePosixPath(*parts)


def _unpack(zf: zipfile.ZipFile, plan, staging: Path, archive: Path) -> None:
    total = sum(info.file_size for info, _ in plan)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"unzip {archive.name}",
              disable=None, dynamic_ncols=True) as bar:
        for info, rel in plan:
            path = staging.joinpath(*rel.parts)
            try:
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(path, "wb") as dst:
                    while chunk := src.read(CHUNK_BYTES):  # ZipExtFile checks the CRC at the member's end
                        written += len(chunk)
                        if written > info.file_size:  # never write past the declared (space-checked) size
                            _refuse(archive, f"member {info.filename!r} holds more than its declared "
                                             f"{info.file_size} bytes")
                        dst.write(chunk)
                        bar.update(len(chunk))
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                _refuse(archive, f"member {info.filename!r} is corrupt ({e})")
            except (NotImplementedError, RuntimeError) as e:  # Deflate64, encryption
                raise BatmanError(f"{archive}: Python's zipfile cannot unpack {info.filename!r} ({e}); "
                                  f"extract it by hand (7z x) into {staging.parents[1]}") from None
            except OSError as e:
                raise BatmanError(f"{path}: cannot write ({e.strerror or e}); check free space and "
                                  f"permissions, then rerun") from None


def _merge(src: Path, dest: Path, archive: Path) -> None:
    """Move `src` to `dest`; a folder that exists already is merged into, entry by entry."""
    if src.is_dir() and dest.is_dir():  # is_dir follows links: a symlinked folder is filled, not replaced
        for child in sorted(src.iterdir()):
            _merge(child, dest / child.name, archive)
        return
    if os.path.lexists(dest) and (src.is_dir() or dest.is_dir()):
        raise BatmanError(f"{dest}: is a {'folder' if dest.is_dir() else 'file'} but {archive.name} has a "
                          f"{'folder' if src.is_dir() else 'file'} there; move it away and rerun")
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise BatmanError(f"{dest}: cannot move into place ({e.strerror or e}); check permissions, "
                              f"then rerun") from None
        shutil.move(src, dest)  # dest lies on another file system (a symlinked folder)


# --- the whole job ----------------------------------------------------------------------------

def _exclusive(state: Path):
    """Refuse to run two downloads into the same root at once (they would write the same .part)."""
    return exclusive(state / "lock", f"{state}: another `batman download` is using this folder; wait for it "
                                     f"or stop it, then rerun")


def download(root: str | Path, parts: str = "raw", url_base: str = DRV_URL, keep_zips: bool = False, *,
             retries: int = RETRIES, backoff_s: float = BACKOFF_S, timeout_s: float = TIMEOUT_S) -> dict[str, int]:
    """Download, verify and extract the DRV `parts` into `root`; return the bytes received per part.

    A part with a `.download/NAME.done` marker is skipped without a request, so a rerun after a
    success transfers nothing. The archive `.download/NAME.zip` is removed after extraction unless
    `keep_zips`.
    """
    names = resolve_parts(parts)
    base = _check_url_base(url_base)
    root = Path(root)
    state = ensure_dir(root / STATE_DIR)  # a read-only root or a file in the way: one line
    received = {}
    with _exclusive(state):
        for name in names:
            received[name] = _download_part(root, name, f"{base}/{name}.zip", keep_zips,
                                            retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
    _say(f"done: {', '.join(names)} in {root} ({format_bytes(sum(received.values()))} downloaded)")
    return received


def _download_part(root: Path, name: str, url: str, keep_zips: bool, **http) -> int:
    state = root / STATE_DIR
    marker, archive = state / f"{name}.done", state / f"{name}.zip"
    if marker.exists():
        if not keep_zips:
            archive.unlink(missing_ok=True)  # stopped between the marker and the removal
        _say(f"{name}: already extracted (delete {marker} to redo it)")
        return 0
    received = 0
    if archive.exists():
        _say(f"{name}: extracting the downloaded {archive}")
    else:
        _say(f"{name}: downloading {url}")
        received = fetch(url, archive, expected_bytes=KNOWN_SIZES.get(name), **http)
    summary = extract(archive, root, name)
    atomic_write_text(marker, json.dumps({
        "part": name, "url": url, "zip_bytes": _size(archive), "members": summary["members"],
        "bytes": summary["bytes"], "extracted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, indent=1) + "\n")
    if not keep_zips:
        archive.unlink()
    return received
