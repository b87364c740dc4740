"""train --init: fine-tuning starts from a checkpoint's weights with a fresh optimiser at epoch 0, and
refuses a checkpoint of another architecture in one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from batman import ckpt
from batman.cli import main
from batman.config import BatmanError, make_config
from batman.model.net import model_for
from batman.train import train

TINY = {"data.crop": (32, 32), "data.frames": 4, "data.clips_per_video": 2, "model.hidden": 16, "model.fusion": 16,
        "train.steps_per_epoch": 2, "train.val_clips": 1, "train.threads": 1, "train.epochs": 1}


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    from batman.data.synth import synthesize
    root = tmp_path_factory.mktemp("syn")
    synthesize(root, videos=4, frames=4, size=(128, 192), seed=3)
    return root


def save_weights(path: Path, seed: int, **overrides) -> dict:
    """A checkpoint of freshly initialised weights drawn with `seed` (not the seed train uses)."""
    cfg = make_config("demo", {**TINY, **overrides})
    torch.manual_seed(seed)
    state = model_for(cfg).state_dict()
    ckpt.save_checkpoint(path, {"model": state, "config": cfg.to_json(), "optimizer": {"junk": 1}, "epoch": 7})
    return state


def test_init_loads_the_weights_and_starts_at_epoch_zero(syn, tmp_path):
    init = save_weights(tmp_path / "pre.pt", seed=123)
    settings = [f"{k}={v!r}".replace(" ", "") for k, v in {**TINY, "train.lr": 0.0, "train.weight_decay": 0.0}.items()]
    out = tmp_path / "run"
    assert main(["train", "--root", str(syn), "--preset", "demo", "--out", str(out), "--init", str(tmp_path / "pre.pt"),
                 "--set", *settings]) == 0
    last = ckpt.load_checkpoint(out / ckpt.LAST)
    assert last["epoch"] == 1 and last["step"] == 2  # its own epoch and steps, not the 7 epochs of pre.pt
    assert all(torch.equal(last["model"][k], v) for k, v in init.items())  # lr 0: still the initial weights
    fresh = model_for(make_config("demo", TINY)).state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in init.items() if v.is_floating_point())


def test_init_from_another_architecture_is_a_one_line_error(syn, tmp_path):
    save_weights(tmp_path / "unet.pt", seed=1, **{"model.name": "unet"})
    with pytest.raises(BatmanError, match=r"--init .*unet.pt holds a unet .* model, not the requested clstm") as e:
        train(make_config("demo", {**TINY, "data.root": str(syn)}), out=tmp_path / "run", init=tmp_path / "unet.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(BatmanError, match="no checkpoint at"):
        train(make_config("demo", {**TINY, "data.root": str(syn)}), out=tmp_path / "run", init=tmp_path / "none.pt")


def test_init_takes_the_checkpoints_model_settings_unless_set(tmp_path, capsys):
    """`train --init trained_model/... --preset pretrain` must fine-tune the shipped model, whose options the
    preset lacks: widening back to the preset's architecture would drop its denoiser and change its pipeline."""
    import json
    save_weights(tmp_path / "pre.pt", seed=1, **{"model.gate_evidence": True, "model.denoiser": 8})
    base = ["train", "--root", str(tmp_path), "--preset", "demo", "--init", str(tmp_path / "pre.pt"), "--dry-run",
            "--set", "model.hidden=16", "model.fusion=16"]
    assert main(base) == 0
    said, printed = capsys.readouterr().out.split("\n", 1)
    model = json.loads(printed)["model"]
    assert (model["gate_evidence"], model["denoiser"]) == (True, 8) and "model.denoiser=8" in said
    assert main(base + ["model.denoiser=0"]) == 0
    model = json.loads(capsys.readouterr().out.split("\n", 1)[1])["model"]
    assert (model["gate_evidence"], model["denoiser"]) == (True, 0)


def test_init_keeps_the_checkpoints_exposure_level_unless_set(tmp_path, capsys):
    """The level export's gain aims at is the one the weights learned, not one measured on the fine-tune's data."""
    import json
    save_weights(tmp_path / "pre.pt", seed=1, **{"data.exposure_level": 0.2125})
    base = ["train", "--root", str(tmp_path), "--preset", "demo", "--init", str(tmp_path / "pre.pt"), "--dry-run",
            "--set", "model.hidden=16", "model.fusion=16"]
    assert main(base) == 0
    said, printed = capsys.readouterr().out.split("\n", 1)
    assert json.loads(printed)["data"]["exposure_level"] == 0.2125 and "data.exposure_level=0.2125" in said
    assert main(base + ["data.exposure_level=0.3"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["data"]["exposure_level"] == 0.3 and "--init" not in printed


def test_init_from_a_run_folder_takes_its_best_epoch(tmp_path, capsys):
    import json
    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / "epoch_3_loss_0.1000.pt", seed=1, **{"model.denoiser": 8})
    save_weights(run / "epoch_5_loss_0.3000.pt", seed=1, **{"model.denoiser": 4})
    assert main(["train", "--root", str(tmp_path), "--preset", "demo", "--init", str(run), "--dry-run",
                 "--set", "model.hidden=16", "model.fusion=16"]) == 0
    said, printed = capsys.readouterr().out.split("\n", 1)
    assert "epoch_3_loss_0.1000.pt" in said and json.loads(printed)["model"]["denoiser"] == 8
    (tmp_path / "empty").mkdir()
    assert main(["train", "--root", str(tmp_path), "--preset", "demo", "--init", str(tmp_path / "empty"),
                 "--dry-run"]) != 0
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize("widen, adapted, tensor", [
    ({"model.encoder_mean": True}, "model.encoder_mean", "widened with zeros: ['encoder.conv1.weight']"),
    ({"model.gate_evidence": True, "model.denoiser": 4}, "model.gate_evidence, model.denoiser",
     "left initial: ['head.denoiser.enter.weight'"),
    ({"model.state_reset": True}, "model.state_reset", "left initial: ['reset.net.0.weight'"),
    ({"model.noise_input": True}, "model.noise_input", "widened with zeros: ['head.residual.0.weight']"),
    ({"model.align": "camera", "model.residual_rule": 0.05}, "model.align, model.residual_rule",
     "left initial: none")])
def test_init_widens_weights_to_a_related_model(tmp_path, widen, adapted, tensor):
    """model.encoder_mean and model.gate_evidence add input channels: the old filters are kept, the new ones
    start at zero; model.denoiser adds a network whose last conv starts at zero; model.noise_input adds a channel
    to the residual's first conv; model.align=camera adds no weights, and a release's settings (residual_rule)
    need no training. So the fine-tuned model
    starts out computing what the saved one did (model.state_reset: nearly, its memory kept at sigmoid(6))."""
    from batman.train import load_init_weights
    save_weights(tmp_path / "pre.pt", seed=5)
    old_cfg, cfg = make_config("demo", TINY), make_config("demo", {**TINY, **widen})
    old, new = model_for(old_cfg), model_for(cfg)
    ckpt.load_state_strict(old, ckpt.load_checkpoint(tmp_path / "pre.pt")["model"], tmp_path / "pre.pt")
    line = load_init_weights(new, tmp_path / "pre.pt", cfg)
    assert f"adapted to {adapted}:" in line and tensor in line
    x = torch.rand(1, 3, cfg.data.in_channels, 32, 32)
    if "model.align" in widen:  # a still scene: the camera does not move, the aligned model computes the same
        x = x[:, :1].expand(-1, 3, -1, -1, -1)
    with torch.no_grad():
        tolerance = 1e-3 if "model.state_reset" in widen else 1e-6
        assert torch.allclose(old.eval()(x)[0], new.eval()(x)[0], atol=tolerance)
    with pytest.raises(BatmanError, match="holds a clstm .*hidden=16.* not the requested"):  # other fields still refuse
        bigger = make_config("demo", {**TINY, "model.encoder_mean": True, "model.hidden": 8})
        load_init_weights(model_for(bigger), tmp_path / "pre.pt", bigger)


def test_init_widens_the_denoiser_keeping_what_it_computed(tmp_path):
    """model.denoiser 4 -> 8: the old channels keep their weights (a concatenation's parts matched part by
    part), the new ones read in through their initial weights and reach the old ones through zeros, so the
    wider model computes the same, and the new channels get gradients at once (no dead zero block)."""
    from batman.train import load_init_weights
    old_cfg, cfg = make_config("demo", {**TINY, "model.denoiser": 4}), make_config("demo", {**TINY, "model.denoiser": 8})
    torch.manual_seed(2)
    old = model_for(old_cfg)
    for name, p in old.named_parameters():
        if ".denoiser." in name:  # its last conv starts at zero: make every channel count
            torch.nn.init.normal_(p, 0.0, 0.2)
    ckpt.save_checkpoint(tmp_path / "pre.pt", {"model": old.state_dict(), "config": old_cfg.to_json()})
    new = model_for(cfg)
    line = load_init_weights(new, tmp_path / "pre.pt", cfg)
    assert "adapted to model.denoiser:" in line and "old channels kept: ['head.denoiser.enter.weight'" in line
    x = torch.rand(1, 3, cfg.data.in_channels, 32, 32)
    with torch.no_grad():
        before = old.eval()(x)[0]
    after = new.eval()(x)[0]
    assert before.abs().max() > 0 and torch.allclose(before, after, atol=1e-5)
    after.square().mean().backward()
    assert new.head.denoiser.out.weight.grad[:, 4:].abs().max() > 0
