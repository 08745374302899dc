"""Cross-fitted adaptation of the final model to the validation part: whole-patient folds, copies that never
predict the images they were fine-tuned on, and a decision made fold by fold on validation alone."""
import keras
import numpy as np
import pytest

from lungsearch import adaptation, data, models
from lungsearch.config import SearchSettings
from lungsearch.metrics import roc_auc


def test_folds_hold_whole_patients_of_both_classes():
    patients = np.array([f"p{i // 2}" for i in range(40)], dtype=object)  # two images per patient
    labels = np.array([(i // 2) % 2 for i in range(40)])
    folds = data.patient_folds(patients, labels, 4, seed=0)
    assert set(folds) == {0, 1, 2, 3}
    for p in set(patients):
        assert len(set(folds[patients == p])) == 1  # a patient's images share a fold
    for j in range(4):
        assert set(labels[folds == j]) == {0, 1}
    assert np.array_equal(folds, data.patient_folds(patients, labels, 4, seed=0))
    assert not np.array_equal(folds, data.patient_folds(patients, labels, 4, seed=1))


def signal_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean brightness is the label, with noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 1, (n, 8, 8, 1)).astype("float32") * 0.5 + 0.25 * y[:, None, None, None]
    return x, y


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, out)


def test_each_copy_predicts_only_the_fold_it_never_saw_and_helping_is_kept():
    """An untrained model (every output 0.5) on images whose brightness is the label: fine-tuning on the other folds must help on each
    held-out fold, so the adapted model is kept; every out-of-fold probability is the prediction of the copy that
    was fine-tuned without that fold."""
    x, y = signal_images(48, 0)
    xt, _ = signal_images(20, 1)
    folds = data.patient_folds(np.array([f"p{i}" for i in range(48)], dtype=object), y, 3, seed=0)
    model = small_model(0)
    before = models.predict_proba(model, x)
    member = adaptation.Member("trial_a", model, False, {"val": x, "test": xt})
    got = adaptation.cross_fit([member], y, folds, before, epochs=30, learning_rate=0.05, seed=0,
                               predict=models.predict_proba, log=lambda s: None)
    assert sorted(got.copies) == [adaptation.copy_name("trial_a", j) for j in range(3)]
    for j in range(3):
        copy = got.copies[adaptation.copy_name("trial_a", j)]
        assert np.allclose(got.p["val"][folds == j], models.predict_proba(copy, x[folds == j]), atol=1e-6)
    assert np.allclose(got.p["test"], np.mean([models.predict_proba(c, xt) for c in got.copies.values()], axis=0),
                       atol=1e-6)
    assert np.allclose(models.predict_proba(model, x), before)  # the model itself is left as it was
    assert [f["images"] for f in got.fold_auc] == [int((folds == j).sum()) for j in range(3)]
    assert all(f["adapted"] > f["before"] for f in got.fold_auc)
    assert got.gain > 0 and got.kept
    assert roc_auc(y, got.p["val"]) > 0.9


def test_no_gain_on_the_held_out_folds_is_dropped():
    """When the model as it was already ranks every validation fold perfectly, fine-tuning cannot do better on any
    held-out fold: the gain is at most 0 and the adapted model is dropped (a tie keeps the model as it was)."""
    x, y = signal_images(48, 0)
    folds = data.patient_folds(np.array([f"p{i}" for i in range(48)], dtype=object), y, 3, seed=0)
    perfect = y.astype(float)  # the validation probabilities of the model as it was: AUC 1 on every fold
    got = adaptation.cross_fit([adaptation.Member("t", small_model(0), False, {"val": x})], y, folds, perfect,
                               epochs=2, learning_rate=0.01, seed=0, predict=models.predict_proba,
                               log=lambda s: None)
    assert all(f["before"] == 1.0 for f in got.fold_auc)
    assert got.gain <= 0 and not got.kept


def test_adaptation_needs_a_confirmation_stage_and_two_folds():
    with pytest.raises(Exception, match="adapt_folds"):
        SearchSettings(adapt_folds=5)
    with pytest.raises(Exception, match="adapt_folds"):
        SearchSettings(adapt_folds=1, confirm_top=1)
    assert SearchSettings(adapt_folds=5, confirm_top=1).adapt_folds == 5


def test_the_gain_interval_resamples_patients_and_is_that_of_the_paired_difference():
    """gain_interval: a model better on every fold gives an interval above 0; the same probabilities on both sides
    give [0, 0]; and noise-sized differences give an interval that straddles 0."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.tile([0, 1], 30), 2)
    groups = np.repeat(np.arange(60), 2)  # each patient two images of one class
    folds = data.patient_folds(groups, y, 3, 0)
    weak = y * 0.2 + rng.uniform(0, 1, len(y))
    strong = y * 0.9 + rng.uniform(0, 1, len(y))
    lo, hi = adaptation.gain_interval(y, folds, weak, strong, groups, n_boot=300)
    assert 0 < lo < hi
    assert adaptation.gain_interval(y, folds, weak, weak, groups, n_boot=300) == (0.0, 0.0)
    jittered = weak + rng.normal(0, 0.05, len(y))
    lo, hi = adaptation.gain_interval(y, folds, weak, jittered, groups, n_boot=300)
    assert lo < 0 < hi
