"""How much of the recursive head's residual to add (model.residual_rule, model.residual_cap), and the noise
channel it can read instead (model.noise_input).

The recursive head outputs its filter state through the camera pipeline plus a learned residual. Trained on dark
photo-made videos, that residual fails in two ways the network cannot see itself (docs/MODEL_HISTORY.md, "The
residual's weight"): on bright, barely noisy frames it "denoises" detail the filter already has clean, and on
scenes unlike the training photos it invents detail at 1.5-3x the noise it could remove. Both weights here are
measured from the frame itself, need no training, and are exported to ONNX (TopK stands in for the median).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lower_median(x: torch.Tensor) -> torch.Tensor:
    """torch.median of each row of (B, N) as TopK, which ONNX has (it has no median)."""
    return torch.topk(x, (x.shape[1] - 1) // 2 + 1, dim=1, largest=False).values[:, -1]


def frame_noise(x: torch.Tensor) -> torch.Tensor:
    """The noise's std of packed frames x (B, >= 4, H, W) -> (B,), from one frame alone: the median absolute
    deviation of G1 - G2 (two samples of one colour a pixel apart: their difference is noise where the scene is
    smooth, which the median makes most pixels)."""
    d = (x[:, 1] - x[:, 2]).float().flatten(1)
    return lower_median((d - lower_median(d)[:, None]).abs()) / (0.6745 * 2 ** 0.5)


def residual_weight(x: torch.Tensor, c: float, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """min(1, noise / (c x level)) for packed frames x (B, >= 4, H, W) -> (B, 1, 1, 1): how much of the recursive
    head's residual to add; the level is the frame's mean, `sigma` its `frame_noise` (measured when not given).
    Below a signal-to-noise ratio of 1 / c the residual is needed whole; above it the filter alone is cleaner
    (docs/RESULTS.md, seventh session). A black frame, or one whose noise reads zero (whole DN steps with a read
    noise under half a step make most of G1 - G2 exactly 0), keeps the whole residual: no measure, no change.
    The head passes the frame without its padding to a multiple of 32; with --tile each tile measures its own
    (a brighter tile gets less residual; the blend ramps join them)."""
    sigma = frame_noise(x) if sigma is None else sigma
    level = x[:, :4].float().mean((1, 2, 3))
    ratio = sigma / (c * level.clamp_min(1e-6))
    measured = (level > 1e-6) & (sigma > 0)
    return torch.where(measured, ratio, torch.ones_like(ratio)).clamp(max=1.0).view(-1, 1, 1, 1)


def residual_cap_weight(residual: torch.Tensor, held: torch.Tensor, cap: float) -> torch.Tensor:
    """min(1, cap x rms(held) / std(residual)) per frame -> (B, 1, 1, 1): `held` (B, 3, H, W) is the noise the
    filter state still holds, in output units (on the input grid: only its rms counts). A residual that removes
    noise is about that size; one several times larger is inventing detail (on held-out real raws: 1.5-3x, on
    the training photos about 1x). No held noise measured (zero): the whole residual, as in `residual_weight`."""
    r = residual.float().flatten(1)
    spread = (r - r.mean(1, keepdim=True)).pow(2).mean(1).sqrt()
    held_rms = held.float().flatten(1).pow(2).mean(1).sqrt()
    return cap_ratio(held_rms, spread, cap).view(-1, 1, 1, 1)


def cap_ratio(held_rms: torch.Tensor, spread: torch.Tensor, cap: float) -> torch.Tensor:
    """min(1, cap x held_rms / spread), elementwise; 1 where no held noise is measured (zero)."""
    weight = (cap * held_rms / spread.clamp_min(1e-12)).clamp(max=1.0)
    return torch.where(held_rms > 0, weight, torch.ones_like(weight))


def residual_block_cap_weight(residual: torch.Tensor, held: torch.Tensor, cap: float, block: int) -> torch.Tensor:
    """`residual_cap_weight` per block x block pixels of the input grid (block divides its size; a residual on an
    s times finer grid is measured over s x block) -> (B, 1, sH, sW). Why: on held-out real raws the residual
    invents detail on fine texture (windows, foliage) while it removes noise on flat parts of the same frame; one
    factor per frame must let both through or cut both (docs/RESULTS.md, ninth session). The rms here is about
    zero, not the block's mean: a residual that removes noise has none to speak of over a block."""
    scale = residual.shape[-1] // held.shape[-1]
    held_rms = F.avg_pool2d(held.float().pow(2).mean(1, keepdim=True), block).sqrt()
    spread = F.avg_pool2d(residual.float().pow(2).mean(1, keepdim=True), block * scale).sqrt()
    weight = cap_ratio(held_rms, spread, cap)
    return weight.repeat_interleave(block * scale, dim=2).repeat_interleave(block * scale, dim=3)


def block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Each block x block tile of x (B, C, H, W) replaced by its mean (block divides H and W)."""
    return F.avg_pool2d(x, block).repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)


NOISE_FLOOR, NOISE_CENTRE, NOISE_SPREAD = 1e-4, -3.5, 2.0  # log held noise: about -6 (bright) to -1 (dark, frame 1)


def noise_channel(held: torch.Tensor) -> torch.Tensor:
    """The held noise (B, 3, H, W) in output units -> (B, 1, H, W) network input (model.noise_input): its log,
    averaged over colours, centred and scaled to about [-1.5, 1.5] over bright to dark frames (a trained conv's
    zero-initialised new filter then moves it by what a unit input would). A frame whose noise reads zero (see
    `residual_weight`) reads as the cleanest, -2.85: unlike the rule, the channel has no "no measure" value."""
    return (held.float().clamp_min(NOISE_FLOOR).log().mean(1, keepdim=True) - NOISE_CENTRE) / NOISE_SPREAD
