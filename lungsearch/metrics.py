"""Binary classification metrics on predicted probabilities (NumPy only, no Keras)."""
from __future__ import annotations

import numpy as np


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties averaged); NaN with a single class."""
    y, p = np.asarray(y).ravel().astype(bool), np.asarray(p).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Loss, accuracy, precision, recall, F1, specificity, AUC and the confusion matrix counts.

    An image is called PNEUMONIA when its probability is strictly above `threshold` (`p > threshold`), as
    Keras' BinaryAccuracy, Precision, Recall and F1Score count it during training, so a probability of
    exactly 0.5 is NORMAL at the default threshold. Probabilities are clipped to [1e-7, 1 - 1e-7] first
    (as the loss needs)."""
    y = np.asarray(y).ravel().astype(np.float64)
    p = np.clip(np.asarray(p).ravel().astype(np.float64), 1e-7, 1 - 1e-7)
    pred = p > threshold
    pos = y == 1
    tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
    fn, tn = int((~pred & pos).sum()), int((~pred & ~pos).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "accuracy": ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0,
        "specificity": ratio(tn, tn + fp),
        "auc": roc_auc(y, p),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }
