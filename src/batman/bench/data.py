"""`batman bench data`: training clips/s from the prepared cache vs decoding the raws."""
from __future__ import annotations

from pathlib import Path

from batman.bench.common import machine_info, markdown_table, write_json


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

