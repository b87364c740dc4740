"""The full networks and `build_model`, the only constructor the rest of batman uses.

Every model maps a clip to a clip and carries its state explicitly:
    forward(x (B, T, C, H, W), state=None) -> (y (B, T, 3, sH, sW), state)
    step(frame (B, C, H, W), state)        -> (y (B, 3, sH, sW), state)
with C = the data's input channels (+1 with a noise map) and s = ModelCfg.scale.
A clip in one call and the same clip frame by frame give the same output (eval mode).

The output is unconstrained (no sigmoid): trained with L1 against [0, 1] targets and
clipped by whoever displays it. A sigmoid would need large logits for the black and
saturated pixels these videos are full of, and its gradient vanishes exactly there.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from batman.config import BatmanError, Config, ModelCfg
from batman.isp import gamma_srgb
from batman.model.align import CameraAlign, FlowAlign, descriptor, warp_state
from batman.model.conv3d import CausalConv3d
from batman.model.convlstm import ConvLSTM
from batman.model.denoiser import BaseDenoiser
from batman.model.encoder import Encoder
from batman.model.fusion import MFF, conv_of_concat, upsample
from batman.model.lite import LiteEncoder
from batman.model.residual import (block_mean, frame_noise, noise_channel, residual_block_cap_weight,
                                   residual_cap_weight, residual_weight)
from batman.model.unet import SIDUNet

PAD_MULTIPLE = 32  # the encoder's deepest stride
ENCODERS = {"default": Encoder, "lite": LiteEncoder}  # by ModelCfg.size


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate-pad (N, C, H, W) on the bottom and right to multiples of `multiple` (works for any size,
    unlike reflect)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def frame_of(single, i: int, keep_dim: bool = False):
    """Frame i of the single-frame path (`VideoNet.single_frame`): its output there when the path is outputs
    (B, T, ...), the path itself when it is the U-Net (it runs inside the head), None when there is none."""
    if not isinstance(single, torch.Tensor):
        return single
    return single[:, i:i + 1] if keep_dim else single[:, i]


def detach_state(state):
    """The same nested state (dicts, lists, tuples of tensors) cut from the graph, for truncated BPTT."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(v) for v in state)
    return state


# --- heads: stride-4 features of a clip + its input frames (+ the head's state) -> output clip ------
# Every head is built as Head(model cfg, input channels, packed) and reads the settings it uses.

def running_mean(x: torch.Tensor, state):
    """Causal mean of the input frames: x (B, T, C, H, W) -> (mean (B, T, C, H, W), (sum, count))."""
    total, count = state if state is not None else (torch.zeros_like(x[:, 0]), 0)
    sums = total.unsqueeze(1) + x.cumsum(1)
    counts = count + torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)  # count: int or tensor
    return sums / counts.view(1, -1, 1, 1, 1), (sums[:, -1], count + x.shape[1])


class ShuffleHead(nn.Module):
    """3x3 conv to 3 * (4s)^2 channels, then PixelShuffle(4s). The running mean, if given, joins
    at stride 4 by space-to-depth."""

    def __init__(self, cfg: ModelCfg, in_ch: int, packed: bool = True):
        super().__init__()
        self.mean_input = cfg.mean_input
        extra = in_ch * 16 if cfg.mean_input else 0
        self.conv = nn.Conv2d(cfg.hidden + extra, 3 * (4 * cfg.scale) ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(4 * cfg.scale)

    def forward(self, feats, frames, state, with_base: bool = False, valid=None, single=None):
        """feats (B, T, F, H/4, W/4), frames (B, T, C, H, W) -> (y (B, T, 3, sH, sW), state).
        `with_base` and `single` are the recursive head's (no filter here: VideoNet refuses them before)."""
        x = feats.flatten(0, 1)
        if self.mean_input:
            mean, state = running_mean(frames, state)
            x = torch.cat([x, F.pixel_unshuffle(mean.flatten(0, 1), 4)], 1)
        return self.shuffle(self.conv(x)).unflatten(0, feats.shape[:2]), state


class SkipHead(nn.Module):
    """Features shuffled to `width` channels on the output grid, concatenated with the input
    frame (and running mean), upsampled by s, then three 3x3 convs to RGB."""

    def __init__(self, cfg: ModelCfg, in_ch: int, packed: bool = True):
        super().__init__()
        scale, width = cfg.scale, cfg.head_width
        self.scale, self.mean_input = scale, cfg.mean_input
        self.up = nn.Sequential(nn.Conv2d(cfg.hidden, width * (4 * scale) ** 2, 1), nn.PixelShuffle(4 * scale),
                                nn.LeakyReLU(0.2, inplace=True))
        refine_in = width + in_ch * (2 if cfg.mean_input else 1)
        self.refine = nn.Sequential(
            nn.Conv2d(refine_in, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, feats, frames, state, with_base: bool = False, valid=None, single=None):
        parts = [self.up(feats.flatten(0, 1)), upsample(frames.flatten(0, 1), self.scale)]
        if self.mean_input:
            mean, state = running_mean(frames, state)
            parts.append(upsample(mean.flatten(0, 1), self.scale))
        return self.refine(torch.cat(parts, 1)).unflatten(0, feats.shape[:2]), state


class ToneCurve(nn.Module):
    """A learned monotone curve on [0, 1]: piecewise linear through `knots` points spaced densely near
    black, values = cumulative sums of positive steps, initialised to the sRGB gamma."""

    SPACING = 2.4  # knot k of K sits at (k / (K - 1)) ** SPACING: dense near black, like the gamma

    def __init__(self, knots: int = 48):
        super().__init__()
        xs = np.linspace(0.0, 1.0, knots) ** self.SPACING
        steps = np.diff(gamma_srgb(xs))
        self.register_buffer("xs", torch.tensor(xs, dtype=torch.float32), persistent=False)
        self.raw_steps = nn.Parameter(torch.tensor(np.log(np.expm1(steps)), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 whatever the autocast: the curve is steep near black, where bf16 steps are coarse.
        The knots are uniform in x^(1/2.4), so a power finds each value's segment (no search)."""
        x = x.float().clamp(0.0, 1.0)
        ys = torch.cat([self.raw_steps.new_zeros(1), F.softplus(self.raw_steps.float()).cumsum(0)])
        slopes = (ys[1:] - ys[:-1]) / (self.xs[1:] - self.xs[:-1])
        segments = len(self.xs) - 1
        i = (x.detach() ** (1 / self.SPACING) * segments).long().clamp_(0, segments - 1)  # NaN -> 0: stays NaN
        return ys[i] + (x - self.xs[i]) * slopes[i]


class TraditionalCurve(nn.Module):
    """The sRGB gamma, then the smoothstep tone curve 3y^2 - 2y^3: exactly isp.traditional_pipeline's curves,
    which render `batman synth`'s truths and the classical baselines. Float32 (model.pipeline=fixed: nothing to
    learn when the truth is its output). It once was the gamma alone, which no truth of ours is rendered with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0.0, 1.0)
        toe = 0.0031308  # the power's gradient is infinite at 0: evaluate it above the linear toe only
        y = torch.where(x <= toe, 12.92 * x, 1.055 * x.clamp_min(toe) ** (1 / 2.4) - 0.055).clamp(0.0, 1.0)
        return y * y * (3.0 - 2.0 * y)


def mismatch_stats(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """How far frame x departs from filter state m, and what noise would explain: (B, C, H, W) colour channels
    (H, W multiples of 4) -> (B, 3, H/4, W/4), all logs (so that a linear conv can weigh a ratio), centred and
    scaled to about [-2, 2] ((log(v + 1e-3) + 3.5) / 2): an input of constant magnitude 7 would let Adam's
    first steps move the body like a bias at 20x the learning rate (a first fine-tune with raw logs lost
    0.4 dB of validation PSNR in 9 epochs):
        log box_3x3(mean_c |avgpool_4(x - m)|)   the departure over 12x12 pixels: a slow pan shows here, where
                                                  a 5x5 full-resolution window sees only noise
        log avgpool_4(mean_c |x - box_3x3(x)|)    the frame's own roughness: its noise (and texture)
        log avgpool_4(mean_c m)                   brightness: shot noise grows with it
    """
    x, m = x.float(), m.float()
    departure = F.avg_pool2d(F.avg_pool2d(x - m, 4).abs().mean(1, keepdim=True), 3, 1, 1, count_include_pad=False)
    smooth = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    roughness = F.avg_pool2d((x - smooth).abs().mean(1, keepdim=True), 4)
    brightness = F.avg_pool2d(m.mean(1, keepdim=True), 4).clamp_min(0.0)
    return (torch.log(torch.cat([departure, roughness, brightness], 1) + 1e-3) + 3.5) / 2


def mismatch_evidence(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """`mismatch_stats` on the input grid (B, 3, H, W): constant-ish over 4x4 blocks."""
    return F.interpolate(mismatch_stats(x, m), scale_factor=4, mode="bilinear", align_corners=False)


class RecursiveHead(nn.Module):
    """A motion-adaptive recursive filter of the raw input, a learned camera pipeline and a residual.

        m_t = m_{t-1} + k_t (x_t - m_{t-1}),  k_t = 1/t + (1 - 1/t) sigmoid(g_t)
        y_t = curve(colour_matrix @ rgb(m_t)) + r_t  (+ denoiser(features, that image) with cfg.denoiser)

    g_t (where to forget: motion) and r_t (what noise is left) come from full-resolution convs on the
    upsampled features, x_t and m_{t-1} (with cfg.gate_evidence also `mismatch_evidence(x_t, m_{t-1})`).
    At initialisation g is very negative and r is zero, so the network starts as the causal temporal mean
    through a plain pipeline (identity colour matrix, sRGB gamma) and training only has to learn the
    corrections, not the whole camera pipeline.
    With cfg.pipeline = "fixed" the matrix stays the identity and the curve is the traditional pipeline's
    (TraditionalCurve, exact for synth's linear-sRGB input and truths): Adam moves every parameter by about
    lr per step whatever its gradient, and the shipped weights' matrix had
    wandered to rows summing to 1.27 that the residual then had to undo.
    With cfg.residual_rule = C the residual is scaled by `residual_weight` (min(1, noise / (C x level)) of
    the frame), with cfg.residual_cap = K held to K x the noise the filter state still holds
    (`residual_cap_weight`, model/residual.py; per block with cfg.residual_cap_block): set when releasing trained
    weights, they need no training. So is cfg.output_smoothing = S (`smooth`): the output itself follows the
    gate, y'_t = y'_{t-1} + min(1, S k_t) (y_t - y'_{t-1}); the state then carries y' and how many frames it
    has smoothed (`restart_smoothing` zeroes that where the camera moved). With cfg.single_frame the output takes
    a single-frame U-Net's where the gate opens (`take_single_frame`), before the smoothing; the U-Net reads the
    frame, or with cfg.single_frame_input = filter the updated filter state where the scene is still
    (`single_frame_input`).
    """

    def __init__(self, cfg: ModelCfg, in_ch: int, packed: bool = True):
        super().__init__()
        scale, width = cfg.scale, cfg.head_width
        self.scale, self.packed, self.checkpointing = scale, packed, cfg.checkpointing
        self.evidence = cfg.gate_evidence
        self.up = nn.Sequential(nn.Conv2d(cfg.hidden, width * 16, 1), nn.PixelShuffle(4), nn.LeakyReLU(0.2, inplace=True))
        self.body = nn.Sequential(
            nn.Conv2d(width + 2 * in_ch + (3 if self.evidence else 0), width, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.gate = nn.Conv2d(width, 1, 3, padding=1)
        self.noise_input = cfg.noise_input
        reads = width + 3 + (1 if self.noise_input else 0)  # [hidden, base(, noise channel)]
        self.residual = nn.Sequential(nn.Conv2d(reads, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                      nn.Conv2d(width, 3 * scale * scale, 3, padding=1),
                                      nn.PixelShuffle(scale) if scale > 1 else nn.Identity())
        self.denoiser = BaseDenoiser(reads, cfg.denoiser, 3 * scale * scale) if cfg.denoiser else None
        for conv in (self.gate, self.residual[-2]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.gate.bias, -6.0)
        for key, value in (("residual_rule", cfg.residual_rule), ("residual_cap", cfg.residual_cap),
                           ("noise_input", cfg.noise_input)):
            if value and not packed:
                raise BatmanError(f"model.{key} reads the noise from the G1 - G2 difference of packed raw "
                                  "frames: it needs data.mode=raw")
        self.residual_rule, self.residual_cap = cfg.residual_rule, cfg.residual_cap
        self.residual_cap_block, self.residual_cap_mean = cfg.residual_cap_block, cfg.residual_cap_mean
        if self.residual_cap_mean and not (self.residual_cap and self.residual_cap_block):
            raise BatmanError("model.residual_cap_mean splits the residual into the blocks of "
                              "model.residual_cap_block: it needs model.residual_cap and model.residual_cap_block")
        self.output_smoothing, self.smoothing_ramp = cfg.output_smoothing, cfg.smoothing_ramp
        self.single_frame_gate = cfg.single_frame_gate
        if self.output_smoothing and scale != 1:
            raise BatmanError("model.output_smoothing keeps the output on the input grid: it needs model.scale=1")
        if self.smoothing_ramp and not self.output_smoothing:
            raise BatmanError("model.smoothing_ramp ramps model.output_smoothing up: it needs model.output_smoothing")
        fixed = cfg.pipeline == "fixed"
        self.colour = None if fixed else nn.Parameter(torch.eye(3))
        self.curve = TraditionalCurve() if fixed else ToneCurve()

    def camera_rgb(self, m: torch.Tensor) -> torch.Tensor:
        """Packed R, G1, G2, B (or rawRGB) -> camera RGB; channels past the colour ones (noise map) dropped."""
        m = self.colours(m)
        return torch.stack([m[:, 0], 0.5 * (m[:, 1] + m[:, 2]), m[:, 3]], 1) if self.packed else m

    def colours(self, m: torch.Tensor) -> torch.Tensor:
        """The colour channels of a packed or rawRGB frame (the noise map dropped)."""
        return m[:, :4] if self.packed else m[:, :3]

    def pipeline(self, m: torch.Tensor) -> torch.Tensor:
        """Filtered raw (B, C, H, W) -> sRGB on the input grid."""
        rgb = self.camera_rgb(m)
        return self.curve(rgb if self.colour is None else torch.einsum("ij,bjhw->bihw", self.colour, rgb))

    def forward(self, feats, frames, state, with_base: bool = False, valid=None, single=None):
        """-> (y, state), or (y, state, base) with `with_base`: base (B, T, 3, sH, sW) is the filter state
        alone through the pipeline, which train.filter_weight supervises. `valid`: (H, W) of the frames before
        their padding, where the residual's weights take their statistics (None: all of it). `single`: with
        cfg.single_frame the single-frame path (`VideoNet.single_frame`: the U-Net's outputs (B, T, 3, H, W), or the
        U-Net itself to run on the filter state), else None."""
        b, t = feats.shape[:2]
        up = self.up(feats.flatten(0, 1)).unflatten(0, (b, t))
        m, count, *smoothed = state if state is not None else (frames[:, 0], 0)
        previous, age = smoothed if smoothed else (None, 0)
        outs, bases = [], []
        for i in range(t):
            still = age > 0 if self.output_smoothing else True  # the smoothing's age restarts where the camera moved
            args = (up[:, i], frames[:, i], m, 1.0 / (count + 1), valid, frame_of(single, i), still)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                y, m, base, k = checkpoint(self.frame, *args, use_reentrant=False)
            else:
                y, m, base, k = self.frame(*args)
            if self.output_smoothing:
                y = previous = self.smooth(y, previous, k, age, count)
                age = age + 1
            outs.append(y)
            if with_base:  # kept only when asked: each is an output-sized tensor held for the whole clip
                bases.append(base)
            count = count + 1  # not +=: a tensor count (deploy.py) must not change in place
        y, state = torch.stack(outs, 1), (m, count) + ((previous, age) if self.output_smoothing else ())
        return (y, state, torch.stack(bases, 1)) if with_base else (y, state)

    def frame(self, up, x, m, first_weight, valid=None, single=None, still=True):
        """One frame: (output, new filter state, base on the output grid, gate k). `first_weight` = 1/t, the weight
        of a plain running mean; `single`: the single-frame U-Net's output for it, or the U-Net to run on
        `single_frame_input` (cfg.single_frame_input = filter; `still`: whether the camera held still before the
        frame, bool or (B,)), or None (`take_single_frame`). The body's and the residual's first convs read
        [up, x, m(, evidence)] and [hidden, base] as conv_of_concat: no full-resolution concatenation is written
        (the same result up to float rounding, tests/test_model.py). The denoiser's correction joins the residual's
        before their common PixelShuffle (a linear rearrangement: the same as shuffling each)."""
        parts = [up, x, m] + ([mismatch_evidence(self.colours(x), self.colours(m))] if self.evidence else [])
        hidden = self.body[1:](conv_of_concat(self.body[0], parts))
        k = first_weight + (1.0 - first_weight) * torch.sigmoid(self.gate(hidden).float())
        m = m + k * (x - m)  # float32 under autocast too: the filter integrates over a whole video
        base = self.pipeline(m)
        base_out = upsample(base, self.scale)
        sigma = self.frame_sigma(x, valid) if self.residual_rule or self.residual_cap or self.noise_input else None
        held = self.held_noise(m, k, sigma) if self.residual_cap or self.noise_input else None  # once for both
        reads = [hidden, base] + ([noise_channel(held).to(base.dtype)] if self.noise_input else [])
        correction = self.residual[1:-1](conv_of_concat(self.residual[0], reads))
        if self.denoiser is not None:
            correction = correction + self.denoiser(reads)
        residual = self.residual[-1](correction)
        if self.residual_rule or self.residual_cap:
            residual = self.weighed_residual(residual, x, held, sigma, valid)
        y = base_out + residual
        if single is not None:
            rule = self.rule_weight(x, sigma, valid) if self.residual_rule else 1.0
            if not isinstance(single, torch.Tensor):
                single = single(self.single_frame_input(x, m, k, still))
            y = self.take_single_frame(y, single, k, rule)
        return y, m, base_out, k

    def take_single_frame(self, y, single, k, rule) -> torch.Tensor:
        """y + min(1, k / G) w (single - y), G = cfg.single_frame_gate, w = `rule` the residual rule's weight of the
        frame (`rule_weight`; 1 without cfg.residual_rule). Why: where the camera moved (k near 1) the filter holds about
        one frame and the residual denoises it less well than a U-Net trained on single frames (2.7 dB less on a
        held-out pan and rotation); where the scene is still (k near 1/t) the filter's average of t frames wins
        and the U-Net only adds its independent estimate of what noise is left. On frames clean enough that the
        rule steps the residual back, the U-Net's output is a correction of the same kind and steps back too
        (G fitted on training videos: docs/RESULTS.md, twentieth session). With cfg.single_frame_input = filter,
        `single` is the U-Net's output for `single_frame_input`, where the scene is still the filter state."""
        weight = self.single_frame_share(k) * rule
        return torch.lerp(y, single.to(y.dtype), weight.to(y.dtype))

    def single_frame_share(self, k: torch.Tensor) -> torch.Tensor:
        """min(1, k / G), G = cfg.single_frame_gate: how far the output moves to the U-Net's (before the rule's
        weight), and with cfg.single_frame_input = filter how far the U-Net's input moves from state to frame."""
        return (k / self.single_frame_gate).clamp(max=1.0)

    def single_frame_input(self, x, m, k, still) -> torch.Tensor:
        """What the U-Net reads with cfg.single_frame_input = filter: lerp(m, x, min(1, k / G)), the updated filter
        state m turning into the frame x as the gate opens by the share the output takes; the frame where the
        camera moved (`still` False). Why: on a still scene m averages t frames, and the U-Net's output for it is
        less noisy and changes less from frame to frame (a third less MABD error on still training videos);
        where the camera moved the warped state is blurred by the resampling, and the U-Net kept it so (-2.4 dB
        on a training pan); by the gate's share, objects that move keep the frame's detail (docs/RESULTS.md,
        twenty-first session)."""
        blend = torch.lerp(m, x, self.single_frame_share(k).to(m.dtype))
        if isinstance(still, torch.Tensor):
            return torch.where(still.view(-1, 1, 1, 1), blend, x)
        return blend if still else x

    def smooth(self, y: torch.Tensor, previous: torch.Tensor | None, k: torch.Tensor, age, count) -> torch.Tensor:
        """cfg.output_smoothing S: y' = previous + min(1, S k) (y - previous). Why: on a still scene the gate keeps
        about 1/t of each frame, but the residual and denoiser read the new frame's features, so the output
        jitters from frame to frame by more than the filter state moves (flicker, and noise the average of
        several frames' corrections would not have); where the gate opens (motion) S k reaches 1 and the output
        is the frame's. With no previous output, or an `age` of 0 (deploy.py's zero state, a camera motion), y.
        cfg.smoothing_ramp: S' = min(S, count), `count` the frames the filter saw before this one, so y'_2 =
        lerp(y'_1, y_2, k_2) (about half each on a still scene), then 2 k_3 and so on up to S k: without it the
        first S outputs are unsmoothed (S k >= 1), and the first, from a single frame, differs most from the second
        (half the MABD error of still videos, -0.03 dB; docs/RESULTS.md, seventeenth session). The video's frame
        count, not the smoothing's age: after a camera motion restarts it the gate is open wider than 1/t, and a
        ramp there lagged the output behind the scene (-0.21 dB on held-out camera motions)."""
        if previous is None:
            return y
        strength = self.output_smoothing
        if self.smoothing_ramp:
            strength = (count.clamp(max=strength).view(-1, 1, 1, 1) if isinstance(count, torch.Tensor)
                        else min(strength, count))
        weight = (strength * k).clamp(max=1.0)
        if isinstance(age, torch.Tensor):
            weight = torch.where(age.view(-1, 1, 1, 1) > 0, weight, torch.ones_like(weight))
        return torch.lerp(previous, y, weight.to(y.dtype))  # exactly y where the weight is 1

    @staticmethod
    def frame_sigma(x, valid=None) -> torch.Tensor:
        """(B,): the frame's noise (`frame_noise`) on the `valid` (H, W) before padding: replicated rows are not
        the scene's."""
        return frame_noise(x if valid is None else x[..., :valid[0], :valid[1]])

    def weighed_residual(self, residual, x, held, sigma, valid=None) -> torch.Tensor:
        """The residual times `residual_scale`; with cfg.residual_cap_mean only its detail within each cap block
        is capped, and its block mean (a correction of the filter state's level or colour: on the darkest real
        raws the cap cut it as the state grew clean, and their output fell over the frames) gets the rule's
        weight alone."""
        if not self.residual_cap_mean:
            return residual * self.residual_scale(residual, x, held, sigma, valid).to(residual.dtype)
        mean = block_mean(residual, self.residual_cap_block * self.scale)
        detail = residual - mean
        rule = self.rule_weight(x, sigma, valid).to(residual.dtype)
        return mean * rule + detail * self.residual_scale(detail, x, held, sigma, valid).to(residual.dtype)

    def rule_weight(self, x, sigma, valid=None) -> torch.Tensor:
        """(B, 1, 1, 1): `residual_weight` of the frame's `valid` (H, W) before padding; ones without a rule."""
        if not self.residual_rule:
            return torch.ones_like(sigma).view(-1, 1, 1, 1)
        return residual_weight(x if valid is None else x[..., :valid[0], :valid[1]], self.residual_rule, sigma)

    def residual_scale(self, residual, x, held, sigma, valid=None) -> torch.Tensor:
        """(B, 1, 1, 1), or (B, 1, sH, sW) with a residual_cap_block: the noise rule's weight times the cap's
        (model/residual.py), from the frame's noise `sigma` and the `held_noise` map (per pixel, so its valid part
        is that of the valid frame), with per-frame statistics on the `valid` (H, W) before padding. Blocks tile
        the padded frame (the padding repeats the frame's edge)."""
        full_residual, full_held = residual, held
        if valid is not None:
            h, w = valid
            held = None if held is None else held[..., :h, :w]
            residual = residual[..., :h * self.scale, :w * self.scale]
        scale = self.rule_weight(x, sigma, valid)
        if self.residual_cap and self.residual_cap_block:
            scale = scale * residual_block_cap_weight(full_residual * scale, full_held, self.residual_cap,
                                                      self.residual_cap_block)
        elif self.residual_cap:
            scale = scale * residual_cap_weight(residual * scale, held, self.residual_cap)
        return scale

    def held_noise(self, m, k, sigma) -> torch.Tensor:
        """The noise the filter state m still holds, through the pipeline, on the input grid (B, 3, H, W): the
        frame's noise std `sigma` (B,) times sqrt(k) (exact for a running mean, k = 1/t; within sqrt(2) for a
        steady open gate) times the pipeline's slope at m (its gamma amplifies noise in the dark). An estimate:
        the green of camera RGB averages two samples (sqrt(2) less noise than sigma), and a learned colour matrix
        adds its rows' slopes. The slope in float32 outside autocast: a bf16 difference over 1e-3 is rounding."""
        h = 1e-3
        with torch.autocast(m.device.type, enabled=False):
            m = m.float()
            slope = (self.pipeline(m + h) - self.pipeline(m - h)) / (2 * h)
        return slope * k.float().sqrt() * sigma.view(-1, 1, 1, 1)


HEADS = {"shuffle": ShuffleHead, "skip": SkipHead, "recursive": RecursiveHead}


class StateReset(nn.Module):
    """Forget where the frame departs from the filter state: before each frame keep = sigmoid(convs(
    mismatch_stats(frame, filter state))) at stride 4 scales every tensor of the temporal state (ConvLSTM h, c)
    and pulls the filter state towards the frame, m <- x + keep (m - x). Why: on a held-out rotation a
    fine-tuned model's memory cost 1.3 dB (every state reset before each frame scored that much more);
    a uniform keep of 0.5 on both states gained 1.4 dB there, on the ConvLSTM alone 0.6, but cost 3.7 dB
    on a static video, so keep must follow the evidence.
    Initialised, not learned from scratch: keep = sigmoid(6 - SLOPE * lrelu(departure - roughness + OFFSET))
    through one hidden channel (the others start at zero weight out). From keep ~ 1 everywhere (a zero
    last conv) a fine-tune moved it by 1e-4 in 250 steps: a partial reset first costs what the network
    has learned to expect of its memory, before it pays. OFFSET puts the threshold just above the
    static validation videos' 90th percentile of departure - roughness (0.5 * log of their ratio: -0.41 to
    -0.52); moving validation videos reach -0.1 to +0.8 at their 90th. Measured since: fine-tuned onto stage 9,
    training raised keep back towards 1 and the rotation did not recover (docs/RESULTS.md, fifth session)."""

    SLOPE, OFFSET = 16.0, 0.35

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv2d(width, 1, 3, padding=1))
        with torch.no_grad():
            self.net[0].weight[0].zero_()
            self.net[0].weight[0, 0, 1, 1], self.net[0].weight[0, 1, 1, 1] = 1.0, -1.0
            self.net[0].bias[0] = self.OFFSET
            self.net[-1].weight.zero_()
            self.net[-1].weight[0, 0, 1, 1] = -self.SLOPE
            self.net[-1].bias.fill_(6.0)

    def forward(self, temporal, head, x: torch.Tensor, colours):
        """temporal: nested (B, C, H/4, W/4) tensors; head: (filter state m, count[, smoothed output, age]) with m and
        the frame x (B, C, H, W); `colours` picks their colour channels. -> (temporal, head) with the memory
        forgotten."""
        m, count, *smoothed = head
        keep = self.keep(colours(x), colours(m))
        full = F.interpolate(keep, scale_factor=4, mode="bilinear", align_corners=False).to(m.dtype)
        return scale_state(temporal, keep), (x + full * (m - x), count, *smoothed)

    def keep(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(B, 1, H/4, W/4) in (0, 1): how much of the memory to keep."""
        return torch.sigmoid(self.net(mismatch_stats(x, m)))


def restart_smoothing(head_state, flow: torch.Tensor):
    """The recursive head's state with its smoothed output's age zeroed where the camera moved (a non-zero flow):
    the output then starts again from the frame. Why: the warped output is blurred by the resampling, as the
    filter state is, and averaging it in cost 0.02-0.04 dB on held-out camera motions (docs/RESULTS.md, twelfth
    session). Other states pass through."""
    if head_state is None or len(head_state) < 4:
        return head_state
    m, count, previous, age = head_state
    return m, count, previous, age * (flow.flatten(1).abs().amax(1) == 0).to(previous.dtype)  # (B,)


def scale_state(state, keep: torch.Tensor):
    """Every (B, ..., h, w) tensor of a nested state (ConvLSTM h and c, conv3d's past features) times `keep`
    (B, 1, h, w); others (counts) pass through."""
    if isinstance(state, torch.Tensor):
        if state.dim() < 4 or state.shape[-2:] != keep.shape[-2:]:
            return state
        return state * keep.view(keep.shape[0], *[1] * (state.dim() - 3), *keep.shape[-2:]).to(state.dtype)
    if isinstance(state, dict):
        return {k: scale_state(v, keep) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(scale_state(v, keep) for v in state)
    return state


# --- networks ---------------------------------------------------------------------------------

class ClipConvLSTM(nn.Module):
    """A ConvLSTM run along the time axis: (B, T, C, H, W) -> (B, T, hidden, H, W)."""

    def __init__(self, in_ch: int, hidden: int, layers: int, kernel: int):
        super().__init__()
        self.lstm = ConvLSTM(in_ch, hidden, layers, kernel)

    def forward(self, x, state=None):
        outs = []
        for t in range(x.shape[1]):
            y, state = self.lstm(x[:, t], state)
            outs.append(y)
        return torch.stack(outs, 1), state


ALIGNS = {"none": lambda cfg: None,
          "flow": lambda cfg: FlowAlign(cfg.fusion, margin=cfg.align_margin),
          "camera": lambda cfg: CameraAlign(margin=cfg.align_margin, rating=cfg.align_rating)}


class VideoNet(nn.Module):
    """Encoder + MFF on every frame (batched over B*T), a temporal module at stride 4, a head.

    state = {"temporal": the temporal module's state, "head": the head's (running mean or filter) or None};
    with cfg.align = "flow" or "camera" also "align": the previous frame's matching descriptor, and before each
    frame's update both states are warped by the flow estimated from it (per pixel, or one affine map per frame;
    model/align.py), or with cfg.align_to = "filter" from the filter state's descriptor; with cfg.encoder_mean
    also "mean": the running sum and count of the inputs, whose mean the encoder sees beside each frame;
    with cfg.state_reset a StateReset acts on both states before each frame (no state of its own).
    """

    def __init__(self, cfg: ModelCfg, in_channels: int, temporal: nn.Module, packed: bool = True):
        super().__init__()
        if cfg.head not in HEADS:
            raise BatmanError(f"unknown model.head {cfg.head!r}; choose one of {', '.join(HEADS)}")
        if cfg.size not in ENCODERS:
            raise BatmanError(f"unknown model.size {cfg.size!r}; choose one of {', '.join(ENCODERS)}")
        self.in_channels, self.scale = in_channels, cfg.scale
        encoder = ENCODERS[cfg.size]
        self.encoder_mean = cfg.encoder_mean
        encoder_in = in_channels * (2 if cfg.encoder_mean else 1)
        self.encoder = encoder(encoder_in, cfg.norm, cfg.encoder_weights, cfg.checkpointing)
        self.fusion = MFF(encoder.channels, cfg.fusion, cfg.norm)
        self.temporal = temporal
        self.head = HEADS[cfg.head](cfg, in_channels, packed)
        if cfg.align not in ALIGNS:
            raise BatmanError(f"unknown model.align {cfg.align!r}; choose one of {', '.join(ALIGNS)}")
        self.align = ALIGNS[cfg.align](cfg)
        if cfg.align_to not in ("frame", "filter"):
            raise BatmanError(f"unknown model.align_to {cfg.align_to!r}; choose frame or filter")
        self.align_to_filter = self.align is not None and cfg.align_to == "filter"
        if self.align_to_filter and cfg.head != "recursive":
            raise BatmanError("model.align_to=filter matches each frame against the recursive head's filter state: "
                              "it needs model.head=recursive")
        if cfg.output_smoothing and cfg.head != "recursive":
            raise BatmanError("model.output_smoothing follows the recursive head's gate: it needs model.head=recursive")
        if cfg.state_reset and cfg.head != "recursive":
            raise BatmanError("model.state_reset compares each frame with the recursive head's filter state: "
                              "it needs model.head=recursive")
        self.reset = StateReset() if cfg.state_reset else None
        if cfg.single_frame and (cfg.head != "recursive" or cfg.scale != 1):
            raise BatmanError("model.single_frame takes the U-Net's output where the recursive head's gate opens: it "
                              "needs model.head=recursive and model.scale=1")
        self.single = SIDUNet(in_channels, cfg.scale) if cfg.single_frame else None
        if cfg.single_frame_input not in ("frame", "filter"):
            raise BatmanError(f"unknown model.single_frame_input {cfg.single_frame_input!r}; choose frame or filter")
        self.single_from_filter = cfg.single_frame_input == "filter"

    def forward(self, x: torch.Tensor, state: dict | None = None, with_base: bool = False):
        """-> (y, state), or (y, state, base) with `with_base` (the recursive head's filter state through
        the pipeline, for train.filter_weight)."""
        b, t, _, h, w = x.shape
        if with_base and not isinstance(self.head, RecursiveHead):
            raise BatmanError("train.filter_weight supervises the recursive head's filter: it needs "
                              "model.head=recursive")
        state = state or {}
        frames = pad_to_multiple(x.flatten(0, 1))
        seen, mean_state = self.encoder_input(frames.unflatten(0, (b, t)), state.get("mean"))
        feats = self.fusion(self.encoder(seen.flatten(0, 1)))
        single = self.single_frame(frames.unflatten(0, (b, t)))
        if self.align is not None or self.reset is not None:
            y, state, base = self.frame_by_frame(feats.unflatten(0, (b, t)), frames.unflatten(0, (b, t)), state,
                                                 with_base, (h, w), single)
        else:
            feats, temporal_state = self.temporal(feats.unflatten(0, (b, t)), state.get("temporal"))
            y, head_state, *base = self.head(feats, frames.unflatten(0, (b, t)), state.get("head"), with_base,
                                             valid=(h, w), single=single)
            state = {"temporal": temporal_state, "head": head_state}
            base = base[0] if base else None
        if mean_state is not None:
            state = {**state, "mean": mean_state}
        crop = (..., slice(0, h * self.scale), slice(0, w * self.scale))
        return (y[crop], state, base[crop]) if with_base else (y[crop], state)

    def single_frame(self, frames: torch.Tensor) -> torch.Tensor | nn.Module | None:
        """(B, T, C, H, W) padded frames -> the single-frame path the head takes: the U-Net's outputs (B, T, 3, H, W);
        with cfg.single_frame_input = filter the U-Net itself, which the head runs on each updated filter state
        (it exists only there); None without cfg.single_frame."""
        if self.single is None or self.single_from_filter:
            return self.single
        return self.single(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])

    def encoder_input(self, frames: torch.Tensor, mean_state):
        """(B, T, C, H, W) -> what the encoder sees (the frames, with cfg.encoder_mean their running mean
        beside them: C doubles) and the running mean's new state (None without it)."""
        if not self.encoder_mean:
            return frames, None
        mean, mean_state = running_mean(frames, mean_state)
        return torch.cat([frames, mean], 2), mean_state

    def frame_by_frame(self, feats: torch.Tensor, frames: torch.Tensor, state: dict, with_base: bool = False,
                       valid=None, single=None):
        """Frame by frame, for what acts between frames: with cfg.align the flow from the previous frame warps
        the states onto the new frame; with cfg.state_reset the frame's departure from the filter state scales
        the temporal memory down and pulls the filter towards the frame. -> (y, state, base or None).
        `valid`: the head's (H, W) before padding; `single`: the single-frame path (`single_frame`) or None."""
        outs, bases = [], []
        for i in range(feats.shape[1]):
            recurrent = {"temporal": state.get("temporal"), "head": state.get("head")}
            if self.align is not None:
                reference = state.get("align")
                if self.align_to_filter and reference is not None:
                    reference = descriptor(recurrent["head"][0])
                flow, previous = self.align(frames[:, i], feats[:, i], reference)
                if flow is not None:
                    recurrent = warp_state(recurrent, flow, tuple(feats.shape[-2:]))
                    recurrent["head"] = restart_smoothing(recurrent["head"], flow)
            if self.reset is not None and recurrent["head"] is not None and recurrent["temporal"] is not None:
                recurrent["temporal"], recurrent["head"] = self.reset(recurrent["temporal"], recurrent["head"],
                                                                      frames[:, i], self.head.colours)
            f, temporal_state = self.temporal(feats[:, i:i + 1], recurrent["temporal"])
            y, head_state, *base = self.head(f, frames[:, i:i + 1], recurrent["head"], with_base, valid,
                                             frame_of(single, i, keep_dim=True))
            state = {"temporal": temporal_state, "head": head_state}
            if self.align is not None:
                state["align"] = previous
            outs.append(y)
            bases += base
        return torch.cat(outs, 1), state, torch.cat(bases, 1) if with_base else None

    def step(self, frame: torch.Tensor, state: dict | None = None):
        y, state = self(frame.unsqueeze(1), state)
        return y[:, 0], state


class FrameNet(nn.Module):
    """The SID U-Net applied to every frame on its own; the state passes through untouched."""

    def __init__(self, cfg: ModelCfg, in_channels: int):
        super().__init__()
        self.in_channels, self.scale = in_channels, cfg.scale
        self.unet = SIDUNet(in_channels, cfg.scale)

    def forward(self, x: torch.Tensor, state=None):
        b, t, _, h, w = x.shape
        y = self.unet(pad_to_multiple(x.flatten(0, 1)))
        return y[..., :h * self.scale, :w * self.scale].unflatten(0, (b, t)), state

    def step(self, frame: torch.Tensor, state=None):
        y, state = self(frame.unsqueeze(1), state)
        return y[:, 0], state


def clstm(cfg: ModelCfg, in_channels: int, packed: bool = True) -> VideoNet:
    """Stacked ConvLSTM (cfg.layers x cfg.hidden, cfg.kernel) on the MFF features, frame by frame."""
    return VideoNet(cfg, in_channels, ClipConvLSTM(cfg.fusion, cfg.hidden, cfg.layers, cfg.kernel), packed)


def conv3d(cfg: ModelCfg, in_channels: int, packed: bool = True) -> VideoNet:
    """cfg.layers causal 3D convolutions (cfg.t_kernel x cfg.kernel x cfg.kernel, cfg.hidden wide)."""
    return VideoNet(cfg, in_channels, CausalConv3d(cfg.fusion, cfg.hidden, cfg.layers, cfg.kernel, cfg.t_kernel),
                    packed)


def unet(cfg: ModelCfg, in_channels: int, packed: bool = True) -> FrameNet:
    return FrameNet(cfg, in_channels)


MODELS = {"clstm": clstm, "conv3d": conv3d, "unet": unet}


def build_model(cfg: ModelCfg, in_channels: int, packed: bool = True) -> nn.Module:
    """The network named by cfg.name for data with `in_channels` channels (DataCfg.in_channels:
    4 packed raw or 3 rawRGB, plus 1 with the noise map); `packed`: the first four are R, G1, G2, B."""
    if cfg.name not in MODELS:
        raise BatmanError(f"unknown model.name {cfg.name!r}; choose one of {', '.join(MODELS)}")
    if cfg.scale < 1:
        raise BatmanError(f"model.scale must be a positive integer (1 or 2), got {cfg.scale}")
    if (cfg.residual_rule or cfg.residual_cap or cfg.noise_input) and (cfg.name == "unet" or cfg.head != "recursive"):
        raise BatmanError("model.residual_rule, model.residual_cap and model.noise_input act on the recursive head's "
                          "residual: they need model.head=recursive (and not model.name=unet)")
    return MODELS[cfg.name](cfg, in_channels, packed)


def model_for(cfg: Config) -> nn.Module:
    """The network a full Config describes (its data decides the input channels and their layout)."""
    return build_model(cfg.model, cfg.data.in_channels, packed=cfg.data.mode == "raw")


def describe_models(cfg: Config) -> str:
    """A table of the variants for a full Config: parameters and clip shapes at its crop and clip length."""
    c = cfg.data.in_channels
    (h, w), t, s = cfg.data.crop, cfg.data.frames, cfg.model.scale
    shape_in, shape_out = f"(B,{t},{c},{h},{w})", f"(B,{t},3,{h * s},{w * s})"
    m = cfg.model
    rows = [("  model", "params", "input", "output", "note")]
    for name in MODELS:
        model = build_model(replace(m, name=name, encoder_weights=""), cfg.data.in_channels)
        params = sum(p.numel() for p in model.parameters())
        rows.append(("* " + name if name == m.name else "  " + name, f"{params / 1e6:.2f} M", shape_in, shape_out,
                     "single frame" if name == "unet" else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(wd) for v, wd in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    lines.append(f"data mode {cfg.data.mode}, head {m.head}, norm {m.norm}, hidden {m.hidden}, layers {m.layers}, "
                 f"fusion {m.fusion}, scale {s}, noise_map {cfg.data.noise_map}"
                 + ("" if m.head == "recursive" else f", mean_input {m.mean_input}") + "  (* selected)")
    return "\n".join(lines)
