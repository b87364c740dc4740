"""`batman bench export`: peak RSS and frames/s of streaming export for 8 and 128 frames (vs model only)."""
from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from batman.bench.common import QUALITY_SEED, machine_info, tqdm_range, write_json
from batman.config import BatmanError, make_config
from batman.export import EXPORT_WORKERS
from batman.report import markdown_table

TARGET_EXPORT_FPS_RATIO = 0.8         # export fps / model-only fps
TARGET_RSS_RATIO = 1.05               # peak RSS at T=128 / at T=8

# The worker forks first: Linux carries a process's peak RSS (ru_maxrss) across exec, so a process spawned
# by this (large) one would report our peak; a child forked from the freshly started interpreter starts small.
_WORKER = "\n".join([
    "import os, sys",
    "pid = os.fork()",
    "if pid:",
    "    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))",
    "import json",
    "from batman.bench.export import _export_worker",
    "print(json.dumps(_export_worker(json.loads(sys.argv[1]))), flush=True)"])


def _vm_hwm_bytes() -> int:
    """Peak resident set of this process's address space (/proc/self/status VmHWM), 0 where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _export_worker(job: dict) -> dict:
    """Runs in a fresh process: export (or model-only) of job['frames'] frames; wall time and peak RSS."""
    from batman.data.drv import load_video
    from batman.export import export_video
    from batman.infer import Enhancer
    from batman.model.net import model_for

    cfg = make_config("", {"data.root": job["root"]})
    torch.manual_seed(0)
    net = model_for(cfg).eval()
    video = load_video(job["root"], job["video"])
    device = job["device"]
    net = net.to(device)
    h, w = job["grid"]
    with torch.inference_mode():  # warm-up: the first call of every convolution is slow
        net.step(torch.zeros(1, cfg.data.in_channels, h, w, device=device), None)
    n = job["frames"]
    if job["kind"] in ("export", "cached", "threads"):
        from batman.data.cache import open_cache
        cache = open_cache(job["root"]) if job["kind"] == "cached" else None
        workers = 0 if job["kind"] == "threads" else EXPORT_WORKERS
        start = time.perf_counter()
        export_video(net, cfg, video, Path(job["out"]), frames=n, device=device, cache=cache, workers=workers)
        elapsed = time.perf_counter() - start
    else:
        from batman.data.dataset import iter_frames
        frames = [f for _, f in zip(range(n), iter_frames(video, cfg.data))]
        enhancer = Enhancer(net, cfg.model.scale, device)
        start = time.perf_counter()
        for f in frames:
            enhancer(f)
        elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"kind": job["kind"], "frames": n, "time_s": elapsed, "fps": n / elapsed, "peak_rss_bytes": rss,
            "vm_hwm_bytes": _vm_hwm_bytes()}


def _run_worker(job: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BatmanError(f"bench export: worker failed ({job['kind']}, {job['frames']} frames): "
                          f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_export(out: Path | None = None, quick: bool = False, lengths: tuple[int, ...] | None = None,
                 size: tuple[int, int] | None = None, reps: int | None = None, device: str | None = None) -> dict:
    """Streaming export of a freshly initialised clstm on a synthetic static video, T frames per process.

    Every (kind, T) runs in its own process, which reports its peak RSS (ru_maxrss) and frames/s;
    'model only' is the same Enhancer on the same frames decoded beforehand into memory; 'cached' is
    the export reading the prepared cache (the DRV workflow after `make prepare`) instead of the raw
    files. Repetitions are interleaved; medians are reported.
    """
    from batman.data.cache import prepare
    from batman.data.synth import synthesize

    lengths = lengths or ((4, 16) if quick else (8, 128))  # the RSS target compares the two ends
    size = size or ((256, 384) if quick else (512, 768))  # Bayer mosaic; the model's input is a quarter per side
    reps = reps or (1 if quick else 2)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    grid = (size[0] // 4, size[1] // 4)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="batman-bench-export-") as tmp:
        root = Path(tmp) / "drv"
        synthesize(root, videos=1, frames=max(lengths), size=size, seed=QUALITY_SEED + 1)
        prepare(root, workers=1)
        jobs = [("export", n) for n in lengths] + [(kind, max(lengths)) for kind in ("cached", "threads", "model")]
        for rep in tqdm_range(reps, "export"):
            for kind, n in jobs:
                job = {"kind": kind, "frames": n, "root": str(root), "video": "0001", "device": device,
                       "grid": grid, "out": str(Path(tmp) / f"out_{kind}_{n}_{rep}")}
                runs.setdefault(f"{kind} {n}", []).append(_run_worker(job))
                shutil.rmtree(job["out"], ignore_errors=True)
    med = {k: {key: statistics.median(r[key] for r in v) for key in ("fps", "peak_rss_bytes", "vm_hwm_bytes")}
           for k, v in runs.items()}
    longest, shortest = max(lengths), min(lengths)
    model_fps = med[f"model {longest}"]["fps"]
    fps_ratio = med[f"export {longest}"]["fps"] / model_fps
    cached_ratio = med[f"cached {longest}"]["fps"] / model_fps
    threads_ratio = med[f"threads {longest}"]["fps"] / model_fps
    rss_ratio = med[f"export {longest}"]["peak_rss_bytes"] / med[f"export {shortest}"]["peak_rss_bytes"]
    rows = [[k.split()[0], k.split()[1], f"{v['fps']:.2f}", f"{v['peak_rss_bytes'] / 2 ** 20:.0f}",
             f"{v['vm_hwm_bytes'] / 2 ** 20:.0f}"] for k, v in med.items()]
    report = "\n".join([
        f"bench export on {device}: clstm (fresh weights), synthetic static video, model input 4x{grid[0]}x{grid[1]} "
        f"(Bayer {size[0]}x{size[1]}); each run in its own process (peak RSS = ru_maxrss; VmHWM beside it as a "
        f"check), median of {reps} interleaved repetitions. Export = export_video: decode + enhance + PNG + H.264, "
        f"decoding in {EXPORT_WORKERS} worker processes and PNGs encoded in another (the default); cached = the "
        f"same export reading the prepared cache instead of decoding raw files; threads = export with workers=0 "
        f"(decoding and PNG encoding in threads of the model's process, the previous design); model only = the "
        f"Enhancer on the same frames decoded into memory beforehand. All warm the model on one frame and import "
        f"their modules before the clock starts.", "",
        markdown_table(["kind", "frames", "frames/s", "peak RSS (MiB)", "VmHWM (MiB)"], rows), "",
        f"- export fps / model-only fps at T={longest}: {fps_ratio:.2f} (target >= {TARGET_EXPORT_FPS_RATIO}: "
        f"{'met' if fps_ratio >= TARGET_EXPORT_FPS_RATIO else 'MISSED'}); from the prepared cache: {cached_ratio:.2f}; "
        f"with threads instead of processes: {threads_ratio:.2f}",
        f"- peak RSS T={longest} / T={shortest}: {rss_ratio:.3f} (target <= {TARGET_RSS_RATIO}: "
        f"{'met' if rss_ratio <= TARGET_RSS_RATIO else 'MISSED'})"])
    print(report)
    result = {"machine": machine_info(), "device": device, "grid": list(grid), "bayer": list(size), "reps": reps,
              "lengths": list(lengths),
              "runs": runs, "median": med, "fps_ratio": fps_ratio, "cached_fps_ratio": cached_ratio,
              "threads_fps_ratio": threads_ratio, "rss_ratio": rss_ratio, "report": report}
    if out is not None:
        write_json(Path(out) / "export.json", result)
    return result

