"""The shipped default weights (trained_model/, `make pretrain`): they load, reproduce the output stored when
they were released, refuse a damaged file, and expose a user's dark burst correctly with no --gain."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from batman import ckpt
from batman.config import BatmanError
from batman.data.dataset import load_targets
from batman.data.drv import load_split
from batman.data.synth import synthesize
from batman.export import export

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images" / "kodak24"
pytestmark = pytest.mark.skipif(not ckpt.SHIPPED.is_file(), reason="no shipped weights (make pretrain)")


def test_shipped_weights_are_small_and_reproduce_their_reference_output():
    sidecar = json.loads(ckpt.SHIPPED.with_suffix(".json").read_text())
    assert ckpt.SHIPPED.stat().st_size <= 30e6
    model, cfg = ckpt.load_model(ckpt.SHIPPED)
    assert cfg.data.exposure_level > 0 and cfg.data.colour == "srgb"
    np.testing.assert_allclose(ckpt.reference_output(model), sidecar["reference_output"], atol=2e-3)


def test_release_over_earlier_weights_writes_a_matching_pair(tmp_path):
    """Releasing onto an existing file once failed: it read the new weights back against the old sidecar."""
    from batman.config import make_config
    from batman.model.net import model_for
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8})
    for seed in (1, 2):
        torch.manual_seed(seed)
        ckpt.save_checkpoint(tmp_path / "run.pt", {"model": model_for(cfg).state_dict(), "config": cfg.to_json()})
        out = ckpt.release_weights(tmp_path / "run.pt", tmp_path / "w.safetensors")
        model, _ = ckpt.load_model(out)  # checks the sha256
        sidecar = json.loads(out.with_suffix(".json").read_text())
        assert ckpt.reference_output(model) == sidecar["reference_output"]


def test_release_set_changes_settings_that_need_no_training_and_refuses_the_rest(tmp_path, capsys):
    from batman.cli import main
    from batman.config import make_config
    from batman.model.net import model_for
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8})
    ckpt.save_checkpoint(tmp_path / "run.pt", {"model": model_for(cfg).state_dict(), "config": cfg.to_json()})
    out = tmp_path / "w.safetensors"
    assert main(["release", str(tmp_path / "run.pt"), "--out", str(out), "--set", "model.residual_rule=0.08",
                 "model.align_to=filter"]) == 0
    assert ckpt.load_model(out)[1].model.residual_rule == 0.08
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["config"]["model"]["residual_rule"] == 0.08 and sidecar["config"]["model"]["align_to"] == "filter"
    assert sidecar["release_overrides"] == {"model.residual_rule": 0.08, "model.align_to": "filter"}
    before = out.read_bytes()
    for key in ("model.hidden=16", "model.norm=frozen", "data.bin=1"):  # a trained setting, fitting or not
        assert main(["release", str(tmp_path / "run.pt"), "--out", str(out), "--set", key]) == 2
        assert "only settings that need no training" in capsys.readouterr().err
    assert out.read_bytes() == before  # refused: the earlier release is intact


def test_a_damaged_weights_file_is_refused(tmp_path):
    copy = tmp_path / ckpt.SHIPPED.name
    shutil.copy(ckpt.SHIPPED, copy)
    shutil.copy(ckpt.SHIPPED.with_suffix(".json"), copy.with_suffix(".json"))
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(BatmanError, match="does not match the sha256"):
        ckpt.load_model(copy)


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="../shared/images not beside the checkout")
def test_a_dark_burst_of_held_out_photos_comes_out_as_bright_as_its_truth(tmp_path):
    """No --model, no --gain (the acceptance of the exposure work): bursts of held-out photos of ordinary
    brightness (kodim22, kodim24) from held-out cameras, 50-300x too dark; --gain changes the result.
    (A scene far brighter or darker than the training scenes is exposed towards their level: kodim20's
    bright sky gets 0.3x its true gain, see docs/MODEL_CARD.md.)"""
    root = tmp_path / "burst"
    synthesize(root, videos=2, frames=4, size=(512, 512), seed=3, images=PHOTOS, only=("kodim24*", "kodim22*"),
               cameras="heldout", test_only=True)
    for video in load_split(root, "test"):
        folder = root / "short" / video.id
        truth = next(load_targets(video))
        export(input_folder=folder, model=ckpt.SHIPPED, out=tmp_path / "auto", device="cpu")
        auto = iio.imread(tmp_path / "auto" / "frames" / video.id / "0004.png") / 255.0
        assert abs(auto.mean() / truth.mean() - 1) < 0.2, (auto.mean(), truth.mean())
        export(input_folder=folder, model=ckpt.SHIPPED, out=tmp_path / "dim", device="cpu", gain=10.0)
        dim = iio.imread(tmp_path / "dim" / "frames" / video.id / "0004.png") / 255.0
        assert dim.mean() < 0.8 * auto.mean()


def test_release_blend_averages_two_models_weights_and_refuses_another_architecture(tmp_path, capsys):
    """`release --blend OTHER --blend-weight W`: (1 - W) x the checkpoint + W x OTHER, in float16, the sidecar
    naming OTHER; a model of other trained settings is a one-line error and writes nothing."""
    from batman.cli import main
    from batman.config import make_config
    from batman.model.net import model_for
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8})
    states = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        states[seed] = model_for(cfg).state_dict()
        ckpt.save_checkpoint(tmp_path / f"run{seed}.pt", {"model": states[seed], "config": cfg.to_json()})
    out = tmp_path / "w.safetensors"
    assert main(["release", str(tmp_path / "run1.pt"), "--out", str(out), "--blend", str(tmp_path / "run2.pt"),
                 "--blend-weight", "0.25", "--set", "model.output_smoothing=4"]) == 0
    blended, _ = ckpt.read_weights(out)
    name = next(k for k, v in states[1].items() if v.is_floating_point() and not torch.equal(v, states[2][k]))
    expected = (0.75 * states[1][name] + 0.25 * states[2][name]).half().float()
    torch.testing.assert_close(blended[name], expected, atol=1e-3, rtol=1e-3)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["blend"] == {"with": str(tmp_path / "run2.pt"), "weight": 0.25}
    saving = make_config("demo", {"model.hidden": 8, "model.fusion": 8, "model.checkpointing": True})
    ckpt.save_checkpoint(tmp_path / "saving.pt", {"model": states[2], "config": saving.to_json()})
    assert main(["release", str(tmp_path / "run1.pt"), "--out", str(tmp_path / "w2.safetensors"), "--blend",
                 str(tmp_path / "saving.pt")]) == 0  # gradient checkpointing (the 1080 presets) trains, it is no weight
    wide = make_config("demo", {"model.hidden": 16, "model.fusion": 8})
    ckpt.save_checkpoint(tmp_path / "wide.pt", {"model": model_for(wide).state_dict(), "config": wide.to_json()})
    before = out.read_bytes()
    assert main(["release", str(tmp_path / "run1.pt"), "--out", str(out), "--blend", str(tmp_path / "wide.pt")]) == 2
    assert "only weights of one architecture can be averaged" in capsys.readouterr().err
    for bad in (["--blend-weight", "0"], ["--blend-weight", "1.5"]):
        assert main(["release", str(tmp_path / "run1.pt"), "--out", str(out), "--blend", str(tmp_path / "run2.pt"),
                     *bad]) == 2
    assert main(["release", str(tmp_path / "run1.pt"), "--out", str(out), "--blend-weight", "0.5"]) == 2
    assert "needs --blend" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_release_single_frame_joins_a_unet_and_refuses_another_model(tmp_path, capsys):
    """`release --single-frame UNET`: the U-Net's weights become the model's single-frame path (the sidecar names
    them, model.single_frame on); weights that are not a U-Net, or a model that has one, are a one-line error."""
    from batman.cli import main
    from batman.config import make_config
    from batman.model.net import model_for
    cfg = make_config("demo", {"model.hidden": 8, "model.fusion": 8, "model.head": "recursive"})
    unet_cfg = make_config("demo", {"model.name": "unet"})
    torch.manual_seed(1)
    ckpt.save_checkpoint(tmp_path / "run.pt", {"model": model_for(cfg).state_dict(), "config": cfg.to_json()})
    unet_state = model_for(unet_cfg).state_dict()
    ckpt.save_checkpoint(tmp_path / "unet.pt", {"model": unet_state, "config": unet_cfg.to_json()})
    out = tmp_path / "w.safetensors"
    assert main(["release", str(tmp_path / "run.pt"), "--out", str(out), "--single-frame", str(tmp_path / "unet.pt"),
                 "--set", "model.single_frame_gate=0.5"]) == 0
    state, released = ckpt.read_weights(out)
    assert released.model.single_frame and released.model.single_frame_gate == 0.5
    torch.testing.assert_close(state["single.out.0.weight"], unet_state["unet.out.0.weight"].half().float())
    assert json.loads(out.with_suffix(".json").read_text())["single_frame"] == str(tmp_path / "unet.pt")
    model, _ = ckpt.load_model(out)
    assert model.single is not None
    before = out.read_bytes()
    for other, why in ((tmp_path / "run.pt", "needs a U-Net"), (out, "needs a U-Net")):
        assert main(["release", str(tmp_path / "run.pt"), "--out", str(out), "--single-frame", str(other)]) == 2
        assert why in capsys.readouterr().err
    assert out.read_bytes() == before


def test_release_int8_halves_the_file_and_loads_within_half_a_step(tmp_path):
    """`release --int8`: the large tensors as int8 with a float16 scale per output channel; the file is about
    half the float16 one, each weight is back within half a quantisation step, the small ones are unchanged, the
    sidecar's reference output is the int8 model's, and damaged scales are a one-line error."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from batman.config import make_config
    from batman.model.net import model_for
    cfg = make_config("demo", {"model.head": "recursive"})
    torch.manual_seed(1)
    state = model_for(cfg).state_dict()
    ckpt.save_checkpoint(tmp_path / "run.pt", {"model": state, "config": cfg.to_json()})
    half = ckpt.release_weights(tmp_path / "run.pt", tmp_path / "half.safetensors")
    small = ckpt.release_weights(tmp_path / "run.pt", tmp_path / "int8.safetensors", int8=True)
    assert small.stat().st_size < 0.6 * half.stat().st_size
    loaded, _ = ckpt.read_weights(small)
    stored = load_file(small)
    assert set(loaded) == set(state)
    for key, value in state.items():
        if key + ckpt.INT8_SCALE in stored:
            step = stored[key + ckpt.INT8_SCALE].float().view((-1,) + (1,) * (value.dim() - 1))
            assert ((loaded[key] - value).abs() <= 0.5 * step + 1e-3 * value.abs()).all(), key
        elif value.is_floating_point():
            torch.testing.assert_close(loaded[key], value.half().float())
    model, _ = ckpt.load_model(small)
    sidecar = json.loads(small.with_suffix(".json").read_text())
    assert sidecar["reference_output"] == ckpt.reference_output(model)
    key = next(k for k in stored if k.endswith(ckpt.INT8_SCALE))
    stored[key] = stored[key][:1].repeat(2)  # scales of the wrong length
    with safe_open(str(small), "pt") as f:
        save_file(stored, tmp_path / "bad.safetensors", metadata=f.metadata())
    with pytest.raises(BatmanError, match="int8 scales do not fit"):
        ckpt.read_weights(tmp_path / "bad.safetensors")

