import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from lungsearch.config import TrialConfig, UserError
from lungsearch.metrics import binary_metrics
from lungsearch.train import EpochReporter, MixUpBatches, class_weights, compile_model, optimizer, run_trial


def tiny(dataset, cache_dir, **changes):
    return {"data_dir": str(dataset), "cache_dir": str(cache_dir), "image_size": 32, "max_epochs": 3,
            "dense_units": 16, "filters": 8, "conv_blocks": 2, **changes}


def test_trial_reports_each_epoch_then_test_metrics_and_saves_the_model(dataset, cache_dir, tmp_path):
    rows = []
    last = run_trial(tiny(dataset, cache_dir, batchnorm=True, augment=True, dropout=0.3), rows.append,
                     checkpoint_dir=tmp_path / "ckpt")
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 3
    for r in rows:
        for k in ("loss", "accuracy", "precision", "recall", "f1", "auc"):
            assert 0 <= r[k] and 0 <= r[f"val_{k}"]
        assert r["objective"] == max(q["val_auc"] for q in rows[: r["epoch"]])  # val AUC of the kept epoch
    assert last is rows[-1] and last["final"] is True
    assert not any(r.get("final") for r in rows[:-1])
    assert 1 <= last["best_epoch"] <= len(rows)
    assert last["test_tp"] + last["test_fp"] + last["test_fn"] + last["test_tn"] == 16  # the official test/ part
    for k in ("loss", "accuracy", "precision", "recall", "f1", "specificity", "auc"):
        assert np.isfinite(last[f"test_{k}"])
    model = keras.saving.load_model(tmp_path / "ckpt" / "model.keras", safe_mode=True)
    assert model.count_params() > 0


def reporter(rows, cfg, x=None, y=None):
    """An EpochReporter on a one-layer model, its val and test parts a few constant images."""
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    x = np.zeros((4, 4, 4, 1), "float32") if x is None else x
    y = np.array([[0], [1], [0], [1]], "float32") if y is None else y
    cb = EpochReporter(rows.append, cfg, {"val": (x, y), "test": (x, y), "holdout": (x, y)}, started=0.0)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    return cb, model


def scores(auc, holdout_auc=0.5):
    row = {"loss": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "specificity": 0.5}
    return {"val": {**row, "auc": auc}, "holdout": {**row, "auc": holdout_auc}}


def test_early_stopping_watches_validation_auc_and_restores_the_kept_weights():
    rows = []
    cb, model = reporter(rows, TrialConfig(max_epochs=10, patience=2))
    for epoch, auc in enumerate([0.6, 0.8, 0.7, 0.75, 0.99]):
        model.layers[-1].set_weights([np.full((16, 1), float(epoch), "float32"), np.zeros(1, "float32")])
        cb.step(epoch, {"loss": 0.3}, scores(auc))
        if getattr(model, "stop_training", False):
            break
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["objective"] for r in rows] == [0.6, 0.8, 0.8, 0.8]  # val AUC of the kept epoch, never the last
    assert [r["kept_epoch"] for r in rows] == [1, 2, 2, 2]
    assert rows[-1]["final"] and rows[-1]["best_epoch"] == 2 and rows[-1]["best_val_auc"] == 0.8
    assert np.all(model.layers[-1].get_weights()[0] == 1.0)  # epoch 2's weights are back
    assert {"test_auc", "test_specificity"} <= set(rows[-1])


def test_early_stopping_on_the_holdout_keeps_the_holdout_best_but_reports_validation_auc():
    rows = []
    cfg = TrialConfig(max_epochs=10, patience=2, split="target", early_stop_on="holdout")
    cb, model = reporter(rows, cfg)
    for epoch, (auc, holdout) in enumerate([(0.9, 0.6), (0.7, 0.8), (0.95, 0.7), (0.99, 0.75)]):
        cb.step(epoch, {"loss": 0.3}, scores(auc, holdout))
    assert rows[-1]["final"] and rows[-1]["best_epoch"] == 2
    assert rows[-1]["objective"] == 0.7  # validation AUC at the epoch the holdout chose


def test_plateau_schedule_halves_the_learning_rate_while_the_objective_stalls():
    rows = []
    cb, model = reporter(rows, TrialConfig(max_epochs=10, patience=4, lr_schedule="plateau"))
    for epoch, auc in enumerate([0.8, 0.7, 0.7, 0.7]):
        cb.step(epoch, {"loss": 0.3}, scores(auc))
    assert [round(r["lr"], 6) for r in rows] == [0.01, 0.01, 0.01, 0.005]
    assert cb.current_lr() == pytest.approx(0.005)  # halved once per patience // 2 = 2 epochs without gain


def test_a_nan_loss_ends_the_trial_as_diverged():
    rows = []
    cb, model = reporter(rows, TrialConfig(max_epochs=10, patience=4))
    cb.step(0, {"loss": 0.3}, scores(0.8))
    cb.step(1, {"loss": float("nan")}, scores(0.5))
    assert rows[-1]["final"] and rows[-1]["diverged"] and rows[-1]["best_epoch"] == 1


def test_a_bad_config_raises_before_training(dataset, cache_dir):
    with pytest.raises(UserError, match="unknown parameter 'lr'"):
        run_trial({**tiny(dataset, cache_dir), "lr": 0.1}, [].append)


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0, 1, 1, 1], dtype=np.float32))
    assert w[0] * 1 == pytest.approx(w[1] * 3)


def test_mixed_precision_trains_with_a_float32_output(dataset, cache_dir, tmp_path):
    rows = []
    try:
        run_trial(tiny(dataset, cache_dir, max_epochs=1, mixed_precision=True, augment=True, batchnorm=True),
                  rows.append, checkpoint_dir=tmp_path)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert np.isfinite(rows[-1]["loss"]) and 0 <= rows[-1]["test_f1"] <= 1
    model = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)  # the trained model, as saved
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(c.compute_dtype == "bfloat16" and c.variable_dtype == "float32" for c in convs)
    assert all(c.output.dtype == "bfloat16" for c in convs)
    out = model.predict(np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32), verbose=0)
    assert model.output.dtype == "float32" and out.dtype == np.float32 and np.isfinite(out).all()


def test_keras_training_metrics_count_exactly_as_binary_metrics():
    """The metrics compile_model gives Keras (reported while training) and binary_metrics (validation, test,
    the report) call the same images positive, probabilities of exactly 0.5 included."""
    y = np.array([1, 0, 1, 0, 1, 0, 1, 1], "float32")
    p = np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.7, 0.1, 0.6], "float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Identity()])  # outputs its input: p
    compile_model(model, TrialConfig())
    got = model.evaluate(p[:, None], y[:, None], batch_size=len(y), verbose=0, return_dict=True)
    exact = binary_metrics(y, p)
    assert (exact["tp"], exact["fp"]) == (2, 1)  # the three 0.5s are NORMAL
    for k in ("accuracy", "precision", "recall", "f1"):
        assert got[k] == pytest.approx(exact[k], abs=1e-6), k


def test_mixup_blends_images_labels_and_class_weights_alike():
    x = np.stack([np.zeros((4, 4, 1), "float32"), np.ones((4, 4, 1), "float32")] * 4)
    y = np.array([[0], [1]] * 4, "float32")
    batches = MixUpBatches(x, y, batch_size=8, alpha=0.4, seed=0, weights={0: 3.0, 1: 1.0})
    xb, yb, wb = batches[0]
    assert xb.shape == (8, 4, 4, 1) and yb.shape == (8, 1) and len(batches) == 1
    # the image is a constant lam*x_a + (1-lam)*x_b, and with these inputs its value is its soft label
    np.testing.assert_allclose(xb.mean(axis=(1, 2, 3)), yb.ravel(), atol=1e-6)
    np.testing.assert_allclose(wb.ravel(), 3.0 - 2.0 * yb.ravel(), atol=1e-5)
    assert 0 < np.mean((yb > 0.01) & (yb < 0.99))  # some labels are soft


def test_optimizer_and_schedule_follow_the_config():
    assert isinstance(optimizer(TrialConfig(), 10), keras.optimizers.Adam)
    adamw = optimizer(TrialConfig(optimizer="adamw", weight_decay=0.01), 10)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.01)
    cosine = optimizer(TrialConfig(lr_schedule="cosine", max_epochs=5, learning_rate=0.1), 10)
    schedule = cosine.learning_rate if callable(cosine.learning_rate) else cosine._learning_rate
    assert float(schedule(0)) == pytest.approx(0.1) and float(schedule(50)) == pytest.approx(0.0, abs=1e-7)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    compile_model(model, TrialConfig(label_smoothing=0.1))
    y, p = np.array([[1.0]]), np.array([[0.9]])
    smoothed = keras.losses.BinaryCrossentropy()(np.array([[0.95]]), p)  # 1 -> 1 - 0.1/2
    assert float(model.loss(y, p)) == pytest.approx(float(smoothed), rel=1e-5)
    with pytest.raises(UserError, match="weight_decay"):
        TrialConfig(weight_decay=0.01)  # Adam has no decoupled weight decay
    with pytest.raises(UserError, match="early_stop_on"):
        TrialConfig(early_stop_on="holdout", split="patient")


def test_robust_knobs_train_on_the_target_split(dataset, cache_dir):
    rows = []
    run_trial(tiny(dataset, cache_dir, max_epochs=2, split="target", early_stop_on="holdout", mixup=0.2,
                   label_smoothing=0.1, class_weight=True, optimizer="adamw", weight_decay=1e-3,
                   lr_schedule="cosine", tta=True, aug_brightness=0.1, aug_contrast=0.1, aug_gamma=0.2,
                   aug_noise=0.02, normalize="clahe", head="gap"), rows.append)
    last = rows[-1]
    assert last["final"] and np.isfinite(last["loss"])
    for part in ("val", "holdout", "test"):
        assert 0 <= last[f"{part}_auc" if part == "test" else f"best_{part}_auc"] <= 1
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine decay
    # target split: the 4 test/ patients per class are halved into val and test
    assert last["test_tp"] + last["test_fp"] + last["test_fn"] + last["test_tn"] == 8


PROBE = """
import json, sys
from lungsearch.train import run_trial
for config in json.loads(sys.argv[1]):
    rows = []
    last = run_trial(config, rows.append)
print(json.dumps({"loss": [r["loss"] for r in rows], "val_auc": [r["val_auc"] for r in rows],
                  "test_auc": last["test_auc"], "kept": last["best_epoch"]}))
"""


def trained_in_one_process(configs, **env):
    """The last config's per-epoch losses, validation AUCs and test AUC, after training `configs` in turn in
    one fresh Python process (as a reused trial worker does); `env`: environment variables to add."""
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(configs)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_reused_worker_trains_a_trial_exactly_as_a_fresh_process(dataset, cache_dir):
    trial = tiny(dataset, cache_dir, batchnorm=True, augment=True, dropout=0.3, seed=1)
    before = tiny(dataset, cache_dir, mixed_precision=True, learning_rate=0.01, kernel_size=5, seed=7)
    fresh = trained_in_one_process([trial])
    assert trained_in_one_process([before, trial]) == fresh


def test_with_jax_compiled_programs_are_kept_in_the_cache_folder(dataset, cache_dir):
    pytest.importorskip("jax")
    trained_in_one_process([tiny(dataset, cache_dir, max_epochs=1)], KERAS_BACKEND="jax")
    assert len(list((cache_dir / "jax-compiled").iterdir())) >= 2  # at least the train and predict steps
