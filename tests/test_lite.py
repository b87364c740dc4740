"""model.size=lite: the config it implies, its cost per 720p frame, streaming, and that it learns."""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from batman.config import SIZES, BatmanError, ModelCfg, make_config
from batman.model.lite import LiteEncoder
from batman.model.net import model_for

LITE_GFLOP_720P = 15.0  # issue 15: <= 15 GFLOP per 1280x720 output frame


pytestmark = pytest.mark.usefixtures("one_thread")


def gflop_per_frame(cfg, h=720, w=1280) -> float:
    """FLOPs of one warm `step` on the meta device (shapes only: instant at any size)."""
    model = model_for(cfg).eval().to("meta")
    frame = torch.zeros(1, cfg.data.in_channels, h, w, device="meta")
    with torch.no_grad():
        _, state = model.step(frame, None)
        with FlopCounterMode(display=False) as counter:
            model.step(frame, state)
    return counter.get_total_flops() / 1e9


def test_size_sets_its_widths_and_explicit_values_win():
    lite = make_config("", {"model.size": "lite"}).model
    assert (lite.fusion, lite.hidden, lite.layers, lite.head_width) == (32, 16, 1, 8)
    mixed = make_config("", {"model.hidden": 24, "model.size": "lite"}).model
    assert mixed.hidden == 24 and mixed.fusion == 32
    back = make_config("", {"model.size": "default"}).model
    assert back == ModelCfg()  # the default size's widths are ModelCfg's own defaults
    defaults = {f.name: f.default for f in fields(ModelCfg)}
    assert all(defaults[k.split(".")[1]] == v for k, v in SIZES["default"].items())
    with pytest.raises(BatmanError, match="config key model.size: expected one of default, lite, got 'huge'"):
        make_config("", {"model.size": "huge"})


def test_a_saved_lite_config_round_trips():
    cfg = make_config("", {"model.size": "lite", "model.hidden": 24})
    assert type(cfg).from_json(cfg.to_json()) == cfg


def test_lite_costs_at_most_15_gflop_per_720p_frame_and_far_less_than_default():
    lite, default = gflop_per_frame(make_config("", {"model.size": "lite"})), gflop_per_frame(make_config())
    assert lite <= LITE_GFLOP_720P
    assert default > 8 * lite


def test_lite_encoder_has_the_encoder_contract():
    enc = LiteEncoder(4)
    feats = enc(torch.rand(2, 4, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 96 // s) for c, s in zip(LiteEncoder.channels,
                                                                                       (4, 8, 16, 32))]
    with pytest.raises(BatmanError, match="lite encoder cannot use"):
        LiteEncoder(4, weights="resnet18.pth")


def test_lite_clip_equals_frame_by_frame_on_odd_sizes():
    torch.manual_seed(0)
    model = model_for(make_config("", {"model.size": "lite"})).eval()
    x = torch.rand(1, 4, 4, 45, 70)
    with torch.no_grad():
        whole, _ = model(x)
        state, steps = None, []
        for t in range(4):
            y, state = model.step(x[:, t], state)
            steps.append(y)
    assert whole.shape == (1, 4, 3, 45, 70)
    assert (whole - torch.stack(steps, 1)).abs().max() < 1e-5


def test_lite_learns_a_fixed_clip():
    torch.manual_seed(0)
    model = model_for(make_config("", {"model.size": "lite"})).train()
    x, target = torch.rand(2, 3, 4, 32, 32) * 0.1, torch.rand(2, 3, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = (model(x)[0] - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
