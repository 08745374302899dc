"""`lungsearch versus`: a real race of every system (Ray, keras-tuner, Optuna) on tiny synthetic images, its
record, and the budgets it keeps."""
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, processes_marked

SYSTEMS = ["lungsearch-random", "lungsearch-tpe", "keras-tuner-random", "keras-tuner-hyperband", "optuna"]


def test_a_race_runs_every_system_within_the_same_budget_and_writes_its_record(tmp_path, dataset, cache_dir,
                                                                              ray_processes_stopped):
    budget = 3
    earlier = set(processes_marked(ray_processes_stopped))  # left by other tests (killed drivers' agents)
    out = subprocess.run([sys.executable, "-m", "lungsearch", "versus", "ablation", "--data", str(dataset), "--smoke",
                          "--budget-epochs", str(budget), "--max-epochs", "2", "--image-size", "32", "--results",
                          str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    folder = Path(lines[-1])
    assert folder.parent == tmp_path / "results" and folder.name.endswith("-versus-ablation-smoke")
    for k, system in enumerate(SYSTEMS, 1):  # progress: which system, how far into its budget
        assert f"== [{k}/5] {system}" in out.stdout
    assert "[keras-tuner-random 0:00:" in out.stdout and f"of {budget} epochs" in out.stdout
    assert f"of {budget} epochs trained (budget)" in out.stdout  # lungsearch's own status line

    table = pd.read_csv(folder / "versus.csv", keep_default_na=False)
    assert list(table["system"]) == SYSTEMS and set(table["status"]) == {"ran"}
    assert (table["epochs"] == budget).all()  # each system's counted epochs: exactly its budget
    at_once = table.loc[:1, "parallelism"].str.extract(r"up to (\d+) trial")[0].astype(int)
    assert (at_once >= 1).all()
    # Ray stops every trial at the budget's last epoch; epochs other trials had in flight are trained but not
    # counted; an in-process system trains none past its budget
    assert (table.loc[:1, "epochs_over_budget"] <= at_once - 1).all()
    assert (table.loc[2:, "epochs_over_budget"] == 0).all()
    assert table.loc[2:, "parallelism"].str.startswith("one trial at a time").all()
    assert (table["trials"] >= 1).all() and (table["first_ranked"] != "").all()
    for col in ("test_auc", "test_auc_lo", "test_auc_hi", "test_f1_at_threshold"):
        assert table[col].map(lambda v: 0 <= float(v) <= 1).all(), col
    assert (table["test_auc_lo"].astype(float) <= table["test_auc_hi"].astype(float)).all()
    target = float(table["target"].iloc[0])
    reference = pd.read_csv(folder / "reference.csv")
    assert sorted(reference["model"]) == ["base", "bn_aug", "bn_aug_dropout"] and target == reference["objective"].max()
    for row in table.itertuples():  # time to target: where the best-so-far curve first reaches the target
        assert (row.time_to_target_s == "") == (float(row.best_objective) < target)

    curves = pd.read_csv(folder / "curves.csv")
    for system, c in curves.groupby("system", sort=False):
        assert list(c["epochs"]) == list(range(1, budget + 1)), system
        assert c["t_s"].is_monotonic_increasing and c["best"].dropna().is_monotonic_increasing, system
        best_so_far = c["objective"].cummax()
        assert (c["best"].dropna() == best_so_far[c["best"].notna()]).all(), system

    for name in ("versus.md", "versus.png", "reference/base/model.keras"):
        assert (folder / name).is_file(), name
    for project in ("keras-tuner-random", "keras-tuner-hyperband"):  # keras-tuner's folders inside the race's
        assert (folder / project / "oracle.json").is_file()
    for system in SYSTEMS[:2]:  # lungsearch's own run folders, with the budget's record of every epoch
        [run_dir] = (folder / system).iterdir()
        assert pd.read_csv(run_dir / "budget.csv")["counted"].sum() == budget
    report = (folder / "versus.md").read_text()
    assert "**Time to target**" in report and "**Final test quality**" in report and "95%" in report
    assert "keras-tuner Hyperband" in report and "Ray Tune: up to" in report

    deadline = time.time() + 15  # the race stopped every Ray process it started
    while set(processes_marked(ray_processes_stopped)) - earlier and time.time() < deadline:
        time.sleep(0.5)
    assert not set(processes_marked(ray_processes_stopped)) - earlier


@pytest.mark.parametrize("flags, message", [
    (["--budget-epochs", "5", "--budget-minutes", "2"], "give one budget, not both"),
    (["--budget-epochs", "0"], "--budget-epochs must be a whole number of epochs, 1 or more, got 0"),
    (["--budget-minutes", "-1"], "--budget-minutes must be above 0, got -1"),
    (["--image-size", "8"], "--image-size must be"),
])
def test_bad_input_exits_2_with_the_fix_and_leaves_no_folder(flags, message, tmp_path, dataset, cache_dir, capsys):
    from lungsearch import cli

    assert cli.main(["versus", "ablation", "--data", str(dataset), "--results", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_space_that_searches_nothing_is_refused(tmp_path, dataset, cache_dir, capsys):
    from lungsearch import cli

    assert cli.main(["versus", "report", "--data", str(dataset), "--results", str(tmp_path / "r")]) == 2
    assert "searches nothing" in capsys.readouterr().err


def test_the_in_process_clock_counts_epochs_and_refuses_those_past_the_deadline(monkeypatch, capsys):
    from lungsearch import versus

    now = [100.0]
    monkeypatch.setattr(versus.clock.time, "time", lambda: now[0])
    clock = versus.Clock("x", versus.Budget(epochs=3), started=100.0)
    report = clock.reporter("t1")
    for epoch in (1, 2):
        report({"epoch": epoch, "objective": 0.5 + epoch / 10})
    assert not clock.spent
    report({"epoch": 3, "objective": 0.9, "final": True})  # the budget's last epoch counts, and ends the system
    assert clock.spent and len(clock.records) == 3
    with pytest.raises(versus.BudgetSpent):
        clock.reporter("t2")({"epoch": 1, "objective": 0.95})
    assert len(clock.records) == 3 and clock.over == 1
    assert "[x 0:00:00] trial t1 ended after epoch 3, val AUC 0.9000 | 3 of 3 epochs" in capsys.readouterr().out

    clock = versus.Clock("y", versus.Budget(seconds=60), started=100.0)
    report = clock.reporter("t1")
    now[0] = 159.0
    report({"epoch": 1, "objective": 0.7})
    now[0] = 161.0  # this epoch ended past the deadline: not counted, and the trial ends
    with pytest.raises(versus.BudgetSpent):
        report({"epoch": 2, "objective": 0.8})
    assert [r["epoch"] for r in clock.records] == [1] and clock.spent and clock.over == 1
    assert "trial t1" not in capsys.readouterr().out  # no trial ended on its own


def test_rays_budget_stopper_counts_each_epoch_once_and_stops_at_the_budget(tmp_path, monkeypatch):
    from lungsearch import store
    from lungsearch.config import SearchSettings
    from lungsearch.run import budget

    stopper = budget.Budget(tmp_path, epochs=3)
    assert not stopper("trial_a", {"training_iteration": 1, "time_total_s": 1.0, "objective": 0.6})
    assert not stopper("trial_a", {"training_iteration": 1, "time_total_s": 1.0, "objective": 0.6})  # Tune's repeat
    assert not stopper("trial_b", {"training_iteration": 1, "time_total_s": 1.5, "objective": 0.7})
    assert stopper("trial_a", {"training_iteration": 2, "time_total_s": 2.0, "objective": 0.8, "final": True})
    assert stopper.stop_all()
    assert stopper("trial_b", {"training_iteration": 2, "time_total_s": 3.0, "objective": 0.9})  # in flight
    log = store.read_budget_log(tmp_path)
    assert [r["counted"] for r in log] == [True, True, True, False] and log[2]["final"]
    assert budget.spent(tmp_path, SearchSettings(budget_epochs=3), 5)
    assert not budget.spent(tmp_path, SearchSettings(budget_epochs=4), 5)

    minutes = budget.Budget(tmp_path / "m", minutes=1)
    (tmp_path / "m").mkdir()
    clock = [minutes.started]
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    assert not minutes("t", {"training_iteration": 1, "time_total_s": 1.0, "objective": 0.5})
    clock[0] += 61
    assert minutes.stop_all()  # Tune asks between results too: the trials stop at the deadline
    assert minutes("t", {"training_iteration": 2, "time_total_s": 62.0, "objective": 0.6})
    assert [r["counted"] for r in store.read_budget_log(tmp_path / "m")] == [True, False]


def test_optuna_draws_what_the_keras_tuner_declarations_allow(tmp_path):
    optuna = pytest.importorskip("optuna")
    from lungsearch import space as spaces, versus

    space_file = tmp_path / "s.py"
    space_file.write_text('''"""Test."""
import keras_tuner as kt
hp = kt.HyperParameters()
hp.Boolean("augment")
with hp.conditional_scope("augment", [True]):
    hp.Float("aug_zoom", 0.0, 0.3, step=0.05)
hp.Int("dense_units", 32, 512, sampling="log")
hp.Int("filters", 16, 64, step=16)
hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
hp.Choice("batch_size", [16, 32])
hp.Fixed("conv_blocks", 3)
''')
    space = spaces.load_space(space_file)
    race = versus.Race.__new__(versus.Race)
    race.space, race.held = space, []
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(40):
        trial = study.ask()
        values = versus.suggest(trial, race)
        study.tell(trial, 0.5)
        seen.append(values)
        assert ("aug_zoom" in values) == values["augment"]
        assert values.get("aug_zoom", 0.0) in {0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3}
        assert 32 <= values["dense_units"] <= 512 and values["filters"] in (16, 32, 48, 64)
        assert 1e-4 <= values["learning_rate"] <= 1e-2 and values["batch_size"] in (16, 32)
        assert values["conv_blocks"] == 3
    assert {v["augment"] for v in seen} == {False, True}


TOO_DEEP = '''"""Every model fails when it is built: eight or nine conv blocks do not fit a 32 px image."""
import keras_tuner as kt

hp = kt.HyperParameters()
hp.Choice("conv_blocks", [8, 9])
'''


def test_a_race_whose_trials_all_fail_exits_1_naming_the_failed_systems(tmp_path, dataset, cache_dir, capsys):
    """The in-process systems only (each Ray one takes over a minute to fail its 9 trials): keras-tuner builds a
    model when it is made, so it fails before its first trial; Optuna's trials fail, and it stops after 3 in a row.
    In process, so no second interpreter imports TensorFlow."""
    from lungsearch import cli

    space = tmp_path / "too_deep.py"
    space.write_text(TOO_DEEP)
    failing = SYSTEMS[2:]
    assert cli.main(["versus", str(space), "--data", str(dataset), "--systems", ",".join(failing),
                     "--budget-epochs", "1", "--max-epochs", "1", "--image-size", "32",
                     "--results", str(tmp_path / "results")]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith(f"error: no trial succeeded in {', '.join(failing)}, so they failed")
    [folder] = (tmp_path / "results").iterdir()  # the record is written all the same
    assert not out.strip().endswith(folder.name)  # the last line is the race's folder only when it succeeded
    table = pd.read_csv(folder / "versus.csv", keep_default_na=False)
    assert list(table["system"]) == failing and set(table["status"]) == {"failed"}
    assert list(table["trials_succeeded"]) == [0, 0, 0] and list(table["trials_failed"]) == [0, 0, 3]
    assert list(table["failures"]) == [f"failures/{s}" for s in failing]
    for system in failing[:2]:  # keras-tuner's own error, before any trial
        assert "do not fit a 32 px input" in (folder / "failures" / system / "error.txt").read_text()
    tracebacks = sorted((folder / "failures" / "optuna").iterdir())  # one per failed trial
    assert [p.name for p in tracebacks] == ["0.txt", "1.txt", "2.txt"]
    assert all("Traceback" in p.read_text() and "do not fit a 32 px input" in p.read_text() for p in tracebacks)
    report = (folder / "versus.md").read_text()
    assert f"**Failed**: {', '.join(failing)}: no trial succeeded" in report
    assert "optuna: no trial succeeded: all 3 failed (tracebacks in failures/optuna/)" in report


def test_an_unknown_system_is_refused(tmp_path, dataset, cache_dir, capsys):
    from lungsearch import cli

    assert cli.main(["versus", "ablation", "--data", str(dataset), "--systems", "optuna,hyperopt",
                     "--results", str(tmp_path / "r")]) == 2
    assert "unknown system 'hyperopt' in --systems" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_system_with_some_failed_trials_ran_and_counts_them(tmp_path):
    from lungsearch.versus import Outcome

    partly = Outcome("optuna", "", succeeded=2, failures={"3": "Traceback ...\nValueError: x"})
    partly.settle()
    assert partly.status == "ran" and partly.note == "1 of 3 trials failed (tracebacks in failures/optuna/)"
    partly.write_failures(tmp_path)
    assert (tmp_path / "failures" / "optuna" / "3.txt").read_text().endswith("ValueError: x")

    none = Outcome("keras-tuner-random", "", error="Traceback ...\nRuntimeError: y", note="RuntimeError: y")
    none.settle()
    assert none.status == "failed"
    assert none.note == "no trial succeeded; RuntimeError: y (traceback in failures/keras-tuner-random/error.txt)"
    skipped = Outcome("optuna", "", status="skipped", note="Optuna is not installed")
    skipped.settle()
    assert skipped.status == "skipped"
