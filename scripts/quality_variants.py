#!/usr/bin/env python3
"""Quality study of design variants: each trained with the same budget on one synthetic benchmark.

    python scripts/quality_variants.py --out result/variants [--preset cpu] [--epochs 4] [--only a,b]

The benchmark (seed 1000, static and dynamic videos) is disjoint from the tests' and the demo's data.
Every variant is `--set` overrides on top of the preset; the table reports PSNR / SSIM / MABD error on
the static test split and on the dynamic videos, next to the traditional pipeline and the temporal
mean measured on the same frames. Runs on CUDA when present (the budget is steps, not seconds).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "clstm (default)": {},
    "unet": {"model.name": "unet"},
    "conv3d": {"model.name": "conv3d"},
    "clstm norm=batch head=shuffle (seed-faithful)": {"model.norm": "batch", "model.head": "shuffle"},
    "clstm norm=frozen": {"model.norm": "frozen"},
    "clstm head=shuffle": {"model.head": "shuffle"},
    "clstm noise map": {"data.noise_map": True},
    "clstm without running mean": {"model.mean_input": False},
    "clstm head_width=8": {"model.head_width": 8},
    "clstm temporal loss 0.5": {"train.temporal_weight": 0.5},
    "clstm 1 layer": {"model.layers": 1},
    "clstm 3 layers": {"model.layers": 3},
    "clstm hidden 32": {"model.hidden": 32},
    "clstm hidden 96": {"model.hidden": 96},
}
BENCH_DATA = dict(videos=16, frames=12, size=(512, 768), seed=1000, dynamic=4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("result/variants"))
    p.add_argument("--preset", default="cpu")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    p.add_argument("--only", default="", help="comma list of variant names (default: all)")
    args = p.parse_args()

    from batman.ckpt import best_checkpoint
    from batman.config import make_config
    from batman.data.cache import prepare
    from batman.data.synth import synthesize
    from batman.evaluate import evaluate
    from batman.train import train

    data = args.out / "data"
    if not (data / "test_list.txt").exists():
        synthesize(data, **BENCH_DATA)
        prepare(data)
    chosen = [v for v in VARIANTS if not args.only or v in args.only.split(",")]
    rows = json.loads((args.out / "variants.json").read_text()) if (args.out / "variants.json").exists() else {}
    for name in chosen:
        if name in rows:
            continue
        folder = args.out / name.replace(" ", "_").replace("=", "-").replace("(", "").replace(")", "")
        cfg = make_config(args.preset, {"data.root": str(data), "train.epochs": args.epochs,
                                        "train.steps_per_epoch": args.steps, "train.patience": 99,
                                        **VARIANTS[name]})
        t0 = time.perf_counter()
        train(cfg, out=folder, resume="auto")
        train_s = time.perf_counter() - t0
        model = best_checkpoint(folder)
        static = evaluate(data, model=model, split="test", out=folder / "test")["mean"]
        dynamic = evaluate(data, model=model, split="dynamic", out=folder / "dynamic")["mean"]
        model_key = next(iter(static))
        rows[name] = {"overrides": VARIANTS[name], "train_s": round(train_s, 1),
                      "static": static[model_key], "dynamic": dynamic[model_key],
                      "static_traditional": static["traditional"], "static_temporal_mean": static["temporal mean"],
                      "dynamic_traditional": dynamic["traditional"], "dynamic_temporal_mean": dynamic["temporal mean"]}
        (args.out / "variants.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (args.out / "variants.md").write_text(table)
    print(table)


def markdown(rows: dict) -> str:
    first = next(iter(rows.values()))
    lines = ["| variant | static PSNR | static SSIM | static MABD err x1e3 | dynamic PSNR | dynamic MABD err x1e3 | train s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("traditional pipeline", "traditional"), ("causal temporal mean", "temporal_mean")):
        s, d = first[f"static_{key}"], first[f"dynamic_{key}"]
        lines.append(f"| {label} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['mabd_error_e3']:.4f} | "
                     f"{d['psnr']:.2f} | {d['mabd_error_e3']:.4f} | - |")
    for name, r in rows.items():
        s, d = r["static"], r["dynamic"]
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['mabd_error_e3']:.4f} | "
                     f"{d['psnr']:.2f} | {d['mabd_error_e3']:.4f} | {r['train_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
