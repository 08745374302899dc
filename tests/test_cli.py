"""The command line as a new user meets it: help, version, the bundled spaces, and flags that reach the search."""
import argparse
import dataclasses
import sys
import types
from importlib import metadata

import pytest

import lungsearch.run.outcome  # noqa: F401  cli imports it; the stand-ins below replace lungsearch.run only
from lungsearch import cli, space
from lungsearch.config import SMOKE, SearchSettings


def flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps help text to the terminal's width


def subparsers(p: argparse.ArgumentParser):
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from subparsers(child)


@pytest.mark.parametrize("argv, shown", [([], "first steps:"), (["data"], "prepare")])
def test_a_bare_command_prints_its_help_and_exits_0(argv, shown, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lungsearch {' '.join(argv)}".rstrip()) and shown in out


def test_the_description_is_for_users_and_names_every_command():
    text = flat(cli.parser().format_help())
    assert "argparse" not in text and "chest X-ray pneumonia classifier" in text
    for command in ("run", "resume", "report", "evaluate", "predict", "bench", "spaces", "data"):
        assert f" {command} " in text


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lungsearch {metadata.version('lungsearch')}"


def test_every_option_and_argument_has_help():
    missing = []
    for p in subparsers(cli.parser()):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{p.prog} {a.dest}" for a in action._choices_actions if not a.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{p.prog} {action.dest}")
    assert not missing


def test_smoke_help_gives_its_sizes():
    run = next(p for p in subparsers(cli.parser()) if p.prog == "lungsearch run")
    text = flat(run.format_help())
    for part in (f"{SMOKE['image_size']} px images", f"up to {SMOKE['max_epochs']} epochs",
                 f"{SMOKE['data_limit']} training images", f"patience {SMOKE['patience']}",
                 f"grace period {SMOKE['grace_period']}", f"reduction factor {SMOKE['reduction_factor']}"):
        assert part in text


@pytest.fixture
def fake_search(monkeypatch):
    """`lungsearch.run` replaced by a stand-in that records what `run` passes to run_search (no Ray, no Keras)."""
    calls = []
    fake = types.ModuleType("lungsearch.run")
    fake.SearchIncomplete = type("SearchIncomplete", (Exception,), {})
    fake.run_search = lambda *args, **kwargs: calls.append((args, kwargs)) or "RUN_DIR"
    fake.resume_search = lambda run_dir, address: calls.append(((run_dir,), {})) or "RUN_DIR"
    monkeypatch.setitem(sys.modules, "lungsearch.run", fake)
    monkeypatch.setattr(cli, "report_quietly", lambda run_dir: True)
    return calls


def test_settings_flags_reach_run_search_as_overrides(fake_search, capsys):
    assert cli.main(["run", "ablation", "--patience", "7", "--grace-period", "2", "--reduction-factor", "4",
                     "--keep-checkpoints", "1", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "RUN_DIR"
    (args, kwargs), = fake_search
    assert args[0] == "ablation"
    assert {k: kwargs[k] for k in ("patience", "grace_period", "reduction_factor", "keep_checkpoints", "seed")} == {
        "patience": 7, "grace_period": 2, "reduction_factor": 4, "keep_checkpoints": 1, "seed": 3}
    fields = {f.name for f in dataclasses.fields(SearchSettings)}
    overrides = {k for k in kwargs if k not in ("smoke", "address", "mlflow")}
    assert overrides <= fields  # every flag names a setting run_search can apply
    run = next(p for p in subparsers(cli.parser()) if p.prog == "lungsearch run")
    flags = {a.dest for a in run._actions} - {"help", "space", "data", "results", "help_parser"}
    assert flags <= set(kwargs)  # and every flag of `run` is passed on
    fake_search.clear()
    assert cli.main(["run", "ablation"]) == 0
    assert all(fake_search[0][1][k] is None for k in ("patience", "grace_period", "reduction_factor",
                                                      "keep_checkpoints"))  # unset: the space's SETTINGS decide


def test_spaces_lists_the_bundled_spaces_with_their_question(capsys):
    assert cli.main(["spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, path in space.bundled().items():
        line = next(line for line in lines if line.startswith(name + " "))
        assert line.split(None, 1)[1] == space.first_doc_line(path)
    assert any("lungsearch run NAME" in line for line in lines)


def test_an_unknown_space_name_exits_2_naming_the_bundled_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "lungsearch.run", types.SimpleNamespace(
        SearchIncomplete=RuntimeError, resume_search=None,
        run_search=lambda space_path, *a, **k: space.load(space_path)))
    assert cli.main(["run", "ablaton"]) == 2
    assert "bundled spaces: ablation, architecture, report, robust" in capsys.readouterr().err
