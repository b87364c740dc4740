"""Fuzz the raw reader: mutated real and synthetic raws are read or refused cleanly, never crash or hang.

Reads run in a child process that serves many files (fast), and is restarted when LibRaw kills it,
so a crash is recorded against the exact input instead of taking pytest down.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys

import numpy as np
import pytest

from batman.data.raw import write_dng
from conftest import FIXTURES

WORKER = r"""
import sys
from batman.config import BatmanError
from batman.data.raw import pack_bayer, read_raw
for line in sys.stdin:
    path = line.strip()
    try:
        pack_bayer(read_raw(path))
        print("ok", flush=True)
    except BatmanError as e:
        print("refused " + str(e).split(":")[0], flush=True)
    except Exception as e:
        print(f"raised {type(e).__name__}: {e}".replace("\n", " "), flush=True)
"""
PER_FILE_TIMEOUT_S = 20


def mutations(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    """Byte flips, truncations and zeroed headers of one file."""
    out = []
    for i in range(n):
        buf = bytearray(data)
        kind = i % 4
        if kind == 0:  # random byte flips anywhere
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 64))):
                buf[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # flips concentrated in the header, where the IFDs and offsets live
            for pos in rng.integers(0, min(len(buf), 4096), int(rng.integers(1, 16))):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 2:  # truncation
            buf = buf[: int(rng.integers(1, len(buf)))]
        else:  # a zeroed header block
            start = int(rng.integers(0, min(len(buf), 2048)))
            end = min(len(buf), start + int(rng.integers(4, 512)))
            buf[start:end] = bytes(end - start)
        out.append(bytes(buf))
    return out


def sources(tmp_path) -> dict[str, bytes]:
    synthetic = tmp_path / "synthetic.dng"
    rng = np.random.default_rng(0)
    write_dng(synthetic, rng.integers(0, 4096, (64, 96)).astype(np.uint16), "GBRG", 256, 4095, 0.01)
    files = {"synthetic.dng": synthetic.read_bytes()}
    if FIXTURES.is_dir():
        for name in sorted(os.listdir(FIXTURES)):
            if name.split(".")[-1].lower() in {"dng", "kdc", "nef", "arw"}:
                files[name] = (FIXTURES / name).read_bytes()
    return files


class Reader:
    """A child process that reads one path per line; restarted after a crash."""

    def __init__(self):
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read(self, path) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], PER_FILE_TIMEOUT_S)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            return "hang"
        line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.wait()
            return f"crash (exit {self.proc.returncode})"
        return line

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="needs the real raws in ../shared/fixtures")
def test_mutated_raws_are_read_or_refused(tmp_path):
    rng = np.random.default_rng(1234)
    per_source = {"canon_550d_colorchart.dng": 40, "nikon_coolscan_not_bayer.nef": 40}
    cases = []
    for name, data in sources(tmp_path).items():
        for i, blob in enumerate(mutations(data, rng, per_source.get(name, 80))):
            path = tmp_path / f"{i:03d}_{name}"
            path.write_bytes(blob)
            cases.append(path)
    assert len(cases) >= 200
    reader = Reader()
    outcomes = {}
    try:
        for path in cases:
            outcomes[path.name] = reader.read(path)
    finally:
        reader.close()
    bad = {k: v for k, v in outcomes.items()
           if v not in ("ok", "refused cannot read raw", "refused not a Bayer raw")}
    summary = {v: sum(1 for o in outcomes.values() if o == v) for v in set(outcomes.values())}
    print(f"fuzz outcomes over {len(outcomes)} files: {summary}")
    assert not bad, f"unclean outcomes: {bad}"
    assert summary.get("refused cannot read raw", 0) > 0 and summary.get("ok", 0) > 0
