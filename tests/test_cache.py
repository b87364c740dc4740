"""The prepare cache: bit-identical clips, resumable after SIGKILL, reruns that touch nothing, bad frames."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from batman.cli import main
from batman.config import BatmanError, DataCfg
from batman.data import cache as cache_mod
from batman.data import drv
from batman.data.cache import FrameCache, find_cache, open_cache, prepare
from batman.data.dataset import ClipDataset, iter_frames
from batman.data.raw import decode_counts

CFG = DataCfg(crop=(8, 12), frames=3, clips_per_video=4)


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _assert_same_clips(root: Path, folder: Path, cfg: DataCfg = CFG) -> None:
    cache = FrameCache.open(folder)
    plain = ClipDataset(drv.load_split(root, "train"), cfg)
    cached = ClipDataset(drv.load_split(root, "train", cache=cache), cfg, cache=cache)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"]), i
    for video in drv.load_split(root, "train"):
        for x, y in zip(iter_frames(video, cfg), iter_frames(video, cfg, cache)):
            assert np.array_equal(x, y)


def _assert_consistent(cache: Path, n_frames: int) -> dict:
    """Every ok entry has its .npy with the manifest's shape and the decoded counts; no temp files."""
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["frames"]) == n_frames
    for key, entry in manifest["frames"].items():
        assert entry["status"] == "ok", key
        counts = np.load(cache / entry["npy"], mmap_mode="r")
        assert list(counts.shape) == entry["shape"] and counts.dtype.name == entry["dtype"]
        assert np.array_equal(counts, decode_counts(cache.parent / key, manifest["bin"]).counts), key
    assert not list(cache.rglob(".*.tmp*"))
    return manifest


def test_cached_clips_are_bit_identical(make_drv):
    root = make_drv(ids=("0001", "0002"), frames=4, size=(64, 96), per_frame=("0002",))
    cache = prepare(root, workers=2)
    assert cache == root / "cache" and find_cache(root) == cache
    _assert_same_clips(root, cache)


def test_uint32_counts_where_sums_overflow(make_drv):
    root = make_drv(ids=("0001",), frames=3, size=(64, 96), black=60000, white=65535)
    cache = prepare(root, workers=1)
    manifest = _assert_consistent(cache, 3)
    assert {e["dtype"] for e in manifest["frames"].values()} == {"uint32"}
    _assert_same_clips(root, cache)


def test_rerun_touches_nothing_and_redoes_changed_frames(make_drv, capsys):
    root = make_drv(ids=("0001", "0002"), frames=3, size=(64, 96))
    cache = prepare(root, workers=1)
    before = _mtimes(cache)
    time.sleep(0.01)
    prepare(root, workers=1)
    assert "0 of 6 frames to decode" in capsys.readouterr().out
    assert _mtimes(cache) == before
    from batman.data.raw import write_dng
    changed = root / "short" / "0002" / "00002.ARW"
    write_dng(changed, np.full((64, 96), 80, np.uint16), "RGGB", 64, 4095, 1 / 64)
    prepare(root, workers=1)
    assert "1 of 6 frames to decode" in capsys.readouterr().out
    after = _mtimes(cache)
    assert sorted(p.name for p in after if after[p] != before[p]) == ["00002.ARW.npy", "manifest.json"]
    _assert_same_clips(root, cache)


def test_prepare_killed_part_way_then_rerun(make_drv):
    root = make_drv(ids=("0001", "0002", "0003", "0004"), frames=100, size=(64, 96))
    cache = root / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "batman", "prepare", "--root", str(root), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(cache.rglob("*.npy"))) >= 70:  # past the first manifest write (every 64 frames)
            break
        time.sleep(0.001)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not finished, f"prepare ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    assert len(list(cache.rglob("*.npy"))) < 400
    early = json.loads((cache / "manifest.json").read_text())["frames"] if (cache / "manifest.json").exists() else {}
    assert len(early) >= 64  # killed after the first manifest write: those frames must not be redone
    early_mtimes = {k: (cache / e["npy"]).stat().st_mtime_ns for k, e in early.items()}
    prepare(root, workers=1)
    _assert_consistent(cache, 400)
    assert {k: (cache / e["npy"]).stat().st_mtime_ns for k, e in early.items()} == early_mtimes


def test_bad_frame_stops_or_is_left_out(make_drv, capsys):
    root = make_drv(ids=("0001", "0002"), frames=4, size=(64, 96), per_frame=("0002",))
    bad = root / "short" / "0002" / "00002.ARW"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(BatmanError, match=re.escape(f"corrupt frame: cannot read raw: {bad}")):
        prepare(root, workers=1)
    assert main(["prepare", "--root", str(root), "--workers", "1"]) == 2
    assert str(bad) in capsys.readouterr().err
    cache = prepare(root, workers=2, skip_bad=True)
    entry = json.loads((cache / "manifest.json").read_text())["frames"]["short/0002/00002.ARW"]
    assert entry["status"] == "bad" and str(bad) in entry["error"]
    opened = open_cache(root)
    video = drv.load_split(root, "train", cache=opened)[1]
    assert [p.name for p in video.frames] == ["00001.ARW", "00003.ARW", "00004.ARW"]
    assert [p.name for p in video.targets] == ["half0001.png", "half0003.png", "half0004.png"]
    ds = ClipDataset(drv.load_split(root, "train", cache=opened), CFG, cache=opened)
    assert all(ds[i]["input"].shape == (3, 4, 8, 12) for i in range(len(ds)))
    capsys.readouterr()
    prepare(root, workers=1, skip_bad=True)
    assert "0 of 8 frames to decode" in capsys.readouterr().out


def test_a_cache_never_serves_another_data_sets_frames(make_drv, tmp_path):
    """train --set data.extra_dynamic=DIR reads a second data set through the main one's cache: its frames have
    the same `short/<id>/<name>` keys, and a copy keeps sizes and mtimes, so only the root can tell them apart."""
    import os
    import shutil
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    opened = open_cache(root, str(prepare(root, cache=tmp_path / "cache", workers=1)))
    other = Path(shutil.copytree(root, tmp_path / "other"))
    frame = drv.load_split(other, "train")[0].frames[0]
    st = frame.stat()
    frame.write_bytes(bytes(reversed(frame.read_bytes())))  # another frame: same size and mtime
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    own = drv.load_split(root, "train")[0].frames[0]
    assert opened.entry(own) is not None and cache_mod.frame_key(own) == cache_mod.frame_key(frame)
    assert opened.entry(frame) is None


def test_not_enough_space(make_drv, monkeypatch):
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    monkeypatch.setattr(cache_mod, "free_bytes", lambda path: 100)
    with pytest.raises(BatmanError, match=re.escape(f"not enough free space for the cache in {root / 'cache'}")):
        prepare(root, workers=1)
    assert not (root / "cache" / "manifest.json").exists()


def test_cache_choice_and_bin_mismatch(make_drv, tmp_path):
    root = make_drv(ids=("0001",), frames=3, size=(64, 96))
    assert find_cache(root) is None
    with pytest.raises(BatmanError, match=re.escape(f"no prepared cache at {tmp_path / 'elsewhere'}")):
        find_cache(root, tmp_path / "elsewhere")
    cache = prepare(root, cache=tmp_path / "elsewhere", workers=1)
    assert find_cache(root, str(cache)) == cache and FrameCache.open(cache).bin == 2
    opened = open_cache(root, str(cache))
    assert opened.folder == cache and open_cache(tmp_path / "no-cache-here") is None
    videos = drv.load_split(root, "train", cache=opened)
    with pytest.raises(BatmanError, match="was prepared with bin=2 but data.bin=1"):
        ClipDataset(videos, DataCfg(bin=1, crop=(8, 8), frames=3), cache=opened)
