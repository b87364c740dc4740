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

(model.align=flow; model.align=camera replaces the per-pixel flow by one affine map per frame: CameraAlign.)
f_t are the frame's stride-4 features; `refine` is a 3x3 conv initialised to zero (it learns through the
sub-pixel term and the features; the argmax itself is parameter-free). Samples outside the
frame take the border value (grid_sample padding "border"); what is new there is left to the head's gate.
Causal and streaming: only z_{t-1} is kept. R = RADIUS = 4 stride-4 pixels covers 16 input pixels per
frame, the fastest motion `batman synth` draws. Cost per input pixel: (2R+1)^2 * 9 / 16 ~ 46 multiply-adds
for the correlation, plus the refine conv ((81 + F) * 2 * 9 / 16 per pixel).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

RADIUS = 4
# camera: the least gain in mean correlation over no motion that counts as motion; still held-out videos
# reach 0.002 by chance, the slowest camera motions that align better 0.01 (docs/RESULTS.md, tenth session)
CAMERA_MARGIN = 0.005
# camera, model.align_rating=warped: the same for the warped reference's correlation, on frames of WARPED_PIXELS
# stride-4 pixels (768 x 768 mosaics, binned: 192 x 192 input pixels) or more. Against the filter state, still
# training-side videos reach 0.006, camera motions of 0.1-0.3 stride-4 pixels a frame 0.005-0.04 (docs/RESULTS.md,
# twelfth session). A map fitted to noise gains about 1 / sqrt(pixels) by chance, so smaller frames (tiles) need
# margin x sqrt(WARPED_PIXELS / pixels).
WARPED_MARGIN = 0.008
WARPED_PIXELS = 48 * 48
RATINGS = ("bicubic", "warped")
REFINEMENTS = 1


def full_precision(fn):
    """Run `fn` in float32 with autocast off, its tensor arguments cast to float32. Why: matching sums products
    of unit patches and solves 3x3 least-squares systems, which bf16's 8-bit mantissa gets wrong; under bf16
    autocast (train.amp) the shipped weights' camera map came out differently and their outputs differed by up
    to 0.2 from float32's, against 0.005 with the alignment off."""
    @functools.wraps(fn)
    def run(*args):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*(a.float() if isinstance(a, torch.Tensor) else a for a in args))
    return run


class FlowAlign(nn.Module):
    def __init__(self, channels: int, radius: int = RADIUS, margin: float = 0.0):
        super().__init__()
        self.radius, self.margin = radius, margin
        side = 2 * radius + 1
        self.refine = nn.Conv2d(side * side + channels, 2, 3, padding=1)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    def flow(self, z: torch.Tensor, previous: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w): where each pixel of the new frame was in the previous one, in stride-4 pixels (dy, dx)."""
        corr = correlation(z, previous, self.radius)
        return peak(corr, self.radius, self.margin) + self.refine(torch.cat([corr, feats.float()], 1))

    @full_precision
    def forward(self, frame: torch.Tensor, feats: torch.Tensor, state):
        """frame (B, C, H, W) and its features (B, F, H/4, W/4); state: the previous descriptor or None ->
        (flow or None, the new descriptor)."""
        z = descriptor(frame)
        return (None if state is None else self.flow(z, state, feats)), z


class CameraAlign(nn.Module):
    """model.align=camera: one affine map per frame for the whole state, the camera's motion (a pan, a rotation,
    a zoom are affine), fitted to the block matches and kept only where it beats no motion by a margin.

    Per-pixel flows (FlowAlign) are noise wherever the frame is flat or dark, and warping a still scene by
    noise blurs it; a single affine map pools all pixels' evidence instead. From the correlation volume
    (`correlation`): the translation that the whole frame matches best starts an iteratively reweighted
    least-squares fit of flow(p) = A [1, y, x] to the per-pixel peaks (`peak`), each weighted by how far its
    best match stands above its mean match, with Tukey's biweight (c = 1 stride-4 pixel) to drop moving
    objects and failed matches. One refinement fits the same to the matches left after warping the previous
    descriptor by the map (the peaks' sub-pixel parts lean to whole pixels: a zoom of 1.04 is fitted as 1.022
    alone, 1.034 refined), leaving out matches that fall outside the frame. The map is used when the mean
    correlation it gives (`gain`, as `rating` says) beats that of no motion by more than `margin`; otherwise the
    flow is exactly zero (a still scene is not resampled: every bilinear warp blurs the state a little, and the
    blur adds up frame after frame). No parameters: trained weights take it as they are.
    """

    def __init__(self, radius: int = RADIUS, margin: float = 0.0, iterations: int = 5,
                 refinements: int = REFINEMENTS, rating: str = "bicubic"):
        super().__init__()
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {RATINGS}, not {rating!r}")
        self.radius, self.iterations, self.refinements, self.rating = radius, iterations, refinements, rating
        self.margin = margin or (WARPED_MARGIN if rating == "warped" else CAMERA_MARGIN)

    @full_precision
    def forward(self, frame: torch.Tensor, feats: torch.Tensor, state):
        """As FlowAlign.forward; the flow (B, 2, h, w) is affine in (y, x) or zero, per frame."""
        z = descriptor(frame)
        if state is None:
            return None, z
        corr = correlation(z, state, self.radius)
        fitted = self.affine_flow(corr)
        for _ in range(self.refinements):  # the peaks' sub-pixel parts lean to whole pixels: fit what is left
            residual = self.affine_flow(correlation(z, warp(state, fitted), self.radius),
                                        inside(fitted, corr.shape[-2:], 1))
            fitted = (fitted + residual).clamp(-self.radius, self.radius)
        return fitted * (self.gain(z, state, corr, fitted) > self.threshold(z)).float().view(-1, 1, 1, 1), z

    def threshold(self, z: torch.Tensor) -> torch.Tensor | float:
        """The gain a map needs: the margin, with the warped rating raised on frames under WARPED_PIXELS (B,)."""
        if self.rating == "bicubic":
            return self.margin
        pixels = torch.ones_like(z[:, 0]).flatten(1).sum(1)  # a tensor: an ONNX trace keeps it dynamic
        return self.margin * (WARPED_PIXELS / pixels).clamp(min=1.0).sqrt()

    def gain(self, z: torch.Tensor, state: torch.Tensor, corr: torch.Tensor, fitted: torch.Tensor) -> torch.Tensor:
        """(B,): how much better the frame's descriptor z matches the reference `state` moved by the `fitted` map
        than it matches it unmoved, in mean correlation. bicubic: read from the correlation volume between the
        whole displacements; it sags below a sharp peak, so a motion of 0.1-0.3 stride-4 pixels rates below no
        motion. warped: the reference warped by the map and renormalised (a warp shrinks the unit patches), matched
        in place."""
        if self.rating == "bicubic":
            centre = self.radius * (2 * self.radius + 1) + self.radius  # d = 0, a lattice value
            still = corr[:, centre].flatten(1).mean(1)
            return mean_correlation_at(corr, fitted, self.radius) - still
        moved = F.normalize(warp(state, fitted), dim=1, eps=1e-6)
        return (z * moved).sum(1).flatten(1).mean(1) - (z * state).sum(1).flatten(1).mean(1)

    def affine_flow(self, corr: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, h, w): the affine flow fitted to the per-pixel peaks of `corr` (where `valid` (B, h, w), if
        given), within [-R, R]."""
        h, w = corr.shape[-2:]
        r, side = self.radius, 2 * self.radius + 1
        flows = peak(corr, r).flatten(2).transpose(1, 2)                      # (B, N, 2)
        confidence = (corr.amax(1) - corr.mean(1)).clamp(min=0)
        confidence = (confidence if valid is None else confidence * valid).flatten(1)  # (B, N)
        basis = affine_basis(h, w, corr.device)                                # (N, 3)
        best = corr.mean((2, 3)).argmax(1)                                     # the whole frame's best shift
        shift = torch.stack([best // side - r, best % side - r], 1).float()   # (B, 2)
        coef = torch.cat([shift.unsqueeze(1), torch.zeros_like(shift).unsqueeze(1).expand(-1, 2, -1)], 1)
        for _ in range(self.iterations):
            residual = (basis @ coef - flows).norm(dim=-1)
            weight = confidence * (1 - residual.clamp(max=1) ** 2) ** 2       # Tukey's biweight, c = 1
            weighted = basis * weight.unsqueeze(-1)                            # (B, N, 3)
            normal = weighted.transpose(1, 2) @ basis + 1e-6 * torch.eye(3, device=corr.device)
            coef = solve3(normal, weighted.transpose(1, 2) @ flows)
        return (basis @ coef).clamp(-r, r).transpose(1, 2).unflatten(-1, (h, w))


def inside(flow: torch.Tensor, size, border: float) -> torch.Tensor:
    """(B, h, w): 1 where p + flow(p) lies at least `border` pixels inside the (h, w) = `size` frame, else 0
    (content that was not in the previous frame: its match there is the replicated edge, not a motion).
    `size` from the correlation's shape, not the flow's: an ONNX trace keeps the former dynamic."""
    rows = torch.arange(size[0], device=flow.device, dtype=flow.dtype).view(-1, 1)
    cols = torch.arange(size[1], device=flow.device, dtype=flow.dtype).view(1, -1)
    ys, xs = rows + flow[:, 0], cols + flow[:, 1]
    return ((ys >= border) & (ys <= rows.max() - border) & (xs >= border) & (xs <= cols.max() - border)).to(flow.dtype)


def affine_basis(h: int, w: int, device) -> torch.Tensor:
    """(h * w, 3): [1, y, x] per pixel, y and x centred, in units of 64 pixels (a well-conditioned fit; a fixed
    unit, not the frame's size, so that an exported graph serves every size)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32) / 64,
                            torch.arange(w, device=device, dtype=torch.float32) / 64, indexing="ij")
    return torch.stack([torch.ones_like(ys), ys - ys.mean(), xs - xs.mean()], -1).flatten(0, 1)


def solve3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, 3, 3) symmetric positive definite, b (B, 3, K) -> a^-1 b by the adjugate: plain arithmetic, which
    ONNX exports (torch.linalg.solve is not an ONNX operator)."""
    col = [a[:, :, i] for i in range(3)]
    adjugate = torch.stack([cross(col[1], col[2]), cross(col[2], col[0]), cross(col[0], col[1])], 1)
    det = (col[0] * adjugate[:, 0]).sum(1)
    return (adjugate @ b) / det.view(-1, 1, 1)


def cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 3) x (B, 3), written out (as solve3, for ONNX)."""
    return torch.stack([u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1], u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2],
                        u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]], 1)


def mean_correlation_at(corr: torch.Tensor, flow: torch.Tensor, radius: int) -> torch.Tensor:
    """(B,): corr_{flow(p)}(p) averaged over p, bicubic between the integer displacements."""
    b, _, h, w = corr.shape
    side = 2 * radius + 1
    volumes = corr.permute(0, 2, 3, 1).reshape(b * h * w, 1, side, side)
    grid = flow.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2).flip(-1) / radius  # (x, y) in [-1, 1]
    sampled = F.grid_sample(volumes, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return sampled.view(b, h * w).mean(1)


@full_precision
def descriptor(frame: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) input -> (B, 9, H/4, W/4) zero-mean, unit-norm 3x3 patches of its stride-4 brightness."""
    y = F.avg_pool2d(frame.float().mean(1, keepdim=True), 4)
    y = y - F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, 1)
    padded, (h, w) = F.pad(y, (1, 1, 1, 1), mode="replicate"), y.shape[-2:]
    patches = torch.cat([padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)], 1)  # = F.unfold's
    return F.normalize(patches - patches.mean(1, keepdim=True), dim=1, eps=1e-6)


def correlation(new: torch.Tensor, old: torch.Tensor, radius: int) -> torch.Tensor:
    """<new(p), old(p + d)> for every d in [-R, R]^2, box-aggregated (a steadier peak): (B, (2R+1)^2, h, w)."""
    r, (h, w) = radius, new.shape[-2:]
    b = F.pad(old, (r, r, r, r), mode="replicate")
    side = 2 * r + 1
    corr = torch.stack([(new * b[..., i:i + h, j:j + w]).sum(1) for i in range(side) for j in range(side)], 1)
    return F.avg_pool2d(F.pad(corr, (1, 1, 1, 1), mode="replicate"), 3, 1)


def peak(corr: torch.Tensor, radius: int, margin: float = 0.0) -> torch.Tensor:
    """The best displacement of every pixel with its parabolic sub-pixel correction: (B, 2, h, w); 0 where it
    beats no motion by less than `margin` (0: off)."""
    side = 2 * radius + 1
    best = corr.argmax(1)
    iy, ix = best // side, best % side

    def at(dy: int, dx: int) -> torch.Tensor:
        index = (iy + dy).clamp(0, side - 1) * side + (ix + dx).clamp(0, side - 1)
        return corr.gather(1, index.unsqueeze(1)).squeeze(1)

    centre = at(0, 0)
    offsets = [parabola(at(-1, 0), centre, at(1, 0)), parabola(at(0, -1), centre, at(0, 1))]
    flow = torch.stack([iy - radius + offsets[0], ix - radius + offsets[1]], 1).float()
    if margin > 0:
        still = centre - corr[:, radius * side + radius] < margin
        flow = flow.masked_fill(still.unsqueeze(1), 0.0)
    return flow


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
        spatial = tuple(int(n) for n in state.shape[-2:])  # ints: a traced export's sizes are tensors
        grids = {tuple(int(n) for n in size), (int(size[0]) * 4, int(size[1]) * 4)}
        return warp(state, flow) if state.dim() == 4 and spatial in grids else state
    if isinstance(state, dict):
        return {k: warp_state(v, flow, size) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(warp_state(v, flow, size) for v in state)
    return state
