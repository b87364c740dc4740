"""The networks: ConvLSTM equations, clip == frame-by-frame streaming, causality, sizes, norms,
encoder weights, gradient checkpointing, channels_last, the registry. Tiny sizes, CPU."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from batman.ckpt import load_state_widened
from batman.config import BatmanError, ModelCfg, make_config
from batman.model.conv3d import CausalConv3d
from batman.model.convlstm import ConvLSTM, ConvLSTMCell
from batman.model.encoder import Encoder
from batman.model.net import MODELS, build_model, describe_models, detach_state
from batman.model.residual import (NOISE_SPREAD, noise_channel, residual_block_cap_weight, residual_cap_weight,
                                   residual_weight)

TINY = ModelCfg(hidden=16, fusion=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelCfg:
    return replace(TINY, **kw)


def clip(b=1, t=4, c=4, h=64, w=64, seed=0) -> torch.Tensor:
    return torch.rand(b, t, c, h, w, generator=torch.Generator().manual_seed(seed))


def run_steps(model, x, state=None):
    outs = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        outs.append(y)
    return torch.stack(outs, 1), state


# --- ConvLSTM -------------------------------------------------------------------------------

def test_convlstm_cell_matches_the_equations():
    torch.manual_seed(0)
    cell = ConvLSTMCell(3, 5, kernel=3)
    x, h, c = torch.randn(2, 3, 7, 9), torch.randn(2, 5, 7, 9), torch.randn(2, 5, 7, 9)
    w, b = cell.conv.weight.detach().clone(), cell.conv.bias.detach().clone()
    gates = {}
    for n, name in enumerate("ifog"):  # one kernel per gate, applied to [x, h]
        gates[name] = F.conv2d(torch.cat([x, h], 1), w[5 * n:5 * (n + 1)], b[5 * n:5 * (n + 1)], padding=1)
    i, f, o, g = (torch.sigmoid(gates["i"]), torch.sigmoid(gates["f"]), torch.sigmoid(gates["o"]),
                  torch.tanh(gates["g"]))
    c_ref = f * c + i * g
    h_ref = o * torch.tanh(c_ref)
    out, (h_new, c_new) = cell(x, (h, c))
    assert torch.allclose(c_new, c_ref, atol=1e-6) and torch.allclose(h_new, h_ref, atol=1e-6)
    assert out is h_new


def test_convlstm_stack_starts_from_zeros_and_feeds_layers_upwards():
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 4, layers=2, kernel=3)
    x = torch.randn(1, 3, 6, 6)
    y, state = lstm(x, None)
    zeros = torch.zeros(1, 4, 6, 6)
    h0, _ = lstm.cells[0](x, (zeros, zeros))
    h1, _ = lstm.cells[1](h0, (zeros, zeros))
    assert torch.allclose(y, h1) and len(state) == 2 and state[1][0].shape == (1, 4, 6, 6)


# --- streaming and causality ----------------------------------------------------------------

@pytest.mark.parametrize("cfg", [tiny(name="clstm"), tiny(name="clstm", mean_input=True, head="shuffle"),
                                 tiny(name="clstm", mean_input=True), tiny(name="conv3d"),
                                 tiny(name="conv3d", t_kernel=2, mean_input=True), tiny(name="unet"),
                                 tiny(name="clstm", head="recursive"), tiny(name="conv3d", head="recursive", scale=2),
                                 tiny(name="clstm", encoder_mean=True, pipeline="fixed"),
                                 tiny(name="clstm", gate_evidence=True, denoiser=4, scale=2),
                                 tiny(name="clstm", state_reset=True),
                                 tiny(name="clstm", residual_rule=2.0, residual_cap=0.02, scale=2),
                                 tiny(name="clstm", head="recursive", single_frame=True, output_smoothing=2.0,
                                      align="camera", single_frame_input="filter")],
                         ids=["clstm", "clstm-mean-shuffle", "clstm-mean-skip", "conv3d", "conv3d-t2-mean", "unet",
                              "clstm-recursive", "conv3d-recursive-x2", "clstm-encoder-mean-fixed",
                              "clstm-evidence-denoiser-x2", "clstm-state-reset", "clstm-residual-rule-cap-x2",
                              "clstm-single-frame-smoothed-aligned"])
def test_clip_equals_frame_by_frame_steps(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, 4).eval()
    with torch.no_grad():  # the zero-initialised convs (gate, residual, denoiser) must shape the output too
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = clip(t=4)
    with torch.no_grad():
        whole, _ = model(x)
        stepped, _ = run_steps(model, x)
        # and a clip split in two calls with the state carried over
        first, state = model(x[:, :3])
        second, _ = model(x[:, 3:], detach_state(state))
    assert whole.shape == (1, 4, 3, 64 * cfg.scale, 64 * cfg.scale)
    assert (whole - stepped).abs().max() < 1e-5
    assert (whole - torch.cat([first, second], 1)).abs().max() < 1e-5


def test_mismatch_evidence_sees_a_one_pixel_pan_that_the_noise_hides():
    """The gate's evidence: a textured scene averaged over 16 noisy frames (the filter state) against a new
    frame, still or shifted by one or two pixels. Per pixel the shift is buried in the noise (the mean |x - m|
    grows by ~5% and ~18%); over 12x12 pixels it stands out (~35%, ~120%)."""
    from batman.model.net import mismatch_evidence
    g = torch.Generator().manual_seed(0)
    scene = F.interpolate(torch.rand(1, 4, 24, 24, generator=g), scale_factor=4, mode="bicubic").clamp(0, 1) * 0.5
    noisy = lambda s: s + 0.15 * torch.randn(s.shape, generator=g)
    m = torch.stack([noisy(scene) for _ in range(16)]).mean(0)
    frames = [noisy(torch.roll(scene, shift, -1)) for shift in (0, 1, 2)]
    per_pixel = [(x - m).abs().mean().item() for x in frames]
    departure = [(2 * mismatch_evidence(x, m)[:, 0, 8:-8, 8:-8] - 3.5).exp().mean().item() for x in frames]
    assert per_pixel[1] < 1.1 * per_pixel[0] and departure[1] > 1.25 * departure[0]
    assert per_pixel[2] < 1.25 * per_pixel[0] and departure[2] > 1.8 * departure[0]
    assert mismatch_evidence(m, m).shape == (1, 3, 96, 96)
    no_departure = (torch.log(torch.tensor(1e-3)) + 3.5) / 2
    assert torch.allclose(mismatch_evidence(m, m)[:, 0], no_departure)
    assert mismatch_evidence(m, m).abs().max() < 2.5  # well scaled for a zero-initialised conv


def test_mean_input_changes_the_output_over_time():
    torch.manual_seed(0)
    model = build_model(tiny(name="unet"), 4).eval()
    assert model(clip())[1] is None  # single frame: the state passes through
    model = build_model(tiny(name="clstm", mean_input=True, head="skip"), 4).eval()
    _, state = model(clip(t=3))
    total, count = state["head"]
    assert count == 3 and torch.allclose(total, clip(t=3).sum(1))


@pytest.mark.parametrize("name", ["clstm", "conv3d"])
def test_recursive_head_starts_as_the_temporal_mean_through_a_camera_pipeline(name):
    """Untrained, the recursive head outputs gamma(running mean of R, mean G, B): the temporal-mean
    baseline with an identity colour matrix; the filter state is that running mean."""
    from batman.isp import gamma_srgb
    torch.manual_seed(0)
    model = build_model(tiny(name=name, head="recursive"), 4).eval()
    x = clip(t=5, h=40, w=56)
    with torch.no_grad():
        y, state = model(x)
    mean = x.cumsum(1) / torch.arange(1, 6).view(1, -1, 1, 1, 1)
    rgb = torch.stack([mean[:, :, 0], (mean[:, :, 1] + mean[:, :, 2]) / 2, mean[:, :, 3]], 2)
    expected = torch.from_numpy(gamma_srgb(rgb.double().numpy())).float()
    assert y.shape == expected.shape
    assert (y - expected).abs().max() < 0.01  # the gate starts at sigmoid(-6), not exactly 0
    filtered, count = state["head"]
    assert count == 5 and (filtered[..., :40, :56] - mean[:, -1]).abs().max() < 0.01  # state on the padded grid


def test_fixed_pipeline_is_the_traditional_pipelines_curve_and_learns_nothing():
    """Synth's truths are tone_curve(gamma_srgb(linear)) (isp.traditional_pipeline): the fixed pipeline is
    exactly that (it once was the gamma alone); the learned one starts at the gamma."""
    from batman.isp import gamma_srgb, tone_curve, traditional_pipeline
    model = build_model(tiny(pipeline="fixed"), 4)
    head = model.head
    assert head.colour is None and not any(n.startswith("head.colour") or "curve" in n for n, _ in model.named_parameters())
    packed = torch.rand(1, 4, 8, 8) ** 2
    expected = traditional_pipeline(packed[0].double().numpy(), np.ones(3), np.eye(3)).transpose(2, 0, 1)
    assert (head.pipeline(packed)[0] - torch.from_numpy(expected)).abs().max() < 1e-5
    x = torch.linspace(0, 1, 1001).view(1, 1, 1, -1).expand(1, 4, 1, -1)
    gamma = torch.from_numpy(gamma_srgb(x[:, :3].double().numpy())).float()
    assert (head.pipeline(x) - torch.from_numpy(tone_curve(gamma.double().numpy())).float()).abs().max() < 1e-5
    learned = build_model(tiny(), 4).head
    assert (learned.pipeline(x) - gamma).abs().max() < 0.01  # the learned one starts at the gamma (piecewise linear)


def test_encoder_mean_feeds_the_encoder_the_running_mean():
    """The encoder's stem sees 2C channels: the frame and the causal mean of the frames so far (in the state)."""
    torch.manual_seed(0)
    model = build_model(tiny(encoder_mean=True), 4).eval()
    assert model.encoder.conv1.in_channels == 8
    seen = []
    model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = clip(t=3)
    with torch.no_grad():
        _, state = model(x[:, :2])
        _, state = model(x[:, 2:], state)
    total, count = state["mean"]
    assert count == 3 and torch.allclose(total, x.sum(1))
    assert torch.allclose(seen[1][0, 4:], x.mean(1)[0], atol=1e-6)  # third frame's mean: all three
    assert torch.equal(seen[1][0, :4], x[0, 2])


def test_recursive_head_forgets_where_its_gate_opens():
    """With the gate forced open the filter keeps only the newest frame: no ghost of the past."""
    torch.manual_seed(0)
    model = build_model(tiny(head="recursive"), 4).eval()
    nn.init.constant_(model.head.gate.bias, 30.0)
    x = clip(t=4, h=32, w=32)
    with torch.no_grad():
        _, state = model(x)
    assert torch.allclose(state["head"][0], x[:, -1], atol=1e-6)  # 32x32 needs no padding


@pytest.mark.parametrize("name", ["clstm", "conv3d"])
def test_state_reset_forgets_where_keep_is_shut_and_nothing_where_it_is_open(name):
    """keep = 0 everywhere: each frame starts the temporal module from zeros and the filter from the frame;
    keep = 1: the model without a reset, whose weights are the same."""
    torch.manual_seed(0)
    plain = build_model(tiny(name=name), 4).eval()
    with torch.no_grad():  # the zero-initialised gate and residual must let the features reach the output
        for p in plain.parameters():
            p.add_(0.02 * torch.randn_like(p))
    reset = build_model(tiny(name=name, state_reset=True), 4).eval()
    assert reset.load_state_dict(plain.state_dict(), strict=False).missing_keys == [
        "reset.net.0.weight", "reset.net.0.bias", "reset.net.2.weight", "reset.net.2.bias"]
    x = clip(t=5)
    with torch.no_grad():
        nn.init.zeros_(reset.reset.net[-1].weight)
        nn.init.constant_(reset.reset.net[-1].bias, -40.0)
        shut, _ = reset(x)
        outs, state = [], None
        for t in range(x.shape[1]):
            y, state = plain.step(x[:, t], {"head": (x[:, t], state["head"][1])} if state else None)
            outs.append(y)
        nn.init.constant_(reset.reset.net[-1].bias, 40.0)
        open_, _ = reset(x)
        remembering, _ = plain(x)
    assert (shut - torch.stack(outs, 1)).abs().max() < 1e-5
    assert (open_ - remembering).abs().max() < 1e-5
    assert (shut - remembering).abs().max() > 1e-3  # the memory mattered


def test_state_reset_starts_by_keeping_a_still_scene_and_forgetting_a_moved_one():
    """Initialised on the departure against the frame's own noise: a new noisy frame of the scene the filter
    holds keeps its memory (keep ~ sigmoid(6)), the scene shifted by 4 px loses much of it."""
    from batman.model.net import StateReset
    g = torch.Generator().manual_seed(0)
    scene = F.interpolate(torch.rand(1, 4, 24, 24, generator=g), scale_factor=4, mode="bicubic").clamp(0, 1) * 0.5
    noisy = lambda s: s + 0.15 * torch.randn(s.shape, generator=g)
    m = torch.stack([noisy(scene) for _ in range(16)]).mean(0)
    with torch.no_grad():
        still, moved = (StateReset().keep(noisy(torch.roll(scene, shift, -1)), m)[..., 2:-2, 2:-2]
                        for shift in (0, 4))
    assert still.min() > 0.99 and moved.mean() < 0.7  # measured 0.9986 and 0.57


def test_state_reset_needs_the_recursive_heads_filter():
    with pytest.raises(BatmanError, match="model.state_reset .* needs model.head=recursive"):
        build_model(tiny(head="skip", state_reset=True), 4)


def test_recursive_head_keeps_its_filter_in_float32_under_autocast():
    torch.manual_seed(0)
    model = build_model(tiny(head="recursive"), 4).train()
    x = clip(t=3, h=32, w=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = model(x)
    assert state["head"][0].dtype == torch.float32 and torch.isfinite(y).all()
    y.float().mean().backward()
    assert model.head.curve.raw_steps.grad is not None


def test_residual_cap_measures_the_held_noise_in_float32_under_autocast():
    """The cap's slope is a difference over 1e-3 through the learned colour matrix: in bf16 it was rounding."""
    torch.manual_seed(0)
    model = build_model(tiny(head="recursive", pipeline="learned", residual_cap=1.0), 4).eval()
    m, k, sigma = torch.rand(1, 4, 32, 32) * 0.5, torch.full((1, 1, 32, 32), 0.25), torch.tensor([0.02])
    exact = model.head.held_noise(m, k, sigma)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        held = model.head.held_noise(m, k, sigma)
    assert held.dtype == torch.float32 and torch.allclose(held, exact)


def test_tone_curve_is_monotone_and_starts_as_srgb_gamma():
    from batman.isp import gamma_srgb
    from batman.model.net import ToneCurve
    curve = ToneCurve()
    x = torch.linspace(-0.1, 1.1, 1001)
    y = curve(x).detach()
    assert torch.all(y[1:] >= y[:-1])
    inside = (x >= 0) & (x <= 1)
    assert (y[inside] - torch.from_numpy(gamma_srgb(x[inside].double().numpy())).float()).abs().max() < 0.02
    with torch.no_grad():
        curve.raw_steps.uniform_(-5, 5)
    y = curve(x)
    assert torch.all(y[1:] >= y[:-1] - 1e-7)
    y.sum().backward()
    assert curve.raw_steps.grad.abs().sum() > 0
    assert curve(torch.tensor([float("nan"), 0.5])).isnan().tolist() == [True, False]  # NaN passes, no IndexError


def test_conv3d_is_causal():
    torch.manual_seed(0)
    model = build_model(tiny(name="conv3d", t_kernel=3, layers=2), 4).eval()
    x = clip(t=5)
    changed = x.clone()
    changed[:, 3] = torch.rand_like(changed[:, 3])
    with torch.no_grad():
        y, _ = model(x)
        y2, _ = model(changed)
    assert torch.equal(y[:, :3], y2[:, :3])        # outputs before the perturbed frame are untouched
    assert (y[:, 3:] - y2[:, 3:]).abs().max() > 1e-4  # and the perturbation does reach t >= 3


def test_causal_conv3d_equals_a_past_padded_conv3d():
    torch.manual_seed(0)
    layer = CausalConv3d(3, 5, layers=1, kernel=3, t_kernel=3)
    x = torch.randn(2, 6, 3, 8, 8)  # (B, T, C, H, W)
    conv = layer.convs[0]
    w3d = conv.weight.unflatten(1, (3, 3)).transpose(1, 2)  # (out, C, t_kernel, k, k)
    past_padded = F.pad(x.transpose(1, 2), (1, 1, 1, 1, 2, 0))  # zeros before frame 0, none after
    ref = F.relu(F.conv3d(past_padded, w3d, conv.bias)).transpose(1, 2)
    y, state = layer(x)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.equal(state[0], x[:, -2:])


# --- sizes, norms, channels_last ------------------------------------------------------------

@pytest.mark.parametrize("name,head", [(name, "skip") for name in MODELS] + [("clstm", "recursive")])
@pytest.mark.parametrize("scale", [1, 2])
def test_odd_sizes_are_padded_and_cropped_back(name, head, scale):
    model = build_model(tiny(name=name, scale=scale, head=head), 3, packed=False).eval()
    with torch.no_grad():
        y, _ = model(clip(t=2, c=3, h=70, w=94))
        frame, _ = model.step(clip(t=1, c=3, h=70, w=94)[:, 0], None)
    assert y.shape == (1, 2, 3, 70 * scale, 94 * scale)
    assert frame.shape == (1, 3, 70 * scale, 94 * scale)


def test_unet_has_the_sid_parameter_count():
    for scale in (1, 2):
        params = sum(p.numel() for p in build_model(ModelCfg(name="unet", scale=scale), 4).parameters())
        assert abs(params - 7.76e6) / 7.76e6 < 0.02


@pytest.mark.parametrize("norm", ["group", "batch", "frozen"])
def test_norm_variants_build_train_and_run(norm):
    torch.manual_seed(0)
    model = build_model(tiny(norm=norm, head="skip"), 4)  # the recursive head starts blind to the features
    norms = [type(m) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d))]
    expected = {"group": nn.GroupNorm, "batch": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d}[norm]
    assert norms and set(norms) == {expected}  # group: no BatchNorm left anywhere
    x = clip(b=2, t=2)
    y, _ = model.train()(x)
    y.mean().backward()
    assert model.encoder.conv1.weight.grad is not None
    with torch.no_grad():
        train_out, _ = model(x)
        eval_out, _ = model.eval()(x)
    if norm == "batch":
        assert not torch.allclose(train_out, eval_out)
    else:  # GroupNorm has no running statistics; frozen BatchNorm is always in eval mode
        assert torch.allclose(train_out, eval_out, atol=1e-6)


def test_unknown_names_are_clear_errors():
    with pytest.raises(BatmanError, match="clstm, conv3d, unet"):
        build_model(tiny(name="transformer"), 4)
    with pytest.raises(BatmanError, match="batch, group, frozen"):
        build_model(tiny(norm="layer"), 4)
    with pytest.raises(BatmanError, match="shuffle, skip"):
        build_model(tiny(head="deconv"), 4)


@pytest.mark.parametrize("name", list(MODELS))
def test_channels_last_gives_the_same_output(name):
    torch.manual_seed(0)
    model = build_model(tiny(name=name, mean_input=True), 4).eval()
    x = clip(t=2, h=70, w=94)
    with torch.no_grad():
        ref, _ = model(x)
        model = model.to(memory_format=torch.channels_last)
        frames = [x[:, t].contiguous(memory_format=torch.channels_last) for t in range(2)]
        out, _ = run_steps(model, torch.stack(frames, 1))
    assert (out - ref).abs().max() < 1e-4


def concatenating_fusion(mff, feats):
    """MFF as its docstring states it: upsample every stage, concatenate, 1x1 conv (the formulation before
    the split weights)."""
    size = feats[0].shape[-2:]
    ups = [conv(f) for conv, f in zip(mff.stages, feats)]
    ups = [ups[0]] + [F.interpolate(u, size=size, mode="bilinear", align_corners=False) for u in ups[1:]]
    return mff.fuse(torch.cat(ups, 1))


def concatenating_head_frame(head, up, x, m, first_weight, valid=None, single=None, still=True):
    """RecursiveHead.frame with its convolutions on concatenated inputs (the formulation before the split; the
    models here have no single-frame path, `single` is None and `still` unused)."""
    hidden = head.body(torch.cat([up, x, m], 1))
    k = first_weight + (1.0 - first_weight) * torch.sigmoid(head.gate(hidden).float())
    m = m + k * (x - m)
    base = head.pipeline(m)
    return base + head.residual(torch.cat([hidden, base], 1)), m, base, k


@pytest.mark.parametrize("size", ["default", "lite"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_split_weight_convolutions_equal_the_concatenating_formulation(size, memory_format):
    """MFF and the recursive head convolve parts and sum instead of concatenating (faster, no wide tensor
    written): on random weights (gate and residual not at their zero init) the outputs match the
    concatenating formulation over a few streamed frames, and the state dict keys are the same."""
    from types import MethodType

    from batman.model.fusion import MFF
    cfg = make_config("", {"model.size": size, "model.encoder_weights": ""})
    torch.manual_seed(0)
    model = build_model(cfg.model, 4).eval().to(memory_format=memory_format)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = clip(t=3, h=70, w=94).contiguous()
    frames = torch.stack([x[:, t].contiguous(memory_format=memory_format) for t in range(3)], 1)
    with torch.no_grad():
        ours, _ = run_steps(model, frames)
        model.fusion.forward = MethodType(concatenating_fusion, model.fusion)
        model.head.frame = MethodType(concatenating_head_frame, model.head)
        theirs, _ = run_steps(model, frames)
    assert theirs.abs().max() > 0.1 and (ours - theirs).abs().max() < 1e-5
    assert isinstance(model.fusion, MFF) and "fusion.fuse.0.weight" in model.state_dict()
    assert {"head.body.0.weight", "head.residual.0.weight"} <= set(model.state_dict())


# --- encoder weights and checkpointing ------------------------------------------------------

@pytest.mark.parametrize("norm", ["group", "frozen"])
def test_encoder_weights_widen_the_stem(tmp_path, norm):
    torch.manual_seed(0)
    source = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    enc = build_model(tiny(encoder_weights=str(path), norm=norm), 4).encoder
    w, rgb = enc.conv1.weight.detach(), source["conv1.weight"]
    assert w.shape == (64, 4, 7, 7)
    assert torch.allclose(w[:, :3], rgb * 3 / 4)                   # RGB filters copied (scaled by 3/C)
    assert torch.allclose(w[:, 3], w[:, :3].mean(1), atol=1e-7)  # the extra channel is their mean
    assert torch.equal(enc.layer3[1].conv2.weight, source["layer3.1.conv2.weight"])
    assert torch.equal(enc.bn1.weight, source["bn1.weight"])
    # a grey frame gives the stem the same response as the 3-channel original did
    grey = torch.full((1, 4, 32, 32), 0.5)
    assert torch.allclose(F.conv2d(grey, w, stride=2, padding=3), F.conv2d(grey[:, :3], rgb, stride=2, padding=3),
                          atol=1e-5)


def test_encoder_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(BatmanError, match="nowhere.pth"):
        Encoder(4, weights=str(missing))
    state = resnet18(weights=None).state_dict()
    del state["layer4.1.conv2.weight"]
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(BatmanError, match="bad.pth"):
        Encoder(4, weights=str(bad))
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(BatmanError, match="tensor.pth"):
        build_model(tiny(encoder_weights=str(not_a_dict)), 4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(tiny(head="recursive"), 4).train()
    with torch.no_grad():  # the zero-initialised gate and residual would hide the head's other gradients
        for conv in (model.head.gate, model.head.residual[-2]):
            conv.weight.normal_(0, 0.1)
    x = clip(b=1, t=3, h=32, w=32)

    def grads(checkpointing):
        model.zero_grad()
        model.encoder.checkpointing = model.head.checkpointing = checkpointing
        y, _ = model(x)
        y.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(p.abs().sum() > 0 for p in plain[-4:])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
    checkpointed_model = build_model(tiny(checkpointing=True, head="recursive"), 4)
    assert checkpointed_model.encoder.checkpointing and checkpointed_model.head.checkpointing


def test_describe_models_lists_every_variant():
    cfg = make_config(overrides={"data.mode": "rawrgb", "model.hidden": 16, "data.crop": (64, 96)})
    text = describe_models(cfg)
    for name in MODELS:
        assert name in text
    assert "(B,8,3,64,96)" in text and "* clstm" in text and "7.76 M" in text


@pytest.mark.parametrize("align", ["none", "flow", "camera"])
def test_with_base_returns_the_filter_state_through_the_pipeline_and_the_same_output(align):
    torch.manual_seed(0)
    model = build_model(tiny(head="recursive", align=align), 4).eval()
    nn.init.constant_(model.head.gate.bias, 0.0)  # a half-open gate: the base is not the plain mean
    x = clip(t=3, h=40, w=56)
    with torch.no_grad():
        y, _ = model(x)
        y2, state, base = model(x, with_base=True)
    assert torch.equal(y, y2) and base.shape == y.shape
    assert torch.allclose(base[:, -1], model.head.pipeline(state["head"][0])[..., :40, :56], atol=1e-6)


def test_residual_weight_is_the_noise_against_the_level_and_at_most_one():
    g = torch.Generator().manual_seed(0)
    scene = torch.tensor([0.1, 0.2, 0.2, 0.15]).view(1, 4, 1, 1).expand(3, 4, 128, 128)
    sigma = torch.tensor([0.00825, 0.05, 0.0]).view(3, 1, 1, 1)
    x = scene + sigma * torch.randn(3, 4, 128, 128, generator=g)
    x[2] = 0.0  # a black frame
    a = residual_weight(x, 0.1).flatten()
    assert a.shape == (3,)
    assert abs(float(a[0]) - 0.5) < 0.025  # 0.00825 / (0.1 x 0.165), from one frame
    assert float(a[1]) == 1.0 and float(a[2]) == 1.0


def with_and_without(**weighting):
    """A perturbed recursive model's output, base and input, and the same weights' output with `weighting`."""
    torch.manual_seed(0)
    plain = build_model(tiny(head="recursive"), 4).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.02 * torch.randn_like(p))
    weighted = build_model(tiny(head="recursive", **weighting), 4).eval()
    weighted.load_state_dict(plain.state_dict())
    x = clip(t=3, h=40, w=56) * 0.3  # padded to 64 x 64 inside: the weights must not count the padding
    with torch.no_grad():
        y0, _, base = plain(x, with_base=True)
        y1, _, base1 = weighted(x, with_base=True)
    assert torch.equal(base, base1)  # the filter and the pipeline are untouched
    return x, y0, base, y1


def test_residual_rule_scales_the_residual_and_nothing_else():
    x, y0, base, y1 = with_and_without(residual_rule=2.0)
    a = torch.stack([residual_weight(x[:, t], 2.0) for t in range(3)], 1)
    assert 0.05 < float(a.min()) and float(a.max()) < 0.95  # the rule acts partly here
    assert torch.allclose(y1, base + a * (y0 - base), atol=1e-6)


def test_residual_rule_and_cap_need_packed_raw_frames():
    for kw in ({"residual_rule": 0.1}, {"residual_cap": 1.0}, {"noise_input": True}):
        with pytest.raises(BatmanError, match="data.mode=raw"):
            build_model(tiny(head="recursive", **kw), 3, packed=False)


def test_residual_cap_weight_allows_cap_times_the_held_noise():
    g = torch.Generator().manual_seed(0)
    held = torch.full((2, 3, 32, 32), 0.01)
    residual = torch.randn(2, 3, 32, 32, generator=g) * torch.tensor([0.04, 0.005]).view(2, 1, 1, 1) + 0.3
    a = residual_cap_weight(residual, held, 2.0).flatten()
    assert abs(float(a[0]) - 0.5) < 0.02 and float(a[1]) == 1.0  # 2 x 0.01 of 0.04 allowed; 0.005 is within


def test_residual_cap_scales_each_frames_residual_by_one_factor():
    _, y0, base, y1 = with_and_without(residual_cap=0.02)
    ratio = (y1 - base) / (y0 - base)
    for t in range(3):
        a = ratio[:, t][(y0 - base)[:, t].abs() > 1e-4]
        assert 0.0 < float(a.min()) and float(a.max()) < 0.9  # the cap acts on every frame here
        assert float(a.max() - a.min()) < 1e-3  # one factor per frame


@pytest.mark.parametrize("scale", [1, 2])
def test_residual_block_cap_weight_cuts_only_the_blocks_that_exceed_the_held_noise(scale):
    g = torch.Generator().manual_seed(0)
    held = torch.full((1, 3, 32, 32), 0.01)
    residual = torch.randn(1, 3, 32 * scale, 32 * scale, generator=g) * 0.005
    s = 8 * scale  # one block of 8 x 8 input pixels
    residual[..., s:2 * s, :s] = torch.randn(1, 3, s, s, generator=g) * 0.04
    a = residual_block_cap_weight(residual, held, 2.0, 8)
    assert a.shape == (1, 1, 32 * scale, 32 * scale)
    block = a[..., s:2 * s, :s]
    assert float(block.max() - block.min()) == 0.0 and abs(float(block[0, 0, 0, 0]) - 0.5) < 0.05
    a[..., s:2 * s, :s] = 1.0
    assert bool((a == 1.0).all())  # every other block is within 2 x its held noise


def test_residual_block_cap_scales_each_block_by_one_factor():
    _, y0, base, y1 = with_and_without(residual_cap=0.02, residual_cap_block=8)
    r0, r1 = (y0 - base)[0, :, 0], (y1 - base)[0, :, 0]  # (t, 40, 56): 5 x 7 blocks of 8 x 8
    blocks = lambda r: r.unflatten(-1, (7, 8)).unflatten(-3, (5, 8)).transpose(2, 3).flatten(-2)  # (t, 5, 7, 64)
    factor = (blocks(r1) * blocks(r0)).sum(-1) / blocks(r0).pow(2).sum(-1)  # least squares per block
    assert torch.allclose(blocks(r1), factor[..., None] * blocks(r0), atol=1e-6)  # one factor per block
    assert float(factor.max() - factor.min()) > 0.05 and 0.0 < float(factor.min()) and float(factor.max()) <= 1.0


def test_residual_cap_mean_lets_each_blocks_mean_through_and_caps_its_detail():
    _, y0, base, y1 = with_and_without(residual_cap=0.02, residual_cap_block=8, residual_cap_mean=True)
    r0, r1 = (y0 - base)[0, :, 0], (y1 - base)[0, :, 0]  # (t, 40, 56): 5 x 7 blocks of 8 x 8
    blocks = lambda r: r.unflatten(-1, (7, 8)).unflatten(-3, (5, 8)).transpose(2, 3).flatten(-2)  # (t, 5, 7, 64)
    b0, b1 = blocks(r0), blocks(r1)
    assert torch.allclose(b1.mean(-1), b0.mean(-1), atol=1e-6)  # the mean whole (no rule here)
    d0, d1 = b0 - b0.mean(-1, keepdim=True), b1 - b1.mean(-1, keepdim=True)
    factor = (d1 * d0).sum(-1) / d0.pow(2).sum(-1)
    assert torch.allclose(d1, factor[..., None] * d0, atol=1e-6)  # the detail: one factor per block
    assert float(factor.min()) < 0.95 and float(factor.max()) <= 1.0
    with pytest.raises(BatmanError, match="residual_cap_mean.*needs model.residual_cap and model.residual_cap_block"):
        build_model(tiny(head="recursive", residual_cap=1.5, residual_cap_mean=True), 4)


def test_residual_cap_block_must_divide_the_padded_frame():
    from batman.config import make_config
    with pytest.raises(BatmanError, match="model.residual_cap_block.*power of two"):
        make_config("", {"model.residual_cap_block": 12})


def test_residual_weights_keep_the_whole_residual_where_no_noise_is_measured():
    """Whole DN steps with a read noise under half a step make most of G1 - G2 exactly 0: no measure, no change."""
    x = torch.full((2, 4, 32, 32), 0.2)
    x[1, 1, ::2] += 0.01  # a few steps: the median difference is still 0
    assert residual_weight(x, 0.06).flatten().tolist() == [1.0, 1.0]
    assert residual_cap_weight(torch.randn(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), 1.5).flatten().tolist() == [1.0, 1.0]


def test_noise_input_tells_the_residual_how_much_noise_the_filter_holds():
    """The channel falls as the filter averages (k = 1/t) and is lower for a cleaner frame; a model given it
    computes what it did until its new filter (zero at first) is trained, and a clip equals its frames streamed."""
    torch.manual_seed(0)
    model = build_model(tiny(head="recursive", noise_input=True), 4).eval()
    m = torch.rand(1, 4, 32, 32) * 0.3 + 0.1
    channels = [noise_channel(model.head.held_noise(m, torch.full((1, 1, 32, 32), 1.0 / t), torch.tensor([s])))
                for t, s in ((1, 0.05), (16, 0.05), (16, 0.005))]
    means = [float(c.mean()) for c in channels]
    assert channels[0].shape == (1, 1, 32, 32) and means[0] > means[1] > means[2]
    assert abs(means[0] - means[1] - 0.5 * math.log(16) / NOISE_SPREAD) < 1e-4  # sqrt(k): log falls by log(4)
    plain = build_model(tiny(head="recursive"), 4).eval()
    load_state_widened(model, plain.state_dict(), Path("plain.pt"))  # the new input's filter starts at zero
    x = clip(t=3, h=40, w=56) * 0.3
    with torch.no_grad():
        assert torch.allclose(plain(x)[0], model(x)[0], atol=1e-6)
        model.head.residual[0].weight[:, -1].fill_(0.5)  # let it act
        y, _ = model(x)
        state, steps = None, []
        for t in range(x.shape[1]):
            out, state = model.step(x[:, t], state)
            steps.append(out)
    assert torch.allclose(y, torch.stack(steps, 1), atol=1e-5)


def test_output_smoothing_follows_the_gate_and_keeps_the_weights():
    """model.output_smoothing S: with the gate at its start (k = 1/t) the first S frames are the plain model's bit
    for bit (S k >= 1), after them a noisy still scene's output moves less from frame to frame; the same keys
    (a release setting), and a clip equals its frames streamed (the smoothed output is carried in the state)."""
    torch.manual_seed(0)
    plain = build_model(tiny(head="recursive"), 4).eval()
    with torch.no_grad():
        plain.head.residual[-2].weight.normal_(0, 0.05)  # a residual that reads the frame: it jitters
    smooth = build_model(tiny(head="recursive", output_smoothing=3.0), 4).eval()
    smooth.load_state_dict(plain.state_dict())  # strict: no new weights
    g = torch.Generator().manual_seed(1)
    x = (0.3 * torch.rand(1, 1, 4, 48, 48, generator=g) + 0.05 * torch.randn(1, 8, 4, 48, 48, generator=g)).clamp(0, 1)
    with torch.no_grad():
        ys = {name: model(x)[0] for name, model in (("plain", plain), ("smooth", smooth))}
        streamed, _ = run_steps(smooth, x)
    assert torch.equal(ys["plain"][:, :3], ys["smooth"][:, :3])
    jitter = {name: (y[:, 4:] - y[:, 3:-1]).abs().mean() for name, y in ys.items()}
    assert jitter["smooth"] < 0.8 * jitter["plain"]
    assert torch.allclose(ys["smooth"], streamed, atol=1e-5)


def test_smoothing_ramp_smooths_the_first_frames_by_the_gate():
    """model.smoothing_ramp: S grows with the frames smoothed, min(S, age); the second output is y'_1 moved by k_2
    (about half on a still scene) towards y_2, where without the ramp it was y_2 itself; a clip equals its frames
    streamed; the ramp needs output_smoothing."""
    torch.manual_seed(0)
    plain = build_model(tiny(head="recursive"), 4).eval()
    with torch.no_grad():
        plain.head.residual[-2].weight.normal_(0, 0.05)
    ramp = build_model(tiny(head="recursive", output_smoothing=3.0, smoothing_ramp=True), 4).eval()
    ramp.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    x = (0.3 * torch.rand(1, 1, 4, 48, 48, generator=g) + 0.05 * torch.randn(1, 6, 4, 48, 48, generator=g)).clamp(0, 1)
    with torch.no_grad():
        y, smoothed = plain(x)[0], ramp(x)[0]
        k2 = 0.5 + 0.5 * torch.sigmoid(plain.head.gate.bias)  # the untrained gate: its bias alone
        streamed, _ = run_steps(ramp, x)
    assert torch.equal(smoothed[:, 0], y[:, 0])
    assert torch.allclose(smoothed[:, 1], torch.lerp(y[:, 0], y[:, 1], k2), atol=1e-3)
    first_step = {name: (out[:, 1] - out[:, 0]).abs().mean() for name, out in (("plain", y), ("ramp", smoothed))}
    assert first_step["ramp"] < 0.6 * first_step["plain"]
    assert torch.allclose(smoothed, streamed, atol=1e-5)
    with pytest.raises(BatmanError, match="model.smoothing_ramp ramps model.output_smoothing up"):
        build_model(tiny(head="recursive", smoothing_ramp=True), 4)


def test_single_frame_path_is_taken_where_the_gate_opens():
    """model.single_frame: on the first frame (k = 1) the output is the U-Net's bit for bit; with the gate shut
    (k = 1/t on a still scene) it moves min(1, k / G) of the way to it, so a gate G far above 1 leaves the plain
    model's output; with model.residual_rule that share is also scaled by the rule's weight (a clean frame takes
    less); the U-Net's weights are the only new ones; it needs the recursive head at scale 1."""
    torch.manual_seed(0)
    plain = build_model(tiny(head="recursive"), 4).eval()
    with torch.no_grad():
        plain.head.residual[-2].weight.normal_(0, 0.05)
    hybrid = build_model(tiny(head="recursive", single_frame=True, single_frame_gate=0.5), 4).eval()
    missing, unexpected = hybrid.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("single.") for key in missing)
    x = clip(t=4)
    with torch.no_grad():
        y, ours, single = hybrid(x)[0], plain(x)[0], hybrid.single(x.flatten(0, 1)).unflatten(0, (1, 4))
        hybrid.head.single_frame_gate = 1e9
        far = hybrid(x)[0]
    assert torch.equal(y[:, 0], single[:, 0].to(y.dtype))
    k = 1 / 3 + (1 - 1 / 3) * torch.sigmoid(plain.head.gate.bias)  # the untrained gate on the third frame
    assert torch.allclose(y[:, 2], torch.lerp(ours[:, 2], single[:, 2], (k / 0.5).clamp(max=1)), atol=1e-5)
    assert torch.allclose(far, ours, atol=1e-5)
    rule = build_model(tiny(head="recursive", single_frame=True, residual_rule=0.05), 4).eval()
    rule.load_state_dict(hybrid.state_dict())
    g = torch.Generator().manual_seed(2)
    clean = (0.5 + 0.002 * torch.randn(1, 1, 4, 64, 64, generator=g))  # signal-to-noise far above 1 / C
    with torch.no_grad():
        first = rule(clean)[0][:, 0]
        rule.head.single_frame_gate = 1e9
        filtered = rule(clean)[0][:, 0]
        u = rule.single(clean[:, 0])
    weight = residual_weight(clean[:, 0], 0.05)  # the rule's weight scales the U-Net's share, here from k = 1
    assert 0 < float(weight) < 0.5
    assert torch.allclose(first, torch.lerp(filtered, u, weight), atol=1e-5)
    for kw in ({"head": "skip"}, {"head": "recursive", "scale": 2}):
        with pytest.raises(BatmanError, match="model.single_frame takes the U-Net's output"):
            build_model(tiny(single_frame=True, **kw), 4)


def test_single_frame_path_can_read_the_filter_state():
    """model.single_frame_input=filter: the U-Net denoises lerp(m_t, x_t, share), the updated filter state turning
    into the frame by the output's share min(1, k / G), not the frame; where the camera moved, the frame. The first
    frame (state = frame) is unchanged; the same weights; clip = frame-by-frame steps."""
    torch.manual_seed(0)
    frame_path = build_model(tiny(head="recursive", single_frame=True, single_frame_gate=0.5), 4).eval()
    with torch.no_grad():
        frame_path.head.residual[-2].weight.normal_(0, 0.05)
    filter_path = build_model(tiny(head="recursive", single_frame=True, single_frame_gate=0.5,
                                   single_frame_input="filter"), 4).eval()
    filter_path.load_state_dict(frame_path.state_dict())
    x = clip(t=3)
    k = 1 / 3 + (1 - 1 / 3) * torch.sigmoid(filter_path.head.gate.bias)  # the untrained gate on the third frame
    share = (k / 0.5).clamp(max=1)
    with torch.no_grad():
        y_frame, (y_filter, state) = frame_path(x)[0], filter_path(x)
        steps = run_steps(filter_path, x)[0]
        m3 = state["head"][0]
        u_state, u_frame = filter_path.single(torch.lerp(m3, x[:, 2], share)), filter_path.single(x[:, 2])
        filter_path.head.single_frame_gate = 1e9
        ours = filter_path(x)[0]
    assert torch.allclose(y_filter[:, 0], y_frame[:, 0], atol=1e-6)  # batched over frames or not: rounding
    assert torch.allclose(y_filter[:, 2], torch.lerp(ours[:, 2], u_state, share), atol=1e-5)
    assert not torch.allclose(u_state, u_frame, atol=1e-3)  # the state, not the frame, was denoised
    assert (y_filter[:, 2] - y_frame[:, 2]).abs().max() > 1e-4
    assert torch.allclose(y_filter, steps, atol=1e-5)
    head, kk = filter_path.head, torch.full((2, 1, 64, 64), 0.1)
    head.single_frame_gate = 0.5
    m, frame = torch.zeros(2, 4, 64, 64), torch.ones(2, 4, 64, 64)
    assert torch.equal(head.single_frame_input(frame, m, kk, False), frame)  # the camera moved: the frame
    moved_second = head.single_frame_input(frame, m, kk, torch.tensor([True, False]))
    assert torch.equal(moved_second[1], frame[1]) and torch.allclose(moved_second[0], torch.full_like(m[0], 0.2))
    with pytest.raises(BatmanError, match="unknown model.single_frame_input"):
        build_model(tiny(head="recursive", single_frame=True, single_frame_input="mean"), 4)


def test_output_smoothing_needs_the_recursive_head_at_scale_1():
    with pytest.raises(BatmanError, match="model.head=recursive"):
        build_model(tiny(head="skip", output_smoothing=3.0), 4)
    with pytest.raises(BatmanError, match="model.scale=1"):
        build_model(tiny(head="recursive", output_smoothing=3.0, scale=2), 4)


def test_residual_weights_need_the_recursive_head():
    for kw in ({"head": "skip"}, {"name": "unet"}):
        with pytest.raises(BatmanError, match="model.head=recursive"):
            build_model(tiny(residual_cap=1.5, **kw), 4)


def test_with_base_is_refused_by_heads_without_a_filter():
    model = build_model(tiny(head="skip"), 4)
    with pytest.raises(BatmanError, match="model.head=recursive"):
        model(clip(t=2), with_base=True)
