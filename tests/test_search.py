"""Real local Ray searches on synthetic images: ASHA, fixed points, failing trials, resume after a kill."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from lungsearch.bench import search_efficiency

SPACE = '''"""Test space: learning rates from useless to good, and some trials that cannot be built."""
import keras_tuner as kt
hp = kt.HyperParameters()
hp.Fixed("conv_blocks", 3)
hp.Choice("kernel_size", [3, 5, 7])  # three blocks of 7x7 do not fit a 48 px input: those trials raise
hp.Float("learning_rate", 1e-5, 3e-2, sampling="log")
hp.Int("dense_units", 8, 32, sampling="log")
SETTINGS = {"num_samples": %d, "max_epochs": 4, "grace_period": 1, "reduction_factor": 2, "seed": %d,
            "max_failures": 1}
'''


def lungsearch(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lungsearch", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_asha_stops_sampled_trials_keeps_fixed_points_and_records_failures(tmp_path, dataset, cache_dir):
    space_file = tmp_path / "lr.py"
    space_file.write_text(SPACE % (8, 0))
    out = lungsearch("run", space_file, "--data", dataset, "--smoke", "--results", tmp_path / "results",
                     "--cpus-per-trial", 1)  # two trials at a time on two cores
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "of 11 |" in out.stdout and "best val AUC" in out.stdout  # progress lines
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    assert len(trials) == 11
    fixed = trials[trials["fixed_point"] != ""]
    assert sorted(fixed["fixed_point"]) == ["base", "bn_aug", "bn_aug_dropout"]
    assert (fixed["status"] == "finished").all() and (fixed["epochs_run"] == 4).all()
    sampled = trials[trials["fixed_point"] == ""]
    stopped = sampled[sampled["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epochs_run"] < 4).all()
    assert (stopped["stopped_at_rung"].astype(int) == stopped["epochs_run"]).all()
    failed = sampled[sampled["status"] == "failed"]
    assert len(failed) >= 1
    assert (failed["cfg_kernel_size"] == 7).all() and (failed["retries"] == 1).all()
    assert failed["error"].str.contains("do not fit a 48 px input").all()
    finished = sampled[sampled["status"] == "finished"]
    assert (finished["test_f1"] != "").all() and (stopped["test_f1"] == "").all()
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == trials["epochs_run"].sum()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["trial_startup_s_mean"] > 0 and 0 < manifest["training_fraction"] < 1
    kept = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert set(fixed["trial"]) | set(finished["trial"]) <= kept and not kept & set(stopped["trial"])
    # reused workers: each start line ends with the worker's process id, and workers ran several trials
    starts = [line.split() for log in (run_dir / "attempts").glob("*.log") for line in log.read_text().splitlines()]
    assert len(starts) >= 11 and len({s[3] for s in starts}) < len(starts) / 2, starts
    # bench's search efficiency: each trial's epochs at its solo epoch time, over wall time x 2 slots
    figures = search_efficiency(run_dir, {})
    assert figures["epochs"] == len(history) and figures["trials"] == 11 and figures["slots"] == 2
    assert 0 < figures["efficiency"] < 1 and figures["epochs_per_s"] == round(len(history) / manifest["search_wall_s"], 3)


def final_trials(run_dir: Path) -> list[Path]:
    return [p.parent for p in (run_dir / "ray").glob("*/result.json") if '"final": true' in p.read_text()]


def saved_state(run_dir: Path) -> tuple[int, dict[str, str]]:
    """The experiment state Tune last copied into the run folder: its time (ns) and each trial's status by id;
    (0, {}) before the first copy or while one is being written."""
    states = sorted((run_dir / "ray").glob("experiment_state-*.json"))
    try:
        at = states[-1].stat().st_mtime_ns
        trials = [json.loads(entry) for entry, _ in json.loads(states[-1].read_text())["trial_data"]]
        return at, {t["trial_id"]: t["status"] for t in trials}
    except (IndexError, ValueError, KeyError, OSError):
        return 0, {}


def recorded_ended(run_dir: Path, statuses: dict[str, str]) -> set[Path]:
    """The folders of the trials that `statuses` records as ended (finished or stopped by ASHA)."""
    ended = [f"_{trial_id}" for trial_id, status in statuses.items() if status == "TERMINATED"]
    return {p for p in (run_dir / "ray").iterdir() if p.is_dir() and p.name.endswith(tuple(ended))} if ended else set()


def kill_driver_then_resume(tmp_path, dataset, extra=(), flags=(), planned=6):
    """Start a search, SIGKILL its driver once Tune's saved state records a finished trial, resume it, and check
    that no trial the saved state records as ended was rerun. `extra` goes to run (its first two words to resume
    too), `flags` to run only."""
    space_file = tmp_path / "lr.py"
    space_file.write_text(SPACE.replace('[3, 5, 7]', '[3]') % (3, 1))
    results = tmp_path / "results"
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "lungsearch", "run", str(space_file), "--data",
                                   str(dataset), "--smoke", "--results", str(results), *extra, *flags], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, recorded_at, run_dir = time.time() + 300, None, None
        while time.time() < deadline and driver.poll() is None:
            dirs = list(results.glob("*"))
            if dirs:
                at, statuses = saved_state(dirs[0])
                if recorded_at is None and recorded_ended(dirs[0], statuses) & set(final_trials(dirs[0])):
                    recorded_at = at  # the saved state records a finished trial, the searcher's state with it
                elif recorded_at is not None and at > recorded_at:  # and Tune has copied its state again since
                    run_dir = dirs[0]
                    break
            time.sleep(0.1)
        assert run_dir is not None, ("no finished trial was recorded in the saved experiment state in time: "
                                     + (tmp_path / "driver.log").read_text()[-3000:])
        time.sleep(0.3)  # Tune copies its state once a second: kill between two copies, not during one
    finally:
        driver.kill()
        driver.wait()
    _, statuses = saved_state(run_dir)
    assert statuses, "the saved experiment state is unreadable"
    done_before = {p.name: (p / "result.json").read_text() for p in recorded_ended(run_dir, statuses)}
    assert not (run_dir / "trials.csv").exists()
    from lungsearch import analysis
    from lungsearch.config import UserError

    with pytest.raises(UserError, match=f"did not finish; finish it with `python -m lungsearch resume {run_dir}`"):
        analysis.load_run(run_dir)  # what `report` says: the same folder `resume` finishes below

    out = lungsearch("resume", run_dir, *extra[:2])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "(resumed)" in out.stdout
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    assert len(trials) == planned and set(trials["status"]) <= {"finished", "stopped"}
    assert sorted(trials.loc[trials["fixed_point"] != "", "fixed_point"]) == ["base", "bn_aug", "bn_aug_dropout"]
    for name, text in done_before.items():
        assert (run_dir / "ray" / name / "result.json").read_text() == text, f"{name} was rerun"
        assert trials.set_index("trial").loc[name, "retries"] == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed"] == 1
    # the searcher's state is one file per save: nothing beside it, no temporary files left behind
    leftovers = [p.name for p in (run_dir / "ray").iterdir() if p.is_file() and (p.name.endswith(".inner")
                                                                                 or "-tmp-" in p.name)]
    assert not leftovers, leftovers
    return run_dir, manifest


def test_a_tpe_search_resumes_after_the_driver_is_killed_without_rerunning(tmp_path, dataset, cache_dir):
    """The TPE searcher's state (and which fixed points already ran) survives Tune's save and restore. (A random
    search is killed and resumed the same way on a cluster in test_cluster.py.)"""
    run_dir, manifest = kill_driver_then_resume(
        tmp_path, dataset, flags=["--searcher", "tpe", "--max-epochs", "1", "--num-samples", "2", "--cpus-per-trial", "1"], planned=5)
    assert manifest["settings"]["searcher"] == "tpe" and manifest["status"] == "finished"


def test_fixed_points_first_saves_the_inner_searcher_inside_its_one_file(tmp_path):
    """Tune saves a searcher to a temporary name and renames that one file: the inner state must be inside it."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from lungsearch.run.searchers import FixedPointsFirst

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"learning_rate": tune.loguniform(1e-4, 1e-2), "dense_units": tune.choice([8, 16, 32]),
             "image_size": 48, "fixed_point": ""}
    points = [{"learning_rate": 1e-3, "dense_units": 16, "fixed_point": "base"},
              {"learning_rate": 1e-3, "dense_units": 32, "fixed_point": "bn_aug"}]

    def searcher():
        s = FixedPointsFirst(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0)), points)
        assert s.set_search_properties("objective", "max", space)
        return s

    first_sampled = searcher()
    first_sampled.points = []
    untrained = first_sampled.suggest("x")  # what a searcher that saw nothing suggests first

    a = searcher()
    assert a.suggest("t1") == points[0]
    a.save(str(tmp_path / "one.pkl"))
    b = searcher()
    b.restore(str(tmp_path / "one.pkl"))
    assert b.points == points[1:] and b.fixed_ids == {"t1"}
    assert b.suggest("t2") == points[1]  # the next fixed point, not the first again

    assert a.suggest("t2") == points[1]
    assert a.suggest("t3") == untrained
    for epoch in (1, 2):
        a.on_trial_result("t3", {"objective": 0.6 + epoch / 10, "training_iteration": epoch})
    a.on_trial_complete("t3", {"objective": 0.8, "training_iteration": 2})
    a.suggest("t4")  # left running at the save
    a.save(str(tmp_path / "two.pkl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pkl", "two.pkl"]  # no file beside either

    c = searcher()
    c.restore(str(tmp_path / "two.pkl"))
    assert c.points == [] and c.fixed_ids == {"t1", "t2"}
    assert c.suggest("t5") == a.suggest("t5") != untrained  # the TPE state came back, sampler included
    c.on_trial_complete("t4", {"objective": 0.7, "training_iteration": 1})  # the running trial is known
    c.on_trial_complete("t1", {"objective": 0.9, "training_iteration": 1})  # a fixed point: not for the searcher
    assert len(c.inner._ot_study.trials) == 3  # t3, t4, t5: no fixed point


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_exits_130_or_143_and_says_how_to_resume(tmp_path, dataset, cache_dir, stop, code):
    """Ctrl-C stops Tune gracefully and fit() returns normally: the run must still not look finished. SIGTERM, what
    a batch scheduler sends at a job's time limit, does the same, with its own exit status."""
    results = tmp_path / "results"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "lungsearch", "run", "spaces/report.py", "--data",
                                   str(dataset), "--smoke", "--max-epochs", "1", "--results", str(results)],
                                  cwd=REPO, stdout=out, stderr=err, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and "of 3 |" not in (tmp_path / "out").read_text():
            time.sleep(0.2)  # until the search runs: the first progress line
        driver.send_signal(stop)
        driver.wait(timeout=300)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert driver.returncode == code, stdout[-3000:] + stderr[-3000:]
    [run_dir] = results.iterdir()
    assert f"python -m lungsearch resume {run_dir}" in stderr and "Tuner.restore" not in stdout + stderr
    assert stdout.strip().splitlines()[-1] != str(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "finished" not in manifest
    assert not (run_dir / "trials.csv").exists()  # `report` says the search did not finish


def test_exploring_tpe_draws_its_random_share_at_random_and_the_rest_by_tpe():
    """ExploringTPE on a one-parameter objective that peaks at x = 0.05: the trials it marks as exploring (about
    random_fraction of those after the startup) are spread over [0, 1] as random draws are; the others gather at
    the peak, as TPE's do; a fraction of 0 is plain TPE, and the same seed gives the same trials."""
    import optuna

    from lungsearch.run.searchers import ExploringTPE

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def study(fraction: float):
        s = optuna.create_study(direction="maximize", sampler=ExploringTPE(fraction, seed=0, n_startup_trials=10))
        s.optimize(lambda t: -abs(t.suggest_float("x", 0.0, 1.0) - 0.05), n_trials=90)
        return s

    s = study(1 / 3)
    later = [t for t in s.trials if t.number >= 10]
    explored = [t.params["x"] for t in later if s.sampler.explores(t)]
    guided = [t.params["x"] for t in later if not s.sampler.explores(t)]
    assert 0.2 < len(explored) / len(later) < 0.47
    assert not set(explored) & {t.params["x"] for t in s.trials[:10]}  # not the startup trials drawn again
    assert np.std(explored) > 0.2 and np.median(np.abs(np.array(guided) - 0.05)) < 0.05
    assert [t.params["x"] for t in study(1 / 3).trials] == [t.params["x"] for t in s.trials]
    plain = study(0.0)
    assert not any(plain.sampler.explores(t) for t in plain.trials)
    assert np.median(np.abs(np.array([t.params["x"] for t in plain.trials[10:]]) - 0.05)) < 0.05
