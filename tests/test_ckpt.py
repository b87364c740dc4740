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


# --- run folders and the default model ---------------------------------------------------------

def fake_run(runs, name, cfg, losses=(), age_s=0.0):
    """A run folder with config.json and empty epoch checkpoints {epoch: loss}, written `age_s` ago."""
    import os
    import time
    folder = runs / name
    folder.mkdir(parents=True)
    cfg.save(folder / "config.json")
    for epoch, loss in enumerate(losses, 1):
        (folder / ckpt.checkpoint_name(epoch, loss)).write_bytes(b"x")
    stamp = time.time() - age_s
    for p in folder.iterdir():
        os.utime(p, (stamp, stamp))
    return folder


def test_new_run_folders_are_distinct_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.time, "strftime", lambda fmt: "20261201-120000")
    a, b = ckpt.new_run_folder("cpu-clstm", tmp_path), ckpt.new_run_folder("cpu-clstm", tmp_path)
    assert (a.name, b.name) == ("cpu-clstm-20261201-120000", "cpu-clstm-20261201-120000-2")
    assert a.is_dir() and b.is_dir()


def test_find_run_is_the_newest_with_an_equal_config(tmp_path):
    cfg, other = make_config("cpu"), make_config("cpu", {"train.lr": 3e-4})
    fake_run(tmp_path, "old", cfg, age_s=300)
    newer = fake_run(tmp_path, "newer", cfg, age_s=100)
    fake_run(tmp_path, "newest-other", other, age_s=0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert ckpt.find_run(cfg, tmp_path) == newer
    assert ckpt.find_run(make_config("demo"), tmp_path) is None


def test_default_model_is_the_best_of_the_newest_run_not_the_best_overall(tmp_path):
    cfg = make_config("cpu")
    fake_run(tmp_path, "old", cfg, losses=(0.01,), age_s=300)  # the lowest loss, but another run's
    newest = fake_run(tmp_path, "new", cfg, losses=(0.5, 0.2, 0.3), age_s=100)
    fake_run(tmp_path, "running", cfg, age_s=0)  # newest, but no checkpoint yet
    path, why = ckpt.find_default_model(tmp_path)
    assert path == newest / "epoch_2_loss_0.2000.pt"
    assert str(path) in why and "run new" in why and "1 newer without one yet" in why and "of 3 runs" in why


def test_no_run_falls_back_to_the_shipped_weights_else_says_how_to_get_one(tmp_path, monkeypatch):
    shipped = tmp_path / "trained_model" / "w.safetensors"
    monkeypatch.setattr(ckpt, "SHIPPED", shipped)
    with pytest.raises(BatmanError, match="train one first.*make pretrain"):
        ckpt.find_default_model(tmp_path / "runs")
    shipped.parent.mkdir()
    shipped.write_bytes(b"weights")
    path, line = ckpt.find_default_model(tmp_path / "runs")
    assert path == shipped and "shipped default weights" in line


def test_resolve_model_prints_its_choice(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path / ckpt.RUNS, "r", make_config("cpu"), losses=(0.5,))
    assert ckpt.resolve_model(None) == ckpt.RUNS / "r" / "epoch_1_loss_0.5000.pt"
    assert f"model: {ckpt.RUNS / 'r' / 'epoch_1_loss_0.5000.pt'} (best checkpoint of run r" in capsys.readouterr().out
    assert ckpt.resolve_model(run / "x.pt") == run / "x.pt"


def test_resolve_model_takes_a_run_folder_as_its_best_checkpoint(tmp_path, capsys):
    """--model RUN_FOLDER: the run's best epoch checkpoint, printed; a folder without one is a one-line error."""
    run = fake_run(tmp_path, "r", make_config("cpu"), losses=(0.5, 0.2, 0.3))
    assert ckpt.resolve_model(run) == run / "epoch_2_loss_0.2000.pt"
    assert "best checkpoint of run r: epoch 2, validation loss 0.2000)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatmanError, match="no epoch checkpoint in run folder .*empty"):
        ckpt.resolve_model(tmp_path / "empty")
