"""Evaluation: per-video PSNR/SSIM/MABD of checkpoints and baselines, per split, as JSON/CSV/Markdown/plot.

Everything streams frame by frame (one frame of each method in memory), so a 110-frame DRV video at
918x1374 costs no more memory than an 8-frame one. Classical baselines share the table (`--baselines`
picks them; `traditional` and `mean` by default, the BM3D/BM4D ones cost seconds per frame):
- `traditional`: the gained input x_t through a plain camera pipeline P (average greens, white
  balance, colour matrix, gamma, tone curve): s_t = P(x_t), sRGB (H, W, 3);
- `mean`: the causal running mean through the same pipeline, P(mean(x_1..x_t)), a strong baseline on
  static scenes and a ghosting one on moving scenes;
- `bm3d`: BM3D (Dabov et al. 2007; the `bm3d` package, opponent colour space) on each s_t with
  sigma_t = median(|HH(s_t)|) / 0.6745, Donoho's estimate from the finest diagonal Haar band;
- `mean-bm3d`: BM3D on P(mean(x_1..x_t)) with sigma = sigma_1 / sqrt(t), where the one-frame sRGB
  noise sigma_1 = 1.4826 MAD(s_i - s_{i-1}) / sqrt(2) is averaged over the pairs seen so far (the
  difference of two frames of a static scene holds twice the noise variance and none of the scene);
  Donoho's estimate until the second frame. P is not linear, so 1/sqrt(t) is an approximation;
- `bm4d`: BM4D (Maggioni et al. 2013; the `bm4d` package) on (T, H, W) stacks of s_t, one per
  opponent colour channel: the non-causal peer. It needs the clip, so it runs on windows of
  BM4D_WINDOW frames (memory and time bounded, every frame scored, possible jumps at window edges),
  sigma the median of the window's Donoho estimates.
Each method's seconds per frame (its own work, the pipeline included) go into the table.
On synthetic moving videos with masks (batman.data.motion) every method also gets PSNR in the moving and
recently uncovered regions and a crop figure of the moving region; every video gets per-frame PSNR and a
drift (batman.metrics), plotted against the frame index for static and moving videos.
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from batman.config import BatmanError, Config, check_options
from batman.files import atomic_path, atomic_write_text, ensure_dir
from batman.metrics import MABD, RecentUnion, RegionPSNR, drift_db, mabd_error, psnr, ssim

# --- classical baselines: one self-contained group (bound for baselines.py) ---------------------

TRADITIONAL, TEMPORAL_MEAN = "traditional", "temporal mean"
BM3D, MEAN_BM3D, BM4D = "BM3D", "temporal mean + BM3D", "BM4D"
BM4D_WINDOW = 16      # frames per BM4D volume (a 918x1374 DRV window: 16 x 15 MB of sRGB)
BM4D_MIN_FRAMES = 5   # BM4D's Wiener blocks are 5x5x5: shorter windows are mirrored in time
MAD_TO_SIGMA = 1.4826  # sigma = 1.4826 x median absolute deviation for Gaussian noise (1 / 0.6745)
OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])  # as bm3d's 'opp'


@dataclass
class BaselineISP:
    """The plain camera pipeline for one video: white balance and camera -> sRGB matrix."""
    wb: np.ndarray
    cam_to_srgb: np.ndarray
    packed: bool = True  # input is packed R, G1, G2, B (raw mode), else camera RGB (rawrgb)

    def process(self, frame: np.ndarray, scale: int = 1) -> np.ndarray:
        """Gained model input (C, H, W) -> sRGB (sH, sW, 3); rawRGB skips the green average and
        channels past the colour ones (the noise map) are ignored."""
        from batman.isp import traditional_pipeline
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


def upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) -> (sH, sW, 3) by repeating pixels (denoisers run before it: repeats hide the noise)."""
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else rgb


def mad_sigma(image: np.ndarray) -> float:
    """Donoho's noise estimate of an (H, W[, C]) image: median(|HH|) / 0.6745 per channel, averaged,
    HH = (x00 - x01 - x10 + x11) / 2 on 2x2 blocks (the finest diagonal orthonormal Haar band, where
    a smooth scene leaves little and white noise keeps its variance)."""
    x = np.asarray(image, dtype=np.float64)
    x = x[..., None] if x.ndim == 2 else x
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    hh = (x[0:h:2, 0:w:2] - x[0:h:2, 1:w:2] - x[1:h:2, 0:w:2] + x[1:h:2, 1:w:2]) / 2
    return float(np.mean(np.median(np.abs(hh).reshape(-1, x.shape[-1]), axis=0))) * MAD_TO_SIGMA


def difference_sigma(current: np.ndarray, previous: np.ndarray) -> float:
    """One frame's noise sigma from two frames of a static scene: 1.4826 MAD(d) / sqrt(2), d = their
    difference per channel, averaged (the MAD shrugs off the few pixels that moved)."""
    d = np.asarray(current, dtype=np.float64) - np.asarray(previous, dtype=np.float64)
    d = d.reshape(-1, d.shape[-1]) if d.ndim == 3 else d.reshape(-1, 1)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    return float(np.mean(mad)) * MAD_TO_SIGMA / math.sqrt(2)


def require(package: str, method: str):
    """Import an optional denoiser package, or a one-line error saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise BatmanError(f"the {method} baseline needs the {package} package: `make install` (pinned in "
                          f"requirements.txt) or pip install 'batman[classical]'") from None


def bm3d_rgb(srgb: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D of an sRGB (H, W, 3) image with white noise of `sigma` (opponent colour space)."""
    bm3d = require("bm3d", BM3D)
    return np.asarray(bm3d.bm3d_rgb(srgb, max(sigma, 1e-6)), dtype=np.float32)


def bm4d_clip(clip: np.ndarray, sigma: float) -> np.ndarray:
    """BM4D of a (T, H, W, 3) sRGB clip with white noise of `sigma` per channel: each opponent colour
    channel (T, H, W) is one volume, sigma scaled by the norm of its transform row; a clip shorter than
    BM4D's blocks is mirrored in time first and cut back after.

    Why opponent channels: on synthetic clips (ratio 100-300, two videos of 12 frames, 96x96) they
    score 25.65 dB against 22.49 for one volume per R, G, B channel (colour noise is correlated
    across R, G, B after the colour matrix) and 25.23 for opponent channels sharing the luma's
    hard-threshold block matches (bm4d 4.2.5 returns NaNs when Wiener matches are shared); on a
    brighter clip (ratio 20-60, 16 frames, 128x128): 46.02, 44.78 and 46.39 dB."""
    bm4d = require("bm4d", BM4D)
    t = clip.shape[0]
    padded = np.pad(clip, ((0, max(0, BM4D_MIN_FRAMES - t)), (0, 0), (0, 0), (0, 0)), mode="symmetric")
    opponent = padded.astype(np.float64) @ OPPONENT.T
    sigmas = max(sigma, 1e-6) * np.sqrt((OPPONENT ** 2).sum(axis=1))
    out = np.stack([bm4d.bm4d(opponent[..., c], s) for c, s in enumerate(sigmas)], axis=-1)
    return (out @ np.linalg.inv(OPPONENT).T)[:t].astype(np.float32)


class FrameNoise:
    """Causal estimate of one frame's sRGB noise sigma: difference_sigma averaged over the consecutive
    pairs seen so far, mad_sigma of the first frame until a second one arrives."""

    def __init__(self):
        self.previous, self.first, self.pairs = None, 0.0, []

    def add(self, srgb: np.ndarray) -> float:
        if self.previous is None:
            self.first = mad_sigma(srgb)
        else:
            self.pairs.append(difference_sigma(srgb, self.previous))
        self.previous = srgb
        return float(np.mean(self.pairs)) if self.pairs else self.first


class Traditional:
    """A classical baseline for one video: push(frame) -> the outputs ready now (one per frame for the
    causal ones), flush() -> the rest at the end. frame: gained model input (C, H, W)."""
    name = TRADITIONAL

    def __init__(self, isp: BaselineISP, scale: int = 1):
        self.isp, self.scale = isp, scale

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [self.isp.process(frame, self.scale)]

    def flush(self) -> list[np.ndarray]:
        return []


class TemporalMean(Traditional):
    name = TEMPORAL_MEAN

    def __init__(self, isp: BaselineISP, scale: int = 1):
        super().__init__(isp, scale)
        self.sum, self.count = None, 0

    def mean(self, frame: np.ndarray) -> np.ndarray:
        self.sum = frame.astype(np.float64) if self.sum is None else self.sum + frame
        self.count += 1
        return (self.sum / self.count).astype(np.float32)

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [self.isp.process(self.mean(frame), self.scale)]


class BM3DFrames(Traditional):
    name = BM3D

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        srgb = self.isp.process(frame)
        return [upscale(bm3d_rgb(srgb, mad_sigma(srgb)), self.scale)]


class MeanBM3D(TemporalMean):
    name = MEAN_BM3D

    def __init__(self, isp: BaselineISP, scale: int = 1):
        super().__init__(isp, scale)
        self.noise = FrameNoise()

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        mean = self.isp.process(self.mean(frame))
        sigma = self.noise.add(self.isp.process(frame)) / math.sqrt(self.count)
        return [upscale(bm3d_rgb(mean, sigma), self.scale)]


class BM4DWindows(Traditional):
    name = BM4D

    def __init__(self, isp: BaselineISP, scale: int = 1, window: int = BM4D_WINDOW):
        super().__init__(isp, scale)
        self.window, self.frames = window, []

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.frames.append(self.isp.process(frame))
        return self.flush() if len(self.frames) >= self.window else []

    def flush(self) -> list[np.ndarray]:
        if not self.frames:
            return []
        clip, self.frames = np.stack(self.frames), []
        sigma = float(np.median([mad_sigma(f) for f in clip]))
        return [upscale(f, self.scale) for f in bm4d_clip(clip, sigma)]


BASELINES = {"traditional": Traditional, "mean": TemporalMean, "bm3d": BM3DFrames, "mean-bm3d": MeanBM3D,
             "bm4d": BM4DWindows}
DEFAULT_BASELINES = ("traditional", "mean")
NEEDS = {"bm3d": "bm3d", "mean-bm3d": "bm3d", "bm4d": "bm4d"}


def check_baselines(names) -> tuple[str, ...]:
    """Known names, each once, with their packages importable; else a one-line error."""
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise BatmanError(f"unknown baseline {unknown[0]!r}: choose from {', '.join(BASELINES)}")
    for n in names:
        if n in NEEDS:
            require(NEEDS[n], BASELINES[n].name)
    return names


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

    def timed(self, step, pending: deque) -> None:
        """Run step() -> outputs, count its seconds, score each output against the oldest pending
        (target, regions)."""
        start = time.perf_counter()
        outputs = step()
        self.seconds += time.perf_counter() - start
        for output in outputs:
            self.add(output, *pending.popleft())

    def summary(self, target_mabd: np.ndarray, masked: bool = False) -> dict:
        out = {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)) if self.ssim else math.nan,
               "mabd_error_e3": 1e3 * mabd_error(self.mabd.vector(), target_mabd),
               "seconds_per_frame": self.seconds / max(len(self.psnr), 1),
               "drift_db": drift_db(self.psnr), "psnr_frames": [round(v, 4) for v in self.psnr]}
        return out | ({k: r.value() for k, r in self.regions.items()} if masked else {})


def evaluate_video(video, cfg: Config, enhancers: dict, frames: int = 0, with_ssim: bool = True,
                   cache=None, classical=DEFAULT_BASELINES, figure: Path | None = None) -> dict:
    """Scores of every enhancer and the `classical` baselines (names in BASELINES) on one video:
    {method: {psnr, ssim, mabd_error_e3, seconds_per_frame, drift_db, psnr_frames[, psnr_moving,
    psnr_uncovered]}}; `figure`: where the ghosting crops go."""
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
             device: str | None = None, with_ssim: bool = True, classical=DEFAULT_BASELINES) -> dict:
    """Evaluate checkpoint `model` (default: ckpt.find_default_model), the checkpoints `baselines` and the
    `classical` baselines (names in BASELINES) on a split."""
    from batman.ckpt import load_model, resolve_device, resolve_model
    from batman.data.cache import open_cache
    from batman.data.drv import check_video_id, load_split
    from batman.export import Enhancer

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
        enhancers[method_name(path, set(enhancers))] = Enhancer(net, net_cfg.model.scale, device)
    cache = open_cache(root, cfg.data.cache or None)
    all_videos = load_split(root, split, cfg.data.mode, cache=cache)
    chosen = [v for v in all_videos if not videos or v.id in videos]
    results, skipped = {}, []
    for video in tqdm(chosen, desc=f"evaluate {split}", unit="video"):
        if not video.targets:
            skipped.append(video.id)
            continue
        results[video.id] = evaluate_video(video, cfg, enhancers, frames, with_ssim, cache, classical,
                                           figure=Path(out) / f"ghosting_{video.id}.png")
    if skipped:
        tqdm.write(f"note: {len(skipped)} videos without ground truth skipped ({', '.join(skipped)})")
    if not results:
        raise BatmanError(f"no video with ground truth in the {split} split of {root}")
    report = {"split": split, "root": str(root), "models": [str(p) for p in paths], "frames": frames,
              "baselines": list(classical), "bm4d_window": BM4D_WINDOW if "bm4d" in classical else None,
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


def markdown_table(report: dict) -> str:
    lines = [f"Split `{report['split']}`, {len(report['videos'])} videos "
             f"(PSNR/SSIM per frame, averaged; MABD error = mean squared MABD difference x 1e3, lower is better; "
             f"seconds per frame on this machine; moving / uncovered: PSNR in synth's motion masks; drift: last 16 "
             f"frames - first 16 after warm-up)"
             + (f"; BM4D on windows of {report['bm4d_window']} frames" if report.get("bm4d_window") else ""),
             "", "| method | PSNR (dB) | SSIM | MABD error (x1e3) | s/frame | PSNR moving | PSNR uncovered | drift (dB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, s in report["mean"].items():
        extra = " | ".join("-" if math.isnan(s[k]) else f"{s[k]:.2f}" for k in MASKED)
        lines.append(f"| {m} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['mabd_error_e3']:.4f} | "
                     f"{s['seconds_per_frame']:.3g} | {extra} |")
    return "\n".join(lines) + "\n"


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
