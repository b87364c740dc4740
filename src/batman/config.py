"""Configuration: frozen dataclasses, named presets, `--set section.key=value` overrides, JSON.

Every knob of data, model and training lives here; nothing else hides a default.
The resolved config is saved next to every run and inside every checkpoint.
"""
from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from batman.files import atomic_write_bytes


class BatmanError(Exception):
    """A user-facing error: the CLI prints its one-line message without a traceback (exit code 2)."""


@dataclass(frozen=True)
class DataCfg:
    root: str = ""            # data set root (DRV layout); empty: must be given on the command line
    mode: str = "raw"         # raw: Bayer frames through rawpy; rawrgb: the authors' VBM4D PNGs
    bin: int = 2              # bin the packed raw 2x2 onto the ground-truth grid (DRV: 2)
    crop: tuple[int, int] = (256, 256)  # training crop (H, W) on the model's input grid
    frames: int = 8           # clip length T
    clips_per_video: int = 4  # random clips drawn from each training video per epoch
    augment: bool = True      # flips / transposes that keep the canonical RGGB order
    motion: float = 0.5       # share of static training clips that pan (each frame's crop shifted): DRV trains
                              # on static videos only, and a recurrent model that never saw motion averages
                              # over it (ghosting)
    motion_speed: int = 4     # largest pan, input-grid pixels per frame (rows and columns drawn separately)
    cache: str = ""           # prepared cache folder; empty: <root>/cache when it exists
    workers: int = 0          # DataLoader worker processes
    max_gain: float = 300.0   # gains are clipped to this (guards against broken EXIF)
    noise_map: bool = False   # append a noise-level channel (log gain / log max_gain): for one sensor the
                              # gain sets the noise of the gained signal (EMVD conditions on such a map)
    white_balance: bool = True  # multiply raw input by the file's as-shot white balance (spares the
                                # network guessing each scene's illuminant; DRV's ARWs carry it)

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
    size: str = "default"     # default (ResNet-18 encoder) | lite (real-time: model/lite.py); setting it also
                              # sets the widths in SIZES, except those given in the same overrides


@dataclass(frozen=True)
class TrainCfg:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch: int = 2
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training clips
    val_clips: int = 0        # 0: every validation video once
    loss: str = "l1"          # l1 | l2
    temporal_weight: float = 0.0  # weight of the temporal consistency term
    bptt: int = 0             # truncate back-propagation every N frames (0: whole clip)
    patience: int = 3         # early stop after N epochs without validation improvement
    amp: str = "auto"         # auto (bf16 on CUDA when supported, else fp16) | bf16 | fp16 | off
    grad_clip: float = 0.0    # max gradient norm (0: off)
    save_every: int = 0       # also write last.pt every N steps (0: once per epoch)
    keep: int = 3             # best epoch checkpoints kept
    deterministic: bool = False  # torch deterministic algorithms (slower; for exact resume tests)
    threads: int = 0          # torch CPU threads (0: torch's default)


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


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Return cfg with dotted keys ('model.hidden', 'seed') replaced; an unknown key is an error."""
    sections = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if "model.size" in overrides:  # the size's widths first, so that explicit ones win
        if overrides["model.size"] not in SIZES:
            raise BatmanError(f"unknown model.size {overrides['model.size']!r}; choose one of {', '.join(SIZES)}")
        overrides = {**SIZES[overrides["model.size"]], **overrides}
    changes: dict[str, dict] = {}
    top: dict = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name:
            if section not in sections or dataclasses.is_dataclass(sections[section]):
                raise BatmanError(f"unknown config key: {key}")
            top[section] = _coerce(value, sections[section], key)
            continue
        sub = sections.get(section)
        if sub is None or not dataclasses.is_dataclass(sub) or name not in {f.name for f in fields(sub)}:
            raise BatmanError(f"unknown config key: {key}")
        changes.setdefault(section, {})[name] = _coerce(value, getattr(sub, name), key)
    for section, kv in changes.items():
        top[section] = replace(sections[section], **kv)
    return replace(cfg, **top)


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


def make_config(preset: str = "", overrides: dict | None = None) -> Config:
    """The default config, then a preset, then explicit overrides."""
    cfg = Config()
    if preset:
        if preset not in PRESETS:
            raise BatmanError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg = apply_overrides(cfg, PRESETS[preset])
    return apply_overrides(cfg, overrides or {})
