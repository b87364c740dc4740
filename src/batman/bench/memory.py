"""`batman bench memory`: training memory per preset (CUDA: measured; CPU: counted) vs its GPU budget."""
from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from batman.bench.common import DRV_GRID, machine_info, timed, write_json
from batman.config import BatmanError, Config, apply_overrides, make_config
from batman.report import markdown_table

GPU_BUDGET_GB = {"titan": 21.0, "1080ti": 8.0, "1080": 6.0}  # GB = 1e9 bytes
MEMORY_PRESETS = ("titan", "1080ti", "1080")


def _param_ptrs(model) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


class SavedTensorCounter:
    """Bytes of the distinct storages autograd saves for backward (views of one storage count once),
    parameters left out; `where` labels the part of the model running (for per-stage sums)."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.seen, self.where = exclude, set(), None
        self.total, self.by_stage = 0, {}

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if storage.data_ptr() not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
            if self.where:
                self.by_stage[self.where] = self.by_stage.get(self.where, 0) + storage.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def random_batch(cfg: Config, batch: int, frames: int, device) -> dict:
    (h, w), s = cfg.data.crop, cfg.model.scale
    g = torch.Generator().manual_seed(0)
    return {"input": torch.rand(batch, frames, cfg.data.in_channels, h, w, generator=g).to(device),
            "target": torch.rand(batch, frames, 3, h * s, w * s, generator=g).to(device)}


def _encoder_stage_bytes(cfg: Config, frames: int) -> dict[str, int]:
    """Saved bytes of each checkpointed encoder stage on `frames` frames (a forward without checkpointing):
    with checkpointing, backward recomputes one stage at a time, so the largest is live on top."""
    from batman.model.net import model_for

    model = model_for(replace(cfg, model=replace(cfg.model, checkpointing=False))).train()
    counter = SavedTensorCounter(_param_ptrs(model))
    enc = model.encoder
    marks = {"stem": enc.conv1, "layer1": enc.layer1, "layer2": enc.layer2, "layer3": enc.layer3,
             "layer4": enc.layer4, None: model.fusion}
    handles = [m.register_forward_pre_hook(lambda *_, name=name: setattr(counter, "where", name))
               for name, m in marks.items()]
    try:
        with counter.hooks():
            model(random_batch(cfg, 1, frames, "cpu")["input"], None)
    finally:
        for h in handles:
            h.remove()
    return counter.by_stage


def memory_estimate_cpu(cfg: Config, probe_frames: int = 2) -> dict:
    """Training memory of `cfg` counted on the CPU in float32 from ONE real training step (AdamW).

    The step runs at the preset's crop on 1 clip of min(probe_frames, B*T) frames; saved activations are
    per frame (the encoder sees B*T frames as one batch, the ConvLSTM one frame at a time), so they are
    scaled by B*T / probe_frames (B*min(T, bptt) with truncated BPTT). Parameters, gradients and AdamW's
    two moments are counted from the tensors. With checkpointing, the largest encoder stage (recomputed
    in backward) is added.
    """
    from batman.model.net import model_for
    from batman.train import train_step

    B, T = cfg.train.batch, cfg.data.frames
    live_T = min(T, cfg.train.bptt) if cfg.train.bptt else T
    n = max(1, min(probe_frames, B * live_T))
    probe = apply_overrides(cfg, {"train.batch": 1, "data.frames": n, "train.bptt": 0})
    torch.manual_seed(0)
    model = model_for(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    counter = SavedTensorCounter(_param_ptrs(model))
    start = time.perf_counter()
    with counter.hooks():
        train_step(model, random_batch(cfg, 1, n, "cpu"), opt, None, probe, torch.device("cpu"), None)
    step_s = time.perf_counter() - start
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    adam = sum(v.numel() * v.element_size() for st in opt.state.values() for k, v in st.items()
               if torch.is_tensor(v) and k != "step")
    per_frame = counter.total / n
    recompute_per_frame = max(_encoder_stage_bytes(cfg, n).values()) / n if cfg.model.checkpointing else 0.0
    activations = per_frame * B * live_T
    recompute = recompute_per_frame * B * live_T
    fixed = params + grads + adam
    return {"device": "cpu", "dtype": "float32", "probe_frames": n, "probe_step_s": step_s,
            "params_bytes": params, "grads_bytes": grads, "adam_bytes": adam,
            "activations_bytes": activations, "recompute_bytes": recompute,
            "activation_bytes_per_frame": per_frame + recompute_per_frame,
            "total_bytes": fixed + activations + recompute,
            "amp_total_bytes": fixed + (activations + recompute) / 2}


def memory_measure_cuda(cfg: Config, steps: int = 4) -> dict:
    """Peak `torch.cuda.max_memory_allocated` over `steps` real training steps as train.py runs them
    (AdamW, AMP per cfg.train.amp), and images/s (B*T / step time, median of the steps after the first)."""
    from batman.model.net import model_for
    from batman.train import amp_settings, train_step

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = model_for(cfg).to(device).train()
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    batch = random_batch(cfg, cfg.train.batch, cfg.data.frames, device)
    result = {"device": torch.cuda.get_device_name(device), "dtype": str(amp_dtype or "float32").replace("torch.", "")}
    try:
        times = [timed(lambda: train_step(model, batch, opt, scaler, cfg, device, amp_dtype), device)
                 for _ in range(steps)]
    except torch.cuda.OutOfMemoryError:
        result.update(total_bytes=float("nan"), oom=True, images_per_s=float("nan"))
    else:
        images = cfg.train.batch * cfg.data.frames
        result.update(total_bytes=torch.cuda.max_memory_allocated(device),
                      reserved_bytes=torch.cuda.max_memory_reserved(device), oom=False,
                      step_s=statistics.median(times[1:]), images_per_s=images / statistics.median(times[1:]),
                      steps=steps)
    del model, opt, batch
    torch.cuda.empty_cache()
    return result


def bench_memory(out: Path | None = None, preset: str = "", quick: bool = False, device: str | None = None) -> dict:
    """Training memory per preset at DRV size vs the preset's GPU budget (measured on CUDA, counted on CPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    presets = [preset] if preset else list(MEMORY_PRESETS)
    rows, results = [], {}
    for name in presets:
        cfg = make_config(name)
        if quick:
            cfg = apply_overrides(cfg, {"data.crop": (64, 64)})
        h, w = cfg.data.crop
        if h > DRV_GRID[0] or w > DRV_GRID[1] or h % 32 or w % 32:
            raise BatmanError(f"preset {name}: crop {h}x{w} must be a multiple of 32 within DRV's {DRV_GRID}")
        r = memory_measure_cuda(cfg) if device == "cuda" else memory_estimate_cpu(cfg)
        budget = GPU_BUDGET_GB.get(name)
        judged = r["total_bytes"]  # CUDA: measured; CPU: the float32 count (see the note printed with the table)
        r.update(preset=name, crop=[h, w], frames=cfg.data.frames, batch=cfg.train.batch,
                 checkpointing=cfg.model.checkpointing, budget_gb=budget,
                 budget_fraction=judged / (budget * 1e9) if budget else None)
        results[name] = r
        verdict = "-" if not budget else ("OVER" if not judged <= budget * 1e9 else "OK")
        if device == "cuda":
            rows.append([name, f"{h}x{w}", cfg.data.frames, cfg.train.batch, cfg.model.checkpointing,
                         "OOM" if r["oom"] else f"{r['total_bytes'] / 1e9:.2f}",
                         f"{r.get('reserved_bytes', float('nan')) / 1e9:.2f}", f"{r['images_per_s']:.1f}",
                         f"{budget:.0f}" if budget else "-",
                         f"{100 * r['budget_fraction']:.0f}%" if budget and not r["oom"] else "-", verdict])
        else:
            rows.append([name, f"{h}x{w}", cfg.data.frames, cfg.train.batch, cfg.model.checkpointing,
                         f"{(r['params_bytes'] + r['grads_bytes'] + r['adam_bytes']) / 1e9:.2f}",
                         f"{(r['activations_bytes'] + r['recompute_bytes']) / 1e9:.2f}", f"{r['total_bytes'] / 1e9:.2f}",
                         f"{r['amp_total_bytes'] / 1e9:.2f}", f"{budget:.0f}" if budget else "-",
                         f"{100 * r['budget_fraction']:.0f}%" if budget else "-", verdict])
    if device == "cuda":
        head = (f"bench memory on {torch.cuda.get_device_name(0)}: peak torch.cuda.max_memory_allocated over 4 real "
                f"training steps (AdamW, AMP {results[presets[0]]['dtype']}, random data at the preset's crop), "
                f"images/s = B*T / median step time of steps 2-4. GB = 1e9 bytes; the allocator's reserve is "
                f"beside it.{' QUICK: crop 64x64.' if quick else ''}")
        headers = ["preset", "crop", "T", "B", "ckpt", "peak (GB)", "reserved (GB)", "images/s", "budget (GB)",
                   "of budget", "fits"]
    else:
        head = ("bench memory on the CPU (no CUDA here): ONE real training step (AdamW, float32) at the preset's "
                "crop on 2 frames; the bytes of parameters + gradients + AdamW's two moments, and of the distinct "
                "storages autograd saves (activations, scaled to B*T frames; with checkpointing plus the largest "
                "recomputed encoder stage). AMP would halve the activations if every saved tensor became bf16 "
                "(the 'AMP estimate' column), but CUDA's autocast runs GroupNorm in float32 and saves both copies "
                "around it, so the float32 total is the figure compared with the budget; the CUDA allocator and "
                "cuDNN workspaces come on top (measured figures: `scripts/gpu_check.sh`). GB = 1e9 "
                f"bytes.{' QUICK: crop 64x64.' if quick else ''}")
        headers = ["preset", "crop", "T", "B", "ckpt", "params+grad+Adam (GB)", "activations (GB)",
                   "float32 total (GB)", "AMP estimate (GB)", "budget (GB)", "of budget", "fits"]
    report = head + "\n\n" + markdown_table(headers, rows)
    print(report)
    result = {"machine": machine_info(), "device": device, "quick": quick, "presets": results, "report": report}
    if out is not None:
        write_json(Path(out) / ("memory_quick.json" if quick else "memory.json"), result)
    return result

