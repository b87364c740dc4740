"""ClipDataset, iter_frames, load_targets: shapes, Bayer-safe crops and flips, determinism, size checks."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from batman.config import BatmanError, DataCfg, make_config
from batman.data import drv
from batman.data.drv import load_split
from batman.data.dataset import ClipDataset, FrameReader, flip_clip, iter_frames, load_targets
from batman.data.raw import RawFrame, bin2x2, pack_bayer, pack_counts
from batman.metrics import psnr

CFG = DataCfg(crop=(8, 12), frames=3, clips_per_video=4, motion=0.0)


@pytest.fixture
def videos(make_drv):
    root = make_drv(ids=("0001", "0002"), frames=5, size=(64, 96), per_frame=("0002",))
    return drv.load_split(root, "train")


def test_item_shapes_and_static_target(videos):
    ds = ClipDataset(videos, CFG)
    assert len(ds) == 2 * 4
    item = ds[0]
    assert item["input"].shape == (3, 4, 8, 12) and item["input"].dtype == torch.float32
    assert item["target"].shape == (3, 3, 8, 12) and item["target"].dtype == torch.float32
    assert item["id"] == "0001" and 0 <= item["start"] <= 2
    assert 0 <= item["input"].min() and item["input"].max() <= 1 and item["input"].max() > 0.1
    assert item["target"].stride(0) == 0  # static: one image expanded over T, not copied
    assert torch.equal(item["target"][0], item["target"][2])
    dynamic = ds[1]
    assert dynamic["id"] == "0002" and not torch.equal(dynamic["target"][0], dynamic["target"][1])


def test_batches_collate(videos):
    batch = next(iter(torch.utils.data.DataLoader(ClipDataset(videos, CFG), batch_size=2)))
    assert batch["input"].shape == (2, 3, 4, 8, 12) and batch["target"].shape == (2, 3, 3, 8, 12)


def test_crops_are_even_and_show_the_frame(videos):
    ds = ClipDataset(videos, replace(CFG, augment=False))
    full = {v.id: np.stack(list(iter_frames(v, CFG))) for v in videos}
    for i in range(len(ds)):
        item = ds[i]
        (y, x), t = item["crop"], item["start"]
        assert y % 2 == 0 and x % 2 == 0
        assert np.array_equal(item["input"].numpy(), full[item["id"]][t:t + 3, :, y:y + 8, x:x + 12])


def test_same_seed_and_epoch_same_clips(videos):
    a, b = ClipDataset(videos, CFG, seed=3), ClipDataset(videos, CFG, seed=3)
    for i in range(len(a)):
        assert torch.equal(a[i]["input"], b[i]["input"]) and torch.equal(a[i]["target"], b[i]["target"])
    before = [(a[i]["start"], a[i]["crop"]) for i in range(len(a))]
    a.set_epoch(1)
    assert [(a[i]["start"], a[i]["crop"]) for i in range(len(a))] != before


def test_validation_is_deterministic_centre(videos):
    ds = ClipDataset(videos, CFG, train=False)
    assert len(ds) == 2
    item = ds[0]
    assert item["start"] == 0 and item["crop"] == (4, 6)  # (16 - 8) / 2, (24 - 12) / 2
    ds.set_epoch(5)
    assert torch.equal(ds[0]["input"], item["input"])
    whole = ClipDataset(videos, replace(CFG, crop=(0, 0)), train=False)[0]
    assert np.array_equal(whole["input"].numpy(), np.stack(list(iter_frames(videos[0], CFG)))[:3])


def test_scale_two_targets(make_drv):
    root = make_drv(ids=("0001",), frames=3, size=(64, 96), target_scale=2)
    item = ClipDataset(drv.load_split(root, "train"), CFG, scale=2)[0]
    assert item["input"].shape == (3, 4, 8, 12) and item["target"].shape == (3, 3, 16, 24)


def test_target_size_mismatch_names_both_shapes(videos):
    with pytest.raises(BatmanError, match=re.escape(
            "video 0001: bin=2 gives 16x24 but long/0001/half0001.png is 16x24 (scale 2)")):
        ClipDataset(videos, CFG, scale=2)
    message = "video 0001: bin=1 gives 32x48 but long/0001/half0001.png is 16x24 (scale 1)"
    with pytest.raises(BatmanError, match=re.escape(message)):
        ClipDataset(videos, replace(CFG, bin=1))


def test_short_video_and_missing_truth(videos):
    with pytest.raises(BatmanError, match="video 0001 has 5 frames, fewer than the clip length data.frames=6"):
        ClipDataset(videos, replace(CFG, frames=6))
    with pytest.raises(BatmanError, match="video 0001 has no ground truth"):
        ClipDataset([replace(videos[0], targets=())], CFG)


def _mosaic_frame(pattern: str, mosaic: np.ndarray) -> RawFrame:
    return RawFrame(path="x", bayer_u16=mosaic, pattern=pattern, black=(0.0,) * 4, white=1000.0)


def _flipped_pattern(pattern: str, hflip=False, vflip=False, transpose=False) -> str:
    p = [pattern[0:2], pattern[2:4]]
    if hflip:
        p = [row[::-1] for row in p]
    if vflip:
        p = p[::-1]
    if transpose:
        p = [p[0][0] + p[1][0], p[0][1] + p[1][1]]
    return "".join(p)


@pytest.mark.parametrize("flips", [(True, False, False), (False, True, False), (False, False, True),
                                   (True, True, True)])
def test_packed_flips_equal_flipped_mosaics(flips):
    """Flipping/transposing the packed clip == packing the flipped/transposed mosaic in canonical order."""
    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 1000, size=(8, 12), dtype=np.uint16)
    hflip, vflip, transpose = flips
    for pattern in ("RGGB", "GRBG", "GBRG", "BGGR"):
        moved = mosaic[:, ::-1] if hflip else mosaic
        moved = moved[::-1] if vflip else moved
        moved = np.ascontiguousarray(moved.T if transpose else moved)
        expected = pack_bayer(_mosaic_frame(_flipped_pattern(pattern, *flips), moved))
        packed = pack_bayer(_mosaic_frame(pattern, mosaic))
        assert np.array_equal(flip_clip(packed[None], *flips, packed=True)[0], expected)
        counts = flip_clip(pack_counts(mosaic, pattern)[None], *flips, packed=True)[0]
        assert np.array_equal(counts, pack_counts(moved, _flipped_pattern(pattern, *flips)))


def video_with_truth_from_its_input(make_drv, png16):
    """A static video of identical frames whose ground truth is its own input (R, mean G, B), so that
    any crop, flip or pan must show the same pixels in input and target."""
    root = make_drv(ids=("0001",), frames=3, size=(64, 96), same_frames=True)
    video = drv.load_split(root, "train")[0]
    x = next(iter_frames(video, CFG))
    truth = np.stack([x[0], (x[1] + x[2]) / 2, x[3]], axis=-1)
    png16(video.targets[0], np.rint(truth * 65535).astype(np.uint16))
    return video


def test_augmentation_moves_input_and_target_together(make_drv, png16):
    """Ground truth made from the input itself (R, mean G, B) must still match after flips/transposes."""
    video = video_with_truth_from_its_input(make_drv, png16)
    ds = ClipDataset([video], replace(CFG, clips_per_video=24))
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        inp, tgt = item["input"][0], item["target"][0]
        made = torch.stack([inp[0], (inp[1] + inp[2]) / 2, inp[3]])
        assert torch.allclose(made, tgt, atol=1 / 65535), i
        seen.add(item["crop"])
    assert len(seen) > 5


def test_panning_clips_move_input_and_target_together(make_drv, png16):
    """data.motion: every frame of a panned static clip is its own crop, in input and target alike."""
    video = video_with_truth_from_its_input(make_drv, png16)
    ds = ClipDataset([video], replace(CFG, clips_per_video=16, motion=1.0, motion_speed=4))
    moved = 0
    for i in range(len(ds)):
        item = ds[i]
        inp, tgt = item["input"], item["target"]
        made = torch.stack([inp[:, 0], (inp[:, 1] + inp[:, 2]) / 2, inp[:, 3]], 1)
        assert torch.allclose(made, tgt, atol=1 / 65535), i
        moved += not torch.equal(tgt[0], tgt[-1])
    assert moved >= 12  # a pan that rounds to no shift is possible, but rare
    still = ClipDataset([video], replace(CFG, clips_per_video=8, motion=0.0))
    assert all(still[i]["target"].stride(0) == 0 for i in range(len(still)))


def test_pan_offsets_stay_inside_the_frame():
    from batman.data.dataset import _pan_offsets
    rng = np.random.default_rng(0)
    for room in (0, 1, 2, 7, 40):
        for speed in (0, 1, 4, 50):
            offsets = _pan_offsets(rng, room, 8, speed)
            assert all(0 <= o <= room and o % 2 == 0 for o in offsets), (room, speed, offsets)
            steps = np.diff(offsets)
            assert np.all(np.abs(steps) <= speed + 2)


def test_iter_frames_match_the_raw_layer(make_drv):
    root = make_drv(ids=("0001",), frames=2, size=(64, 96))
    video = drv.load_split(root, "train")[0]
    frames = list(iter_frames(video, CFG))
    assert len(frames) == 2 and frames[0].shape == (4, 16, 24) and frames[0].dtype == np.float32
    from batman.data.raw import read_raw
    expected = np.clip(bin2x2(pack_bayer(read_raw(video.frames[0]))) * 64, 0, 1)
    assert np.allclose(frames[0], expected, atol=1e-6)
    capped = next(iter_frames(video, replace(CFG, max_gain=16.0)))
    assert np.allclose(capped * 4, frames[0], atol=1e-6)  # gain 64 clipped to 16


def test_load_targets(videos):
    static = list(load_targets(videos[0], 4))
    assert len(static) == 4 and static[0] is static[3] and not static[0].flags.writeable
    assert static[0].shape == (16, 24, 3)
    dynamic = list(load_targets(videos[1]))
    assert len(dynamic) == 5 and not np.array_equal(dynamic[0], dynamic[1])
    with pytest.raises(BatmanError, match="video 0001 has no ground truth"):
        load_targets(replace(videos[0], targets=()))


def test_rawrgb_clips(make_drv, png16):
    root = make_drv(ids=("0001",), frames=3, size=(64, 96))
    rng = np.random.default_rng(1)
    for i in range(3):
        png16(root / "VBM4D_rawRGB" / "0001" / f"{i + 1:04d}.png", rng.integers(0, 65535, (16, 24, 3), dtype=np.uint16))
    cfg = replace(CFG, mode="rawrgb")
    item = ClipDataset(drv.load_split(root, "train", mode="rawrgb"), cfg)[0]
    assert item["input"].shape == (3, 3, 8, 12) and item["target"].shape == (3, 3, 8, 12)


def test_white_balance_multiplies_the_raw_input(tmp_path):
    from batman.data.synth import synthesize
    synthesize(tmp_path, videos=3, frames=2, size=(64, 96), seed=11)
    video = load_split(tmp_path, "train")[0]
    assert video.wb[0] != 1.0 and video.wb[1] == 1.0  # the DNG's AsShotNeutral, normalised to G1
    plain = make_config("", {"data.white_balance": False, "data.max_gain": 1.0, "data.colour": "camera"}).data
    balanced = make_config("", {"data.white_balance": True, "data.max_gain": 1.0, "data.colour": "camera"}).data
    x0, x1 = next(iter_frames(video, plain)), next(iter_frames(video, balanced))
    expected = np.clip(x0 * np.asarray(video.wb, np.float32).reshape(4, 1, 1), 0, 1)
    np.testing.assert_allclose(x1, expected, rtol=1e-6)


def test_noise_map_channel_follows_the_gain_and_survives_transposes(tmp_path):
    from batman.data.synth import synthesize
    synthesize(tmp_path, videos=3, frames=4, size=(64, 96), seed=12)
    cfg = make_config("", {"data.noise_map": True, "data.crop": (8, 8), "data.frames": 2}).data
    assert cfg.in_channels == 5
    video = load_split(tmp_path, "train")[0]
    frame = next(iter_frames(video, cfg))
    expected = np.log(min(video.gains[0], cfg.max_gain)) / np.log(cfg.max_gain)
    assert frame.shape[0] == 5 and np.allclose(frame[4], expected)
    ds = ClipDataset([video], cfg, train=True, seed=0)
    for i in range(len(ds)):
        assert torch.allclose(ds[i]["input"][:, 4], torch.tensor(expected, dtype=torch.float32))
    x = np.arange(5 * 2 * 2, dtype=np.float32).reshape(5, 2, 2)
    assert np.array_equal(flip_clip(x, False, False, True, packed=True)[4], x[4].T)


def test_srgb_input_is_the_files_own_colour_matrix_on_the_balanced_raw(tmp_path):
    """data.colour=srgb: LibRaw's matrix from each DNG equals the one synth drew for that video, and the
    input is the balanced camera raw through the packed form of that matrix (cameras differ per video)."""
    from batman.isp import packed_colour_matrix
    from batman.data.synth import synthesize
    synthesize(tmp_path, videos=3, frames=2, size=(64, 96), seed=13, cameras="train")
    videos = load_split(tmp_path, "train") + load_split(tmp_path, "val")
    assert len({v.meta["camera"] for v in videos}) > 1
    camera = make_config("", {"data.max_gain": 1.0, "data.colour": "camera"}).data
    srgb = make_config("", {"data.max_gain": 1.0}).data
    for video in videos:
        np.testing.assert_allclose(np.asarray(video.cam_to_srgb), video.meta["cam_to_srgb"], atol=2e-3)
        x_cam = FrameReader(camera).linear(video, 0)
        x_srgb = FrameReader(srgb).linear(video, 0)
        expected = np.einsum("ij,jhw->ihw", packed_colour_matrix(video.cam_to_srgb), x_cam)
        np.testing.assert_allclose(x_srgb, expected, atol=1e-5)


def test_noise_free_srgb_input_through_a_plain_pipeline_is_the_truth(tmp_path):
    """Held-out cameras, no noise: gain + identity-matrix pipeline on the sRGB input reproduces the
    ground truth, so nothing camera-specific is left for the network to learn."""
    from batman.isp import traditional_pipeline
    from batman.data.synth import synthesize
    synthesize(tmp_path, videos=2, frames=1, size=(64, 96), seed=14, cameras="heldout", noise=False,
                     ratio=(1.0, 1.0))
    cfg = make_config("", {}).data
    for video in load_split(tmp_path, "train"):
        x = next(iter_frames(video, cfg))
        rendered = traditional_pipeline(x, np.ones(3), np.eye(3))
        assert psnr(rendered, next(load_targets(video))) > 40
