"""Calibrate: known noise written into DNGs comes back (gain, read and row noise, black), per ISO; the
JSON drives synth --camera; what is not a dark or a flat frame is refused in one line."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from batman.cli import main
from batman.config import BatmanError
from batman.data.calibrate import calibrate
from batman.data.noise import NoiseParams, load_camera, noise_models, quantize, tukey_lambda_variance
from batman.data.raw import canonical_offsets, read_raw, write_dng
from conftest import fixture_path

SIZE = (256, 256)
WHITE = 16383
BLACK = (510.0, 512.0, 513.0, 515.0)   # per canonical channel R, G1, G2, B
SENSORS = {800: NoiseParams(k=0.8, read_scale=2.0, read_lambda=0.05, row_sigma=0.6),
           3200: NoiseParams(k=3.2, read_scale=4.5, read_lambda=0.12, row_sigma=1.5)}
FLAT_LEVELS = (150, 500, 1500, 4000, 9000)   # DN above black at the centre of the field


def black_map(pattern: str, black=BLACK, size=SIZE) -> np.ndarray:
    out = np.empty(size, np.float32)
    for b, (dy, dx) in zip(black, canonical_offsets(pattern)):
        out[dy::2, dx::2] = b
    return out


def noisy_frame(signal: np.ndarray, params: NoiseParams, pattern: str, rng) -> np.ndarray:
    """noise.py's sensor on a signal above a per-channel black: shot, read, row, ADC."""
    black = black_map(pattern, size=signal.shape)
    for model in noise_models(params):
        signal = model(signal, rng)
    return quantize(signal + black, WHITE)


def vignetted(level: float) -> np.ndarray:
    """A flat field that is not flat: 30% fall-off to the corners (the pair difference cancels it)."""
    y, x = np.mgrid[:SIZE[0], :SIZE[1]]
    r2 = ((y - SIZE[0] / 2) ** 2 + (x - SIZE[1] / 2) ** 2) / (SIZE[0] ** 2 / 2)
    return (level * (1 - 0.3 * r2)).astype(np.float32)


def write_set(root: Path, pattern: str = "GRBG", darks: int = 8, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    common = dict(pattern=pattern, black=tuple(black_map(pattern)[:2, :2].ravel()), white=WHITE)
    for iso, params in SENSORS.items():
        for i in range(darks):
            frame = noisy_frame(np.zeros(SIZE, np.float32), params, pattern, rng)
            write_dng(root / "dark" / f"iso{iso}_{i:02d}.dng", frame, exposure_s=1 / 30, iso=iso, **common)
        for j, level in enumerate(FLAT_LEVELS):
            for k in range(2):
                frame = noisy_frame(vignetted(level), params, pattern, rng)
                write_dng(root / "flat" / f"iso{iso}_{j}{k}.dng", frame, exposure_s=(j + 1) / 100, iso=iso, **common)
    return root / "dark", root / "flat"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    dark, flat = write_set(root)
    doc = calibrate(dark, flat, out=root / "cam" / "camera.json")
    return root, doc


def test_recovers_gain_read_and_row_noise_per_iso(calibrated):
    root, doc = calibrated
    assert doc["pattern"] == "GRBG" and doc["white"] == WHITE
    found = {p["iso"]: p for p in doc["profiles"]}
    assert set(found) == set(SENSORS)
    for iso, truth in SENSORS.items():
        p = found[iso]
        read_sd = truth.read_scale * math.sqrt(tukey_lambda_variance(truth.read_lambda))
        assert p["k"] == pytest.approx(truth.k, rel=0.05), iso
        assert p["read_sigma"] == pytest.approx(read_sd, rel=0.05), iso
        assert p["row_sigma"] == pytest.approx(truth.row_sigma, rel=0.10), iso
        assert p["read_lambda"] == pytest.approx(truth.read_lambda, abs=0.03), iso
        assert p["black"] == pytest.approx(BLACK, abs=0.3) and p["quant_step"] == 1
        assert p["darks"] == 8 and p["flat_pairs"] == len(FLAT_LEVELS)


def test_json_loads_as_noise_params_and_plot_is_written(calibrated):
    root, doc = calibrated
    profiles = load_camera(root / "cam" / "camera.json")
    assert [p.iso for p in profiles] == [800, 3200]
    p = profiles[0]
    assert p.pattern == "GRBG" and p.white == WHITE and p.black == pytest.approx(BLACK, abs=0.3)
    assert p.noise.k == pytest.approx(0.8, rel=0.05) and p.noise.read_lambda is not None
    png = root / "cam" / "camera.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_synth_with_the_camera_writes_its_pattern_levels_and_noise(calibrated, tmp_path):
    root, _ = calibrated
    out = tmp_path / "syn"
    assert main(["synth", "--out", str(out), "--videos", "2", "--frames", "2", "--size", "64x64",
                 "--camera", str(root / "cam" / "camera.json")]) == 0
    known = {p.iso: p for p in load_camera(root / "cam" / "camera.json")}
    for meta_path in sorted((out / "long").glob("*/synth.json")):
        meta = json.loads(meta_path.read_text())
        frame = read_raw(next((out / "short" / meta_path.parent.name).glob("*.dng")))
        assert frame.pattern == meta["pattern"] == "GRBG" and frame.white == WHITE
        assert meta["black"] in {round(np.mean(p.black)) for p in known.values()} and frame.black == (meta["black"],) * 4
        assert abs(meta["black"] - np.mean(BLACK)) <= 1
        assert meta["noise"]["k"] in [p.noise.k for p in known.values()]


def test_bad_camera_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "camera.json"
    path.write_text(json.dumps({"format": "batman-camera/1", "pattern": "RGGB", "white": 4095,
                                "profiles": [{"iso": 100, "black": [64] * 4, "k": -1, "read_scale": 1,
                                              "read_lambda": None, "row_sigma": 0}]}))
    with pytest.raises(BatmanError, match="is not a camera file from `batman calibrate`.*ISO 100") as e:
        load_camera(path)
    assert "\n" not in str(e.value)


# --- refusals -------------------------------------------------------------------------------------

def canon_like_darks(folder: Path, n: int = 2) -> Path:
    """Dark frames of the Canon fixture's geometry and levels (RGGB, black 2056, white 15000)."""
    rng = np.random.default_rng(1)
    h, w = read_raw(fixture_path("canon_550d_colorchart.dng")).bayer_u16.shape
    for i in range(n):
        frame = np.clip(np.rint(2056 + 3 * rng.standard_normal((h, w))), 0, 15000).astype(np.uint16)
        write_dng(folder / f"dark{i}.dng", frame, "RGGB", 2056, 15000, 1 / 30)
    return folder


def test_scene_photos_given_as_darks_are_refused(tmp_path):
    for name in ("canon_550d_colorchart.dng", "kodak_dc50_grbg.kdc"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(fixture_path(name), folder)
        with pytest.raises(BatmanError, match=rf"not a dark frame: .*{name} \(mean \d+ DN above the black") as e:
            calibrate(folder, folder, out=tmp_path / "c.json")
        assert "\n" not in str(e.value) and "lens cap" in str(e.value)
    assert not (tmp_path / "c.json").exists()


def test_the_fixtures_folder_is_refused_at_its_first_scene(fixtures_dir, tmp_path):
    """README.md is skipped (not a raw suffix); the Canon scene is the first frame read."""
    with pytest.raises(BatmanError, match=r"not a dark frame: .*canon_550d_colorchart.dng"):
        calibrate(fixtures_dir, fixtures_dir, out=tmp_path / "c.json")


def test_a_scene_photo_and_its_copy_are_not_a_flat_pair(tmp_path):
    dark = canon_like_darks(tmp_path / "dark")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(fixture_path("canon_550d_colorchart.dng"), flat / "a.dng")
    with pytest.raises(BatmanError, match="no pair of flat frames"):
        calibrate(dark, flat, out=tmp_path / "c.json")
    shutil.copy(fixture_path("canon_550d_colorchart.dng"), flat / "b.dng")
    with pytest.raises(BatmanError, match="are identical: copies of one frame"):
        calibrate(dark, flat, out=tmp_path / "c.json")
    shutil.copy(fixture_path("kodak_dc50_grbg.kdc"), flat / "c.kdc")
    with pytest.raises(BatmanError, match="flats at ISO 84 but no dark frames at that ISO"):
        calibrate(dark, flat, out=tmp_path / "c.json")
    (flat / "c.kdc").unlink(), (flat / "b.dng").unlink()
    write_dng(flat / "c.dng", np.full((64, 64), 3000, np.uint16), "RGGB", 2056, 15000, 1 / 30)
    with pytest.raises(BatmanError, match=r"c.dng \(RGGB, white 15000, 64x64\) is not from the camera of"):
        calibrate(dark, flat, out=tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("level,message", [(5.0, "flat frame too dark"), (20000.0, "flat frame saturated")])
def test_too_dark_or_saturated_flats_are_refused(tmp_path, level, message):
    rng = np.random.default_rng(2)
    params = SENSORS[800]
    for i in range(2):
        write_dng(tmp_path / "dark" / f"{i}.dng", noisy_frame(np.zeros(SIZE, np.float32), params, "RGGB", rng),
                  "RGGB", BLACK, WHITE, 1 / 30)
        write_dng(tmp_path / "flat" / f"{i}.dng", noisy_frame(np.full(SIZE, level, np.float32), params, "RGGB", rng),
                  "RGGB", BLACK, WHITE, 1 / 30)
    code = main(["calibrate", "--dark", str(tmp_path / "dark"), "--flat", str(tmp_path / "flat"),
                 "--out", str(tmp_path / "c.json")])
    assert code == 2 and not (tmp_path / "c.json").exists()
    with pytest.raises(BatmanError, match=message):
        calibrate(tmp_path / "dark", tmp_path / "flat", out=tmp_path / "c.json")


def test_flats_at_one_brightness_cannot_give_a_slope(tmp_path):
    dark, flat = write_set(tmp_path, darks=2)
    for path in flat.iterdir():
        if not path.name.startswith("iso800_2"):
            path.unlink()
    for path in dark.iterdir():
        if path.name.startswith("iso3200"):
            path.unlink()
    with pytest.raises(BatmanError, match="shoot pairs at several brightnesses"):
        calibrate(dark, flat, out=tmp_path / "c.json")
