"""Deployment: a model's streaming step as an ONNX graph whose state is a flat list of tensors.

    step(frame (1, C, H, W), s_1 ... s_n) -> (output (1, 3, sH, sW), s_1' ... s_n')

PyTorch models carry nested state ({"temporal": [(h, c) per layer], "head": (m, count[, output, age])},
count a python int); the graph takes each leaf as one float32 input `state_<path>` and returns its update
as `next_<path>`. With Hp, Wp = H, W rounded up to multiples of 32 (the encoder's stride), leaf i is

    (1, channels_i, Hp / stride_i, Wp / stride_i)       or (1,) for a frame count (stride 0)

A video starts with every state tensor zero (a zero count means "first frame": the recursive
head then starts its filter from the frame, as the PyTorch model does from `state=None`), and each
call's `next_*` outputs are the next call's `state_*` inputs. H and W are dynamic: padding to the
encoder's multiple and cropping back happen inside the graph. The layout (names, channels, strides),
the output scale and the model config are stored in the file's metadata (`batman_*` keys), and
`OnnxStepper` below runs a file with onnxruntime holding the state between frames.

onnx and onnxruntime are optional (`pip install batman[onnx]`); they are imported only when used.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from batman.config import BatmanError, Config
from batman.files import atomic_path
from batman.model.align import FlowAlign, descriptor, warp_state
from batman.model.net import PAD_MULTIPLE, FrameNet, RecursiveHead, VideoNet, model_for, restart_smoothing

FORMATS = ("onnx",)
OPSET = 18
PROBE = 2 * PAD_MULTIPLE  # probe frame side: every state map is at least 1 pixel at stride 32


@dataclass(frozen=True)
class StateLeaf:
    """One flat state tensor: (1, *channels, Hp / stride, Wp / stride), or (1,) for a count (stride 0).
    `channels` is one size, or two for conv3d's past frames (t_kernel - 1, C)."""
    name: str
    channels: tuple[int, ...]
    stride: int

    def shape(self, h: int, w: int) -> tuple[int, ...]:
        if self.stride == 0:
            return (1,)
        hp, wp = h + -h % PAD_MULTIPLE, w + -w % PAD_MULTIPLE
        return (1, *self.channels, hp // self.stride, wp // self.stride)


def _leaf_name(path) -> str:
    return "_".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@torch.no_grad()
def state_layout(model: nn.Module, in_channels: int) -> tuple[list[StateLeaf], pytree.TreeSpec]:
    """The flat state of `model.step` and the tree that rebuilds it, found by one step on a probe frame."""
    _, state = model.eval().step(torch.zeros(1, in_channels, PROBE, PROBE), None)
    if state is None:  # a single-frame model
        return [], pytree.tree_flatten(())[1]
    paths, spec = pytree.tree_flatten_with_path(state)
    leaves = []
    for path, value in paths:
        name = "state_" + _leaf_name(path)
        if isinstance(value, torch.Tensor) and value.dim() >= 4:
            leaves.append(StateLeaf(name, tuple(value.shape[1:-2]), PROBE // value.shape[-1]))
        elif isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            leaves.append(StateLeaf(name, (), 0))
        else:
            raise BatmanError(f"export: state leaf {name} of type {type(value).__name__} cannot be exported")
    return leaves, spec


class StepGraph(nn.Module):
    """`model.step` with the state as flat tensors and the padding done unconditionally, so that one traced
    graph serves every frame size: forward(frame, *state) -> (output, *next_state)."""

    def __init__(self, model: nn.Module, in_channels: int):
        super().__init__()
        if not isinstance(model, (VideoNet, FrameNet)):
            raise BatmanError(f"export: no exporter for {type(model).__name__}")
        if isinstance(getattr(model, "align", None), FlowAlign):
            raise BatmanError("export: model.align=flow has no ONNX export yet (its per-pixel flow search is not "
                              "checked against onnxruntime); export a model without it (model.align=camera exports)")
        self.model = model.eval()
        self.leaves, self.spec = state_layout(model, in_channels)

    def forward(self, frame: torch.Tensor, *flat: torch.Tensor):
        h, w = frame.shape[-2:]
        x = F.pad(frame, (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE), mode="replicate")
        s = self.model.scale
        if isinstance(self.model, FrameNet):
            return (self.model.unet(x)[..., :h * s, :w * s],)
        state = pytree.tree_unflatten(list(flat), self.spec)
        if isinstance(self.model.head, RecursiveHead):
            m, count, *smoothed = state["head"]
            state["head"] = (torch.where(count > 0, m, x), count, *smoothed)  # a zero count: starts at the frame
        seen, mean = self.model.encoder_input(x.unsqueeze(1), state.get("mean"))
        feats = self.model.fusion(self.model.encoder(seen[:, 0]))
        aligned = {}
        if self.model.align is not None:  # a zero descriptor (first frame) matches nothing: a zero flow
            reference = state["align"]
            if self.model.align_to_filter:
                reference = torch.where(state["head"][1] > 0, descriptor(state["head"][0]), reference)
            flow, aligned["align"] = self.model.align(x, feats, reference)
            state["temporal"], state["head"] = warp_state((state["temporal"], state["head"]), flow,
                                                          tuple(feats.shape[-2:]))
            state["head"] = restart_smoothing(state["head"], flow)
        if self.model.reset is not None:  # a no-op on the first frame: the filter is the frame, the memory zero
            state["temporal"], state["head"] = self.model.reset(state["temporal"], state["head"], x,
                                                                self.model.head.colours)
        feats, temporal = self.model.temporal(feats.unsqueeze(1), state["temporal"])
        y, head = self.model.head(feats, x.unsqueeze(1), state["head"], valid=(h, w),
                                  single=self.model.single_frame(x.unsqueeze(1)))
        leaves = pytree.tree_leaves({"temporal": temporal, "head": head, **aligned, **({"mean": mean} if mean else {})})
        return (y[:, 0, :, :h * s, :w * s], *leaves)

    def zero_state(self, h: int, w: int) -> list[torch.Tensor]:
        return [torch.zeros(leaf.shape(h, w)) for leaf in self.leaves]


def export_onnx(model: nn.Module, cfg: Config, path: str | Path, example_size: tuple[int, int] = (96, 160)) -> dict:
    """Write `model`'s step as ONNX to `path` (atomically) with dynamic H, W; returns the layout written."""
    try:
        import onnx
    except ImportError:
        raise BatmanError("export-model --format onnx needs onnx and onnxruntime: "
                          "pip install 'batman[onnx]'") from None
    graph = StepGraph(model, cfg.data.in_channels)
    h, w = example_size
    args = (torch.rand(1, cfg.data.in_channels, h, w), *graph.zero_state(h, w))
    names = ["frame"] + [leaf.name for leaf in graph.leaves]
    outputs = ["output"] + ["next_" + leaf.name[len("state_"):] for leaf in graph.leaves]
    axes = {"frame": {2: "height", 3: "width"}, "output": {2: "out_height", 3: "out_width"}}
    for leaf, out in zip(graph.leaves, outputs[1:]):
        if leaf.stride:
            dims = 1 + len(leaf.channels)
            axes[leaf.name] = axes[out] = {dims: f"height_{leaf.stride}", dims + 1: f"width_{leaf.stride}"}
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        # The tracing exporter: torch.export (dynamo=True) must prove every state size a function of H and W,
        # and ceil(H / 32) * 32 / stride is not one it can express; tracing records the shapes as graph ops.
        # Its warnings are about the tone curve's constant knot count, which is fixed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(graph, args, str(tmp), input_names=names, output_names=outputs, dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
        proto = onnx.load(str(tmp))
        layout = {"state": [[leaf.name, list(leaf.channels), leaf.stride] for leaf in graph.leaves],
                  "scale": model.scale, "in_channels": cfg.data.in_channels, "pad_multiple": PAD_MULTIPLE}
        for key, value in (("batman_layout", json.dumps(layout)), ("batman_config", cfg.to_json())):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return layout


class OnnxStepper:
    """Runs an exported file with onnxruntime, frame by frame: (1, C, H, W) float32 -> (1, 3, sH, sW)."""

    def __init__(self, path: str | Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BatmanError("running an ONNX model needs onnxruntime: pip install 'batman[onnx]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "batman_layout" not in meta:
            raise BatmanError(f"{path} is not an ONNX file written by `batman export-model`")
        layout = json.loads(meta["batman_layout"])
        self.leaves = [StateLeaf(name, tuple(channels), stride) for name, channels, stride in layout["state"]]
        self.scale, self.in_channels = layout["scale"], layout["in_channels"]
        self.state: list[np.ndarray] | None = None

    def reset(self) -> None:
        self.state = None

    def step(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[-2:]
        if self.state is None:
            self.state = [np.zeros(leaf.shape(h, w), np.float32) for leaf in self.leaves]
        feeds = {"frame": np.ascontiguousarray(frame, np.float32)}
        feeds.update({leaf.name: s for leaf, s in zip(self.leaves, self.state)})
        output, *self.state = self.session.run(None, feeds)
        return output


def export_model(model: str | Path | None, out: str | Path, fmt: str = "onnx", lite: bool = False) -> dict:
    """`batman export-model`: a checkpoint, or without one the default model (the newest run's best, else the
    shipped weights), to a deployable file. `lite` without a checkpoint: a freshly initialised lite model
    (no trained lite weights ship yet), said so."""
    from batman.ckpt import load_model
    if fmt not in FORMATS:
        raise BatmanError(f"export-model: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if model or not lite:
        net, cfg = load_model(model)
        if lite and cfg.model.size != "lite":
            raise BatmanError(f"export-model --lite: {model} holds a model.size={cfg.model.size} model; "
                              f"drop --lite or give a lite checkpoint")
    else:
        from batman.config import make_config
        cfg = make_config("", {"model.size": "lite"})
        torch.manual_seed(cfg.seed)
        net = model_for(cfg).eval()
        print("export-model: an untrained lite model (pass --model for trained lite weights)")
    layout = export_onnx(net, cfg, out)
    print(f"export-model: {out} ({fmt}, {len(layout['state'])} state tensors, scale {layout['scale']})")
    return layout
