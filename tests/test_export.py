"""Export: constant memory over length, seamless tiles, decodable mp4s, --input folders, clear refusals."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batman import ckpt
from batman.config import BatmanError, make_config
from batman.export import export, to_uint8
from batman.infer import Enhancer, ramp_weights, tile_starts
from batman.model.net import build_model, model_for
from conftest import fixture_path

SMALL_MODEL = {"model.hidden": 16, "model.fusion": 16}


def save_untrained(path: Path, **overrides) -> Path:
    """A checkpoint of a freshly initialised model: export needs weights, not good ones."""
    cfg = make_config("demo", {**SMALL_MODEL, **overrides})
    torch.manual_seed(0)
    model = model_for(cfg)
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_json()})
    return path


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    from batman.data.synth import synthesize
    root = tmp_path_factory.mktemp("syn")
    synthesize(root, videos=3, frames=6, size=(128, 192), seed=5, dynamic=1)
    return root


def test_tile_layout_covers_and_ramps_sum():
    assert tile_starts(512, 256, 32) == [0, 224, 256]
    assert tile_starts(100, 256, 32) == [0]
    w = ramp_weights(64, 16, at_start=False, at_end=True)
    assert np.all(w[:4] == 0) and w[-1] == 1 and np.all(np.diff(w[4:12]) > 0) and np.all(w[12:] == 1)


def test_export_writes_mp4_and_pngs_that_decode(syn, tmp_path):
    import imageio.v3 as iio
    model = save_untrained(tmp_path / "m.pt")
    out = tmp_path / "out"
    paths = export(root=syn, model=model, out=out, split="test", side_by_side=True, device="cpu")
    test_id = (syn / "test_list.txt").read_text().split()[0]
    frames = list(iio.imiter(out / "video" / f"{test_id}.mp4"))
    assert len(frames) == 6 and frames[0].shape == (32, 48, 3)
    side = list(iio.imiter(out / "video" / f"{test_id}_side_by_side.mp4"))
    assert len(side) == 6 and side[0].shape == (32, 48 * 3, 3)  # input | output | truth
    pngs = sorted((out / "frames" / test_id).glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}.png" for i in range(1, 7)]
    assert iio.imread(pngs[0]).shape == (32, 48, 3)
    assert out / "video" / f"{test_id}.mp4" in paths


def test_side_by_side_refuses_a_truth_of_another_size_in_one_line(syn, tmp_path):
    """A scale-2 model on data whose truth is at the input grid: a BatmanError naming the video and both sizes."""
    model = save_untrained(tmp_path / "s2.pt", **{"model.scale": 2})
    test_id = (syn / "test_list.txt").read_text().split()[0]
    with pytest.raises(BatmanError, match=f"video {test_id}'s ground truth is 32x48 but the output is 64x96"):
        export(root=syn, model=model, out=tmp_path / "out", split="test", side_by_side=True, device="cpu")
    assert not (tmp_path / "out" / "video" / f"{test_id}.mp4").exists()  # nothing half-written is left


def test_worker_processes_write_what_the_serial_path_writes(syn, tmp_path):
    """Decoding in processes (raw files, then the prepared cache) and PNG encoding in another process
    change where the work runs, not a byte of the frames or a pixel of the videos."""
    import imageio.v3 as iio

    from batman.data.cache import prepare
    model = save_untrained(tmp_path / "m.pt")
    root = tmp_path / "syn"
    shutil.copytree(syn, root)
    runs = {"serial": (0, False), "processes": (2, False), "cached": (1, True)}
    for name, (workers, cached) in runs.items():
        if cached:
            prepare(root, workers=1)
        export(root=root, model=model, out=tmp_path / name, split="test", side_by_side=True, device="cpu",
               workers=workers)
    def files(name):
        return {p.relative_to(tmp_path / name): p for p in (tmp_path / name).rglob("*") if p.is_file()}

    serial = files("serial")
    assert len(serial) == 6 + 2  # the test video: six PNGs, the mp4 and the side by side
    for name in ("processes", "cached"):
        other = files(name)
        assert sorted(other) == sorted(serial)
        for rel, path in serial.items():
            if rel.suffix == ".png":
                assert path.read_bytes() == other[rel].read_bytes(), (name, rel)
            else:
                ours, theirs = list(iio.imiter(path)), list(iio.imiter(other[rel]))
                assert len(ours) == len(theirs) == 6 and all(map(np.array_equal, ours, theirs)), (name, rel)


def test_input_folder_of_raw_copies(tmp_path):
    import imageio.v3 as iio
    src = fixture_path("kodak_dc50_grbg.kdc")
    folder = tmp_path / "raws"
    folder.mkdir()
    for i in range(3):
        shutil.copy(src, folder / f"frame{i}.kdc")
    out = tmp_path / "out"
    export(input_folder=folder, model=save_untrained(tmp_path / "m.pt"), out=out, device="cpu", gain=1.0)
    frames = list(iio.imiter(out / "video" / "raws.mp4"))
    assert len(frames) == 3 and frames[0].shape[:2] == (128, 192)  # 512x768 mosaic -> packed -> binned


def test_rawrgb_model_refuses_raw_folder(tmp_path):
    model = save_untrained(tmp_path / "m.pt", **{"data.mode": "rawrgb"})
    with pytest.raises(BatmanError, match="trained on rawrgb input"):
        export(input_folder=tmp_path, model=model, out=tmp_path / "out", device="cpu")


def test_missing_model_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "SHIPPED", tmp_path / "none.safetensors")
    with pytest.raises(BatmanError, match="make pretrain"):
        export(input_folder=tmp_path, model=None, out=tmp_path / "out", device="cpu")


@pytest.mark.parametrize("name", ["clstm", "unet"])
def test_tiled_equals_untiled_within_one_level(tmp_path, name):
    """512x768 input, tile 256, overlap 32: the 8-bit frames differ by at most 1/255."""
    net, cfg = ckpt.load_model(save_untrained(tmp_path / "m.pt", **{"model.name": name}))
    rng = np.random.default_rng(0)
    n_frames = 2 if name == "clstm" else 1  # two frames: the tiles' recurrent states must stay apart
    frames = [np.clip(rng.random((4, 512, 768), dtype=np.float32) * 0.2 + 0.3, 0, 1) for _ in range(n_frames)]
    whole, tiled = Enhancer(net, 1), Enhancer(net, 1, tile=256, overlap=32)
    for frame in frames:
        a, b = to_uint8(whole(frame)).astype(int), to_uint8(tiled(frame)).astype(int)
        diff = np.abs(a - b)
        print(f"{name}: max {diff.max()} levels, mean {diff.mean():.4f}")
        assert diff.max() <= 1


class LocalNet(torch.nn.Module):
    """Receptive field 9x9 with a recurrent term: tiles with 32 px overlap must match the whole frame exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = torch.nn.Sequential(*[torch.nn.Conv2d(c, 3, 3, padding=1) for c in (4, 3, 3, 3)])

    def step(self, frame, state):
        y = torch.sigmoid(self.body(frame)) + (0 if state is None else 0.5 * state)
        return y, y


@pytest.mark.parametrize("ensemble", [1, 8])
def test_tile_blending_is_seamless_for_a_local_model(ensemble):
    """Also with a self-ensemble: every tile's views keep states of their own."""
    rng = np.random.default_rng(2)
    whole = Enhancer(LocalNet(), 1, ensemble=ensemble)
    tiled = Enhancer(LocalNet(), 1, tile=256, overlap=32, ensemble=ensemble)
    for _ in range(2):
        frame = rng.random((4, 512, 768), dtype=np.float32)
        np.testing.assert_allclose(tiled(frame), whole(frame), atol=1e-5)


MEASURE = r"""
import resource, sys
from batman.export import export
export(root=sys.argv[1], model=sys.argv[2], out=sys.argv[3], split="test", frames=int(sys.argv[4]), device="cpu")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kb(root, model, out, frames) -> int:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(model), str(out), str(frames)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.strip().splitlines()[-1])


def test_export_memory_does_not_grow_with_length(tmp_path):
    """64 frames at 256x384 would hold ~140 MB more than 8 frames if frames were kept."""
    from batman.data.synth import synthesize
    root = tmp_path / "long"
    synthesize(root, videos=1, frames=64, size=(1024, 1536), seed=9)
    (root / "test_list.txt").write_text((root / "train_list.txt").read_text())
    model = save_untrained(tmp_path / "m.pt")
    rss8 = peak_rss_kb(root, model, tmp_path / "o8", 8)
    rss64 = peak_rss_kb(root, model, tmp_path / "o64", 64)
    print(f"peak RSS: 8 frames {rss8 / 1024:.0f} MB, 64 frames {rss64 / 1024:.0f} MB, ratio {rss64 / rss8:.3f}")
    assert rss64 <= 1.10 * rss8


class PixelNet(torch.nn.Module):
    """Per pixel, G1 and G2 alike, with a recurrent term: every flip and transpose of a frame gives the same
    output turned alike, so a self-ensemble must reproduce the single view."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.mix = torch.nn.Conv2d(3, 3, 1)

    def step(self, frame, state):
        rgb = torch.stack([frame[:, 0], (frame[:, 1] + frame[:, 2]) / 2, frame[:, 3]], 1)
        y = torch.sigmoid(self.mix(rgb)) + (0 if state is None else 0.5 * state)
        return y, y


def test_ensemble_views_turn_back_and_keep_their_own_states():
    """Non-square frames and two steps: a view not turned back, or a state shared between views, fails."""
    rng = np.random.default_rng(4)
    frames = [rng.random((4, 24, 40), dtype=np.float32) for _ in range(2)]
    single = Enhancer(PixelNet(), 1)
    for k in (2, 4, 8):
        single.reset()
        ensemble = Enhancer(PixelNet(), 1, ensemble=k)
        for frame in frames:
            np.testing.assert_allclose(ensemble(frame), single(frame), atol=1e-6)
        assert len(ensemble.states) == k


def test_ensemble_averages_views_that_differ():
    """A model that is not flip invariant: the 8-view output differs from the single view's yet is the same
    image; an unknown view count is refused."""
    frame = np.random.default_rng(5).random((4, 32, 48), dtype=np.float32)
    single, ensemble = Enhancer(LocalNet(), 1)(frame), Enhancer(LocalNet(), 1, ensemble=8)(frame)
    assert np.abs(ensemble - single).mean() > 1e-3
    assert np.abs(ensemble - single).mean() < np.abs(single - single.mean()).mean()  # still the same image
    with pytest.raises(BatmanError, match="--ensemble must be one of 1, 2, 4, 8"):
        Enhancer(LocalNet(), 1, ensemble=3)


def test_bf16_runs_the_model_under_autocast_close_to_float32():
    """The convolution computes in bf16 (the output moves, by bf16's rounding only) and comes back float32."""
    frame = np.random.default_rng(6).random((4, 32, 48), dtype=np.float32)
    model = LocalNet()
    full, half = Enhancer(model, 1)(frame), Enhancer(model, 1, bf16=True)(frame)
    assert half.dtype == np.float32 and 0 < np.abs(half - full).max() < 0.02


class RecordNet(torch.nn.Module):
    """Records, per step, the frame's mean and whether the state was fresh; outputs black."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def step(self, frame, state):
        self.seen.append((round(float(frame.mean()), 5), state is None))
        return torch.zeros(frame.shape[0], 3, *frame.shape[-2:]), 1


@pytest.mark.parametrize("workers", [0, 1])
def test_two_pass_runs_the_frames_backward_then_forward_from_that_state(syn, tmp_path, workers):
    from batman.data.dataset import iter_frames
    from batman.data.drv import load_split
    from batman.export import export_video

    cfg = make_config("demo", {})
    video = load_split(syn, "test", "raw")[0]
    means = [round(float(f.mean()), 5) for f in iter_frames(video, cfg.data)][:4]
    net = RecordNet()
    export_video(net, cfg, video, tmp_path, frames=4, workers=workers, two_pass=True)
    assert [m for m, _ in net.seen] == means[::-1] + means
    assert [fresh for _, fresh in net.seen] == [True] + [False] * 7  # one state, never reset between the passes
