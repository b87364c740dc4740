"""Classical baselines in evaluate: noise estimates, BM3D/BM4D beat their input, --baselines selects, clear errors."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from batman import ckpt
from batman.cli import main
from batman.config import BatmanError, make_config
from batman.baselines import (BaselineISP, BM3DFrames, BM4DWindows, MeanBM3D, TemporalMean, Traditional,
                              check_baselines, difference_sigma, mad_sigma)
from batman.metrics import psnr
from batman.model.net import model_for


def smooth_image(h: int = 64, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[:h, :w] / max(h, w)
    return np.stack([0.3 + 0.4 * x, 0.5 + 0.2 * np.sin(3 * y), 0.2 + 0.3 * x * y], axis=-1)


def test_mad_sigma_recovers_white_noise_on_a_smooth_image():
    rng = np.random.default_rng(0)
    noisy = smooth_image(256, 256) + 0.05 * rng.standard_normal((256, 256, 3))
    assert mad_sigma(noisy) == pytest.approx(0.05, rel=0.05)
    assert mad_sigma(smooth_image(256, 256)) < 0.005


def test_difference_sigma_ignores_the_scene_and_a_moving_patch():
    rng = np.random.default_rng(1)
    scene = np.repeat(rng.random((128, 128, 1)), 3, axis=-1)  # texture that fools a one-frame estimate
    a, b = (scene + 0.02 * rng.standard_normal(scene.shape) for _ in range(2))
    b[:10, :10] = 1.0  # something moved
    assert difference_sigma(b, a) == pytest.approx(0.02, rel=0.08)
    assert mad_sigma(a) > 0.1  # what the texture does to the per-frame estimate


@pytest.fixture
def noisy_clip():
    """Packed (4, 32, 32) frames of a smooth scene with white noise, the pipeline and its clean output."""
    rng = np.random.default_rng(2)
    rgb = smooth_image(32, 32) * 0.5
    clean = np.stack([rgb[..., 0], rgb[..., 1], rgb[..., 1], rgb[..., 2]]).astype(np.float32)
    frames = [clean + 0.03 * rng.standard_normal(clean.shape).astype(np.float32) for _ in range(2)]
    isp = BaselineISP(np.ones(3), np.eye(3))
    return frames, isp, isp.process(clean)


def scores(peer, frames, truth) -> list[float]:
    outputs = [out for f in frames for out in peer.push(f)] + peer.flush()
    assert len(outputs) == len(frames) and outputs[0].shape == truth.shape
    return [psnr(out, truth) for out in outputs]


def test_bm3d_and_bm4d_beat_their_inputs_on_a_32x32_clip(noisy_clip):
    pytest.importorskip("bm3d")
    pytest.importorskip("bm4d")
    frames, isp, truth = noisy_clip
    traditional = np.mean(scores(Traditional(isp), frames, truth))
    assert np.mean(scores(BM3DFrames(isp), frames, truth)) > traditional + 3
    mean = scores(TemporalMean(isp), frames, truth)
    mean_bm3d = scores(MeanBM3D(isp), frames, truth)
    assert np.mean(mean_bm3d) > np.mean(mean) + 1 and mean_bm3d[-1] > mean[-1]
    # 2 frames, fewer than BM4D's 5x5x5 blocks need: mirrored in time, cut back
    assert np.mean(scores(BM4DWindows(isp), frames, truth)) > traditional + 3


def test_bm4d_windows_score_every_frame_in_order(noisy_clip, monkeypatch):
    """Windows of 2 over 5 frames: outputs come in bursts of 2, then 1 at the end, in frame order."""
    import batman.baselines as bl
    calls = []
    monkeypatch.setattr(bl, "bm4d_clip", lambda clip, sigma: calls.append(len(clip)) or clip + 1)
    frames, isp, _ = noisy_clip
    frames = (frames * 3)[:5]
    peer = BM4DWindows(isp, window=2)
    bursts = [len(peer.push(f)) for f in frames] + [len(peer.flush())]
    assert bursts == [0, 2, 0, 2, 0, 1] and calls == [2, 2, 1]
    peer = BM4DWindows(isp, window=2)
    out = [o for f in frames for o in peer.push(f)] + peer.flush()
    assert all(np.allclose(o, isp.process(f) + 1) for o, f in zip(out, frames))


def test_scale_two_denoises_before_repeating_pixels(noisy_clip):
    pytest.importorskip("bm3d")
    frames, isp, truth = noisy_clip
    out = BM3DFrames(isp, scale=2).push(frames[0])[0]
    assert out.shape == (64, 64, 3) and np.array_equal(out[::2, ::2], out[1::2, 1::2])


def test_unknown_or_missing_baseline_is_a_one_line_error(monkeypatch):
    with pytest.raises(BatmanError, match="unknown baseline 'nlm': choose from traditional, mean"):
        check_baselines(["traditional", "nlm"])
    monkeypatch.setitem(sys.modules, "bm4d", None)  # import bm4d now raises ImportError
    with pytest.raises(BatmanError, match=r"BM4D baseline needs the bm4d package: `make install`") as e:
        check_baselines(["mean", "bm4d"])
    assert "\n" not in str(e.value)
    assert check_baselines(["mean", "traditional", "mean"]) == ("mean", "traditional")
    assert check_baselines(["none"]) == ()
    with pytest.raises(BatmanError, match="baseline 'none' means no baselines: it cannot be given with 'mean'"):
        check_baselines(["none", "mean"])


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from batman.data.synth import synthesize
    root = tmp_path_factory.mktemp("syn")
    synthesize(root, videos=2, frames=3, size=(128, 192), seed=4)
    cfg = make_config("demo", {"model.hidden": 16, "model.fusion": 16})
    torch.manual_seed(0)
    ckpt.save_checkpoint(root / "m.pt", {"model": model_for(cfg).state_dict(), "config": cfg.to_json()})
    return root


@pytest.mark.parametrize("flag,methods", [
    ([], {"traditional", "temporal mean"}),
    (["--baselines", "bm3d", "traditional"], {"BM3D", "traditional"}),
    (["--baselines"], set()),
    (["--baselines", "none"], set()),
])
def test_baselines_flag_selects_the_table_rows(small_set, tmp_path, flag, methods):
    if "bm3d" in flag:
        pytest.importorskip("bm3d")
    out = tmp_path / "out"
    assert main(["evaluate", "--root", str(small_set), "--model", str(small_set / "m.pt"), "--frames", "2",
                 "--out", str(out), *flag]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["mean"]) == methods | {"m"}
    assert all(s["seconds_per_frame"] > 0 for s in report["mean"].values())
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "seconds_per_frame" in header.split(",") and "s/frame" in (out / "metrics.md").read_text()


def test_unknown_baseline_on_the_cli_exits_2_with_one_line(small_set, tmp_path, capsys):
    code = main(["evaluate", "--root", str(small_set), "--model", str(small_set / "m.pt"), "--out", str(tmp_path),
                 "--baselines", "vbm4d"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown baseline 'vbm4d'") and err.count("\n") == 1


@pytest.mark.parametrize("flag,key,value", [(["--ensemble", "2"], "ensemble", 2), (["--two-pass"], "two_pass", True),
                                            (["--bf16"], "bf16", True)])
def test_quality_flags_reach_the_model_and_the_report(small_set, tmp_path, flag, key, value):
    """An untrained model starts out per pixel (flip invariant): its weights are perturbed so that views differ."""
    saved = ckpt.load_checkpoint(small_set / "m.pt")
    torch.manual_seed(0)
    weights = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in saved["model"].items()}
    ckpt.save_checkpoint(tmp_path / "p.pt", {"model": weights, "config": saved["config"]})
    psnr = {}
    for name, extra in (("plain", []), ("flag", flag)):
        out = tmp_path / name
        assert main(["evaluate", "--root", str(small_set), "--model", str(tmp_path / "p.pt"), "--frames", "2",
                     "--out", str(out), "--baselines", *extra]) == 0
        report = json.loads((out / "metrics.json").read_text())
        psnr[name] = report["mean"]["p"]["psnr"]
    assert report[key] == value and psnr["plain"] != psnr["flag"]
    with pytest.raises(SystemExit):
        main(["evaluate", "--root", str(small_set), "--ensemble", "3"])
