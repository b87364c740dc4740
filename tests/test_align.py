"""Motion-compensated recurrence (model.align=flow): a translation is followed, nothing moves when nothing moves."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from batman.config import ModelCfg
from batman.model.align import FlowAlign, warp
from batman.model.net import build_model, pad_to_multiple

TINY = ModelCfg(hidden=16, fusion=16, layers=1, head_width=8)
SHIFT = 8  # input pixels to the left per frame: 2 pixels at the features' stride 4


def scene(t: int, shift: int = SHIFT, h: int = 64, w: int = 64) -> torch.Tensor:
    """(1, t, 4, h, w): a smooth random texture panning `shift` pixels per frame (frame k+1 = frame k
    seen `shift` pixels further right)."""
    g = torch.Generator().manual_seed(0)
    big = F.avg_pool2d(torch.rand(1, 4, h + 4, w + shift * t + 4, generator=g), 5, 1)
    return torch.stack([big[..., :h, k * shift:k * shift + w] for k in range(t)], 1)


def test_warp_by_a_whole_pixel_flow_shifts_exactly():
    x = torch.rand(1, 3, 8, 12)
    flow = torch.zeros(1, 2, 8, 12)
    flow[:, 1] = 2.0
    assert torch.allclose(warp(x, flow)[..., :-2], x[..., 2:], atol=1e-6)
    coarse = torch.zeros(1, 2, 2, 3)
    coarse[:, 0] = 1.0  # one coarse pixel = 4 fine ones
    assert torch.allclose(warp(x, coarse)[..., :4, :], x[..., 4:, :], atol=1e-6)


def test_untrained_flow_follows_a_translation_and_warps_the_filter_state():
    torch.manual_seed(0)
    model = build_model(replace(TINY, align="flow"), 4).eval()
    x = scene(2)
    with torch.no_grad():
        _, state = model.step(x[:, 0])
        frame = pad_to_multiple(x[:, 1])
        flow = model.align.flow(model.align.descriptor(frame), state["align"], model.fusion(model.encoder(frame)))
        m = warp(state["head"][0], flow)
    inner = flow[..., 2:-2, 2:-2]  # stride 4: 8 input pixels from the borders
    assert (inner[:, 1] - SHIFT / 4).abs().median() < 0.1 and inner[:, 0].abs().median() < 0.1
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    before = (state["head"][0] - x[:, 1])[interior].abs().mean()
    after = (m - x[:, 1])[interior].abs().mean()
    assert after < 0.3 * before  # the warped filter state (frame 0) lines up with frame 1 (measured: 0.16)


def test_aligned_filter_does_not_ghost_on_a_pan_where_the_plain_one_does():
    torch.manual_seed(0)
    plain = build_model(TINY, 4).eval()
    aligned = build_model(replace(TINY, align="flow"), 4).eval()
    aligned.load_state_dict(plain.state_dict(), strict=False)  # same weights; align has only a zero conv
    x = scene(6)
    seen = (..., slice(8, -8), slice(4, 64 - 5 * SHIFT))  # in view in all 6 frames (the rest enters from the right)
    with torch.no_grad():
        errors = [(model(x)[1]["head"][0] - x[:, -1])[seen].abs().mean() for model in (plain, aligned)]
    assert errors[1] < 0.35 * errors[0]  # plain: an average of 6 shifted frames; aligned follows (measured 0.24)


def test_still_scene_aligned_is_close_to_plain_and_none_adds_no_parameters():
    torch.manual_seed(0)
    plain = build_model(TINY, 4).eval()
    aligned = build_model(replace(TINY, align="flow"), 4).eval()
    aligned.load_state_dict(plain.state_dict(), strict=False)
    assert not any(k.startswith("align") for k in plain.state_dict()) and plain.align is None
    x = scene(1).repeat(1, 4, 1, 1, 1)
    with torch.no_grad():
        # the parabola's sub-pixel step is not exactly 0 on a still scene: a slight resampling blur
        assert (plain(x)[0] - aligned(x)[0]).abs().mean() < 0.01
        stepped, state = aligned.step(x[:, 0])
        for t in range(1, 4):
            stepped, state = aligned.step(x[:, t], state)
    assert (stepped - aligned(x)[0][:, -1]).abs().max() < 1e-5 and set(state) == {"temporal", "head", "align"}


def test_flow_head_is_a_zero_refinement_of_the_correlation():
    align = FlowAlign(8)
    flow, z = align(torch.rand(1, 4, 16, 16), torch.rand(1, 8, 4, 4), None)
    assert align.refine.weight.abs().sum() == 0 and flow is None and z.shape == (1, 9, 4, 4)
    assert torch.allclose(z.norm(dim=1), torch.ones(1, 4, 4), atol=1e-4)


def test_margin_keeps_a_noisy_still_scene_still_and_a_translation_moving():
    """Two noisy frames of a still texture: without a margin every pixel gets some (sub-pixel or random) flow,
    so a static scene's state would jitter; with one the flow is zero there, while a translation, whose best
    match beats no motion by far, is still followed."""
    g = torch.Generator().manual_seed(1)
    still = [scene(1)[:, 0] + 0.05 * torch.randn(1, 4, 64, 64, generator=g) for _ in range(2)]
    moving = scene(2)
    for margin in (0.0, 0.3):
        align = FlowAlign(8, margin=margin)
        zs = [align.descriptor(f) for f in still]
        share = (align.peak(align.correlation(zs[1], zs[0])).abs().sum(1) > 0).float().mean()
        assert share == 1.0 if margin == 0 else share == 0.0
        flow = align.peak(align.correlation(align.descriptor(moving[:, 1]), align.descriptor(moving[:, 0])))
        assert (flow[:, 1, 2:-2, 2:-2] - SHIFT / 4).abs().median() < 0.1
