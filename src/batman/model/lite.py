"""The lite encoder (`model.size=lite`): four small stages at strides 4, 8, 16, 32 in place of ResNet-18.

    stem:     x -> relu(norm(conv3x3/2(x)))                              (N, 16,  H/2,  W/2)
    stage i:  d = relu(norm(conv3x3/2(x)));  y = relu(d + norm(conv3x3(d)))  (N, c_i, H/2^(i+2), W/2^(i+2))
    c = (16, 32, 64, 128)  for strides 4, 8, 16, 32

Each stage halves the grid and doubles the channels, so every stage after the first costs the same
per input pixel (~430 FLOP); the whole encoder costs ~2.2 kFLOP per input pixel, 1/33 of
ResNet-18's 75 kFLOP. `config.SIZES["lite"]` narrows the rest to match (MFF 32, one ConvLSTM layer of
16, head width 8): about 13 kFLOP per input pixel, ~12.5 GFLOP for a 1280x720 frame (EMVD, the
efficient anchor: 5.4 GFLOP). No ImageNet weights exist for it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from batman.config import BatmanError
from batman.model.encoder import make_norm


class LiteStage(nn.Module):
    """conv3x3 stride 2 (in_ch -> out_ch), then one residual 3x3 conv; norm and ReLU after each."""

    def __init__(self, in_ch: int, out_ch: int, norm: str):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
                                  make_norm(norm, out_ch), nn.ReLU(inplace=True))
        self.conv = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), make_norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.down(x)
        return torch.relu(d + self.conv(d))


class LiteEncoder(nn.Module):
    """(N, C, H, W), H and W multiples of 32 -> [(N, 16, H/4, W/4), (N, 32, H/8, W/8), (N, 64, H/16, W/16),
    (N, 128, H/32, W/32)]; the same constructor and output contract as `Encoder`. `checkpointing` is accepted
    and not used: the lite encoder's activations are a small part of the model's."""

    channels = (16, 32, 64, 128)
    STEM = 16

    def __init__(self, in_channels: int, norm: str = "group", weights: str = "", checkpointing: bool = False):
        super().__init__()
        if weights:
            raise BatmanError("model.encoder_weights holds ResNet-18 weights, which the lite encoder cannot use; "
                              "leave it empty with model.size=lite")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, self.STEM, 3, stride=2, padding=1, bias=False),
                                  make_norm(norm, self.STEM), nn.ReLU(inplace=True))
        widths = (self.STEM,) + self.channels
        self.stages = nn.ModuleList(LiteStage(a, b, norm) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
