"""The raw layer on real camera files: levels, canonical packing whatever the CFA phase, refusals."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from batman.config import BatmanError
from batman.data.raw import (bin2x2, canonical_offsets, pack_bayer, read_raw, shift_pattern, unpack_bayer,
                             write_dng)
from conftest import fixture_path

BAYER_FIXTURES = {  # file -> what rawpy reports (see ../shared/fixtures/README.md)
    "canon_550d_colorchart.dng": ("RGGB", 2056.0, 15000.0, 1156, 1734),
    "kodak_dc50_grbg.kdc": ("GRBG", 0.0, 16383.0, 512, 768),
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batman", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(BAYER_FIXTURES))
def test_inspect_json_reports_rawpy_levels(name):
    import rawpy
    path = fixture_path(name)
    proc = run_cli("inspect", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    pattern, black, white, h, w = BAYER_FIXTURES[name]
    with rawpy.imread(str(path)) as rp:
        assert info["black"] == [float(b) for b in rp.black_level_per_channel]
        assert info["white"] == float(rp.white_level)
        assert (info["height"], info["width"]) == rp.raw_image_visible.shape
    assert (info["pattern"], info["black"][0], info["white"], info["height"], info["width"]) == \
        (pattern, black, white, h, w)
    assert set(info) >= {"pattern", "black", "white", "height", "width", "exposure_s"}


def test_inspect_kodak_exposure():
    info = json.loads(run_cli("inspect", "--json", str(fixture_path("kodak_dc50_grbg.kdc"))).stdout)
    assert info["exposure_s"] == pytest.approx(0.00435, rel=1e-3)


@pytest.mark.parametrize("name,message", [
    ("nikon_coolscan_not_bayer.nef", "not a Bayer raw"),
    ("sony_zv-e10_truncated.arw", "cannot read raw"),
])
def test_inspect_refuses_with_one_line_and_exit_2(name, message):
    path = fixture_path(name)
    proc = run_cli("inspect", str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {message}: {path}")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["canon_550d_colorchart.dng", "kodak_dc50_grbg.kdc"])
def test_half_truncated_copy_is_refused(name, tmp_path):
    src = fixture_path(name)
    half = tmp_path / name
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    proc = run_cli("inspect", "--check", str(half))  # the header alone may be intact
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: cannot read raw: {half}"), proc.stderr


def test_canon_packs_visible_area_only():
    import rawpy
    path = fixture_path("canon_550d_colorchart.dng")
    frame = read_raw(path)
    with rawpy.imread(str(path)) as rp:
        visible = rp.raw_image_visible.copy()
        full_shape = rp.raw_image.shape
    assert frame.bayer_u16.shape == visible.shape != full_shape
    packed = pack_bayer(frame)
    assert packed.shape == (4, 1156 // 2, 1734 // 2)
    expected_r = (visible[0::2, 0::2].astype(np.float32) - 2056) / (15000 - 2056)
    np.testing.assert_array_equal(packed[0], expected_r)


@pytest.mark.parametrize("name", sorted(BAYER_FIXTURES))
def test_unpack_inverts_pack(name):
    frame = read_raw(fixture_path(name))
    packed = pack_bayer(frame)
    mosaic = unpack_bayer(packed, frame.pattern)
    h, w = mosaic.shape
    black = np.empty((h, w), np.float32)
    for c, (dy, dx) in enumerate(canonical_offsets(frame.pattern)):
        black[dy::2, dx::2] = frame.black[c]
    expected = (frame.bayer_u16[:h, :w].astype(np.float32) - black) / (frame.white - black)
    np.testing.assert_array_equal(mosaic, expected)


@pytest.mark.parametrize("name", sorted(BAYER_FIXTURES))
@pytest.mark.parametrize("rows,cols", [(1, 0), (0, 1), (1, 1)])
def test_packing_follows_a_shifted_pattern(name, rows, cols):
    """Cropping one row/column shifts the CFA phase; the packed channels must stay R, G1, G2, B."""
    frame = read_raw(fixture_path(name))
    packed = pack_bayer(frame)
    cropped = read_raw(fixture_path(name))
    cropped.bayer_u16 = frame.bayer_u16[rows:, cols:]
    cropped.pattern = shift_pattern(frame.pattern, rows, cols)
    cropped.black = frame.black  # canonical order: unchanged by the crop
    moved = pack_bayer(cropped)
    h, w = moved.shape[1] - 1, moved.shape[2] - 1
    for c, (dy, dx) in enumerate(canonical_offsets(frame.pattern)):
        # after the crop a channel's pixel (i, j) is the original (i + sy, j + sx): shifted by one
        # packed pixel exactly where the crop moved that channel's site out of the first tile
        sy, sx = int(dy < rows), int(dx < cols)
        np.testing.assert_array_equal(moved[c, :h, :w], packed[c, sy:sy + h, sx:sx + w], err_msg=f"channel {c}")


def test_kodak_grbg_packs_to_canonical_order():
    frame = read_raw(fixture_path("kodak_dc50_grbg.kdc"))
    assert frame.pattern == "GRBG"
    packed = pack_bayer(frame)
    scale = frame.white - frame.black[0]
    mosaic = frame.bayer_u16.astype(np.float32)
    np.testing.assert_array_equal(packed[0], mosaic[0::2, 1::2] / scale)  # R
    np.testing.assert_array_equal(packed[1], mosaic[0::2, 0::2] / scale)  # G1: green in the red row
    np.testing.assert_array_equal(packed[2], mosaic[1::2, 1::2] / scale)  # G2: green in the blue row
    np.testing.assert_array_equal(packed[3], mosaic[1::2, 0::2] / scale)  # B


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_dng_roundtrip_every_pattern(tmp_path, pattern):
    rng = np.random.default_rng(1)
    bayer = rng.integers(500, 16000, (32, 48)).astype(np.uint16)
    path = tmp_path / "f.dng"
    write_dng(path, bayer, pattern, (500, 501, 502, 503), 16383, 1 / 50)
    frame = read_raw(path)
    assert frame.pattern == pattern and frame.white == 16383 and frame.exposure_s == pytest.approx(0.02)
    np.testing.assert_array_equal(frame.bayer_u16, bayer)
    tile_black = dict(zip([(0, 0), (0, 1), (1, 0), (1, 1)], (500, 501, 502, 503)))
    assert frame.black == tuple(float(tile_black[o]) for o in canonical_offsets(pattern))


def test_odd_edges_cropped_and_binning(tmp_path):
    bayer = np.full((33, 49), 1000, np.uint16)
    write_dng(tmp_path / "odd.dng", bayer, "RGGB", 0, 4000, 0.01)
    packed = pack_bayer(read_raw(tmp_path / "odd.dng"))
    assert packed.shape == (4, 16, 24)
    assert bin2x2(packed).shape == (4, 8, 12)
    np.testing.assert_allclose(bin2x2(packed), 0.25)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BatmanError, match=f"cannot read raw: {tmp_path / 'nope.ARW'}"):
        read_raw(tmp_path / "nope.ARW")


def test_fixture_copies_are_not_modified(tmp_path):
    src = fixture_path("kodak_dc50_grbg.kdc")
    copy = tmp_path / "k.kdc"
    shutil.copy(src, copy)
    read_raw(copy)
    assert copy.read_bytes() == src.read_bytes()
