#!/usr/bin/env python3
"""GPU check: the figures a CPU cannot give, for the default model and model.size=lite (random tensors, no data).

    scripts/gpu_check.sh [OUT]                   CUDA: the real run (bf16 autocast as train.py and export use)
    scripts/gpu_check.sh --tiny [OUT]            CPU, tiny sizes, torch.compile with the eager backend: checks
                                                 that every path runs, its figures mean nothing
    scripts/gpu_check.sh --compile off [OUT]     skip the compiled runs (each compile costs ~1 min on a GPU)

1. inference: one `step` (B=1) with a warm recurrent state, frames/s = 1 / median step time, for clstm
   (default), lite and the U-Net at DRV's grid (918x1374) and 1080p (1080x1920), torch.compile off and on;
   the ratios lite / clstm and clstm / unet come from the same loop (cases interleaved).
2. training: train.py's train_step (AdamW, AMP per train.amp, truncated BPTT as configured) at each preset's
   crop, T and B for the default and lite, compile off and on: images/s = B*T / median step time (steps 2+),
   peak torch.cuda.max_memory_allocated over all the steps.
Writes OUT/gpu_check.json and OUT/gpu_check.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from batman.bench.common import DRV_GRID, machine_info, sync, timed
from batman.bench.infer import FULL_HD_GRID, infer_case
from batman.bench.targets import TARGET_GPU_DEFAULT_FPS, TARGET_GPU_LITE_FPS
from batman.bench.memory import GPU_BUDGET_GB, MEMORY_PRESETS, random_batch
from batman.config import make_config
from batman.files import atomic_write_text
from batman.report import markdown_table

SIZES = {"DRV": DRV_GRID, "1080p": FULL_HD_GRID}
INFER_LABELS = ("clstm", "lite", "unet")  # bench.infer.INFER_MODELS labels
TRAIN_SIZES = {"default": {}, "lite": {"model.size": "lite"}}
TINY = {"sizes": {"tiny": (64, 96)}, "train": {"data.crop": (64, 64), "data.frames": 2, "train.batch": 1},
        "presets": ("1080",), "reps": 2, "train_steps": 2, "backend": "eager"}


def compiled(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Compile the module's __call__ in place, so that `step` (which calls self) runs the compiled forward."""
    model.compile(backend=backend)
    return model


def bench_inference(device: torch.device, sizes: dict, compile_modes: list[bool], backend: str, reps: int) -> list[dict]:
    amp = device.type == "cuda"
    rows = []
    for size_name, size in sizes.items():
        cases = {}
        for label in INFER_LABELS:
            for on in compile_modes:
                model, frame, step, _ = infer_case(label, "channels_last", size, device, amp)
                if on:
                    compiled(model, backend)
                start = time.perf_counter()
                with torch.inference_mode():
                    state = None
                    for _ in range(4):  # the count in the state changes: dynamo recompiles once with it dynamic
                        state = step(state)
                    sync(device)
                cases[label, on] = {"step": step, "state": state, "times": [],
                                    "warmup_s": time.perf_counter() - start}
        with torch.inference_mode():
            for _ in range(reps):
                for case in cases.values():
                    case["times"].append(timed(lambda c=case: c.update(state=c["step"](c["state"])), device))
        for (label, on), case in cases.items():
            t = statistics.median(case["times"])
            rows.append({"size": size_name, "grid": list(size), "model": label, "compile": on, "time_ms": 1e3 * t,
                         "fps": 1 / t, "warmup_s": case["warmup_s"], "reps": reps})
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def train_rate(cfg, device: torch.device, on: bool, backend: str, steps: int) -> dict:
    """images/s and peak memory of `steps` train_step calls (the first not timed: warm-up, compilation)."""
    from batman.model.net import model_for
    from batman.train import amp_settings, train_step

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = model_for(cfg).to(device).train()
    if on:
        compiled(model, backend)
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    batch = random_batch(cfg, cfg.train.batch, cfg.data.frames, device)
    try:
        times = [timed(lambda: train_step(model, batch, opt, scaler, cfg, device, amp_dtype), device)
                 for _ in range(steps)]
    except torch.cuda.OutOfMemoryError:
        return {"oom": True, "images_per_s": float("nan"), "peak_gb": float("nan")}
    finally:
        del model, opt
    t = statistics.median(times[1:])
    return {"oom": False, "images_per_s": cfg.train.batch * cfg.data.frames / t, "step_s": t,
            "first_step_s": times[0], "dtype": str(amp_dtype or "float32").replace("torch.", ""),
            "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")}


def bench_training(device: torch.device, presets, extra: dict, compile_modes: list[bool], backend: str,
                   steps: int) -> list[dict]:
    rows = []
    for preset in presets:
        for size_name, size_overrides in TRAIN_SIZES.items():
            cfg = make_config(preset, {**size_overrides, **extra})
            for on in compile_modes:
                r = train_rate(cfg, device, on, backend, steps)
                rows.append(dict(r, preset=preset, size=size_name, compile=on, crop=list(cfg.data.crop),
                                 frames=cfg.data.frames, batch=cfg.train.batch, checkpointing=cfg.model.checkpointing,
                                 budget_gb=GPU_BUDGET_GB.get(preset)))
    return rows


def report(infer: list[dict], train: list[dict], info: dict, tiny: bool) -> str:
    lines = [f"# gpu_check ({info['date']}): {info.get('cuda_device', info['cpu'])}, torch {info['torch']}"
             + (" -- TINY (CPU, eager compile backend): the figures mean nothing" if tiny else ""), "",
             "## inference: one step, B=1, warm state" + ("" if tiny else ", bf16 autocast, channels_last"), ""]
    lines.append(markdown_table(
        ["size", "model", "compile", "ms", "frames/s", "warm-up (s)"],
        [[f"{r['size']} {r['grid'][0]}x{r['grid'][1]}", r["model"], "on" if r["compile"] else "off",
          f"{r['time_ms']:.2f}", f"{r['fps']:.1f}", f"{r['warmup_s']:.1f}"] for r in infer]))
    lines.append("")
    by = {(r["size"], r["model"], r["compile"]): r["time_ms"] for r in infer}
    for size in dict.fromkeys(r["size"] for r in infer):
        for on in sorted({r["compile"] for r in infer}):
            lines.append(f"- {size}, compile {'on' if on else 'off'}: lite / clstm = "
                         f"{by[size, 'lite', on] / by[size, 'clstm', on]:.2f}, clstm / unet = "
                         f"{by[size, 'clstm', on] / by[size, 'unet', on]:.2f}, lite / unet = "
                         f"{by[size, 'lite', on] / by[size, 'unet', on]:.2f}")
    fps = {(r["size"], r["model"], r["compile"]): r["fps"] for r in infer}
    for size, model, target in (("DRV", "clstm", TARGET_GPU_DEFAULT_FPS), ("1080p", "lite", TARGET_GPU_LITE_FPS)):
        for on in sorted({r["compile"] for r in infer if r["size"] == size}):
            value = fps[size, model, on]
            lines.append(f"- target: {model} at {size}, compile {'on' if on else 'off'}: {value:.1f} frames/s "
                         f"(target >= {target:g}: {'met' if value >= target else 'MISSED'})")
    lines += ["", "## training: train_step as train.py, random data at the preset's crop", ""]
    lines.append(markdown_table(
        ["preset", "size", "crop", "T", "B", "ckpt", "compile", "AMP", "images/s", "peak (GB)", "budget (GB)"],
        [[r["preset"], r["size"], f"{r['crop'][0]}x{r['crop'][1]}", r["frames"], r["batch"], r["checkpointing"],
          "on" if r["compile"] else "off", r.get("dtype", "-"), "OOM" if r["oom"] else f"{r['images_per_s']:.1f}",
          "OOM" if r["oom"] else "-" if r["peak_gb"] != r["peak_gb"] else f"{r['peak_gb']:.2f}",
          r["budget_gb"] or "-"] for r in train]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", type=Path, default=Path("result/gpu_check"))
    p.add_argument("--tiny", action="store_true", help="CPU, tiny sizes, eager compile backend: a crash check")
    p.add_argument("--compile", choices=["both", "off", "on"], default="both")
    p.add_argument("--reps", type=int, default=20, help="inference repetitions per case")
    p.add_argument("--train-steps", type=int, default=5)
    args = p.parse_args(argv)
    if args.tiny:
        device = torch.device("cpu")
        sizes, presets, extra = TINY["sizes"], TINY["presets"], TINY["train"]
        reps, steps, backend = TINY["reps"], TINY["train_steps"], TINY["backend"]
    else:
        if not torch.cuda.is_available():
            print("gpu_check: needs a CUDA device (or --tiny for a CPU crash check)", file=sys.stderr)
            return 1
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        sizes, presets, extra = SIZES, MEMORY_PRESETS, {}
        reps, steps, backend = args.reps, args.train_steps, "inductor"
    modes = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    info = machine_info()
    start = time.perf_counter()
    infer = bench_inference(device, sizes, modes, backend, reps)
    print(f"gpu_check: inference done in {time.perf_counter() - start:.0f} s", flush=True)
    train = bench_training(device, presets, extra, modes, backend, steps)
    text = report(infer, train, info, args.tiny)
    print(text)
    atomic_write_text(args.out / "gpu_check.md", text)
    atomic_write_text(args.out / "gpu_check.json", json.dumps(
        {"machine": info, "tiny": args.tiny, "inference": infer, "training": train,
         "time_s": time.perf_counter() - start}, indent=2) + "\n")
    print(f"gpu_check: done in {time.perf_counter() - start:.0f} s; tables in {args.out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
