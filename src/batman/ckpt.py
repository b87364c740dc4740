"""Checkpoints: atomic save, safe load (weights_only), naming, the best ones kept, compatibility checks,
run folders and the default model.

A checkpoint is a plain dict of tensors and built-in values so that `torch.load(weights_only=True)`
reads it: model, optimiser, scaler and scheduler states, epoch, step, early-stop counters, RNG
states, the resolved config as JSON and the git commit of the code that wrote it.

Every training run has a folder of its own, `runs/<preset>-<model>-<YYYYmmdd-HHMMSS>/` by default:
its `config.json`, `last.pt`, best epoch checkpoints and logs. Nothing compares checkpoints across
runs: the best checkpoint is always the best of one run.
"""
from __future__ import annotations

import io
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

from batman.config import RELEASE_KEYS, BatmanError, Config, apply_overrides
from batman.files import atomic_write_bytes
from batman.model.denoiser import widened_state

LAST = "last.pt"
SHIPPED = Path(__file__).resolve().parents[2] / "trained_model" / "batman_default.safetensors"
WEIGHTS_FORMAT = "batman-weights-1"
RUNS = Path("runs")  # where `batman train` puts run folders unless given --out
_EPOCH_RE = re.compile(r"^epoch_(\d+)_loss_(-?\d+(?:\.\d+)?)\.pt$")  # negative: train.loss=psnr


def checkpoint_name(epoch: int, val_loss: float) -> str:
    return f"epoch_{epoch}_loss_{val_loss:.4f}.pt"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def non_finite(state: dict) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """torch.save into memory, then an atomic write: a kill mid-save never leaves a torn file.
    Non-finite weights are never saved: resuming or exporting them only spreads the NaN."""
    bad = non_finite(payload.get("model", {}))
    if bad:
        raise BatmanError(f"refusing to save {path}: the weights are not finite ({bad})")
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Load safely (weights_only=True). A missing, truncated or foreign file is a BatmanError."""
    path = Path(path)
    if not path.is_file():
        raise BatmanError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, random bytes, an empty file (no message)
        reason = (str(e).strip().splitlines() or ["no message"])[0][:120]
        raise BatmanError(f"checkpoint {path} is corrupt or not a batman checkpoint "
                          f"({type(e).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "config" not in ckpt:
        raise BatmanError(f"checkpoint {path} is not a batman checkpoint (no model/config inside)")
    bad = non_finite(ckpt["model"])
    if bad:
        raise BatmanError(f"checkpoint {path} holds non-finite weights ({bad}): training had diverged; "
                          f"use an earlier checkpoint")
    return ckpt


def checkpoint_config(ckpt: dict, path: str | Path = "checkpoint") -> Config:
    """The config a checkpoint was trained with; one written by an incompatible version is named."""
    try:
        return Config.from_json(ckpt["config"])
    except (BatmanError, ValueError) as e:
        raise BatmanError(f"{path} was written by an incompatible batman version ({e})") from None


def describe_model(cfg: Config) -> str:
    m = cfg.model
    return (f"{m.name} (size={m.size}, mode={cfg.data.mode}, hidden={m.hidden}, layers={m.layers}, norm={m.norm}, "
            f"head={m.head}, scale={m.scale})")


def check_same_model(path: Path, saved: Config, wanted: Config) -> None:
    """Refuse to resume or fine-tune from a checkpoint of another architecture or input mode.
    The ImageNet file (model.encoder_weights) only initialises a model, so it may differ or be gone."""
    if without_init(saved).model != without_init(wanted).model or saved.data.mode != wanted.data.mode:
        raise BatmanError(f"checkpoint {path} holds a {describe_model(saved)} model, not the requested "
                          f"{describe_model(wanted)}; use another --out folder or matching --set values")


def without_init(cfg: Config) -> Config:
    """The config with no ImageNet file: what builds a model whose weights come from a checkpoint
    (the file matters only at initialisation and may have moved since)."""
    return replace(cfg, model=replace(cfg.model, encoder_weights=""))


def load_state_strict(model: torch.nn.Module, state: dict, path: Path) -> None:
    """load_state_dict with a one-line message on a shape or key mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or wrong:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
                  else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, model has {tuple(own[wrong[0]].shape)}")
        raise BatmanError(f"checkpoint {path} does not fit this model: {detail}")
    model.load_state_dict(state)


def wider_denoisers(own: dict, state: dict) -> dict:
    """The weights of every denoiser that `own` has wider than `state` (model.denoiser raised), placed by
    denoiser.widened_state; {} when none is."""
    wider = {}
    for key in own:
        prefix = key[:-len("enter.weight")]
        if key.endswith("denoiser.enter.weight") and key in state and state[key].shape != own[key].shape:
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            initial = {k[len(prefix):]: v for k, v in own.items() if k.startswith(prefix)}
            wider.update({prefix + k: v for k, v in widened_state(part, initial).items()})
    return wider


def load_state_widened(model: torch.nn.Module, state: dict, path: Path) -> str:
    """Load weights of a closely related architecture (train --init after a change of model.encoder_mean,
    model.gate_evidence, model.denoiser or model.pipeline): equal tensors are copied, a convolution that
    gained input channels keeps its old filters with zeros for the new channels (so the network computes
    what it did), a wider denoiser keeps its old channels (denoiser.widened_state), tensors only one side
    has are dropped or left initial. Returns a line saying what was adapted."""
    own, new = model.state_dict(), {}
    widened, grown, fresh = [], [], []
    wider = wider_denoisers(own, state)
    for key, value in own.items():
        old = state.get(key)
        if key in wider:
            new[key] = wider[key]
            if old.shape != value.shape:
                grown.append(key)
        elif old is None:
            new[key] = value
            fresh.append(key)
        elif old.shape == value.shape:
            new[key] = old
        elif old.dim() == 4 and old.shape[0] == value.shape[0] and old.shape[2:] == value.shape[2:] \
                and old.shape[1] < value.shape[1]:
            new[key] = torch.zeros_like(value)
            new[key][:, :old.shape[1]] = old
            widened.append(key)
        else:
            raise BatmanError(f"checkpoint {path} does not fit this model: shape of {key} is "
                              f"{tuple(old.shape)}, model has {tuple(value.shape)}")
    dropped = [k for k in state if k not in own]
    model.load_state_dict(new)
    grown_line = f"grown, old channels kept: {grown}, " if grown else ""
    return (f"{len(own) - len(fresh) - len(widened) - len(grown)} tensors copied, widened with zeros: "
            f"{widened or 'none'}, {grown_line}left initial: {fresh or 'none'}, dropped: {dropped or 'none'}")


def epoch_checkpoints(folder: str | Path) -> list[tuple[float, int, Path]]:
    """(val_loss, epoch, path) of every epoch checkpoint in a folder, best first."""
    folder = Path(folder)
    found = []
    for p in folder.glob("epoch_*_loss_*.pt") if folder.is_dir() else []:
        m = _EPOCH_RE.match(p.name)
        if m:
            found.append((float(m.group(2)), int(m.group(1)), p))
    return sorted(found)


def best_checkpoint(folder: str | Path) -> Path:
    """The epoch checkpoint with the lowest validation loss in one run folder; a clear error when there is none."""
    found = epoch_checkpoints(folder)
    if not found:
        raise BatmanError(f"no checkpoint in {folder}/: train one first (`make demo` for a small one, or "
                          f"`make dataset_path=DIR train_cpu`), or pass model=PATH / --model PATH")
    return found[0][2]


def holds_run(folder: str | Path) -> bool:
    """Whether a folder already holds a training run's checkpoints."""
    folder = Path(folder)
    return (folder / LAST).exists() or bool(epoch_checkpoints(folder))


# --- run folders ----------------------------------------------------------------------------

def new_run_folder(label: str, runs: str | Path = RUNS) -> Path:
    """Make and return runs/<label>-<YYYYmmdd-HHMMSS> (-2, -3, ... when another run took that second)."""
    runs = Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = runs / (f"{label}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise BatmanError(f"cannot make a new run folder {runs / label}-{stamp}: 999 already exist")


def _last_written(folder: Path) -> float:
    """When a run last wrote its config or a checkpoint (a resumed old run counts as recent)."""
    files = [folder / "config.json", *folder.glob("*.pt")]
    return max((p.stat().st_mtime for p in files if p.is_file()), default=0.0)


def run_folders(runs: str | Path = RUNS) -> list[Path]:
    """The run folders under `runs` (those with a config.json), the most recently written first."""
    runs = Path(runs)
    found = [p for p in runs.iterdir() if (p / "config.json").is_file()] if runs.is_dir() else []
    return sorted(found, key=lambda p: (_last_written(p), p.name), reverse=True)


def find_run(cfg: Config, runs: str | Path = RUNS) -> Path | None:
    """The newest run folder whose saved config equals `cfg` (same preset, model and overrides), or None."""
    for folder in run_folders(runs):
        try:
            saved = Config.from_json((folder / "config.json").read_text())
        except (OSError, ValueError, BatmanError):  # unreadable, or written by an incompatible version
            continue
        if same_run_config(saved, cfg):
            return folder
    return None


def same_run_config(saved: Config, cfg: Config) -> bool:
    """Equal configs, except that the level train measures itself (data.exposure_level) when the command
    line left it at 0 is not a difference."""
    if cfg.data.exposure_level == 0:
        saved = replace(saved, data=replace(saved.data, exposure_level=0.0))
    return saved == cfg


def run_best(folder: Path) -> tuple[Path, str] | None:
    """The best epoch checkpoint of a run folder and an unclosed line saying which, or None when it has none."""
    found = epoch_checkpoints(folder)
    if not found:
        return None
    loss, epoch, path = found[0]
    return path, f"model: {path} (best checkpoint of run {folder.name}: epoch {epoch}, validation loss {loss:.4f}"


def find_default_model(runs: str | Path = RUNS) -> tuple[Path, str]:
    """The checkpoint that evaluate and export use without --model, and a line saying which and why:
    the best epoch checkpoint of the newest run folder that has one (a user who trained expects their own
    model), else the shipped default weights in trained_model/."""
    runs = Path(runs)
    folders = run_folders(runs)
    for i, folder in enumerate(folders):
        best = run_best(folder)
        if best:
            which = (f"the newest of {len(folders)} runs in {runs}/" if not i else
                     f"the newest with a checkpoint of {len(folders)} runs in {runs}/, {i} newer without one yet")
            return best[0], f"{best[1]}; {which}; --model PATH picks another)"
    if SHIPPED.is_file():
        return SHIPPED, (f"model: {SHIPPED} (the shipped default weights, see docs/MODEL_CARD.md; no run in "
                         f"{runs}/ has a checkpoint; --model PATH picks another)")
    raise BatmanError(f"no checkpoint in {runs}/ and no shipped weights at {SHIPPED}: train one first (`make demo` "
                      f"for a small one, `make pretrain` reproduces the shipped ones), or pass --model PATH")


def resolve_model(path: str | Path | None) -> Path:
    """`path` (a run folder: its best epoch checkpoint), or without one the default model (find_default_model),
    printing which was chosen."""
    if path and Path(path).is_dir():
        best = run_best(Path(path))
        if best is None:
            raise BatmanError(f"no epoch checkpoint in run folder {path}/: pass a checkpoint file, or train first")
        print(best[1] + ")", flush=True)
        return best[0]
    if path:
        return Path(path)
    path, description = find_default_model()
    print(description, flush=True)
    return path


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Keep the `keep` best epoch checkpoints (by validation loss), delete the others."""
    for _, _, path in epoch_checkpoints(folder)[max(keep, 1):]:
        path.unlink(missing_ok=True)


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """cpu, cuda or cuda:N (None or 'auto': CUDA when available, else the CPU); a device this machine
    does not have is a BatmanError."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise BatmanError(f"unknown device {str(name)!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BatmanError(f"device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                              f"use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BatmanError(f"device {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                              f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return device


def read_weights(path: Path) -> tuple[dict, Config]:
    """(model state dict, config) of a checkpoint (.pt) or of released weights (.safetensors)."""
    if path.suffix == ".safetensors":
        return load_weights(path)
    ckpt = load_checkpoint(path)
    return ckpt["model"], checkpoint_config(ckpt, path)


def load_model(path: str | Path | None, device: str | torch.device = "cpu"):
    """Build the model a checkpoint (.pt) or released weights (.safetensors) describe (None: the default
    model) and load its weights: (model in eval mode, config)."""
    from batman.model.net import model_for

    path = resolve_model(path)
    state, cfg = read_weights(path)
    model = model_for(without_init(cfg))
    load_state_strict(model, state, path)
    return model.to(device).eval(), cfg


# --- released weights: float16 safetensors + the config, verified by sha256 --------------------

def sha256_of(path: Path) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def release_weights(checkpoint: str | Path, out: str | Path, card: dict | None = None,
                    overrides: dict | None = None, blend: tuple[Path, float] | None = None,
                    single_frame: Path | None = None, int8: bool = False) -> Path:
    """Write a checkpoint's weights as float16 safetensors (the config inside as metadata) and a JSON
    sidecar with the config, the file's sha256 and `card` (training facts); both atomic. `overrides`
    ({'model.residual_rule': 0.06}) change settings that need no training (RELEASE_KEYS only: any other would
    describe weights that were not trained so); the sidecar lists them. `blend` (OTHER, w): release
    (1 - w) x these weights + w x OTHER's (`blended_state`). `single_frame`: released U-Net weights that join
    as the model's single-frame path (`with_single_frame`). `int8`: the large weight tensors stored as int8 with a
    scale per output channel (`int8_state`), about half the size."""
    import json

    from safetensors.torch import save

    from batman.files import atomic_write_text
    from batman.model.net import model_for
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = load_checkpoint(checkpoint)
    overrides = overrides or {}
    refused = [key for key in overrides if key not in RELEASE_KEYS]
    if refused:
        raise BatmanError(f"release --set {refused[0]}: only settings that need no training can change at release "
                          f"({', '.join(RELEASE_KEYS)}); train or fine-tune for the others")
    cfg = apply_overrides(checkpoint_config(ckpt, checkpoint), overrides)
    weights = blended_state(ckpt["model"], cfg, checkpoint, *blend) if blend else ckpt["model"]
    if single_frame is not None:
        weights, cfg = with_single_frame(weights, cfg, checkpoint, Path(single_frame))
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    bad = non_finite(state)
    if bad:
        raise BatmanError(f"{checkpoint} holds non-finite weights (or beyond float16: {bad}): not released")
    if int8:
        state = int8_state(state)
    model = model_for(without_init(cfg)).eval()  # the weights as load_weights returns them; not read back
    load_state_strict(model, stored_state(state), checkpoint)
    atomic_write_bytes(out, save(state, metadata={"format": WEIGHTS_FORMAT, "config": cfg.to_json()}))
    sidecar = {"weights": out.name, "sha256": sha256_of(out), "format": WEIGHTS_FORMAT, "source": str(checkpoint),
               "epoch": ckpt.get("epoch"), "step": ckpt.get("step"), "commit": ckpt.get("commit"),
               "reference_output": reference_output(model), "config": cfg.to_dict(),
               **({"release_overrides": overrides} if overrides else {}),
               **({"blend": {"with": str(blend[0]), "weight": blend[1]}} if blend else {}),
               **({"single_frame": str(single_frame)} if single_frame is not None else {}), **(card or {})}
    atomic_write_text(out.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return out


def blended_state(state: dict, cfg: Config, path: Path, other: Path, weight: float) -> dict:
    """(1 - weight) x `state` + weight x `other`'s weights (a checkpoint or released weights of the same
    architecture; release settings may differ). Why: two fine-tunes from one start can be averaged, and the
    average keeps much of what each gained where they differ (stage 16 and stage 20: docs/RESULTS.md,
    fourteenth session). Integer tensors are `state`'s."""
    theirs, their_cfg = read_weights(Path(other))
    if weights_architecture(their_cfg) != weights_architecture(cfg):
        raise BatmanError(f"release --blend {other} holds a {describe_model(their_cfg)} model with other trained "
                          f"settings than {path}: only weights of one architecture can be averaged")
    odd = sorted(set(state) ^ set(theirs)) or [k for k in state if state[k].shape != theirs[k].shape]
    if odd:
        raise BatmanError(f"release --blend {other} does not fit {path}: {odd[0]} differs")
    return {k: torch.lerp(v.float(), theirs[k].float(), weight) if v.is_floating_point() else v
            for k, v in state.items()}


INT8_SCALE = ".int8_scale"  # suffix of the key holding an int8 tensor's scales
INT8_LEAST = 4096  # tensors with fewer values stay float16: biases, norms and small convs are a few kB in all


def per_slice(scale: torch.Tensor, dims: int) -> torch.Tensor:
    """Scales (N,) viewed to multiply a tensor of `dims` dimensions slice by slice along dim 0."""
    return scale.float().view((-1,) + (1,) * (dims - 1))


def int8_state(state: dict) -> dict:
    """Float16 `state` with every weight tensor of INT8_LEAST values or more as int8, symmetric, one float16
    scale per slice along dim 0 (an output channel of a conv; an input one of a transposed conv) under
    key + INT8_SCALE. Why: the recurrent model and its single-frame U-Net in float16 are 40 MB, over the 30 MB
    a shipped file may take; int8 storage halves them (docs/RESULTS.md, twentieth session: the change in PSNR)."""
    out = {}
    for key, value in state.items():
        if not value.is_floating_point() or value.dim() < 2 or value.numel() < INT8_LEAST:
            out[key] = value
            continue
        peak = value.float().abs().flatten(1).amax(1).clamp(min=1e-12)
        scale = (peak / 127).half()
        out[key] = torch.round(value.float() / per_slice(scale, value.dim())).clamp(-127, 127).to(torch.int8)
        out[key + INT8_SCALE] = scale
    return out


def stored_state(state: dict) -> dict:
    """A released state as the model loads it: float16 -> float32, int8 tensors times their scales."""
    out = {}
    for key, value in state.items():
        if key.endswith(INT8_SCALE):
            continue
        scale = state.get(key + INT8_SCALE)
        if scale is not None:
            value = value.float() * per_slice(scale, value.dim())
        out[key] = value.float() if value.is_floating_point() else value
    return out


def with_single_frame(state: dict, cfg: Config, path: Path, unet: Path) -> tuple[dict, Config]:
    """`state` with the U-Net weights in `unet` as its single-frame path (model.single_frame, RecursiveHead.
    take_single_frame), and `cfg` with it on. Why at release: the two are trained apart (the U-Net on single
    frames) and need no training together; the gate that mixes them is a release setting."""
    if cfg.model.single_frame:
        raise BatmanError(f"release --single-frame: {path} holds a single-frame U-Net already")
    theirs, their_cfg = read_weights(unet)
    if their_cfg.model.name != "unet" or (their_cfg.data.mode, their_cfg.data.in_channels, their_cfg.model.scale) != (
            cfg.data.mode, cfg.data.in_channels, cfg.model.scale):
        raise BatmanError(f"release --single-frame {unet} holds a {describe_model(their_cfg)} model: it needs a "
                          f"U-Net (model.name=unet) on {path}'s input ({cfg.data.mode}, scale {cfg.model.scale})")
    single = {"single." + key.removeprefix("unet."): value for key, value in theirs.items()}
    return {**state, **single}, replace(cfg, model=replace(cfg.model, single_frame=True))


def architecture(cfg: Config) -> tuple:
    """What decides whether weights fit: the model config less its training-only knobs, and the input."""
    return replace(cfg.model, checkpointing=False, encoder_weights=""), cfg.data.mode, cfg.data.in_channels


def weights_architecture(cfg: Config) -> tuple:
    """What must agree for two models' weights to be averaged: `architecture` less the release settings."""
    model, *data = architecture(cfg)
    return replace(model, **{key.split(".", 1)[1]: None for key in RELEASE_KEYS if key.startswith("model.")}), *data


def reference_output(model: torch.nn.Module) -> list[float]:
    """The model's output on a fixed small clip: 32 values spread over the last frame plus its mean, kept beside
    released weights so that a silent change of the architecture or the weights shows (tests/test_shipped.py).
    The clip is a still scene (uniform noise of seed 0 x 0.3, (1, 1, C, 48, 64)) under Gaussian noise of 0.02 per
    frame (4 frames): the gate stays low, so what acts only on still scenes (the filter's average, the output's
    smoothing, the single-frame path's input) shapes the output too; on fresh noise every frame it opened fully."""
    g = torch.Generator().manual_seed(0)
    scene = torch.rand((1, 1, model.in_channels, 48, 64), generator=g) * 0.3
    x = (scene + 0.02 * torch.randn((1, 4, model.in_channels, 48, 64), generator=g)).clamp(min=0)
    with torch.no_grad():
        y = model(x)[0][0, -1].float()
    picks = y.flatten()[torch.linspace(0, y.numel() - 1, 32).long()]
    return [round(v, 6) for v in picks.tolist()] + [round(float(y.mean()), 6)]


def load_weights(path: Path) -> tuple[dict, Config]:
    """Released weights (float16 -> float32, int8 times their scales: `stored_state`) and their config; checked
    against the sidecar's sha256."""
    import json

    from safetensors import SafetensorError, safe_open

    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            expected = json.loads(sidecar.read_text()).get("sha256")
        except ValueError as e:
            raise BatmanError(f"cannot read {sidecar} ({e})") from None
        if expected and sha256_of(path) != expected:
            raise BatmanError(f"{path} does not match the sha256 in {sidecar}: the file is damaged or was replaced")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise BatmanError(f"{path} is not a readable safetensors file ({e})") from None
    if meta.get("format") != WEIGHTS_FORMAT or "config" not in meta:
        raise BatmanError(f"{path} holds no batman config: not released by batman")
    try:
        cfg = Config.from_json(meta["config"])
    except (BatmanError, ValueError) as e:
        raise BatmanError(f"{path} was written by an incompatible batman version ({e})") from None
    try:
        return stored_state(state), cfg
    except RuntimeError as e:
        raise BatmanError(f"{path}: its int8 scales do not fit their tensors ({e})") from None
