"""Binary classification metrics on predicted probabilities (NumPy only, no Keras): the point metrics, the
threshold chosen on validation, seeded (patient) bootstrap intervals, the paired bootstrap difference of two
models, and ROC curve points."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

SCORES = ("loss", "accuracy", "precision", "recall", "f1", "specificity", "auc")  # binary_metrics' scores
COUNTS = ("tp", "fp", "fn", "tn")  # ... and its confusion matrix counts
CI_METRICS = SCORES[1:]  # bootstrap_ci's metrics (no loss)


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


def val_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The decision threshold that maximises F1 on (y, p), placed midway between two distinct scores;
    among equally good thresholds the one nearest 0.5. Use on validation data only. Cut i calls the scores
    from values[i] up positive under binary_metrics' rule `p > threshold`: it lies below values[i] and not
    below values[i - 1] (the lower score itself where two scores are too close to have a midpoint)."""
    y = np.asarray(y).ravel().astype(bool)
    p = np.clip(np.asarray(p).ravel().astype(np.float64), 1e-7, 1 - 1e-7)  # as binary_metrics compares
    if not y.any():
        return 0.5
    values = np.unique(p)
    mid = (values[:-1] + values[1:]) / 2
    cuts = np.concatenate([[values[0] / 2], np.where(mid < values[1:], mid, values[:-1])])
    tp = y.sum() - np.searchsorted(np.sort(p[y]), values, side="left")
    fp = (~y).sum() - np.searchsorted(np.sort(p[~y]), values, side="left")
    f1 = 2 * tp / (tp + y.sum() + fp)
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def weighted_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """binary_metrics' accuracy, precision, recall, F1, specificity and AUC for many weightings at once:
    row b of `w` (B x N) counts how often each sample is drawn. Vectorised for the bootstrap."""
    y = np.asarray(y).ravel().astype(bool)
    p = np.clip(np.asarray(p).ravel().astype(np.float64), 1e-7, 1 - 1e-7)
    pred = p > threshold  # as binary_metrics and Keras' metrics
    tp, fp, fn, tn = w @ (pred & y), w @ (pred & ~y), w @ (~pred & y), w @ (~pred & ~y)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    order = np.argsort(p, kind="mergesort")
    sorted_p, ws = p[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_p) != 0])  # groups of tied scores
    pos = np.add.reduceat(ws * y[order], starts, axis=1)
    neg = np.add.reduceat(ws * ~y[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((n_pos > 0) & (n_neg > 0), (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg), np.nan)
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn), "precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall), "specificity": ratio(tn, tn + fp), "auc": auc}


def resample_weights(groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """B x N weights of a seeded cluster bootstrap: each resample draws as many groups (patients) as there
    are, with replacement, and each image counts as often as its group was drawn. With one group per image
    this is the ordinary bootstrap of images."""
    _, inverse = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    g = int(inverse.max()) + 1
    idx = np.random.default_rng(seed).integers(0, g, (n_boot, g))
    counts = np.bincount((idx + g * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * g)
    return counts.reshape(n_boot, g)[:, inverse].astype(np.float64)


def percentiles(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    return tuple(float(v) for v in np.nanpercentile(values, [tail, 100 - tail]))


def bootstrap_ci(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, groups: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for CI_METRICS over `n_boot` seeded resamples of the patients in `groups`
    (one key per image); without groups, of the images."""
    w = resample_weights(np.arange(len(np.ravel(y))) if groups is None else groups, n_boot, seed)
    values = weighted_metrics(y, p, w, threshold)
    return {m: percentiles(values[m], level) for m in CI_METRICS}


class Scored(Protocol):
    """A model's labels, probabilities and validation threshold, as paired_difference reads them
    (analysis.Evaluation is one)."""

    threshold: float
    y: dict[str, np.ndarray]
    p: dict[str, np.ndarray]
    groups: np.ndarray | None


PAIRED = (("f1_at_0.5", "f1", False), ("f1_at_threshold", "f1", True), ("auc", "auc", False))


def paired_difference(best: Scored, base: Scored, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Best minus base on the test part: F1 at 0.5, F1 at each model's own validation threshold, and AUC,
    each with a paired bootstrap interval: the same resamples of test patients score both models, so the
    interval is that of the difference (patients both find easy or hard do not widen it)."""
    y = best.y["test"]
    if not np.array_equal(y, base.y["test"]):
        raise ValueError("the two models were not scored on the same test images")
    n = len(np.ravel(y))
    w = np.vstack([np.ones((1, n)), resample_weights(np.arange(n) if best.groups is None else best.groups,
                                                     n_boot, seed)])  # row 0: the test part as it is
    scores = {(e, tuned): weighted_metrics(y, ev.p["test"], w, ev.threshold if tuned else 0.5)
              for e, ev in (("best", best), ("base", base)) for tuned in (False, True)}
    out = {}
    for key, metric, tuned in PAIRED:
        b, a = scores["best", tuned][metric], scores["base", tuned][metric]
        out[key] = {"best": float(b[0]), "base": float(a[0]), "difference": float(b[0] - a[0]),
                    "ci95": percentiles(b[1:] - a[1:], level)}
    return out


def counts_by_threshold(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """True and false positives when every score from the highest down to each distinct score is called positive,
    and the numbers of positives and negatives: what ROC and precision-recall curves are drawn from."""
    y = np.asarray(y).ravel().astype(bool)
    order = np.argsort(-np.asarray(p).ravel(), kind="mergesort")
    tp, fp = np.cumsum(y[order]), np.cumsum(~y[order])
    last = np.r_[np.diff(np.asarray(p).ravel()[order]) != 0, True]
    return tp[last], fp[last], int(y.sum()), int((~y).sum())


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    tp, fp, pos, neg = counts_by_threshold(y, p)
    return np.r_[0, fp / max(neg, 1)], np.r_[0, tp / max(pos, 1)]


# Clinical operating points: (key, the rate held on validation, its floor, the rate reported on test).
OPERATING_POINTS = (("sensitivity_at_specificity_0.90", "specificity", 0.90, "recall"),
                    ("sensitivity_at_specificity_0.95", "specificity", 0.95, "recall"),
                    ("specificity_at_sensitivity_0.95", "recall", 0.95, "specificity"))


def threshold_for(y: np.ndarray, p: np.ndarray, rate: str, floor: float) -> float:
    """The threshold at which `rate` (specificity or recall) on (y, p) is at least `floor` and the other rate
    is highest: the lowest such cut for specificity, the highest for recall. Use on validation data only.
    Cuts lie midway between distinct scores, as val_threshold's, under binary_metrics' rule `p > threshold`."""
    y = np.asarray(y).ravel().astype(bool)
    p = np.clip(np.asarray(p).ravel().astype(np.float64), 1e-7, 1 - 1e-7)
    values = np.unique(p)
    cuts = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
    neg, pos = np.sort(p[~y]), np.sort(p[y])
    spec = np.searchsorted(neg, cuts, side="right") / max(len(neg), 1)
    sens = 1 - np.searchsorted(pos, cuts, side="right") / max(len(pos), 1)
    if rate == "specificity":
        ok = np.flatnonzero(spec >= floor - 1e-12)
        return float(cuts[ok[0]])  # the highest cut always reaches specificity 1
    if rate == "recall":
        ok = np.flatnonzero(sens >= floor - 1e-12)
        return float(cuts[ok[-1]])  # the lowest cut always reaches recall 1
    raise ValueError(f"rate must be specificity or recall, got {rate!r}")


def operating_points(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                     groups: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict[str, Any]]:
    """OPERATING_POINTS: each threshold chosen on validation (never test), the held rate there, and on test
    both rates at that threshold with (patient) bootstrap intervals."""
    w = resample_weights(np.arange(len(np.ravel(y_test))) if groups is None else groups, n_boot, seed)
    out = {}
    for key, held, floor, reported in OPERATING_POINTS:
        thr = threshold_for(y_val, p_val, held, floor)
        val, test = binary_metrics(y_val, p_val, thr), binary_metrics(y_test, p_test, thr)
        boot = weighted_metrics(y_test, p_test, w, thr)
        out[key] = {"threshold": thr, "held": held, "floor": floor, "reported": reported,
                    f"val_{held}": val[held], f"val_{reported}": val[reported],
                    **{f"test_{m}": test[m] for m in (held, reported)},
                    **{f"test_{m}_ci95": percentiles(boot[m], level) for m in (held, reported)}}
    return out


def pr_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every distinct threshold, from the highest score down (recall 0 to 1)."""
    tp, fp, pos, _ = counts_by_threshold(y, p)
    recall, precision = tp / max(pos, 1), tp / (tp + fp)
    return np.r_[0, recall], np.r_[precision[0] if len(precision) else 1.0, precision]


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve as the step sum over recall (scikit-learn's average precision)."""
    recall, precision = pr_points(y, p)
    return float(np.sum(np.diff(recall) * precision[1:]))


def delong_components(y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: for each positive, the share of negatives it outranks (V10);
    for each negative, the share of positives that outrank it (V01); ties count a half."""
    y = np.asarray(y).ravel().astype(bool)
    p = np.asarray(p).ravel().astype(np.float64)
    pos, neg = p[y], p[~y]
    # ranks among all, among positives, among negatives (ties averaged) give both components without an
    # m x n matrix
    rank_all, rank_pos, rank_neg = (pd_rank(a) for a in (p, pos, neg))
    v10 = (rank_all[y] - rank_pos) / len(neg)
    v01 = 1 - (rank_all[~y] - rank_neg) / len(pos)
    return float(v10.mean()), v10, v01


def pd_rank(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged (as scipy's rankdata)."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def delong_test(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> dict[str, float]:
    """DeLong's test of AUC(p1) - AUC(p2) for two models scored on the same images (DeLong, DeLong and
    Clarke-Pearson 1988): the difference, its standard error, a 95% normal interval, z and the two-sided p.
    A zero standard error (identical rankings) gives z 0 and p 1."""
    from math import erf, sqrt

    y = np.asarray(y).ravel().astype(bool)
    if y.all() or not y.any():
        raise ValueError("DeLong's test needs both classes")
    a1, v10_1, v01_1 = delong_components(y, p1)
    a2, v10_2, v01_2 = delong_components(y, p2)
    s10, s01 = np.cov(np.vstack([v10_1, v10_2])), np.cov(np.vstack([v01_1, v01_2]))
    cov = s10 / y.sum() + s01 / (~y).sum()
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff, se = a1 - a2, sqrt(max(var, 0.0))
    z = diff / se if se > 1e-12 else 0.0
    return {"auc_1": a1, "auc_2": a2, "difference": diff, "se": se, "ci95": (diff - 1.959964 * se, diff + 1.959964 * se),
            "z": z, "p_value": float(1 - erf(abs(z) / sqrt(2)))}
