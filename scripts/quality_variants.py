#!/usr/bin/env python3
"""Quality study of design variants: each trained with the same budget on one synthetic benchmark.

    python scripts/quality_variants.py --out result/variants [--preset demo] [--epochs 12] [--steps 40] [--only a,b]
        [--long "clstm (default),clstm align=flow"] [--bm4d "clstm (default),clstm align=flow"]

The benchmark (seed 1000, static and dynamic videos) is disjoint from the tests' and the demo's data.
Every variant is `--set` overrides on top of the preset; the table reports PSNR / SSIM / MABD error on
the static test split and on the dynamic videos (one per synth motion kind, with masks: PSNR in the
moving regions too), next to the traditional pipeline and the temporal mean measured on the same frames.
--long adds each model's drift on 64-frame videos; --bm4d evaluates chosen rows beside BM4D on a few
dynamic videos. Runs on CUDA when present (the budget is steps, not seconds).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = {
    "clstm (default)": {},
    "clstm align=flow": {"model.align": "flow"},
    "clstm align=flow margin 0.3": {"model.align": "flow", "model.align_margin": 0.3},
    "clstm align=flow + motion speed 12": {"model.align": "flow", "data.motion_speed": 12},
    "unet": {"model.name": "unet"},
    "conv3d": {"model.name": "conv3d"},
    "lite (model.size=lite)": {"model.size": "lite"},
    "clstm head=skip without motion (previous default)": {"model.head": "skip", "data.motion": 0.0},
    "clstm without motion augmentation": {"data.motion": 0.0},
    "clstm motion 0.25": {"data.motion": 0.25},
    "clstm 1 layer": {"model.layers": 1},
    "clstm noise map": {"data.noise_map": True},
    "clstm temporal loss 0.5": {"train.temporal_weight": 0.5},
    "clstm norm=frozen": {"model.norm": "frozen"},
    "clstm hidden 32": {"model.hidden": 32},
    "clstm 3 layers": {"model.layers": 3},
    "clstm 1 layer + motion 0.25 + noise map + temporal loss 0.5": {
        "model.layers": 1, "data.motion": 0.25, "data.noise_map": True, "train.temporal_weight": 0.5},
    "clstm 1 layer + motion 0.25 + noise map + temporal loss 0.5 + norm=frozen": {
        "model.layers": 1, "data.motion": 0.25, "data.noise_map": True, "train.temporal_weight": 0.5,
        "model.norm": "frozen"},
    "clstm 1 layer + motion 0.25 + noise map + temporal loss 0.5 + norm=frozen + hidden 32": {
        "model.layers": 1, "data.motion": 0.25, "data.noise_map": True, "train.temporal_weight": 0.5,
        "model.norm": "frozen", "model.hidden": 32},
}
BENCH_DATA = dict(videos=16, frames=12, size=(512, 768), seed=1000, dynamic=7)  # one moving video per synth kind
LONG_DATA = dict(videos=1, frames=64, size=(256, 384), seed=1001, dynamic=1, test_only=True,
                 motion_kinds=("objects",))  # --long: drift over 64 frames at input 64x96 (CPU-sized)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("result/variants"))
    p.add_argument("--preset", default="demo", help="training preset (default demo: 64x64x6 crops, lr 1e-3)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the data stay the same); rows of a seed "
                                                       "other than 0 are labelled with it")
    p.add_argument("--only", default="", help="comma list of variant names (default: all)")
    p.add_argument("--long", default="", help="comma list of row names: evaluate their models on LONG_DATA (drift)")
    p.add_argument("--bm4d", default="", help="comma list of row names: evaluate them beside BM4D on the dynamic "
                                              "videos --bm4d-videos (slow) into bm4d.json")
    p.add_argument("--bm4d-videos", default="M0003,M0006", help="comma list of dynamic video ids (default: the "
                                                                  "object and the mixed-motion video)")
    args = p.parse_args()

    from batman.bench.quality import evaluate_splits, train_run
    from batman.config import make_config
    from batman.data.cache import prepare
    from batman.data.synth import synthesize

    data = args.out / "data"
    if not (data / "test_list.txt").exists():
        synthesize(data, **BENCH_DATA)
        prepare(data)
    chosen = [v for v in VARIANTS if not args.only or v in args.only.split(",")]
    rows = json.loads((args.out / "variants.json").read_text()) if (args.out / "variants.json").exists() else {}
    for variant in chosen:
        name = variant + (f" (seed {args.seed})" if args.seed else "")
        if name in rows:
            continue
        folder = args.out / "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        cfg = make_config(args.preset, {"data.root": str(data), "train.epochs": args.epochs, "seed": args.seed,
                                        "train.steps_per_epoch": args.steps, "train.patience": 99,
                                        "train.threads": args.threads,
                                        **VARIANTS[variant]})
        model, training = train_run(cfg, folder, resume="auto")
        reports = evaluate_splits(data, model, folder)
        static, dynamic = reports["test"]["mean"], reports["dynamic"]["mean"]
        model_key = next(iter(static))
        rows[name] = {"overrides": VARIANTS[variant], "seed": args.seed, "train_s": round(training["time_s"], 1),
                      "model": str(model), "static": brief(static[model_key]), "dynamic": brief(dynamic[model_key]),
                      "static_traditional": brief(static["traditional"]),
                      "static_temporal_mean": brief(static["temporal mean"]),
                      "dynamic_traditional": brief(dynamic["traditional"]),
                      "dynamic_temporal_mean": brief(dynamic["temporal mean"])}
        (args.out / "variants.json").write_text(json.dumps(rows, indent=2))
    if args.long:
        evaluate_long(args.out, rows, args.long.split(","))
    if args.bm4d:
        evaluate_bm4d(args.out, rows, args.bm4d.split(","), args.bm4d_videos.split(","))
    table = markdown(rows)
    (args.out / "variants.md").write_text(table)
    print(table)


def brief(scores: dict) -> dict:
    """A method's split means without the per-frame list."""
    return {k: v for k, v in scores.items() if k != "psnr_frames"}


def evaluate_long(out: Path, rows: dict, names: list[str]) -> None:
    """The models of rows `names` on LONG_DATA's static and moving 64-frame videos: rows[name]['long_static' /
    'long_dynamic'] = its means there (drift_db: last 16 frames - 16 after the warm-up)."""
    from batman.bench.quality import evaluate_splits
    from batman.data.synth import synthesize

    data = out / "long_data"
    if not (data / "test_list.txt").exists():
        synthesize(data, **LONG_DATA)
    for name in names:
        row = rows[name]
        if "long_static" in row:
            continue
        reports = evaluate_splits(data, Path(row["model"]), Path(row["model"]).parent / "long")
        key = next(iter(reports["test"]["mean"]))
        row["long_static"], row["long_dynamic"] = (brief(reports[s]["mean"][key]) for s in ("test", "dynamic"))
        (out / "variants.json").write_text(json.dumps(rows, indent=2))


def evaluate_bm4d(out: Path, rows: dict, names: list[str], ids: list[str]) -> None:
    """The models of `names` beside the traditional pipeline, the temporal mean and BM4D (one window per video)
    on the dynamic videos `ids`: out/bm4d.json = {"videos": ids, "means": {method: means}}; the ghosting crops
    (input | the models | temporal mean | BM4D | truth) in out/bm4d/."""
    from batman.evaluate import evaluate

    models = [Path(rows[n]["model"]) for n in names]
    report = evaluate(out / "data", model=models[0], baselines=models[1:], split="dynamic", out=out / "bm4d",
                      videos=ids, classical=("traditional", "mean", "bm4d"))
    labels = dict(zip(list(report["mean"])[:len(names)], names))
    means = {labels.get(m, m): brief(s) for m, s in report["mean"].items()}
    (out / "bm4d.json").write_text(json.dumps({"videos": ids, "means": means}, indent=2))


def markdown(rows: dict) -> str:
    from batman.report import markdown_table

    def moving(s):
        return "-" if s.get("psnr_moving") is None else f"{s['psnr_moving']:.2f}"

    first = next(iter(rows.values()))
    table = []
    for label, key in (("traditional pipeline", "traditional"), ("causal temporal mean", "temporal_mean")):
        s, d = first[f"static_{key}"], first[f"dynamic_{key}"]
        table.append([label, f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", f"{s['mabd_error_e3']:.4f}",
                      f"{d['psnr']:.2f}", f"{d['ssim']:.4f}", f"{d['mabd_error_e3']:.4f}", moving(d), "-", "-", "-"])
    for name, r in rows.items():
        s, d = r["static"], r["dynamic"]
        drifts = [f"{r[k]['drift_db']:+.2f}" if k in r else "-" for k in ("long_static", "long_dynamic")]
        table.append([name, f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", f"{s['mabd_error_e3']:.4f}",
                      f"{d['psnr']:.2f}", f"{d['ssim']:.4f}", f"{d['mabd_error_e3']:.4f}", moving(d), *drifts,
                      r["train_s"]])
    headers = ["variant", "static PSNR", "static SSIM", "static MABD err x1e3", "dynamic PSNR", "dynamic SSIM",
               "dynamic MABD err x1e3", "moving-region PSNR", "drift static (64 fr)", "drift moving (64 fr)",
               "train s"]
    return markdown_table(headers, table, align="l" + "r" * (len(headers) - 1)) + "\n"


if __name__ == "__main__":
    main()
