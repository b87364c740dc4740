"""Files that never look complete when they are not: atomic outputs, folders, locks and free space.

Every output batman writes goes through `atomic_path` (one file) or `atomic_dir` (one folder): the
writer fills a temporary sibling, which is flushed to disk and renamed onto the final name only when
the writer finished without an error. A crash, a kill or a full disk leaves the earlier output (or
nothing) at the final name, plus at most a hidden temporary sibling that the next writer of that
name removes. Temporary names carry the writer's process id, `.<name>.<pid>.<random>.tmp<suffix>`,
so a cleaner removes only what a dead batman process left and never another user's file.
"""
from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from batman.errors import BatmanError

# mkstemp's random part: 8 characters of [a-z0-9_]
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(?P<suffix>(\.[^.]+)?)$")


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def write_error(path: str | Path, e: OSError) -> Exception:
    """The one-line error for a failed write (full disk, file-size limit, read-only folder)."""
    return BatmanError(f"cannot write {path} ({_reason(e)}): check free space, permissions and file-size limits")


def ensure_dir(path: str | Path) -> Path:
    """Create a folder (and its parents); a file in the way or a read-only parent is a one-line error."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BatmanError(f"{existing} is a file, not a folder: choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BatmanError(f"cannot create folder {path} ({_reason(e)}): check the path and its permissions") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (our own process counts: another thread may be writing)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def remove_stale_temps(folder: str | Path, name: str | None = None) -> int:
    """Remove the temporary siblings (of `name`, or of any name) that a dead batman process left in
    `folder`; return how many. Files that merely look temporary, and live writers' files, stay."""
    folder = Path(folder)
    pattern = f".{glob.escape(name)}.*.tmp*" if name else ".*.tmp*"
    removed = 0
    for entry in folder.glob(pattern) if folder.is_dir() else ():
        m = TEMP_RE.match(entry.name)
        if not m or (name and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some file systems refuse fsync on a folder, which is harmless."""
    try:
        _fsync(folder)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path in the same folder; on success it replaces `path`, on error it vanishes.

    The temp file is flushed to disk before the rename, so a power cut never leaves a renamed but
    empty file. Any OSError (full disk, file-size limit, read-only folder) becomes a one-line error
    naming `path`. `suffix` keeps an extension on the temp name for writers that insist on one
    (np.save, imageio, ffmpeg).
    """
    path = Path(path)
    ensure_dir(path.parent)
    remove_stale_temps(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp" + suffix, dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty temporary folder beside `path`; on success it takes the place of `path` (an
    earlier folder there is removed, so no file of an earlier run survives), on error it vanishes and
    the earlier folder stays as it was."""
    path = Path(path)
    ensure_dir(path.parent)
    remove_stale_temps(path.parent, path.name)
    if path.exists() and not path.is_dir():
        raise BatmanError(f"{path} is a file, not a folder: move it away and rerun")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _replace_dir(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, path: Path) -> None:
    """Rename folder `new` onto `path`. An earlier folder is first renamed into a temporary sibling
    (removed afterwards) and put back if the second rename fails."""
    if not path.exists():
        os.rename(new, path)
        return
    trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    os.rename(path, trash / "old")
    try:
        os.rename(new, path)
    except OSError:
        os.rename(trash / "old", path)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def exclusive(lock_path: str | Path, busy: str):
    """Hold an exclusive lock on `lock_path` for the block; `busy` is the error when another process
    holds it. The kernel releases the lock when its holder dies, so a killed run never blocks the next."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    lock_path = Path(lock_path)
    ensure_dir(lock_path.parent)
    try:
        f = open(lock_path, "a")
    except OSError as e:
        raise write_error(lock_path, e) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise write_error(lock_path, e) from None
            raise BatmanError(busy) from None
        yield


def free_bytes(path: str | Path) -> int:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"
