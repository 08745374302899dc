"""Real searches on a local Ray instance, through the command line as a user runs them."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, real_data


def lungsearch(*args, timeout=600, env=None):
    out = subprocess.run([sys.executable, "-m", "lungsearch", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout, env=env)
    return out


def check_run_folder(out, fixed=("base", "bn_aug", "bn_aug_dropout")):
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert run_dir.is_dir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("space_source", "settings", "packages", "data", "search_wall_s"):
        assert key in manifest
    assert manifest["data"]["fingerprint"] and manifest["data"]["split"]["parts"]["train"]["images"] > 0
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    history = pd.read_csv(run_dir / "history.csv", keep_default_na=False)
    assert sorted(trials["fixed_point"]) == sorted(fixed)
    assert (trials["status"] == "finished").all()
    for _, t in trials.iterrows():
        assert (history["trial"] == t["trial"]).sum() == t["epochs_run"]
        assert 0 <= float(t["test_f1"]) <= 1 and 0 <= float(t["val_f1"]) <= 1
    return run_dir, manifest, trials


def test_report_space_runs_the_three_models_through_ray(dataset, cache_dir, tmp_path):
    out = lungsearch("run", "spaces/report.py", "--data", dataset, "--smoke", "--max-epochs", 2,
                     "--results", tmp_path / "results")
    run_dir, manifest, trials = check_run_folder(out)
    # the dataset has test/, so the default split resolves to target
    assert manifest["settings"]["split"] == "target" and manifest["split_requested"] == "auto"
    assert manifest["smoke"] is True and manifest["asha"]["metric"] == "objective"
    assert set(manifest["data"]["split"]["parts"]) == {"train", "val", "test", "holdout"}
    assert (trials["epochs_run"] <= 2).all()
    assert "search: 0 sampled trial(s) + 3 fixed point(s)" in out.stdout
    assert len(list((run_dir / "checkpoints").glob("*/model.keras"))) == 3


def test_missing_data_says_how_to_get_it(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "LUNGSEARCH_DATA"}
    out = lungsearch("run", "spaces/report.py", "--results", tmp_path, env=env)
    assert out.returncode == 2 and "--data DIR or set LUNGSEARCH_DATA" in out.stderr


@pytest.mark.skipif(real_data() is None, reason="LUNGSEARCH_DATA is not set")
def test_smoke_run_on_the_real_chest_xrays(tmp_path):
    out = lungsearch("run", "spaces/report.py", "--data", real_data(), "--split", "report", "--smoke",
                     "--results", tmp_path / "results")
    run_dir, manifest, trials = check_run_folder(out)
    assert manifest["data"]["split"]["protocol"] == "report"
    assert manifest["data"]["images"] >= 5000
    assert trials.set_index("fixed_point").loc["base", "val_f1"] > 0.7
