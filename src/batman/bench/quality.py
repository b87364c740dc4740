"""`batman bench quality`: a small study, the default clstm, the motion-compensated candidate (align=flow),
the U-Net and lite trained alike on one synthetic set and evaluated against the baselines; on 64-frame
videos, the drift and BM4D (a slow peer: one 16-frame window of one small moving video)."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

from batman.bench.common import QUALITY_SEED, machine_info, write_json
from batman.config import BatmanError, Config, make_config
from batman.files import atomic_write_text
from batman.report import markdown_table, pyplot, save_figure

QUALITY_DATA = dict(videos=12, frames=12, size=(512, 768), seed=QUALITY_SEED, dynamic=4)  # pan, rotate, zoom, object
LONG_DATA = dict(videos=1, frames=64, size=(256, 384), seed=QUALITY_SEED + 2, dynamic=1, test_only=True,
                 motion_kinds=("objects",))  # input 64x96: drift over 64 frames, and BM4D on 16 of them
BM4D_FRAMES = 16
QUALITY_TRAIN = {"train.steps_per_epoch": 20, "train.epochs": 6, "train.lr": 1e-3, "train.val_clips": 2}
CANDIDATE = "clstm_align_flow"         # issue 14's motion-compensated recurrence: not the default (it lost the
ALIGN_FLOW = {"model.align": "flow", "model.align_margin": 0.3}  # 2026-12-02 study, docs/RESULTS.md)
QUALITY_MODELS = {"clstm": {"model.name": "clstm"}, CANDIDATE: ALIGN_FLOW,  # run name -> overrides
                  "unet": {"model.name": "unet"}, "lite": {"model.size": "lite"}}
TARGET_LITE_PSNR_GAP_DB = 1.5         # lite's PSNR (static and moving) at most this far below the default clstm's
QUALITY_SPLITS = ("test", "dynamic")  # the static test videos and the moving ones


def train_run(cfg: Config, run: Path, device: str | None = None, resume: str | None = None) -> tuple[Path, dict]:
    """Train `cfg` into the folder `run`: (its best checkpoint, {time_s, best_val_loss, epochs, steps,
    best_epoch, val_psnr}), the facts of the epoch whose checkpoint that is."""
    from batman.ckpt import best_checkpoint
    from batman.train import train

    start = time.perf_counter()
    summary = train(cfg, out=run, device=device, resume=resume)
    best = min(summary["history"], key=lambda h: h["val_loss"])
    return best_checkpoint(run), {"time_s": time.perf_counter() - start, "best_val_loss": summary["best"],
                                  "epochs": summary["epochs"], "steps": summary["history"][-1]["step"],
                                  "best_epoch": best["epoch"], "val_psnr": best["val_psnr"]}


def evaluate_splits(data: Path, model: Path, out: Path, baselines=(), device: str | None = None) -> dict[str, dict]:
    """`model` (and the checkpoints `baselines` beside it) evaluated on each of QUALITY_SPLITS of `data`,
    into out/<split>: {split: evaluate's report}."""
    from batman.evaluate import evaluate

    return {split: evaluate(data, model=model, baselines=list(baselines), split=split, out=Path(out) / split,
                            device=device)
            for split in QUALITY_SPLITS}


def bench_quality(out: Path, quick: bool = False, device: str | None = None) -> dict:
    """Train the default clstm, CANDIDATE, unet and lite alike (cpu preset, QUALITY_TRAIN) on a synthetic set of
    its own seed and evaluate each on its test split and its dynamic videos (PSNR in the moving regions too)
    against the traditional pipeline and the temporal mean; then the long clips (long_clips). Writes
    quality.json, quality.md and quality.png (crops side by side); evaluate's ghosting_<id>.png crops of each
    moving video's moving region are in quality/dynamic/."""
    from batman.data.synth import synthesize

    out = Path(out) / "quality"
    data_spec = dict(QUALITY_DATA, videos=6, frames=8) if quick else QUALITY_DATA
    train_spec = dict(QUALITY_TRAIN, **{"train.steps_per_epoch": 2, "train.epochs": 1}) if quick else QUALITY_TRAIN
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    synthesize(data, **data_spec)
    checkpoints, training = {}, {}
    for name, overrides in QUALITY_MODELS.items():
        run = out / name
        if run.exists():
            shutil.rmtree(run)  # stale checkpoints of an earlier run would be picked as the best
        cfg = make_config("cpu", {"data.root": str(data), **overrides, **train_spec})
        checkpoints[name], training[name] = train_run(cfg, run, device=device)
    reports = evaluate_splits(data, checkpoints["clstm"], out, device="cpu",
                              baselines=[checkpoints[name] for name in QUALITY_MODELS if name != "clstm"])
    long = long_clips(out, checkpoints, quick)
    figure = out.parent / "quality.png"
    quality_figure(data, checkpoints, figure)
    cfg = make_config("cpu", train_spec)
    lines = [f"bench quality: synthetic set seed {QUALITY_SEED} ({data_spec['videos']} static videos split "
             f"train/val/test, {data_spec['dynamic']} dynamic; {data_spec['frames']} frames; Bayer "
             f"{data_spec['size'][0]}x{data_spec['size'][1]} -> input {data_spec['size'][0] // 4}x"
             f"{data_spec['size'][1] // 4}). Each model trained alike: cpu preset (crop {cfg.data.crop}, "
             f"T={cfg.data.frames}, B={cfg.train.batch}) with "
             + ", ".join(f"{k}={v}" for k, v in train_spec.items())
             + " (lr 1e-3 as the demo: the runs are short). Evaluated on every frame of the full input grid; "
             "MABD error x1e3, lower is better.", ""]
    rows = []
    for split, report in reports.items():
        for method, s in report["mean"].items():
            rows.append([split, method, f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", f"{s['mabd_error_e3']:.4f}",
                         "-" if math.isnan(s["psnr_moving"]) else f"{s['psnr_moving']:.2f}"])
    lines.append(markdown_table(["split", "method", "PSNR (dB)", "SSIM", "MABD error (x1e3)", "PSNR moving (dB)"],
                                rows))
    lines += ["", long["caption"], "", markdown_table(["clip", "method", "PSNR (dB)", "drift (dB)"], long["rows"]),
              "", *quality_verdicts(reports), *motion_verdicts(reports, long)]
    lines += ["", markdown_table(["model", "train time (s)", "steps", "best epoch (evaluated)", "its val PSNR (dB)"],
                                 [[k, f"{v['time_s']:.0f}", v["steps"], f"{v['best_epoch']} of {v['epochs']}",
                                   f"{v['val_psnr']:.2f}"] for k, v in training.items()]),
              "", f"Figure: {figure.name} (rows: a test video and a dynamic video, last frame); the moving regions: "
                  f"{out.name}/dynamic/ghosting_<id>.png"]
    text = "\n".join(lines)
    print(text)
    result = {"machine": machine_info(), "data": data_spec_json(data_spec),
              "train": train_spec, "training": training,
              "splits": {split: {"mean": r["mean"], "videos": r["videos"]} for split, r in reports.items()},
              "long": {k: v for k, v in long.items() if k not in ("caption", "rows")},
              "figure": str(figure), "report": text}
    write_json(out.parent / "quality.json", result)
    atomic_write_text(out.parent / "quality.md", text + "\n")
    return result


def long_clips(out: Path, checkpoints: dict, quick: bool = False) -> dict:
    """The default and CANDIDATE on LONG_DATA's static and moving video: PSNR and drift over all their frames;
    then on the moving video's first BM4D_FRAMES frames beside BM4D and the U-Net (when the bm4d package is
    there). {"drift": {split: {method: means}}, "bm4d": {method: means} or None, "caption", "rows"}."""
    from batman.baselines import check_baselines
    from batman.data.synth import synthesize
    from batman.evaluate import evaluate

    data = out / "long_data"
    spec = dict(LONG_DATA, frames=40, size=(128, 192)) if quick else LONG_DATA  # drift needs 40+ frames
    if data.exists():
        shutil.rmtree(data)
    synthesize(data, **spec)
    models = [checkpoints["clstm"], checkpoints[CANDIDATE]]
    drift = {split: evaluate(data, model=models[0], baselines=models[1:], split=split, out=out / "long" / split,
                             device="cpu")["mean"] for split in QUALITY_SPLITS}
    try:
        check_baselines(("bm4d",))
        bm4d = evaluate(data, model=models[0], baselines=[models[1], checkpoints["unet"]], split="dynamic",
                        frames=BM4D_FRAMES, classical=("traditional", "bm4d"), out=out / "long" / "bm4d",
                        device="cpu")["mean"]
    except BatmanError:  # the bm4d package is optional (batman[classical])
        bm4d = None
    size = f"{spec['size'][0] // 4}x{spec['size'][1] // 4}"
    caption = (f"Long clips: one static and one moving ({spec['motion_kinds'][0]}) video of {spec['frames']} frames "
               f"at input {size} (seed {spec['seed']}); drift = mean PSNR of the last 16 frames - frames 9-24. "
               + (f"BM4D (non-causal, slow) on the moving video's first {BM4D_FRAMES} frames, beside the models "
                  "on the same frames." if bm4d else "BM4D not measured: the bm4d package is not installed."))
    rows = [[f"{'static' if split == 'test' else 'moving'}, {spec['frames']} frames", method, f"{s['psnr']:.2f}",
             f"{s['drift_db']:+.2f}"] for split, means in drift.items() for method, s in means.items()]
    rows += [[f"moving, first {BM4D_FRAMES} frames", method, f"{s['psnr']:.2f}", "-"]
             for method, s in (bm4d or {}).items()]
    return {"drift": drift, "bm4d": bm4d, "caption": caption, "rows": rows, "data": data_spec_json(spec)}


def data_spec_json(spec: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def verdicts(checks: list[tuple]) -> list[str]:
    """(label, value, op, need, unit) -> '- label: +1.23 unit (target op need: met / MISSED)'."""
    return [f"- {label}: {value:+.2f} {unit} (target {op} {need:g}: "
            f"{'met' if (value >= need if op == '>=' else value > need) else 'MISSED'})"
            for label, value, op, need, unit in checks]


def quality_verdicts(reports: dict) -> list[str]:
    """The earlier issues' quality targets, each as a measured margin with met / MISSED (issue 15's lite line
    last, static and moving)."""
    static, dynamic = reports["test"]["mean"], reports["dynamic"]["mean"]

    def gain(table, method):  # clstm's PSNR above `method`'s
        return table["clstm"]["psnr"] - table[method]["psnr"]

    def mabd_gain(table):  # how much lower clstm's MABD error is than the U-Net's
        return table["unet"]["mabd_error_e3"] - table["clstm"]["mabd_error_e3"]

    checks = [("static: clstm PSNR - traditional", gain(static, "traditional"), ">=", 6.0, "dB"),
              ("static: clstm PSNR - temporal mean", gain(static, "temporal mean"), ">=", 2.0, "dB"),
              ("static: clstm PSNR - unet", gain(static, "unet"), ">=", 0.0, "dB"),
              ("dynamic: clstm PSNR - unet (ghosting would make it negative)", gain(dynamic, "unet"), ">=", 0.0, "dB"),
              ("static: unet MABD error - clstm's", mabd_gain(static), ">", 0.0, "x1e-3"),
              ("dynamic: unet MABD error - clstm's", mabd_gain(dynamic), ">", 0.0, "x1e-3")]
    if "lite" in static:
        checks += [(f"{split}: lite PSNR - clstm (issue 15)", -gain(table, "lite"), ">=", -TARGET_LITE_PSNR_GAP_DB, "dB")
                   for split, table in (("static", static), ("dynamic", dynamic)) if "lite" in table]
    return verdicts(checks)


def motion_verdicts(reports: dict, long: dict) -> list[str]:
    """Issue 14's targets for the default clstm and for CANDIDATE: against the U-Net in the moving regions,
    against BM4D, their drift on the long clips, and CANDIDATE against the default (today's) on moving and
    static videos."""
    static, dynamic = reports["test"]["mean"], reports["dynamic"]["mean"]
    lines = ["Issue 14 (motion; the default is clstm, align=none):"]
    for model in ("clstm", CANDIDATE):
        checks = [(f"moving: {model} PSNR in moving regions - unet's", dynamic[model]["psnr_moving"]
                   - dynamic["unet"]["psnr_moving"], ">=", 1.5, "dB")]
        if model != "clstm":
            new, old = static[model], static["clstm"]
            checks += [(f"moving: {model} PSNR - default clstm", dynamic[model]["psnr"] - dynamic["clstm"]["psnr"],
                        ">=", 2.0, "dB"),
                       (f"static: {model} PSNR - default clstm", new["psnr"] - old["psnr"], ">=", -0.3, "dB"),
                       (f"static: default clstm's MABD error - {model}'s", old["mabd_error_e3"] - new["mabd_error_e3"],
                        ">=", 0.0, "x1e-3")]
        if long["bm4d"]:
            checks.append((f"moving, long clip's first {BM4D_FRAMES} frames: {model} PSNR - BM4D",
                           long["bm4d"][model]["psnr"] - long["bm4d"]["BM4D"]["psnr"], ">=", 1.0, "dB"))
        checks += [(f"long {label} clip: {model} drift (last 16 frames - first 16 after warm-up)",
                    long["drift"][split][model]["drift_db"], ">=", 0.0, "dB")
                   for split, label in (("test", "static"), ("dynamic", "moving"))]
        lines += verdicts(checks)
    return lines


def quality_figure(root: Path, checkpoints: dict, path: Path, crop: int = 128) -> None:
    """Last frame of the first test and first dynamic video: traditional | temporal mean | clstm | CANDIDATE | unet |
    truth."""
    from batman.baselines import TemporalMean, baseline_isp
    from batman.ckpt import load_model
    from batman.data.dataset import iter_frames, load_targets
    from batman.data.drv import load_split
    from batman.infer import Enhancer

    plt = pyplot()
    nets = {name: load_model(checkpoints[name], "cpu") for name in ("clstm", CANDIDATE, "unet")}
    cfg = nets["clstm"][1]
    videos = [load_split(root, "test", cfg.data.mode)[0], load_split(root, "dynamic", cfg.data.mode)[0]]
    titles = ["traditional", "temporal mean", "clstm", "clstm align=flow", "unet", "truth"]
    fig, axes = plt.subplots(len(videos), len(titles), figsize=(3 * len(titles), 3 * len(videos)), squeeze=False)
    for row, video in zip(axes, videos):
        isp = baseline_isp(video, cfg)
        enhancers = {name: Enhancer(net, c.model.scale, "cpu") for name, (net, c) in nets.items()}
        temporal, outputs, n = TemporalMean(isp), {}, len(video.frames)
        for i, (frame, target) in enumerate(zip(iter_frames(video, cfg.data), load_targets(video, n))):
            mean = temporal.mean(frame)
            for name, enhancer in enhancers.items():
                outputs[name] = enhancer(frame)
            if i == n - 1:
                panels = [isp.process(frame), isp.process(mean), outputs["clstm"], outputs[CANDIDATE], outputs["unet"],
                          target]
        h, w = panels[0].shape[:2]
        y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        for ax, panel, title in zip(row, panels, titles):
            ax.imshow(np.clip(panel[y0:y0 + crop, x0:x0 + crop], 0, 1), interpolation="nearest")
            ax.set_title(f"{title} ({video.id})", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
