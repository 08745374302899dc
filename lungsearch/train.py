"""Train one trial config: data, model, fit with early stopping, one report per epoch, test metrics at the end.

No Ray here: `report` is any callable taking a dict (ray.tune.report in a search, list.append in tests).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from . import data, models
from .config import TrialConfig
from .metrics import binary_metrics

Report = Callable[[dict[str, Any]], Any]


def compile_model(model: keras.Model, cfg: TrialConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="binary_crossentropy",
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.F1Score(average="micro", threshold=0.5, name="f1"),
            keras.metrics.AUC(name="auc"),
        ],
    )


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Weights that make both classes count equally in the loss."""
    counts = np.bincount(y.ravel().astype(int), minlength=2)
    return {c: float(len(y) / (2 * max(n, 1))) for c, n in enumerate(counts)}


def run_trial(config: dict[str, Any], report: Report, checkpoint_dir: str | Path | None = None,
              started: float | None = None) -> dict[str, Any]:
    """Train the model `config` describes and call `report` once per epoch; the last report holds test metrics.

    Early stopping on validation loss (patience from the config) restores the best weights before the
    test part is evaluated. Returns the last report. Saves the restored model as model.keras in
    `checkpoint_dir` when given, before the last report.
    """
    started = started or time.time()
    cfg = TrialConfig.from_dict(config)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    keras.utils.set_random_seed(cfg.seed)
    ds, images = data.load(cfg.data_dir, cfg.image_size, cfg.cache_dir or None)
    split = data.make_split(ds, cfg.split, seed=cfg.seed, data_limit=cfg.data_limit)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (data.arrays(images, ds, split[p]) for p in data.PARTS)
    model = models.build(cfg)
    compile_model(model, cfg)
    state = EpochReporter(report, cfg, x_test, y_test, started, checkpoint_dir)
    model.fit(
        x_train, y_train, batch_size=cfg.batch_size, epochs=cfg.max_epochs, validation_data=(x_val, y_val),
        class_weight=class_weights(y_train) if cfg.class_weight else None, callbacks=[state], verbose=0,
        shuffle=True,
    )
    return state.last


class EpochReporter(keras.callbacks.Callback):
    """Reports every epoch, stops early on validation loss, and on the last epoch restores the best
    weights and adds the test metrics, so the final report needs no extra training iteration."""

    def __init__(self, report: Report, cfg: TrialConfig, x_test, y_test, started: float,
                 checkpoint_dir: str | Path | None = None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.report, self.cfg = report, cfg
        self.x_test, self.y_test = x_test, y_test
        self.started = started
        self.best_loss, self.best_epoch, self.best_weights, self.best_logs = float("inf"), 0, None, {}
        self.wait = 0
        self.last: dict[str, Any] = {}
        self.epoch_started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            self.startup_s = time.time() - self.started  # process start to first batch, less Ray's own start
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        row: dict[str, Any] = {"epoch": epoch + 1, **logs, "epoch_s": time.time() - self.epoch_started,
                               "startup_s": self.startup_s}
        val_loss = logs.get("val_loss", float("nan"))
        if np.isfinite(val_loss) and val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch + 1
            self.best_weights = self.model.get_weights()
            self.best_logs = {k: v for k, v in logs.items() if k.startswith("val_")}
            self.wait = 0
        else:
            self.wait += 1
        if self.wait >= self.cfg.patience or epoch + 1 >= self.cfg.max_epochs or not np.isfinite(logs.get("loss", 0)):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            self.model.stop_training = True
            if self.checkpoint_dir:  # before the final report: Ray may end the trial as soon as it is made
                Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)
                self.model.save(Path(self.checkpoint_dir) / "model.keras")
            test = binary_metrics(self.y_test, self.model.predict(self.x_test, batch_size=256, verbose=0))
            row.update({"final": True, "best_epoch": self.best_epoch,
                        **{f"best_{k}": v for k, v in self.best_logs.items()},
                        **{f"test_{k}": v for k, v in test.items()}})
        self.last = row
        self.report(row)
