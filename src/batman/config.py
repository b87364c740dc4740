"""Configuration: frozen dataclasses, named presets, `--set section.key=value` overrides, JSON.

Every knob of data, model and training lives here; nothing else hides a default.
The resolved config is saved next to every run and inside every checkpoint; `--config FILE`
(JSON, or YAML with PyYAML) starts from such a file, so a saved `config.json` relaunches its run.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from batman.errors import BatmanError  # noqa: F401  (batman.config.BatmanError is where most code takes it)
from batman.files import atomic_write_bytes


@dataclass(frozen=True)
class DataCfg:
    root: str = ""            # data set root (DRV layout); empty: must be given on the command line
    mode: str = "raw"         # raw: Bayer frames through rawpy; rawrgb: the authors' VBM4D PNGs
    bin: int = 2              # bin the packed raw 2x2 onto the ground-truth grid (DRV: 2)
    crop: tuple[int, int] = (256, 256)  # training crop (H, W) on the model's input grid
    frames: int = 8           # clip length T
    short_frames: int = 0     # with short_share p: that share of training batches keeps only each clip's first
    short_share: float = 0.0  # short_frames frames (clips of two lengths: long clips teach late frames, and
                              # short ones keep the early, noisiest frames' share of the steps)
    clips_per_video: int = 4  # random clips drawn from each training video per epoch
    augment: bool = True      # flips / transposes that keep the canonical RGGB order
    motion: float = 0.5       # share of static training clips that pan (each frame's crop shifted): DRV trains
                              # on static videos only, and a recurrent model that never saw motion averages
                              # over it (ghosting)
    motion_speed: int = 4     # largest pan, input-grid pixels per frame (rows and columns drawn separately)
    train_dynamic: bool = False  # also train on the dynamic split (synth's moving videos, a truth per frame:
                                 # rotation, zoom, objects, occlusion, light changes that pans lack); never
                                 # with a data set whose dynamic videos are held out for evaluation
    dynamic_repeat: int = 1   # each moving training video (train_dynamic, extra_dynamic) counts this many times
                              # per epoch (more motion clips when the static ones outnumber them)
    val_dynamic: int = 0      # the dynamic split's last N videos validate (and never train): static-only
                              # validation picks the epoch that keeps its gate shut, blind to camera motion
    extra_dynamic: str = ""   # other data sets (a comma list) whose dynamic split trains too (e.g. `batman synth
                              # --videos 0 --dynamic 40 --motion pan,rotate,zoom,mixed`: more camera motion)
    extra_static: str = ""    # other data sets (a comma list) whose static videos (every split) train too (e.g.
                              # `batman synth --ratio 5 50`: brighter scenes, where a clean filter must be kept)
    cache: str = ""           # prepared cache folder; empty: <root>/cache when it exists
    workers: int = 0          # DataLoader worker processes
    max_gain: float = 300.0   # gains are clipped to this (guards against broken EXIF)
    noise_map: bool = False   # append a noise-level channel (log gain / log max_gain): for one sensor the
                              # gain sets the noise of the gained signal (EMVD conditions on such a map)
    white_balance: bool = True  # multiply raw input by the file's as-shot white balance (spares the
                                # network guessing each scene's illuminant; DRV's ARWs carry it)
    exposure_level: float = 0.0  # brightness of the gained training inputs (infer.brightness): set by train
                                 # from its data; `export --input` picks the gain that brings a burst there
    colour: str = "srgb"      # srgb: balanced raw input -> linear sRGB with each file's own colour matrix, so
                              # the network sees a camera-independent space and works on any Bayer camera;
                              # camera: leave it in the sensor's RGB (the network learns one camera's colours)

    @property
    def in_channels(self) -> int:
        """The model's input channels: packed raw 4 or rawRGB 3, plus the noise map."""
        return (4 if self.mode == "raw" else 3) + int(self.noise_map)


@dataclass(frozen=True)
class ModelCfg:
    name: str = "clstm"       # clstm | conv3d | unet
    hidden: int = 64          # ConvLSTM hidden channels (and conv3d width)
    layers: int = 2           # stacked ConvLSTM layers
    kernel: int = 3           # ConvLSTM kernel size
    fusion: int = 64          # MFF channels per encoder stage
    t_kernel: int = 3         # conv3d temporal extent (frames)
    norm: str = "group"       # batch | group | frozen
    head: str = "recursive"   # recursive (filter + learned pipeline + residual, see net.py) | skip | shuffle
    head_width: int = 16      # channels of the recursive/skip head's full-resolution convs (every pixel: costly)
    scale: int = 1            # output grid = input grid * scale (1 or 2)
    mean_input: bool = True   # skip/shuffle heads: feed them the causal running mean of the inputs
                              # (the recursive head filters the input itself)
    encoder_weights: str = "" # local torchvision resnet18 state dict (ImageNet); empty: random init
    checkpointing: bool = False  # gradient checkpointing in the encoder (saves memory, costs time)
    align: str = "none"       # none | flow | camera: warp the recurrent states by the flow from the previous
                              # frame's features before each update (model/align.py), so the filter follows
                              # motion; camera: one affine map per frame (the camera's motion), no parameters
    align_margin: float = 0.0 # flow: no motion where the best match beats no motion by less than this
                              # (normalised correlation; 0: off); camera: where the affine map does not (0: the
                              # measured margin of model/align.py for the rating): noise makes still scenes jitter
    align_to: str = "frame"   # flow/camera: match each frame against the previous frame's descriptor (frame) or
                              # the recursive head's filter state's (filter: the denoised past, and where the
                              # state really sits, so the fit's errors do not add up frame after frame)
    align_rating: str = "bicubic"  # camera: how a fitted map is rated against no motion (CameraAlign.gain):
                              # bicubic (read between the whole displacements of the correlation volume: a
                              # motion of 0.1-0.3 stride-4 pixels a frame rates below none, so slow pans never
                              # align) | warped (the reference warped by the map, matched in place)
    size: str = "default"     # default (ResNet-18 encoder) | lite (real-time: model/lite.py); setting it also
                              # sets the widths in SIZES, except those given in the same overrides
    pipeline: str = "learned" # recursive head's colour matrix and tone curve: learned | fixed (identity, the
                              # sRGB gamma and smoothstep of isp.traditional_pipeline: exact for synth's truths)
    encoder_mean: bool = False  # the encoder also sees the causal running mean of the inputs (its spatial
                              # denoising then starts from the temporally averaged frame, as mean + BM3D does)
    gate_evidence: bool = False  # recursive head: its gate also sees how far the frame departs from the filter
                              # state over 12x12 pixels, against the frame's own noise (net.mismatch_evidence):
                              # its 5x5 convs alone cannot tell a slow pan from noise at these gains
    denoiser: int = 0         # recursive head: width of a small U-Net that denoises the filtered image in space
                              # (model/denoiser.py; 0: off): its residual alone sees a 5x5 window
    state_reset: bool = False # recursive head: before each frame the ConvLSTM memory is scaled down and the
                              # filter pulled towards the frame where the frame departs from the filter state
                              # (net.StateReset): forgets on camera motion
    residual_rule: float = 0.0  # recursive head: scale its residual by min(1, noise / (C x level)) per frame, the
                              # noise from the frame's G1 - G2 difference (model/residual.py; 0: off): on bright,
                              # barely noisy frames the residual "denoises" detail the filter already has clean
    residual_cap: float = 0.0 # recursive head: scale its residual down where its std exceeds K x the noise the filter
                              # state can still hold, per frame (model/residual.py; 0: off): on scenes unlike
                              # the training photos the residual invents more than the noise it could remove
    residual_cap_block: int = 0  # recursive head: with residual_cap, one factor per block x block pixels of the
                              # input grid instead of one per frame (0): the residual invents detail where the
                              # scene is textured, and one factor per frame either lets it or cuts it everywhere
    residual_cap_mean: bool = False  # recursive head: with residual_cap_block, the cap scales only the residual's
                              # detail within each block; its block mean (a correction of the filter state's level
                              # or colour, which the cap read as invented detail) passes with the rule's weight
    output_smoothing: float = 0.0  # recursive head: the output follows its gate, y'_t = y'_{t-1} + min(1, S k_t)
                              # (y_t - y'_{t-1}) (0: off; RecursiveHead.smooth): on still scenes the correction of
                              # each frame jitters more than the filter moves (a release setting, no training)
    smoothing_ramp: bool = False  # with output_smoothing: S grows as min(S, frames seen before), so the
                              # second to S-th outputs are smoothed too (at S k >= 1 they were not: the largest
                              # frame-to-frame change of a still video is its first; RecursiveHead.smooth)
    single_frame: bool = False  # recursive head: a SID U-Net beside the network denoises each frame on its own,
                              # and the output takes it where the gate opens, y + min(1, k / single_frame_gate)
                              # (u - y) before the smoothing (RecursiveHead.take_single_frame): where the camera
                              # moved the filter holds one frame, and a U-Net denoises one frame better
    single_frame_gate: float = 0.7  # with single_frame: the gate k at which the output is the U-Net's alone
                              # (0.7: fitted on training videos, Makefile single_frame_gate)
    single_frame_input: str = "frame"  # with single_frame: the U-Net denoises the frame (frame) or the filter
                              # state after the frame's update (filter): on a still scene the average of t frames,
                              # whose error changes little from frame to frame; where the gate opens, the frame
    noise_input: bool = False # recursive head: its residual and denoiser also read the noise the filter state
                              # still holds, per pixel (log, one channel; model/residual.py): told how much noise
                              # is left, a trained residual need not guess it from content it has seen


@dataclass(frozen=True)
class TrainCfg:
    lr: float = 1e-4
    schedule: str = "const"   # const | cosine: half a cosine from lr down to 0 over all epochs' steps
    warmup_steps: int = 0     # linear warm-up of the lr over the first N optimiser steps (either schedule)
    weight_decay: float = 1e-4
    batch: int = 2
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training clips
    val_clips: int = 0        # 0: every validation video once
    loss: str = "l1"          # l1 | l2 | psnr (minus each frame's PSNR, averaged: train.reconstruction_loss)
    temporal_weight: float = 0.0  # weight of the temporal consistency term
    filter_weight: float = 0.0    # weight of the recursive head's filter state alone against the truth:
                                  # the filter must average where the scene is still (its gate closed)
    bptt: int = 0             # truncate back-propagation every N frames (0: whole clip)
    patience: int = 3         # early stop after N epochs without validation improvement
    amp: str = "auto"         # auto (CUDA: bf16 when supported, else fp16; CPU: off) | bf16 (also CPU) | fp16 | off
    grad_clip: float = 0.0    # max gradient norm (0: off)
    save_every: int = 0       # also write last.pt every N steps (0: once per epoch)
    keep: int = 3             # best epoch checkpoints kept
    deterministic: bool = False  # torch deterministic algorithms (slower; for exact resume tests)
    threads: int = 0          # torch CPU threads (0: torch's default)
    max_minutes: float = 0.0  # stop after the epoch that takes the run's training time (resumes included)
                              # past this budget (0: no limit)
    tensorboard: bool = True  # log to <run>/tensorboard when the tensorboard package is installed (else off)
    log_images: int = 2       # validation clips shown in TensorBoard each epoch (last frame: output | truth)


@dataclass(frozen=True)
class Config:
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build a Config from a (possibly partial) dict; unknown keys are an error."""
        return apply_overrides(cls(), _flatten(d))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), self.to_json().encode())


SIZES: dict[str, dict] = {  # model.size -> the ModelCfg values it implies (bench infer: GFLOP and time)
    "default": {"model.fusion": 64, "model.hidden": 64, "model.layers": 2, "model.head_width": 16},
    "lite": {"model.fusion": 32, "model.hidden": 16, "model.layers": 1, "model.head_width": 8},
}

PRESETS: dict[str, dict] = {
    # Crops are on the model's input grid (DRV: 918x1374). Memory per preset: `batman bench memory`.
    # Sized by `batman bench memory` (docs/RESULTS.md) to about 60-65% of 21 / 8 / 6 GB in float32.
    "titan": {"data.crop": (768, 1024), "data.frames": 8, "train.batch": 2, "data.workers": 4},
    "1080ti": {"data.crop": (512, 768), "data.frames": 8, "train.batch": 2, "data.workers": 4,
               "model.checkpointing": True},
    "1080": {"data.crop": (448, 640), "data.frames": 8, "train.batch": 2, "data.workers": 4,
             "model.checkpointing": True},
    "cpu": {"data.crop": (128, 128), "data.frames": 8, "train.batch": 2, "train.steps_per_epoch": 100,
            "train.val_clips": 8},
    # The shipped weights' CPU-sized training (`make pretrain`, docs/MODEL_CARD.md): last.pt every 10 steps
    # so a killed run loses little; the Makefile's stages set the length (time, then epochs) and clip length.
    "pretrain": {"data.crop": (96, 96), "data.frames": 6, "train.batch": 2, "train.steps_per_epoch": 50,
                 "train.epochs": 1000, "train.val_clips": 8, "train.lr": 5e-4, "train.patience": 1000,
                 "train.save_every": 10, "data.clips_per_video": 2},
    # The demo trains its whole budget: 4 validation clips are too noisy to stop early on (patience 3
    # once ended the demo clstm after 7 of 12 epochs: 30.6 dB static, 25.0 moving; all 12: 31.6 and 26.9).
    "demo": {"data.crop": (64, 64), "data.frames": 6, "train.batch": 2, "train.steps_per_epoch": 40,
             "train.epochs": 12, "train.val_clips": 4, "train.lr": 1e-3, "data.clips_per_video": 8,
             "train.patience": 12},
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(value, current, key: str):
    """Match JSON/literal values to the field's type (lists -> tuples, ints -> floats)."""
    if isinstance(value, bool) and not isinstance(current, bool):  # True is an int to Python, not to a user
        raise BatmanError(f"config key {key}: expected {type(current).__name__}, got {value!r}")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, int):  # crop=256 means 256x256
                return (value, value)
            raise BatmanError(f"config key {key}: expected a tuple like {current!r}, got {value!r}")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise BatmanError(f"config key {key}: expected True or False, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(current)):
        raise BatmanError(f"config key {key}: expected {type(current).__name__}, got {value!r}")
    return value


def config_keys(cfg: Config | None = None) -> list[str]:
    """Every dotted key a config accepts: 'data.root', ..., 'seed'."""
    cfg = cfg or Config()
    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        keys += [f"{f.name}.{g.name}" for g in fields(value)] if dataclasses.is_dataclass(value) else [f.name]
    return keys


def _unknown_key(key: str, cfg: Config) -> BatmanError:
    """The one-line error for an unknown key, naming the nearest known one (a typo, or a missing section)."""
    keys = config_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    if not close:  # 'lr' or 'trian.lr': match the last part against the field names
        by_name = {k.rpartition(".")[2]: k for k in keys}
        names = difflib.get_close_matches(key.rpartition(".")[2], list(by_name), n=1, cutoff=0.8)
        close = [by_name[n] for n in names]
    return BatmanError(f"unknown config key: {key}" + (f" (did you mean {close[0]}?)" if close else ""))


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Return cfg with dotted keys ('model.hidden', 'seed') replaced; an unknown key is an error."""
    sections = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if "model.size" in overrides:  # the size's widths first, so that explicit ones win
        if not isinstance(overrides["model.size"], str) or overrides["model.size"] not in SIZES:
            raise BatmanError(f"config key model.size: expected one of {', '.join(SIZES)}, "
                              f"got {overrides['model.size']!r}")
        overrides = {**SIZES[overrides["model.size"]], **overrides}
    changes: dict[str, dict] = {}
    top: dict = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name:
            if section not in sections or dataclasses.is_dataclass(sections[section]):
                raise _unknown_key(key, cfg)
            top[section] = _coerce(value, sections[section], key)
            continue
        sub = sections.get(section)
        if sub is None or not dataclasses.is_dataclass(sub) or name not in {f.name for f in fields(sub)}:
            raise _unknown_key(key, cfg)
        changes.setdefault(section, {})[name] = _coerce(value, getattr(sub, name), key)
    for section, kv in changes.items():
        top[section] = replace(sections[section], **kv)
    return validate(replace(cfg, **top))


# --- validation: one check per field ---------------------------------------------------------
# A check returns None for a good value, else what a good value looks like. Sizes have upper
# bounds too: a typo such as model.hidden=64000 should be a message, not an hour of swapping.

Check = Callable[[object], "str | None"]


def _int(lo: int, hi: int) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"expected an integer from {lo} to {hi}"
    return check


def _odd(lo: int, hi: int) -> Check:
    def check(v):
        if _int(lo, hi)(v) or v % 2 == 0:
            return f"expected an odd integer from {lo} to {hi} (the padding keeps the size)"
    return check


def _block(hi: int) -> Check:
    def check(v):
        if _int(0, hi)(v) or (v and v & (v - 1)):
            return f"expected 0 or a power of two up to {hi} (it divides the padded frame)"
    return check


def _real(lo: float, hi: float = math.inf, above_lo: bool = False) -> Check:
    if hi < math.inf:
        bound = f"above {lo:g}, up to {hi:g}" if above_lo else f"from {lo:g} to {hi:g}"
    else:
        bound = f"above {lo:g}" if above_lo else f"of {lo:g} or more"

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not (v > lo if above_lo else v >= lo) or v > hi:
            return f"expected a finite number {bound}"
    return check


def _choice(*names: str) -> Check:
    def check(v):
        if v not in names or not isinstance(v, str):
            return f"expected one of {', '.join(names)}"
    return check


def _flag(v):
    if not isinstance(v, bool):
        return "expected True or False"


def _text(v):
    if not isinstance(v, str) or "\x00" in v:
        return "expected a string (a path without NUL bytes)"


def _tile(v):
    if (v != 0 or isinstance(v, bool)) and _int(64, 65536)(v):
        return "expected 0 (whole frames) or an integer from 64 to 65536 (smaller tiles are mostly padding)"


def _crop(v):
    ok = (isinstance(v, tuple) and len(v) == 2 and all(not _int(0, 16384)(n) for n in v)
          and (v[0] == 0) == (v[1] == 0))
    if not ok:
        return "expected (H, W) of two integers from 1 to 16384, or (0, 0) for whole frames"


CHECKS: dict[str, Check] = {
    "data.root": _text, "data.mode": _choice("raw", "rawrgb"), "data.bin": _int(1, 16), "data.crop": _crop,
    "data.frames": _int(1, 10_000), "data.clips_per_video": _int(1, 100_000), "data.augment": _flag,
    "data.short_frames": _int(0, 10_000), "data.short_share": _real(0, 1),
    "data.motion": _real(0, 1), "data.motion_speed": _int(0, 1024), "data.train_dynamic": _flag,
    "data.dynamic_repeat": _int(1, 1000), "data.val_dynamic": _int(0, 100_000),
    "data.extra_dynamic": _text, "data.extra_static": _text,
    "data.cache": _text,
    "data.workers": _int(0, 256), "data.max_gain": _real(0, 1e6, above_lo=True), "data.noise_map": _flag,
    "data.white_balance": _flag, "data.colour": _choice("srgb", "camera"), "data.exposure_level": _real(0, 1e3),
    "model.name": _choice("clstm", "conv3d", "unet"), "model.hidden": _int(1, 4096), "model.layers": _int(1, 32),
    "model.kernel": _odd(1, 15), "model.fusion": _int(1, 4096), "model.t_kernel": _int(1, 32),
    "model.norm": _choice("batch", "group", "frozen"), "model.head": _choice("recursive", "skip", "shuffle"),
    "model.head_width": _int(1, 1024), "model.scale": _int(1, 2), "model.mean_input": _flag,
    "model.encoder_weights": _text, "model.checkpointing": _flag, "model.align": _choice("none", "flow", "camera"),
    "model.align_margin": _real(0, 2), "model.align_to": _choice("frame", "filter"),
    "model.align_rating": _choice("bicubic", "warped"),
    "model.size": _choice("default", "lite"), "model.pipeline": _choice("learned", "fixed"),
    "model.encoder_mean": _flag, "model.gate_evidence": _flag,
    "model.denoiser": _int(0, 256), "model.state_reset": _flag, "model.residual_rule": _real(0, 1e3),
    "model.residual_cap": _real(0, 1e3),
    "model.residual_cap_block": _block(32), "model.residual_cap_mean": _flag, "model.output_smoothing": _real(0, 1e3),
    "model.smoothing_ramp": _flag, "model.single_frame": _flag,
    "model.single_frame_gate": _real(0, 1e3, above_lo=True), "model.single_frame_input": _choice("frame", "filter"),
    "model.noise_input": _flag,
    "train.lr": _real(0), "train.weight_decay": _real(0), "train.batch": _int(1, 4096),
    "train.epochs": _int(1, 1_000_000), "train.steps_per_epoch": _int(0, 10**9), "train.val_clips": _int(0, 10**9),
    "train.loss": _choice("l1", "l2", "psnr"), "train.temporal_weight": _real(0, 1e6),
    "train.filter_weight": _real(0, 1e6), "train.bptt": _int(0, 10_000),
    "train.patience": _int(1, 1_000_000), "train.amp": _choice("auto", "bf16", "fp16", "off"),
    "train.grad_clip": _real(0), "train.save_every": _int(0, 10**9), "train.keep": _int(1, 1000),
    "train.deterministic": _flag, "train.threads": _int(0, 1024), "train.max_minutes": _real(0, 1e7),
    "train.schedule": _choice("const", "cosine"), "train.warmup_steps": _int(0, 10**9), "train.tensorboard": _flag,
    "train.log_images": _int(0, 64),
    "seed": _int(0, 2**32 - 1),
}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(cfg: Config) -> Config:
    """Check every field against CHECKS (type and range); the first bad one is a one-line error."""
    for key, value in _flatten(cfg.to_dict()).items():
        problem = CHECKS[key](value)
        if problem:
            raise BatmanError(f"config key {key}: {problem}, got {_short(value)}")
    if cfg.data.short_share and not 0 < cfg.data.short_frames < cfg.data.frames:
        raise BatmanError(f"config key data.short_frames: data.short_share={cfg.data.short_share:g} needs a clip "
                          f"length from 1 to data.frames - 1 = {cfg.data.frames - 1}, got {cfg.data.short_frames}")
    return cfg


# Settings that change no weight: `release --set` may change them, and `train --init` may switch them.
RELEASE_KEYS = ("model.residual_rule", "model.residual_cap", "model.residual_cap_block", "model.residual_cap_mean",
                "model.align_to", "model.align_rating", "model.align_margin", "model.output_smoothing",
                "model.smoothing_ramp", "model.single_frame_gate", "model.single_frame_input",
                "data.exposure_level")

# Command-line options outside Config, checked the same way: (command, option) -> check.
OPTION_CHECKS: dict[tuple[str, str], Check] = {
    ("export", "fps"): _real(0, 1000, above_lo=True), ("export", "frames"): _int(0, 10**7),
    ("export", "tile"): _tile,
    ("export", "overlap"): _int(0, 4096), ("export", "workers"): _int(0, 64),
    ("evaluate", "frames"): _int(0, 10**7), ("prepare", "workers"): _int(0, 256),
    ("release", "blend_weight"): _real(0, 1, above_lo=True),
}


ENSEMBLES = (1, 2, 4, 8)  # views an Enhancer may average (infer.VIEWS)


def check_options(command: str, **values) -> None:
    """Check a command's numeric options (`--fps`, `--tile`, ...); a bad one is a one-line error."""
    for name, value in values.items():
        problem = OPTION_CHECKS[(command, name)](value)
        if problem:
            raise BatmanError(f"{command} --{name.replace('_', '-')}: {problem}, got {_short(value)}")
    if command == "export" and values.get("tile") and values["tile"] <= 2 * values.get("overlap", 0):
        raise BatmanError(f"export --tile {values['tile']} must be larger than twice --overlap {values['overlap']}")


def parse_set(items: list[str]) -> dict:
    """Parse ['model.hidden=96', "model.norm='batch'"] with ast.literal_eval (bare words as strings)."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise BatmanError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key.strip()] = text  # a bare word such as model.norm=batch
    return out


def read_config_file(path: str | Path) -> dict:
    """A config file as a (possibly partial, nested) dict: JSON, or YAML (.yaml/.yml) when PyYAML is installed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BatmanError(f"cannot read config file {path}: {e.strerror or e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise BatmanError(f"config file {path} is YAML, which needs PyYAML: pip install pyyaml "
                              f"(or pass the run's config.json)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BatmanError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BatmanError(f"config file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BatmanError(f"config file {path} must hold a mapping of sections (data, model, train), "
                          f"not {type(data).__name__}")
    return data


def make_config(preset: str = "", overrides: dict | None = None, file: str | Path | None = None) -> Config:
    """The default config, then a config file, then a preset, then explicit overrides."""
    cfg = Config()
    if file:
        try:
            cfg = apply_overrides(cfg, _flatten(read_config_file(file)))
        except BatmanError as e:
            message = str(e)
            raise BatmanError(message if str(file) in message else f"{file}: {message}") from None
    if preset:
        if preset not in PRESETS:
            raise BatmanError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg = apply_overrides(cfg, PRESETS[preset])
    return apply_overrides(cfg, overrides or {})
