"""The `batman` command line: each subcommand parses its arguments, builds a Config and calls one function.

Heavy modules (torch, rawpy) are imported inside the handlers so that `--help` is instant.
A BatmanError prints one line and exits with code 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from batman.config import BatmanError, PRESETS, make_config, parse_set


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x768, got {text!r}")
    return h, w


def _config(args):
    overrides = parse_set(getattr(args, "set", None) or [])
    if getattr(args, "root", None):
        overrides.setdefault("data.root", str(args.root))
    return make_config(getattr(args, "preset", "") or "", overrides)


# --- handlers -------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    from batman.data.raw import raw_info, read_raw
    for path in args.files:
        info = raw_info(read_raw(path))
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{path}: {info['make']} {info['model']}, {info['pattern']}, "
                  f"{info['width']}x{info['height']}, black {info['black']}, white {info['white']}, "
                  f"exposure {info['exposure_s']} s")
    return 0


def cmd_synth(args) -> int:
    from batman.data.synth import synthesize
    synthesize(args.out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
               images=args.images, dynamic=args.dynamic, ratio=tuple(args.ratio))
    return 0


def cmd_download(args) -> int:
    from batman.data.download import download
    download(args.root, parts=args.parts, url_base=args.url_base, keep_zips=args.keep_zips)
    return 0


def cmd_prepare(args) -> int:
    from batman.data.cache import prepare
    prepare(args.root, cache=args.cache, workers=args.workers, skip_bad=args.skip_bad)
    return 0


def cmd_train(args) -> int:
    cfg = _config(args)
    from batman.train import train
    train(cfg, out=args.out, resume=args.resume)
    return 0


def cmd_evaluate(args) -> int:
    from batman.evaluate import evaluate
    evaluate(args.root, model=args.model, split=args.split, frames=args.frames, out=args.out,
             baselines=args.compare, videos=args.videos)
    return 0


def cmd_export(args) -> int:
    from batman.export import export
    export(root=args.root, input_folder=args.input, model=args.model, out=args.out, split=args.split,
           videos=args.videos, tile=args.tile, overlap=args.overlap, side_by_side=args.side_by_side,
           fps=args.fps, frames=args.frames)
    return 0


def cmd_demo(args) -> int:
    from batman.demo import run_demo
    run_demo(args.out)
    return 0


def cmd_models(args) -> int:
    cfg = _config(args)
    from batman.model.net import describe_models
    print(describe_models(cfg))
    return 0


def cmd_export_model(args) -> int:
    from batman.deploy import export_model
    export_model(args.model, args.out, fmt=args.format, lite=args.lite)
    return 0


def cmd_bench(args) -> int:
    from batman.bench import run_bench
    run_bench(args.what, out=args.out, preset=args.preset, quick=args.quick)
    return 0


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batman", description="See motion in the dark: low-light RAW video "
                                "to clean sRGB video (DRV / Seeing Motion in the Dark).")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    def add_config_args(sp, preset_default=""):
        sp.add_argument("--preset", default=preset_default, choices=sorted(PRESETS),
                        help="named settings sized to the hardware")
        sp.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. model.hidden=96 train.lr=3e-4")

    sp = add("inspect", cmd_inspect, "print the Bayer pattern, levels, size and exposure of raw files")
    sp.add_argument("files", nargs="+", type=Path)
    sp.add_argument("--json", action="store_true", help="one JSON object per file")

    sp = add("synth", cmd_synth, "write a synthetic dark raw video data set in the DRV layout")
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--videos", type=int, default=6, help="static videos")
    sp.add_argument("--frames", type=int, default=16)
    sp.add_argument("--size", type=_size, default=(512, 768), help="Bayer mosaic HxW (ground truth: H/4 x W/4)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--images", type=Path, default=None, help="folder of clean photos (default: skimage's)")
    sp.add_argument("--dynamic", type=int, default=0, help="extra videos with motion and per-frame truth")
    sp.add_argument("--ratio", type=float, nargs=2, default=(50.0, 300.0), metavar=("LO", "HI"),
                    help="darkening ratio range (the gain the model must undo)")

    sp = add("download", cmd_download, "download and extract DRV (resumable, verified, safe)")
    sp.add_argument("--root", required=True, type=Path)
    sp.add_argument("--parts", default="raw", help="raw | preprocessed | all | comma list (long,short1,...)")
    sp.add_argument("--url-base", default="https://storage.googleapis.com/isl-datasets/DRV")
    sp.add_argument("--keep-zips", action="store_true", help="keep the archives after extraction")

    sp = add("prepare", cmd_prepare, "decode every raw frame once into a memory-mapped cache")
    sp.add_argument("--root", required=True, type=Path)
    sp.add_argument("--cache", type=Path, default=None, help="cache folder (default: ROOT/cache)")
    sp.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    sp.add_argument("--skip-bad", action="store_true", help="list corrupt frames and leave them out")

    sp = add("train", cmd_train, "train a model (resumable; torchrun for several GPUs)")
    sp.add_argument("--root", required=True, type=Path)
    add_config_args(sp, "cpu")
    sp.add_argument("--resume", default=None, help="PATH to a checkpoint, or 'auto' for OUT/last.pt")
    sp.add_argument("--out", type=Path, default=Path("trained_model"))

    sp = add("evaluate", cmd_evaluate, "PSNR/SSIM/MABD of a checkpoint and the baselines")
    sp.add_argument("--root", required=True, type=Path)
    sp.add_argument("--model", type=Path, default=None, help="checkpoint (default: best in trained_model/)")
    sp.add_argument("--compare", type=Path, nargs="*", default=[], help="other checkpoints in the table")
    sp.add_argument("--split", default="test")
    sp.add_argument("--videos", nargs="*", default=None, help="only these video ids")
    sp.add_argument("--frames", type=int, default=0, help="frames per video (0: all)")
    sp.add_argument("--out", type=Path, default=Path("result"))

    sp = add("export", cmd_export, "enhance videos frame by frame into mp4 and PNG frames")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", type=Path, help="a data set in the DRV layout")
    src.add_argument("--input", type=Path, help="a folder of raw frames (not a data set)")
    sp.add_argument("--model", type=Path, default=None, help="checkpoint (default: best in trained_model/)")
    sp.add_argument("--out", type=Path, default=Path("result"))
    sp.add_argument("--split", default="test")
    sp.add_argument("--videos", nargs="*", default=None, help="only these video ids")
    sp.add_argument("--frames", type=int, default=0, help="frames per video (0: all)")
    sp.add_argument("--tile", type=int, default=0, help="tile size on the input grid (0: whole frame)")
    sp.add_argument("--overlap", type=int, default=32)
    sp.add_argument("--side-by-side", action="store_true", help="also write input | output | truth videos")
    sp.add_argument("--fps", type=float, default=20.0)

    sp = add("demo", cmd_demo, "synthesise data, train, evaluate and export, no data set needed")
    sp.add_argument("--out", type=Path, default=Path("result/demo"))

    sp = add("models", cmd_models, "list the model variants with their parameter counts")
    add_config_args(sp)

    sp = add("export-model", cmd_export_model, "write a model's streaming step(frame, state) as ONNX")
    sp.add_argument("--format", default="onnx", choices=["onnx"])
    sp.add_argument("--model", type=Path, default=None, help="checkpoint (default: a fresh default model)")
    sp.add_argument("--lite", action="store_true", help="a model.size=lite model (with --model: checked)")
    sp.add_argument("--out", required=True, type=Path, help="the .onnx file to write")

    sp = add("bench", cmd_bench, "benchmarks that print ratios measured side by side")
    sp.add_argument("what", choices=["infer", "export", "data", "memory", "quality", "all"])
    sp.add_argument("--preset", default="", help="bench memory: one preset (default: titan, 1080ti, 1080)")
    sp.add_argument("--out", type=Path, default=Path("result/bench"))
    sp.add_argument("--quick", action="store_true", help="smaller sizes, for tests")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BatmanError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
