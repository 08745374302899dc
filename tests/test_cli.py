"""The command line as a new user meets it: help, version, the bundled spaces, and flags that reach the search."""
import argparse
import dataclasses
from importlib import metadata

import pytest

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


def test_every_run_flag_is_a_setting_it_overrides_and_unset_flags_leave_the_space_alone():
    """`run`'s flags reach run_search through setting_overrides: each flag other than where and how to run is a
    SearchSettings field (so none is dropped on the way), and an unset flag is None (the space's SETTINGS decide).
    The values reaching a real run's manifest are checked in tests/test_report.py."""
    run = next(p for p in subparsers(cli.parser()) if p.prog == "lungsearch run")
    flags = {a.dest for a in run._actions} - {"help", "space", "data", "results", "smoke", "address", "mlflow"}
    assert flags <= {f.name for f in dataclasses.fields(SearchSettings)}
    args = cli.parser().parse_args(["run", "ablation", "--patience", "7", "--grace-period", "2", "--seed", "3",
                                    "--adapt-folds", "4", "--no-fixed-points"])
    given = cli.setting_overrides(args)
    assert set(given) == flags
    assert {k: v for k, v in given.items() if v is not None} == {"patience": 7, "grace_period": 2, "seed": 3,
                                                                 "adapt_folds": 4, "fixed_points": False}


def test_spaces_lists_the_bundled_spaces_with_their_question(capsys):
    assert cli.main(["spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, path in space.bundled().items():
        line = next(line for line in lines if line.startswith(name + " "))
        assert line.split(None, 1)[1] == space.first_doc_line(path)
    assert any("lungsearch run NAME" in line for line in lines)


def test_an_unknown_space_name_exits_2_naming_the_bundled_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "ablaton"]) == 2  # the real run_search: the space is read before any data or Ray
    assert "bundled spaces: ablation, architecture, report, robust" in capsys.readouterr().err
