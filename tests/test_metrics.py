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
