"""Train one trial config: data, model, fit with early stopping, one report per epoch, test metrics at the end.

No Ray here: `report` is any callable taking a dict (ray.tune.report in a search, list.append in tests).
Every epoch reports `objective` (config.OBJECTIVE.text): the one number early stopping, ASHA and the
leaderboard compare.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from . import data, models
from .config import OBJECTIVE, TrialConfig
from .metrics import SCORES, binary_metrics, val_threshold

Report = Callable[[dict[str, Any]], Any]
Parts = dict[str, tuple[np.ndarray, np.ndarray]]


def optimizer(cfg: TrialConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam or AdamW, at a constant learning rate or one that decays to 0 along a cosine over max_epochs
    (`plateau` halves a constant rate from EpochReporter)."""
    lr: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps_per_epoch * cfg.max_epochs)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(lr)


def compile_model(model: keras.Model, cfg: TrialConfig, steps_per_epoch: int = 1) -> None:
    model.compile(
        optimizer=optimizer(cfg, steps_per_epoch),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
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


class MixUpBatches(keras.utils.PyDataset):
    """Shuffled training batches in which each image is blended with a random partner, labels alike
    (MixUp, Zhang et al. 2018): x = lam * x_i + (1 - lam) * x_j with lam ~ Beta(alpha, alpha) per image.
    Class weights become per-sample weights blended the same way."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, alpha: float, seed: int,
                 weights: dict[int, float] | None = None):
        super().__init__()
        self.x, self.y, self.batch_size, self.alpha = x, y, batch_size, alpha
        self.w = None if weights is None else np.array([weights[int(v)] for v in y.ravel()], np.float32)[:, None]
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.order, self.partner = self.rng.permutation(len(self.x)), self.rng.permutation(len(self.x))

    def __getitem__(self, i: int):
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        a, b = self.order[sl], self.partner[sl]
        lam = self.rng.beta(self.alpha, self.alpha, (len(a), 1)).astype(np.float32)
        x = lam[:, :, None, None] * self.x[a] + (1 - lam[:, :, None, None]) * self.x[b]
        y = lam * self.y[a] + (1 - lam) * self.y[b]
        if self.w is None:
            return x, y
        return x, y, lam * self.w[a] + (1 - lam) * self.w[b]


# This process's decoded datasets, by (folder, fingerprint, size, decode method): a trial worker that runs
# trial after trial (Ray's reused actors, or keras-tuner in one process) reads the image cache once.
LOADED: dict[tuple, tuple[data.Dataset, np.ndarray]] = {}


def trial_data(cfg: TrialConfig, dataset: data.Dataset | None = None) -> tuple[np.ndarray, np.ndarray, Parts]:
    """The training arrays and the other parts (val, test, holdout) of a trial's split.

    `dataset`: the folder as the driver scanned it (so a trial does not hash every image again); without
    it the folder is scanned here."""
    ds = dataset if dataset is not None else data.scan(cfg.data_dir)
    key = (str(ds.root), ds.fingerprint, cfg.image_size, data.decode_method(cfg.normalize), cfg.cache_dir)
    if key not in LOADED:
        LOADED.clear()  # one dataset in memory at a time
        LOADED[key] = data.load_images(ds.root, cfg.image_size, cfg.cache_dir or None, normalize=cfg.normalize,
                                dataset=ds)
    ds, images = LOADED[key]
    if cfg.split_file:  # the run's parts as the driver wrote them
        split = data.read_split(cfg.split_file, ds, cfg.data_fraction)
    else:
        split = data.make_split(ds, cfg.split, seed=cfg.split_seed, data_limit=cfg.data_limit)
        split["train"] = data.training_share(ds, split["train"], cfg.data_fraction, cfg.split_seed)
    parts = {p: data.arrays(images, ds, idx) for p, idx in split.items()}
    x_train, y_train = parts.pop("train")
    return x_train, y_train, parts


def warm_compiles(cfg: TrialConfig) -> None:
    """With the JAX backend, keep XLA's compiled programs in the cache folder (jax-compiled/), so trials of one
    architecture compile once per machine rather than once per trial. Other backends: nothing to do."""
    if keras.backend.backend() != "jax":
        return
    import jax

    folder = Path(cfg.cache_dir or data.default_cache_dir()).expanduser() / "jax-compiled"
    if jax.config.jax_compilation_cache_dir != str(folder):
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # a small CNN compiles in under 1 s


def reset_state(cfg: TrialConfig) -> None:
    """What one trial must not inherit from the previous one in the same process: Keras' global state
    (layer names, the backend's graph), the dtype policy and the random seeds."""
    keras.backend.clear_session()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    keras.utils.set_random_seed(cfg.seed)


def run_trial(config: dict[str, Any], report: Report, checkpoint_dir: str | Path | None = None,
              started: float | None = None, dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Train the model `config` describes and call `report` once per epoch; the last report holds test metrics.

    Early stopping watches validation AUC (or the holdout's, with early_stop_on='holdout'), with patience
    from the config, and restores the kept epoch's weights before the test part is evaluated. Returns the
    last report. Saves the restored model as model.keras in `checkpoint_dir` when given, before the last report.
    Runs the same whether or not the process trained other trials before (`reset_state`).
    """
    started = started or time.time()
    cfg = TrialConfig.from_dict(config)
    warm_compiles(cfg)
    reset_state(cfg)
    x_train, y_train, parts = trial_data(cfg, dataset)
    model = models.build(cfg)
    compile_model(model, cfg, math.ceil(len(x_train) / cfg.batch_size))
    return fit(model, cfg, x_train, y_train, parts, report, checkpoint_dir, started)


def fit(model: keras.Model, cfg: TrialConfig, x_train: np.ndarray, y_train: np.ndarray, parts: Parts,
        report: Report, checkpoint_dir: str | Path | None = None, started: float | None = None,
        callbacks: list[keras.callbacks.Callback] = (), epochs: int | None = None,
        initial_epoch: int = 0) -> dict[str, Any]:
    """Fit a compiled model for up to cfg.max_epochs with the trial's early stopping and per-epoch reports
    (EpochReporter); `callbacks` run after it and find the objective in the epoch's logs. Returns the last report.

    `epochs`, `initial_epoch` (Keras' meaning): train epochs initial_epoch + 1 to `epochs` (default
    cfg.max_epochs) of a model that was trained `initial_epoch` epochs before, as a Hyperband round that goes on
    with a trial does; the last of them is the trial's last epoch (kept weights restored, test scored)."""
    weights = class_weights(y_train) if cfg.class_weight else None
    epochs = epochs or cfg.max_epochs
    state = EpochReporter(report, cfg, parts, started or time.time(), checkpoint_dir, epochs, len(x_train))
    if cfg.mixup > 0:
        model.fit(MixUpBatches(x_train, y_train, cfg.batch_size, cfg.mixup, cfg.seed, weights),
                  epochs=epochs, initial_epoch=initial_epoch, callbacks=[state, *callbacks], verbose=0)
    else:
        model.fit(x_train, y_train, batch_size=cfg.batch_size, epochs=epochs, initial_epoch=initial_epoch,
                  class_weight=weights, callbacks=[state, *callbacks], verbose=0, shuffle=True)
    return state.last


class EpochReporter(keras.callbacks.Callback):
    """Scores the validation (and holdout) part every epoch, reports, stops early when the watched AUC has
    not improved for `patience` epochs, and on the last epoch restores the kept weights and adds the test
    metrics, so the final report needs no extra training iteration.

    `parts` maps part names (val, test, optionally holdout) to (x, y). Predictions use test-time flip
    augmentation when the config asks for it, so the objective measures the model as it is evaluated.
    """

    def __init__(self, report: Report, cfg: TrialConfig, parts: Parts, started: float,
                 checkpoint_dir: str | Path | None = None, epochs: int | None = None, train_images: int = 0):
        super().__init__()
        self.checkpoint_dir, self.epochs = checkpoint_dir, epochs or cfg.max_epochs  # the last epoch
        self.report, self.cfg, self.parts = report, cfg, parts
        self.started = started
        self.watch = "holdout" if cfg.early_stop_on == "holdout" else "val"
        self.best_score, self.best_epoch, self.best_weights, self.best_scores = OBJECTIVE.worst, 0, None, {}
        self.wait = 0
        self.stacked: np.ndarray | None = None  # the val and holdout images, one array (score_watched)
        self.last: dict[str, Any] = {}
        self.epoch_started = time.time()
        self.startup_s = 0.0
        self.train_images = train_images  # reported each epoch: a low-fidelity trial's are fewer

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            self.startup_s = time.time() - self.started  # trial start (its function called) to first batch
        self.epoch_started = time.time()

    def score(self, part: str, threshold: float = 0.5) -> dict[str, float]:
        x, y = self.parts[part]
        return binary_metrics(y, models.predict_proba(self.model, x, self.cfg.tta), threshold)

    def score_watched(self) -> dict[str, dict[str, float]]:
        """Metrics of the validation part and the holdout (where the split has one), from one prediction call
        over both: each call of `predict` costs its own set-up."""
        names = [p for p in ("val", "holdout") if p in self.parts]
        if self.stacked is None:
            self.stacked = np.concatenate([self.parts[p][0] for p in names])
        probs = models.predict_proba(self.model, self.stacked, self.cfg.tta)
        ends = np.cumsum([len(self.parts[p][1]) for p in names])
        scores = {p: binary_metrics(self.parts[p][1], chunk) for p, chunk in zip(names, np.split(probs, ends[:-1]))}
        y, p = self.parts["val"][1], probs[: ends[0]]
        scores["val"]["f1_tuned"] = binary_metrics(y, p, val_threshold(y, p))["f1"]  # rank_by: f1
        return scores

    def on_epoch_end(self, epoch, logs=None):
        given, logs = logs, {k: float(v) for k, v in (logs or {}).items()}
        self.step(epoch, logs, self.score_watched())
        if given is not None:  # the callbacks after this one see the objective (e.g. keras-tuner's checkpoint)
            given["objective"] = self.last["objective"]

    def current_lr(self) -> float:
        lr = self.model.optimizer.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def step(self, epoch: int, logs: dict[str, float], scores: dict[str, dict[str, float]]) -> None:
        """Bookkeeping of one epoch given the training logs and the scores of the parts."""
        row: dict[str, Any] = {"epoch": epoch + 1, **logs, "epoch_s": time.time() - self.epoch_started,
                               "startup_s": self.startup_s, "lr": self.current_lr(), "train_images": self.train_images}
        for part, metrics in scores.items():
            row.update({f"{part}_{k}": metrics[k] for k in SCORES})
        row["val_f1_tuned"] = scores["val"].get("f1_tuned", float("nan"))
        watched = scores[self.watch]["auc"]
        if OBJECTIVE.better(watched, self.best_score):  # the objective is this AUC at the kept epoch
            self.best_score, self.best_epoch = watched, epoch + 1
            self.best_weights = self.model.get_weights()
            self.best_scores = {f"{part}_{k}": v for part, m in scores.items() for k, v in m.items()}
            self.wait = 0
        else:
            self.wait += 1
            if self.cfg.lr_schedule == "plateau" and self.wait % max(1, self.cfg.patience // 2) == 0:
                self.model.optimizer.learning_rate.assign(self.current_lr() * 0.5)
        row.update({"kept_epoch": self.best_epoch, "objective": self.best_scores.get("val_auc", float("nan"))})
        diverged = not np.isfinite(logs.get("loss", 0.0))
        if self.wait >= self.cfg.patience or epoch + 1 >= self.epochs or diverged:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            self.model.stop_training = True
            if self.checkpoint_dir:  # before the final report: Ray may end the trial as soon as it is made
                Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)
                self.model.save(Path(self.checkpoint_dir) / "model.keras")
            test = self.score("test")
            row.update({"final": True, "best_epoch": self.best_epoch, "diverged": diverged,
                        **{f"best_{k}": v for k, v in self.best_scores.items()},
                        **{f"test_{k}": v for k, v in test.items()}})
        self.last = row
        self.report(row)
