"""The command line: help and defaults on every flag, --version, --device checked before any work."""
import argparse

import pytest
import torch

from batman import __version__, ckpt
from batman.cli import build_parser, main
from batman.config import BatmanError


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_of_every_command_has_help():
    parser = build_parser()
    for name, sub in {"batman": parser, **subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("command", sorted(subparsers(build_parser())))
def test_help_shows_defaults(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one line per flag
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    if command in ("train", "evaluate", "export", "bench"):
        assert "--device" in out and "(default: auto)" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"batman {__version__}"


@pytest.mark.parametrize("name,message", [("tpu", "unknown device 'tpu': use cpu, cuda or cuda:N"),
                                          ("cuda:x", "unknown device 'cuda:x'")])
def test_unknown_device_is_refused(name, message):
    with pytest.raises(BatmanError, match=message):
        ckpt.resolve_device(name)


def test_device_cpu_and_auto():
    assert ckpt.resolve_device("cpu") == torch.device("cpu")
    assert ckpt.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_before_any_work(tmp_path, capsys):
    assert main(["evaluate", "--root", str(tmp_path), "--device", "cuda:1"]) == 2
    assert capsys.readouterr().err == "error: device cuda:1: CUDA is not available on this machine " \
        f"(torch {torch.__version__}); use --device cpu\n"


def test_run_name_is_one_folder(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--root", "x", "--name", "../elsewhere"])
    assert "a run name is one folder name" in capsys.readouterr().err
