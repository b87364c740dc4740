"""Training steps on the CPU in float32 and with bf16 autocast (`train.amp=bf16`), side by side.

Usage: .venv/bin/python scripts/bench_cpu_amp.py [--models clstm unet] [--crop 96] [--frames 6] [--batch 2]
       [--repeats 3] [--threads N]

For each model (the `pretrain` preset's; `shipped`: the shipped weights with their release settings, as
`train --init` fine-tunes them), one AdamW step on a random clip of
(batch, frames, 4, crop, crop) is timed in float32 and in bf16, the two alternated `--repeats` times after a
warm-up; it prints the medians and their ratio. The ratio is what the machine gives: CPUs with native bf16
(AVX512-BF16, AMX) run it faster, others emulate it and run slower. It also prints the largest difference of
the two outputs on the same weights, to show what bf16 costs in precision.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from batman import ckpt
from batman.config import make_config
from batman.model.net import model_for


def step_seconds(model, opt, x, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = model(x)[0]
    y.float().mean().backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start


def output_difference(model, x) -> float:
    with torch.no_grad():
        full = model(x)[0].float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)[0].float()
    return float((full - half).abs().max())


def build(name: str) -> torch.nn.Module:
    """The shipped weights (`shipped`) or a model of the pretrain preset, randomly initialised."""
    if name == "shipped":
        state, cfg = ckpt.read_weights(ckpt.SHIPPED)
        model = model_for(cfg)
        model.load_state_dict(state)
        return model.float()
    torch.manual_seed(0)
    return model_for(make_config("pretrain", {"model.name": name}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["shipped", "clstm", "unet"])
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clip {args.batch}x{args.frames}x4x"
          f"{args.crop}x{args.crop}")
    for name in args.models:
        model = build(name)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        x = torch.rand(args.batch, args.frames, 4, args.crop, args.crop)
        times = {False: [], True: []}
        for bf16 in (False, True):
            step_seconds(model, opt, x, bf16)  # warm-up: oneDNN picks its kernels on the first call
        for _ in range(args.repeats):
            for bf16 in (False, True):
                times[bf16].append(step_seconds(model, opt, x, bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:6s} float32 {fp32:.3f} s/step  bf16 {bf16:.3f} s/step  speed-up {fp32 / bf16:.2f}x  "
              f"largest output difference {output_difference(model, x):.4f}")


if __name__ == "__main__":
    main()
