"""Training and inference on the CPU in float32 and under bf16 autocast (`train.amp=bf16`, `--bf16`), side by side.

Usage: .venv/bin/python scripts/bench_cpu_amp.py [--models shipped clstm unet] [--crop 96] [--frames 6] [--batch 2]
       [--size 384] [--repeats 3] [--threads N]

For each model (the `pretrain` preset's; `shipped`: the shipped weights with their release settings, as
`train --init` fine-tunes them), one AdamW step on a random clip of (batch, frames, 4, crop, crop) is timed in
float32 and in bf16, the two alternated `--repeats` times after a warm-up, and so is inference: `frames`
streamed steps of one (4, size/2, size/2) frame (a size x size mosaic, packed), as export runs them; it prints
the medians and their ratios. The ratio is what the machine gives: CPUs with native bf16 (AVX512-BF16, AMX)
run it faster, others emulate it and run slower. It also prints the mean and largest difference of the two
outputs on the same weights. The clip is random noise: there the camera map's keep-or-drop decision
(a threshold on noise) can flip between the two, so the largest difference is that of a flipped decision; what
bf16 costs on real video is measured by `evaluate --bf16` (docs/RESULTS.md, seventeenth session).
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


def stream_seconds(model, frames, bf16: bool) -> float:
    """Seconds per frame of `frames` streamed through `model.step`, the state carried (as infer.Enhancer)."""
    state, start = None, time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for frame in frames:
            _, state = model.step(frame, state)
    return (time.perf_counter() - start) / len(frames)


def side_by_side(run, repeats: int) -> tuple[float, float]:
    """Median seconds of run(bf16) for float32 and bf16, alternated after one warm-up each (oneDNN picks its
    kernels on the first call)."""
    times = {False: [], True: []}
    for bf16 in (False, True):
        run(bf16)
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(run(bf16))
    return statistics.median(times[False]), statistics.median(times[True])


def output_difference(model, x) -> tuple[float, float]:
    """Mean and largest absolute difference of the float32 and bf16 outputs on the same clip."""
    with torch.no_grad():
        full = model(x)[0].float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)[0].float()
    difference = (full - half).abs()
    return float(difference.mean()), float(difference.max())


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
    ap.add_argument("--size", type=int, default=384, help="inference: mosaic side (frames of size/2 packed)")
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
        fp32, bf16 = side_by_side(lambda b: step_seconds(model, opt, x, b), args.repeats)
        mean, largest = output_difference(model, x)
        print(f"{name:7s} training  float32 {fp32:.3f} s/step   bf16 {bf16:.3f} s/step   speed-up {fp32 / bf16:.2f}x  "
              f"output difference: mean {mean:.4f}, largest {largest:.4f}")
        model.eval()
        frames = [torch.rand(1, 4, args.size // 2, args.size // 2) * 0.2 for _ in range(args.frames)]
        fp32, bf16 = side_by_side(lambda b: stream_seconds(model, frames, b), args.repeats)
        print(f"{name:7s} inference float32 {fp32:.3f} s/frame  bf16 {bf16:.3f} s/frame  speed-up {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
