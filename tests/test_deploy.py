"""ONNX export of step(frame, state): onnxruntime on a streamed video gives PyTorch's output."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from batman.cli import main
from batman.config import make_config
from batman.model.net import model_for, pad_to_multiple

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from batman.deploy import OnnxStepper, StateLeaf, export_onnx  # noqa: E402


def perturbed_model(cfg, seed=0):
    """A fresh model whose zero-initialised parts (the recursive head's gate and residual) are perturbed,
    so that every branch of the graph shapes the output."""
    torch.manual_seed(seed)
    model = model_for(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def stream_both(model, path, frames):
    """Max |onnxruntime - PyTorch| over the frames on [0, 1] outputs, each streamed with its state."""
    stepper = OnnxStepper(path)
    state, worst = None, 0.0
    for frame in frames:
        with torch.no_grad():
            y, state = model.step(frame, state)
        ours = stepper.step(frame.numpy())
        assert ours.shape == tuple(y.shape)
        worst = max(worst, float(np.abs(np.clip(ours, 0, 1) - y.clamp(0, 1).numpy()).max()))
    return worst


def video(h, w, t=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    scene = torch.rand(1, 4, h, w, generator=g) * 0.3
    return [(scene + 0.05 * torch.randn(1, 4, h, w, generator=g)).clamp(0, 1) for _ in range(t)]


@pytest.mark.parametrize("overrides, frames", [({}, 16), ({"model.name": "unet"}, 2),
                                               ({"model.name": "conv3d", "model.scale": 2}, 5),
                                               ({"model.encoder_mean": True, "model.pipeline": "fixed"}, 4),
                                               ({"model.gate_evidence": True, "model.denoiser": 4}, 3),
                                               ({"model.residual_rule": 2.0, "model.residual_cap": 0.05, "model.noise_input": True}, 3),
                                               ({"model.residual_rule": 2.0, "model.residual_cap": 0.05,
                                                 "model.residual_cap_block": 8, "model.noise_input": True}, 3),
                                               ({"model.residual_rule": 2.0, "model.residual_cap": 0.05,
                                                 "model.residual_cap_block": 8, "model.residual_cap_mean": True}, 3),
                                               ({"model.state_reset": True}, 3),
                                               ({"model.output_smoothing": 3.0, "model.state_reset": True}, 6),
                                               ({"model.output_smoothing": 3.0, "model.smoothing_ramp": True}, 6),
                                               ({"model.single_frame": True, "model.output_smoothing": 3.0}, 4),
                                               ({"model.single_frame": True, "model.single_frame_input": "filter", "model.output_smoothing": 3.0}, 4)])
def test_onnx_matches_pytorch_on_a_video(tmp_path, overrides, frames):
    cfg = make_config("", overrides)
    model = perturbed_model(cfg)
    path = tmp_path / "m.onnx"
    layout = export_onnx(model, cfg, path, example_size=(64, 96))
    # sizes other than the traced one, and not multiples of 32: H and W are dynamic, padding is inside
    assert stream_both(model, path, video(70, 100, t=frames)) <= 1e-3
    assert stream_both(model, path, video(45, 33, t=3, seed=2)) <= 1e-3
    if cfg.model.name == "clstm":  # (h, c) per ConvLSTM layer, then the head's filter state and count
        names = [name for name, _, _ in layout["state"]]
        assert names == ["state_temporal_0_0", "state_temporal_0_1", "state_temporal_1_0", "state_temporal_1_1",
                         "state_head_0", "state_head_1"] + (["state_head_2", "state_head_3"] if cfg.model.output_smoothing else []) + (
                             ["state_mean_0", "state_mean_1"] if cfg.model.encoder_mean else [])


def test_flow_aligned_models_are_refused_not_exported_without_their_alignment(tmp_path):
    from batman.config import BatmanError
    cfg = make_config("", {"model.align": "flow"})
    with pytest.raises(BatmanError, match="model.align=flow has no ONNX export"):
        export_onnx(model_for(cfg), cfg, tmp_path / "m.onnx", example_size=(64, 64))
    assert not (tmp_path / "m.onnx").exists()


def test_state_leaf_shape_follows_padding():
    assert StateLeaf("h", (64,), 4).shape(918, 1374) == (1, 64, 232, 344)  # 928 x 1376 padded
    assert StateLeaf("past", (2, 64), 4).shape(64, 64) == (1, 2, 64, 16, 16)
    assert StateLeaf("count", (), 0).shape(918, 1374) == (1,)


def test_stepper_rejects_a_foreign_onnx_file(tmp_path):
    import onnx
    from onnx import helper, TensorProto
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    from batman.config import BatmanError
    with pytest.raises(BatmanError, match="not an ONNX file written by"):
        OnnxStepper(tmp_path / "other.onnx")


def test_cli_export_model_default_and_fresh_lite(tmp_path, capsys, monkeypatch):
    """No --model: the default model (here the shipped weights: no runs/ in the working folder)."""
    import onnx

    from batman import ckpt
    if not ckpt.SHIPPED.is_file():
        pytest.skip("no shipped weights (make pretrain)")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sub" / "step.onnx"
    assert main(["export-model", "--format", "onnx", "--out", str(out)]) == 0
    shipped = ckpt.read_weights(ckpt.SHIPPED)[1].model
    leaves = 6 + (2 if shipped.encoder_mean else 0) + (shipped.align != "none") + 2 * bool(shipped.output_smoothing)
    # + the running mean's sum, count; + the previous frame's matching descriptor; + the smoothed output, its age
    assert out.is_file() and f"{leaves} state tensors" in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp*"))  # the atomic write left no temp file
    frame = np.random.default_rng(0).random((1, 4, 40, 56), dtype=np.float32)
    assert OnnxStepper(out).step(frame).shape == (1, 3, 40, 56)
    lite = tmp_path / "lite.onnx"
    assert main(["export-model", "--lite", "--out", str(lite)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(lite)).metadata_props}
    assert '"size": "lite"' in meta["batman_config"]
    assert lite.stat().st_size < out.stat().st_size / 10  # far fewer weights
    assert OnnxStepper(lite).step(frame).shape == (1, 3, 40, 56)


def test_cli_export_model_from_a_checkpoint_keeps_its_weights(tmp_path, capsys):
    from batman.ckpt import save_checkpoint
    cfg = make_config("", {"model.size": "lite"})
    model = perturbed_model(cfg, seed=5)
    ckpt = tmp_path / "epoch_1_loss_0.1000.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": cfg.to_json()})
    out = tmp_path / "lite.onnx"
    assert main(["export-model", "--lite", "--model", str(ckpt), "--out", str(out)]) == 0
    assert stream_both(model, out, video(40, 50, t=4)) <= 1e-3  # the checkpoint's weights, not fresh ones
    default = tmp_path / "default.pt"
    save_checkpoint(default, {"model": model_for(make_config()).state_dict(), "config": make_config().to_json()})
    assert main(["export-model", "--lite", "--model", str(default), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "holds a model.size=default model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("align_to, rating, smoothing", [("frame", "bicubic", 0.0), ("filter", "bicubic", 0.0),
                                                        ("filter", "warped", 3.0)])
def test_camera_aligned_model_exports_and_follows_a_pan_like_pytorch(tmp_path, align_to, rating, smoothing):
    """model.align=camera in the graph (matching the previous frame or the filter state; the warped rating's margin
    follows the frame's size; the smoothed output restarts where the camera moved): on a panning texture, at a size
    other than the traced one, onnxruntime's step warps the states as PyTorch's does (and PyTorch did find the
    motion, so the check is not vacuous)."""
    from batman.model.align import CameraAlign
    cfg = make_config("", {"model.align": "camera", "model.align_to": align_to, "model.align_rating": rating,
                           "model.output_smoothing": smoothing})
    model = perturbed_model(cfg)
    path = tmp_path / "m.onnx"
    layout = export_onnx(model, cfg, path, example_size=(64, 96))
    assert [name for name, _, _ in layout["state"]][-1] == "state_align"
    g = torch.Generator().manual_seed(3)
    texture = F.avg_pool2d(torch.rand(1, 4, 100, 140 + 6 * 4, generator=g), 5, 1)
    frames = [texture[..., :96, 6 * k:6 * k + 128] for k in range(5)]  # 6 pixels a frame
    found = []
    with torch.no_grad():
        state = None
        for frame in frames:
            flow, state = CameraAlign(rating=rating)(pad_to_multiple(frame), None, state)
            found += [] if flow is None else [flow[:, 1].mean().item()]
    assert min(found) > 1.0  # 1.5 stride-4 pixels a frame
    assert stream_both(model, path, frames) <= 1e-3
