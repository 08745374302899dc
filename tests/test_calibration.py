"""Platt scaling, the Brier score and the ECE, on a real Keras model made overconfident on purpose."""
import keras
import numpy as np
import pytest

from lungsearch import calibration
from lungsearch.calibration import Platt, calibration_metrics, fit_platt, log_loss, reliability_bins
from lungsearch.metrics import binary_metrics, roc_auc


def overconfident_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the probabilities of a real one-layer Keras model whose logit is 6 times too large and
    shifted: calibrated weights scaled by hand, so its 0.9 is nowhere near 90%."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.5)))).astype(np.float32)  # the true model
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.layers[0].set_weights([np.array([[6 * 1.5], [0.0]], np.float32), np.array([6 * -0.5 + 2], np.float32)])
    return y, np.asarray(model.predict_on_batch(x), np.float64).ravel()


def test_platt_scaling_reduces_validation_log_loss_and_keeps_the_ranking():
    y_val, p_val = overconfident_scores(400, 0)
    y_test, p_test = overconfident_scores(400, 1)
    fit = fit_platt(y_val, p_val)
    assert log_loss(y_val, fit(p_val)) < log_loss(y_val, p_val) - 0.1
    assert log_loss(y_test, fit(p_test)) < log_loss(y_test, p_test)  # and it carries over to unseen data
    assert 1 / 6 * 0.7 < fit.a < 1 / 6 * 1.4 and fit.temperature > 4  # about the factor put in
    clipped = np.clip(p_test, calibration.EPS, 1 - calibration.EPS)  # as the logit reads them
    assert roc_auc(y_test, fit(p_test)) == pytest.approx(roc_auc(y_test, clipped))
    before, after = calibration_metrics(y_test, p_test, n_boot=200), calibration_metrics(y_test, fit(p_test), n_boot=200)
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]
    # a threshold moved to the calibrated scale gives the same labels
    for t in (0.3, 0.5, 0.9):
        raw, cal = binary_metrics(y_test, p_test, t), binary_metrics(y_test, fit(p_test), fit.threshold(t))
        assert (raw["tp"], raw["fp"]) == (cal["tp"], cal["fp"])


def test_platt_round_trips_through_a_card_and_one_class_is_the_identity():
    fit = Platt(0.5, -1.0)
    again = Platt.from_dict(fit.to_dict())
    assert again == fit and Platt.from_dict(None) is None
    assert fit_platt(np.ones(5), np.linspace(0.1, 0.9, 5)) == Platt()
    # a perfect (separable) ranker: the ridge keeps the fit finite
    sep = fit_platt(np.r_[np.zeros(20), np.ones(20)], np.r_[np.full(20, 0.4), np.full(20, 0.6)])
    assert np.isfinite(sep.a) and np.isfinite(sep.b)


def test_ece_and_reliability_bins_by_hand():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.95, 0.95, 0.55])
    bins = reliability_bins(y, p)
    assert bins["count"][0] == 1 and bins["count"][9] == 2 and bins["count"][5] == 1
    assert bins["observed"][9] == 1 and bins["mean_predicted"][9] == pytest.approx(0.95)
    # |0.05 - 0| * 1/4 + |0.95 - 1| * 2/4 + |0.55 - 1| * 1/4
    got = calibration_metrics(y, p, n_boot=50)
    assert got["ece"] == pytest.approx(0.05 / 4 + 0.05 / 2 + 0.45 / 4)
    assert got["brier"] == pytest.approx((0.05 ** 2 + 2 * 0.05 ** 2 + 0.45 ** 2) / 4)
    assert got["brier_ci95"][0] <= got["brier"] <= got["brier_ci95"][1]
    assert calibration.EPS < 1e-6
