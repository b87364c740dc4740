"""MFF: multi-scale feature fusion of the encoder stages (Zhang et al., CVPR 2019; their decoder dropped).

Each stage -> 3x3 conv to `channels` at its own resolution (cheap at the deep stages) ->
bilinear upsampling to stride 4 -> concatenation -> 1x1 conv back to `channels`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from batman.model.encoder import make_norm


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
        ups = [conv(f) for conv, f in zip(self.stages, feats)]
        ups = [ups[0]] + [F.interpolate(u, size=size, mode="bilinear", align_corners=False) for u in ups[1:]]
        return self.fuse(torch.cat(ups, 1))
