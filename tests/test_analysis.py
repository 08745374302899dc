"""Bootstrap intervals over patients, the paired comparison with the base model, and the threshold rule."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lungsearch import analysis, metrics
from lungsearch.metrics import binary_metrics


def patients(n_patients=60, images_each=8, seed=0):
    """Test data where all images of a child have its label and score (keys sort in patient order)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    score = np.clip(0.3 * label + 0.7 * rng.random(n_patients), 0, 1)
    keys = [f"person{i:03d}" for i in range(n_patients)]
    return np.repeat(label, images_each), np.repeat(score, images_each), np.repeat(keys, images_each)


def test_patient_resamples_weigh_all_images_of_a_drawn_patient_alike():
    groups = np.array(["a", "b", "a", "c", "b", "a"])
    w = metrics.resample_weights(groups, n_boot=200, seed=3)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 2]).all() and (w[:, 0] == w[:, 5]).all() and (w[:, 1] == w[:, 4]).all()
    assert (w[:, [0, 1, 3]].sum(axis=1) == 3).all()  # 3 patients drawn per resample
    # one group per image: the ordinary bootstrap of images, as before
    images = metrics.resample_weights(np.arange(6), n_boot=200, seed=3)
    idx = np.random.default_rng(3).integers(0, 6, (200, 6))
    assert (images == np.stack([np.bincount(r, minlength=6) for r in idx])).all()


def test_intervals_resample_patients_not_images():
    y, p, groups = patients()
    by_patient = metrics.bootstrap_ci(y, p, 0.5, n_boot=400, seed=1, groups=groups)
    # each patient's 8 images count as one: the same draws and intervals as one image per patient
    one_each = metrics.bootstrap_ci(y[::8], p[::8], 0.5, n_boot=400, seed=1)
    for k in metrics.CI_METRICS:
        assert by_patient[k] == pytest.approx(one_each[k], abs=1e-12), k
    # resampling the images as if independent gives intervals far too narrow
    by_image = metrics.bootstrap_ci(y, p, 0.5, n_boot=400, seed=1)
    for k in ("accuracy", "f1", "auc"):
        assert by_patient[k][1] - by_patient[k][0] > 2 * (by_image[k][1] - by_image[k][0]), k


def evaluation(name, y, p, groups, fixed_point=""):
    return analysis.evaluate_probabilities(name, [name], [32], {"val": y, "test": y}, {"val": p, "test": p}, n_boot=200,
                             fixed_point=fixed_point, groups=groups)


def test_paired_difference_of_the_best_trial_against_the_base_model():
    y, p, groups = patients()
    base = evaluation("base", y, p, groups, "base")
    better = np.where(y == 1, np.maximum(p, 0.8), np.minimum(p, 0.2))  # right about every child base misses
    best = evaluation("trial_1", y, better, groups)
    diff = metrics.paired_difference(best, base, n_boot=300, seed=0)
    assert set(diff) == {"f1_at_0.5", "f1_at_threshold", "auc"}
    for key, metric, thr in (("f1_at_0.5", "f1", None), ("auc", "auc", None), ("f1_at_threshold", "f1", 1)):
        d = diff[key]
        b = best.test_tuned if thr else best.test
        a = base.test_tuned if thr else base.test
        assert d["best"] == pytest.approx(b[metric]) and d["base"] == pytest.approx(a[metric])
        assert d["difference"] == pytest.approx(b[metric] - a[metric])
    f1 = diff["f1_at_0.5"]
    assert f1["difference"] > 0 and 0 < f1["ci95"][0] <= f1["difference"] <= f1["ci95"][1]
    # paired: a model against itself differs by exactly 0 on every resample
    same = metrics.paired_difference(base, base, n_boot=100)
    assert all(v["difference"] == 0 and v["ci95"] == (0.0, 0.0) for v in same.values())
    # and the other way round, the interval turns over
    back = metrics.paired_difference(base, best, n_boot=300, seed=0)["f1_at_0.5"]
    assert back["ci95"] == pytest.approx((-f1["ci95"][1], -f1["ci95"][0]))
    a = SimpleNamespace(best=best, vs_base={"best": "trial_1", "base": "base", "metrics": diff})
    text = analysis.vs_base_text(a)
    assert "trial_1 minus the base model" in text and f"{f1['difference']:+.4f}" in text
    with pytest.raises(ValueError, match="same test images"):
        metrics.paired_difference(best, evaluation("base", y[::-1], p, groups))


def test_the_final_model_is_also_paired_with_bases_seeds_averaged():
    y, p, groups = patients()
    rng = np.random.default_rng(3)
    members = {f"b{i}": evaluation(f"b{i}", y, np.clip(p + rng.normal(0, 0.2, len(p)), 0, 1), groups, "base")
               for i in range(3)}
    confirmed = pd.DataFrame({"configuration": ["t", "base", "bn_aug"], "fixed_point": ["", "base", "bn_aug"]})
    rdata, run = SimpleNamespace(patients=lambda part: groups), SimpleNamespace(seed=0)
    seeds = analysis.base_seeds(confirmed, [["t0"], ["b0", "b1", "b2"], ["n0"]], members, {}, rdata, run, 200)
    assert seeds.name == "base (3 seeds)" and seeds.trials == ["b0", "b1", "b2"]
    np.testing.assert_allclose(seeds.p["test"], np.mean([m.p["test"] for m in members.values()], axis=0))
    assert analysis.base_seeds(confirmed, [["t0"], ["b0"], ["n0"]], members, {}, rdata, run, 200) is None  # one seed
    # base the best configuration: its final-model candidate is base's seeds averaged, not computed again
    assert analysis.base_seeds(confirmed, [["t0"], ["b0", "b1", "b2"], ["n0"]], members, {"base": seeds}, rdata, run,
                               200) is seeds
    better = evaluation("ensemble", y, np.where(y == 1, np.maximum(p, 0.8), np.minimum(p, 0.2)), groups)
    c = analysis.versus_base(better, members, run, 200, seeds)
    assert c["base"] == "base (3 seeds)" and c["metrics"]["auc"]["base"] == pytest.approx(seeds.test["auc"])
    text = analysis.vs_base_seeds_text(SimpleNamespace(vs_base_seeds=c))
    assert "ensemble minus base (3 seeds)" in text and f"{c['metrics']['auc']['difference']:+.4f}" in text
    same = {**c, "best": c["base"]}  # the final model is base's seeds themselves
    assert "The final model is base (3 seeds)" in analysis.vs_base_seeds_text(SimpleNamespace(vs_base_seeds=same))
    assert analysis.vs_base_seeds_text(SimpleNamespace(vs_base_seeds=None)) is None


def test_the_validation_threshold_classifies_as_intended_under_the_strict_rule():
    # two scores too close to have a midpoint: the cut must still call only the higher one positive
    low, high = 0.5, np.nextafter(0.5, 1.0)
    y, p = np.array([0, 1, 0, 1]), np.array([low, high, 0.1, 0.9])
    thr = metrics.val_threshold(y, p)
    m = binary_metrics(y, p, thr)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 0, 0, 2)
    w = metrics.weighted_metrics(y, p, np.ones((1, 4)), thr)
    assert w["f1"][0] == 1.0
    # ties at exactly 0.5 are NORMAL at the default threshold, in the bootstrap as in binary_metrics
    ties = metrics.weighted_metrics(np.array([1, 0]), np.array([0.5, 0.5]), np.ones((1, 2)), 0.5)
    assert ties["recall"][0] == 0 and ties["specificity"][0] == 1
