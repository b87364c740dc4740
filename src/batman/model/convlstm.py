"""Convolutional LSTM (Shi et al., NeurIPS 2015, without peepholes); the state is passed explicitly.

    [i, f, o, g] = conv([x, h])            one convolution for the four gates
    i, f, o = sigmoid(i, f, o);  g = tanh(g)
    c' = f * c + i * g
    h' = o * tanh(c')
"""
from __future__ import annotations

import torch
import torch.nn as nn

State = list[tuple[torch.Tensor, torch.Tensor]]


class ConvLSTMCell(nn.Module):
    def __init__(self, in_ch: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(in_ch + hidden, 4 * hidden, kernel, padding=kernel // 2)
        # Forget gate bias 1: the cell starts by keeping its memory (Jozefowicz et al., 2015).
        with torch.no_grad():
            self.conv.bias[hidden:2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, in_ch, H, W), state (h, c) each (B, hidden, H, W) or None (zeros) -> (h', (h', c'))."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class ConvLSTM(nn.Module):
    """Stacked cells: each layer's h is the next layer's input."""

    def __init__(self, in_ch: int, hidden: int, layers: int = 2, kernel: int = 3):
        super().__init__()
        self.cells = nn.ModuleList(ConvLSTMCell(in_ch if n == 0 else hidden, hidden, kernel) for n in range(layers))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x (B, in_ch, H, W), state: one (h, c) per layer or None -> (h of the top layer, new state)."""
        state = state or [None] * len(self.cells)
        new_state = []
        for cell, layer_state in zip(self.cells, state):
            x, layer_state = cell(x, layer_state)
            new_state.append(layer_state)
        return x, new_state
