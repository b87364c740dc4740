"""Synthetic motion: sub-pixel warps, canvases that cover the camera, masks that mark what moved or appeared."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from batman.config import BatmanError
from batman.data import motion
from batman.data.synth import synthesize

SHAPE = (24, 32)  # packed grid


def textured(shape, seed=0) -> np.ndarray:
    """A smooth random texture (no flat areas, so every shift changes it)."""
    from scipy.ndimage import gaussian_filter
    noise = np.random.default_rng(seed).random((*shape, 3))
    return np.clip(0.5 + 4 * (gaussian_filter(noise, (1.5, 1.5, 0)) - 0.5), 0, 1).astype(np.float32)


def still_camera(canvas_shape, velocity=(0.0, 0.0)) -> motion.Camera:
    lo = np.array([(SHAPE[0] - 1) / 2 + 4, (SHAPE[1] - 1) / 2 + 4])
    hi = np.array(canvas_shape) - 5 - np.array([(SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2])
    return motion.Camera(lo.copy(), np.array(velocity), lo, hi)


def test_half_pixel_pan_is_sub_pixel_and_two_steps_are_one_pixel():
    canvas = textured((40, 60))
    views, masks = motion.render(canvas, still_camera(canvas.shape[:2], (0.0, 0.5)), [], None, SHAPE, 3)
    assert np.abs(views[2][:, :-1] - views[0][:, 1:]).max() < 1e-4  # cubic splines interpolate the samples
    assert np.abs(views[1] - views[0]).max() > 0.02 and np.abs(views[1][:, :-1] - views[0][:, 1:]).max() > 0.02
    assert masks[0].shape == (SHAPE[0] // 2, SHAPE[1] // 2) and not masks[0].any()


def test_pan_uncovers_exactly_the_entering_columns():
    canvas = textured((40, 70))
    views, masks = motion.render(canvas, still_camera(canvas.shape[:2], (0.0, 4.0)), [], None, SHAPE, 3)
    uncovered = (masks[1] & motion.UNCOVERED) > 0
    assert uncovered[:, -2:].all() and not uncovered[:, :-2].any()  # 4 packed columns = 2 truth columns
    assert ((masks[1] & motion.MOVING) > 0).mean() > 0.9


def test_object_uncovers_its_trailing_edge_and_occludes_the_background():
    background = np.zeros((40, 60, 3), np.float32) + 0.5
    patch = np.ones((8, 8, 3), np.float32)
    layer = motion.Layer(patch, np.array([12.0, 10.0]), np.array([0.0, 3.0]), 0.0)
    camera = still_camera(background.shape[:2])
    views, masks = motion.render(background, camera, [layer], None, SHAPE, 2)
    assert views[0][12, 10].min() == 1.0 and views[1][12, 13].min() == 1.0 and views[1][12, 8].max() == 0.5
    maps = [[motion.camera_map(camera, SHAPE, t), motion.object_map(layer, SHAPE, t)] for t in (0, 1)]
    visible = []
    for t in (0, 1):
        v = np.zeros(SHAPE, np.int8)
        motion.paint_object(np.zeros((*SHAPE, 3), np.float32), v, layer, 1, t)
        visible.append(v)
    uncovered = motion.uncovered(maps[1], maps[0], visible[1], visible[0])
    ys, xs = np.nonzero(uncovered)
    assert ys.size and np.all(visible[0][ys, xs] == 1) and np.all(visible[1][ys, xs] == 0)
    assert xs.max() < 13 and 8 <= ys.min() and ys.max() <= 16  # behind the object, within its rows
    moving = (masks[1] & motion.MOVING) > 0
    assert moving[:, 12:].sum() == 0 and moving.any()  # nothing changed away from the object


def test_canvas_covers_every_rotated_zoomed_panned_frame():
    h, w = 48, 80
    for seed in range(12):
        rng = np.random.default_rng(seed)
        camera, size = motion.draw_camera(rng, motion.COMPONENTS["mixed"], (h, w), 40, 16.0)
        for t in range(40):
            corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], float)
            uy, ux = motion.apply_map(motion.camera_map(camera, (h, w), t), corners[:, 0], corners[:, 1])
            assert uy.min() >= 0 and ux.min() >= 0 and uy.max() <= size[0] - 1 and ux.max() <= size[1] - 1


def test_speeds_stay_under_the_limit_in_input_pixels():
    rng = np.random.default_rng(0)
    speeds = [motion.draw_speed(rng, 16.0) / 2 for _ in range(2000)]
    assert max(speeds) <= 16.0 and min(speeds) >= motion.MIN_SPEED and max(speeds) > 12.0
    layer = motion.Layer(np.ones((6, 6, 3)), np.array([20.0, 30.0]), np.array([31.0, -9.0]), 0.0)
    centres = np.array([motion.object_centre(layer, (48, 80), t) for t in range(30)])
    assert np.linalg.norm(np.diff(centres, axis=0), axis=1).max() <= np.hypot(31, 9) + 1e-9  # bounces keep speed


def test_light_switch_changes_one_frame():
    canvas = textured((40, 60))
    camera = still_camera(canvas.shape[:2])
    light = motion.Light(camera.c0.copy(), 10.0, 0.3, frame=2)
    views, masks = motion.render(canvas, camera, [], light, SHAPE, 4)
    changed = [((m & motion.MOVING) > 0).mean() for m in masks]
    assert changed[2] > 0.3 and changed[1] == changed[3] == 0 and not any((m & motion.UNCOVERED).any() for m in masks)
    assert views[2].mean() > views[1].mean() + 0.05


def test_unknown_kind_is_a_one_line_error(tmp_path):
    with pytest.raises(BatmanError, match="--motion spin: choose from pan,") as err:
        synthesize(tmp_path, videos=0, frames=2, size=(32, 32), seed=0, dynamic=1, motion_kinds="spin")
    assert "\n" not in str(err.value)


def test_each_kind_writes_masks_and_records_itself_and_leaves_static_videos_alone(tmp_path):
    common = dict(videos=1, frames=4, size=(64, 96), seed=2)
    synthesize(tmp_path / "a", dynamic=len(motion.MOTION_KINDS), **common)
    synthesize(tmp_path / "b", dynamic=1, motion_kinds="light", **common)
    static = [p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if "0001" in p.parts]
    assert len(static) > 4
    for p in static:
        if p.is_file():
            assert hashlib.sha256((tmp_path / "a" / p).read_bytes()).digest() == \
                hashlib.sha256((tmp_path / "b" / p).read_bytes()).digest(), p
    for j, kind in enumerate(motion.MOTION_KINDS):
        folder = tmp_path / "a" / "long" / f"M{j:04d}"
        meta = json.loads((folder / "synth.json").read_text())
        assert meta["motion"]["kind"] == kind and set(meta["motion"]["components"]) <= set(motion.MOTION_KINDS)
        masks = [np.array(Image.open(folder / f"mask{t:04d}.png")) for t in range(1, 5)]
        assert all(m.shape == (16, 24) and m.dtype == np.uint8 for m in masks)
        assert not masks[0].any() and any((m & motion.MOVING).any() for m in masks[1:]), kind
    assert not list((tmp_path / "a" / "long" / "0001").glob("mask*"))


def test_cli_motion_and_max_speed_reach_synth_json(tmp_path):
    from batman.cli import main
    assert main(["synth", "--out", str(tmp_path), "--videos", "0", "--frames", "2", "--size", "32x48",
                 "--dynamic", "2", "--motion", "zoom,object", "--max-speed", "4"]) == 0
    metas = [json.loads((tmp_path / "long" / f"M000{j}" / "synth.json").read_text())["motion"] for j in (0, 1)]
    assert [m["kind"] for m in metas] == ["zoom", "object"] and metas[0]["max_speed_input_px"] == 4.0
    assert np.hypot(*metas[1]["objects"][0]["velocity_px"]) <= 8.0  # packed pixels: twice the input grid's
