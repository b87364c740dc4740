"""The speed and memory targets of issue 15, each with its measured value and met / MISSED, from the results
of the other parts (`bench all` prints them last; a part that was not run reads "not measured").

The quality targets are judged where they are measured, in `bench quality`'s own verdicts.
"""
from __future__ import annotations

from batman.bench.common import DRV_GRID
from batman.bench.export import TARGET_EXPORT_FPS_RATIO, TARGET_RSS_RATIO
from batman.bench.infer import (FULL_HD_GRID, HD_GRID, TARGET_INFER_RATIO, TARGET_LITE_GFLOP_720P,
                                TARGET_LITE_PEAK_FRACTION, TARGET_PEAK_FRACTION)

TARGET_GPU_DEFAULT_FPS = 100.0        # clstm, bf16, DRV's grid, on a lent GPU
TARGET_GPU_LITE_FPS = 60.0            # lite, bf16, 1080p output


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _row(rows: list[dict], model: str, size: tuple[int, int]) -> dict | None:
    return next((r for r in rows if r["model"] == model and tuple(r["size"]) == tuple(size)), None)


def _infer_lines(infer: dict | None) -> list[str]:
    if infer is None:
        return ["- CPU inference targets: not measured (bench infer not run)"]
    cpu = infer["devices"].get("cpu")
    lines = []
    if cpu is None:
        lines.append("- CPU inference targets: not measured (bench infer ran on CUDA only)")
    else:
        ratio = next((r for r in cpu["ratios_to_unet"] if r["model"] == "clstm" and tuple(r["size"]) == DRV_GRID), None)
        clstm, lite_hd = _row(cpu["rows"], "clstm", DRV_GRID), _row(cpu["rows"], "lite", HD_GRID)
        grid = f"{DRV_GRID[0]}x{DRV_GRID[1]}"
        if ratio is None or clstm is None:
            lines.append(f"- clstm time / unet at {grid}: not measured (bench infer --quick has no DRV grid)")
        else:
            lines += [f"- clstm time / unet time at {grid} (CPU): {ratio['ratio']:.2f} (target <= {TARGET_INFER_RATIO}: "
                      f"{_verdict(ratio['ratio'] <= TARGET_INFER_RATIO)})",
                      f"- clstm FLOP rate at {grid} (CPU): {100 * clstm['peak_fraction']:.0f}% of the matmul rate "
                      f"(target >= {100 * TARGET_PEAK_FRACTION:.0f}%: {_verdict(clstm['peak_fraction'] >= TARGET_PEAK_FRACTION)})"]
        gflop = cpu["lite_gflop_720p"]
        lines.append(f"- lite GFLOP per 1280x720 frame: {gflop:.1f} (target <= {TARGET_LITE_GFLOP_720P:g}: "
                     f"{_verdict(gflop <= TARGET_LITE_GFLOP_720P)})")
        if lite_hd is None:
            lines.append("- lite FLOP rate and frames/s at 1280x720 (CPU): not measured (bench infer --quick)")
        else:
            lines += [f"- lite FLOP rate at 1280x720 (CPU): {100 * lite_hd['peak_fraction']:.0f}% of the matmul rate "
                      f"(target >= {100 * TARGET_LITE_PEAK_FRACTION:.0f}%: "
                      f"{_verdict(lite_hd['peak_fraction'] >= TARGET_LITE_PEAK_FRACTION)})",
                      f"- lite frames/s at 1280x720 (CPU, {infer['machine']['threads']} threads, "
                      f"{lite_hd['best_format']}): {1e3 / lite_hd['best_time_ms']:.2f} (reported, no target)"]
    cuda = next((v for k, v in infer["devices"].items() if k.startswith("cuda")), None)
    clstm_gpu = _row(cuda["rows"], "clstm", DRV_GRID) if cuda else None
    lite_gpu = _row(cuda["rows"], "lite", FULL_HD_GRID) if cuda else None
    for row, name, size, target in ((clstm_gpu, "default (clstm)", DRV_GRID, TARGET_GPU_DEFAULT_FPS),
                                    (lite_gpu, "lite", FULL_HD_GRID, TARGET_GPU_LITE_FPS)):
        what = f"- GPU: {name} bf16 frames/s at {size[0]}x{size[1]}"
        if row is None:
            lines.append(f"{what}: not measured: no CUDA device" if cuda is None else f"{what}: not measured (--quick)")
        else:
            fps = 1e3 / row["best_time_ms"]
            lines.append(f"{what} ({infer['machine'].get('cuda_device', 'CUDA')}): {fps:.1f} (target >= {target:g}: "
                         f"{_verdict(fps >= target)})")
    return lines


def _export_lines(export: dict | None) -> list[str]:
    if export is None:
        return ["- export fps / model-only fps and peak RSS ratio: not measured (bench export not run)"]
    longest, shortest = max(export["lengths"]), min(export["lengths"])
    return [f"- export frames/s / model-only frames/s at T={longest}: {export['fps_ratio']:.2f} "
            f"(target >= {TARGET_EXPORT_FPS_RATIO}: {_verdict(export['fps_ratio'] >= TARGET_EXPORT_FPS_RATIO)})",
            f"- peak RSS T={longest} / T={shortest}: {export['rss_ratio']:.3f} "
            f"(target <= {TARGET_RSS_RATIO}: {_verdict(export['rss_ratio'] <= TARGET_RSS_RATIO)})"]


def _memory_lines(memory: dict | None) -> list[str]:
    if memory is None:
        return ["- training memory per preset: not measured (bench memory not run)"]
    lines = []
    how = "measured on CUDA" if memory["device"] == "cuda" else "counted on the CPU, float32"
    for name, r in memory["presets"].items():
        if r["budget_gb"] is None:
            continue
        total = r["total_bytes"] / 1e9
        fits = total <= r["budget_gb"]  # NaN (out of memory) does not fit
        lines.append(f"- training memory, preset {name} ({how}{', QUICK crop' if memory['quick'] else ''}): "
                     f"{'OOM' if r.get('oom') else f'{total:.2f} GB'} (target <= {r['budget_gb']:g} GB: {_verdict(fits)})")
    return lines


def targets_report(results: dict) -> str:
    """Every issue-15 target of the parts in `results` (part name -> that part's result dict)."""
    lines = ["Issue 15 targets (each ratio from one run, its sides timed interleaved):", ""]
    lines += _infer_lines(results.get("infer"))
    lines += _export_lines(results.get("export"))
    lines += _memory_lines(results.get("memory"))
    return "\n".join(lines)
