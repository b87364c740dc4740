"""Training: the loss falls, early stop counts right, resume after SIGKILL is exact, DDP agrees, NaN stops."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from batman import ckpt
from batman.config import BatmanError, make_config
from batman.train import amp_settings, lr_factor, train

TINY = {  # a ResNet-18 on 32x32 crops of 4 frames: seconds per epoch on two cores
    "data.crop": (32, 32), "data.frames": 4, "data.clips_per_video": 2, "model.hidden": 16, "model.fusion": 16,
    "train.steps_per_epoch": 6, "train.val_clips": 2, "train.lr": 1e-3, "train.threads": 1,
}


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    from batman.data.synth import synthesize
    root = tmp_path_factory.mktemp("syn")
    synthesize(root, videos=5, frames=6, size=(128, 192), seed=3)
    return root


def tiny_cfg(root, **overrides):
    return make_config("demo", {"data.root": str(root), **TINY, **overrides})


def final_weights(folder: Path) -> dict:
    return ckpt.load_checkpoint(folder / ckpt.LAST)["model"]


@pytest.mark.parametrize("head,fall", [("recursive", 0.9), ("skip", 0.5)])
def test_loss_falls_and_run_folder_is_complete(syn, tmp_path, head, fall):
    """The recursive head starts at the temporal mean through a correct pipeline (the input is linear sRGB
    since data.colour=srgb), so it has less to fall than the skip head. Ten-step epochs are noisy: the
    last two epochs' mean is compared with the first."""
    result = train(tiny_cfg(syn, **{"train.epochs": 4, "train.steps_per_epoch": 10, "model.head": head}),
                   out=tmp_path)
    losses = [h["train_loss"] for h in result["history"]]
    assert np.mean(losses[-2:]) <= fall * losses[0], losses
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "log.csv", "loss.png", "last.pt"} <= names
    assert any(n.startswith("epoch_") for n in names)
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]


def test_amp_on_the_cpu_is_bf16_when_asked_and_float32_otherwise():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_settings("bf16", cpu) == (torch.bfloat16, False)
    assert amp_settings("auto", cpu) == (None, False) and amp_settings("off", cpu) == (None, False)
    with pytest.raises(BatmanError, match="train.amp=fp16 needs a CUDA device: on the CPU use train.amp=bf16"):
        amp_settings("fp16", cpu)
    assert amp_settings("fp16", cuda) == (torch.float16, True) and amp_settings("off", cuda) == (None, False)


def test_bf16_training_on_the_cpu_learns_and_keeps_float32_weights(syn, tmp_path):
    """Autocast computes in bf16; the weights, the optimiser and the checkpoint stay float32."""
    result = train(tiny_cfg(syn, **{"train.epochs": 3, "train.steps_per_epoch": 10, "train.amp": "bf16"}),
                   out=tmp_path)
    losses = [h["train_loss"] for h in result["history"]]
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) <= 0.95 * losses[0], losses
    assert all(t.dtype == torch.float32 for t in final_weights(tmp_path).values() if t.is_floating_point())


def test_lr_zero_stops_after_exactly_patience_epochs(syn, tmp_path):
    result = train(tiny_cfg(syn, **{"train.lr": 0.0, "train.epochs": 20, "train.patience": 2}), out=tmp_path)
    assert result["stopped"] == "early stop"
    assert result["epochs"] == 1 + 2  # the first epoch sets the best, then `patience` without improvement


def test_non_finite_loss_stops_clearly_without_saving(syn, tmp_path):
    with pytest.raises(BatmanError, match="training loss became (nan|inf)"):
        train(tiny_cfg(syn, **{"train.lr": 1e30, "train.epochs": 3}), out=tmp_path)
    assert not list(tmp_path.glob("epoch_*.pt"))


def test_lr_schedules():
    assert [lr_factor(s, "const", 0, 100) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, "const", 4, 100) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, "cosine", 10, 110) for s in range(110)]
    assert cosine[:10] == [pytest.approx((s + 1) / 10) for s in range(10)]
    assert cosine[10] == 1.0 and cosine[60] == pytest.approx(0.5) and cosine[-1] < 1e-3
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    with pytest.raises(BatmanError, match="train.schedule must be const or cosine, not 'linear'"):
        lr_factor(0, "linear", 0, 10)


def test_cosine_schedule_in_training_and_the_default_stays_constant(syn, tmp_path):
    quick = {"train.epochs": 2, "train.steps_per_epoch": 4, "train.patience": 5}
    lrs = [h["lr"] for h in train(tiny_cfg(syn, **quick, **{"train.schedule": "cosine"}), out=tmp_path / "cos")["history"]]
    assert lrs == [pytest.approx(1e-3 * lr_factor(s, "cosine", 0, 8)) for s in (4, 8)]  # the next step's lr
    assert make_config("demo").train.schedule == "const" and make_config("demo").train.warmup_steps == 0


def tensorboard_events(folder: Path) -> dict:
    """{tag: [(step, value)]} of the scalars and {tag: count} of the images TensorBoard logged in a folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {"scalars": scalars, "images": {tag: len(events.Images(tag)) for tag in events.Tags()["images"]}}


def test_tensorboard_logs_loss_lr_validation_and_images(syn, tmp_path):
    pytest.importorskip("tensorboard")
    quick = {"train.epochs": 2, "train.steps_per_epoch": 3, "train.patience": 5, "train.schedule": "cosine"}
    result = train(tiny_cfg(syn, **quick), out=tmp_path)
    logged = tensorboard_events(tmp_path / "tensorboard")
    scalars = logged["scalars"]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 7))
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([1e-3 * lr_factor(s, "cosine", 0, 6) for s in range(6)])
    assert [v for _, v in scalars["val/loss"]] == pytest.approx([h["val_loss"] for h in result["history"]])
    assert [s for s, _ in scalars["val/psnr_db"]] == [3, 6]
    assert logged["images"]["val/clip0_output_truth"] == 2  # one per epoch (this set has one validation video)
    assert (tmp_path / "log.csv").is_file() and (tmp_path / "loss.png").is_file()


def test_without_tensorboard_training_logs_csv_and_plot_only(syn, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    train(tiny_cfg(syn, **{"train.epochs": 1, "train.steps_per_epoch": 2}), out=tmp_path)
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "log.csv").is_file() and (tmp_path / "loss.png").is_file()
    assert "TensorBoard logging off" in capsys.readouterr().out


def run_train_subprocess(root, out, overrides, env_extra=None) -> subprocess.Popen:
    sets = [f"{k}={v!r}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "batman", "train", "--root", str(root), "--preset", "demo", "--out", str(out),
           "--resume", "auto", "--set", *sets]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env_extra or {})})


def test_sigkill_then_resume_auto_equals_uninterrupted(syn, tmp_path):
    overrides = {**TINY, "data.root": str(syn), "train.epochs": 3, "train.save_every": 2,
                 "train.deterministic": True}
    reference = tmp_path / "reference"
    train(make_config("demo", overrides), out=reference)

    killed = tmp_path / "killed"
    proc = run_train_subprocess(syn, killed, {k: v for k, v in overrides.items() if k != "data.root"})
    deadline = time.time() + 240
    while not (killed / ckpt.LAST).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / ckpt.LAST).exists(), proc.stderr.read()
    interrupted_at = ckpt.load_checkpoint(killed / ckpt.LAST)["step"]
    assert interrupted_at < 3 * TINY["train.steps_per_epoch"]

    train(make_config("demo", overrides), out=killed, resume="auto")
    a, b = final_weights(reference), final_weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_corrupt_last_falls_back_to_epoch_checkpoint(syn, tmp_path, capsys):
    cfg = tiny_cfg(syn, **{"train.epochs": 2})
    train(cfg, out=tmp_path)
    (tmp_path / ckpt.LAST).write_bytes(b"not a checkpoint")
    result = train(make_config("demo", {**TINY, "data.root": str(syn), "train.epochs": 3}), out=tmp_path,
                   resume="auto")
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "corrupt" in err and result["epochs"] == 3


def test_resume_refuses_another_model(syn, tmp_path):
    train(tiny_cfg(syn, **{"train.epochs": 1}), out=tmp_path)
    with pytest.raises(BatmanError, match="holds a clstm"):
        train(tiny_cfg(syn, **{"train.epochs": 2, "model.name": "unet"}), out=tmp_path, resume="auto")


def test_each_run_has_its_own_folder_and_resume_auto_finds_the_same_config(syn, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick = {"train.epochs": 1, "train.steps_per_epoch": 2}
    first = train(tiny_cfg(syn, **quick), resume="auto", label="demo")["out"]
    other = train(tiny_cfg(syn, **quick, **{"train.lr": 5e-4}), resume="auto", label="demo")["out"]
    assert first != other and first.parent == other.parent == ckpt.RUNS
    assert first.name.startswith("demo-clstm-") and ckpt.best_checkpoint(other).parent == other
    capsys.readouterr()
    again = train(tiny_cfg(syn, **quick), resume="auto", label="demo")
    assert again["out"] == first and again["epochs"] == 1
    assert f"resumed from {first / ckpt.LAST}" in capsys.readouterr().out
    with pytest.raises(BatmanError, match="already holds a training run.*--resume auto"):
        train(tiny_cfg(syn, **quick), out=first)


def test_torchrun_two_ranks_agree_and_write_once(syn, tmp_path):
    """No --out: rank 0 names the timestamped run folder and tells the other rank, so there is one."""
    torchrun = Path(sys.executable).with_name("torchrun")
    sets = [f"{k}={v!r}" for k, v in {**TINY, "train.epochs": 2, "train.threads": 1}.items()]
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "batman", "train",
                           "--root", str(syn), "--preset", "demo", "--set", *sets],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((tmp_path / ckpt.RUNS).iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("demo-clstm-"), runs
    out = runs[0]
    assert "weights identical on all 2 ranks" in proc.stderr + proc.stdout
    assert len(list(out.glob("epoch_*.pt"))) <= 2 and (out / "log.csv").read_text().count("\n") == 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("epoch_", "tensorboard"))) == \
        ["config.json", "last.pt", "log.csv", "loss.png"]


def test_filter_loss_adds_the_filter_states_error_to_the_training_loss():
    """train.filter_weight w: the loss is the output's L1 + w * L1(filter state through the pipeline, truth),
    so the filter must average where the scene is still instead of leaving the residual all the noise."""
    from batman.config import Config, apply_overrides
    from batman.model.net import model_for
    from batman.train import train_step
    model_keys = {k: v for k, v in TINY.items() if k.startswith("model.")}
    truth = torch.rand(1, 1, 3, 32, 32).expand(1, 4, 3, 32, 32)
    batch = {"input": truth[:, :, [0, 1, 1, 2]] ** 2.2 + 0.1 * torch.randn(1, 4, 4, 32, 32), "target": truth}
    losses = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = apply_overrides(Config(), {**model_keys, "train.filter_weight": w})
        model = model_for(cfg)
        torch.nn.init.constant_(model.head.gate.bias, 0.0)  # half open: the base is not the plain mean
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses[w] = train_step(model, batch, opt, None, cfg, torch.device("cpu"), None)
    with torch.no_grad():
        _, _, base = model(batch["input"], with_base=True)
    expected = 2.0 * torch.nn.functional.l1_loss(base, truth).item()
    assert expected > 0.01 and abs(losses[2.0] - losses[0.0] - expected) < 1e-4 * max(1.0, expected)


def test_filter_loss_is_refused_for_models_without_a_filter(syn, tmp_path):
    with pytest.raises(BatmanError, match="train.filter_weight needs"):
        train(tiny_cfg(syn, **{"train.filter_weight": 1.0, "model.name": "unet"}), out=tmp_path)


def test_train_dynamic_adds_the_moving_videos_with_their_per_frame_truths(tmp_path):
    """data.train_dynamic: synth's moving videos (a truth per frame) join the training clips, never validation."""
    from batman.data.synth import synthesize
    from batman.train import Dist, build_data
    synthesize(tmp_path, videos=5, frames=6, size=(128, 192), seed=3, dynamic=2)
    built = {flag: build_data(tiny_cfg(tmp_path, **{"data.train_dynamic": flag}), Dist()) for flag in (False, True)}
    ids = {flag: {v.id for v in train_set.videos} for flag, (train_set, *_) in built.items()}
    val_clips = {flag: len(val_loader) for flag, (*_, val_loader) in built.items()}
    assert not any(i.startswith("M") for i in ids[False])
    assert ids[True] == ids[False] | {"M0000", "M0001"} and val_clips[True] == val_clips[False]
    moving = next(v for v in built[True][0].videos if v.id == "M0000")
    assert len(moving.targets) == 6  # one truth per frame


def test_val_dynamic_holds_the_last_moving_videos_out_of_training_for_validation(tmp_path):
    """data.val_dynamic: epoch selection sees motion, on moving videos training never drew; dynamic_repeat
    draws each remaining moving video's clips that many times per epoch."""
    from batman.data.synth import synthesize
    from batman.train import Dist, build_data
    synthesize(tmp_path, videos=5, frames=6, size=(128, 192), seed=3, dynamic=3)
    cfg = tiny_cfg(tmp_path, **{"data.train_dynamic": True, "data.val_dynamic": 1, "data.dynamic_repeat": 2})
    train_set, _, _, val_loader = build_data(cfg, Dist())
    trained = [v.id for v in train_set.videos]
    validated = [val_loader.dataset.dataset.videos[i].id for i in val_loader.dataset.indices]
    assert "M0002" not in trained and trained.count("M0000") == trained.count("M0001") == 2
    assert validated[-1] == "M0002" and [i for i in validated if i.startswith("M")] == ["M0002"]
    assert val_loader.dataset[len(validated) - 1]["target"].shape[0] == 4  # its own truth per frame
    with pytest.raises(BatmanError, match="data.val_dynamic=4: .* has 3 dynamic videos"):
        build_data(tiny_cfg(tmp_path, **{"data.val_dynamic": 4}), Dist())


def test_extra_dynamic_trains_on_another_data_sets_moving_videos(tmp_path):
    from batman.data.synth import synthesize
    from batman.train import Dist, build_data
    synthesize(tmp_path / "main", videos=5, frames=6, size=(128, 192), seed=3)
    synthesize(tmp_path / "cam", videos=0, frames=6, size=(128, 192), seed=4, dynamic=2, motion_kinds="rotate")
    train_set, *_ = build_data(tiny_cfg(tmp_path / "main", **{"data.extra_dynamic": str(tmp_path / "cam")}), Dist())
    extra = [v for v in train_set.videos if v.id.startswith("M")]
    assert [v.id for v in extra] == ["M0000", "M0001"] and all(len(v.targets) == 6 for v in extra)
    assert train_set[len(train_set) - 1]["target"].shape[0] == 4  # a clip of a moving video: a truth per frame


def test_extra_static_trains_on_every_static_video_of_another_data_set(tmp_path):
    from batman.data.synth import synthesize
    from batman.train import Dist, build_data
    synthesize(tmp_path / "main", videos=5, frames=6, size=(128, 192), seed=3)
    synthesize(tmp_path / "bright", videos=3, frames=6, size=(128, 192), seed=4, ratio=(5.0, 20.0))
    cfg = tiny_cfg(tmp_path / "main", **{"data.extra_static": str(tmp_path / "bright")})
    train_set, _, _, val_loader = build_data(cfg, Dist())
    extra = [v for v in train_set.videos if str(tmp_path / "bright") in str(v.frames[0])]
    assert sorted(v.id for v in extra) == ["0001", "0002", "0003"]  # its train, val and test videos
    assert not any(str(tmp_path / "bright") in str(v.frames[0]) for v in val_loader.dataset.dataset.videos)


def test_extra_data_sets_are_comma_lists(tmp_path):
    from batman.data.synth import synthesize
    from batman.train import Dist, build_data
    synthesize(tmp_path / "main", videos=5, frames=6, size=(128, 192), seed=3)
    for i, name in enumerate(("a", "b")):
        synthesize(tmp_path / name, videos=3, frames=6, size=(128, 192), seed=4 + i, dynamic=1)
    both = f"{tmp_path / 'a'}, {tmp_path / 'b'}"
    train_set, *_ = build_data(tiny_cfg(tmp_path / "main", **{"data.extra_static": both,
                                                               "data.extra_dynamic": both}), Dist())
    sources = [v.frames[0].parent.parent.parent.name for v in train_set.videos]
    assert sources.count("a") == sources.count("b") == 4  # each set's three static videos and its moving one


def test_short_share_trains_that_share_of_steps_on_each_clips_first_frames():
    """data.short_frames / short_share: a clip of two lengths. The choice is a function of (seed, step) only,
    so that a resumed run makes the same one; the short batch is the long one's first frames, not another."""
    from batman.config import Config, apply_overrides
    from batman.train import shorter_clips
    batch = {"input": torch.randn(2, 6, 4, 8, 8), "target": torch.rand(2, 6, 3, 8, 8), "id": ["a", "b"]}
    cfg = apply_overrides(Config(), {"data.frames": 6, "data.short_frames": 2, "data.short_share": 0.3})
    lengths = [shorter_clips(batch, cfg, step)["input"].shape[1] for step in range(400)]
    assert set(lengths) == {2, 6} and 0.24 < lengths.count(2) / 400 < 0.36
    assert lengths == [shorter_clips(batch, cfg, step)["target"].shape[1] for step in range(400)]
    short = shorter_clips(batch, cfg, lengths.index(2))
    assert torch.equal(short["input"], batch["input"][:, :2]) and short["id"] == batch["id"]
    off = apply_overrides(Config(), {"data.frames": 6})
    assert all(shorter_clips(batch, off, step) is batch for step in range(20))


@pytest.mark.parametrize("short", [0, 6, 9])
def test_short_frames_must_be_shorter_than_the_clip(short):
    from batman.config import Config, apply_overrides
    with pytest.raises(BatmanError, match="data.short_frames"):
        apply_overrides(Config(), {"data.frames": 6, "data.short_frames": short, "data.short_share": 0.5})


def test_psnr_loss_is_minus_the_mean_frame_psnr_and_weighs_clean_frames_up():
    """train.loss=psnr is the figure evaluate averages (metrics.psnr per frame), negated; unlike L2, a frame's
    gradient grows as its error shrinks, so a nearly clean frame is not drowned out by a noisy one."""
    from batman.metrics import psnr
    from batman.train import reconstruction_loss
    torch.manual_seed(0)
    truth = torch.rand(2, 3, 3, 16, 16)
    out = (truth + torch.tensor([0.02, 0.05, 0.1]).view(1, 3, 1, 1, 1) * torch.randn_like(truth)).clamp(0, 1)
    expected = np.mean([psnr(out[b, t].numpy(), truth[b, t].numpy()) for b in range(2) for t in range(3)])
    # PSNR_FLOOR_MSE (1e-6) moves a 0.02-noise frame's 34 dB by 0.02 dB
    assert reconstruction_loss(out, truth, "psnr").item() == pytest.approx(-expected, abs=0.01)
    grads = {}
    for kind in ("psnr", "l2"):
        x = out.clone().requires_grad_(True)
        reconstruction_loss(x, truth, kind).backward()
        per_frame = x.grad.abs().flatten(2).mean(-1)  # (B, T)
        grads[kind] = (per_frame[:, 0] / per_frame[:, 2]).mean().item()  # clean frame over noisy frame
    assert grads["l2"] < 0.5 < 2 < grads["psnr"], grads  # about 0.2 and 5: |error| and 1 / |error|


def test_a_psnr_loss_run_keeps_and_picks_its_best_epoch_by_psnr(syn, tmp_path):
    """Its validation loss is minus the PSNR (negative): checkpoints are still found, pruned and ranked."""
    result = train(tiny_cfg(syn, **{"train.epochs": 3, "train.loss": "psnr", "train.keep": 2}), out=tmp_path)
    losses = [h["val_loss"] for h in result["history"]]
    # frame PSNRs averaged (the loss) lie above the clip's PSNR of its pooled MSE (Jensen), and near it
    assert all(-h["val_psnr"] - 1.0 < h["val_loss"] <= -h["val_psnr"] + 1e-3 for h in result["history"])
    kept = ckpt.epoch_checkpoints(tmp_path)
    assert len(kept) == min(2, len({round(v, 4) for v in losses})) and all(v < 0 for v, _, _ in kept)
    assert ckpt.best_checkpoint(tmp_path).name == ckpt.checkpoint_name(int(np.argmin(losses)) + 1, min(losses))
