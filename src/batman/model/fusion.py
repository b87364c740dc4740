"""MFF: multi-scale feature fusion of the encoder stages (Zhang et al., CVPR 2019; their decoder dropped).

Each stage -> 3x3 conv to `channels` at its own resolution (cheap at the deep stages) ->
bilinear upsampling to stride 4 -> concatenation -> 1x1 conv back to `channels`.

Computed without the concatenation: the 1x1 conv's weight is split per stage, each slice applied at
the stage's own resolution before the upsampling, and the results summed. A 1x1 conv mixes channels
pixel by pixel and bilinear upsampling mixes pixels channel by channel (weights summing to 1), so the
two commute and the sum equals conv(cat(upsampled)) up to float rounding, at a quarter of the 1x1
conv's FLOPs and without the 4*channels-wide tensor at stride 4.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from batman.model.encoder import make_norm


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def conv_of_concat(conv: nn.Conv2d, parts: list[torch.Tensor]) -> torch.Tensor:
    """conv(cat(parts, 1)) without the concatenation: the weight split along its input channels, one conv
    per part, summed (the bias once). Equal up to float rounding; saves writing and reading the wide input."""
    weights = conv.weight.split([p.shape[1] for p in parts], 1)
    out = F.conv2d(parts[0], weights[0], conv.bias, conv.stride, conv.padding, conv.dilation)
    for part, weight in zip(parts[1:], weights[1:]):
        out = out + F.conv2d(part, weight, None, conv.stride, conv.padding, conv.dilation)
    return out


def conv_norm_relu(in_ch: int, out_ch: int, kernel: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         make_norm(norm, out_ch), nn.ReLU(inplace=True))


class MFF(nn.Module):
    """[(N, c_i, H/2^(i+2), W/2^(i+2)) for each stage] -> (N, channels, H/4, W/4)."""

    def __init__(self, stage_channels: tuple[int, ...], channels: int, norm: str = "group"):
        super().__init__()
        self.stages = nn.ModuleList(conv_norm_relu(c, channels, 3, norm) for c in stage_channels)
        self.fuse = conv_norm_relu(channels * len(stage_channels), channels, 1, norm)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        weights = self.fuse[0].weight.split(self.fuse[0].out_channels, 1)  # one (channels, channels) slice per stage
        out = None
        for conv, f, weight in zip(self.stages, feats, weights):
            part = F.conv2d(conv(f), weight)  # the fuse conv (no bias) at the stage's own resolution
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            out = part if out is None else out + part
        return self.fuse[1:](out)
