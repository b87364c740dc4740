"""Config: presets, --set overrides (literal_eval, unknown keys refused), JSON round trip, --config FILE."""
import sys

import pytest

from batman.cli import main
from batman.config import PRESETS, BatmanError, Config, apply_overrides, make_config, parse_set


def test_overrides_parse_literals_and_bare_words():
    cfg = make_config("", parse_set(["model.hidden=96", "model.norm='batch'", "model.head=shuffle",
                                     "data.crop=(64, 96)", "train.lr=3e-4", "seed=7", "data.crop=128"]))
    assert (cfg.model.hidden, cfg.model.norm, cfg.model.head) == (96, "batch", "shuffle")
    assert cfg.data.crop == (128, 128) and cfg.train.lr == 3e-4 and cfg.seed == 7


@pytest.mark.parametrize("key", ["model.hiden", "nosuch.key", "data", "modelx"])
def test_unknown_key_is_an_error_naming_it(key):
    with pytest.raises(BatmanError, match=f"unknown config key: {key}"):
        apply_overrides(Config(), {key: 1})


def test_wrong_type_is_an_error():
    with pytest.raises(BatmanError, match="model.hidden"):
        make_config("", {"model.hidden": "wide"})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_apply_and_round_trip_json(preset):
    cfg = make_config(preset)
    assert Config.from_json(cfg.to_json()) == cfg


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().model.hidden = 3


def test_cli_reports_unknown_key_without_traceback(capsys):
    assert main(["models", "--set", "model.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: unknown config key: model.bogus"


@pytest.mark.parametrize("key,nearest", [("model.hiden", "model.hidden"), ("trian.lr", "train.lr"),
                                         ("lr", "train.lr"), ("data.crops", "data.crop")])
def test_unknown_key_suggests_the_nearest_in_one_line(key, nearest, capsys):
    assert main(["models", "--set", f"{key}=1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown config key: {key} (did you mean {nearest}?)\n"


def test_saved_config_file_reproduces_the_config_exactly(tmp_path):
    cfg = make_config("titan", parse_set(["model.hidden=96", "data.crop=(64, 96)", "train.lr=3e-4", "seed=5"]))
    cfg.save(tmp_path / "config.json")
    assert make_config(file=tmp_path / "config.json") == cfg


def test_config_file_then_preset_then_set(tmp_path):
    (tmp_path / "c.json").write_text('{"model": {"hidden": 96}, "data": {"crop": [64, 64], "frames": 3}}')
    cfg = make_config("demo", {"data.frames": 5}, file=tmp_path / "c.json")
    assert cfg.model.hidden == 96  # from the file, untouched by the preset
    assert cfg.data.crop == PRESETS["demo"]["data.crop"]  # the preset overrides the file
    assert cfg.data.frames == 5  # --set overrides both


def test_unknown_key_in_config_file_names_the_file_and_the_nearest_key(tmp_path):
    (tmp_path / "c.json").write_text('{"model": {"hiden": 96}}')
    with pytest.raises(BatmanError, match=r"c\.json: unknown config key: model\.hiden \(did you mean model\.hidden\?\)"):
        make_config(file=tmp_path / "c.json")


def test_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text("model:\n  hidden: 48\ndata:\n  crop: [32, 48]\ntrain:\n  lr: 2.0e-4\n")
    cfg = make_config(file=tmp_path / "c.yaml")
    assert (cfg.model.hidden, cfg.data.crop, cfg.train.lr) == (48, (32, 48), 2e-4)


def test_yaml_without_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    (tmp_path / "c.yml").write_text("seed: 1\n")
    with pytest.raises(BatmanError, match="needs PyYAML: pip install pyyaml"):
        make_config(file=tmp_path / "c.yml")


@pytest.mark.parametrize("text,reason", [("{not json", "not valid JSON"), ("[1, 2]", "must hold a mapping")])
def test_bad_config_file_is_a_one_line_error(tmp_path, text, reason):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(BatmanError, match=reason):
        make_config(file=tmp_path / "c.json")


def train_args(*argv):
    from batman.cli import build_parser
    return build_parser().parse_args(["train", *argv])


def test_train_config_from_a_runs_config_json_equals_the_run(tmp_path):
    from batman.cli import train_config
    run_cfg, _ = train_config(train_args("--root", "data/x", "--preset", "demo", "--set", "model.hidden=24",
                                         "train.lr=2e-3"))
    run_cfg.save(tmp_path / "config.json")
    again, preset = train_config(train_args("--config", str(tmp_path / "config.json")))
    assert again == run_cfg and preset == ""  # no cpu preset laid over the file
    tweaked, _ = train_config(train_args("--config", str(tmp_path / "config.json"), "--preset", "cpu",
                                         "--set", "train.lr=1e-4"))
    assert tweaked.data.crop == PRESETS["cpu"]["data.crop"] and tweaked.train.lr == 1e-4
    assert tweaked.model.hidden == 24 and tweaked.data.root == "data/x"


def test_train_without_config_keeps_the_cpu_preset():
    from batman.cli import train_config
    assert train_config(train_args("--root", "d"))[0] == make_config("cpu", {"data.root": "d"})
