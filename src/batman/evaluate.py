"""Evaluation: per-video PSNR/SSIM/MABD of checkpoints and baselines, per split, as JSON/CSV/Markdown/plot.

Everything streams frame by frame (one frame of each method in memory), so a 110-frame DRV video at
918x1374 costs no more memory than an 8-frame one. The classical baselines (batman.baselines: the
traditional pipeline, the causal temporal mean, BM3D, temporal mean + BM3D, BM4D) share the table;
`--baselines` picks them. Each method's seconds per frame (its own work, the pipeline included) go
into the table.
On synthetic moving videos with masks (batman.data.motion) every method also gets PSNR in the moving and
recently uncovered regions and a crop figure of the moving region; every video gets per-frame PSNR and a
drift (batman.metrics), plotted against the frame index for static and moving videos.
"""
from __future__ import annotations

import csv
import json
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from batman.baselines import BASELINES, BM4D_WINDOW, DEFAULT_BASELINES, TRADITIONAL, baseline_isp, check_baselines
from batman.config import BatmanError, Config, check_options
from batman.files import atomic_path, atomic_write_text, ensure_dir
from batman.infer import Enhancer
from batman.metrics import MABD, RecentUnion, RegionPSNR, drift_db, mabd_error, psnr, ssim
from batman.report import markdown_table, pyplot, save_figure


class Scores:
    """Per-frame PSNR, running SSIM, the MABD vector, the masked PSNRs and the seconds spent of one method on
    one video."""

    def __init__(self, with_ssim: bool = True):
        self.psnr, self.ssim, self.mabd, self.with_ssim = [], [], MABD(), with_ssim
        self.regions, self.last = {"psnr_moving": RegionPSNR(), "psnr_uncovered": RegionPSNR()}, None
        self.seconds = 0.0

    def add(self, output: np.ndarray, target: np.ndarray, regions: dict | None = None) -> None:
        """regions: {"psnr_moving": mask, "psnr_uncovered": mask}, (H, W) bool, when the video has masks."""
        self.psnr.append(psnr(output, target))
        if self.with_ssim:
            self.ssim.append(ssim(output, target))
        self.mabd.add(output)
        for key, mask in (regions or {}).items():
            self.regions[key].add(output, target, mask)
        self.last = output

    def spent(self, step):
        """Run step() and count its seconds; its result is returned, not scored."""
        start = time.perf_counter()
        result = step()
        self.seconds += time.perf_counter() - start
        return result

    def timed(self, step, pending: deque) -> None:
        """Run step() -> outputs, count its seconds, score each output against the oldest pending
        (target, regions)."""
        for output in self.spent(step):
            self.add(output, *pending.popleft())

    def summary(self, target_mabd: np.ndarray, masked: bool = False) -> dict:
        out = {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)) if self.ssim else math.nan,
               "mabd_error_e3": 1e3 * mabd_error(self.mabd.vector(), target_mabd),
               "seconds_per_frame": self.seconds / max(len(self.psnr), 1),
               "drift_db": drift_db(self.psnr), "psnr_frames": [round(v, 4) for v in self.psnr]}
        return out | ({k: r.value() for k, r in self.regions.items()} if masked else {})


def evaluate_video(video, cfg: Config, enhancers: dict, frames: int = 0, with_ssim: bool = True,
                   cache=None, classical=DEFAULT_BASELINES, figure: Path | None = None,
                   two_pass: bool = False) -> dict:
    """Scores of every enhancer and the `classical` baselines (names in BASELINES) on one video:
    {method: {psnr, ssim, mabd_error_e3, seconds_per_frame, drift_db, psnr_frames[, psnr_moving,
    psnr_uncovered]}}; `figure`: where the ghosting crops go; `two_pass`: the enhancers run the frames
    backward first (infer's docstring)."""
    from batman.data.dataset import iter_frames, load_targets
    from batman.data.motion import iter_masks

    n = min(len(video.frames), frames) if frames else len(video.frames)
    isp = baseline_isp(video, cfg)
    peers = [BASELINES[name](isp, cfg.model.scale) for name in classical]
    scores = {m: Scores(with_ssim) for m in list(enhancers) + [p.name for p in peers]}
    pending = {m: deque() for m in scores}  # (target, regions) of frames pushed but not yet scored (BM4D)
    truth_mabd = MABD()
    for e in enhancers.values():
        e.reset()
    if two_pass:  # the backward pass (infer's docstring); its time counts
        for frame in iter_frames(video, cfg.data, cache, range(n - 1, -1, -1)):
            for name, enhancer in enhancers.items():
                scores[name].spent(lambda: enhancer(frame))
    recent, regions, target = RecentUnion(), None, None
    triples = zip(iter_frames(video, cfg.data, cache), load_targets(video, n), iter_masks(video, n))
    for i, (frame, target, mask) in enumerate(tqdm(triples, total=n, desc=f"evaluate {video.id}", leave=False,
                                                   unit="frame")):
        truth_mabd.add(target)
        regions = None if mask is None else region_masks(mask, target.shape[:2], recent)
        for name, enhancer in enhancers.items():
            pending[name].append((target, regions))
            scores[name].timed(lambda: [enhancer(frame)], pending[name])
        for peer in peers:
            pending[peer.name].append((target, regions))
            scores[peer.name].timed(lambda: peer.push(frame), pending[peer.name])
    for peer in peers:
        scores[peer.name].timed(peer.flush, pending[peer.name])
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
             device: str | None = None, with_ssim: bool = True, classical=DEFAULT_BASELINES,
             ensemble: int = 1, two_pass: bool = False, bf16: bool = False) -> dict:
    """Evaluate checkpoint `model` (default: ckpt.find_default_model), the checkpoints `baselines` and the
    `classical` baselines (names in BASELINES) on a split; `ensemble`: views each model averages, `two_pass`:
    the models run each video backward first, `bf16`: under bf16 autocast (infer's docstring)."""
    from batman.ckpt import load_model, resolve_device, resolve_model
    from batman.data.cache import open_cache
    from batman.data.drv import check_video_id, load_split

    check_options("evaluate", frames=frames)
    for video_id in videos or ():
        check_video_id(video_id, "--videos")
    ensure_dir(out)  # before the work: an --out naming a file would fail only at the end
    classical = check_baselines(classical)
    device = resolve_device(device)
    paths = [resolve_model(model)] + [Path(p) for p in baselines]
    enhancers, cfg = {}, None
    for path in paths:
        net, net_cfg = load_model(path, device)
        if cfg is not None and (net_cfg.data.mode, net_cfg.model.scale) != (cfg.data.mode, cfg.model.scale):
            raise BatmanError(f"{path} uses {net_cfg.data.mode} input at scale {net_cfg.model.scale}; the first "
                              f"model uses {cfg.data.mode} at scale {cfg.model.scale}: compare like with like")
        cfg = cfg or net_cfg
        enhancers[method_name(path, set(enhancers))] = Enhancer(net, net_cfg.model.scale, device, ensemble=ensemble,
                                                                packed=net_cfg.data.mode == "raw", bf16=bf16)
    cache = open_cache(root, cfg.data.cache or None)
    all_videos = load_split(root, split, cfg.data.mode, cache=cache)
    chosen = [v for v in all_videos if not videos or v.id in videos]
    results, skipped = {}, []
    for video in tqdm(chosen, desc=f"evaluate {split}", unit="video"):
        if not video.targets:
            skipped.append(video.id)
            continue
        results[video.id] = evaluate_video(video, cfg, enhancers, frames, with_ssim, cache, classical,
                                           figure=Path(out) / f"ghosting_{video.id}.png", two_pass=two_pass)
    if skipped:
        tqdm.write(f"note: {len(skipped)} videos without ground truth skipped ({', '.join(skipped)})")
    if not results:
        raise BatmanError(f"no video with ground truth in the {split} split of {root}")
    report = {"split": split, "root": str(root), "models": [str(p) for p in paths], "frames": frames,
              "baselines": list(classical), "ensemble": ensemble, "two_pass": two_pass, "bf16": bf16,
              "bm4d_window": BM4D_WINDOW if "bm4d" in classical else None,
              "videos": results, "mean": split_means(results), "skipped": skipped,
              "static": [v.id for v in chosen if v.id in results and v.static]}
    write_report(Path(out), report)
    return report


MEAN_KEYS = ("psnr", "ssim", "mabd_error_e3", "seconds_per_frame", "psnr_moving", "psnr_uncovered", "drift_db")
MASKED = MEAN_KEYS[4:]  # nan where a video has no masks (or is too short for a drift)


def split_means(results: dict) -> dict:
    """Means over videos; the masked PSNRs and the drift over the videos that have them (else nan)."""
    methods = next(iter(results.values())).keys()
    return {m: {k: _nanmean([v[m].get(k, math.nan) for v in results.values()]) for k in MEAN_KEYS} for m in methods}


def _nanmean(values: list) -> float:
    finite = [x for x in values if not math.isnan(x)]
    return float(np.mean(finite)) if finite else math.nan


def metrics_table(report: dict) -> str:
    """The split means as a Markdown table under a line that says what each column is."""
    caption = (f"Split `{report['split']}`, {len(report['videos'])} videos "
               f"(PSNR/SSIM per frame, averaged; MABD error = mean squared MABD difference x 1e3, lower is better; "
               f"seconds per frame on this machine; moving / uncovered: PSNR in synth's motion masks; drift: last 16 "
               f"frames - first 16 after warm-up)"
               + (f"; BM4D on windows of {report['bm4d_window']} frames" if report.get("bm4d_window") else ""))
    headers = ["method", "PSNR (dB)", "SSIM", "MABD error (x1e3)", "s/frame", "PSNR moving", "PSNR uncovered",
               "drift (dB)"]
    rows = [[m, f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", f"{s['mabd_error_e3']:.4f}", f"{s['seconds_per_frame']:.3g}",
             *("-" if math.isnan(s[k]) else f"{s[k]:.2f}" for k in MASKED)] for m, s in report["mean"].items()]
    return caption + "\n\n" + markdown_table(headers, rows, align="l" + "r" * (len(headers) - 1)) + "\n"


def write_report(out: Path, report: dict) -> None:
    """metrics.json, metrics.csv (one row per video and method), metrics.md, metrics.png, psnr_frames.csv
    and drift.png (PSNR against the frame index)."""
    ensure_dir(out)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "method", "psnr", "ssim", "mabd_error_e3", "seconds_per_frame", *MASKED])
        for vid, methods in [*report["videos"].items(), ("mean", report["mean"])]:
            for m, s in methods.items():
                w.writerow([vid, m, f"{s['psnr']:.4f}", f"{s['ssim']:.5f}", f"{s['mabd_error_e3']:.6f}",
                            f"{s['seconds_per_frame']:.6f}", *(f"{s.get(k, math.nan):.4f}" for k in MASKED)])
    with atomic_path(out / "psnr_frames.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "method", "frame", "psnr"])
        for vid, methods in report["videos"].items():
            for m, s in methods.items():
                w.writerows([vid, m, i + 1, f"{v:.4f}"] for i, v in enumerate(s["psnr_frames"]))
    table = metrics_table(report)
    atomic_write_text(out / "metrics.md", table)
    plot_metrics(out / "metrics.png", report)
    plot_drift(out / "drift.png", report)
    tqdm.write(table)


def plot_metrics(path: Path, report: dict) -> None:
    plt = pyplot()
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
    save_figure(fig, path)


def plot_drift(path: Path, report: dict) -> None:
    """PSNR against the frame index, averaged over the static and over the moving videos, per method."""
    plt = pyplot()
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
    save_figure(fig, path)


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
    plt = pyplot()
    if not mask.any():
        return
    box = crop_box(mask)
    first = [("input (traditional)", outputs[TRADITIONAL])] if TRADITIONAL in outputs else []  # --baselines none
    panels = first + [(m, o) for m, o in outputs.items() if m != TRADITIONAL] + [("truth", truth)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        ax.imshow(np.clip(image[box], 0, 1), interpolation="nearest")
        ax.set_title(name if name == "truth" else f"{name}\n{psnr(image[box], truth[box]):.2f} dB", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}: moving region", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
