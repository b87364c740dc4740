"""`batman bench infer`: per-frame time, FLOPs and FLOP rate of clstm / conv3d / unet / lite (vs a matmul
peak), onnxruntime rows, and where the time goes per module."""
from __future__ import annotations

import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from batman.bench.common import DRV_GRID, IN_CHANNELS, MatmulPeak, machine_info, timed, tqdm_range, write_json
from batman.config import Config, make_config
from batman.report import markdown_table

TARGET_INFER_RATIO = 0.4              # clstm time / unet time on the same input (issue 15; was 0.25)
TARGET_PEAK_FRACTION = 0.60           # clstm GFLOP/s / matmul GFLOP/s
TARGET_LITE_GFLOP_720P = 15.0         # model.size=lite, GFLOP per 1280x720 output frame (EMVD: 5.4)
TARGET_LITE_PEAK_FRACTION = 0.50      # lite GFLOP/s / matmul GFLOP/s

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
HD_MODELS = ("clstm", "unet", "lite")  # the models also timed at 720p (and at 1080p on CUDA)
FULL_HD_GRID = (1080, 1920)           # 1920x1080: the GPU target of the lite model
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


def infer_case(label: str, fmt: str, size: tuple[int, int], device: torch.device, amp: bool):
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
    context = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext

    def step(state):
        with context():
            return model.step(frame, state)[1]

    return model, frame, step, context


def infer_cases(size: tuple[int, int], quick: bool, ort: bool) -> list[tuple[str, str]]:
    """(row label, format) of every case timed at `size`."""
    labels = list(BOTH_FORMATS) if quick else list(HD_MODELS) if size in (HD_GRID, FULL_HD_GRID) else list(INFER_MODELS)
    cases = [(label, fmt) for label in labels for fmt in (FORMATS if label in BOTH_FORMATS else ("channels_last",))]
    return cases + [(f"{label} {ORT}", ORT) for label in ONNX_MODELS if ort and label in labels]


def bench_infer(out: Path | None = None, quick: bool = False, devices: tuple[str, ...] | None = None,
                sizes: list[tuple[int, int]] | None = None, reps: int | None = None,
                profile: bool = True, cpu_bf16: bool = False) -> dict:
    """Per-frame time of every model in INFER_MODELS on the same input, both memory formats (and the ONNX
    export through onnxruntime on the CPU), interleaved; then the per-module profile at DRV's grid.
    CUDA runs under bf16 autocast; the CPU too with `cpu_bf16` (`export --bf16`; the onnxruntime rows stay float32).

    Each repetition times one matmul (the peak) and one `step` of every case in turn; medians over the
    repetitions are reported.
    """
    devices = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    sizes = sizes or ([(128, 192)] if quick else [(256, 384), DRV_GRID, HD_GRID])
    result = {"machine": machine_info(), "quick": quick, "devices": {}}
    text = []
    for dev_name in devices:
        device = torch.device(dev_name)
        amp = device.type == "cuda" or cpu_bf16
        ort = device.type == "cpu" and onnxruntime_available()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        matmul = MatmulPeak(device, bf16=amp)
        dev_rows = []
        dev_sizes = sizes + [FULL_HD_GRID] if device.type == "cuda" and not quick else sizes
        for size in dev_sizes:
            n_reps = reps or (3 if quick or (device.type == "cpu" and size[0] * size[1] > 5e5) else 5)
            if device.type == "cuda":
                n_reps = reps or 20
            cases = {}
            for label, fmt in infer_cases(size, quick, ort):
                model, frame, step, context = infer_case(label.removesuffix(f" {ORT}"), fmt, size, device, amp)
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
                        case["times"].append(timed(lambda c=case: _advance(c), device))
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
        model, frame, step, context = infer_case(label, "channels_last", size, device, amp)
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
                stage["times"].append(timed(run, device))
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

