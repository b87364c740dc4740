"""Synthetic DRV-layout data: the ISP round trip, the layout `batman synth` writes, and its truth."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from batman.cli import main
from batman.config import BatmanError
from batman import isp
from batman.data.drv import read_png
from batman.data.raw import bin2x2, pack_bayer, read_raw, write_dng
from batman.data.synth import split_ids, synthesize
from conftest import fixture_path

SIZE = (256, 384)
STATIC = [f"{i:04d}" for i in range(1, 7)]


# --- helpers ------------------------------------------------------------------------------------

def read_png16(path: Path) -> np.ndarray:
    """16-bit PNG -> (H, W, 3) uint16 through the package's reader."""
    image = read_png(path)
    assert image.dtype == np.uint16, f"{path} is not a 16-bit PNG"
    return image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def traditional_on_frame(root: Path, vid: str, frame: str) -> np.ndarray:
    """The evaluation baseline: pack, bin, gain from EXIF, pipeline with synth.json's wb and matrix."""
    camera = json.loads((root / "long" / vid / "synth.json").read_text())
    raw = read_raw(root / ("long" if frame == "long.dng" else "short") / vid / frame)
    gain = read_raw(root / "long" / vid / "long.dng").exposure_s / raw.exposure_s
    return isp.traditional_pipeline(bin2x2(pack_bayer(raw)) * gain, np.array(camera["wb"]),
                                    np.array(camera["cam_to_srgb"]))


def synth_cli(out: Path, seed: int) -> Path:
    assert main(["synth", "--out", str(out), "--videos", "6", "--frames", "8", "--size", "256x384",
                 "--seed", str(seed), "--dynamic", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return synth_cli(tmp_path_factory.mktemp("synth") / "data", seed=0)


# --- isp ----------------------------------------------------------------------------------------

def test_curves_invert_each_other():
    x = np.linspace(0.0, 1.0, 10_001)
    assert np.abs(isp.inverse_tone_curve(isp.tone_curve(x)) - x).max() < 1e-6
    assert np.abs(isp.inverse_gamma_srgb(isp.gamma_srgb(x)) - x).max() < 1e-6
    assert np.abs(isp.gamma_srgb(isp.inverse_gamma_srgb(x)) - x).max() < 1e-6
    assert np.all(np.diff(isp.tone_curve(x)) >= 0) and isp.tone_curve(np.array(0.5)) == 0.5


def test_unprocess_then_traditional_pipeline_round_trips():
    rng = np.random.default_rng(0)
    srgb = rng.random((48, 64, 3))
    wb = isp.sample_wb(rng)
    cam_to_srgb = isp.cam_to_srgb_from_xyz(isp.sample_xyz_to_cam(rng)[0])
    packed = isp.unprocess(srgb, wb, cam_to_srgb)
    assert packed.shape == (4, 48, 64) and packed.dtype == np.float32
    assert np.array_equal(packed[1], packed[2])  # both greens of a tile see the same pixel
    back = isp.traditional_pipeline(packed, wb, cam_to_srgb)
    unclipped = np.all((packed > 0) & (packed < 1), axis=0)
    assert unclipped.mean() > 0.3  # random colours: many are out of the camera's gamut
    assert np.abs(back - srgb)[unclipped].max() < 1e-4


def test_colour_matrix_keeps_white_and_falls_back_to_identity():
    m = isp.cam_to_srgb_from_xyz(isp.sample_xyz_to_cam(np.random.default_rng(1))[0])
    assert np.allclose(m @ np.ones(3), 1.0)
    assert not np.allclose(m, np.eye(3))
    for missing in (None, np.zeros((3, 3)), np.full((3, 3), np.nan)):
        assert np.array_equal(isp.cam_to_srgb_from_xyz(missing), np.eye(3))


def test_colour_matrix_agrees_with_libraw_on_a_dng(tmp_path):
    """LibRaw turns the DNG's ColorMatrix1 into the same camera -> sRGB matrix (rawpy `color_matrix`)."""
    import rawpy
    xyz_to_cam, _ = isp.sample_xyz_to_cam(np.random.default_rng(2))
    path = tmp_path / "c.dng"
    write_dng(path, np.full((32, 32), 600, np.uint16), "GRBG", 512, 16383, 0.01,
              wb=(2.0, 1.0, 1.5), color_matrix=xyz_to_cam)
    with rawpy.imread(str(path)) as rp:
        libraw = np.array(rp.color_matrix[:3, :3])
    assert np.allclose(isp.cam_to_srgb_from_xyz(xyz_to_cam), libraw, atol=1e-4)


# --- the data set layout ------------------------------------------------------------------------

def test_layout_of_static_and_dynamic_videos(synth_root):
    for vid in STATIC + ["M0000"]:
        shorts = sorted(p.name for p in (synth_root / "short" / vid).iterdir())
        assert shorts == [f"{t:04d}.dng" for t in range(1, 9)]
        truths = sorted(p.name for p in (synth_root / "long" / vid).glob("half*.png"))
        assert truths == [f"half{t:04d}.png" for t in range(1, (9 if vid.startswith("M") else 2))]
        assert (synth_root / "long" / vid / "long.dng").is_file()
        assert (synth_root / "long" / vid / "synth.json").is_file()
    assert not list(synth_root.rglob(".*.tmp"))


def test_every_dng_reads_back_with_its_levels_and_ratio(synth_root):
    patterns = set()
    for vid in STATIC + ["M0000"]:
        camera = json.loads((synth_root / "long" / vid / "synth.json").read_text())
        patterns.add(camera["pattern"])
        long = read_raw(synth_root / "long" / vid / "long.dng")
        for path in sorted((synth_root / "short" / vid).glob("*.dng")) + [synth_root / "long" / vid / "long.dng"]:
            frame = read_raw(path)
            assert (frame.height, frame.width) == SIZE
            assert frame.pattern == camera["pattern"]
            assert frame.black == (camera["black"],) * 4 and frame.white == camera["white"] == 16383
            assert frame.bayer_u16.max() <= frame.white
        short = read_raw(synth_root / "short" / vid / "0001.dng")
        assert long.exposure_s / short.exposure_s == pytest.approx(camera["ratio"], rel=1e-5)
        assert 50 <= camera["ratio"] <= 300
    assert len(patterns) >= 2  # packing is exercised on more than one CFA phase


def test_ground_truth_is_uint16_on_the_quarter_grid(synth_root):
    for path in synth_root.glob("long/*/half*.png"):
        truth = read_png16(path)
        assert truth.shape == (SIZE[0] // 4, SIZE[1] // 4, 3)
        assert 0.05 < truth.mean() / 65535 < 0.95


def test_dynamic_truth_moves_and_static_frames_differ_only_by_noise(synth_root):
    moving = [read_png16(synth_root / "long" / "M0000" / f"half{t:04d}.png") for t in (1, 8)]
    assert not np.array_equal(*moving)
    meta = json.loads((synth_root / "long" / "M0000" / "synth.json").read_text())
    assert meta["motion"]["kind"] == "pan" and (synth_root / "long" / "M0000" / "mask0008.png").is_file()
    a, b = (read_raw(synth_root / "short" / "0001" / f"{t:04d}.dng").bayer_u16 for t in (1, 2))
    assert not np.array_equal(a, b)  # independent noise per frame
    assert abs(float(a.mean()) - float(b.mean())) < 0.01 * float(a.mean())


def test_split_lists_name_every_static_video_once(synth_root):
    lists = {name: (synth_root / f"{name}_list.txt").read_text().split()
             for name in ("train", "val", "test", "dynamic")}
    assert sorted(lists["train"] + lists["val"] + lists["test"]) == STATIC
    assert [len(lists[n]) for n in ("train", "val", "test")] == [4, 1, 1]
    assert lists["dynamic"] == ["M0000"]


@pytest.mark.parametrize("n, sizes", [(0, (0, 0, 0)), (1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)),
                                      (12, (8, 2, 2))])
def test_split_sizes(n, sizes):
    ids = [str(i) for i in range(n)]
    train, val, test = split_ids(ids)
    assert (len(train), len(val), len(test)) == sizes and train + val + test == ids


def test_same_seed_same_bytes_other_seed_other_bytes(synth_root, tmp_path):
    again = file_hashes(synth_cli(tmp_path / "again", seed=0))
    first = file_hashes(synth_root)
    assert again == first
    other = file_hashes(synth_cli(tmp_path / "other", seed=1))
    assert other.keys() == first.keys()
    drawn = [k for k in first if k.endswith((".dng", ".png")) and not k.endswith("mask0001.png")]  # first: empty
    assert [k for k in drawn if first[k] != other[k]] == drawn


# --- the truth is what a perfect denoiser + the traditional pipeline would give ---------------------

def test_traditional_pipeline_on_clean_frames_reproduces_the_truth(tmp_path):
    # 14-bit rounding of a frame darkened r times leaves (white - black) / r levels; at r = 300 that
    # alone costs ~30-40 dB, so the clean check uses moderate ratios (measured: >= 41 dB at 100).
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    common = dict(videos=2, frames=2, size=SIZE, seed=4, dynamic=2, ratio=(50.0, 100.0))
    synthesize(clean, noise=False, **common)
    synthesize(noisy, noise=True, **common)
    for vid, truth_name in [("0001", "half0001.png"), ("0002", "half0001.png"), ("M0001", "half0002.png")]:
        truth = read_png16(clean / "long" / vid / truth_name) / 65535.0
        assert np.array_equal(truth, read_png16(noisy / "long" / vid / truth_name) / 65535.0)
        clean_psnr = psnr(traditional_on_frame(clean, vid, "0002.dng"), truth)
        noisy_psnr = psnr(traditional_on_frame(noisy, vid, "0002.dng"), truth)
        assert clean_psnr >= 35.0, (vid, clean_psnr)
        assert noisy_psnr < clean_psnr - 10.0, (vid, clean_psnr, noisy_psnr)
    # the long exposure is the clean raw at full scale: only 14-bit rounding separates it from the truth
    truth = read_png16(clean / "long" / "0001" / "half0001.png") / 65535.0
    assert psnr(traditional_on_frame(clean, "0001", "long.dng"), truth) > 60.0


# --- inputs and errors --------------------------------------------------------------------------

def test_user_images_smaller_than_the_frame_are_upscaled(tmp_path):
    import imageio.v3 as iio
    folder = tmp_path / "photos"
    folder.mkdir()
    iio.imwrite(folder / "tiny.png", (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    iio.imwrite(folder / "gray.png", np.full((10, 10), 128, np.uint8))
    synthesize(tmp_path / "out", videos=2, frames=2, size=(64, 96), seed=0, images=folder, dynamic=1)
    names = {json.loads(p.read_text())["image"] for p in (tmp_path / "out").glob("long/*/synth.json")}
    assert names <= {"tiny.png", "gray.png"}
    assert read_png16(tmp_path / "out" / "long" / "0001" / "half0001.png").shape == (16, 24, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=(250, 384)), "--size"),
    (dict(frames=0), "--frames"),
    (dict(ratio=(300.0, 50.0)), "--ratio"),
    (dict(seed=-1), "--seed"),
    (dict(images="/nonexistent/photos"), "/nonexistent/photos"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, message):
    args = dict(videos=1, frames=2, size=(64, 64), seed=0) | kwargs
    with pytest.raises(BatmanError, match=message.replace("-", r"\-")) as err:
        synthesize(tmp_path / "out", **args)
    assert "\n" not in str(err.value)


def test_bayer_sampled_photos_keep_flat_colour_and_alias_fine_detail_into_colour():
    from batman.data.synth import bayer_sampled
    from batman.isp import gamma_srgb
    flat = np.full((8, 10, 3), [0.2, 0.5, 0.7], np.float32)
    assert bayer_sampled(flat).shape == (4, 5, 3)
    np.testing.assert_allclose(bayer_sampled(flat), flat[:4, :5], atol=1e-5)
    stripes = np.zeros((8, 8, 3), np.float32)
    stripes[:, 1::2] = 1.0  # white columns a pixel wide: R sits in the dark ones, B in the white, the greens in both
    expected = np.broadcast_to(np.array([0.0, gamma_srgb(np.array(0.5)), 1.0], np.float32), (4, 4, 3))
    np.testing.assert_allclose(bayer_sampled(stripes), expected, atol=1e-5)  # grey detail became colour


def test_synth_bayer_sampled_writes_half_size_photos_into_the_same_views(tmp_path):
    import imageio.v3 as iio
    folder = tmp_path / "photos"
    folder.mkdir()
    iio.imwrite(folder / "p.png", (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
    for bayer in (False, True):
        synthesize(tmp_path / str(bayer), videos=1, frames=2, size=(64, 64), seed=0, images=folder, dynamic=1,
                   bayer=bayer)
    plain, sampled = (read_png16(tmp_path / b / "long" / "0001" / "half0001.png") for b in ("False", "True"))
    assert plain.shape == sampled.shape and not np.array_equal(plain, sampled)
    meta = json.loads((tmp_path / "True" / "long" / "0001" / "synth.json").read_text())
    assert meta["bayer_sampled"] is True and "bayer_sampled" not in json.loads(
        (tmp_path / "False" / "long" / "0001" / "synth.json").read_text())


def test_empty_image_folder_is_a_cli_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["synth", "--out", str(tmp_path / "o"), "--videos", "1", "--images", str(tmp_path / "empty")]) == 2
    assert "no images in" in capsys.readouterr().err


# --- clean raws as sources: a real sensor's colour -----------------------------------------------

def test_a_clean_raw_source_gives_its_own_colour_to_the_video(tmp_path):
    source = fixture_path("canon_550d_colorchart.dng")
    (tmp_path / "raws").mkdir()
    (tmp_path / "raws" / source.name).symlink_to(source)
    synthesize(tmp_path / "out", videos=1, frames=2, size=(128, 128), seed=0, images=tmp_path / "raws",
               noise=False, ratio=(50.0, 50.0))
    meta = json.loads((tmp_path / "out" / "long" / "0001" / "synth.json").read_text())
    original = read_raw(source)
    r, g1, g2, b = original.wb
    assert meta["image"] == source.name and meta["camera"] == "Canon EOS Kiss X4"
    assert np.allclose(meta["wb"], [2 * r / (g1 + g2), 1.0, 2 * b / (g1 + g2)])
    assert np.allclose(meta["cam_to_srgb"], original.cam_to_srgb)
    # a raw developer reading the written frame finds the source's colour again (DNG ColorMatrix1, AsShotNeutral)
    written = read_raw(tmp_path / "out" / "short" / "0001" / "0001.dng")
    assert np.allclose(written.cam_to_srgb, original.cam_to_srgb, atol=1e-3)
    assert np.allclose(np.array(written.wb)[[0, 3]] / written.wb[1], meta["wb"][::2], rtol=1e-3)
    # and its clean frame, developed so, is the truth
    truth = read_png16(tmp_path / "out" / "long" / "0001" / "half0001.png") / 65535.0
    assert psnr(traditional_on_frame(tmp_path / "out", "0001", "0002.dng"), truth) >= 35.0


def test_a_raw_source_that_is_not_bayer_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "raws").mkdir()
    for name in ("canon_550d_colorchart.dng", "nikon_coolscan_not_bayer.nef"):
        (tmp_path / "raws" / name).symlink_to(fixture_path(name))
    with pytest.raises(BatmanError, match=r"not a Bayer raw: .*nikon_coolscan_not_bayer.nef") as err:
        synthesize(tmp_path / "out", videos=1, frames=2, size=(64, 64), seed=0, images=tmp_path / "raws")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
