"""Evaluation: per-video PSNR/SSIM/MABD of checkpoints and baselines, per split, as JSON/CSV/Markdown/plot.

Everything streams frame by frame (one frame of each method in memory), so a 110-frame DRV video at
918x1374 costs no more memory than an 8-frame one. Baselines share the table:
- `traditional`: the gained input through a plain camera pipeline (average greens, white balance,
  colour matrix, gamma, tone curve);
- `temporal mean`: the causal running mean of the gained inputs through the same pipeline, a strong
  baseline on static scenes and a ghosting one on moving scenes.
On synthetic moving videos with masks (batman.data.motion) every method also gets PSNR in the moving and
recently uncovered regions and a crop figure of the moving region; every video gets per-frame PSNR and a
drift (batman.metrics), plotted against the frame index for static and moving videos.
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

from batman.config import BatmanError, Config
from batman.files import atomic_path, atomic_write_text
from batman.metrics import MABD, RecentUnion, RegionPSNR, drift_db, mabd_error, psnr, ssim

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
    """The pipeline that finishes the model's input: with data.white_balance the input is already
    balanced (the pipeline's own balance is 1), with data.colour=srgb already in linear sRGB (its matrix
    is the identity); what is left comes from the synthetic metadata, else the first raw frame."""
    from batman.data.raw import read_raw

    if cfg.data.mode != "raw":
        return BaselineISP(np.ones(3), np.eye(3), packed=False)
    meta = getattr(video, "meta", None) or {}
    balanced, in_srgb = cfg.data.white_balance, cfg.data.colour == "srgb" and video.cam_to_srgb is not None
    if balanced and in_srgb:
        return BaselineISP(np.ones(3), np.eye(3))
    if "wb" in meta and "cam_to_srgb" in meta:
        wb, matrix = np.asarray(meta["wb"], float)[:3], np.asarray(meta["cam_to_srgb"], float)
    else:
        frame = read_raw(video.frames[0])
        wb = np.asarray(frame.wb, float)[[0, 1, 3]]
        matrix = frame.cam_to_srgb if frame.cam_to_srgb is not None else np.eye(3)
    return BaselineISP(np.ones(3) if balanced else wb, np.eye(3) if in_srgb else matrix)


class Scores:
    """Per-frame PSNR, running SSIM, the MABD vector and the masked PSNRs of one method on one video."""

    def __init__(self, with_ssim: bool = True):
        self.psnr, self.ssim, self.mabd, self.with_ssim = [], [], MABD(), with_ssim
        self.regions, self.last = {"psnr_moving": RegionPSNR(), "psnr_uncovered": RegionPSNR()}, None

    def add(self, output: np.ndarray, target: np.ndarray, regions: dict | None = None) -> None:
        """regions: {"psnr_moving": mask, "psnr_uncovered": mask}, (H, W) bool, when the video has masks."""
        self.psnr.append(psnr(output, target))
        if self.with_ssim:
            self.ssim.append(ssim(output, target))
        self.mabd.add(output)
        for key, mask in (regions or {}).items():
            self.regions[key].add(output, target, mask)
        self.last = output

    def summary(self, target_mabd: np.ndarray, masked: bool = False) -> dict:
        out = {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)) if self.ssim else math.nan,
               "mabd_error_e3": 1e3 * mabd_error(self.mabd.vector(), target_mabd),
               "drift_db": drift_db(self.psnr), "psnr_frames": [round(v, 4) for v in self.psnr]}
        return out | ({k: r.value() for k, r in self.regions.items()} if masked else {})


def evaluate_video(video, cfg: Config, enhancers: dict, frames: int = 0, with_ssim: bool = True,
                   cache=None, figure: Path | None = None) -> dict:
    """Scores of every enhancer and both baselines on one video: {method: {psnr, ssim, mabd_error_e3,
    drift_db, psnr_frames[, psnr_moving, psnr_uncovered]}}; `figure`: where the ghosting crops go."""
    from batman.data.dataset import iter_frames, load_targets
    from batman.data.motion import iter_masks

    n = min(len(video.frames), frames) if frames else len(video.frames)
    isp = baseline_isp(video, cfg)
    scale = cfg.model.scale
    methods = list(enhancers) + [TRADITIONAL, TEMPORAL_MEAN]
    scores = {m: Scores(with_ssim) for m in methods}
    truth_mabd = MABD()
    for e in enhancers.values():
        e.reset()
    running_sum, recent, regions = None, RecentUnion(), None
    triples = zip(iter_frames(video, cfg.data, cache), load_targets(video, n), iter_masks(video, n))
    for i, (frame, target, mask) in enumerate(tqdm(triples, total=n, desc=f"evaluate {video.id}", leave=False,
                                                   unit="frame")):
        truth_mabd.add(target)
        regions = None if mask is None else region_masks(mask, target.shape[:2], recent)
        for name, enhancer in enhancers.items():
            scores[name].add(enhancer(frame), target, regions)
        scores[TRADITIONAL].add(isp.process(frame, scale), target, regions)
        running_sum = frame.astype(np.float64) if running_sum is None else running_sum + frame
        scores[TEMPORAL_MEAN].add(isp.process((running_sum / (i + 1)).astype(np.float32), scale), target, regions)
    if figure is not None and regions is not None:
        plot_ghosting(figure, f"{video.id}, frame {i + 1}", regions["psnr_moving"],
                      {m: s.last for m, s in scores.items()}, target)
    return {m: s.summary(truth_mabd.vector(), masked=regions is not None) for m, s in scores.items()}


def region_masks(mask: np.ndarray, shape: tuple[int, int], recent: RecentUnion) -> dict:
    """A synth mask (batman.data.motion) -> the moving and recently uncovered regions on the output's grid."""
    from batman.data.motion import MOVING, UNCOVERED
    scale = shape[0] // mask.shape[0]
    up = (lambda m: m.repeat(scale, 0).repeat(scale, 1)) if scale > 1 else (lambda m: m)
    return {"psnr_moving": up((mask & MOVING) > 0), "psnr_uncovered": up(recent.add((mask & UNCOVERED) > 0))}


def method_name(path: Path, taken: set) -> str:
    name = path.parent.name if path.name.startswith(("epoch_", "last")) else path.stem
    return name if name not in taken else f"{name} ({path.stem})"


def evaluate(root, model=None, split: str = "test", frames: int = 0, out="result", baselines=(), videos=None,
             device: str | None = None, with_ssim: bool = True) -> dict:
    """Evaluate checkpoint `model` (default: best in trained_model/) and `baselines` on a split."""
    from batman.ckpt import load_model, shipped_weights
    from batman.data.cache import find_cache
    from batman.data.drv import load_split
    from batman.export import Enhancer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = [Path(model) if model else shipped_weights()] + [Path(p) for p in baselines]
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
        results[video.id] = evaluate_video(video, cfg, enhancers, frames, with_ssim, cache,
                                           figure=Path(out) / f"ghosting_{video.id}.png")
    if skipped:
        tqdm.write(f"note: {len(skipped)} videos without ground truth skipped ({', '.join(skipped)})")
    if not results:
        raise BatmanError(f"no video with ground truth in the {split} split of {root}")
    report = {"split": split, "root": str(root), "models": [str(p) for p in paths], "frames": frames,
              "videos": results, "mean": split_means(results), "skipped": skipped,
              "static": [v.id for v in chosen if v.id in results and v.static]}
    write_report(Path(out), report)
    return report


MEAN_KEYS = ("psnr", "ssim", "mabd_error_e3", "psnr_moving", "psnr_uncovered", "drift_db")


def split_means(results: dict) -> dict:
    """Means over videos; the masked PSNRs and the drift over the videos that have them (else nan)."""
    methods = next(iter(results.values())).keys()
    return {m: {k: _nanmean([v[m].get(k, math.nan) for v in results.values()]) for k in MEAN_KEYS} for m in methods}


def _nanmean(values: list) -> float:
    finite = [x for x in values if not math.isnan(x)]
    return float(np.mean(finite)) if finite else math.nan


def markdown_table(report: dict) -> str:
    lines = [f"Split `{report['split']}`, {len(report['videos'])} videos "
             f"(PSNR/SSIM per frame, averaged; MABD error = mean squared MABD difference x 1e3, lower is better; "
             f"moving / uncovered: PSNR in synth's motion masks; drift: last 16 frames - first 16 after warm-up)",
             "", "| method | PSNR (dB) | SSIM | MABD error (x1e3) | PSNR moving | PSNR uncovered | drift (dB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, s in report["mean"].items():
        extra = " | ".join("-" if math.isnan(s[k]) else f"{s[k]:.2f}" for k in MEAN_KEYS[3:])
        lines.append(f"| {m} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['mabd_error_e3']:.4f} | {extra} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """metrics.json, metrics.csv (one row per video and method), metrics.md, metrics.png, psnr_frames.csv
    and drift.png (PSNR against the frame index)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "method", "psnr", "ssim", "mabd_error_e3", *MEAN_KEYS[3:]])
        for vid, methods in [*report["videos"].items(), ("mean", report["mean"])]:
            for m, s in methods.items():
                w.writerow([vid, m, f"{s['psnr']:.4f}", f"{s['ssim']:.5f}", f"{s['mabd_error_e3']:.6f}",
                            *(f"{s.get(k, math.nan):.4f}" for k in MEAN_KEYS[3:])])
    with atomic_path(out / "psnr_frames.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "method", "frame", "psnr"])
        for vid, methods in report["videos"].items():
            for m, s in methods.items():
                w.writerows([vid, m, i + 1, f"{v:.4f}"] for i, v in enumerate(s["psnr_frames"]))
    table = markdown_table(report)
    atomic_write_text(out / "metrics.md", table)
    plot_metrics(out / "metrics.png", report)
    plot_drift(out / "drift.png", report)
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


def plot_drift(path: Path, report: dict) -> None:
    """PSNR against the frame index, averaged over the static and over the moving videos, per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    static = set(report.get("static", []))
    groups = [(label, [v for v in report["videos"] if (v in static) == is_static])
              for label, is_static in (("static videos", True), ("moving videos", False))]
    groups = [(label, ids) for label, ids in groups if ids]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.5), squeeze=False)
    for ax, (label, ids) in zip(axes[0], groups):
        for j, method in enumerate(report["mean"]):
            curves = [report["videos"][v][method]["psnr_frames"] for v in ids]
            padded = np.full((len(curves), max(map(len, curves))), np.nan)
            for row, curve in zip(padded, curves):
                row[:len(curve)] = curve
            ax.plot(np.arange(1, padded.shape[1] + 1), np.nanmean(padded, axis=0), color=f"C{j}", label=method)
        ax.set_title(f"{label} ({len(ids)})", fontsize=10)
        ax.set_xlabel("frame")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"split {report['split']}: PSNR against the frame index (drift)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def crop_box(mask: np.ndarray, pad: int = 8, least: int = 32) -> tuple[slice, slice]:
    """A box around the mask's pixels, padded and at least `least` pixels a side (within the image)."""
    ys, xs = np.nonzero(mask)
    box = []
    for lo, hi, size in ((ys.min(), ys.max(), mask.shape[0]), (xs.min(), xs.max(), mask.shape[1])):
        lo, hi = lo - pad, hi + 1 + pad
        grow = max(0, min(least, size) - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        shift = max(0, -lo) - max(0, hi - size)
        box.append(slice(max(0, lo + shift), min(size, hi + shift)))
    return box[0], box[1]


def plot_ghosting(path: Path, title: str, mask: np.ndarray, outputs: dict, truth: np.ndarray) -> None:
    """The moving region of one frame: input (traditional pipeline) | every other method | truth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not mask.any():
        return
    box = crop_box(mask)
    panels = [("input (traditional)", outputs[TRADITIONAL])] + [(m, o) for m, o in outputs.items()
                                                                if m != TRADITIONAL] + [("truth", truth)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        ax.imshow(np.clip(image[box], 0, 1), interpolation="nearest")
        ax.set_title(name if name == "truth" else f"{name}\n{psnr(image[box], truth[box]):.2f} dB", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}: moving region", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
