"""Real local Ray searches on synthetic images: ASHA, fixed points, failing trials, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from conftest import REPO

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
    out = lungsearch("run", space_file, "--data", dataset, "--smoke", "--results", tmp_path / "results")
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


def final_trials(run_dir: Path) -> list[Path]:
    return [p.parent for p in (run_dir / "ray").glob("*/result.json") if '"final": true' in p.read_text()]


def kill_driver_then_resume(tmp_path, dataset, extra=()):
    """Start a search, SIGKILL its driver once a trial has finished, resume it, and check nothing was rerun."""
    space_file = tmp_path / "lr.py"
    space_file.write_text(SPACE.replace('[3, 5, 7]', '[3]') % (3, 1))
    results = tmp_path / "results"
    driver = subprocess.Popen([sys.executable, "-m", "lungsearch", "run", str(space_file), "--data", str(dataset),
                               "--smoke", "--results", str(results), *extra], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline:
        dirs = list(results.glob("*"))
        if dirs and final_trials(dirs[0]):
            run_dir = dirs[0]
            break
        time.sleep(0.5)
    assert run_dir is not None, "no trial finished in time"
    time.sleep(1.5)  # the experiment state is saved every second
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = {p.name: (p / "result.json").read_text() for p in final_trials(run_dir)}
    assert not (run_dir / "trials.csv").exists()

    out = lungsearch("resume", run_dir, *extra[:2])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "(resumed)" in out.stdout
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    assert len(trials) == 6 and set(trials["status"]) <= {"finished", "stopped"}
    for name, text in done_before.items():
        assert (run_dir / "ray" / name / "result.json").read_text() == text, f"{name} was rerun"
        assert trials.set_index("trial").loc[name, "retries"] == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed"] == 1


def test_resume_after_the_driver_is_killed_finishes_without_rerunning(tmp_path, dataset, cache_dir):
    kill_driver_then_resume(tmp_path, dataset)


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, dataset, cache_dir):
    """Ctrl-C stops Tune gracefully and fit() returns normally: the run must still not look finished."""
    results = tmp_path / "results"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "lungsearch", "run", "spaces/report.py", "--data",
                                   str(dataset), "--smoke", "--max-epochs", "1", "--results", str(results)],
                                  cwd=REPO, stdout=out, stderr=err, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and "of 3 |" not in (tmp_path / "out").read_text():
            time.sleep(0.2)  # until the search runs: the first progress line
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=300)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert driver.returncode == 130, stdout[-3000:] + stderr[-3000:]
    [run_dir] = results.iterdir()
    assert f"python -m lungsearch resume {run_dir}" in stderr and "Tuner.restore" not in stdout + stderr
    assert stdout.strip().splitlines()[-1] != str(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "finished" not in manifest
    assert not (run_dir / "trials.csv").exists()  # `report` says the search did not finish
