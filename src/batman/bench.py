"""Benchmarks that print ratios of things measured side by side in the same run.

    batman bench infer    per-frame time, FLOPs and FLOP rate of clstm / conv3d / unet / lite (vs a matmul peak),
                          onnxruntime rows, and where the time goes per module
    batman bench export   peak RSS and frames/s of streaming export for 8, 32, 128 frames (vs model only)
    batman bench data     training clips/s from the prepared cache vs decoding the raws
    batman bench memory   training memory per preset (CUDA: measured; CPU: counted) vs its GPU budget
    batman bench quality  a small study: train the three models and lite alike, evaluate against the baselines
    batman bench all      all of the above, and OUT/bench.md with every table

Every speed figure is the median of several repetitions, and every comparison is between things
timed in the same process (repetitions interleaved, so a change in the machine's load hits both
sides alike). Each part prints a Markdown table and writes OUT/<part>.json.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from batman.config import PRESETS, BatmanError, Config, apply_overrides, make_config
from batman.files import atomic_write_text

DRV_GRID = (918, 1374)                # DRV's ground-truth / binned-input grid (H, W)
IN_CHANNELS = 4                       # packed raw
GPU_BUDGET_GB = {"titan": 21.0, "1080ti": 8.0, "1080": 6.0}  # GB = 1e9 bytes
MEMORY_PRESETS = ("titan", "1080ti", "1080")
TARGET_INFER_RATIO = 0.4              # clstm time / unet time on the same input (issue 15; was 0.25)
TARGET_PEAK_FRACTION = 0.60           # clstm GFLOP/s / matmul GFLOP/s
TARGET_LITE_GFLOP_720P = 15.0         # model.size=lite, GFLOP per 1280x720 output frame (EMVD: 5.4)
TARGET_LITE_PEAK_FRACTION = 0.50      # lite GFLOP/s / matmul GFLOP/s
TARGET_EXPORT_FPS_RATIO = 0.8         # export fps / model-only fps
TARGET_RSS_RATIO = 1.05               # peak RSS at T=128 / at T=8
QUALITY_SEED = 1000                   # not the seed of the tests (3) or the demo (0)


# --- shared helpers ----------------------------------------------------------------------------

def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A pipe table that reads well in a terminal and in Markdown."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def machine_info() -> dict:
    """CPU model and cores, torch version and threads, and the CUDA device if any."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average": [round(v, 2) for v in os.getloadavg()]}  # other work on the machine skews timings
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the export workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class MatmulPeak:
    """The FLOP rate of one large matrix product, the peak the models are compared with; timed inside the
    models' repetition loop so that it sees the same machine load.

    CPU: 2048x2048 float32 (torch's thread count); CUDA: 8192x8192 bfloat16 (what autocast runs).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.n, self.dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
        self.a = torch.randn(self.n, self.n, device=device, dtype=self.dtype)
        self.b = torch.randn(self.n, self.n, device=device, dtype=self.dtype)
        self.times: list[float] = []
        for _ in range(2):
            self.a @ self.b

    def time_once(self) -> None:
        self.times.append(_timed(lambda: self.a @ self.b, self.device))

    def summary(self) -> dict:
        return {"n": self.n, "dtype": str(self.dtype).replace("torch.", ""), "reps": len(self.times),
                "gflops": 2 * self.n ** 3 / statistics.median(self.times) / 1e9}


# --- bench infer -------------------------------------------------------------------------------

INFER_MODELS = {  # label -> ModelCfg overrides (through make_config: a size brings its widths); the
    "clstm": {"name": "clstm"},            # variants and the lite size first, then other clstm settings
    "conv3d": {"name": "conv3d"},
    "unet": {"name": "unet"},
    "lite": {"name": "clstm", "size": "lite"},
    "clstm layers=1": {"name": "clstm", "layers": 1},
    "clstm hidden=32": {"name": "clstm", "hidden": 32},
    "clstm layers=1 hidden=32": {"name": "clstm", "layers": 1, "hidden": 32},
}
BOTH_FORMATS = ("clstm", "conv3d", "unet", "lite")  # the others run channels_last only, to save time
ONNX_MODELS = ("clstm", "lite")       # also run through onnxruntime (CPU): rows "<label> onnxruntime"
PROFILE_MODELS = ("clstm", "lite")    # per-module ms and GFLOP at DRV's grid
HD_GRID = (720, 1280)                 # 1280x720: the lite target is per such output frame (scale 1)
HD_MODELS = ("clstm", "unet", "lite")  # the models also timed at 720p
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
ORT = "onnxruntime"


def infer_config(label: str) -> Config:
    return make_config("", {f"model.{k}": v for k, v in INFER_MODELS[label].items()})


def count_flops(model, frame, state) -> int:
    """FLOPs of convolutions and matrix products in one `step` (FlopCounterMode; elementwise ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        model.step(frame, state)
    return int(counter.get_total_flops())


def gflop_per_frame(label: str, size: tuple[int, int]) -> float:
    """GFLOP of one warm `step` of INFER_MODELS[label] at `size`, counted on the meta device (no arithmetic)."""
    from batman.model.net import model_for
    cfg = infer_config(label)
    model = model_for(cfg).eval().to("meta")
    frame = torch.zeros(1, cfg.data.in_channels, *size, device="meta")
    with torch.no_grad():
        state = model.step(frame, None)[1]
        return count_flops(model, frame, state) / 1e9


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _infer_case(label: str, fmt: str, size: tuple[int, int], device: torch.device, amp: bool):
    """A model in eval mode, one input frame (1, 4, H, W) and a warm recurrent state, in format `fmt`;
    fmt 'onnxruntime': the model exported by deploy.py and run by onnxruntime (the state lives in its stepper)."""
    from batman.model.net import model_for

    torch.manual_seed(0)
    cfg = infer_config(label)
    model = model_for(cfg).eval()
    if fmt == ORT:
        from batman.deploy import OnnxStepper, export_onnx
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, cfg, Path(tmp) / "step.onnx")
            stepper = OnnxStepper(Path(tmp) / "step.onnx", threads=torch.get_num_threads())
        frame = np.random.default_rng(0).random((1, IN_CHANNELS, *size), dtype=np.float32)

        def run_onnx(state):
            stepper.step(frame)

        return model, frame, run_onnx, nullcontext
    model = model.to(device).to(memory_format=FORMATS[fmt])
    frame = torch.rand(1, IN_CHANNELS, *size, device=device).contiguous(memory_format=FORMATS[fmt])
    context = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext

    def step(state):
        with context():
            return model.step(frame, state)[1]

    return model, frame, step, context


def infer_cases(size: tuple[int, int], quick: bool, ort: bool) -> list[tuple[str, str]]:
    """(row label, format) of every case timed at `size`."""
    labels = list(BOTH_FORMATS) if quick else list(HD_MODELS) if size == HD_GRID else list(INFER_MODELS)
    cases = [(label, fmt) for label in labels for fmt in (FORMATS if label in BOTH_FORMATS else ("channels_last",))]
    return cases + [(f"{label} {ORT}", ORT) for label in ONNX_MODELS if ort and label in labels]


def bench_infer(out: Path | None = None, quick: bool = False, devices: tuple[str, ...] | None = None,
                sizes: list[tuple[int, int]] | None = None, reps: int | None = None,
                profile: bool = True) -> dict:
    """Per-frame time of every model in INFER_MODELS on the same input, both memory formats (and the ONNX
    export through onnxruntime on the CPU), interleaved; then the per-module profile at DRV's grid.

    Each repetition times one matmul (the peak) and one `step` of every case in turn; medians over the
    repetitions are reported.
    """
    devices = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    sizes = sizes or ([(128, 192)] if quick else [(256, 384), DRV_GRID, HD_GRID])
    result = {"machine": machine_info(), "quick": quick, "devices": {}}
    text = []
    for dev_name in devices:
        device = torch.device(dev_name)
        amp = device.type == "cuda"
        ort = device.type == "cpu" and onnxruntime_available()
        if amp:
            torch.backends.cudnn.benchmark = True
        matmul = MatmulPeak(device)
        dev_rows = []
        for size in sizes:
            n_reps = reps or (3 if quick or (device.type == "cpu" and size[0] * size[1] > 5e5) else 5)
            if device.type == "cuda":
                n_reps = reps or 20
            cases = {}
            for label, fmt in infer_cases(size, quick, ort):
                model, frame, step, context = _infer_case(label.removesuffix(f" {ORT}"), fmt, size, device, amp)
                with torch.inference_mode():
                    state = step(None)  # warm-up (and the recurrent state of a running video)
                    if device.type == "cuda":
                        for _ in range(3):
                            state = step(state)
                cases[label, fmt] = {"model": model, "frame": frame, "step": step, "state": state,
                                     "context": context, "times": []}
            with torch.inference_mode():
                for _ in tqdm_range(n_reps, f"infer {dev_name} {size[0]}x{size[1]}"):
                    matmul.time_once()
                    for case in cases.values():
                        case["times"].append(_timed(lambda c=case: _advance(c), device))
                for (label, fmt), case in cases.items():
                    if fmt == "channels_last" or (fmt == "contiguous" and (label, "channels_last") not in cases):
                        with case["context"]():
                            case["flops"] = count_flops(case["model"], case["frame"], case["state"])
            for label in dict.fromkeys(lb for lb, _ in cases):
                per_fmt = {fmt: statistics.median(c["times"]) for (lb, fmt), c in cases.items() if lb == label}
                best = min(per_fmt, key=per_fmt.get)
                base = label.removesuffix(f" {ORT}")
                flops = next(c["flops"] for (lb, _), c in cases.items() if lb == base and "flops" in c)
                params = sum(p.numel() for p in cases[label, best]["model"].parameters())
                dev_rows.append({"size": list(size), "model": label, "params": params, "gflop_per_frame": flops / 1e9,
                                 "time_ms": {f: 1e3 * t for f, t in per_fmt.items()}, "best_format": best,
                                 "best_time_ms": 1e3 * per_fmt[best], "gflops": flops / per_fmt[best] / 1e9,
                                 "reps": n_reps})
            del cases
        peak = matmul.summary()
        for row in dev_rows:
            row["peak_fraction"] = row["gflops"] / peak["gflops"]
        ratios = _infer_ratios(dev_rows)
        lite_gflop_hd = gflop_per_frame("lite", HD_GRID)
        profiles = profile_modules(device, sizes[0] if quick else DRV_GRID, amp, peak, reps=2 if quick else 3) \
            if profile else []
        result["devices"][dev_name] = {"matmul": peak, "amp": "bf16" if amp else "off", "rows": dev_rows,
                                       "ratios_to_unet": ratios, "lite_gflop_720p": lite_gflop_hd,
                                       "onnxruntime": ort, "profile": profiles}
        text.append(_infer_report(dev_name, peak, amp, dev_rows, ratios, lite_gflop_hd, ort, profiles))
    report = "\n\n".join(text)
    print(report)
    result["report"] = report
    if out is not None:
        write_json(Path(out) / "infer.json", result)
    return result


def _advance(case: dict) -> None:
    """One streaming step of a case, its state carried to the next."""
    case["state"] = case["step"](case["state"])


def _infer_ratios(rows: list[dict]) -> list[dict]:
    """Every model's best per-frame time over the U-Net's and over the default clstm's on the same input."""
    out = []
    for size in {tuple(r["size"]) for r in rows}:
        same = {r["model"]: r for r in rows if tuple(r["size"]) == size}
        unet, clstm = same.get("unet"), same.get("clstm")
        for r in same.values():
            if r["model"] != "unet" and unet:
                out.append({"size": list(size), "model": r["model"], "ratio": r["best_time_ms"] / unet["best_time_ms"],
                            "ratio_to_clstm": r["best_time_ms"] / clstm["best_time_ms"] if clstm else None,
                            "peak_fraction": r["peak_fraction"]})
    return sorted(out, key=lambda r: (r["size"], r["model"]))


# --- bench infer: where the time goes -------------------------------------------------------------

def module_stages(model, frame: torch.Tensor, state: dict) -> dict:
    """The four parts of one VideoNet `step`, each a closure on its own inputs (computed once here):
    encoder (padded frame -> 4 stages), fusion (-> stride-4 features), temporal, head."""
    from batman.model.net import pad_to_multiple
    x = pad_to_multiple(frame)
    feats = model.encoder(x)
    fused = model.fusion(feats).unsqueeze(1)
    temporal = model.temporal(fused, state["temporal"])[0]
    return {"encoder": lambda: model.encoder(x), "fusion": lambda: model.fusion(feats),
            "temporal": lambda: model.temporal(fused, state["temporal"]),
            "head": lambda: model.head(temporal, x.unsqueeze(1), state["head"])}


def profile_modules(device: torch.device, size: tuple[int, int], amp: bool, peak: dict, reps: int = 3) -> list[dict]:
    """ms, GFLOP, GFLOP/s and share of the step of each part of PROFILE_MODELS (channels_last, a warm state),
    the parts of all models timed in turn within each repetition."""
    from torch.utils.flop_counter import FlopCounterMode
    stages = {}
    for label in PROFILE_MODELS:
        model, frame, step, context = _infer_case(label, "channels_last", size, device, amp)
        with torch.inference_mode(), context():
            state = step(None)
            for name, run in module_stages(model, frame, state).items():
                with FlopCounterMode(display=False) as counter:
                    run()
                stages[label, name] = {"run": run, "context": context, "flops": counter.get_total_flops(),
                                       "times": []}
    with torch.inference_mode():
        for _ in tqdm_range(reps, f"profile {device.type} {size[0]}x{size[1]}"):
            for stage in stages.values():
                def run(s=stage):
                    with s["context"]():
                        s["run"]()
                stage["times"].append(_timed(run, device))
    rows = []
    for (label, name), stage in stages.items():
        t = statistics.median(stage["times"])
        rows.append({"model": label, "module": name, "size": list(size), "time_ms": 1e3 * t,
                     "gflop": stage["flops"] / 1e9, "gflops": stage["flops"] / t / 1e9,
                     "peak_fraction": stage["flops"] / t / 1e9 / peak["gflops"], "reps": reps})
    for row in rows:
        total = sum(r["time_ms"] for r in rows if r["model"] == row["model"])
        row["share"] = row["time_ms"] / total
    return rows


# --- bench infer: the report ----------------------------------------------------------------------

def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _infer_report(dev_name: str, peak: dict, amp: bool, rows: list[dict], ratios: list[dict],
                  lite_gflop_hd: float, ort: bool, profiles: list[dict]) -> str:
    head = (f"bench infer on {dev_name}{' (bf16 autocast)' if amp else ' (float32)'}: one `step` (B=1) with a "
            f"warm recurrent state; median of {rows[0]['reps'] if rows else 0}+ repetitions, all cases "
            f"interleaved. Peak = {peak['n']}x{peak['n']} {peak['dtype']} matmul, {peak['gflops']:.0f} GFLOP/s "
            f"(median of {peak['reps']}, timed in the same loop"
            + (f", {torch.get_num_threads()} threads" if dev_name == "cpu" else "")
            + "). FLOPs: convolutions and matmuls (FlopCounterMode). lite = model.size=lite"
            + (f"; '{ORT}' rows: the graph of `batman export-model` run by onnxruntime with as many threads."
               if ort else "" if dev_name != "cpu" else f"; no {ORT} rows: pip install 'batman[onnx]'."))
    fmts = [f for f in (*FORMATS, ORT) if any(f in r["time_ms"] for r in rows)]
    table = markdown_table(
        ["input", "model", "params (M)", "GFLOP/frame", *[f"{f} (ms)" for f in fmts], "best", "frames/s",
         "GFLOP/s", "% of peak"],
        [[f"4x{r['size'][0]}x{r['size'][1]}", r["model"], f"{r['params'] / 1e6:.2f}", f"{r['gflop_per_frame']:.1f}",
          *[f"{r['time_ms'][f]:.1f}" if f in r["time_ms"] else "-" for f in fmts], r["best_format"],
          f"{1e3 / r['best_time_ms']:.2f}", f"{r['gflops']:.1f}", f"{100 * r['peak_fraction']:.0f}%"] for r in rows])
    verdicts = [f"- lite: {lite_gflop_hd:.1f} GFLOP per 1280x720 frame (target <= {TARGET_LITE_GFLOP_720P:g}: "
                f"{_verdict(lite_gflop_hd <= TARGET_LITE_GFLOP_720P)}; EMVD 5.4)"]
    for r in ratios:
        size = f"4x{r['size'][0]}x{r['size'][1]}"
        line = f"- {size} {r['model']}: time / unet = {r['ratio']:.2f}"
        if r["model"] == "clstm":
            line += (f" (target <= {TARGET_INFER_RATIO}: {_verdict(r['ratio'] <= TARGET_INFER_RATIO)}), "
                     f"{100 * r['peak_fraction']:.0f}% of the matmul rate (target >= {100 * TARGET_PEAK_FRACTION:.0f}%: "
                     f"{_verdict(r['peak_fraction'] >= TARGET_PEAK_FRACTION)})")
        elif r["model"] == "lite":
            line += (f", time / clstm = {r['ratio_to_clstm']:.2f}, {100 * r['peak_fraction']:.0f}% of the matmul "
                     f"rate (target >= {100 * TARGET_LITE_PEAK_FRACTION:.0f}%: "
                     f"{_verdict(r['peak_fraction'] >= TARGET_LITE_PEAK_FRACTION)})")
        elif r["ratio_to_clstm"] is not None:
            line += f", time / clstm = {r['ratio_to_clstm']:.2f}"
        verdicts.append(line)
    parts = [head, "", table, "", "Each model at its best format:"] + verdicts
    if profiles:
        size = profiles[0]["size"]
        parts += ["", f"Where the time goes at 4x{size[0]}x{size[1]} (channels_last, each part on its own inputs, "
                      f"median of {profiles[0]['reps']}, parts interleaved):", "",
                  markdown_table(["model", "module", "ms", "share of step", "GFLOP", "GFLOP/s", "% of peak"],
                                 [[r["model"], r["module"], f"{r['time_ms']:.1f}", f"{100 * r['share']:.0f}%",
                                   f"{r['gflop']:.2f}", f"{r['gflops']:.1f}", f"{100 * r['peak_fraction']:.0f}%"]
                                  for r in profiles])]
    return "\n".join(parts)


def tqdm_range(n: int, desc: str):
    from tqdm import tqdm
    return tqdm(range(n), desc=desc, leave=False, disable=None)


# --- bench export ------------------------------------------------------------------------------

# The worker forks first: Linux carries a process's peak RSS (ru_maxrss) across exec, so a process spawned
# by this (large) one would report our peak; a child forked from the freshly started interpreter starts small.
_WORKER = "\n".join([
    "import os, sys",
    "pid = os.fork()",
    "if pid:",
    "    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))",
    "import json",
    "from batman.bench import _export_worker",
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
    import batman.evaluate  # noqa: F401  (export_video imports it on its first call: not per-frame work)
    from batman.data.drv import load_video
    from batman.export import Enhancer, export_video
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
    if job["kind"] in ("export", "cached"):
        from batman.data.cache import find_cache
        cache = find_cache(job["root"]) if job["kind"] == "cached" else None
        start = time.perf_counter()
        export_video(net, cfg, video, Path(job["out"]), frames=n, device=device, cache=cache)
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

    lengths = lengths or ((4, 8, 16) if quick else (8, 32, 128))
    size = size or ((256, 384) if quick else (512, 768))  # Bayer mosaic; the model's input is a quarter per side
    reps = reps or (1 if quick else 3)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    grid = (size[0] // 4, size[1] // 4)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="batman-bench-export-") as tmp:
        root = Path(tmp) / "drv"
        synthesize(root, videos=1, frames=max(lengths), size=size, seed=QUALITY_SEED + 1)
        prepare(root, workers=1)
        jobs = [("export", n) for n in lengths] + [("cached", max(lengths)), ("model", max(lengths))]
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
    rss_ratio = med[f"export {longest}"]["peak_rss_bytes"] / med[f"export {shortest}"]["peak_rss_bytes"]
    rows = [[k.split()[0], k.split()[1], f"{v['fps']:.2f}", f"{v['peak_rss_bytes'] / 2 ** 20:.0f}",
             f"{v['vm_hwm_bytes'] / 2 ** 20:.0f}"] for k, v in med.items()]
    report = "\n".join([
        f"bench export on {device}: clstm (fresh weights), synthetic static video, model input 4x{grid[0]}x{grid[1]} "
        f"(Bayer {size[0]}x{size[1]}); each run in its own process (peak RSS = ru_maxrss; VmHWM beside it as a "
        f"check), median of {reps} interleaved repetitions. Export = export_video: decode + enhance + PNG + H.264; "
        f"cached = the same export reading the prepared cache instead of decoding raw files; model only = the "
        f"Enhancer on the same frames decoded into memory beforehand. All warm the model on one frame and import "
        f"their modules before the clock starts.", "",
        markdown_table(["kind", "frames", "frames/s", "peak RSS (MiB)", "VmHWM (MiB)"], rows), "",
        f"- export fps / model-only fps at T={longest}: {fps_ratio:.2f} (target >= {TARGET_EXPORT_FPS_RATIO}: "
        f"{'met' if fps_ratio >= TARGET_EXPORT_FPS_RATIO else 'MISSED'}); from the prepared cache: {cached_ratio:.2f}",
        f"- peak RSS T={longest} / T={shortest}: {rss_ratio:.3f} (target <= {TARGET_RSS_RATIO}: "
        f"{'met' if rss_ratio <= TARGET_RSS_RATIO else 'MISSED'})"])
    print(report)
    result = {"machine": machine_info(), "device": device, "grid": list(grid), "bayer": list(size), "reps": reps,
              "runs": runs, "median": med, "fps_ratio": fps_ratio, "cached_fps_ratio": cached_ratio, "rss_ratio": rss_ratio, "report": report}
    if out is not None:
        write_json(Path(out) / "export.json", result)
    return result


# --- bench data --------------------------------------------------------------------------------

def bench_data(out: Path | None = None, quick: bool = False) -> dict:
    """Clips/s read from the prepared cache vs decoded from the raws (batman.data.cache.bench_data).

    Quick uses 1024x1536 mosaics: the default 256x256 crop does not fit a smaller input grid.
    """
    from batman.data.cache import bench_data as run

    kwargs = dict(size=(1024, 1536), clips=4, reps=3) if quick else dict(size=(2048, 3072), clips=8, reps=5)
    result = run(**kwargs)
    report = "\n".join([
        f"bench data: {result['clips']} training clips of {result['frames']} frames, crop {tuple(result['crop'])}, "
        f"Bayer {result['size'][0]}x{result['size'][1]} DNG, median of {result['reps']} interleaved repetitions "
        f"(cold = page cache dropped first)", "",
        markdown_table(["pages", "cache (clips/s)", "decode (clips/s)", "cache / decode"],
                       [[k, f"{result[f'cache_{k}']:.1f}", f"{result[f'decode_{k}']:.1f}",
                         f"{result[f'speedup_{k}']:.1f}x"] for k in ("warm", "cold")])])
    print(report)
    result = {"machine": machine_info(), **result, "report": report}
    if out is not None:
        write_json(Path(out) / "data.json", result)
    return result


# --- bench memory ------------------------------------------------------------------------------

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


def _random_batch(cfg: Config, batch: int, frames: int, device) -> dict:
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
            model(_random_batch(cfg, 1, frames, "cpu")["input"], None)
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
        train_step(model, _random_batch(cfg, 1, n, "cpu"), opt, None, probe, torch.device("cpu"), None)
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
    batch = _random_batch(cfg, cfg.train.batch, cfg.data.frames, device)
    result = {"device": torch.cuda.get_device_name(device), "dtype": str(amp_dtype or "float32").replace("torch.", "")}
    try:
        times = [_timed(lambda: train_step(model, batch, opt, scaler, cfg, device, amp_dtype), device)
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


# --- bench quality -----------------------------------------------------------------------------

QUALITY_DATA = dict(videos=12, frames=12, size=(512, 768), seed=QUALITY_SEED, dynamic=2)
QUALITY_TRAIN = {"train.steps_per_epoch": 20, "train.epochs": 6, "train.lr": 1e-3, "train.val_clips": 2}
QUALITY_MODELS = {"clstm": {"model.name": "clstm"}, "conv3d": {"model.name": "conv3d"},  # run name -> overrides
                  "unet": {"model.name": "unet"}, "lite": {"model.size": "lite"}}
TARGET_LITE_PSNR_GAP_DB = 1.5         # lite's static PSNR at most this far below the default clstm's


def bench_quality(out: Path, quick: bool = False, device: str | None = None) -> dict:
    """Train clstm, conv3d, unet and lite alike (cpu preset, QUALITY_TRAIN) on a synthetic set of its own seed and
    evaluate each on its test split and its dynamic videos against the traditional pipeline and the
    temporal mean. Writes quality.json, quality.md and quality.png (crops side by side)."""
    from batman.ckpt import best_checkpoint
    from batman.data.synth import synthesize
    from batman.evaluate import evaluate
    from batman.train import train

    out = Path(out) / "quality"
    data_spec = dict(QUALITY_DATA, videos=6, frames=8) if quick else QUALITY_DATA
    train_spec = dict(QUALITY_TRAIN, **{"train.steps_per_epoch": 2, "train.epochs": 1}) if quick else QUALITY_TRAIN
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    synthesize(data, **data_spec)
    checkpoints, training = {}, {}
    for name, overrides in QUALITY_MODELS.items():
        run = out / name
        if run.exists():
            shutil.rmtree(run)  # stale checkpoints of an earlier run would be picked as the best
        cfg = make_config("cpu", {"data.root": str(data), **overrides, **train_spec})
        start = time.perf_counter()
        summary = train(cfg, out=run, device=device)
        best = min(summary["history"], key=lambda h: h["val_loss"])  # the checkpoint evaluated below
        training[name] = {"time_s": time.perf_counter() - start, "best_val_loss": summary["best"],
                          "epochs": summary["epochs"], "steps": summary["history"][-1]["step"],
                          "best_epoch": best["epoch"], "val_psnr": best["val_psnr"]}
        checkpoints[name] = best_checkpoint(run)
    reports = {}
    for split in ("test", "dynamic"):
        reports[split] = evaluate(data, model=checkpoints["clstm"],
                                  baselines=[checkpoints[name] for name in QUALITY_MODELS if name != "clstm"],
                                  split=split, out=out / split, device="cpu")
    figure = out.parent / "quality.png"
    quality_figure(data, checkpoints, figure)
    cfg = make_config("cpu", train_spec)
    lines = [f"bench quality: synthetic set seed {QUALITY_SEED} ({data_spec['videos']} static videos split "
             f"train/val/test, {data_spec['dynamic']} dynamic; {data_spec['frames']} frames; Bayer "
             f"{data_spec['size'][0]}x{data_spec['size'][1]} -> input {data_spec['size'][0] // 4}x"
             f"{data_spec['size'][1] // 4}). Each model trained alike: cpu preset (crop {cfg.data.crop}, "
             f"T={cfg.data.frames}, B={cfg.train.batch}) with "
             + ", ".join(f"{k}={v}" for k, v in train_spec.items())
             + " (lr 1e-3 as the demo: the runs are short). Evaluated on every frame of the full input grid; "
             "MABD error x1e3, lower is better.", ""]
    rows = []
    for split, report in reports.items():
        for method, s in report["mean"].items():
            rows.append([split, method, f"{s['psnr']:.2f}", f"{s['ssim']:.4f}", f"{s['mabd_error_e3']:.4f}"])
    lines.append(markdown_table(["split", "method", "PSNR (dB)", "SSIM", "MABD error (x1e3)"], rows))
    lines += ["", *quality_verdicts(reports)]
    lines += ["", markdown_table(["model", "train time (s)", "steps", "best epoch (evaluated)", "its val PSNR (dB)"],
                                 [[k, f"{v['time_s']:.0f}", v["steps"], f"{v['best_epoch']} of {v['epochs']}",
                                   f"{v['val_psnr']:.2f}"] for k, v in training.items()]),
              "", f"Figure: {figure.name} (rows: a test video and a dynamic video, last frame)"]
    text = "\n".join(lines)
    print(text)
    result = {"machine": machine_info(), "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data_spec.items()},
              "train": train_spec, "training": training,
              "splits": {split: {"mean": r["mean"], "videos": r["videos"]} for split, r in reports.items()},
              "figure": str(figure), "report": text}
    write_json(out.parent / "quality.json", result)
    atomic_write_text(out.parent / "quality.md", text + "\n")
    return result


def quality_verdicts(reports: dict) -> list[str]:
    """The issue's quality targets, each as a measured margin with met / MISSED."""
    static, dynamic = reports["test"]["mean"], reports["dynamic"]["mean"]

    def gain(table, method):  # clstm's PSNR above `method`'s
        return table["clstm"]["psnr"] - table[method]["psnr"]

    def mabd_gain(table):  # how much lower clstm's MABD error is than the U-Net's
        return table["unet"]["mabd_error_e3"] - table["clstm"]["mabd_error_e3"]

    checks = [("static: clstm PSNR - traditional", gain(static, "traditional"), ">=", 6.0, "dB"),
              ("static: clstm PSNR - temporal mean", gain(static, "temporal mean"), ">=", 2.0, "dB"),
              ("static: clstm PSNR - unet", gain(static, "unet"), ">=", 0.0, "dB"),
              ("dynamic: clstm PSNR - unet (ghosting would make it negative)", gain(dynamic, "unet"), ">=", 0.0, "dB"),
              ("static: unet MABD error - clstm's", mabd_gain(static), ">", 0.0, "x1e-3"),
              ("dynamic: unet MABD error - clstm's", mabd_gain(dynamic), ">", 0.0, "x1e-3")]
    if "lite" in static:
        checks.append(("static: lite PSNR - clstm", -gain(static, "lite"), ">=", -TARGET_LITE_PSNR_GAP_DB, "dB"))
    return [f"- {label}: {value:+.2f} {unit} (target {op} {need:g}: "
            f"{'met' if (value >= need if op == '>=' else value > need) else 'MISSED'})"
            for label, value, op, need, unit in checks]


def quality_figure(root: Path, checkpoints: dict, path: Path, crop: int = 128) -> None:
    """Last frame of the first test and first dynamic video: traditional | temporal mean | clstm | unet | truth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from batman.ckpt import load_model
    from batman.data.dataset import iter_frames, load_targets
    from batman.data.drv import load_split
    from batman.evaluate import baseline_isp
    from batman.export import Enhancer
    from batman.files import atomic_path

    nets = {name: load_model(checkpoints[name], "cpu") for name in ("clstm", "unet")}
    cfg = nets["clstm"][1]
    videos = [load_split(root, "test", cfg.data.mode)[0], load_split(root, "dynamic", cfg.data.mode)[0]]
    titles = ["traditional", "temporal mean", "clstm", "unet", "truth"]
    fig, axes = plt.subplots(len(videos), len(titles), figsize=(3 * len(titles), 3 * len(videos)), squeeze=False)
    for row, video in zip(axes, videos):
        isp = baseline_isp(video, cfg)
        enhancers = {name: Enhancer(net, c.model.scale, "cpu") for name, (net, c) in nets.items()}
        total, outputs, n = None, {}, len(video.frames)
        for i, (frame, target) in enumerate(zip(iter_frames(video, cfg.data), load_targets(video, n))):
            total = frame.astype(np.float64) if total is None else total + frame
            for name, enhancer in enhancers.items():
                outputs[name] = enhancer(frame)
            if i == n - 1:
                panels = [isp.process(frame), isp.process((total / n).astype(np.float32)),
                          outputs["clstm"], outputs["unet"], target]
        h, w = panels[0].shape[:2]
        y0, x0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        for ax, panel, title in zip(row, panels, titles):
            ax.imshow(np.clip(panel[y0:y0 + crop, x0:x0 + crop], 0, 1), interpolation="nearest")
            ax.set_title(f"{title} ({video.id})", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# --- entry point -------------------------------------------------------------------------------

PARTS = ("infer", "export", "data", "memory", "quality")


def run_bench(what: str, out: str | Path = "result/bench", preset: str = "", quick: bool = False,
              device: str | None = None) -> dict:
    """`batman bench WHAT`: one part, or all of them (then OUT/bench.md holds every table).

    `device` (cpu, cuda, cuda:N; None or auto: inference on the CPU and CUDA when there is one, the rest
    on CUDA when available) is where the parts run; bench data reads on the CPU whatever it is."""
    from batman.ckpt import resolve_device

    chosen = None if device in (None, "auto") else resolve_device(device)
    if chosen is not None and chosen.type == "cuda":
        torch.cuda.set_device(chosen.index or 0)  # the parts' plain "cuda" now means this device
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if what not in PARTS + ("all",):
        raise BatmanError(f"bench: unknown part {what!r}; choose one of {', '.join(PARTS)}, all")
    if preset and preset not in PRESETS:
        raise BatmanError(f"bench: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    parts = PARTS if what == "all" else (what,)
    results, times, cpu = {}, {}, {}
    load = os.getloadavg()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for part in parts:
        t0, c0 = time.perf_counter(), cpu_seconds()
        if part == "memory":
            results[part] = bench_memory(out, preset=preset, quick=quick, device=chosen and chosen.type)
        elif part == "quality":
            results[part] = bench_quality(out, quick=quick, device=chosen and str(chosen))
        elif part == "infer":
            results[part] = bench_infer(out, quick=quick, devices=chosen and (str(chosen),))
        elif part == "export":
            results[part] = bench_export(out, quick=quick, device=chosen and str(chosen))
        else:
            results[part] = bench_data(out, quick=quick)
        times[part], cpu[part] = time.perf_counter() - t0, cpu_seconds() - c0
        print(f"[bench {part}: {times[part]:.0f} s wall, {cpu[part]:.0f} s of CPU time]\n", flush=True)
    if what == "all":
        info = machine_info()
        total = time.perf_counter() - start
        text = [f"# batman bench all ({info['date']})", "",
                f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} with {info['threads']} threads"
                + (f"; {info['cuda_device']}" if "cuda_device" in info else "")
                + f". Load average at the start {load[0]:.2f}, at the end {info['load_average'][0]:.2f}.",
                f"Wall time: {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + "); "
                f"CPU time (this process and its workers, user + system): {(cpu_seconds() - cpu_start) / 60:.1f} min ("
                + ", ".join(f"{k} {v:.0f} s" for k, v in cpu.items()) + ").", ""]
        for part in parts:
            text += [f"## {part}", "", results[part]["report"], ""]
        atomic_write_text(out / "bench.md", "\n".join(text))
        print(f"bench all: {total / 60:.1f} min wall, {(cpu_seconds() - cpu_start) / 60:.1f} min of CPU time; "
              f"tables in {out / 'bench.md'}")
    return results
