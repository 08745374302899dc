"""The report, the exported models, and evaluate/predict, on one small real run shared by the module."""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, make_dataset, truncate

from lungsearch import analysis, cli, data, figures, metrics, report, space
from lungsearch.config import OBJECTIVE, SMOKE, SearchSettings, UserError
from lungsearch.metrics import binary_metrics
from lungsearch.run import folder

PNG = b"\x89PNG\r\n\x1a\n"
# Two input sizes, so models are evaluated at their own size; kernel 7 does not fit (those trials fail).
SPACE = '''"""Report test space."""
import keras_tuner as kt
hp = kt.HyperParameters()
hp.Choice("image_size", [32, 40])
hp.Choice("kernel_size", [3, 7])
hp.Float("learning_rate", 1e-3, 3e-3, sampling="log")
SETTINGS = {"num_samples": 3, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "image_size": 40,
            "patience": 3, "seed": %d, "max_failures": 0}
'''


def lungsearch(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "lungsearch", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real search (3 fixed points + 3 sampled trials, 2 epochs) whose `run` wrote the report at its end.
    The dataset has its own test/ folder, so the default split is target (with an in-distribution holdout)."""
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("LUNGSEARCH_CACHE", str(root / "cache"))
    dataset = make_dataset(root / "xrays", {"train": 12, "test": 4})
    (root / "space.py").write_text(SPACE % 2)
    out = lungsearch("run", root / "space.py", "--data", dataset, "--results", root / "results",
                     "--cpus-per-trial", 1,  # two trials at a time on two cores
                     "--patience", 2, "--keep-checkpoints", 4)  # flags over the space's SETTINGS
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    yield Path(out.stdout.strip().splitlines()[-1]), out
    mp.undo()


def check_png(png: bytes) -> np.ndarray:
    assert png[:8] == PNG
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 50 and image.shape[1] > 50
    return image


def test_run_ends_with_the_report_and_the_exported_best_model(run):
    run_dir, out = run
    assert f"report: {run_dir / 'report.html'}" in out.stdout and out.stdout.strip().endswith(str(run_dir))
    for name in ("leaderboard.csv", "evaluation.json", "report.md", "report.html", "best_model.keras",
                 "best_model.json"):
        assert (run_dir / name).is_file(), name
    pngs = sorted((run_dir / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {"samples", "learning_curves", "best_model", "asha", "hyperparameters",
                                      "shift"}
    for p in pngs:
        check_png(p.read_bytes())

    board = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False)
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    assert len(board) == len(trials) == 6 and list(board["rank"]) == list(range(1, 7))
    objective = pd.to_numeric(board["objective"], errors="coerce").fillna(-1).to_numpy()
    assert (np.diff(objective) <= 0).all()  # ranked by the search's objective

    card = json.loads((run_dir / "best_model.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["settings"]["patience"], manifest["settings"]["keep_checkpoints"]) == (2, 4)  # the flags won
    assert manifest["settings"]["seed"] == 2  # where no flag was given, the space's SETTINGS
    best = card["trials"][0]
    assert best == board.loc[board["checkpoint"].astype(str) == "True", "trial"].iloc[0]
    assert card["data_fingerprint"] == manifest["data"]["fingerprint"] and card["split_protocol"] == "target"
    assert card["objective"] == OBJECTIVE.text and card["split_sources"] == manifest["data"]["split"]["sources"]
    assert card["tta"] is card["config"]["tta"] is False and card["normalize"] == card["config"]["normalize"]
    assert set(card["metrics"]["holdout_at_0.5"]) >= {"auc", "accuracy", "specificity"}
    assert card["greyscale"] is True and 0 < card["threshold"] < 1 and card["config"]["image_size"] == card["image_size"]
    # the report re-evaluates the saved model on the same test part the trial was scored on
    recorded = trials.set_index("trial").loc[best]
    assert card["metrics"]["test_at_0.5"]["f1"] == pytest.approx(float(recorded["test_f1"]), abs=1e-6)
    assert card["metrics"]["test_at_0.5"]["accuracy"] == pytest.approx(float(recorded["test_accuracy"]), abs=1e-6)
    lo, hi = card["metrics"]["test_ci95_at_0.5"]["f1"]
    assert lo <= card["metrics"]["test_at_0.5"]["f1"] <= hi

    evaluated = json.loads((run_dir / "evaluation.json").read_text())
    names = {e["model"] for e in evaluated}
    assert all(e["intervals"] == analysis.CI_TEXT for e in evaluated)
    [entry] = [e for e in evaluated if "best_minus_base" in e]  # the best trial's, paired with base
    assert entry["trials"] == card["trials"] and entry["best_minus_base"]["base"] == "base"
    paired = entry["best_minus_base"]["metrics"]
    base = next(e for e in evaluated if e["model"] == "base")
    for key, metric, at in (("f1_at_0.5", "f1", "test_at_0.5"), ("auc", "auc", "test_at_0.5"),
                            ("f1_at_threshold", "f1", "test_at_threshold")):
        assert paired[key]["best"] == pytest.approx(card["metrics"][at][metric], abs=1e-9)
        assert paired[key]["base"] == pytest.approx(base["metrics"][at][metric], abs=1e-9)
        lo, hi = paired[key]["ci95"]
        assert lo <= paired[key]["difference"] <= hi
        assert paired[key]["difference"] == pytest.approx(paired[key]["best"] - paired[key]["base"])
    assert {"base", "bn_aug", "bn_aug_dropout", "ensemble of 3"} <= names
    for e in evaluated:  # every model was fed at the input size it was trained at
        assert len(e["trials"]) == len(e["image_sizes"])
        for trial, size in zip(e["trials"], e["image_sizes"]):
            assert json.loads((run_dir / "ray" / trial / "params.json").read_text())["image_size"] == size


def test_html_is_self_contained_and_names_everything(run):
    run_dir, _ = run
    text = (run_dir / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) >= 5 and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        check_png(base64.b64decode(src.split(",", 1)[1]))
    markdown = (run_dir / "report.md").read_text()
    for name in ("base", "bn_aug", "bn_aug_dropout", "source report", "0.9686", "0.9555", "target-distribution split",
                 "chosen on the validation part (target distribution)", "Layer (type)", "ensemble of 3",
                 OBJECTIVE.text, "In-distribution vs target distribution", "AUC gap (holdout - test)",
                 "Holdout AUC against validation AUC", "resamples of the test patients"):
        assert name in text and name in markdown, name
    assert "figures/shift.png" in markdown and "No shift is measured" not in text
    [best] = [e for e in json.loads((run_dir / "evaluation.json").read_text()) if "best_minus_base" in e]
    vs_base = "the base model itself" if best["model"] == "base" else f"{best['model']} minus the base model"
    assert vs_base in markdown and vs_base in text
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    kernel7 = trials["cfg_kernel_size"].astype(str) == "7"  # kernel 7 does not fit 32-40 px inputs
    assert ((trials["status"] == "failed") == kernel7).all()  # those trials failed, and only those
    assert f"Failed trials: {int(kernel7.sum())}" in markdown
    for _, t in trials[kernel7].iterrows():
        assert t["trial"] in text and "do not fit" in t["error"]
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (run_dir / ref).is_file(), ref


def test_report_command_exports_an_ensemble_and_evaluate_predict_use_it(run, tmp_path):
    run_dir, _ = run
    out = lungsearch("report", run_dir, "--top", 2, "--ensemble", 3)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ensemble = json.loads((run_dir / "ensemble.json").read_text())
    assert len(ensemble["members"]) == 3 and ensemble["kind"] == "ensemble"
    for m in ensemble["members"]:
        assert (run_dir / m["model"]).is_file()

    # images the search never saw: another seed, and a folder without a test/ part
    unseen = make_dataset(tmp_path / "unseen", {"train": 2}, seed=7)
    out = lungsearch("evaluate", run_dir / "ensemble.json", "--data", unseen)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every image" in out.stdout and "8 images" in out.stdout
    assert re.search(r"threshold 0\.5000 \(default\): accuracy [01]\.\d{4}", out.stdout)
    assert "chosen on the run's validation part" in out.stdout


def test_evaluate_and_predict_the_best_model_on_unseen_images(run, tmp_path):
    run_dir, _ = run
    unseen = make_dataset(tmp_path / "unseen", {"train": 2, "test": 3}, seed=11)
    out = lungsearch("evaluate", run_dir / "best_model.keras", "--data", unseen)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "12 images, 6 NORMAL / 6 PNEUMONIA" in out.stdout and "f1 " in out.stdout

    images = sorted((unseen / "test").rglob("*.jp*g"))[:2] + sorted((unseen / "test").rglob("*.png"))[:1]
    bad = shutil.copy(images[0], tmp_path / "cut.jpeg")
    truncate(Path(bad))
    out = lungsearch("predict", run_dir / "best_model.keras", *images, bad, tmp_path / "missing.png")
    assert out.returncode == 1
    head, *lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and head.startswith("# probability of PNEUMONIA, calibrated (Platt scaling fitted on the "
                                               "run's validation part")
    assert "chosen on the run's validation part to maximise F1, from best_model.json" in head
    for line, image in zip(lines, images):
        path, prob, label = line.split("\t")
        assert path == str(image) and 0 <= float(prob) <= 1 and label in ("NORMAL", "PNEUMONIA")
    assert "cannot read" in out.stderr and "cut.jpeg" in out.stderr and "missing.png" in out.stderr


def test_a_fixed_point_whose_model_is_gone_is_named_not_called_not_run(run, tmp_path):
    run_dir, _ = run
    copy = Path(shutil.copytree(run_dir, tmp_path / run_dir.name))
    trials = pd.read_csv(copy / "trials.csv", keep_default_na=False)
    base = trials.loc[trials["fixed_point"] == "base", "trial"].iloc[0]
    (copy / "checkpoints" / base / "model.keras").unlink()
    out = lungsearch("report", copy, "--top", 1, "--ensemble", 0)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (f"warning: fixed point base ({base}) finished, but its model {copy / 'checkpoints' / base / 'model.keras'} "
            f"is missing: it is left out of Table 1") in out.stdout
    [row] = [line for line in (copy / "report.md").read_text().splitlines() if line.startswith("| base |")]
    assert "no saved model" in row and "not run" not in row


def test_parts_are_the_same_images_at_every_input_size(run):
    run_dir, _ = run
    rdata = analysis.RunData(analysis.load_run(run_dir), log=lambda *_: None)
    at40, at32, clahe = rdata.parts(40), rdata.parts(32), rdata.parts(32, "clahe")
    assert set(at32) == set(clahe) == {"val", "test", "holdout"}
    for part in at32:
        assert at40[part][0].shape[1:] == (40, 40, 1) and at32[part][0].shape[1:] == (32, 32, 1)
        assert np.array_equal(at40[part][1], at32[part][1]) and np.array_equal(clahe[part][1], at32[part][1])
        assert not np.array_equal(clahe[part][0], at32[part][0])  # decoded as a CLAHE-trained model needs
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(at32["test"][1]) == manifest["data"]["split"]["parts"]["test"]["images"]


def test_threshold_bootstrap_and_roc_agree_with_binary_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1)
    p[:30] = 0.5  # ties
    thr = metrics.val_threshold(y, p)
    brute = max(binary_metrics(y, p, t)["f1"] for t in np.linspace(0, 1, 1001))
    assert binary_metrics(y, p, thr)["f1"] >= brute - 1e-12
    for t in (0.5, thr):
        once = metrics.weighted_metrics(y, p, np.ones((1, len(y))), t)
        exact = binary_metrics(y, p, t)
        for k in metrics.CI_METRICS:
            assert once[k][0] == pytest.approx(exact[k], abs=1e-12), k
    ci = metrics.bootstrap_ci(y, p, 0.5, n_boot=500, seed=1)
    assert ci == metrics.bootstrap_ci(y, p, 0.5, n_boot=500, seed=1)
    point = binary_metrics(y, p)
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi and hi - lo < 0.3, k
    fpr, tpr = metrics.roc_points(y, p)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(point["auc"], abs=1e-12)


def test_leaderboard_ranks_by_the_objective_ties_broken_by_validation_f1():
    trials = pd.DataFrame({"trial": list("abcde"), "objective": [0.7, np.nan, 0.9, 0.9, 0.8],
                           "val_f1": [0.99, 0.95, 0.5, 0.6, 0.7], "val_auc": [0.7, np.nan, 0.9, 0.9, 0.8]})
    board = analysis.leaderboard(trials)
    assert list(board["trial"]) == ["d", "c", "e", "a", "b"] and list(board["rank"]) == [1, 2, 3, 4, 5]
    assert analysis.objective_text({"objective": {"text": OBJECTIVE.text}}) == OBJECTIVE.text


def test_evaluate_scores_the_holdout_at_both_thresholds():
    rng = np.random.default_rng(3)
    y = {k: rng.integers(0, 2, 80) for k in ("val", "test", "holdout")}
    p = {k: np.clip(0.4 * v + 0.6 * rng.random(80), 0, 1) for k, v in y.items()}
    ev = analysis.evaluate_probabilities("m", ["t"], [32], y, p, n_boot=50)
    assert ev.holdout == binary_metrics(y["holdout"], p["holdout"])
    assert ev.holdout_tuned == binary_metrics(y["holdout"], p["holdout"], ev.threshold)
    assert ev.test_tuned == binary_metrics(y["test"], p["test"], ev.threshold)
    without = analysis.evaluate_probabilities("m", ["t"], [32], {k: y[k] for k in ("val", "test")}, p, n_boot=50)
    assert without.holdout is None and without.holdout_tuned is None and without.test == ev.test


def small_run(root: Path, trials: dict, smoke: bool = False, **settings) -> analysis.Analysis:
    """The Analysis of a run folder written as `lungsearch run` writes it (write_run_folder), on a small dataset,
    with `trials` (columns) as its trials.csv and no saved model, made by analysis.analyse: for the parts of the
    report that read the run's manifest, split and leaderboard, without a search."""
    dataset = root / "xrays"
    if not dataset.is_dir():
        make_dataset(dataset, {"train": 3, "test": 2})
    ds = data.scan(dataset)
    chosen = SearchSettings(**settings)
    split = data.make_split(ds, chosen.split, chosen.split_seed, chosen.data_limit)
    run_dir = folder.new_run_folder(root / "results", "small")
    folder.write_run_folder(run_dir, space.load_space("report"), chosen, smoke, dataset, root / "cache", ds, chosen.split,
                            data.split_summary(ds, split, chosen.split), split)
    n = len(next(iter(trials.values())))
    pd.DataFrame({"trial": [f"trial_{i}" for i in range(n)], "fixed_point": [""] * n, "status": ["finished"] * n,
                  "error": [""] * n, "val_f1": [0.5] * n, **trials}).to_csv(run_dir / "trials.csv", index=False)
    return analysis.analyse(run_dir, n_boot=10, log=lambda _: None)


def test_shift_section_and_figure_without_and_with_a_holdout(tmp_path, cache_dir):
    a = small_run(tmp_path, {"objective": [0.8], "val_auc": [0.8], "holdout_auc": [np.nan]}, split="patient")
    assert "holdout" not in a.data.split and a.best is None
    [(kind, text)] = report.shift_blocks(a, [], None, "chosen on the validation part")
    assert kind == "p" and "patient split has no in-distribution holdout" in text
    assert figures.fig_shift(a, tmp_path) is None

    auc = [0.7, 0.92, 0.8]
    a = small_run(tmp_path, {"objective": auc, "val_auc": auc, "holdout_auc": [0.95, 0.9, np.nan],
                             "status": ["finished", "diverged", "failed"], "fixed_point": ["base", "", ""]},
                  split="target")
    y = {part: labels.ravel() for part, (_, labels) in a.data.parts(32).items()}
    assert set(y) == {"val", "test", "holdout"}
    rng = np.random.default_rng(0)
    ev = analysis.evaluate_probabilities("base", ["trial_0"], [32], y, {part: rng.random(len(v)) for part, v in y.items()},
                           n_boot=10, groups=a.data.patients("test"))
    fig = figures.fig_shift(a, tmp_path)
    (kind, text), (_, head, rows), (_, shown, _) = report.shift_blocks(a, [ev], fig, "chosen on the validation part")
    sources = a.run.manifest["data"]["split"]["sources"]
    assert f"**Holdout**: {sources['holdout']}. **Test**: {sources['test']}." in text
    assert [r[0] for r in rows] == ["base"] and len(rows[0]) == len(head)
    assert rows[0][-1] == analysis.fmt(ev.holdout["auc"] - ev.test["auc"])
    assert shown == fig
    check_png(fig.read_bytes())
    assert "diverged" in figures.STATUS_COLOURS


def test_clear_errors_for_folders_that_are_not_finished_runs(tmp_path, capsys):
    with pytest.raises(UserError, match="no manifest.json"):
        analysis.load_run(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "ray").mkdir()  # Ray Tune saved the search: resume can finish it
    (tmp_path / "ray" / "tuner.pkl").write_bytes(b"")
    (tmp_path / "ray" / "experiment_state-2026.json").write_text("{}")
    with pytest.raises(UserError, match="no trials.csv.*lungsearch resume"):
        analysis.load_run(tmp_path)
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cli.report_quietly(tmp_path)  # what `run` does when its report fails: warn, carry on
    assert "warning: the report for" in capsys.readouterr().err
    with pytest.raises(UserError, match="--ensemble must be 2 or more"):
        analysis.analyse(tmp_path, ensemble=1)


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")
def test_headless_chromium_renders_the_report(run, tmp_path):
    run_dir, _ = run
    shot = tmp_path / "report.png"
    subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,3000", (run_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    image = check_png(shot.read_bytes())
    assert image.shape[:2] == (3000, 1200)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert (grey < 128).mean() > 0.01  # text, tables and figures rendered, not a blank page


def test_a_user_sees_no_ray_notices_and_a_line_per_trial(run):
    run_dir, out = run
    first = (out.stdout.splitlines()[:30], out.stderr.splitlines()[:30])
    for lines in first:  # no Ray warning, box, hint nor traceback among the first lines of either stream
        for line in lines:
            assert not re.search(r"(WARNING|ERROR|INFO) \S+\.py:\d+ --|Configuration for experiment|View detailed "
                                 r"results|TensorBoard|Token authentication|Traceback", line), line
    assert "Trial task failed" not in out.stdout + out.stderr  # the kernel-7 trials' tracebacks: in ray.log
    log = (run_dir / "ray.log").read_text()
    assert "Trial task failed" in log and "do not fit" in log
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    for t in trials.itertuples():  # one line for each trial that ended (not a terminal: and one when it started)
        ended = [x for x in out.stdout.splitlines() if re.match(rf"\[\d:\d\d:\d\d\] {t.trial} (?!started)", x)]
        assert len(ended) == 1, (t.trial, ended)
        assert ("failed after 0 epochs: ValueError" if t.status == "failed" else "after") in ended[0]
    assert not re.search(r"epoch \d+/\d+", out.stdout)  # no line per epoch


def test_report_words_resolved_resources_and_counts(run):
    run_dir, _ = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    res = manifest["resources"]
    assert res["cpu_per_trial"] >= 1 and res["gpu_per_trial"] >= 0 and manifest["mlflow"] is None
    markdown = (run_dir / "report.md").read_text()
    assert res["cpu_per_trial"] == 1 and "cpus_per_trial=1," in markdown  # as --cpus-per-trial asked
    assert f"gpus_per_trial={res['gpu_per_trial']:g} (chosen for the machine)" in markdown
    assert "max_concurrent=no limit" in markdown and "cpus_per_trial=0" not in markdown
    assert "6 trials (" in markdown and "no patient and no identical image in two parts" in markdown
    assert "trial(s)" not in markdown and "1 identical images" not in markdown and " 0 finished trial" not in markdown
    assert "| rung (epoch) |" in markdown  # sampled trials: ASHA's rungs


def test_report_says_when_a_model_calls_every_image_one_class_and_when_asha_had_nothing_to_do():
    def ev(name, tp, fp, tn, fn):
        m = {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "specificity": tn / max(tn + fp, 1),
             "recall": tp / max(tp + fn, 1)}
        tuned = {**m, "tp": 1, "fp": 1, "tn": 1, "fn": 1, "specificity": 0.5, "recall": 0.5}
        return analysis.Evaluation(name, [name], [32], 0.5, val=m, test=m, test_tuned=tuned, ci={}, ci_tuned={},
                                   y={}, p={})

    shown = [ev("base", 8, 8, 0, 0), ev("bn_aug", 5, 2, 6, 3), ev("ensemble of 3", 0, 0, 8, 8),
             ev("trial_7", 30, 29, 1, 0)]
    [(kind, text)] = report.one_class(shown, tuned=False)
    assert kind == "p" and "**base** calls every test image PNEUMONIA (specificity 0.000, recall 1.000)" in text
    assert "**trial_7** calls nearly every image PNEUMONIA (specificity 0.033)" in text
    assert "**ensemble of 3** calls every test image NORMAL (specificity 1.000, recall 0.000)" in text
    assert "bn_aug" not in text and "their accuracy" in text
    assert report.one_class(shown, tuned=True) == [] and report.one_class(shown[1:2], tuned=False) == []
    assert (report.count(1, "identical image"), report.count(0, "trial"), report.count(2, "retry", "retries")) == \
        ("1 identical image", "0 trials", "2 retries")
    assert report.setting({"resources": {"cpu_per_trial": 2.0}}, "cpus_per_trial", 0) == "2 (chosen for the machine)"
    assert report.setting({"resources": {"gpu_per_trial": 1.0}}, "gpus_per_trial", 1) == "1"
    fixed_only = pd.DataFrame({"fixed_point": ["base", "bn_aug", "bn_aug_dropout"]})
    [(kind, text)] = report.asha_blocks({"objective": {"text": OBJECTIVE.text}}, fixed_only, [], Path("a.png"))
    assert kind == "p" and "no sampled trials, only fixed points, so ASHA had nothing to stop" in text


def test_the_reviewer_sections_cards_and_figures(run):
    run_dir, out = run
    markdown, text = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    for name in ("## Calibration", "## Clinical operating points", "## Where the best model looks",
                 "## Flow of images and patients", "## Model card", "Platt scaling", "Brier", "ECE",
                 "sensitivity at specificity 0.90", "specificity at sensitivity 0.95", "DeLong",
                 "share of saliency in the outer border", "Out-of-scope use", "not a diagnostic device",
                 "Measured shift: AUC", "This is a reduced run, not a reproduction", "figures/gallery.png",
                 "figures/flow.png", "figures/roc_pr.png", "figures/calibration.png"):
        assert name.lower() in markdown.lower(), name
    assert markdown.index("## Model card") < markdown.index("## Leaderboard")
    assert "Not a diagnostic device" in text and "oneDNN" not in out.stdout
    card = json.loads((run_dir / "best_model.json").read_text())
    mc = card["model_card"]
    assert card["calibration"]["method"] == "platt" and card["calibration"]["fitted_on"] == "validation part"
    assert {"intended_use", "out_of_scope_use", "data", "metrics_on_test", "calibration", "shift",
            "limitations"} <= set(mc)
    assert mc["shift"]["gap"] == pytest.approx(mc["shift"]["holdout_auc"] - mc["shift"]["test_auc"])
    assert len(mc["metrics_on_test"]) == 5 and all(r["sensitivity_ci95"][0] <= r["sensitivity"] <=
                                                   r["sensitivity_ci95"][1] for r in mc["metrics_on_test"])
    assert "# Model card" in (run_dir / "model_card.md").read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    parts = manifest["data"]["split"]["parts"]
    flow_rows = re.findall(r"\| (train|test) \| (train|val|test|holdout) \| (\d+) \|", markdown)
    assert sum(int(n) for _, dst, n in flow_rows if dst == "test") == parts["test"]["images"]
    for e in json.loads((run_dir / "evaluation.json").read_text()):
        ops = e["operating_points"]
        assert set(ops) == {"sensitivity_at_specificity_0.90", "sensitivity_at_specificity_0.95",
                            "specificity_at_sensitivity_0.95"}
        assert all(op[f"val_{op['held']}"] >= op["floor"] for op in ops.values())  # held on validation
        assert e["calibration"]["test_after"]["brier"] >= 0
        if "best_minus_base" in e and e["model"] != "base":
            assert 0 <= e["delong_best_minus_base"]["p_value"] <= 1
    for name in ("calibration", "roc_pr", "gallery", "flow"):
        check_png((run_dir / "figures" / f"{name}.png").read_bytes())


def test_calibration_and_operating_points_use_validation_only():
    from lungsearch import clinical
    from lungsearch.metrics import operating_points

    rng = np.random.default_rng(1)
    y = {"val": rng.integers(0, 2, 80), "test": rng.integers(0, 2, 60)}
    p = {k: np.clip(0.3 * v + 0.7 * rng.random(len(v)), 0, 1) ** 3 for k, v in y.items()}  # miscalibrated
    ev = analysis.evaluate_probabilities("m", ["m"], [32], y, p, n_boot=50)
    other = analysis.evaluate_probabilities("m", ["m"], [32], y, {**p, "test": rng.random(60)}, n_boot=50)
    a, b = clinical.calibrate(ev, 50, 0), clinical.calibrate(other, 50, 0)
    assert a.platt == b.platt and a.threshold == b.threshold == ev.threshold  # the test part changes nothing
    assert a.val_log_loss[1] < a.val_log_loss[0] and a.after["brier"] != b.after["brier"]
    picks = clinical.gallery_picks(y["test"], p["test"], ev.threshold)
    fp = [i for kind, i in picks if kind == "false positive"]
    assert all(y["test"][i] == 0 and p["test"][i] > ev.threshold for i in fp)
    assert [p["test"][i] for i in fp] == sorted((p["test"][i] for i in fp), reverse=True)
    ops = operating_points(y["val"], p["val"], y["test"], p["test"], n_boot=50)
    assert ops == operating_points(y["val"], p["val"], y["test"], p["test"], n_boot=50)


def test_table_1_says_plainly_when_a_run_is_a_smoke_run(tmp_path, cache_dir):
    trials = {"objective": [0.8], "val_auc": [0.8]}
    smoke = small_run(tmp_path, trials, smoke=True, split="patient", **SMOKE)  # as --smoke sets them
    [(kind, text)] = report.smoke_note(smoke)
    assert "This is a smoke (reduced) run, not a reproduction**: 48 px images" in text and "480 training" in text
    full = small_run(tmp_path, trials, split="patient")  # the report's sizes: 150 px, 50 epochs, every image
    assert report.smoke_note(full) == []


def test_report_hashes_the_data_folder_once_and_reads_each_model_once(run, tmp_path, monkeypatch):
    """Two input sizes in this run: the analysis and the exports scan (hash) the data folder once and read each
    model file once."""
    from lungsearch import predict

    run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    monkeypatch.setenv("LUNGSEARCH_CACHE", str(run_dir.parents[1] / "cache"))
    scans, reads = [], []
    scan, read = data.scan, predict.load_model
    monkeypatch.setattr(data, "scan", lambda folder: scans.append(folder) or scan(folder))
    monkeypatch.setattr(analysis, "load_model", lambda path: reads.append(path) or read(path))
    a = analysis.analyse(copy, ensemble=2, log=lambda s: None)
    analysis.export_best(a)
    analysis.export_ensemble(a)
    assert len(scans) == 1, scans
    assert len(reads) == len(set(reads)) and reads, reads


def test_resume_report_and_evaluate_each_name_an_image_changed_after_the_run(run, capsys):
    """The real run lists its images in split.json; one of them then gets another image's pixels. `resume` and
    `report` refuse the run's data folder, naming both fingerprints and the file; `evaluate` refuses to score the
    folder, naming the file, until the image is put back (in any case: the module's other tests use it)."""
    from lungsearch import cli

    run_dir, _ = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    dataset = Path(manifest["run_constants"]["data_dir"])
    assert manifest["format_version"] == 1 and manifest["status"] == "finished"
    before = manifest["data"]["fingerprint"]
    parts = json.loads((run_dir / data.SPLIT_FILE).read_text())["parts"]
    listed = {f for entries in parts.values() for f, _ in entries}
    first, second = sorted(f for f in listed if f.startswith("test/PNEUMONIA/"))[:2]
    original = (dataset / first).read_bytes()
    (dataset / first).write_bytes((dataset / second).read_bytes())  # the same name, another image's pixels
    try:
        after = data.scan(dataset).fingerprint
        which = f"of the images split.json lists, 1 changed (e.g. {first})"

        assert cli.main(["resume", str(run_dir)]) == 2
        assert capsys.readouterr().err.startswith(
            f"error: cannot resume {run_dir}: its data folder {dataset} has changed since the run started (fingerprint "
            f"now {after}, the run's {before} in manifest.json; {which}), so the resumed search would train and score "
            f"on other images than its trials so far. Put the run's images back, or start a new run on the changed "
            f"data: `python -m lungsearch run")
        assert cli.main(["report", str(run_dir)]) == 2
        assert capsys.readouterr().err == (
            f"error: dataset {dataset} has fingerprint {after} but the run used {before}: the files changed ({which}), so "
            f"the run's parts are not the images it trained and scored on; pass --data DIR with the dataset the run was "
            f"trained on\n")
        card = run_dir / "best_model.json"
        assert cli.main(["evaluate", str(card), "--data", str(dataset)]) == 2
        out = capsys.readouterr()
        assert "threshold" not in out.out and out.err == (
            f"error: 1 image of {dataset / 'test'} changed since the model's run listed it in {run_dir / 'split.json'}: "
            f"{first} (same name, other content). This folder holds the run's images, but not as the run found them, "
            f"so its metrics would not be the run's; put the run's images back, or score images the run never listed "
            f"in a folder of their own\n")
    finally:
        (dataset / first).write_bytes(original)  # put back: the run's images again (the dataset is shared)
    assert cli.main(["evaluate", str(card), "--data", str(dataset)]) == 0
    assert "threshold" in capsys.readouterr().out
