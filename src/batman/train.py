"""The training loop: AdamW, L1/L2 (+ temporal term), truncated BPTT, AMP, early stop, resume, DDP.

Reads as a story: set up (distributed, seed, data, model, optimiser), maybe resume (or, to fine-tune,
start from another run's weights with a fresh optimiser at epoch 0), then epochs of steps, a
validation, checkpoints and a log line each. Only rank 0 writes anything.
Determinism: the data order of every epoch is a function of (seed, epoch), so a resumed run sees
exactly the batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from batman import ckpt as ckpts
from batman.config import BatmanError, Config, apply_overrides
from batman.files import atomic_path, ensure_dir, remove_stale_temps
from batman.model.net import detach_state, model_for
from batman.report import pyplot, save_figure


# --- set-up ---------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device: torch.device) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(d: Dist, device: torch.device) -> torch.device:
    """The device this rank trains on: under torchrun, `cuda` means cuda:LOCAL_RANK."""
    if device.type != "cuda":
        return device
    if d.enabled:
        if device.index is not None:
            raise BatmanError(f"--device {device} with torchrun: each rank takes cuda:LOCAL_RANK; pass --device cuda")
        device = torch.device("cuda", d.local_rank)
    torch.cuda.set_device(device.index or 0)
    return torch.device("cuda", device.index or 0)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler); bf16 needs no scaler. On the CPU only an explicit bf16: a
    CPU with native bf16 (AVX512-BF16, AMX) trains 1.7-1.9x faster with it (scripts/bench_cpu_amp.py), one
    without emulates it slowly, so `auto` stays float32 there; fp16 autocast is a CUDA feature."""
    if device.type != "cuda":
        if mode == "fp16":
            raise BatmanError("train.amp=fp16 needs a CUDA device: on the CPU use train.amp=bf16 or off")
        return (torch.bfloat16, False) if mode == "bf16" else (None, False)
    if mode == "off":
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode not in ("bf16", "fp16"):
        raise BatmanError(f"train.amp must be auto, bf16, fp16 or off, not {mode!r}")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


class EpochSampler(Sampler):
    """`num` indices per epoch drawn from a generator seeded by (seed, epoch), sharded over ranks.

    Permutations are concatenated when `num` exceeds the data set, so every clip is seen equally
    often; `skip` drops the first batches after a mid-epoch resume.
    """

    def __init__(self, n: int, num: int, seed: int, d: Dist):
        self.n, self.num, self.seed, self.d = n, num, seed, d
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        reps = math.ceil(self.num * self.d.world / self.n)
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])
        return order[: self.num * self.d.world][self.d.rank:: self.d.world].tolist()

    def __iter__(self):
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return self.num - self.skip


def build_data(cfg: Config, d: Dist):
    from batman.data.cache import open_cache
    from batman.data.dataset import ClipDataset, worker_init_fn
    from batman.data.drv import SPLITS, load_split

    root = cfg.data.root
    if not root:
        raise BatmanError("no data set: pass --root DIR (a DRV-layout folder, e.g. from `batman synth`)")
    cache = open_cache(root, cfg.data.cache or None)

    def split(name: str) -> list:
        return load_split(root, name, cfg.data.mode, cache=cache)

    def dataset(videos: list, train: bool) -> ClipDataset:
        return ClipDataset(videos, cfg.data, scale=cfg.model.scale, train=train, seed=cfg.seed, cache=cache)

    moving = split("dynamic") if cfg.data.train_dynamic or cfg.data.val_dynamic else []
    if cfg.data.val_dynamic > len(moving):
        raise BatmanError(f"data.val_dynamic={cfg.data.val_dynamic}: {root} has {len(moving)} dynamic videos")
    held = len(moving) - cfg.data.val_dynamic
    extra = [v for root in data_roots(cfg.data.extra_dynamic) for v in load_split(root, "dynamic", cfg.data.mode)]
    extra_still = [v for root in data_roots(cfg.data.extra_static) for name in SPLITS
                   for v in load_split(root, name, cfg.data.mode)]
    train_moving = ((moving[:held] if cfg.data.train_dynamic else []) + extra) * cfg.data.dynamic_repeat
    still_val = split("val")
    train_set = dataset(split("train") + extra_still + train_moving, True)
    val_set = dataset(still_val + moving[held:], False)
    per_rank = cfg.train.batch * (cfg.train.steps_per_epoch or math.ceil(len(train_set) / (cfg.train.batch * d.world)))
    sampler = EpochSampler(len(train_set), per_rank, cfg.seed, d)
    loader_args = dict(num_workers=cfg.data.workers, worker_init_fn=worker_init_fn,
                       persistent_workers=False, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, batch_size=cfg.train.batch, sampler=sampler, drop_last=True, **loader_args)
    n_still = min(len(still_val), cfg.train.val_clips or len(still_val))
    val_idx = (list(range(n_still)) + list(range(len(still_val), len(val_set))))[d.rank:: d.world]
    val_loader = DataLoader(torch.utils.data.Subset(val_set, val_idx), batch_size=1, shuffle=False, **loader_args)
    return train_set, train_loader, sampler, val_loader


def data_roots(names: str) -> list[str]:
    """data.extra_static / extra_dynamic: a comma list of data set folders ('' for none)."""
    return [name.strip() for name in names.split(",") if name.strip()]


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of train.lr for optimiser step `step` (0-based): a linear warm-up over `warmup_steps`,
    then constant (const) or half a cosine that reaches 0 at `total_steps` (cosine)."""
    if schedule not in ("const", "cosine"):
        raise BatmanError(f"train.schedule must be const or cosine, not {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "const":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# --- loss -----------------------------------------------------------------------------------

PSNR_FLOOR_MSE = 1e-6  # train.loss=psnr: 60 dB, where a frame's loss stops pulling


def frame_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T): each frame's mean squared error."""
    return (out - target).pow(2).flatten(2).mean(-1)


def reconstruction_loss(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """l1, l2, or psnr: minus the mean over clips and frames of each frame's PSNR, the figure evaluate averages.
    Why psnr: L1 and L2 weigh an error by its size, so a bright, nearly clean frame at 40 dB moves the weights
    little, while in the average PSNR one dB counts the same on every frame (a frame's gradient is scaled by
    1 / its MSE)."""
    if kind == "l1":
        return F.l1_loss(out, target)
    if kind == "l2":
        return F.mse_loss(out, target)
    if kind == "psnr":
        return 10 * torch.log10(frame_mse(out, target) + PSNR_FLOOR_MSE).mean()
    raise BatmanError(f"train.loss must be l1, l2 or psnr, not {kind!r}")


def temporal_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between consecutive-frame differences of output and target (B,T,C,H,W): flicker costs."""
    if out.shape[1] < 2:
        return out.new_zeros(())
    return F.l1_loss(out[:, 1:] - out[:, :-1], target[:, 1:] - target[:, :-1])


def check_filter_loss(cfg: Config) -> None:
    """train.filter_weight supervises the recursive head's filter state: refuse it for models without one."""
    if cfg.train.filter_weight and (cfg.model.name == "unet" or cfg.model.head != "recursive"):
        which = "model.name=unet" if cfg.model.name == "unet" else f"model.head={cfg.model.head}"
        raise BatmanError(f"train.filter_weight needs the recursive head's filter: {which} has none "
                          "(set train.filter_weight=0)")


def clip_loss(out, target, cfg: Config) -> torch.Tensor:
    loss = reconstruction_loss(out.float(), target, cfg.train.loss)
    if cfg.train.temporal_weight:
        loss = loss + cfg.train.temporal_weight * temporal_loss(out.float(), target)
    return loss


# --- the loop -------------------------------------------------------------------------------

@dataclass
class Progress:
    """Everything besides tensors that a resumed run must continue from."""
    epoch: int = 0          # epochs completed
    step: int = 0           # optimiser steps completed
    step_in_epoch: int = 0  # batches of the current (unfinished) epoch already trained
    best: float = float("inf")
    bad_epochs: int = 0
    history: list = field(default_factory=list)


def shorter_clips(batch: dict, cfg: Config, step: int) -> dict:
    """data.short_share of the steps train on each clip's first data.short_frames frames only. The choice comes
    from (seed, step), so a resumed run and every rank of a distributed one make the same."""
    short = cfg.data.short_share and np.random.default_rng((cfg.seed, step)).random() < cfg.data.short_share
    if not short:
        return batch
    n = cfg.data.short_frames
    return {**batch, "input": batch["input"][:, :n], "target": batch["target"][:, :n]}


def train_step(model, batch, opt, scaler, cfg: Config, device, amp_dtype) -> float:
    """One batch with truncated BPTT: an optimiser step every `bptt` frames, state carried detached."""
    x = batch["input"].to(device, non_blocking=True)
    y = batch["target"].to(device, non_blocking=True)
    T = x.shape[1]
    chunk = cfg.train.bptt or T
    state, total = None, 0.0
    for t0 in range(0, T, chunk):
        xs, ys = x[:, t0:t0 + chunk], y[:, t0:t0 + chunk]
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            if cfg.train.filter_weight:
                out, state, base = model(xs, state, with_base=True)
            else:
                out, state = model(xs, state)
        loss = clip_loss(out, ys, cfg)
        if cfg.train.filter_weight:
            loss = loss + cfg.train.filter_weight * reconstruction_loss(base.float(), ys, cfg.train.loss)
        if not torch.isfinite(loss):
            return float(loss.item())
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        state = detach_state(state)
        total += loss.item() * xs.shape[1]
    return total / T


@torch.no_grad()
def validate(model, loader, cfg: Config, device, amp_dtype, d: Dist,
             keep_images: int = 0) -> tuple[float, float, list[torch.Tensor]]:
    """Mean loss (train.loss's measure on the clamped output: L1, MSE, or minus the PSNR) and PSNR over the
    validation clips, reduced over ranks, and the last frame of this rank's first `keep_images` clips as
    output | truth side by side, (3, H, 2W) on the CPU. The loss picks the best epoch, so it is the measure
    the run trains on.

    Runs the unwrapped network: DDP's forward broadcasts buffers (the tone curve's knots, BatchNorm
    statistics), a collective that hangs when ranks hold different numbers of validation clips."""
    model.eval()
    net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    sums = torch.zeros(3, dtype=torch.float64)
    images = []
    for batch in loader:
        x, y = batch["input"].to(device), batch["target"].to(device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            out, _ = net(x, None)
        out = out.float().clamp(0, 1)
        mse = F.mse_loss(out, y).item()
        loss = reconstruction_loss(out, y, cfg.train.loss).item()
        sums += torch.tensor([loss, -10 * math.log10(max(mse, 1e-10)), 1.0], dtype=torch.float64)
        if len(images) < keep_images:
            images.append(torch.cat([out[0, -1], y[0, -1]], dim=-1).cpu())
    if d.enabled:
        dist.all_reduce(sums)
    model.train()
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, sums[1].item() / n, images


def tensorboard_writer(out: Path, cfg: Config, purge_step: int | None):
    """A SummaryWriter into OUT/tensorboard, or None when train.tensorboard is off or the optional
    tensorboard package is missing (the CSV and loss.png are written either way).

    `purge_step` (a resumed run's step) hides what a killed run had logged after its last checkpoint."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("note: TensorBoard logging off (pip install tensorboard to have it)")
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge_step)


def training_state(model, opt, scaler, sched, cfg: Config, prog: Progress) -> dict:
    net = model.module if hasattr(model, "module") else model
    return {
        "model": net.state_dict(), "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler else {}, "scheduler": sched.state_dict(),
        "epoch": prog.epoch, "step": prog.step, "step_in_epoch": prog.step_in_epoch,
        "best": prog.best, "bad_epochs": prog.bad_epochs, "history": prog.history,
        "rng_torch": torch.get_rng_state(), "config": cfg.to_json(), "commit": ckpts.git_commit(),
    }


def choose_run_folder(cfg: Config, d: Dist, out: str | Path | None = None, name: str | None = None,
                      label: str = "", resume: str | None = None) -> Path:
    """The run's folder: `out`; else runs/NAME; else the folder of a --resume PATH; else, with --resume auto,
    the newest run in runs/ whose config equals `cfg`; else a new runs/<label>-<model>-<timestamp>.

    A given folder that already holds checkpoints is refused without --resume: a second run would
    overwrite last.pt and mix its epoch checkpoints with the first one's. Rank 0 chooses; the others
    are told, so every rank of a torchrun agrees on one timestamp.
    """
    if out is None and name:
        out = ckpts.RUNS / name
    if out is None and resume and resume != "auto":
        out = Path(resume).parent
    if out is not None:
        out = Path(out)
        if not resume and ckpts.holds_run(out):
            raise BatmanError(f"{out} already holds a training run ({ckpts.LAST}, epoch checkpoints): pass --resume "
                              f"auto to continue it, or another --out / --name (default: a new folder in "
                              f"{ckpts.RUNS}/)")
        how = "given"
    elif d.main:
        found = ckpts.find_run(cfg) if resume == "auto" else None
        out, how = (found, "the newest run with the same config") if found else (
            ckpts.new_run_folder("-".join(filter(None, [label, cfg.model.name]))), "new")
    if d.enabled:
        box = [str(out) if d.main else None]
        dist.broadcast_object_list(box, src=0)
        out = Path(box[0])
    if d.main:
        tqdm.write(f"run folder: {out} ({how})")
    return out


def last_good(out: Path) -> str:
    """Where a stopped run can resume from: the newest checkpoint in `out` that loads with finite
    weights (checked, not assumed: an older version may have saved NaN weights)."""
    newest_first = [p for _, _, p in sorted(ckpts.epoch_checkpoints(out), key=lambda t: -t[1])]
    for path in [out / ckpts.LAST, *newest_first]:
        if path.is_file():
            try:
                epoch = ckpts.load_checkpoint(path).get("epoch")
            except BatmanError:
                continue
            return f"the last good checkpoint is {path} (epoch {epoch})"
    return f"{out} holds no good checkpoint"


def check_weights(model, out: Path, epoch: int, step: int) -> None:
    """Refuse to go on (and to save) once a weight is NaN or infinite: a finite loss does not prove
    finite weights (the step after the loss was computed can blow them up)."""
    net = model.module if hasattr(model, "module") else model
    bad = ckpts.non_finite(net.state_dict())
    if bad:
        raise BatmanError(f"the weights became non-finite ({bad}) at epoch {epoch}, step {step}: stopped without "
                          f"saving; {last_good(out)} (try a lower train.lr, train.grad_clip=1.0 or train.amp=off)")


def find_resume_checkpoint(out: Path, resume: str | None) -> tuple[Path | None, dict | None]:
    """--resume PATH, or 'auto': OUT/last.pt, falling back to the newest good epoch checkpoint."""
    if not resume:
        return None, None
    if resume != "auto":
        return Path(resume), ckpts.load_checkpoint(resume)
    last = out / ckpts.LAST
    if last.exists():
        try:
            return last, ckpts.load_checkpoint(last)
        except BatmanError as e:
            tqdm.write(f"warning: {e}; trying the newest epoch checkpoint instead")
    for _, _, path in sorted(ckpts.epoch_checkpoints(out), key=lambda t: -t[1]):
        try:
            return path, ckpts.load_checkpoint(path)
        except BatmanError as e:
            tqdm.write(f"warning: {e}")
    if last.exists():
        raise BatmanError(f"{last} is corrupt and no good epoch checkpoint is left in {out}: delete {last} "
                          f"to start afresh, or pass --resume PATH")
    return None, None


def restore(ckpt: dict, path: Path, model, opt, scaler, sched, cfg: Config) -> Progress:
    ckpts.check_same_model(path, ckpts.checkpoint_config(ckpt, path), cfg)
    net = model.module if hasattr(model, "module") else model
    ckpts.load_state_strict(net, ckpt["model"], path)
    opt.load_state_dict(ckpt["optimizer"])
    if scaler and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng_torch"])
    return Progress(epoch=ckpt["epoch"], step=ckpt["step"], step_in_epoch=ckpt["step_in_epoch"],
                    best=ckpt["best"], bad_epochs=ckpt["bad_epochs"], history=list(ckpt["history"]))


# Model fields --init may change: the new model starts out computing what the saved one did (or nearly:
# a fixed pipeline replaces a learned one; an alignment moves the states only where something moved) and
# training adapts the rest; the settings a release may change need no training either way.
WIDENABLE = ("encoder_mean", "pipeline", "gate_evidence", "denoiser", "state_reset", "noise_input",
             "align") + tuple(key.split(".", 1)[1] for key in ckpts.RELEASE_KEYS if key.startswith("model."))


def init_architecture(cfg: Config, path: str | Path, explicit: set[str]) -> Config:
    """The config of a fine-tune from `path` (--init): every model setting not in `explicit` (the keys the
    user set) becomes the checkpoint's, so that `--init trained_model/...` fine-tunes the shipped model
    whatever its options, instead of the preset's architecture (which would drop or zero what the preset
    lacks). So does its data.exposure_level, the input brightness its model expects (export's gain aims at
    it): measured again on a small fine-tune set it moved the shipped model's gain for one burst from 128.6
    to 152.2, although the weights had learned the old level. Prints the settings taken."""
    _, saved = ckpts.read_weights(Path(path))
    taken = {f"model.{f.name}": getattr(saved.model, f.name) for f in fields(saved.model)
             if f.name not in ("checkpointing", "encoder_weights") and f"model.{f.name}" not in explicit
             and getattr(saved.model, f.name) != getattr(cfg.model, f.name)}
    if saved.data.exposure_level > 0 and "data.exposure_level" not in explicit:
        taken["data.exposure_level"] = saved.data.exposure_level
    if taken:
        print(f"--init {path}: its settings {', '.join(f'{k}={v}' for k, v in taken.items())} "
              f"(--set to change them)")
    return apply_overrides(cfg, taken)


def load_init_weights(model, path: str | Path, cfg: Config) -> str:
    """--init: only the weights of a checkpoint or of released weights (fine-tuning). Another architecture
    is a one-line error, unless it differs only in WIDENABLE fields (ckpt.load_state_widened).
    Returns a line saying how the weights were taken."""
    path = Path(path)
    state, saved = ckpts.read_weights(path)
    (saved_model, *saved_data), (model_cfg, *data) = ckpts.architecture(saved), ckpts.architecture(cfg)
    if (saved_model, saved_data) == (model_cfg, data):
        ckpts.load_state_strict(model, state, path)
        return f"fine-tuning from the weights of {path}"
    if saved_data != data or replace(saved_model, **{f: getattr(model_cfg, f) for f in WIDENABLE}) != model_cfg:
        raise BatmanError(f"--init {path} holds a {ckpts.describe_model(saved)} model, not the requested "
                          f"{ckpts.describe_model(cfg)}: pass the --set values it was trained with")
    changed = ", ".join(f"model.{f}" for f in WIDENABLE if getattr(saved_model, f) != getattr(model_cfg, f))
    return f"fine-tuning from the weights of {path}, adapted to {changed}: " + ckpts.load_state_widened(model, state, path)


def check_ranks_agree(model, d: Dist) -> None:
    """DDP keeps replicas identical; prove it at the end with a checksum of every rank's weights."""
    net = model.module if hasattr(model, "module") else model
    checksum = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum().cpu().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(d.world)]
    dist.all_gather(gathered, checksum)
    if d.main:
        values = [g.item() for g in gathered]
        if len(set(values)) != 1:
            raise BatmanError(f"replicas diverged: weight checksums per rank {values}")
        tqdm.write(f"weights identical on all {d.world} ranks (checksum {values[0]:.6f})")


def write_log(out: Path, history: list[dict], loss: str = "l1") -> None:
    """CSV of every epoch and a loss plot, both replaced atomically."""
    if not history:
        return
    with atomic_path(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    plot_losses(out / "loss.png", history, loss)


def log_epoch(board, row: dict, images: list[torch.Tensor], step: int) -> None:
    """One epoch's line of the CSV as TensorBoard scalars, and the validation images (output | truth)."""
    board.add_scalar("val/loss", row["val_loss"], step)
    board.add_scalar("val/psnr_db", row["val_psnr"], step)
    board.add_scalar("train/epoch_loss", row["train_loss"], step)
    board.add_scalar("train/images_per_s", row["images_per_s"], step)
    for i, image in enumerate(images):
        board.add_image(f"val/clip{i}_output_truth", image, step)
    board.flush()


LOSS_LABELS = {"l1": "L1 loss", "l2": "L2 loss", "psnr": "loss (minus frame PSNR, dB)"}


def plot_losses(path: Path, history: list[dict], loss: str = "l1") -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel(LOSS_LABELS[loss]), ax1.legend(), ax1.grid(alpha=0.3)
    if loss != "psnr":  # a negative loss has no log scale
        ax1.set_yscale("log")
    ax2.plot(epochs, [h["val_psnr"] for h in history], "o-", color="C2")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("validation PSNR (dB)"), ax2.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def out_of_time(prog: Progress, cfg: Config) -> bool:
    """The epochs trained so far (over every resume) took train.max_minutes or more."""
    spent_s = sum(h.get("time_s", 0.0) for h in prog.history)
    return cfg.train.max_minutes > 0 and spent_s >= 60 * cfg.train.max_minutes


def with_exposure_level(cfg: Config, train_set) -> Config:
    """cfg with data.exposure_level measured on the training videos (kept when set explicitly), so that
    every checkpoint knows the input brightness its model expects (infer.auto_gain aims at it)."""
    from batman.infer import exposure_level
    if cfg.data.exposure_level > 0 or cfg.data.mode != "raw":
        return cfg
    level = exposure_level(train_set.videos, train_set.reader)
    return replace(cfg, data=replace(cfg.data, exposure_level=round(level, 6)))


def train(cfg: Config, out: str | Path | None = None, resume: str | None = None, device: str | None = None,
          name: str | None = None, label: str = "", init: str | Path | None = None) -> dict:
    """Train `cfg` into a run folder (see choose_run_folder: `out`, runs/NAME, or runs/<label>-<model>-<time>)
    on `device` (cpu, cuda, cuda:N; None: CUDA when available).
    Returns {'best': val loss, 'epochs': n, 'stopped': reason, 'history': [...], 'out': run folder}.
    init: fine-tune from that checkpoint's weights (fresh optimiser, epoch 0); a run being resumed
    continues from its own checkpoint instead."""
    check_filter_loss(cfg)
    wanted = ckpts.resolve_device(device)
    d = setup_distributed(wanted)
    device = pick_device(d, wanted)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = choose_run_folder(cfg, d, out, name, label, resume)
    if d.main:
        ensure_dir(out)  # before any work: an --out naming a file is a one-line error
        remove_stale_temps(out)  # what a killed save left (only dead processes' temps)
    seed_everything(cfg.seed + d.rank, cfg.train.deterministic)

    train_set, loader, sampler, val_loader = build_data(cfg, d)
    cfg = with_exposure_level(cfg, train_set)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = model_for(cfg).to(device)
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total_steps = cfg.train.epochs * (sampler.num // cfg.train.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(  # its step count is kept in checkpoints; the function is cfg's
        opt, lambda step: lr_factor(step, cfg.train.schedule, cfg.train.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    ckpt_path, ckpt = find_resume_checkpoint(out, resume)
    if init and not ckpt:
        how = load_init_weights(model, init, cfg)
        if d.main:
            tqdm.write(how)
    prog = restore(ckpt, ckpt_path, model, opt, scaler, sched, cfg) if ckpt else Progress()
    if ckpt and d.main:
        tqdm.write(f"resumed from {ckpt_path}: epoch {prog.epoch}, step {prog.step}")
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    if d.main:
        cfg.save(out / "config.json")
    board = tensorboard_writer(out, cfg, prog.step if ckpt else None) if d.main else None

    def save_last(epoch: int):
        check_weights(model, out, epoch, prog.step)  # on every rank: they hold the same weights
        if d.main:
            ckpts.save_checkpoint(out / ckpts.LAST, training_state(model, opt, scaler, sched, cfg, prog))

    stopped = "epochs"
    model.train()
    epochs_bar = tqdm(range(prog.epoch, cfg.train.epochs), desc="epochs", initial=prog.epoch,
                      total=cfg.train.epochs, disable=not d.main or None, position=0)
    for epoch in epochs_bar:
        if prog.bad_epochs >= cfg.train.patience or out_of_time(prog, cfg):  # a resumed run that had stopped
            break
        sampler.set_epoch(epoch, skip=prog.step_in_epoch * cfg.train.batch)
        train_set.set_epoch(epoch)
        losses, t0, images = [], time.perf_counter(), 0
        steps_bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not d.main or None, position=1)
        for batch in steps_bar:
            batch = shorter_clips(batch, cfg, prog.step)
            lr = opt.param_groups[0]["lr"]
            loss = train_step(model, batch, opt, scaler, cfg, device, amp_dtype)
            if not math.isfinite(loss):
                raise BatmanError(f"training loss became {loss} at epoch {epoch + 1}, step {prog.step + 1}: stopped "
                                  f"without saving; {last_good(out)} (try a lower train.lr, "
                                  f"train.grad_clip=1.0 or train.amp=off)")
            sched.step()
            prog.step += 1
            prog.step_in_epoch += 1
            losses.append(loss)
            if board:
                board.add_scalar("train/loss", loss, prog.step)
                board.add_scalar("train/lr", lr, prog.step)
            images += batch["input"].shape[0] * batch["input"].shape[1] * d.world
            steps_bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images / (time.perf_counter() - t0):.1f}")
            if cfg.train.save_every and prog.step % cfg.train.save_every == 0:
                save_last(epoch + 1)
        val_loss, val_psnr, val_images = validate(model, val_loader, cfg, device, amp_dtype, d,
                                                  keep_images=cfg.train.log_images if board else 0)
        prog.epoch, prog.step_in_epoch = epoch + 1, 0
        improved = val_loss < prog.best
        prog.best, prog.bad_epochs = (val_loss, 0) if improved else (prog.best, prog.bad_epochs + 1)
        mean_train = float(np.mean(losses)) if losses else float("nan")
        prog.history.append({"epoch": epoch + 1, "step": prog.step, "train_loss": round(mean_train, 6),
                             "val_loss": round(val_loss, 6), "val_psnr": round(val_psnr, 3),
                             "lr": opt.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 2),
                             "images_per_s": round(images / max(time.perf_counter() - t0, 1e-9), 2)})
        check_weights(model, out, epoch + 1, prog.step)
        if d.main:
            state = training_state(model, opt, scaler, sched, cfg, prog)
            if improved:
                ckpts.save_checkpoint(out / ckpts.checkpoint_name(epoch + 1, val_loss), state)
                ckpts.prune_checkpoints(out, cfg.train.keep)
            ckpts.save_checkpoint(out / ckpts.LAST, state)
            write_log(out, prog.history, cfg.train.loss)
            if board:
                log_epoch(board, prog.history[-1], val_images, prog.step)
            epochs_bar.set_postfix(train=f"{mean_train:.4f}", val=f"{val_loss:.4f}", psnr=f"{val_psnr:.2f}")
            tqdm.write(f"epoch {epoch + 1}: train {mean_train:.4f}  val {val_loss:.4f}  PSNR {val_psnr:.2f} dB"
                       + ("  (best)" if improved else f"  ({prog.bad_epochs} without improvement)"))
        if prog.bad_epochs >= cfg.train.patience or out_of_time(prog, cfg):
            break
    if out_of_time(prog, cfg):
        stopped = "time budget"
        if d.main:
            tqdm.write(f"stopped: the time budget of {cfg.train.max_minutes:g} min (train.max_minutes) is spent")
    elif prog.bad_epochs >= cfg.train.patience:
        stopped = "early stop"
        if d.main:
            tqdm.write(f"early stop: no validation improvement for {cfg.train.patience} epochs")
    if board:
        board.close()
    if d.enabled:
        check_ranks_agree(model, d)
        dist.destroy_process_group()
    return {"best": prog.best, "epochs": prog.epoch, "stopped": stopped, "history": prog.history, "out": out}
