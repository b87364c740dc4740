"""The `batman` command line: each subcommand parses its arguments, builds a Config and calls one function.

Heavy modules (torch, rawpy) are imported inside the handlers so that `--help` is instant.
A BatmanError prints one line and exits with code 2; any other exception is a bug or a failure no
check foresaw: one line too, exit code 1, with a pointer to `--debug`, which shows the traceback.
Every flag has a help text, and `--help` shows its default.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from batman import __version__
from batman.config import BatmanError, ENSEMBLES, PRESETS, RELEASE_KEYS, check_options, make_config, parse_set

DEVICE_HELP = "cpu, cuda or cuda:N (auto: CUDA when available, else the CPU)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default to its help, except None: such a flag's help says what happens then."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x768, got {text!r}")
    return h, w


def _run_name(text: str) -> str:
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"a run name is one folder name such as titan-lr3e-4, got {text!r}")
    return text


def _config(args, preset: str = ""):
    """--config FILE, then the preset, then --set (and --root as data.root unless --set gives one)."""
    overrides = parse_set(getattr(args, "set", None) or [])
    if getattr(args, "root", None):
        overrides.setdefault("data.root", str(args.root))
    return make_config(preset or getattr(args, "preset", "") or "", overrides, file=getattr(args, "config", None))


# --- handlers -------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    from batman.data.raw import raw_info, read_info, read_raw
    for path in args.files:
        info = raw_info(read_raw(path)) if args.check else read_info(path)
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
               images=args.images, dynamic=args.dynamic, ratio=tuple(args.ratio), cameras=args.cameras,
               exclude=tuple(args.exclude), only=tuple(args.only), test_only=args.test_only,
               camera_file=args.camera, bayer=args.bayer_sampled,
               **{k: v for k, v in (("motion_kinds", args.motion), ("max_speed", args.max_speed)) if v is not None})
    return 0


def cmd_calibrate(args) -> int:
    from batman.data.calibrate import calibrate
    calibrate(args.dark, args.flat, out=args.out)
    return 0


def cmd_download(args) -> int:
    from batman.data.download import download
    download(args.root, parts=args.parts, url_base=args.url_base, keep_zips=args.keep_zips)
    return 0


def cmd_prepare(args) -> int:
    from batman.data.cache import prepare
    prepare(args.root, cache=args.cache, workers=args.workers, skip_bad=args.skip_bad)
    return 0


def train_config(args):
    """(config, preset) of `batman train`: --config FILE, then --preset (cpu unless a file is given), then --set;
    with --init, the model settings neither gives are the checkpoint's (train.init_architecture)."""
    preset = args.preset if args.preset is not None else ("" if args.config else "cpu")
    cfg = _config(args, preset)
    if getattr(args, "init", None):
        from batman.ckpt import best_checkpoint
        from batman.config import _flatten, read_config_file
        if args.init.is_dir():  # a run folder: its best epoch, as `batman release` takes
            args.init = best_checkpoint(args.init)
        from batman.train import init_architecture
        explicit = set(parse_set(args.set or [])) | (set(_flatten(read_config_file(args.config))) if args.config else set())
        cfg = init_architecture(cfg, args.init, explicit)
    return cfg, preset


def cmd_train(args) -> int:
    cfg, preset = train_config(args)
    if args.dry_run:
        print(cfg.to_json())
        return 0
    from batman.train import train
    train(cfg, out=args.out, resume=args.resume, device=args.device, name=args.name, label=preset, init=args.init)
    return 0


def cmd_evaluate(args) -> int:
    from batman.evaluate import evaluate
    evaluate(args.root, model=args.model, split=args.split, frames=args.frames, out=args.out,
             baselines=args.compare, videos=args.videos, device=args.device,
             classical=args.baselines, ensemble=args.ensemble, two_pass=args.two_pass, bf16=args.bf16)
    return 0


def cmd_export(args) -> int:
    from batman.export import export
    export(root=args.root, input_folder=args.input, model=args.model, out=args.out, split=args.split,
           videos=args.videos, tile=args.tile, overlap=args.overlap, side_by_side=args.side_by_side,
           fps=args.fps, frames=args.frames, device=args.device, gain=args.gain, workers=args.workers,
           ensemble=args.ensemble, two_pass=args.two_pass, bf16=args.bf16)
    return 0


def cmd_release(args) -> int:
    from batman.ckpt import best_checkpoint, release_weights
    source = args.checkpoint if args.checkpoint.is_file() else best_checkpoint(args.checkpoint)
    if args.blend_weight is not None and not args.blend:
        raise BatmanError("release --blend-weight needs --blend OTHER")
    weight = 0.5 if args.blend_weight is None else args.blend_weight
    check_options("release", blend_weight=weight)
    out = release_weights(source, args.out, overrides=parse_set(args.set),
                          blend=(args.blend, weight) if args.blend else None, single_frame=args.single_frame, int8=args.int8)
    kind = "int8 + float16" if args.int8 else "float16"
    print(f"released {source} as {out} ({kind}, {out.stat().st_size / 1e6:.1f} MB) + {out.with_suffix('.json')}")
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
    run_bench(args.what, out=args.out, preset=args.preset or "", quick=args.quick, device=args.device,
              bf16=args.bf16)
    return 0


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batman", formatter_class=HelpFormatter,
                                description="See motion in the dark: low-light RAW video to clean sRGB video "
                                "(DRV / Seeing Motion in the Dark).")
    p.add_argument("--version", action="version", version=f"batman {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.set_defaults(func=func)
        return sp

    def add_config_args(sp, preset_help="named settings sized to the hardware (default: none)"):
        sp.add_argument("--preset", default=None, choices=sorted(PRESETS), help=preset_help)
        sp.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. model.hidden=96 train.lr=3e-4")

    def add_device_arg(sp):
        sp.add_argument("--device", default="auto", help=DEVICE_HELP)

    def add_quality_args(sp):  # --ensemble, --two-pass: more time for quality; --bf16: less
        sp.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLES, metavar="K",
                        help="also run K-1 flipped/transposed views of each video and average them: "
                             "about K times the time, higher PSNR (2: +0.04-0.11 dB, 8: +0.13-0.29 dB on the "
                             "held-out sets; docs/MODEL_CARD.md)")
        sp.add_argument("--two-pass", action="store_true",
                        help="run each video backward first and start from that state: every frame of a still "
                             "scene gets the last frame's quality; not causal, 2x the time (docs/MODEL_CARD.md)")
        sp.add_argument("--bf16", action="store_true",
                        help="run the network under bf16 autocast: 1.4-1.8x the frames per second on a CPU "
                             "with native bf16 (AVX512-BF16, AMX; slower without), held-out PSNR within 0.04 dB")

    sp = add("inspect", cmd_inspect, "print the Bayer pattern, levels, size and exposure of raw files")
    sp.add_argument("files", nargs="+", type=Path, help="raw files (ARW, DNG, any LibRaw reads)")
    sp.add_argument("--json", action="store_true", help="one JSON object per file")
    sp.add_argument("--check", action="store_true", help="also decode the pixels (finds truncated files)")

    sp = add("synth", cmd_synth, "write a synthetic dark raw video data set in the DRV layout")
    sp.add_argument("--out", required=True, type=Path, help="data set folder to write")
    sp.add_argument("--videos", type=int, default=6, help="static videos")
    sp.add_argument("--frames", type=int, default=16, help="frames per video")
    sp.add_argument("--size", type=_size, default=(512, 768), help="Bayer mosaic HxW (ground truth: H/4 x W/4)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    sp.add_argument("--images", type=Path, nargs="+", default=None,
                    help="folders of clean photos and/or clean raw files (a raw's videos take its own white "
                         "balance and colour matrix; default: skimage's photos)")
    sp.add_argument("--exclude", nargs="*", default=[], metavar="PATTERN",
                    help="leave out photos whose name matches, e.g. 'kodim19*' (a held-out part)")
    sp.add_argument("--only", nargs="*", default=[], metavar="PATTERN", help="use only photos whose name matches")
    sp.add_argument("--test-only", action="store_true", help="every static video in the test list (an evaluation set)")
    sp.add_argument("--cameras", default="train", choices=["one", "train", "heldout"],
                    help="colour matrices: one for the whole set (like DRV), each video its own real camera, "
                         "or real cameras that 'train' never uses (for held-out evaluation)")
    sp.add_argument("--dynamic", type=int, default=0, help="extra videos with motion and per-frame truth")
    sp.add_argument("--motion", default=None, metavar="KINDS",
                    help="the dynamic videos' motion in turn, a comma list of pan,rotate,zoom,object,objects,light,"
                         "mixed (default: all)")
    sp.add_argument("--max-speed", type=float, default=None, metavar="PX",
                    help="fastest motion, pixels per frame on the model's input grid (default 16)")
    sp.add_argument("--ratio", type=float, nargs=2, default=(50.0, 300.0), metavar=("LO", "HI"),
                    help="darkening ratio range (the gain the model must undo)")
    sp.add_argument("--camera", type=Path, default=None, metavar="FILE",
                    help="camera JSON from `batman calibrate`: its noise, CFA and levels instead of sampled ones")
    sp.add_argument("--bayer-sampled", action="store_true",
                    help="render each photo as a raw file of it would render (each colour at its own Bayer site, "
                         "half the size): fine detail aliases into colour, as in real raws")

    sp = add("calibrate", cmd_calibrate, "fit a camera's noise, black/white levels and gain from dark and flat frames")
    sp.add_argument("--dark", required=True, type=Path,
                    help="folder of dark frames (lens cap on, the footage's exposure and ISO)")
    sp.add_argument("--flat", required=True, type=Path,
                    help="folder of flat frames: pairs of one exposure at several brightnesses")
    sp.add_argument("--out", type=Path, default=Path("camera.json"), help="camera JSON (the fit plot: same name .png)")

    sp = add("download", cmd_download, "download and extract DRV (resumable, verified, safe)")
    sp.add_argument("--root", required=True, type=Path, help="data set folder to download into")
    sp.add_argument("--parts", default="raw", help="raw | preprocessed | all | comma list (long,short1,...)")
    sp.add_argument("--url-base", default="https://storage.googleapis.com/isl-datasets/DRV",
                    help="where the zips are (a mirror)")
    sp.add_argument("--keep-zips", action="store_true", help="keep the archives after extraction")

    sp = add("prepare", cmd_prepare, "decode every raw frame once into a memory-mapped cache")
    sp.add_argument("--root", required=True, type=Path, help="data set in the DRV layout")
    sp.add_argument("--cache", type=Path, default=None, help="cache folder (default: ROOT/cache)")
    sp.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    sp.add_argument("--skip-bad", action="store_true", help="list corrupt frames and leave them out")

    sp = add("train", cmd_train, "train a model into a run folder (resumable; torchrun for several GPUs)")
    sp.add_argument("--root", type=Path, default=None,
                    help="data set in the DRV layout (default: data.root of --config; required without one)")
    sp.add_argument("--config", type=Path, default=None, metavar="FILE",
                    help="start from a config file (JSON, or YAML with PyYAML), e.g. a run's config.json to "
                    "relaunch it; --preset and --set apply on top")
    add_config_args(sp, "named settings sized to the hardware (default: cpu; none with --config)")
    sp.add_argument("--resume", default=None, help="PATH to a checkpoint, or 'auto': the newest run with the same "
                    "config (OUT/last.pt with --out or --name) (default: start a new run)")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None,
                       help="run folder (default: runs/<preset>-<model>-<YYYYmmdd-HHMMSS>/)")
    where.add_argument("--name", type=_run_name, default=None, help="run folder runs/NAME instead of a timestamp")
    sp.add_argument("--init", type=Path, default=None, metavar="CKPT",
                    help="fine-tune: start from this checkpoint's weights, or a run folder's best epoch (fresh "
                         "optimiser, epoch 0)")
    sp.add_argument("--dry-run", action="store_true", help="check the config, print it and stop")
    add_device_arg(sp)

    sp = add("evaluate", cmd_evaluate, "PSNR/SSIM/MABD of a checkpoint and the baselines")
    sp.add_argument("--root", required=True, type=Path, help="data set in the DRV layout")
    sp.add_argument("--model", type=Path, default=None,
                    help="checkpoint, or a run folder (its best checkpoint) (default: the best of the newest run in "
                         "runs/, else the shipped weights; printed)")
    sp.add_argument("--compare", type=Path, nargs="*", default=[], help="other checkpoints in the table")
    sp.add_argument("--baselines", nargs="*", default=["traditional", "mean"], metavar="NAME",
                    help="classical baselines in the table: traditional, mean, bm3d, mean-bm3d, bm4d "
                         "(default: traditional mean; none, or the flag alone: no baselines; BM3D/BM4D take "
                         "seconds per frame)")
    sp.add_argument("--split", default="test", help="train | val | test | dynamic")
    sp.add_argument("--videos", nargs="*", default=None, help="only these video ids (default: all)")
    sp.add_argument("--frames", type=int, default=0, help="frames per video (0: all)")
    sp.add_argument("--out", type=Path, default=Path("result"), help="folder for metrics.{json,csv,md,png}")
    add_quality_args(sp)
    add_device_arg(sp)

    sp = add("export", cmd_export, "enhance videos frame by frame into mp4 and PNG frames")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", type=Path, help="a data set in the DRV layout")
    src.add_argument("--input", type=Path, help="a folder of raw frames (not a data set)")
    sp.add_argument("--model", type=Path, default=None,
                    help="checkpoint, or a run folder (its best checkpoint) (default: the best of the newest run in "
                         "runs/, else the shipped weights; printed)")
    sp.add_argument("--out", type=Path, default=Path("result"), help="folder for video/ and frames/")
    sp.add_argument("--split", default="test", help="train | val | test | dynamic")
    sp.add_argument("--videos", nargs="*", default=None, help="only these video ids (default: all)")
    sp.add_argument("--frames", type=int, default=0, help="frames per video (0: all)")
    sp.add_argument("--tile", type=int, default=0, help="tile size on the input grid (0: whole frame)")
    sp.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (blended)")
    sp.add_argument("--side-by-side", action="store_true", help="also write input | output | truth videos")
    sp.add_argument("--fps", type=float, default=20.0, help="frame rate of the mp4")
    sp.add_argument("--gain", type=float, default=None,
                    help="with --input: amplify every frame by G (default: chosen from the burst's brightness)")
    sp.add_argument("--workers", type=int, default=None,
                    help="processes decoding frames, beside one encoding PNGs (0: threads of this process; default 2)")
    add_quality_args(sp)
    add_device_arg(sp)

    sp = add("release", cmd_release, "write a checkpoint's weights as float16 safetensors + config + sha256")
    sp.add_argument("checkpoint", type=Path, help="a checkpoint, or a run folder (its best checkpoint)")
    sp.add_argument("--out", type=Path, default=Path("trained_model/batman_default.safetensors"),
                    help="the weights file (a .json sidecar goes beside it)")
    sp.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help=f"change settings that need no training: {', '.join(RELEASE_KEYS)} "
                         "(e.g. model.residual_rule=0.06)")
    sp.add_argument("--blend", type=Path, default=None, metavar="OTHER",
                    help="release a weight average with OTHER (a checkpoint or released weights of the same "
                         "architecture, e.g. the fine-tune's starting point); the settings are the checkpoint's")
    sp.add_argument("--blend-weight", type=float, default=None, metavar="W",
                    help="OTHER's share of the average, above 0 up to 1 (default 0.5)")
    sp.add_argument("--single-frame", type=Path, default=None, metavar="UNET",
                    help="released U-Net weights (model.name=unet) to join as the single-frame path: the output "
                         "takes the U-Net's where the gate opens (model.single_frame_gate, default 0.7); "
                         "--set model.single_frame_input=filter: the U-Net reads the filter state where the scene "
                         "is still, as the shipped weights do")
    sp.add_argument("--int8", action="store_true",
                    help="store the large weight tensors as int8 with a float16 scale per output channel (about "
                         "half the size; loaded back as float32)")

    sp = add("demo", cmd_demo, "synthesise data, train, evaluate and export, no data set needed")
    sp.add_argument("--out", type=Path, default=Path("result/demo"), help="folder for data, runs and results")

    sp = add("models", cmd_models, "list the model variants with their parameter counts")
    add_config_args(sp)

    sp = add("export-model", cmd_export_model, "write a model's streaming step(frame, state) as ONNX")
    sp.add_argument("--format", default="onnx", choices=["onnx"], help="the file format")
    sp.add_argument("--model", type=Path, default=None,
                    help="checkpoint, weights or a run folder (default: the default model, printed; with --lite an "
                         "untrained one)")
    sp.add_argument("--lite", action="store_true", help="a model.size=lite model (with --model: checked)")
    sp.add_argument("--out", required=True, type=Path, help="the .onnx file to write")

    sp = add("bench", cmd_bench, "benchmarks that print ratios measured side by side")
    sp.add_argument("what", choices=["infer", "export", "data", "memory", "quality", "all"], help="which benchmark")
    sp.add_argument("--preset", default=None, help="bench memory: one preset (default: titan, 1080ti, 1080)")
    sp.add_argument("--out", type=Path, default=Path("result/bench"), help="folder for the tables and figures")
    sp.add_argument("--quick", action="store_true", help="smaller sizes, for tests")
    sp.add_argument("--device", default="auto", help=DEVICE_HELP + "; auto benchmarks inference on both")
    sp.add_argument("--bf16", action="store_true",
                    help="bench infer: the CPU under bf16 autocast too, as export --bf16 runs (CUDA always is)")
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
    except Exception as e:
        if args.debug:
            raise
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"error: unexpected {type(e).__name__}: {reason} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
