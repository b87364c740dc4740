"""Benchmarks that print ratios of things measured side by side in the same run.

    batman bench infer    per-frame time, FLOPs and FLOP rate of clstm / conv3d / unet / lite (vs a matmul peak),
                          onnxruntime rows, and where the time goes per module
    batman bench export   peak RSS and frames/s of streaming export for 8, 32, 128 frames (vs model only)
    batman bench data     training clips/s from the prepared cache vs decoding the raws
    batman bench memory   training memory per preset (CUDA: measured; CPU: counted) vs its GPU budget
    batman bench quality  a small study: train the default, the align=flow candidate, the U-Net and lite alike,
                          evaluate against the baselines (issue 14 motion rows: moving regions, BM4D, drift)
    batman bench all      all of the above, then every target of issue 15 with met / MISSED (targets.py), and
                          OUT/bench.md with every table

Every speed figure is the median of several repetitions, and every comparison is between things
timed in the same process (repetitions interleaved, so a change in the machine's load hits both
sides alike). Each part prints a Markdown table and writes OUT/<part>.json. One module per part;
common.py holds what they share.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from batman.bench.common import cpu_seconds, machine_info
from batman.bench.data import bench_data
from batman.bench.export import bench_export
from batman.bench.infer import bench_infer
from batman.bench.memory import bench_memory
from batman.bench.quality import bench_quality
from batman.bench.targets import targets_report
from batman.config import PRESETS, BatmanError
from batman.files import atomic_write_text

PARTS = ("infer", "export", "data", "memory", "quality")


def run_bench(what: str, out: str | Path = "result/bench", preset: str = "", quick: bool = False,
              device: str | None = None, bf16: bool = False) -> dict:
    """`batman bench WHAT`: one part, or all of them (then OUT/bench.md holds every table).
    `bf16`: bench infer times the CPU under bf16 autocast too, as `export --bf16` runs (CUDA always is).

    `device` (cpu, cuda, cuda:N; None or auto: inference on the CPU and CUDA when there is one, the rest
    on CUDA when available) is where the parts run; bench data reads on the CPU whatever it is."""
    from batman.ckpt import resolve_device

    chosen = None if device in (None, "auto") else resolve_device(device)
    if chosen is not None and chosen.type == "cuda":
        torch.cuda.set_device(chosen.index or 0)  # the parts' plain "cuda" now means this device
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if what not in PARTS + ("all",):
        raise BatmanError(f"bench: unknown part {what!r}; choose one of {', '.join(PARTS)}, all")
    if preset and preset not in PRESETS:
        raise BatmanError(f"bench: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    parts = PARTS if what == "all" else (what,)
    results, times, cpu = {}, {}, {}
    load = os.getloadavg()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for part in parts:
        t0, c0 = time.perf_counter(), cpu_seconds()
        if part == "memory":
            results[part] = bench_memory(out, preset=preset, quick=quick, device=chosen and chosen.type)
        elif part == "quality":
            results[part] = bench_quality(out, quick=quick, device=chosen and str(chosen))
        elif part == "infer":
            results[part] = bench_infer(out, quick=quick, devices=chosen and (str(chosen),), cpu_bf16=bf16)
        elif part == "export":
            results[part] = bench_export(out, quick=quick, device=chosen and str(chosen))
        else:
            results[part] = bench_data(out, quick=quick)
        times[part], cpu[part] = time.perf_counter() - t0, cpu_seconds() - c0
        print(f"[bench {part}: {times[part]:.0f} s wall, {cpu[part]:.0f} s of CPU time]\n", flush=True)
    if what == "all":
        info = machine_info()
        total = time.perf_counter() - start
        text = [f"# batman bench all ({info['date']})", "",
                f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} with {info['threads']} threads"
                + (f"; {info['cuda_device']}" if "cuda_device" in info else "")
                + f". Load average at the start {load[0]:.2f}, at the end {info['load_average'][0]:.2f}.",
                f"Wall time: {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + "); "
                f"CPU time (this process and its workers, user + system): {(cpu_seconds() - cpu_start) / 60:.1f} min ("
                + ", ".join(f"{k} {v:.0f} s" for k, v in cpu.items()) + ").", ""]
        for part in parts:
            text += [f"## {part}", "", results[part]["report"], ""]
        targets = targets_report(results)
        text += ["## targets", "", targets, ""]
        print(targets + "\n")
        atomic_write_text(out / "bench.md", "\n".join(text))
        print(f"bench all: {total / 60:.1f} min wall, {(cpu_seconds() - cpu_start) / 60:.1f} min of CPU time; "
              f"tables in {out / 'bench.md'}")
    return results
