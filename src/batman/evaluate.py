"""Evaluation: per-video PSNR/SSIM/MABD of checkpoints and baselines, per split, as JSON/CSV/Markdown/plot.

Everything streams frame by frame (one frame of each method in memory), so a 110-frame DRV video at
918x1374 costs no more memory than an 8-frame one. Baselines share the table:
- `traditional`: the gained input through a plain camera pipeline (average greens, white balance,
  colour matrix, gamma, tone curve);
- `temporal mean`: the causal running mean of the gained inputs through the same pipeline, a strong
  baseline on static scenes and a ghosting one on moving scenes.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from batman.config import BatmanError, Config, check_options
from batman.files import atomic_path, atomic_write_text, ensure_dir
from batman.metrics import MABD, mabd_error, psnr, ssim

TRADITIONAL, TEMPORAL_MEAN = "traditional", "temporal mean"


@dataclass
class BaselineISP:
    """The plain camera pipeline for one video: white balance and camera -> sRGB matrix."""
    wb: np.ndarray
    cam_to_srgb: np.ndarray
    packed: bool = True  # input is packed R, G1, G2, B (raw mode), else camera RGB (rawrgb)

    def process(self, frame: np.ndarray, scale: int = 1) -> np.ndarray:
        """Gained model input (C, H, W) -> sRGB (sH, sW, 3); rawRGB skips the green average and
        channels past the colour ones (the noise map) are ignored."""
        from batman.data.isp import traditional_pipeline
        packed = frame[:4] if self.packed else np.stack([frame[0], frame[1], frame[1], frame[2]])
        rgb = traditional_pipeline(packed, self.wb, self.cam_to_srgb)
        return rgb.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else rgb


def baseline_isp(video, cfg: Config) -> BaselineISP:
    """Colour parameters from the synthetic metadata, else from the first raw frame, else neutral.
    With data.white_balance the input is already balanced, so the pipeline's own balance is 1."""
    from batman.data.raw import read_raw

    meta = getattr(video, "meta", None) or {}
    balanced = cfg.data.white_balance and cfg.data.mode == "raw"
    if "wb" in meta and "cam_to_srgb" in meta:
        wb = np.ones(3) if balanced else np.asarray(meta["wb"], float)[:3]
        return BaselineISP(wb, np.asarray(meta["cam_to_srgb"], float))
    if cfg.data.mode == "raw" and video.frames:
        frame = read_raw(video.frames[0])
        wb = np.ones(3) if balanced else np.asarray(frame.wb, float)[[0, 1, 3]]
        matrix = frame.cam_to_srgb if frame.cam_to_srgb is not None else np.eye(3)
        return BaselineISP(wb, matrix)
    return BaselineISP(np.ones(3), np.eye(3), packed=cfg.data.mode == "raw")


class Scores:
    """Running PSNR/SSIM means and the MABD vector of one method on one video."""

    def __init__(self, with_ssim: bool = True):
        self.psnr, self.ssim, self.mabd, self.with_ssim = [], [], MABD(), with_ssim

    def add(self, output: np.ndarray, target: np.ndarray) -> None:
        self.psnr.append(psnr(output, target))
        if self.with_ssim:
            self.ssim.append(ssim(output, target))
        self.mabd.add(output)

    def summary(self, target_mabd: np.ndarray) -> dict:
        return {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)) if self.ssim else math.nan,
                "mabd_error_e3": 1e3 * mabd_error(self.mabd.vector(), target_mabd)}


def evaluate_video(video, cfg: Config, enhancers: dict, frames: int = 0, with_ssim: bool = True,
                   cache=None) -> dict:
    """Scores of every enhancer and both baselines on one video: {method: {psnr, ssim, mabd_error_e3}}."""
    from batman.data.dataset import iter_frames, load_targets

    n = min(len(video.frames), frames) if frames else len(video.frames)
    isp = baseline_isp(video, cfg)
    scale = cfg.model.scale
    methods = list(enhancers) + [TRADITIONAL, TEMPORAL_MEAN]
    scores = {m: Scores(with_ssim) for m in methods}
    truth_mabd = MABD()
    for e in enhancers.values():
        e.reset()
    running_sum = None
    pairs = zip(iter_frames(video, cfg.data, cache), load_targets(video, n))
    for i, (frame, target) in enumerate(tqdm(pairs, total=n, desc=f"evaluate {video.id}", leave=False, unit="frame")):
        truth_mabd.add(target)
        for name, enhancer in enhancers.items():
            scores[name].add(enhancer(frame), target)
        scores[TRADITIONAL].add(isp.process(frame, scale), target)
        running_sum = frame.astype(np.float64) if running_sum is None else running_sum + frame
        scores[TEMPORAL_MEAN].add(isp.process((running_sum / (i + 1)).astype(np.float32), scale), target)
    return {m: s.summary(truth_mabd.vector()) for m, s in scores.items()}


def method_name(path: Path, taken: set) -> str:
    name = path.parent.name if path.name.startswith(("epoch_", "last")) else path.stem
    return name if name not in taken else f"{name} ({path.stem})"


def evaluate(root, model=None, split: str = "test", frames: int = 0, out="result", baselines=(), videos=None,
             device: str | None = None, with_ssim: bool = True) -> dict:
    """Evaluate checkpoint `model` (default: best in trained_model/) and `baselines` on a split."""
    from batman.ckpt import best_checkpoint, load_model
    from batman.data.cache import find_cache
    from batman.data.drv import check_video_id, load_split
    from batman.export import Enhancer

    check_options("evaluate", frames=frames)
    for video_id in videos or ():
        check_video_id(video_id, "--videos")
    ensure_dir(out)  # before the work: an --out naming a file would fail only at the end
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = [Path(model) if model else best_checkpoint()] + [Path(p) for p in baselines]
    enhancers, cfg = {}, None
    for path in paths:
        net, net_cfg = load_model(path, device)
        if cfg is not None and (net_cfg.data.mode, net_cfg.model.scale) != (cfg.data.mode, cfg.model.scale):
            raise BatmanError(f"{path} uses {net_cfg.data.mode} input at scale {net_cfg.model.scale}; the first "
                              f"model uses {cfg.data.mode} at scale {cfg.model.scale}: compare like with like")
        cfg = cfg or net_cfg
        enhancers[method_name(path, set(enhancers))] = Enhancer(net, net_cfg.model.scale, device)
    cache = find_cache(root, cfg.data.cache or None)
    all_videos = load_split(root, split, cfg.data.mode, cache=cache)
    chosen = [v for v in all_videos if not videos or v.id in videos]
    results, skipped = {}, []
    for video in tqdm(chosen, desc=f"evaluate {split}", unit="video"):
        if not video.targets:
            skipped.append(video.id)
            continue
        results[video.id] = evaluate_video(video, cfg, enhancers, frames, with_ssim, cache)
    if skipped:
        tqdm.write(f"note: {len(skipped)} videos without ground truth skipped ({', '.join(skipped)})")
    if not results:
        raise BatmanError(f"no video with ground truth in the {split} split of {root}")
    report = {"split": split, "root": str(root), "models": [str(p) for p in paths], "frames": frames,
              "videos": results, "mean": split_means(results), "skipped": skipped}
    write_report(Path(out), report)
    return report


def split_means(results: dict) -> dict:
    methods = next(iter(results.values())).keys()
    return {m: {k: float(np.mean([v[m][k] for v in results.values()])) for k in ("psnr", "ssim", "mabd_error_e3")}
            for m in methods}


def markdown_table(report: dict) -> str:
    lines = [f"Split `{report['split']}`, {len(report['videos'])} videos "
             f"(PSNR/SSIM per frame, averaged; MABD error = mean squared MABD difference x 1e3, lower is better)",
             "", "| method | PSNR (dB) | SSIM | MABD error (x1e3) |", "|---|---:|---:|---:|"]
    for m, s in report["mean"].items():
        lines.append(f"| {m} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['mabd_error_e3']:.4f} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """metrics.json, metrics.csv (one row per video and method), metrics.md and metrics.png."""
    ensure_dir(out)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "method", "psnr", "ssim", "mabd_error_e3"])
        for vid, methods in report["videos"].items():
            for m, s in methods.items():
                w.writerow([vid, m, f"{s['psnr']:.4f}", f"{s['ssim']:.5f}", f"{s['mabd_error_e3']:.6f}"])
        for m, s in report["mean"].items():
            w.writerow(["mean", m, f"{s['psnr']:.4f}", f"{s['ssim']:.5f}", f"{s['mabd_error_e3']:.6f}"])
    table = markdown_table(report)
    atomic_write_text(out / "metrics.md", table)
    plot_metrics(out / "metrics.png", report)
    tqdm.write(table)


def plot_metrics(path: Path, report: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["mean"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(axes, ("psnr", "ssim", "mabd_error_e3"),
                              ("PSNR (dB), higher is better", "SSIM, higher is better", "MABD error x1e3, lower is better")):
        values = [report["mean"][m][key] for m in methods]
        ax.bar(range(len(methods)), values, color=[f"C{i}" for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(label, fontsize=10)
        if key == "psnr":
            lo = min(values)
            ax.set_ylim(max(0, lo - 3), max(values) + 1)
    fig.suptitle(f"split {report['split']}: {len(report['videos'])} videos")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
