import keras
import numpy as np
import pytest

from lungsearch.config import TrialConfig
from lungsearch.train import EpochReporter, class_weights, run_trial


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
    assert last is rows[-1] and last["final"] is True
    assert not any(r.get("final") for r in rows[:-1])
    assert 1 <= last["best_epoch"] <= len(rows)
    assert last["test_tp"] + last["test_fp"] + last["test_fn"] + last["test_tn"] == 16  # the official test/ part
    for k in ("loss", "accuracy", "precision", "recall", "f1", "specificity", "auc"):
        assert np.isfinite(last[f"test_{k}"])
    model = keras.saving.load_model(tmp_path / "ckpt" / "model.keras", safe_mode=True)
    assert model.count_params() > 0


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    x = np.zeros((4, 4, 4, 1), "float32")
    y = np.array([[0], [1], [0], [1]], "float32")
    rows = []
    cb = EpochReporter(rows.append, TrialConfig(max_epochs=10, patience=2), x, y, started=0.0)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    for epoch, val_loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.1]):
        model.layers[-1].set_weights([np.full((16, 1), float(epoch), "float32"), np.zeros(1, "float32")])
        cb.on_epoch_end(epoch, {"loss": 0.3, "val_loss": val_loss})
        if getattr(model, "stop_training", False):
            break
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["final"] and rows[-1]["best_epoch"] == 2 and rows[-1]["best_val_loss"] == 0.5
    assert np.all(model.layers[-1].get_weights()[0] == 1.0)  # epoch 2's weights are back


def test_a_bad_config_raises_before_training(dataset, cache_dir):
    with pytest.raises(Exception, match="unknown parameter 'lr'"):
        run_trial({**tiny(dataset, cache_dir), "lr": 0.1}, [].append)


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0, 1, 1, 1], dtype=np.float32))
    assert w[0] * 1 == pytest.approx(w[1] * 3)


def test_mixed_precision_trains_with_a_float32_output(dataset, cache_dir):
    rows = []
    try:
        run_trial(tiny(dataset, cache_dir, max_epochs=1, mixed_precision=True, augment=True, batchnorm=True),
                  rows.append)
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert np.isfinite(rows[-1]["loss"]) and 0 <= rows[-1]["test_f1"] <= 1
