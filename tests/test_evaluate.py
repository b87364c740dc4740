"""Evaluate on a long tiny clip: per-frame PSNR and drift, ghosting in motion masks, the figures."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from batman import ckpt
from batman.baselines import TEMPORAL_MEAN, TRADITIONAL
from batman.config import make_config
from batman.evaluate import crop_box, evaluate
from batman.model.net import model_for

FRAMES = 64


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> tuple[Path, Path]:
    """One static and one moving-object video of 64 frames at 32x32 (truth grid), and an untrained model
    (BatchNorm: GroupNorm refuses the encoder's 1x1 stride-32 features of so small a frame)."""
    from batman.data.synth import synthesize
    tmp = tmp_path_factory.mktemp("long")
    synthesize(tmp / "data", videos=1, frames=FRAMES, size=(128, 128), seed=3, dynamic=1, ratio=(20.0, 20.0),
               motion_kinds="object", test_only=True)
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8, "model.norm": "batch"})
    torch.manual_seed(0)
    model = tmp / "m.pt"
    ckpt.save_checkpoint(model, {"model": model_for(cfg).state_dict(), "config": cfg.to_json()})
    return tmp / "data", model


@pytest.fixture(scope="module")
def reports(long_clip, tmp_path_factory) -> dict:
    root, model = long_clip
    out = tmp_path_factory.mktemp("eval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32x32 frame is too small to share: threads only wait on each other (10x CPU)
    try:
        return {split: (evaluate(root, model=model, split=split, out=out / split, device="cpu", with_ssim=False),
                        out / split) for split in ("test", "dynamic")}
    finally:
        torch.set_num_threads(threads)


def test_every_method_has_per_frame_psnr_and_a_drift(reports):
    for report, out in reports.values():
        for scores in report["videos"].values():
            assert {TRADITIONAL, TEMPORAL_MEAN, "m"} <= set(scores)
            for s in scores.values():
                assert len(s["psnr_frames"]) == FRAMES and math.isfinite(s["drift_db"])
                assert np.mean(s["psnr_frames"]) == pytest.approx(s["psnr"], abs=1e-3)
        rows = list(csv.DictReader(open(out / "psnr_frames.csv")))
        assert len(rows) == FRAMES * 3 * len(report["videos"])
        assert (out / "drift.png").stat().st_size > 5000


def test_averaging_a_static_scene_improves_with_time(reports):
    report, _ = reports["test"]
    scores = next(iter(report["videos"].values()))
    assert scores[TEMPORAL_MEAN]["drift_db"] > 1.0  # 48-64 frames averaged against 8-24: less noise
    assert abs(scores[TRADITIONAL]["drift_db"]) < 0.5  # one frame at a time: no trend
    assert "psnr_moving" not in scores[TRADITIONAL] and report["static"] == list(report["videos"])


def test_ghosting_shows_in_the_moving_region_only(reports):
    report, out = reports["dynamic"]
    scores = report["videos"]["M0000"]
    mean, single = scores[TEMPORAL_MEAN], scores[TRADITIONAL]
    # the running mean keeps every position of the object: fine on the still background, ghosts where it moves
    assert mean["psnr_moving"] < mean["psnr"] - 3.0
    assert mean["psnr_moving"] < single["psnr_moving"] - 3.0 and mean["psnr_uncovered"] < single["psnr_uncovered"]
    assert abs(single["psnr_moving"] - single["psnr"]) < 3.0  # no memory, no ghost
    assert report["mean"][TEMPORAL_MEAN]["psnr_moving"] == pytest.approx(mean["psnr_moving"])
    assert "PSNR moving" in (out / "metrics.md").read_text()
    assert (out / "ghosting_M0000.png").stat().st_size > 5000 and not (out / "ghosting_0001.png").exists()


def test_moving_videos_without_classical_baselines_still_get_their_ghosting_figure(long_clip, tmp_path):
    """`--baselines` alone (none) once crashed on the figure's input panel, the traditional pipeline."""
    root, model = long_clip
    report = evaluate(root, model=model, split="dynamic", out=tmp_path, device="cpu", with_ssim=False, classical=(),
                      frames=4)
    assert list(report["videos"]["M0000"]) == ["m"] and (tmp_path / "ghosting_M0000.png").is_file()


def test_crop_box_holds_the_mask_and_stays_inside():
    mask = np.zeros((40, 50), bool)
    mask[2:5, 45:48] = True
    ys, xs = crop_box(mask, pad=4, least=16)
    assert mask[ys, xs].sum() == mask.sum()
    assert ys.stop - ys.start >= 16 and xs.stop - xs.start >= 16 and ys.start >= 0 and xs.stop <= 50
