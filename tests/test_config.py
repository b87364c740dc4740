"""Config: presets, --set overrides (literal_eval, unknown keys refused), JSON round trip."""
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
