"""Motion-compensated recurrence (model.align=flow per pixel, model.align=camera one affine map per frame): motion
is followed, nothing moves when nothing moves."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from batman.config import BatmanError, ModelCfg
import math

from batman.model.align import RATINGS, CameraAlign, FlowAlign, correlation, descriptor, peak, warp
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
        flow = model.align.flow(descriptor(frame), state["align"], model.fusion(model.encoder(frame)))
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
        zs = [descriptor(f) for f in still]
        share = (peak(correlation(zs[1], zs[0], align.radius), align.radius, margin).abs().sum(1) > 0).float().mean()
        assert share == 1.0 if margin == 0 else share == 0.0
        flow = peak(correlation(descriptor(moving[:, 1]), descriptor(moving[:, 0]), align.radius), align.radius)
        assert (flow[:, 1, 2:-2, 2:-2] - SHIFT / 4).abs().median() < 0.1


def texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 4, h + 4, w + 4, generator=g), 5, 1)


def affine_view(image: torch.Tensor, angle: float = 0.0, zoom: float = 1.0) -> torch.Tensor:
    """image seen through a camera rotated by `angle` and zoomed by `zoom` about its centre."""
    c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
    theta = torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]])
    return F.grid_sample(image, F.affine_grid(theta, image.shape, align_corners=False), align_corners=False)


def camera_flow(first: torch.Tensor, second: torch.Tensor, rating: str = "bicubic") -> torch.Tensor:
    align = CameraAlign(rating=rating)
    _, previous = align(first, None, None)
    return align(second, None, previous)[0]


def test_camera_align_fits_a_pan_a_rotation_and_a_zoom():
    """The affine map of the camera's motion, in stride-4 pixels, within 0.1 of the true one on average."""
    flow = camera_flow(*scene(2).unbind(1))
    assert (flow[:, 1] - SHIFT / 4).abs().mean() < 0.1 and flow[:, 0].abs().mean() < 0.1
    image = texture(128, 128)[..., :128, :128]
    ys, xs = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    for angle, zoom in ((math.radians(3), 1.0), (0.0, 1.04)):
        c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
        flow = camera_flow(image, affine_view(image, angle, zoom))
        expected = torch.stack([s * xs + (c - 1) * ys, (c - 1) * xs - s * ys])  # where each pixel was before
        assert (flow[0] - expected)[:, 4:-4, 4:-4].abs().mean() < 0.1 < expected.abs().max()


def test_camera_align_fits_in_float32_under_bf16_autocast():
    """train.amp=bf16 (CPU or CUDA) must not move the camera map: matching runs in float32 whatever the autocast."""
    image = texture(128, 128)[..., :128, :128]
    moved = affine_view(image, math.radians(3), 1.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = camera_flow(image.bfloat16(), moved.bfloat16())
        z = descriptor(image.bfloat16())
    assert under.dtype == torch.float32 and z.dtype == torch.float32
    assert torch.allclose(under, camera_flow(image.bfloat16().float(), moved.bfloat16().float()), atol=1e-5)


@pytest.mark.parametrize("rating", RATINGS)
def test_camera_align_keeps_still_scenes_and_moving_objects_exactly_still(rating):
    """Noise on a still texture, or one small object crossing it: no camera motion, a flow of exactly zero. (On
    these 16 x 16 stride-4 frames a map fitted to the noise gains 0.014 by chance: the warped rating's margin rises
    on small frames.)"""
    g = torch.Generator().manual_seed(1)
    still = [scene(1)[:, 0] + 0.1 * torch.randn(1, 4, 64, 64, generator=g) for _ in range(3)]
    assert camera_flow(still[0], still[1], rating).abs().max() == 0
    assert camera_flow(still[1], still[2], rating).abs().max() == 0
    background, patch = texture(96, 96, seed=2)[..., :96, :96], texture(16, 16, seed=3)[..., :16, :16]
    frames = []
    for k in range(2):
        frame = background.clone()
        frame[..., 40:56, 20 + 8 * k:36 + 8 * k] = patch
        frames.append(frame + 0.02 * torch.randn(1, 4, 96, 96, generator=g))
    assert camera_flow(*frames, rating=rating).abs().max() == 0


def periodic_texture(h: int, w: int, shift_x: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A smooth random texture moved `shift_x` pixels to the right exactly (a phase ramp: no resampling blur)."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.fft.fft2(torch.rand(1, 4, h, w, generator=g))
    fy, fx = torch.fft.fftfreq(h).view(-1, 1), torch.fft.fftfreq(w).view(1, -1)
    lowpass = (fy ** 2 + fx ** 2 < 0.12 ** 2).float()
    return torch.fft.ifft2(spectrum * lowpass * torch.exp(-2j * math.pi * fx * shift_x)).real


def test_the_warped_rating_follows_a_slow_pan_the_bicubic_one_misses():
    """A pan of 0.8 input pixels (0.2 stride-4 pixels) a frame: the correlation volume read bicubically between
    whole displacements sags below its sharp peak, so the fitted map rates below no motion and is dropped;
    the reference warped by the map rates it above (the flow says where each pixel was: -0.2)."""
    g = torch.Generator().manual_seed(3)
    first, second = (periodic_texture(256, 256, shift) + 0.01 * torch.randn(1, 4, 256, 256, generator=g)
                     for shift in (0.0, 0.8))
    assert camera_flow(first, second, "bicubic").abs().max() == 0
    assert (camera_flow(first, second, "warped")[:, 1] + 0.2).abs().mean() < 0.05


@pytest.mark.parametrize("align_to", ["frame", "filter"])
def test_camera_aligned_model_has_the_plain_weights_and_follows_a_pan(align_to):
    """No parameters of its own (trained weights load as they are), the plain model's output on a still scene
    bit for bit, and no ghost on a pan where the plain filter averages shifted frames."""
    torch.manual_seed(0)
    plain = build_model(TINY, 4).eval()
    aligned = build_model(replace(TINY, align="camera", align_to=align_to), 4).eval()
    aligned.load_state_dict(plain.state_dict())  # strict: the same keys
    still = scene(1).repeat(1, 4, 1, 1, 1)
    x = scene(6)
    seen = (..., slice(8, -8), slice(4, 64 - 5 * SHIFT))
    with torch.no_grad():
        assert torch.equal(plain(still)[0], aligned(still)[0])
        errors = [(model(x)[1]["head"][0] - x[:, -1])[seen].abs().mean() for model in (plain, aligned)]
    assert errors[1] < 0.35 * errors[0]


def test_smoothed_output_restarts_where_the_camera_moves():
    """model.output_smoothing: on a pan every frame after the first moved, so the output is the unsmoothed model's
    bit for bit (the warped output would blur); on the same frames held still it is not."""
    torch.manual_seed(0)
    plain = build_model(replace(TINY, align="camera"), 4).eval()
    with torch.no_grad():
        plain.head.residual[-2].weight.normal_(0, 0.05)
    smooth = build_model(replace(TINY, align="camera", output_smoothing=1.0), 4).eval()
    smooth.load_state_dict(plain.state_dict())
    panned, still = scene(5), scene(1).repeat(1, 5, 1, 1, 1)
    with torch.no_grad():
        assert torch.equal(plain(panned)[0], smooth(panned)[0])
        assert not torch.equal(plain(still)[0][:, 1:], smooth(still)[0][:, 1:])


def test_smoothing_ramp_acts_at_the_start_of_a_video_not_after_a_camera_motion():
    """model.smoothing_ramp ramps S up over the video's first frames only: a pan, then the last frame held still,
    gives the smoothed model's output without the ramp bit for bit (after the pan's restarts the gate is open
    wider than 1/t, and a ramp counted from the restart would lag there)."""
    torch.manual_seed(0)
    plain = build_model(replace(TINY, align="camera", output_smoothing=4.0), 4).eval()
    with torch.no_grad():
        plain.head.residual[-2].weight.normal_(0, 0.05)
    ramp = build_model(replace(TINY, align="camera", output_smoothing=4.0, smoothing_ramp=True), 4).eval()
    ramp.load_state_dict(plain.state_dict())
    panned = scene(6)
    x = torch.cat([panned, panned[:, -1:].repeat(1, 4, 1, 1, 1)], 1)
    with torch.no_grad():
        assert torch.equal(plain(x)[0], ramp(x)[0])
        still = scene(1).repeat(1, 3, 1, 1, 1)
        assert not torch.equal(plain(still)[0][:, 1:], ramp(still)[0][:, 1:])


def test_matching_against_the_filter_state_keeps_a_noisy_pan_in_register():
    """align_to=filter: each frame is matched against the filter state (the denoised past, and where the state
    really sits) rather than the previous noisy frame, so the fit's errors do not add up: after 10 noisy frames
    of a 5-pixel-a-frame pan (1.25 stride-4 pixels) the state departs less from the last frame (measured: 0.012
    vs 0.017 mean absolute error; at 3, 6 and 7 pixels a frame and noise 0.02-0.1 too)."""
    g = torch.Generator().manual_seed(5)
    clean = scene(10, shift=5, h=96, w=96)
    x = clean + 0.05 * torch.randn(clean.shape, generator=g)
    seen = (..., slice(8, -8), slice(4, 96 - 10 * 5))
    errors = {}
    for align_to in ("frame", "filter"):
        torch.manual_seed(0)
        model = build_model(replace(TINY, align="camera", align_to=align_to), 4).eval()
        with torch.no_grad():
            errors[align_to] = (model(x)[1]["head"][0] - clean[:, -1])[seen].abs().mean()
    assert errors["filter"] < 0.85 * errors["frame"]


def test_matching_against_the_filter_state_needs_the_recursive_head():
    with pytest.raises(BatmanError, match="align_to=filter .* needs model.head=recursive"):
        build_model(replace(TINY, align="camera", align_to="filter", head="shuffle"), 4)
