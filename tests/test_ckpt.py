"""Checkpoints: atomic and safe to load; naming, pruning and the refusal of another model's weights."""
import pickle

import pytest
import torch

from batman import ckpt
from batman.config import BatmanError, make_config


def test_save_load_round_trip_and_no_temp_files(tmp_path):
    payload = {"model": {"w": torch.arange(4.0)}, "config": make_config("demo").to_json(), "epoch": 3}
    ckpt.save_checkpoint(tmp_path / "a.pt", payload)
    back = ckpt.load_checkpoint(tmp_path / "a.pt")
    assert torch.equal(back["model"]["w"], payload["model"]["w"]) and back["epoch"] == 3
    assert ckpt.checkpoint_config(back) == make_config("demo")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    ckpt.save_checkpoint(tmp_path / "a.pt", {"model": {"w": torch.ones(1000)}, "config": "{}"})
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BatmanError, match=f"checkpoint {tmp_path / 'a.pt'} is corrupt"):
        ckpt.load_checkpoint(tmp_path / "a.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "config": "{}"}, path)
    with pytest.raises(BatmanError, match="corrupt or not a batman checkpoint"):
        ckpt.load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_best_checkpoint_and_pruning(tmp_path):
    for epoch, loss in [(1, 0.5), (2, 0.25), (3, 0.3), (4, 0.125)]:
        (tmp_path / ckpt.checkpoint_name(epoch, loss)).write_bytes(b"x")
    assert ckpt.best_checkpoint(tmp_path).name == "epoch_4_loss_0.1250.pt"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_2_loss_0.2500.pt", "epoch_4_loss_0.1250.pt"]


def test_no_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(BatmanError, match="make demo"):
        ckpt.best_checkpoint(tmp_path)


def test_another_model_is_refused_by_name(tmp_path):
    saved = make_config("", {"model.name": "unet"})
    with pytest.raises(BatmanError, match="holds a unet .* not the requested clstm"):
        ckpt.check_same_model(tmp_path / "x.pt", saved, make_config(""))


def test_shape_mismatch_is_named(tmp_path):
    net = torch.nn.Linear(3, 2)
    with pytest.raises(BatmanError, match="shape of weight"):
        ckpt.load_state_strict(net, {"weight": torch.zeros(5, 3), "bias": torch.zeros(2)}, tmp_path / "x.pt")
