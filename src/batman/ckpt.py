"""Checkpoints: atomic save, safe load (weights_only), naming, the best ones kept, compatibility checks.

A checkpoint is a plain dict of tensors and built-in values so that `torch.load(weights_only=True)`
reads it: model, optimiser, scaler and scheduler states, epoch, step, early-stop counters, RNG
states, the resolved config as JSON and the git commit of the code that wrote it.
"""
from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import torch

from batman.config import BatmanError, Config
from batman.files import atomic_write_bytes

LAST = "last.pt"
_EPOCH_RE = re.compile(r"^epoch_(\d+)_loss_(\d+(?:\.\d+)?)\.pt$")


def checkpoint_name(epoch: int, val_loss: float) -> str:
    return f"epoch_{epoch}_loss_{val_loss:.4f}.pt"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """torch.save into memory, then an atomic write: a kill mid-save never leaves a torn file."""
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
    except Exception as e:  # truncated zip, pickle with code, random bytes
        raise BatmanError(f"checkpoint {path} is corrupt or not a batman checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise BatmanError(f"checkpoint {path} is not a batman checkpoint (no model/config inside)")
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
    """Refuse to resume or fine-tune from a checkpoint of another architecture or input mode."""
    if saved.model != wanted.model or saved.data.mode != wanted.data.mode:
        raise BatmanError(f"checkpoint {path} holds a {describe_model(saved)} model, not the requested "
                          f"{describe_model(wanted)}; use another --out folder or matching --set values")


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


def epoch_checkpoints(folder: str | Path) -> list[tuple[float, int, Path]]:
    """(val_loss, epoch, path) of every epoch checkpoint in a folder, best first."""
    folder = Path(folder)
    found = []
    for p in folder.glob("epoch_*_loss_*.pt") if folder.is_dir() else []:
        m = _EPOCH_RE.match(p.name)
        if m:
            found.append((float(m.group(2)), int(m.group(1)), p))
    return sorted(found)


def best_checkpoint(folder: str | Path = "trained_model") -> Path:
    """The epoch checkpoint with the lowest validation loss; a clear error when there is none."""
    found = epoch_checkpoints(folder)
    if not found:
        raise BatmanError(f"no checkpoint in {folder}/: train one first (`make demo` for a small one, or "
                          f"`make dataset_path=DIR train_cpu`), or pass model=PATH / --model PATH")
    return found[0][2]


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Keep the `keep` best epoch checkpoints (by validation loss), delete the others."""
    for _, _, path in epoch_checkpoints(folder)[max(keep, 1):]:
        path.unlink(missing_ok=True)


def load_model(path: str | Path | None, device: str | torch.device = "cpu", folder: str | Path = "trained_model"):
    """Build the model a checkpoint describes and load its weights: (model in eval mode, config)."""
    from batman.model.net import model_for

    path = Path(path) if path else best_checkpoint(folder)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    model = model_for(cfg)
    load_state_strict(model, ckpt["model"], path)
    return model.to(device).eval(), cfg
