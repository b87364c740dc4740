"""`make demo`: the whole workflow on synthetic data, no data set needed, a few CPU minutes.

synthesise a small DRV-layout set -> train the CLSTM model and the U-Net baseline (demo preset) ->
evaluate both against the traditional pipeline and the temporal mean, on the static test videos and on the
moving ones (whole-frame and moving-region PSNR) -> export side-by-side videos.
"""
from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from batman.config import make_config

DEMO_DATA = dict(videos=10, frames=12, size=(384, 576), seed=0, dynamic=2)


def run_demo(out: str | Path = "result/demo", models: tuple[str, ...] = ("clstm", "unet"), overrides=None) -> dict:
    from batman.ckpt import best_checkpoint
    from batman.data.cache import prepare
    from batman.data.synth import synthesize
    from batman.evaluate import evaluate
    from batman.export import export

    out = Path(out)
    data = out / "data"
    t0 = time.perf_counter()
    if not (data / "test_list.txt").exists():
        tqdm.write(f"[1/4] synthesising a dark raw video data set into {data} and caching its frames")
        synthesize(data, **DEMO_DATA)
    prepare(data)  # decode every frame once: training then reads memory-mapped arrays
    checkpoints = {}
    for name in models:
        tqdm.write(f"[2/4] training {name} (demo preset) into {out / name}")
        cfg = make_config("demo", {"data.root": str(data), "model.name": name, **(overrides or {})})
        from batman.train import train
        train(cfg, out=out / name, resume="auto")
        checkpoints[name] = best_checkpoint(out / name)
    tqdm.write("[3/4] evaluating against the traditional pipeline and the temporal mean")
    report = evaluate(data, model=checkpoints[models[0]], baselines=[checkpoints[m] for m in models[1:]],
                      split="test", out=out)
    evaluate(data, model=checkpoints[models[0]], baselines=[checkpoints[m] for m in models[1:]],
             split="dynamic", out=out / "dynamic")
    tqdm.write("[4/4] exporting side-by-side videos (input | output | ground truth)")
    export(root=data, model=checkpoints[models[0]], out=out, split="test", side_by_side=True)
    export(root=data, model=checkpoints[models[0]], out=out, split="dynamic", side_by_side=True)
    minutes = (time.perf_counter() - t0) / 60
    tqdm.write(f"\ndemo finished in {minutes:.1f} min. Look at:\n"
               f"  {out / 'metrics.md'} (table), {out / 'metrics.png'} (plot); moving videos: "
               f"{out / 'dynamic' / 'metrics.md'}, {out / 'dynamic'}/ghosting_*.png\n"
               f"  {out / models[0] / 'loss.png'} (training curves)\n"
               f"  {out / 'video'}/*_side_by_side.mp4 (input | output | truth), {out / 'frames'}/ (PNG)")
    return report
