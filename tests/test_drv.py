"""The DRV layout: split lists, frame lists, gains from EXIF, ground truth, and errors that name the path."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from batman.config import BatmanError
from batman.data import drv
from batman.data.synth import write_png16


def test_shipped_lists_are_the_official_partition(tmp_path):
    ids = {split: drv.split_ids(tmp_path, split) for split in drv.SPLITS}  # the root has no lists
    assert {k: len(v) for k, v in ids.items()} == {"train": 129, "val": 24, "test": 49}
    every = ids["train"] + ids["val"] + ids["test"]
    assert sorted(every) == [f"{i:04d}" for i in range(1, 203)]
    assert ids["train"][:3] == ["0022", "0006", "0003"] and ids["test"][0] == "0013"  # the official order


def test_root_lists_take_precedence(make_drv):
    root = make_drv(ids=("0001", "0002", "0003", "0004"), frames=2,
                    lists={"train": ["0001", "0002"], "val": ["0003"], "test": ["0004"]})
    (root / "val_list.txt").write_text("# comment\n0003\n\n")
    assert {s: len(drv.load_split(root, s)) for s in drv.SPLITS} == {"train": 2, "val": 1, "test": 1}
    assert [v.id for v in drv.load_split(root, "train")] == ["0001", "0002"]


def test_missing_list_names_it(tmp_path):
    with pytest.raises(BatmanError, match=re.escape(f"no split list {tmp_path / 'extra_list.txt'}")):
        drv.split_ids(tmp_path, "extra")


def test_gains_are_long_over_frame_exposure(make_drv):
    root = make_drv(ids=("0001",), frames=3, exposures=[1 / 64, 1 / 32, 0.1], long_exposure_s=2.0)
    video = drv.load_split(root, "train")[0]
    assert video.gains == pytest.approx((128.0, 64.0, 20.0), rel=1e-6)
    assert [p.name for p in video.frames] == ["00001.ARW", "00002.ARW", "00003.ARW"]
    assert video.size == (32, 48) and video.static and video.mode == "raw"


def test_gain_table_when_long_raw_missing(make_drv):
    root = make_drv(ids=("0001",), frames=2, long_exposure_s=None)
    folder = root / "long" / "0001"
    with pytest.raises(BatmanError, match=re.escape(f"no long exposure raw with an exposure time in {folder}")):
        drv.load_split(root, "train")
    (root / "gains.json").write_text(json.dumps({"0001": 250.0}))
    assert drv.load_split(root, "train")[0].gains == (250.0, 250.0)


def test_per_frame_targets_and_meta(make_drv):
    root = make_drv(ids=("0001", "0002"), frames=3, per_frame=("0002",))
    (root / "long" / "0002" / "synth.json").write_text(json.dumps({"dynamic": True}))
    static, dynamic = drv.load_split(root, "train")
    assert len(static.targets) == 1 and static.meta == {}
    assert [p.name for p in dynamic.targets] == ["half0001.png", "half0002.png", "half0003.png"]
    assert dynamic.meta == {"dynamic": True} and not dynamic.static


def test_dynamic_split_needs_no_ground_truth(make_drv):
    root = make_drv(ids=("0001", "M0000"), frames=2)
    shutil.rmtree(root / "long" / "M0000")
    (root / "gains.json").write_text(json.dumps({"M0000": 100.0}))
    videos = drv.load_split(root, "dynamic")
    assert [v.id for v in videos] == ["M0000"] and videos[0].targets == ()


def test_read_target_keeps_16_bits(make_drv):
    root = make_drv(ids=("0001",), frames=1)
    img = drv.read_target(root / "long" / "0001" / "half0001.png")
    assert img.dtype == np.float32 and img.shape == (8, 12, 3)
    codes = img * 65535
    assert np.allclose(codes, np.rint(codes), atol=1e-2) and len(np.unique(np.rint(codes))) > 256


def known_uint16(h: int, w: int) -> np.ndarray:
    """Values spread over the whole 16-bit range, with 0, 1, 255, 32768, 65534 and 65535 among them."""
    v = (np.arange(h * w * 3, dtype=np.uint64) * 2654435761 % 65536).astype(np.uint16).reshape(h, w, 3)
    v[0, 0], v[-1, -1] = (0, 65535, 1), (65534, 32768, 255)
    return v


def test_png16_write_then_read_gives_the_same_values(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(7, 5, 3), (1, 1, 3), (33, 65, 3)]:
        values = rng.integers(0, 65536, shape, dtype=np.uint16)
        write_png16(tmp_path / "a.png", values)
        back = drv.read_png(tmp_path / "a.png")
        assert back.dtype == np.uint16 and np.array_equal(back, values)
        assert np.array_equal(drv.read_target(tmp_path / "a.png"), values.astype(np.float32) / np.float32(65535))
    floats = rng.random((9, 11, 3))
    write_png16(tmp_path / "f.png", floats)
    assert np.array_equal(drv.read_png(tmp_path / "f.png"), np.rint(floats * 65535).astype(np.uint16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "f.png"]  # atomic: no temp files left


def test_png16_written_by_the_old_hand_made_writer_decodes_to_the_same_values():
    """tests/data/...png: written by synth.write_png16 before it used imagecodecs (zlib, filter 0)."""
    old = Path(__file__).parent / "data" / "png16_written_by_synth_before_imagecodecs.png"
    assert np.array_equal(drv.read_png(old), known_uint16(7, 5))


def test_png16_is_byte_reproducible(tmp_path):
    write_png16(tmp_path / "a.png", known_uint16(16, 24))
    write_png16(tmp_path / "b.png", known_uint16(16, 24))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("data", [b"", b"not a png at all", None])
def test_unreadable_png_names_the_file(tmp_path, data):
    path = tmp_path / "half0001.png"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(BatmanError, match=f"cannot read image: {re.escape(str(path))}"):
        drv.read_target(path)


def test_rawrgb_mode(make_drv):
    import imageio.v3 as iio
    root = make_drv(ids=("0001",), frames=2)
    for i in range(2):
        path = root / "VBM4D_rawRGB" / "0001" / f"{i + 1:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, np.zeros((8, 12, 3), np.uint8))
    video = drv.load_split(root, "train", mode="rawrgb")[0]
    assert video.gains == (1.0, 1.0) and video.size == (8, 12) and video.mode == "rawrgb"


def test_folder_video(make_drv):
    root = make_drv(ids=("0001",), frames=2)
    video = drv.folder_video(root / "short" / "0001", gain=50)
    assert video.id == "0001" and video.targets == () and video.gains == (50.0, 50.0)
    (root / "empty").mkdir()
    with pytest.raises(BatmanError, match=re.escape(f"input folder {root / 'empty'} has no raw frames")):
        drv.folder_video(root / "empty")
    with pytest.raises(BatmanError, match=re.escape(f"input folder {root / 'nothing'} does not exist")):
        drv.folder_video(root / "nothing")


# --- errors name the path -------------------------------------------------------------------

def test_missing_short_folder(make_drv):
    root = make_drv(ids=("0001",), frames=1)
    shutil.rmtree(root / "short")
    with pytest.raises(BatmanError, match=re.escape(f"no short/ folder in {root}")):
        drv.load_split(root, "train")


def test_missing_video_folder(make_drv):
    root = make_drv(ids=("0001",), frames=1, lists={"train": ["0001", "0009"]})
    with pytest.raises(BatmanError, match=re.escape(f"missing video folder {root / 'short' / '0009'}")):
        drv.load_split(root, "train")


def test_video_without_frames(make_drv):
    root = make_drv(ids=("0001",), frames=1)
    (root / "short" / "0001" / "00001.ARW").unlink()
    with pytest.raises(BatmanError, match=re.escape(f"video folder {root / 'short' / '0001'} has no .ARW/.dng frames")):
        drv.load_split(root, "train")


def test_frame_of_another_size(make_drv):
    from batman.data.raw import write_dng
    root = make_drv(ids=("0001",), frames=2)
    odd = root / "short" / "0001" / "00003.dng"
    write_dng(odd, np.zeros((32, 64), np.uint16), "RGGB", 64, 4095, 1 / 64)
    with pytest.raises(BatmanError, match=re.escape(f"frame {odd} is 32x64 but 00001.ARW is 32x48")):
        drv.load_split(root, "train")


def test_missing_ground_truth(make_drv):
    root = make_drv(ids=("0001",), frames=1)
    (root / "long" / "0001" / "half0001.png").unlink()
    with pytest.raises(BatmanError, match=re.escape(f"no ground truth {root / 'long' / '0001' / 'half0001'}")):
        drv.load_split(root, "train")


def test_wrong_number_of_targets(make_drv):
    root = make_drv(ids=("0001",), frames=3, per_frame=("0001",))
    (root / "long" / "0001" / "half0003.png").unlink()
    with pytest.raises(BatmanError, match=re.escape(f"{root / 'long' / '0001'} has 2 ground truth PNGs for 3 frames")):
        drv.load_split(root, "train")


def test_corrupt_header_names_the_frame(make_drv):
    root = make_drv(ids=("0001",), frames=2)
    bad = root / "short" / "0001" / "00002.ARW"
    bad.write_bytes(b"not a raw file at all")
    with pytest.raises(BatmanError, match=re.escape(f"cannot read raw: {bad}")):
        drv.load_split(root, "train")
