"""A small three-level U-Net that denoises the recursive filter's output in space (model.denoiser = width).

Why: where the scene is still, the filter state is the temporal mean, and on the held-out static videos
forcing the gate shut moved the output by only 0.1-0.2 dB (0.3 at frame 16), while temporal mean + BM3D
scored 1.3 dB above it. The shortfall is spatial: the head's residual saw the filtered image through two
3x3 convs (a 5x5 window), and the deep features come from single noisy frames, which cannot resolve what
16 averaged frames reveal. This network sees the filtered image (and the head's features) at full, half and
quarter resolution, as BM3D's patch search does, and adds a correction; its last conv starts at zero, so a model
widened with it (train --init) starts out computing what it did. A denoiser made wider (a larger width, train
--init; `widened_state`) keeps its old channels and their outputs: the new channels start random but feed the old
ones through zero weights, so the network computes what it did and gradients reach the new channels at once.

Cost per input pixel at width w with c input channels: about 9 (c w + 9 w^2) multiply-adds (w = 16, c = 19:
~24 k, +27% FLOPs on the default clstm). Measured (docs/RESULTS.md, third session): fine-tuned with
model.gate_evidence onto the shipped weights it moved held-out static PSNR by +0.04 dB and moving by -0.37.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from batman.model.fusion import conv_of_concat, upsample


def conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, padding=1), nn.LeakyReLU(0.2, inplace=True))


class BaseDenoiser(nn.Module):
    """[(B, c_i, H, W) parts] -> (B, out_ch, H, W); H and W multiples of 4."""

    def __init__(self, in_ch: int, width: int, out_ch: int):
        super().__init__()
        w = width
        self.enter = nn.Conv2d(in_ch, w, 3, padding=1)
        self.down1 = nn.Sequential(conv(w, 2 * w, 2), conv(2 * w, 2 * w))
        self.down2 = nn.Sequential(conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w))
        self.up2 = conv(4 * w + 2 * w, 2 * w)
        self.up1 = conv(2 * w + w, w)
        self.out = nn.Conv2d(w, out_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The parts are read as one concatenation (conv_of_concat: none is written at full resolution)."""
        e1 = F.leaky_relu(conv_of_concat(self.enter, parts), 0.2)
        e2 = self.down1(e1)
        e3 = self.down2(e2)
        d2 = self.up2(torch.cat([upsample(e3, 2), e2], 1))
        d1 = self.up1(torch.cat([upsample(d2, 2), e1], 1))
        return self.out(d1)


def channel_groups(in_ch: int, width: int, out_ch: int) -> dict[str, tuple[list[int], list[int]]]:
    """Each conv's (output groups, input groups) in channels: a concatenation's parts are separate groups, so
    a wider network's channels can be matched to a narrower one's part by part."""
    w = width
    return {"enter": ([w], [in_ch]), "down1.0.0": ([2 * w], [w]), "down1.1.0": ([2 * w], [2 * w]),
            "down2.0.0": ([4 * w], [2 * w]), "down2.1.0": ([4 * w], [4 * w]), "up2.0": ([2 * w], [4 * w, 2 * w]),
            "up1.0": ([w], [2 * w, w]), "out": ([out_ch], [w])}


def _kept(old_groups: list[int], new_groups: list[int]) -> torch.Tensor:
    """Indices in the new layout of the old channels: the first channels of each group."""
    starts = torch.tensor([0] + new_groups[:-1]).cumsum(0)
    return torch.cat([torch.arange(n) + int(s) for n, s in zip(old_groups, starts)])


def widened_state(old: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A narrower denoiser's weights (`old`, keys as in its state_dict) placed into a wider one's (`initial`:
    its fresh state_dict). Old channels keep their weights and read the new channels through zeros; the new
    channels keep their initial weights. So the wider network computes what the old one did."""
    in_ch, out_ch = old["enter.weight"].shape[1], old["out.weight"].shape[0]
    before = channel_groups(in_ch, old["enter.weight"].shape[0], out_ch)
    after = channel_groups(in_ch, initial["enter.weight"].shape[0], out_ch)
    state = {}
    for name, (outs, ins) in after.items():
        rows, cols = _kept(before[name][0], outs), _kept(before[name][1], ins)
        weight, bias = initial[f"{name}.weight"].clone(), initial[f"{name}.bias"].clone()
        weight[rows] = 0.0
        weight[rows[:, None], cols] = old[f"{name}.weight"]
        bias[rows] = old[f"{name}.bias"]
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    return state
