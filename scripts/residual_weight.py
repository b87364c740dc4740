#!/usr/bin/env python3
"""How much of the recursive head's residual helps: PSNR of filter image + a x residual, for several a.

    python scripts/residual_weight.py --model trained_model/batman_default.safetensors \
        --root build/pretrain/heldout_bright [--split test] [--videos 4] [--frames 16] [--rule-c 0.1]

The recursive head outputs its filter state rendered through the pipeline ("base") plus a learned residual.
a = 1 is the model as it is; a = 0 the filter alone. Per video and on average, PSNR over the first `frames`
frames of each video's full input grid. Where the best a is far from 1, the residual does harm (bright,
barely noisy scenes: docs/RESULTS.md, 2026-12-03). The last column is a candidate rule for static videos:
a = min(1, noise / (C x level)), noise estimated from the first two input frames (MAD of their difference),
level their mean; C = 0.1 was chosen on training-side data (docs/RESULTS.md).
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


def noise_rule_weight(frames: torch.Tensor, c: float) -> float:
    """min(1, noise / (c x level)) from the first two input frames (T, C, H, W) of a static video: the noise's
    std from the median absolute deviation of their difference, the level their mean."""
    d = (frames[1] - frames[0]).flatten()
    sigma = float((d - d.median()).abs().median()) / 0.6745 / math.sqrt(2)
    level = float(frames[:2].mean())
    return min(1.0, sigma / (c * level)) if level > 0 else 1.0


def psnr(y: torch.Tensor, truth: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(y.float().clamp(0, 1), truth).item())


def weighted_psnrs(model, clip: dict, frames: int, weights) -> list[float]:
    """Mean PSNR over the frames for each residual weight."""
    with torch.no_grad():
        out, _, base = model(clip["input"][None], None, with_base=True)
    truth = clip["target"][None]
    return [float(np.mean([psnr(base[:, k] + a * (out - base)[:, k], truth[:, k]) for k in range(frames)]))
            for a in weights]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint or released weights with model.head=recursive")
    ap.add_argument("--root", required=True, help="a synth data set")
    ap.add_argument("--split", default="test")
    ap.add_argument("--videos", type=int, default=0, help="only the first N videos (0: all)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rule-c", type=float, default=0.1, help="C of the noise rule (last column)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.model)
    videos = load_split(args.root, args.split)[: args.videos or None]
    clips = ClipDataset(videos, dataclasses.replace(cfg.data, frames=args.frames, crop=(0, 0)),
                        scale=cfg.model.scale, train=False)
    print("video  " + "  ".join(f"a={a:<4g}" for a in WEIGHTS) + "  rule (its a)")
    rows = []
    for i, video in enumerate(videos):
        clip = clips[i]
        rule = noise_rule_weight(clip["input"], args.rule_c)
        rows.append(weighted_psnrs(model, clip, args.frames, (*WEIGHTS, rule)))
        print(f"{video.id:6s} " + "  ".join(f"{p:6.2f}" for p in rows[-1]) + f" ({rule:.2f})", flush=True)
    print("mean   " + "  ".join(f"{p:6.2f}" for p in np.mean(rows, axis=0)))


if __name__ == "__main__":
    main()
