"""Motion-compensated recurrence: warp the recurrent state onto the incoming frame before the update.

The recursive head can only forget where things move (its gate); warping lets it follow them. Matching
runs on a parameter-free descriptor of the input frame x_t (B, C, H, W), so an untrained network already
follows motion; the learned part only refines it:

    y_t       = avg_pool_4(mean_c x_t)                   (B, 1, h, w): stride 4, like the features
    z_t(p)    = the 3x3 patch of (y_t - box_3x3(y_t)) at p, normalised   (B, 9, h, w): 12x12 input pixels
    corr_d(p) = box_3x3(<z_t, z_{t-1}(. + d)>)(p)        normalised cross-correlation, d in [-R, R]^2
    d*(p)     = argmax_d corr_d(p), refined per axis by the parabola through its neighbours:
                delta = (c_- - c_+) / (2 (c_- - 2 c_0 + c_+)) in [-1/2, 1/2]   (exact for a symmetric peak)
                and 0 (no motion) where corr_{d*}(p) - corr_0(p) < margin (0: off): in flat or noisy
                regions the normalised patches are mostly noise, their argmax is random, and a
                random warp of a static scene jitters and blurs the state
    flow(p)   = d*(p) + delta(p) + refine([corr, f_t])          (B, 2, h, w): (dy, dx)
    S'(p)     = S(p + flow(p))        every (B, *, h, w) state tensor (ConvLSTM h and c), bilinear
    S'(P)     = S(P + 4 flow~(P))     every (B, *, 4h, 4w) one (the filter state m), flow~ = flow upsampled x4

f_t are the frame's stride-4 features; `refine` is a 3x3 conv initialised to zero (it learns through the
sub-pixel term and the features; the argmax itself is parameter-free). Samples outside the
frame take the border value (grid_sample padding "border"); what is new there is left to the head's gate.
Causal and streaming: only z_{t-1} is kept. R = RADIUS = 4 stride-4 pixels covers 16 input pixels per
frame, the fastest motion `batman synth` draws. Cost per input pixel: (2R+1)^2 * 9 / 16 ~ 46 multiply-adds
for the correlation, plus the refine conv ((81 + F) * 2 * 9 / 16 per pixel).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

RADIUS = 4


class FlowAlign(nn.Module):
    def __init__(self, channels: int, radius: int = RADIUS, margin: float = 0.0):
        super().__init__()
        self.radius, self.margin = radius, margin
        side = 2 * radius + 1
        self.refine = nn.Conv2d(side * side + channels, 2, 3, padding=1)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    @staticmethod
    def descriptor(frame: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) input -> (B, 9, H/4, W/4) zero-mean, unit-norm 3x3 patches of its stride-4 brightness."""
        y = F.avg_pool2d(frame.float().mean(1, keepdim=True), 4)
        y = y - F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, 1)
        patches = F.unfold(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3).unflatten(-1, y.shape[-2:])
        return F.normalize(patches - patches.mean(1, keepdim=True), dim=1, eps=1e-6)

    def correlation(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """<new(p), old(p + d)> for every d: (B, (2R+1)^2, h, w)."""
        r, (h, w) = self.radius, new.shape[-2:]
        b = F.pad(old, (r, r, r, r), mode="replicate")
        side = 2 * r + 1
        corr = torch.stack([(new * b[..., i:i + h, j:j + w]).sum(1) for i in range(side) for j in range(side)], 1)
        return F.avg_pool2d(F.pad(corr, (1, 1, 1, 1), mode="replicate"), 3, 1)  # aggregated: a steadier peak

    def flow(self, z: torch.Tensor, previous: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w): where each pixel of the new frame was in the previous one, in stride-4 pixels (dy, dx)."""
        corr = self.correlation(z, previous)
        return self.peak(corr) + self.refine(torch.cat([corr, feats.float()], 1))

    def peak(self, corr: torch.Tensor) -> torch.Tensor:
        """The best displacement of every pixel with its parabolic sub-pixel correction: (B, 2, h, w)."""
        side = 2 * self.radius + 1
        best = corr.argmax(1)
        iy, ix = best // side, best % side

        def at(dy: int, dx: int) -> torch.Tensor:
            index = (iy + dy).clamp(0, side - 1) * side + (ix + dx).clamp(0, side - 1)
            return corr.gather(1, index.unsqueeze(1)).squeeze(1)

        centre = at(0, 0)
        offsets = [parabola(at(-1, 0), centre, at(1, 0)), parabola(at(0, -1), centre, at(0, 1))]
        flow = torch.stack([iy - self.radius + offsets[0], ix - self.radius + offsets[1]], 1).float()
        if self.margin > 0:
            still = centre - corr[:, self.radius * side + self.radius] < self.margin
            flow = flow.masked_fill(still.unsqueeze(1), 0.0)
        return flow

    def forward(self, frame: torch.Tensor, feats: torch.Tensor, state):
        """frame (B, C, H, W) and its features (B, F, H/4, W/4); state: the previous descriptor or None ->
        (flow or None, the new descriptor)."""
        z = self.descriptor(frame)
        return (None if state is None else self.flow(z, state, feats)), z


def parabola(before: torch.Tensor, centre: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Vertex of the parabola through (-1, before), (0, centre), (1, after), in [-1/2, 1/2]; 0 where flat."""
    curvature = before - 2 * centre + after
    safe = torch.where(curvature < -1e-6, curvature, torch.full_like(curvature, -1.0))
    return torch.where(curvature < -1e-6, 0.5 * (before - after) / safe, torch.zeros_like(curvature)).clamp(-0.5, 0.5)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) sampled at p + flow(p); flow (B, 2, h, w) on a grid H/h times coarser, in its pixels."""
    factor = x.shape[-1] // flow.shape[-1]
    if factor != 1:
        flow = F.interpolate(flow, size=x.shape[-2:], mode="bilinear", align_corners=False) * factor
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=flow.dtype),
                            torch.arange(w, device=x.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 1]) * (2.0 / w) - 1.0 + 1.0 / w   # pixel centres, align_corners=False
    gy = (ys + flow[:, 0]) * (2.0 / h) - 1.0 + 1.0 / h
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def warp_state(state, flow: torch.Tensor, size: tuple[int, int]):
    """Warp every (B, C, h, w) or (B, C, 4h, 4w) tensor of a nested state (lists, tuples, dicts); others
    (counts, 5-d buffers) pass through. `size` = (h, w) of the flow."""
    if isinstance(state, torch.Tensor):
        spatial = tuple(state.shape[-2:])
        grids = {size, (size[0] * 4, size[1] * 4)}
        return warp(state, flow) if state.dim() == 4 and spatial in grids else state
    if isinstance(state, dict):
        return {k: warp_state(v, flow, size) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(warp_state(v, flow, size) for v in state)
    return state
