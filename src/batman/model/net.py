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

import torch
import torch.nn as nn
import torch.nn.functional as F

from batman.config import BatmanError, Config, ModelCfg
from batman.model.conv3d import CausalConv3d
from batman.model.convlstm import ConvLSTM
from batman.model.encoder import Encoder
from batman.model.fusion import MFF
from batman.model.unet import SIDUNet

PAD_MULTIPLE = 32  # the encoder's deepest stride


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate-pad (N, C, H, W) on the bottom and right to multiples of `multiple` (works for any size,
    unlike reflect)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def detach_state(state):
    """The same nested state (dicts, lists, tuples of tensors) cut from the graph, for truncated BPTT."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(v) for v in state)
    return state


# --- heads: stride-4 features (+ input frame, + running mean) -> output grid ---------------------

class ShuffleHead(nn.Module):
    """3x3 conv to 3 * (4s)^2 channels, then PixelShuffle(4s). The running mean, if given, joins
    at stride 4 by space-to-depth."""

    def __init__(self, feat_ch: int, in_ch: int, scale: int, mean_input: bool, width: int = 0):
        super().__init__()
        extra = in_ch * 16 if mean_input else 0
        self.conv = nn.Conv2d(feat_ch + extra, 3 * (4 * scale) ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(4 * scale)

    def forward(self, feats, frame, mean):
        if mean is not None:
            feats = torch.cat([feats, F.pixel_unshuffle(mean, 4)], 1)
        return self.shuffle(self.conv(feats))


class SkipHead(nn.Module):
    """Features shuffled to `width` channels on the output grid, concatenated with the input
    frame (and running mean), upsampled by s, then three 3x3 convs to RGB."""

    def __init__(self, feat_ch: int, in_ch: int, scale: int, mean_input: bool, width: int):
        super().__init__()
        self.scale = scale
        self.up = nn.Sequential(nn.Conv2d(feat_ch, width * (4 * scale) ** 2, 1), nn.PixelShuffle(4 * scale),
                                nn.LeakyReLU(0.2, inplace=True))
        refine_in = width + in_ch * (2 if mean_input else 1)
        self.refine = nn.Sequential(
            nn.Conv2d(refine_in, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, feats, frame, mean):
        parts = [self.up(feats), upsample(frame, self.scale)]
        if mean is not None:
            parts.append(upsample(mean, self.scale))
        return self.refine(torch.cat(parts, 1))


HEADS = {"shuffle": ShuffleHead, "skip": SkipHead}


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


class VideoNet(nn.Module):
    """Encoder + MFF on every frame (batched over B*T), a temporal module at stride 4, a head.

    state = {"temporal": the temporal module's state, "mean": (running sum (B,C,H,W), frame count) or None}.
    """

    def __init__(self, cfg: ModelCfg, in_channels: int, temporal: nn.Module):
        super().__init__()
        if cfg.head not in HEADS:
            raise BatmanError(f"unknown model.head {cfg.head!r}; choose one of {', '.join(HEADS)}")
        self.in_channels, self.scale, self.mean_input = in_channels, cfg.scale, cfg.mean_input
        self.encoder = Encoder(in_channels, cfg.norm, cfg.encoder_weights, cfg.checkpointing)
        self.fusion = MFF(Encoder.channels, cfg.fusion, cfg.norm)
        self.temporal = temporal
        self.head = HEADS[cfg.head](cfg.hidden, in_channels, cfg.scale, cfg.mean_input, cfg.head_width)

    def running_mean(self, x, state):
        """Causal mean of the input frames: x (B, T, C, H, W) -> (mean (B, T, C, H, W), (sum, count))."""
        total, count = state if state is not None else (torch.zeros_like(x[:, 0]), 0)
        sums = total.unsqueeze(1) + x.cumsum(1)
        counts = torch.arange(count + 1, count + x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return sums / counts.view(1, -1, 1, 1, 1), (sums[:, -1], count + x.shape[1])

    def forward(self, x: torch.Tensor, state: dict | None = None):
        b, t, _, h, w = x.shape
        state = state or {}
        frames = pad_to_multiple(x.flatten(0, 1))
        feats = self.fusion(self.encoder(frames))
        feats, temporal_state = self.temporal(feats.unflatten(0, (b, t)), state.get("temporal"))
        mean, mean_state = None, None
        if self.mean_input:
            mean, mean_state = self.running_mean(x, state.get("mean"))
            mean = pad_to_multiple(mean.flatten(0, 1))
        y = self.head(feats.flatten(0, 1), frames, mean)
        y = y[..., :h * self.scale, :w * self.scale].unflatten(0, (b, t))
        return y, {"temporal": temporal_state, "mean": mean_state}

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


def clstm(cfg: ModelCfg, in_channels: int) -> VideoNet:
    """Stacked ConvLSTM (cfg.layers x cfg.hidden, cfg.kernel) on the MFF features, frame by frame."""
    return VideoNet(cfg, in_channels, ClipConvLSTM(cfg.fusion, cfg.hidden, cfg.layers, cfg.kernel))


def conv3d(cfg: ModelCfg, in_channels: int) -> VideoNet:
    """cfg.layers causal 3D convolutions (cfg.t_kernel x cfg.kernel x cfg.kernel, cfg.hidden wide)."""
    return VideoNet(cfg, in_channels, CausalConv3d(cfg.fusion, cfg.hidden, cfg.layers, cfg.kernel, cfg.t_kernel))


MODELS = {"clstm": clstm, "conv3d": conv3d, "unet": FrameNet}


def build_model(cfg: ModelCfg, in_channels: int) -> nn.Module:
    """The network named by cfg.name for data with `in_channels` channels (DataCfg.in_channels:
    4 packed raw or 3 rawRGB, plus 1 with the noise map)."""
    if cfg.name not in MODELS:
        raise BatmanError(f"unknown model.name {cfg.name!r}; choose one of {', '.join(MODELS)}")
    if cfg.scale < 1:
        raise BatmanError(f"model.scale must be a positive integer (1 or 2), got {cfg.scale}")
    return MODELS[cfg.name](cfg, in_channels)


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
                 f"fusion {m.fusion}, scale {s}, noise_map {cfg.data.noise_map}, mean_input {m.mean_input}  (* selected)")
    return "\n".join(lines)
