"""Seconds per frame of `--ensemble K` (infer.Enhancer's self-ensemble) against K = 1, timed side by side.

Every repetition runs a fresh 4-frame video through each K in turn (the recurrent states carried, as in
export); medians over the repetitions, and each K's ratio to K = 1, are printed.
Usage: .venv/bin/python scripts/bench_ensemble.py [--model W] [--size 384] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from batman.ckpt import load_model
from batman.config import ENSEMBLES
from batman.infer import Enhancer

FRAMES = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="weights (default: the default model)")
    p.add_argument("--size", type=int, default=384, help="input grid side (a 2x larger Bayer mosaic)")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    net, cfg = load_model(args.model, "cpu")
    rng = np.random.default_rng(0)
    video = [rng.random((cfg.data.in_channels, args.size, args.size), dtype=np.float32) * 0.3 for _ in range(FRAMES)]
    enhancers = {k: Enhancer(net, cfg.model.scale, "cpu", ensemble=k) for k in ENSEMBLES}
    times = {k: [] for k in ENSEMBLES}
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        for k, enhancer in enhancers.items():
            enhancer.reset()
            start = time.perf_counter()
            for frame in video:
                enhancer(frame)
            if rep:
                times[k].append((time.perf_counter() - start) / FRAMES)
    base = statistics.median(times[1])
    print(f"{args.size}x{args.size} input, {torch.get_num_threads()} threads, median of {args.reps}")
    print("| --ensemble | s/frame | x K=1 |\n|---:|---:|---:|")
    for k in ENSEMBLES:
        print(f"| {k} | {statistics.median(times[k]):.3f} | {statistics.median(times[k]) / base:.2f} |")


if __name__ == "__main__":
    main()
