import numpy as np
import pytest

from lungsearch.metrics import binary_metrics, roc_auc


def test_counts_and_ratios_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.6, 0.2, 0.7, 0.1])
    m = binary_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 2)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(y, p) == pytest.approx(pairs)
    assert np.isnan(roc_auc(np.ones(5), np.random.rand(5)))


def test_no_positive_predictions_gives_zero_f1_not_an_error():
    m = binary_metrics(np.array([1, 0]), np.array([0.1, 0.2]))
    assert m["precision"] == 0 and m["f1"] == 0 and m["specificity"] == 1


def test_a_probability_equal_to_the_threshold_is_normal_as_keras_counts_it():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.5, 0.5, 0.7, 0.3])
    m = binary_metrics(y, p)  # Keras' metrics: positive when p > 0.5
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 1, 2)
    m = binary_metrics(y, p, threshold=0.7)
    assert m["tp"] == 0 and m["fn"] == 2


def direct_delong(y, p1, p2):
    """DeLong's variance of AUC1 - AUC2 from the structural components written out pair by pair."""
    y = np.asarray(y).astype(bool)

    def components(p):
        pos, neg = p[y], p[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # m x n
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    (a1, x1, w1), (a2, x2, w2) = components(np.asarray(p1, float)), components(np.asarray(p2, float))
    m, n = len(x1), len(w1)
    s10 = np.array([[np.sum((u - u.mean()) * (v - v.mean())) / (m - 1) for v in (x1, x2)] for u in (x1, x2)])
    s01 = np.array([[np.sum((u - u.mean()) * (v - v.mean())) / (n - 1) for v in (w1, w2)] for u in (w1, w2)])
    s = s10 / m + s01 / n
    return a1 - a2, np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])


def test_delong_single_auc_variance_by_hand():
    from lungsearch.metrics import delong_components

    # positives 0.35, 0.8; negatives 0.1, 0.4: V10 = [0.5, 1], V01 = [1, 0.5], AUC 0.75
    auc, v10, v01 = delong_components([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert auc == 0.75 and list(v10) == [0.5, 1.0] and list(v01) == [1.0, 0.5]
    # var = S10 / m + S01 / n = 0.125 / 2 + 0.125 / 2
    assert np.var(v10, ddof=1) / 2 + np.var(v01, ddof=1) / 2 == pytest.approx(0.125)


def test_delong_test_matches_the_direct_structural_components_with_ties():
    from lungsearch.metrics import delong_test

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p1 = np.round(np.clip(0.5 * y + 0.5 * rng.random(60), 0, 1), 1)  # rounded: many ties
    p2 = np.round(np.clip(0.05 * y + 0.95 * rng.random(60), 0, 1), 2)
    got = delong_test(y, p1, p2)
    diff, se = direct_delong(y, p1, p2)
    assert got["difference"] == pytest.approx(diff) and got["se"] == pytest.approx(se)
    assert got["auc_1"] == pytest.approx(roc_auc(y, p1)) and got["auc_2"] == pytest.approx(roc_auc(y, p2))
    assert got["z"] == pytest.approx(diff / se)
    from math import erf, sqrt
    assert got["p_value"] == pytest.approx(1 - erf(abs(diff / se) / sqrt(2)))
    assert got["p_value"] < 0.05 < delong_test(y, p1, p1 + 1e-9 * rng.random(60))["p_value"]
    same = delong_test(y, p1, p1)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_operating_point_thresholds_come_from_validation_only():
    from lungsearch.metrics import OPERATING_POINTS, operating_points, threshold_for

    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, 2, 200), rng.integers(0, 2, 150)
    p_val = np.clip(0.4 * y_val + 0.6 * rng.random(200), 0, 1)
    p_test = np.clip(0.4 * y_test + 0.6 * rng.random(150), 0, 1)
    ops = operating_points(y_val, p_val, y_test, p_test, n_boot=200)
    other = operating_points(y_val, p_val, y_test, rng.random(150), n_boot=200)  # another test part
    shifted = operating_points(y_val, np.clip(p_val + 0.05 * rng.random(200), 0, 1), y_test, p_test, n_boot=200)
    for key, held, floor, reported in OPERATING_POINTS:
        thr = ops[key]["threshold"]
        assert other[key]["threshold"] == thr != shifted[key]["threshold"]
        val = binary_metrics(y_val, p_val, thr)
        assert val[held] >= floor and ops[key][f"val_{held}"] == val[held]
        test = binary_metrics(y_test, p_test, thr)
        assert ops[key][f"test_{reported}"] == test[reported]
        lo, hi = ops[key][f"test_{reported}_ci95"]
        assert lo <= test[reported] <= hi
    # the best cut: one step further loses the held rate, i.e. the other rate is as high as it can be
    thr = threshold_for(y_val, p_val, "specificity", 0.9)
    higher_recall = np.sort(p_val[p_val <= thr])[-1] - 1e-9  # call the next-highest NORMAL image PNEUMONIA
    assert binary_metrics(y_val, p_val, higher_recall)["specificity"] < 0.9
    thr = threshold_for(y_val, p_val, "recall", 0.95)
    assert binary_metrics(y_val, p_val, np.sort(p_val[p_val > thr])[0])["recall"] < 0.95


def test_precision_recall_points_and_average_precision():
    from lungsearch.metrics import average_precision, pr_points

    recall, precision = pr_points([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert list(recall) == [0, 0.5, 0.5, 1.0, 1.0] and list(precision) == [1, 1, 0.5, 2 / 3, 0.5]
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
