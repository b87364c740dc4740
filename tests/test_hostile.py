"""Hostile input (issue 12): nothing half-written at a final name, nothing written outside the named
folders, one-line errors for bad values. Each section reproduces one numbered defect of the issue.

Write failures are made real with RLIMIT_FSIZE in a subprocess (Python ignores SIGXFSZ, so a write
past the limit fails with EFBIG; ffmpeg, started with default signals, is killed by SIGXFSZ).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from batman import files
from batman.cli import main
from batman.config import BatmanError

SRC = str(Path(files.__file__).resolve().parents[1])  # the batman under test, for subprocesses


def tree_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (hidden ones included)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def without_progress(text: str) -> str:
    """stderr without tqdm's progress lines ('... 1/3 [00:01<00:03, 1.87s/frame]')."""
    return "\n".join(line for line in text.splitlines() if not re.search(r"/s\]|s/\w+\]", line))


def run_cli(capsys, *argv) -> tuple[int, str]:
    """main(argv) in this process: (exit code, stderr without progress bars)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, without_progress(capsys.readouterr().err)


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    """Exit code 2, one line 'error: ...', no traceback, not the unexpected-exception fallback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "--debug" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run_python(code: str, *args, fsize: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter importing this checkout, optionally under a file-size limit."""
    def limit():
        if fsize is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit, env=env)


@contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE for this process (and the children it starts) inside the block. Python ignores
    SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the test run."""
    import resource
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the atomic-output helper (files.py) --------------------------------------------------------

def test_atomic_path_leaves_earlier_file_on_error_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"complete earlier output")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"complete earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_dir_replaces_the_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "frames"
    with files.atomic_dir(target) as tmp:
        for i in range(3):
            (tmp / f"{i}.png").write_bytes(b"first")
    before = tree_hashes(tmp_path)
    with pytest.raises(RuntimeError):
        with files.atomic_dir(target) as tmp:
            (tmp / "0.png").write_bytes(b"second")
            raise RuntimeError("decode failed")
    assert tree_hashes(tmp_path) == before  # the earlier folder untouched, no temp folder left
    with files.atomic_dir(target) as tmp:
        (tmp / "0.png").write_bytes(b"third")
    assert sorted(p.name for p in target.iterdir()) == ["0.png"]  # no stale file of the earlier run
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]


def test_write_failure_is_a_one_line_error_and_nothing_at_the_final_name(tmp_path):
    """A file-size limit (EFBIG) during an atomic write: BatmanError naming the file, no file left."""
    proc = run_python("""
        import sys
        from batman.files import atomic_write_bytes
        from batman.config import BatmanError
        try:
            atomic_write_bytes(sys.argv[1], b"x" * 100_000)
        except BatmanError as e:
            print(e)
            sys.exit(2)
        """, tmp_path / "big.bin", fsize=4096)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot write {tmp_path / 'big.bin'} (File too large)" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_stale_temps_of_dead_writers_go_user_files_and_live_writers_stay(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".last.pt.{dead}.abc_1234.tmp"
    live = tmp_path / f".last.pt.{alive}.xyz_9876.tmp"
    user = [tmp_path / ".notes.tmp", tmp_path / ".last.pt.tmp.bak", tmp_path / f".other.{dead}.abcdefgh.tmp"]
    for p in [stale, live, *user]:
        p.write_bytes(b"x")
    files.atomic_write_bytes(tmp_path / "last.pt", b"new")
    assert not stale.exists() and live.exists() and all(p.exists() for p in user)
    assert (tmp_path / "last.pt").read_bytes() == b"new"


def test_killed_writer_leaves_only_a_temp_that_the_next_write_removes(tmp_path):
    """SIGKILL in the middle of a save (defect 7): the final name is untouched, the next save cleans up."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"good")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from batman.files import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"x" * 1_000_000)
            print("writing", flush=True)
            time.sleep(60)
        """), str(target)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and target.read_bytes() == b"good"
    files.atomic_write_bytes(target, b"next")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("make", ["file", "readonly"])
def test_folder_that_cannot_be_made_is_one_line(tmp_path, make):
    if make == "file":
        (tmp_path / "out").write_text("a file")
        target, fragment = tmp_path / "out" / "sub", "is a file"
    else:
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions")
        (tmp_path / "ro").mkdir(mode=0o555)
        target, fragment = tmp_path / "ro" / "sub", "cannot create folder"
    with pytest.raises(BatmanError, match=fragment):
        files.ensure_dir(target)


# --- 6. config values are checked, each field in one table (config.CHECKS) --------------------

ISSUE_SETS = ["train.batch=0", "train.batch=True", "data.frames=0", "data.crop=-64", "data.crop=(64,)",
              "data.crop=(64,64,64)", "data.crop=(64.5,64)", "data.bin=0", "data.clips_per_video=0", "seed=-1",
              "model.hidden=0", "train.lr=-1", "train.bptt=-1", "train.lr=1e999", "train.lr=nan",
              "model.kernel=4", "train.weight_decay=True", "data.motion=1.5", "train.patience=0"]


@pytest.mark.parametrize("item", ISSUE_SETS)
def test_bad_set_value_is_refused_in_one_line_before_training(capsys, tmp_path, item):
    out = tmp_path / "run"
    rc, err = run_cli(capsys, "train", "--root", tmp_path / "no-data", "--out", out, "--set", item)
    assert_one_line_error(rc, err, f"config key {item.split('=')[0]}")
    assert not out.exists()


def test_every_config_field_has_a_check():
    from batman.config import CHECKS, Config, _flatten
    assert set(CHECKS) == set(_flatten(Config().to_dict()))


def test_config_choices_match_the_registries():
    from batman.config import CHECKS
    from batman.model.encoder import NORMS
    from batman.model.net import HEADS, MODELS
    for key, names in (("model.name", MODELS), ("model.head", HEADS), ("model.norm", NORMS)):
        assert all(CHECKS[key](n) is None for n in names) and CHECKS[key]("nosuch") is not None


@pytest.mark.parametrize("args,fragment", [
    (["--fps", "-5"], "--fps"), (["--fps", "nan"], "--fps"), (["--overlap", "-8"], "--overlap"),
    (["--frames", "-1"], "--frames"), (["--tile", "1"], "--tile"), (["--tile", "64", "--overlap", "32"], "--tile"),
])
def test_bad_export_option_is_one_line_before_any_work(capsys, tmp_path, args, fragment):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, "export", "--root", tmp_path, "--model", tmp_path / "none.pt", "--out", out, *args)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()


def _fuzz_values(rng: random.Random, current) -> list[str]:
    """--set texts of the wrong type, sign, shape or size for a field whose default is `current`."""
    numbers = ["0", "-1", "1", "-0.5", "0.5", "1e999", "-1e999", "nan", "inf", str(10**12), str(-(10**12)),
               "2**70", "3"]
    others = ["True", "False", "None", "''", "'abc'", "abc", "()", "(1,)", "(64, 64)", "(64, 64, 64)",
              "(64.5, 64)", "(-64, 64)", "[1, 2]", "{'a': 1}", "(", "__import__('os')", "'\\x00'", "b'x'"]
    if isinstance(current, str):
        return rng.sample(numbers, 2) + rng.sample(others, 4)
    return rng.sample(numbers, 4) + rng.sample(others, 3)


def test_fuzz_set_runs_or_exits_2_in_one_line(capsys, tmp_path):
    """200 random (key, value) pairs: each either passes the dry run or is refused in one line, fast."""
    import json
    import time

    from batman.config import Config, _flatten
    defaults = _flatten(Config().to_dict())
    rng = random.Random(12)
    pairs = [(key, text) for key in sorted(defaults) for text in _fuzz_values(rng, defaults[key])]
    pairs = rng.sample(pairs, 200)
    accepted, start = 0, time.perf_counter()
    for key, text in pairs:
        rc, err = run_cli(capsys, "train", "--root", tmp_path, "--dry-run", "--set", f"{key}={text}")
        if rc == 0:
            accepted += 1
            continue
        assert_one_line_error(rc, err, "config key")
    assert time.perf_counter() - start < 30
    assert 0 < accepted < 100, accepted  # a few values are valid; most are not


def test_unexpected_exception_is_one_line_pointing_to_debug(capsys, monkeypatch):
    """The fallback for bugs: one line, exit 1, the traceback only with --debug."""
    import batman.cli as cli

    def broken(args):
        raise KeyError("boom\nsecond line")
    monkeypatch.setattr(cli, "cmd_models", broken)  # build_parser looks the handler up when it runs
    rc, err = run_cli(capsys, "models")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "run with --debug" in err and "KeyError" in err
    with pytest.raises(KeyError):
        main(["--debug", "models"])


# --- 1-3. export: ids are plain names, outputs atomic, write failures reported -----------------

class TinyNet:
    """A stand-in for a trained network with export's interface: step(frame, state) -> (rgb, state)."""

    def eval(self):
        return self

    def step(self, frame, state):
        rgb = frame[:, :3] * 0.5 + (0 if state is None else 0.5 * state)
        return rgb, rgb


@pytest.fixture(scope="module")
def export_data(tmp_path_factory):
    """A one-video DRV tree (3 frames, test split) and an untrained checkpoint of a small model."""
    import torch

    from batman import ckpt
    from batman.config import make_config
    from batman.model.net import model_for
    from conftest import build_drv
    base = tmp_path_factory.mktemp("export")
    root = build_drv(base / "drv", ids=("0001",), frames=3, size=(128, 192), lists={"test": ["0001"]})
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8})
    torch.manual_seed(0)
    ckpt.save_checkpoint(base / "m.pt", {"model": model_for(cfg).state_dict(), "config": cfg.to_json()})
    return root, base / "m.pt"


def export_one(root, out, frames: int = 0, cache=None, two_pass: bool = False):
    """export_video of video 0001 with TinyNet (no ResNet: these tests are about files, not pixels)."""
    from batman.config import make_config
    from batman.data.drv import load_split
    from batman.export import export_video
    cfg = make_config("demo")
    video = load_split(root, "test", cache=cache)[0]
    return export_video(TinyNet(), cfg, video, Path(out), frames=frames, side_by_side=True, cache=cache,
                        two_pass=two_pass)


@pytest.mark.parametrize("bad_id", ["/abs/victim", "../victim", "..", ".", "a/../../victim", "a\\b", "C:victim"])
def test_split_list_id_that_is_not_a_plain_name_is_refused_naming_the_line(tmp_path, bad_id):
    from batman.data import drv
    (tmp_path / "test_list.txt").write_text("# ids\n0001\n" + bad_id + "  # hostile\n")
    with pytest.raises(BatmanError, match=re.escape(f"{tmp_path / 'test_list.txt'} line 3: video id {bad_id!r} "
                                                    f"is not a plain name")):
        drv.load_split(tmp_path, "test")


def test_absolute_id_in_a_list_touches_nothing_outside_out(capsys, export_data, tmp_path):
    """Defect 1: an absolute path in a list made export read that folder and overwrite files in it."""
    import shutil
    root, model = export_data
    data = tmp_path / "data" / "drv"
    shutil.copytree(root, data)
    victim = tmp_path / "victim"
    shutil.copytree(root / "short" / "0001", victim)
    (victim / "0001.png").write_bytes(b"the user's own picture")
    (data / "test_list.txt").write_text(f"0001\n{victim}\n")
    before = tree_hashes(tmp_path)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, "export", "--root", data, "--model", model, "--out", out)
    assert_one_line_error(rc, err, f"{data / 'test_list.txt'} line 2", "not a plain name")
    assert tree_hashes(tmp_path) == before and not out.exists() and not (tmp_path / "victim.mp4").exists()
    rc, err = run_cli(capsys, "evaluate", "--root", data, "--model", model, "--out", out)
    assert_one_line_error(rc, err, "line 2")
    assert tree_hashes(tmp_path) == before


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_videos_argument_must_be_a_plain_name(capsys, export_data, tmp_path, command):
    root, model = export_data
    rc, err = run_cli(capsys, command, "--root", root, "--model", model, "--out", tmp_path / "out",
                      "--videos", str(tmp_path / "elsewhere"))
    assert_one_line_error(rc, err, "--videos", "not a plain name")
    assert not (tmp_path / "out").exists()


def test_input_folder_without_a_plain_name_is_refused(capsys, export_data, tmp_path, monkeypatch):
    """`--input .` has no name of its own: its outputs would land at OUT/video/.mp4 and OUT/frames/."""
    root, model = export_data
    monkeypatch.chdir(root / "short" / "0001")
    rc, err = run_cli(capsys, "export", "--input", ".", "--model", model, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "--input", "not a plain name")


@pytest.mark.parametrize("two_pass", [False, True])  # two passes: it fails in the backward one
def test_failed_export_keeps_the_earlier_one_and_leaves_no_temp(export_data, tmp_path, two_pass):
    """Defect 2: a frame failing mid-video left a shorter playable mp4 over a complete earlier export."""
    import shutil

    from batman.data.cache import FrameCache, prepare
    root = tmp_path / "drv"
    shutil.copytree(export_data[0], root)
    out = tmp_path / "out"
    export_one(root, out)
    before = tree_hashes(out)
    assert len(before) == 3 + 2  # three PNGs, the mp4 and the side-by-side mp4
    cache = prepare(root, workers=1)
    broken = next(cache.rglob("00002.ARW.npy"))
    broken.write_bytes(broken.read_bytes()[:100])  # frame 2 of 3 no longer decodes
    with pytest.raises(BatmanError, match="00002"):
        export_one(root, out, cache=FrameCache.open(cache), two_pass=two_pass)
    assert tree_hashes(out) == before  # the earlier export untouched, no temp file or folder left
    shutil.rmtree(cache)
    export_one(root, out, frames=2)
    assert sorted(p.name for p in (out / "frames" / "0001").iterdir()) == ["0001.png", "0002.png"]


def test_ffmpeg_killed_by_a_file_size_limit_is_an_error_not_a_short_video(tmp_path):
    """Defect 3: the encoder's exit status was ignored; a 4096-byte unreadable mp4 looked finished."""
    import numpy as np

    from batman.export import VideoSink
    sink = VideoSink(tmp_path / "v.mp4", 20.0)
    rng = np.random.default_rng(0)
    with file_size_limit(4096), pytest.raises(BatmanError, match=r"ffmpeg failed, killed by SIGXFSZ \(file-size"):
        for _ in range(10):
            sink.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        sink.close()


def test_export_under_a_file_size_limit_exits_2_with_nothing_at_the_final_names(capsys, export_data, tmp_path):
    root, model = export_data
    out = tmp_path / "out"
    with file_size_limit(2048):
        rc, err = run_cli(capsys, "export", "--root", root, "--model", model, "--out", out)
    assert_one_line_error(rc, err, "cannot write", "File too large")
    assert "wrote" not in capsys.readouterr().out
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_out_naming_a_file_is_one_line(capsys, export_data, tmp_path):
    root, model = export_data
    (tmp_path / "out").write_text("not a folder")
    rc, err = run_cli(capsys, "export", "--root", root, "--model", model, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "is a file, not a folder")


# --- 4. prepare: a lock on the cache, only its own dead temps removed, write failures ------------

def test_prepare_keeps_user_files_and_live_writers_temps(make_drv):
    """Defect 4: prepare deleted every hidden .*.tmp* under the cache, user files included."""
    from batman.data.cache import prepare
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    video_dir = root / "cache" / "short" / "0001"
    video_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [root / "cache" / ".notes.tmp", root / "cache" / ".draft.tmp.txt", video_dir / ".mine.tmp",
                video_dir / f".00001.ARW.npy.{sleeper.pid}.abcdefgh.tmp.npy"]  # another prepare's, live
        stale = video_dir / f".00002.ARW.npy.{dead_pid()}.abcdefgh.tmp.npy"
        for p in [*keep, stale]:
            p.write_bytes(b"x")
        prepare(root, workers=1)
        assert all(p.read_bytes() == b"x" for p in keep) and not stale.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_second_prepare_on_a_busy_cache_is_refused(make_drv, capsys):
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    cache = root / "cache"
    with files.exclusive(cache / ".prepare.lock", "held by the first prepare"):
        before = tree_hashes(root)
        rc, err = run_cli(capsys, "prepare", "--root", root, "--workers", "1")
        assert_one_line_error(rc, err, "another `batman prepare` is writing this cache")
        assert tree_hashes(root) == before


def test_prepare_under_a_file_size_limit_is_one_line_with_no_partial_npy(make_drv, capsys):
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    with file_size_limit(1024):  # each .npy is 3 KB
        rc, err = run_cli(capsys, "prepare", "--root", root, "--workers", "1")
    assert_one_line_error(rc, err, "cannot write", "File too large")
    assert not list((root / "cache").rglob("*.npy")) and not list((root / "cache").rglob(".*.tmp*"))
    manifest = root / "cache" / "manifest.json"  # a manifest of no frames is consistent (a rerun resumes)
    assert not manifest.exists() or json.loads(manifest.read_text())["frames"] == {}


def test_cache_manifest_cannot_point_outside_the_cache(make_drv, tmp_path):
    from batman.config import DataCfg
    from batman.data import drv
    from batman.data.cache import FrameCache, prepare
    from batman.data.dataset import iter_frames
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    cache = prepare(root, workers=1)
    outside = tmp_path / "outside.npy"
    outside.write_bytes((cache / "short" / "0001" / "00001.ARW.npy").read_bytes())
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["frames"]["short/0001/00001.ARW"]["npy"] = str(outside)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    opened = FrameCache.open(cache)
    video = drv.load_split(root, "train", cache=opened)[0]
    with pytest.raises(BatmanError, match="a path outside the cache"):
        next(iter_frames(video, DataCfg(), opened))
    before = outside.read_bytes()
    prepare(root, workers=1)  # decodes the frame again, into the cache
    assert outside.read_bytes() == before
    assert json.loads((cache / "manifest.json").read_text())["frames"]["short/0001/00001.ARW"]["npy"] == \
        "short/0001/00001.ARW.npy"


# --- 5. diverged training: weights checked before every save, never saved or used non-finite -----

TINY = {"data.crop": (32, 32), "data.frames": 4, "data.clips_per_video": 2, "model.hidden": 16,
        "model.fusion": 16, "train.steps_per_epoch": 2, "train.val_clips": 2, "train.lr": 1e-3,
        "train.threads": 1, "train.epochs": 1}


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    from batman.data.synth import synthesize
    root = tmp_path_factory.mktemp("syn")
    synthesize(root, videos=5, frames=6, size=(128, 192), seed=3)
    return root


@pytest.fixture(scope="module")
def trained(syn, tmp_path_factory) -> Path:
    """A run folder after one good epoch: last.pt and epoch_1_loss_*.pt."""
    from batman.config import make_config
    from batman.train import train
    out = tmp_path_factory.mktemp("trained")
    train(make_config("demo", {"data.root": str(syn), **TINY}), out=out)
    return out


def poison_after_first_step(monkeypatch):
    """A training step whose loss is finite but whose update leaves a NaN in the weights: what a
    huge learning rate does on the last step of an epoch (the loss was computed before the update)."""
    import torch

    from batman import train as train_mod
    real = train_mod.train_step

    def step(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return loss
    monkeypatch.setattr(train_mod, "train_step", step)


def test_diverged_weights_are_never_saved_and_the_message_is_true(syn, tmp_path, monkeypatch):
    """Defect 5: a finite last loss let 12 M NaN weights into last.pt, exit 0."""
    from batman.config import make_config
    from batman.train import train
    stale = tmp_path / f".epoch_9_loss_0.1000.pt.{dead_pid()}.abcdefgh.tmp"  # a killed save's leftover
    stale.write_bytes(b"x" * 1000)
    poison_after_first_step(monkeypatch)
    with pytest.raises(BatmanError, match=f"weights became non-finite .* {tmp_path} holds no good checkpoint"):
        train(make_config("demo", {"data.root": str(syn), **TINY, "train.steps_per_epoch": 1}), out=tmp_path)
    assert not list(tmp_path.glob("*.pt")) and not stale.exists()


def test_divergence_after_a_good_epoch_names_that_checkpoint(syn, trained, tmp_path, monkeypatch):
    import shutil

    from batman import ckpt
    from batman.config import make_config
    from batman.train import train
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = {name: h for name, h in tree_hashes(out).items() if name.endswith(".pt")}
    poison_after_first_step(monkeypatch)
    with pytest.raises(BatmanError, match=f"the last good checkpoint is {out / ckpt.LAST} \\(epoch 1\\)"):
        train(make_config("demo", {"data.root": str(syn), **TINY, "train.epochs": 2}), out=out, resume="auto")
    assert {name: h for name, h in tree_hashes(out).items() if name.endswith(".pt")} == before


def nan_copy(src: Path, dst: Path) -> None:
    """A checkpoint whose weights are NaN, saved the way an older batman did (torch.save, no check)."""
    import torch
    state = torch.load(src, weights_only=True)
    for value in state["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(state, dst)


@pytest.mark.parametrize("damage", ["nan", "empty"])
def test_resume_auto_skips_a_nan_or_empty_last_for_the_newest_good_epoch(syn, trained, tmp_path, capsys, damage):
    """Defects 5 and 7: resume took a NaN last.pt; a zero-byte one raised IndexError in the handler."""
    import shutil

    from batman import ckpt
    from batman.config import make_config
    from batman.train import train
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    if damage == "nan":
        nan_copy(out / ckpt.LAST, out / ckpt.LAST)
    else:
        (out / ckpt.LAST).write_bytes(b"")
    result = train(make_config("demo", {"data.root": str(syn), **TINY, "train.epochs": 2}), out=out,
                   resume="auto")
    captured = capsys.readouterr()
    assert result["epochs"] == 2 and "resumed from" in captured.err + captured.out
    assert ("non-finite weights" if damage == "nan" else "corrupt") in captured.err + captured.out
    assert ckpt.non_finite(ckpt.load_checkpoint(out / ckpt.LAST)["model"]) is None


def test_export_of_a_nan_checkpoint_is_refused(capsys, trained, export_data, tmp_path):
    """Defect 5: export of NaN weights wrote black frames with exit code 0."""
    nan_copy(trained / "last.pt", tmp_path / "nan.pt")
    rc, err = run_cli(capsys, "export", "--root", export_data[0], "--model", tmp_path / "nan.pt",
                      "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "non-finite weights")
    assert not (tmp_path / "out").exists()


def test_train_out_naming_a_file_is_one_line(capsys, syn, tmp_path):
    (tmp_path / "out").write_text("a file")
    rc, err = run_cli(capsys, "train", "--root", syn, "--out", tmp_path / "out", "--preset", "demo")
    assert_one_line_error(rc, err, "is a file, not a folder")


# --- 7. checkpoints: empty files, moved ImageNet weights, save failures ---------------------------

def test_zero_byte_checkpoint_is_a_one_line_error(tmp_path):
    from batman import ckpt
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(BatmanError, match="is corrupt or not a batman checkpoint"):
        ckpt.load_checkpoint(tmp_path / "empty.pt")


def test_checkpoint_outlives_its_imagenet_file(tmp_path):
    """The ImageNet file only initialises a model: export must not need it once trained."""
    import torch
    from torchvision.models import resnet18

    from batman import ckpt
    from batman.config import make_config
    from batman.model.net import model_for
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8, "model.encoder_weights": str(weights)})
    model = model_for(cfg)
    ckpt.save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.to_json()})
    weights.unlink()
    loaded, loaded_cfg = ckpt.load_model(tmp_path / "m.pt")
    assert loaded_cfg == cfg
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    ckpt.check_same_model(tmp_path / "m.pt", cfg, make_config("demo", {"model.hidden": 8, "model.fusion": 8}))


def test_checkpoint_save_past_a_file_size_limit_keeps_the_earlier_one(tmp_path):
    import torch

    from batman import ckpt
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(10)}, "config": "{}"})
    before = path.read_bytes()
    with file_size_limit(64 * 1024), pytest.raises(BatmanError, match=f"cannot write {path} \\(File too large"):
        ckpt.save_checkpoint(path, {"model": {"w": torch.ones(100_000)}, "config": "{}"})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_non_finite_weights_are_never_saved(tmp_path):
    import torch

    from batman import ckpt
    with pytest.raises(BatmanError, match="refusing to save .* not finite \\(w\\)"):
        ckpt.save_checkpoint(tmp_path / "x.pt", {"model": {"w": torch.tensor([1.0, float("inf")])}, "config": "{}"})
    assert list(tmp_path.iterdir()) == []


# --- 7. raw files: huge frames, folders named like raws, hostile camera strings ------------------

def sparse_huge_dng(path: Path, side: int = 30000) -> Path:
    """A DNG whose header declares side x side pixels; the pixel data is a hole in a sparse file
    (1.8 GB long, a few KB on disk)."""
    import numpy as np
    import tifffile

    from batman.data.raw import write_dng
    write_dng(path, np.full((64, 96), 100, np.uint16), "RGGB", 64, 4095, 0.01)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        where = {name: page.tags[name].valueoffset for name in
                 ("ImageWidth", "ImageLength", "RowsPerStrip", "StripByteCounts")}
        data_at = page.dataoffsets[0]
    data = bytearray(path.read_bytes())
    for name, value in (("ImageWidth", side), ("ImageLength", side), ("RowsPerStrip", side),
                        ("StripByteCounts", side * side * 2)):
        data[where[name]:where[name] + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    os.truncate(path, data_at + side * side * 2)
    return path


def test_frame_too_large_for_memory_is_refused_from_its_size(capsys, tmp_path, monkeypatch):
    """A 30000x30000 DNG: inspect decoded it (3.5 GB) and a larger one was a MemoryError traceback."""
    import time

    from batman.data import raw
    path = sparse_huge_dng(tmp_path / "huge.dng")
    monkeypatch.setattr(raw, "available_memory_bytes", lambda: 1 << 30)
    start = time.perf_counter()
    rc, err = run_cli(capsys, "inspect", path)
    assert_one_line_error(rc, err, "30000x30000", "needs about 1.7 GB, only 1.0 GB")
    for read in (raw.read_raw, raw.read_header):
        with pytest.raises(BatmanError, match="30000x30000: decoding needs about"):
            read(path)
    assert time.perf_counter() - start < 5  # refused from the header: nothing was unpacked


def test_read_raw_counts_its_own_copies(monkeypatch):
    """read_raw also copies and packs the visible pixels: a frame whose raw buffer fits can still be too much."""
    from batman.data import raw
    from conftest import fixture_path
    path = fixture_path("canon_550d_colorchart.dng")  # raw buffer 4.3 MiB, with the copies 15.7 MiB
    monkeypatch.setattr(raw, "available_memory_bytes", lambda: 10 << 20)
    assert raw.read_info(path)["width"] == 1734
    with pytest.raises(BatmanError, match="1734x1156: decoding needs about 15.7 MB, only 10.0 MB"):
        raw.read_raw(path)


def test_folder_named_like_a_raw_is_not_no_such_file(capsys, tmp_path):
    (tmp_path / "x.dng").mkdir()
    rc, err = run_cli(capsys, "inspect", tmp_path / "x.dng")
    assert_one_line_error(rc, err, f"cannot read raw: {tmp_path / 'x.dng'} (a folder, not a raw file)")


def test_camera_strings_are_printed_sanitised(capsys, tmp_path):
    import numpy as np

    from batman.data.raw import write_dng
    path = tmp_path / "evil.dng"
    write_dng(path, np.full((64, 96), 100, np.uint16), "RGGB", 64, 4095, 0.01, make="Evil\x1b[2J\x1b]0;pwned\x07",
              model="Cam\nerror: fake line" + "x" * 500)
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "\x1b" not in out and "\x07" not in out and len(out) < 400
    assert "Evil?[2J?]0;pwned?" in out


# --- 7. download: zip bombs, a root that cannot be written -----------------------------------------

def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    """A 2 GB member in a 2 MB archive was extracted until the disk filled; 20 MB in 20 KB here."""
    import io
    import zipfile

    from batman.data import download as dl
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("long/0001/half0001.png", b"\0" * (20 << 20))
    archive = tmp_path / ".download" / "long.zip"
    archive.parent.mkdir()
    archive.write_bytes(buf.getvalue())
    assert archive.stat().st_size < 100_000
    with pytest.raises(BatmanError, match="declares 20.0 MB from .* compressed .*a zip bomb"):
        dl.extract(archive, tmp_path, "long")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # the archive removed, nothing extracted


def test_member_longer_than_declared_stops_at_the_declared_size(tmp_path, monkeypatch):
    """A member whose data runs past its declared size is refused as soon as it does."""
    import io
    import zipfile

    from batman.data import download as dl
    data = random.Random(0).randbytes(300_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("long/0001/half0001.png", data)
    archive = tmp_path / "long.zip"
    archive.write_bytes(buf.getvalue())
    real_open = zipfile.ZipFile.open

    def lying_open(self, info, *args, **kwargs):  # the declared size says 100 KB, the stream gives 300 KB
        stream = real_open(self, info, *args, **kwargs)
        info.file_size = 100_000
        return stream
    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    monkeypatch.setattr(dl, "CHUNK_BYTES", 64 * 1024)
    with pytest.raises(BatmanError, match="holds more than its declared 100000 bytes"):
        dl.extract(archive, tmp_path / "root", "long")
    assert [p for p in (tmp_path / "root").rglob("*") if p.is_file()] == []


def test_download_into_a_root_that_cannot_be_written_is_one_line(capsys, tmp_path, monkeypatch):
    root = tmp_path / "drv"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # a read-only root (tests run as root, where chmod does not bite)
        if self == root or root in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc, err = run_cli(capsys, "download", "--root", root, "--parts", "long", "--url-base", "http://127.0.0.1:9/DRV")
    assert_one_line_error(rc, err, f"cannot create folder {root / '.download'}", "Permission denied")


def test_evaluate_out_naming_a_file_is_one_line_before_the_work(capsys, export_data, tmp_path, monkeypatch):
    from batman import evaluate as evaluate_mod
    root, model = export_data
    (tmp_path / "out").write_text("not a folder")
    monkeypatch.setattr(evaluate_mod, "evaluate_video", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    rc, err = run_cli(capsys, "evaluate", "--root", root, "--model", model, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "is a file, not a folder")


def test_a_killed_exports_temps_go_with_the_next_export(export_data, tmp_path):
    out = tmp_path / "out"
    dead = dead_pid()
    leftovers = [out / "video" / f".0001.mp4.{dead}.abcdefgh.tmp.mp4", out / "frames" / f".0001.{dead}.abcdefgh.tmp"]
    leftovers[0].parent.mkdir(parents=True)
    leftovers[0].write_bytes(b"x" * 1000)
    (leftovers[1] / "0001.png").parent.mkdir(parents=True)
    (leftovers[1] / "0001.png").write_bytes(b"x")
    export_one(export_data[0], out)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in (out / "video").iterdir()) == ["0001.mp4", "0001_side_by_side.mp4"]
