#!/usr/bin/env python3
"""How much of the recursive head's residual helps: PSNR of filter image + a x residual, for several a.

    python scripts/residual_weight.py --model trained_model/batman_default.safetensors \
        --root build/pretrain/heldout_bright [--split test] [--videos 4] [--frames 16] [--rule-c 0.05 0.08 0.1] \
        [--caps 1.25 1.5 --cap-rule 0.06]

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
from batman.model.residual import frame_noise, residual_weight

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def psnr(y: torch.Tensor, truth: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(y.float().clamp(0, 1), truth).item())


def weighted_psnrs(model, clip: dict, frames: int, weights, rule_cs) -> list[float]:
    """Mean PSNR over the frames for each fixed residual weight, then for each C of the noise rule."""
    with torch.no_grad():
        out, _, base = model(clip["input"][None], None, with_base=True)
    truth, residual = clip["target"][None], out - base
    inputs = [clip["input"][k][None] for k in range(frames)]
    sigmas = [frame_noise(x) for x in inputs]  # one per frame, shared by every C
    fixed = [[base[:, k] + a * residual[:, k] for k in range(frames)] for a in weights]
    ruled = [[base[:, k] + residual_weight(inputs[k], c, sigmas[k]) * residual[:, k] for k in range(frames)]
             for c in rule_cs]
    return [float(np.mean([psnr(y, truth[:, k]) for k, y in enumerate(ys)])) for ys in fixed + ruled]


def capped_psnrs(model, clip: dict, frames: int, rule: float, caps) -> list[float]:
    """Mean PSNR over the frames of the model run with residual_rule = rule and residual_cap = each K."""
    head, truth, out = model.head, clip["target"][None], []
    for cap in caps:
        head.residual_rule, head.residual_cap = rule, cap
        with torch.no_grad():
            y, _ = model(clip["input"][None])
        out.append(float(np.mean([psnr(y[:, k], truth[:, k]) for k in range(frames)])))
    head.residual_rule = head.residual_cap = 0.0
    return out


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
    ap.add_argument("--cap-rule", type=float, default=0.06, help="the noise rule's C in the --caps columns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_model(args.model)
    model.head.residual_rule = model.head.residual_cap = 0.0  # measure every weight from the bare residual
    videos = load_split(args.root, args.split)[: args.videos or None]
    clips = ClipDataset(videos, dataclasses.replace(cfg.data, frames=args.frames, crop=(0, 0)),
                        scale=cfg.model.scale, train=False)
    print("video  " + "  ".join([f"a={a:<4g}" for a in WEIGHTS] + [f"C={c:<4g}" for c in args.rule_c]
                                + [f"K={k:<4g}" for k in args.caps]))
    rows = []
    for i, video in enumerate(videos):
        rows.append(weighted_psnrs(model, clips[i], args.frames, WEIGHTS, args.rule_c)
                    + capped_psnrs(model, clips[i], args.frames, args.cap_rule, args.caps))
        print(f"{video.id:6s} " + "  ".join(f"{p:6.2f}" for p in rows[-1]), flush=True)
    print("mean   " + "  ".join(f"{p:6.2f}" for p in np.mean(rows, axis=0)))


if __name__ == "__main__":
    main()
