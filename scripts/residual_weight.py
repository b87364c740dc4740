#!/usr/bin/env python3
"""How much of the recursive head's residual helps: PSNR of filter image + a x residual, for several a.

    python scripts/residual_weight.py --model trained_model/batman_default.safetensors \
        --root build/pretrain/heldout_bright [--split test] [--videos 4] [--frames 16] [--rule-c 0.05 0.08 0.1] \
        [--caps 1.25 1.5 --cap-blocks 0 8 --cap-rule 0.06]

The recursive head outputs its filter state rendered through the pipeline ("base") plus a learned residual.
a = 1 is the model as it is; a = 0 the filter alone. Per video and on average, PSNR over the first `frames`
frames of each video's full input grid. Where the best a is far from 1, the residual does harm (bright,
barely noisy scenes: docs/RESULTS.md, 2026-12-03). The last columns are model.residual_rule = C, each frame's
a = min(1, noise / (C x level)) from that frame alone (batman.model.residual.residual_weight), one column per C given; the
model's own residual_rule and residual_cap are set to 0 to measure them. With --caps, further columns run the model
with model.residual_rule = --cap-rule and model.residual_cap = K (batman.model.residual.residual_cap_weight), one per K.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from batman.ckpt import load_model
from batman.data.dataset import ClipDataset
from batman.data.drv import load_split

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def psnr(y: torch.Tensor, truth: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(y.float().clamp(0, 1), truth).item())


def recorded_run(model, clip: dict) -> tuple[torch.Tensor, list]:
    """The model's output on a clip with no weighting, and per frame the arguments of the head's residual_scale
    (residual, x, held, sigma, valid). A cap too large to act makes the head compute what the weights read."""
    head, calls = model.head, []
    head.residual_rule, head.residual_cap, head.residual_cap_block = 0.0, math.inf, 0
    head.residual_cap_mean = False  # the whole residual is recorded (it splits per block, and no block is set here)

    def record(*args):
        calls.append(args)
        return torch.ones_like(args[3]).view(-1, 1, 1, 1)
    head.residual_scale = record
    try:
        with torch.no_grad():
            y, _ = model(clip["input"][None])
    finally:
        del head.residual_scale  # the class's method again
    return y, calls


def column_psnrs(model, clip: dict, frames: int, weights, rule_cs, rule: float, caps, blocks) -> list[float]:
    """Mean PSNR over the frames for each fixed residual weight, each C of the noise rule, then each (K, B) of
    the cap under the rule `rule`: in that order."""
    head, truth = model.head, clip["target"][None]
    y, calls = recorded_run(model, clip)
    residuals = [args[0] for args in calls]
    bases = [y[:, k] - residuals[k] for k in range(frames)]

    def weighted(c: float, cap: float = 0.0, block: int = 0) -> list[torch.Tensor]:
        head.residual_rule, head.residual_cap, head.residual_cap_block = c, cap, block
        return [bases[k] + head.residual_scale(*calls[k]) * residuals[k] for k in range(frames)]
    outputs = [[bases[k] + a * residuals[k] for k in range(frames)] for a in weights]
    outputs += [weighted(c) for c in rule_cs] + [weighted(rule, cap, block) for cap in caps for block in blocks]
    return [float(np.mean([psnr(out, truth[:, k]) for k, out in enumerate(outs)])) for outs in outputs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint or released weights with model.head=recursive")
    ap.add_argument("--root", required=True, help="a synth data set")
    ap.add_argument("--split", default="test")
    ap.add_argument("--videos", type=int, default=0, help="only the first N videos (0: all)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rule-c", type=float, nargs="+", default=[0.1], help="values of C of the noise rule")
    ap.add_argument("--caps", type=float, nargs="*", default=[], help="values of K of the residual cap (0: off)")
    ap.add_argument("--cap-blocks", type=int, nargs="+", default=[0],
                    help="values of B of the cap's blocks (model.residual_cap_block; 0: per frame)")
    ap.add_argument("--cap-rule", type=float, default=0.06, help="the noise rule's C in the --caps columns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.model)
    videos = load_split(args.root, args.split)[: args.videos or None]
    clips = ClipDataset(videos, dataclasses.replace(cfg.data, frames=args.frames, crop=(0, 0)),
                        scale=cfg.model.scale, train=False)
    print("video  " + "  ".join([f"a={a:<4g}" for a in WEIGHTS] + [f"C={c:<4g}" for c in args.rule_c]
                                + [f"K{k:g}B{b:<2d}" for k in args.caps for b in args.cap_blocks]))
    rows = []
    for i, video in enumerate(videos):
        rows.append(column_psnrs(model, clips[i], args.frames, WEIGHTS, args.rule_c, args.cap_rule, args.caps,
                                 args.cap_blocks))
        print(f"{video.id:6s} " + "  ".join(f"{p:6.2f}" for p in rows[-1]), flush=True)
    print("mean   " + "  ".join(f"{p:6.3f}" for p in np.mean(rows, axis=0)))


if __name__ == "__main__":
    main()
