"""Real searches on a local Ray instance, through the command line as a user runs them."""
import json
import re
import subprocess
import sys
import time
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
    assert manifest["status"] == "finished"  # what tells a script a finished run from an interrupted one
    assert manifest["data"]["fingerprint"] and manifest["data"]["split"]["parts"]["train"]["images"] > 0
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    history = pd.read_csv(run_dir / "history.csv", keep_default_na=False)
    assert sorted(trials["fixed_point"]) == sorted(fixed)
    assert (trials["status"] == "finished").all()
    for _, t in trials.iterrows():
        assert (history["trial"] == t["trial"]).sum() == t["epochs_run"]
        assert 0 <= float(t["test_f1"]) <= 1 and 0 <= float(t["val_f1"]) <= 1
    return run_dir, manifest, trials


def taken_run_folders(results: Path, name: str, seconds: int) -> list[Path]:
    """Run folders of another run of `name`, one for each second from now on, each holding a file: whenever this
    run makes its folder, one of that name (same space, same second) exists already."""
    now, made = time.time(), []
    for second in range(seconds):
        folder = results / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + second))}-{name}"
        folder.mkdir(parents=True)
        (folder / "trials.csv").write_text("another run's results\n")
        made.append(folder)
    return made


def test_report_space_runs_the_three_models_through_ray(dataset, cache_dir, tmp_path):
    taken = taken_run_folders(tmp_path / "results", "report-smoke", 400)
    out = lungsearch("run", "spaces/report.py", "--data", dataset, "--smoke", "--max-epochs", 2, "--cpus-per-trial", 1,
                     "--results", tmp_path / "results")
    run_dir, manifest, trials = check_run_folder(out)
    # the run's name was taken (the same space, started the same second): it made NAME-2, and the other is intact
    assert run_dir.name.endswith("-report-smoke-2") and run_dir.parent / run_dir.name[:-2] in taken
    assert all((f / "trials.csv").read_text() == "another run's results\n" for f in taken)
    assert len(list((tmp_path / "results").iterdir())) == len(taken) + 1
    # the dataset has test/, so the default split resolves to target
    assert manifest["settings"]["split"] == "target" and manifest["split_requested"] == "auto"
    assert manifest["smoke"] is True and manifest["asha"]["metric"] == "objective"
    assert set(manifest["data"]["split"]["parts"]) == {"train", "val", "test", "holdout"}
    assert (trials["epochs_run"] <= 2).all()
    assert "search: 0 sampled trial(s) + 3 fixed point(s)" in out.stdout
    assert len(list((run_dir / "checkpoints").glob("*/model.keras"))) == 3


def test_a_run_folder_is_always_new_and_an_unusable_results_folder_is_named(tmp_path):
    from lungsearch.config import UserError
    from lungsearch.run.folder import new_run_folder

    results = tmp_path / "results"
    other = results / "20260101-120000-ablation"
    other.mkdir(parents=True)
    (other / "manifest.json").write_text("{}")
    made = [new_run_folder(results, "20260101-120000-ablation") for _ in range(2)]
    assert [f.name for f in made] == ["20260101-120000-ablation-2", "20260101-120000-ablation-3"]
    assert all(f.is_dir() and not list(f.iterdir()) for f in made)
    assert (other / "manifest.json").read_text() == "{}"
    with pytest.raises(UserError, match=r"cannot make a run folder in --results folder /proc/x \(.*\): pass "
                                        r"--results with a folder you can write to"):
        new_run_folder(Path("/proc/x"), "20260101-120000-ablation")


def test_missing_data_says_how_to_get_it(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "LUNGSEARCH_DATA"}
    out = lungsearch("run", "spaces/report.py", "--results", tmp_path, env=env)
    assert out.returncode == 2 and "--data DIR or set LUNGSEARCH_DATA" in out.stderr


@pytest.mark.skipif(real_data() is None, reason="LUNGSEARCH_DATA is not set")
def test_two_stage_smoke_search_on_the_real_chest_xrays(tmp_path):
    """The recommended space at smoke size: a cheap search stage on a share of the training patients, then the
    best configuration and base retrained on all of them with two training seeds (same split, other weights),
    ranked by their mean; the final model chosen on validation and exported."""
    out = lungsearch("run", "robust", "--data", real_data(), "--smoke", "--num-samples", 2, "--confirm-top", 1,
                     "--max-epochs", 2,
                     "--cpus-per-trial", 1, "--results", tmp_path / "results")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["split"]["protocol"] == "target" and manifest["data"]["images"] >= 5000
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    search, confirm = trials[trials["stage"] == "search"], trials[trials["stage"] == "confirm"]
    assert len(search) == 2 + 3 and len(confirm) == 2 + 2 + 2  # 1 configuration and base x 2 seeds, 2 once
    assert search["train_images"].max() < confirm["train_images"].min()  # the low rungs train on fewer images
    assert confirm["train_images"].nunique() == 1  # every seed and configuration: the same training part
    base = confirm[confirm["fixed_point"] == "base"]
    assert sorted(base["seed"]) == [0, 1]
    history = pd.read_csv(run_dir / "history.csv")
    first = history[history["trial"].isin(base["trial"]) & (history["epoch"] == 1)]["loss"]
    assert first.nunique() == 2  # two seeds, two different models
    base_objective = float(base["objective"].astype(float).mean())
    assert base_objective > 0.7
    confirmed = pd.read_csv(run_dir / "confirmed.csv", keep_default_na=False)
    assert list(confirmed["all_seeds"]) == [seeds == 2 for seeds in confirmed["seeds"]]  # bn_aug's two: once
    ranked = confirmed.sort_values(["all_seeds", "objective_mean"], ascending=False, kind="mergesort")
    assert list(confirmed["configuration"]) == list(ranked["configuration"])  # by mean, every seed's first
    assert float(confirmed.set_index("configuration").loc["base", "objective_mean"]) == pytest.approx(base_objective)
    card = json.loads((run_dir / "best_model.json").read_text())
    chosen = card["final_choice"]["chosen"]
    assert chosen in card["final_choice"]["scores"] and card["final_choice"]["metric"] == "validation auc"
    assert card["final_choice"]["scores"][chosen] == max(card["final_choice"]["scores"].values())
    assert len(card["members"]) >= 2 and all((run_dir / m["model"]).is_file() for m in card["members"])
    report = (run_dir / "report.md").read_text()
    assert "## Confirmation: rankings that hold" in report and re.search(r"\*\*First place (held|did not hold)", report)
    assert "Spearman" in report or "not measurable" in report
    adapted = card["final_choice"]["adaptation"]  # cross-fitted on 2 folds of the validation part at smoke size
    assert len(adapted["fold_auc"]) == 2 and adapted["kept"] == (adapted["gain"] > 0)
    record = json.loads((run_dir / "adapted" / "adaptation.json").read_text())
    assert record["members"] == adapted["adapted_from"] and len(record["fold_of_val_image"]) > 0
    copies = [m for m in card["members"] if ".fold" in m["trial"]]
    assert (len(copies) == 2 * len(record["members"])) == adapted["kept"] == (card["final_choice"]["model"].endswith(
        ", adapted"))
    assert "**Adaptation to the validation part**" in report
    [entry] = [e for e in json.loads((run_dir / "evaluation.json").read_text()) if "best_minus_base_seeds" in e]
    seeds = entry["best_minus_base_seeds"]  # the final model against base's two seeds averaged
    assert seeds["base"] == "base (2 seeds)" and set(seeds["metrics"]) == {"f1_at_0.5", "f1_at_threshold", "auc"}
    assert "minus base (2 seeds)**" in report or "The final model is base (2 seeds)" in report


def write_space(tmp_path, settings: str) -> Path:
    path = tmp_path / "myspace.py"
    path.write_text(f'"""A test space."""\nSETTINGS = {settings}\n')
    return path


@pytest.mark.parametrize("settings, flags, message", [
    ("{'patience': 0}", [], r"SETTINGS of .*myspace.py: patience must be at least 1, got 0"),
    ("{'num_samples': 'ten'}", [], r"SETTINGS of .*myspace.py: num_samples must be a int \(a whole number\), 0 or "
                                   r"more, got 'ten'"),
    ("{'num_samples': 2.5}", [], r"SETTINGS of .*myspace.py: num_samples must be a int .*got 2.5"),
    ("{'max_concurrent': -1}", [], r"SETTINGS of .*myspace.py: max_concurrent must be 0"),
    ("{}", ["--max-concurrent", "-1"], r"--max-concurrent must be 0 \(as many as resources allow\) or more, got -1"),
    ("{}", ["--gpus-per-trial", "-3"], r"--gpus-per-trial must be -1 .*got -3.0"),
    ("{}", ["--num-samples", "0", "--no-fixed-points"],
     r"nothing to run: no sampled trials \(--num-samples 0\) and no fixed points \(--no-fixed-points\)"),
    ("{}", ["--num-samples", "4"], r"--num-samples 4 asks for sampled trials, but space file .*myspace.py declares "
                                   r"no parameter to search \(no `hp` declarations\), so every sampled trial would be "
                                   r"the report's base model again"),
    ("{'num_samples': 3}", [], r"num_samples: 3 in SETTINGS of .*myspace.py asks for sampled trials"),
    ("{'fixed_points': False}", [],
     r"nothing to run: .*\(the default num_samples 0\).*\(fixed_points: False in SETTINGS of .*myspace.py\)"),
])
def test_bad_settings_fail_before_ray_naming_the_file_or_flag(tmp_path, capsys, settings, flags, message):
    from lungsearch import cli

    space = write_space(tmp_path, settings)
    assert cli.main(["run", str(space), "--data", str(tmp_path), "--results", str(tmp_path / "results"), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "results").exists()


def test_a_grace_period_that_leaves_asha_no_rung_is_warned_about(capsys):
    from lungsearch import space as spaces
    from lungsearch.run.settings import check_sampled_trials, resolve_settings

    ablation = spaces.load_space("ablation")
    for flags, warned in [({"grace_period": 10, "max_epochs": 2}, True), ({"grace_period": 2, "max_epochs": 2}, True),
                          ({"grace_period": 1, "max_epochs": 2}, False),
                          ({"grace_period": 10, "max_epochs": 2, "num_samples": 0}, False)]:  # fixed points only
        check_sampled_trials(ablation, resolve_settings(ablation, flags, smoke=False), flags)
        err = capsys.readouterr().err
        assert ("ASHA can never stop a trial early" in err) == warned, (flags, err)
        if flags["grace_period"] == 10 and warned:
            assert err.startswith("warning: --grace-period (grace_period) 10 is not below --max-epochs (max_epochs) 2")


def test_dead_cluster_addresses_fail_in_seconds_without_a_run_folder(tmp_path, capsys, monkeypatch):
    from lungsearch import cli

    args = ["run", "spaces/report.py", "--data", str(tmp_path), "--results", str(tmp_path / "results")]
    started = time.time()
    assert cli.main([*args, "--address", "127.0.0.1:1"]) == 2
    assert "--address 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1" in capsys.readouterr().err
    # `--address auto` reads the address file the last `ray start` wrote; the cluster it names is gone
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    stale = tmp_path / "tmp" / "ray" / "ray_current_cluster"
    stale.parent.mkdir(parents=True)
    stale.write_text("127.0.0.1:1")
    assert cli.main([*args, "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert f"--address auto (read from {stale}" in err and "no Ray cluster answers at 127.0.0.1:1" in err
    assert "That cluster has stopped" in err
    assert cli.main([*args, "--address", "head-node"]) == 2
    assert "'head-node' is not HOST:PORT" in capsys.readouterr().err
    assert time.time() - started < 60 and not (tmp_path / "results").exists()


def test_a_trial_request_no_node_can_hold_is_refused():
    from lungsearch.config import SearchSettings, UserError
    from lungsearch.run.cluster import resources

    laptop = [{"CPU": 2.0, "memory": 1e9}]
    assert resources(SearchSettings(), laptop) == {"cpu": 1.0, "gpu": 0.0}  # two trials at a time
    with pytest.raises(UserError, match=r"--gpus-per-trial \(gpus_per_trial\) 2 asks for 2 GPU\(s\) per trial, but "
                                        r"the Ray cluster has 0 GPU\(s\) in all, at most 0 on one node"):
        resources(SearchSettings(gpus_per_trial=2), laptop)
    with pytest.raises(UserError, match=r"--cpus-per-trial \(cpus_per_trial\) 64 asks for 64 CPU\(s\) .*2 CPU\(s\) "
                                        r"in all, at most 2 on one node"):
        resources(SearchSettings(cpus_per_trial=64), laptop)
    # a CPU-less head and two 1-CPU workers: the automatic choice fits a node (it used to ask for 2 and wait forever)
    cluster = [{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert resources(SearchSettings(), cluster) == {"cpu": 1.0, "gpu": 0.0}
    with pytest.raises(UserError, match="2 CPU"):
        resources(SearchSettings(cpus_per_trial=2), cluster)
    gpus = [{"CPU": 32.0}, {"CPU": 8.0, "GPU": 2.0}]
    assert resources(SearchSettings(), gpus) == {"cpu": 4.0, "gpu": 1.0}
    assert resources(SearchSettings(gpus_per_trial=0.25), gpus) == {"cpu": 4.0, "gpu": 0.25}
    assert resources(SearchSettings(gpus_per_trial=2), gpus) == {"cpu": 4.0, "gpu": 2.0}
    with pytest.raises(UserError, match=r"12 CPU\(s\) per trial, but the Ray cluster has at most 8 on a node with 1 GPU"):
        resources(SearchSettings(cpus_per_trial=12, gpus_per_trial=1), gpus)
    with pytest.raises(UserError, match="at most 2 on one node"):
        resources(SearchSettings(gpus_per_trial=3), gpus)


def test_more_gpus_than_the_machine_has_fails_before_the_run_folder(dataset, cache_dir, tmp_path):
    out = lungsearch("run", "spaces/report.py", "--data", dataset, "--smoke", "--gpus-per-trial", 64,
                     "--results", tmp_path / "results", timeout=300)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert "--gpus-per-trial (gpus_per_trial) 64 asks for 64 GPU(s) per trial, but the Ray cluster has" in out.stderr
    assert not list((tmp_path / "results").glob("*"))


class Grid(list):
    """What search_status reads of Tune's ResultGrid."""

    def __init__(self, terminated: int, errors: int, other: int = 0):
        super().__init__(range(terminated + errors + other))
        self.num_terminated, self.num_errors = terminated, errors


def test_search_status_tells_finished_from_interrupted_and_all_failed():
    from lungsearch.run.outcome import search_status

    assert search_status(Grid(3, 1), 4, interrupted=False) == "finished"  # some failed: still finished
    assert search_status(Grid(3, 1), 4, interrupted=True) == "interrupted"  # Ctrl-C: Tune marks running trials ended
    assert search_status(Grid(2, 0), 4, interrupted=False) == "interrupted"  # trials never started
    assert search_status(Grid(2, 0, other=2), 4, interrupted=False) == "interrupted"  # pending or running
    assert search_status(None, None, interrupted=True) == "interrupted"  # Ctrl-C before fit() returned
    assert search_status(Grid(0, 4), 4, interrupted=False) == "failed"


def test_run_exits_0_only_with_a_finished_search_and_its_report(tmp_path, capsys, monkeypatch):
    from lungsearch import cli, run

    args = ["run", "spaces/report.py", "--data", str(tmp_path)]
    monkeypatch.setattr(run, "run_search", lambda *a, **k: tmp_path)  # finished, but the report cannot be written
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert f"retry the report with `python -m lungsearch report {tmp_path}`" in err and str(tmp_path) not in out

    def stop(code, message):
        def fake(*a, **k):
            raise run.SearchIncomplete(message, code, tmp_path)
        return fake

    monkeypatch.setattr(run, "run_search", stop(130, f"interrupted: finish it with `python -m lungsearch resume {tmp_path}`"))
    assert cli.main(args) == 130
    out, err = capsys.readouterr()
    assert f"python -m lungsearch resume {tmp_path}" in err and not out.strip().endswith(str(tmp_path))
    monkeypatch.setattr(run, "resume_search", stop(1, "error: every trial failed"))
    assert cli.main(["resume", str(tmp_path)]) == 1 and "every trial failed" in capsys.readouterr().err

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(run, "run_search", ctrl_c)
    assert cli.main(args) == 130 and "interrupted" in capsys.readouterr().err


def half_made_run(tmp_path, name: str, ray_files=(), manifest=True) -> Path:
    """A run folder as a driver that died early leaves it: manifest.json (status "running"), ray/ files. Its data
    folder, "my data", holds four images."""
    from dataclasses import asdict

    from conftest import make_dataset
    from lungsearch import data
    from lungsearch.config import SMOKE, SearchSettings

    space = tmp_path / "myspace.py"
    space.write_text('"""A test space."""\nSETTINGS = {"num_samples": 6, "max_epochs": 10}\n')
    run_dir = tmp_path / "results" / name
    run_dir.mkdir(parents=True)
    (run_dir / "space.py").write_text(space.read_text())
    settings = SearchSettings(num_samples=6, max_epochs=10).replace(**SMOKE).replace(
        seed=3, searcher="tpe", fixed_points=False, split="target")
    images = tmp_path / "my data"
    if not images.is_dir():
        make_dataset(images, {"train": 1})
    if manifest:
        (run_dir / "manifest.json").write_text(json.dumps({
            "space_file": str(space), "space_source": space.read_text(), "settings": asdict(settings),
            "smoke": True, "split_requested": "auto", "run_constants": {"data_dir": str(images)},
            "data": {"dir": str(images), "fingerprint": data.scan(images).fingerprint},
            "started": "2026-01-02T03:04:05", "status": "running"}))
    for f in ray_files:
        (run_dir / "ray" / f).parent.mkdir(exist_ok=True)
        (run_dir / "ray" / f).write_text("{}")
    return run_dir


def test_report_and_resume_say_the_same_of_half_made_run_folders(tmp_path, capsys, monkeypatch):
    """Resumable, or clearly not (and why, and what to run instead): `report` and `resume` agree, and `resume`
    says so before Ray starts."""
    from lungsearch import cli
    from lungsearch.run import search

    def never(*args, **kwargs):
        raise AssertionError("resume went on to start Ray")
    monkeypatch.setattr(search, "execute", never)
    monkeypatch.setattr(search, "connect", never)

    def both(run_dir) -> str:
        assert cli.main(["report", str(run_dir)]) == 2
        report = capsys.readouterr().err
        started = time.time()
        assert cli.main(["resume", str(run_dir)]) == 2
        assert time.time() - started < 5
        assert capsys.readouterr().err == report
        return report

    for name, files in [("no-ray", []), ("ray-before-any-state", ["tuner.pkl"])]:
        run_dir = half_made_run(tmp_path, name, files)
        said = both(run_dir)
        assert f"{run_dir} is a run that never started a trial" in said and "status 'running', started 2026-01-02T03:04:05" in said
        assert "cannot be resumed" in said and "lungsearch resume" not in said
        space, data, results = tmp_path / "myspace.py", tmp_path / "my data", tmp_path / "results"
        assert (f"Start it again with `python -m lungsearch run {space} --data '{data}' --results {results} --smoke "
                f"--seed 3 --searcher tpe --no-fixed-points`") in said
    for run_dir in [half_made_run(tmp_path, "no-manifest", ["tuner.pkl"], manifest=False), tmp_path / "nowhere"]:
        said = both(run_dir)
        assert ("not a lungsearch run folder" in said) != ("does not exist" in said)

    resumable = half_made_run(tmp_path, "saved", ["tuner.pkl", "experiment_state-2026-01-02_03-04-06.json"])
    assert cli.main(["report", str(resumable)]) == 2
    assert f"finish it with `python -m lungsearch resume {resumable}`" in capsys.readouterr().err
    resumed = []
    monkeypatch.setattr(search, "execute", lambda *args, **kwargs: resumed.append(args) or resumable)
    assert search.resume_search(resumable) == resumable and resumed == [(resumable, None)]


def test_resume_refuses_data_that_changed_since_the_run_started(tmp_path, capsys, monkeypatch):
    """Before Ray starts: a changed image and a deleted one give the data folder another fingerprint."""
    from lungsearch import cli, data
    from lungsearch.run import search

    from conftest import make_dataset

    images = make_dataset(tmp_path / "xrays", {"train": 3, "test": 2})
    run_dir = half_made_run(tmp_path, "saved", ["tuner.pkl", "experiment_state-2026-01-02_03-04-06.json"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    before = data.scan(images).fingerprint
    manifest["data"] = {"dir": str(images), "fingerprint": before}
    manifest["run_constants"] = {"data_dir": str(images)}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    resumed = []
    monkeypatch.setattr(search, "execute", lambda *args, **kwargs: resumed.append(kwargs["dataset"]) or run_dir)
    assert search.resume_search(run_dir) == run_dir and resumed[0].fingerprint == before  # unchanged: resumed

    first, second = sorted((images / "train" / "NORMAL").iterdir())[:2]
    first.write_bytes(second.read_bytes())
    second.unlink()
    after = data.scan(images).fingerprint
    assert cli.main(["resume", str(run_dir)]) == 2 and len(resumed) == 1
    err = capsys.readouterr().err
    assert (f"cannot resume {run_dir}: its data folder {images} has changed since the run started (fingerprint now "
            f"{after}, the run's {before} in manifest.json)") in err
    assert "Put the run's images back, or start a new run on the changed data: `python -m lungsearch run" in err
    assert cli.main(["resume", str(run_dir / "manifest.json")]) == 2
    assert f"{run_dir / 'manifest.json'} is a file, not a run folder" in capsys.readouterr().err


def test_report_and_resume_refuse_a_run_folder_of_a_newer_format(tmp_path, capsys, monkeypatch):
    """A manifest whose format_version is newer than this lungsearch knows is refused, by `report`, `resume` and
    load_run alike, before anything else is read; a manifest without format_version is format 1."""
    from lungsearch import analysis, cli, store
    from lungsearch.config import UserError
    from lungsearch.run import search

    resumed = []
    monkeypatch.setattr(search, "execute", lambda *args, **kwargs: resumed.append(args) or args[0])
    run_dir = half_made_run(tmp_path, "saved", ["tuner.pkl", "experiment_state-2026-01-02_03-04-06.json"])
    (run_dir / "trials.csv").write_text("trial,objective\ntrial_1,0.9\n")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "format_version" not in manifest and search.resume_search(run_dir) == run_dir  # read as format 1
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": store.MANIFEST_FORMAT + 1,
                                                       "packages": {"lungsearch": "9.1.0"}}))
    said = (f"{run_dir / 'manifest.json'}: run folder format {store.MANIFEST_FORMAT + 1}, newer than this lungsearch "
            f"({cli.version()}) reads (format {store.MANIFEST_FORMAT} at most): the run was made by a newer lungsearch "
            f"(9.1.0); use that version, or upgrade this one, to read it")
    for command in ("report", "resume"):
        assert cli.main([command, str(run_dir)]) == 2
        assert capsys.readouterr().err == f"error: {said}\n"
    with pytest.raises(UserError) as err:
        analysis.load_run(run_dir)
    assert str(err.value) == said and len(resumed) == 1
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": "2"}))
    assert cli.main(["resume", str(run_dir)]) == 2
    assert "format_version '2' is not a run folder format (a whole number from 1 to 1)" in capsys.readouterr().err
