"""Causal 3D convolutions over time: the output at frame t sees only frames <= t.

The time axis is padded on the past side only: with the previous call's last
`t_kernel - 1` inputs of each layer (the streaming state), or zeros at the start of a video.
So a whole clip and the same clip fed frame by frame give the same output.

A 3D convolution with temporal extent k_t, stride 1 and no temporal padding is a 2D
convolution over the k_t frames of each window stacked along channels:
    conv3d weight (out, C, k_t, k, k)  ==  conv2d weight (out, k_t * C, k, k), frame-major.
Written that way it runs on 4D tensors, so `channels_last` works and the fast 2D kernels are used.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalConv3d(nn.Module):
    """`layers` causal 3D convolutions (t_kernel x kernel x kernel), each followed by ReLU; in_ch -> hidden."""

    def __init__(self, in_ch: int, hidden: int, layers: int = 2, kernel: int = 3, t_kernel: int = 3):
        super().__init__()
        self.t_kernel = t_kernel
        self.convs = nn.ModuleList(
            nn.Conv2d(t_kernel * (in_ch if n == 0 else hidden), hidden, kernel, padding=kernel // 2)
            for n in range(layers))

    def forward(self, x: torch.Tensor, state: list[torch.Tensor] | None = None):
        """x (B, T, C, H, W), state: per layer its last t_kernel-1 input frames (B, t_kernel-1, C_layer, H, W)
        or None (zeros) -> (y (B, T, hidden, H, W), new state)."""
        b, t = x.shape[:2]
        state = state or [None] * len(self.convs)
        new_state = []
        for conv, past in zip(self.convs, state):
            if past is None:
                past = x.new_zeros(b, self.t_kernel - 1, *x.shape[2:])
            x = torch.cat([past, x], 1)  # frames t - t_kernel + 1 ... t for every output t
            new_state.append(x[:, x.shape[1] - (self.t_kernel - 1):])
            windows = torch.cat([x[:, j:j + t] for j in range(self.t_kernel)], 2)  # (B, T, t_kernel * C, H, W)
            x = F.relu(conv(windows.flatten(0, 1))).unflatten(0, (b, t))
        return x, new_state
