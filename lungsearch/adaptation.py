"""(No Ray.) Adapting the final model to the validation part's distribution by cross-fitting, kept only when
validation says it helps.

With the target split, validation is half of the dataset's own test/ folder: the distribution the model will meet,
which train/ differs from. Fine-tuning on those images could help, but then validation can no longer judge the
model. Cross-fitting keeps it honest: the validation patients are dealt into k folds; for each fold j, a copy of
every member of the final model is fine-tuned (a few epochs, a small learning rate) on the other k - 1 folds and
predicts fold j only. Every validation image so gets a prediction from models that never saw it (out-of-fold), and
the threshold, the calibration map and the decision come from those. The exported model is the mean of all k
copies of every member.

The decision is paired fold by fold: on each fold's images, the AUC of the fine-tuned copies against the AUC of
the model as it was; the adapted model is kept when the mean of those differences is above 0. (Per fold, not
pooled: the k copies differ in their score scale, which a pooled AUC counts against them. And the model as it was
has the advantage of having been chosen on these very images, so the comparison leans against adapting.)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np

from .metrics import percentiles, resample_weights, roc_auc, weighted_metrics

FOLDER = "adapted"  # in the run folder: the fine-tuned copies, their out-of-fold predictions and the decision
RECORD = "adaptation.json"
PREDICTIONS = "predictions.npz"
FOLD_MARK = ".fold"  # a fine-tuned copy's name: the trial's name, FOLD_MARK and the fold number
BATCH = 16
RULE = ("the final model is fine-tuned on the validation part by cross-fitting ({folds} patient folds, {epochs} "
        "epochs at learning rate {lr:g}; each fold's copies predict that fold only); the adapted model is kept when "
        "its AUC on each held-out fold, against the model as it was on the same images, is higher on average")


def copy_name(trial: str, fold: int) -> str:
    return f"{trial}{FOLD_MARK}{fold}"


def source_trial(name: str) -> str:
    """The trial a fine-tuned copy was made from (the name itself for a trial)."""
    return name.split(FOLD_MARK)[0] if FOLD_MARK in name else name


@dataclass
class Member:
    """One model of the final model, with its own inputs: validation and every other scored part, decoded as
    the model was trained."""

    trial: str
    model: keras.Model
    tta: bool
    x: dict[str, np.ndarray]  # by part: val, test, holdout


@dataclass
class Adapted:
    """Out-of-fold validation probabilities, every other part's probabilities (mean of every copy), the copies
    themselves by name, and the fold-by-fold comparison that decides."""

    p: dict[str, np.ndarray]
    copies: dict[str, keras.Model] = field(repr=False)
    fold_auc: list[dict[str, float]]

    @property
    def gain(self) -> float:
        """The mean over folds of the adapted AUC minus the AUC before."""
        return float(np.mean([f["adapted"] - f["before"] for f in self.fold_auc]))

    @property
    def kept(self) -> bool:
        return bool(self.gain > 0)


def fine_tuned(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
               seed: int) -> keras.Model:
    """A copy of `model` trained `epochs` more epochs on (x, y) with Adam at `learning_rate` (binary cross-entropy,
    the layers as the model has them: its augmentation and BatchNorm statistics adapt too)."""
    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    copy.fit(x, y.astype("float32").reshape(-1, 1), batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True)
    return copy


def cross_fit(members: list[Member], y_val: np.ndarray, folds: np.ndarray, before: np.ndarray, epochs: int,
              learning_rate: float, seed: int, predict: Callable[..., np.ndarray],
              log: Callable[[str], Any] = print) -> Adapted:
    """Fine-tune every member once per fold on the other folds; `before`: the model's validation probabilities as
    it was (the comparison), `predict(model, x, tta)`: probabilities. Returns the out-of-fold and averaged
    probabilities and the fold-by-fold AUCs."""
    y_val = np.ravel(y_val)
    k = int(folds.max()) + 1
    oof = np.zeros((len(members), len(y_val)))
    others = {part: [] for part in members[0].x if part != "val"}
    copies = {}
    for m, member in enumerate(members):
        for j in range(k):
            train = folds != j
            copy = fine_tuned(member.model, member.x["val"][train], y_val[train], epochs, learning_rate,
                              seed + 1000 * m + j)
            oof[m, ~train] = predict(copy, member.x["val"][~train], member.tta)
            for part in others:
                others[part].append(predict(copy, member.x[part], member.tta))
            copies[copy_name(member.trial, j)] = copy
        log(f"adapted {member.trial}: {k} fine-tuned copies")
    p = {"val": oof.mean(axis=0), **{part: np.mean(v, axis=0) for part, v in others.items()}}
    fold_auc = [{"fold": j, "images": int((folds == j).sum()), "before": roc_auc(y_val[folds == j], before[folds == j]),
                 "adapted": roc_auc(y_val[folds == j], p["val"][folds == j])} for j in range(k)]
    return Adapted(p, copies, fold_auc)


def gain_interval(y: np.ndarray, folds: np.ndarray, before: np.ndarray, adapted: np.ndarray, groups: np.ndarray,
                  n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile interval of the decision's gain (the mean over folds of adapted AUC minus AUC before) over
    `n_boot` seeded resamples of the validation patients (`groups`): how far the validation part can tell the
    two apart. The same resample scores both, fold by fold, so the interval is that of the paired difference."""
    y, folds = np.ravel(y), np.ravel(folds)
    w = resample_weights(groups, n_boot, seed)
    diffs = []
    for j in range(int(folds.max()) + 1):
        f = folds == j
        diffs.append(weighted_metrics(y[f], adapted[f], w[:, f], 0.5)["auc"]
                     - weighted_metrics(y[f], before[f], w[:, f], 0.5)["auc"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample that leaves a fold without one class
        gains = np.nanmean(np.vstack(diffs), axis=0)
    return percentiles(gains, level)
