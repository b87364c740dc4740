"""The single-frame U-Net of SID (Chen et al., CVPR 2018, "Learning to See in the Dark").

32-64-128-256-512 channels, two 3x3 convs + LeakyReLU(0.2) per level, max pooling down,
2x2 transposed convolution up, skip concatenation. SID ends in a 1x1 conv to 12 channels
and depth-to-space x2 (packed raw -> full resolution); here the output grid is the input
grid times `scale`, so the last conv gives 3 * scale^2 channels and PixelShuffle(scale).
7.76 M parameters for 4 input channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = (32, 64, 128, 256, 512)


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class SIDUNet(nn.Module):
    """(N, C, H, W), H and W multiples of 16 -> (N, 3, H*scale, W*scale), unconstrained."""

    def __init__(self, in_channels: int, scale: int = 1):
        super().__init__()
        chans = (in_channels,) + WIDTHS
        self.down = nn.ModuleList(double_conv(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
        self.merge = nn.ModuleList(double_conv(2 * a, a) for a in WIDTHS[:-1])
        self.out = nn.Sequential(nn.Conv2d(WIDTHS[0], 3 * scale * scale, 1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for n, block in enumerate(self.down):
            x = block(x if n == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(reversed(self.up), reversed(self.merge), reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], 1))
        return self.out(x)
