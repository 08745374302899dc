"""Calibration of predicted probabilities (NumPy only): Platt scaling of the model's logit fitted on the
validation part, applied to any probabilities; the Brier score, the expected calibration error and the
reliability diagram's bins, with (patient) bootstrap intervals.

Platt scaling maps a probability p to sigmoid(a * logit(p) + b). With b = 0 it is temperature scaling
(temperature 1 / a). The map is increasing for a > 0, so it keeps every ranking (AUC) and moves a
threshold to the calibrated scale without changing a single label.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .metrics import percentiles, resample_weights

EPS = 1e-7
BINS = 10  # equal-width bins of the reliability diagram and the ECE
# L2 penalty on (a - 1) and b: keeps the fit finite when validation is separable (a perfect ranker)
RIDGE = 1e-3


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64).ravel(), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities clipped to [EPS, 1 - EPS]."""
    y, p = np.asarray(y, np.float64).ravel(), np.clip(np.asarray(p, np.float64).ravel(), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class Platt:
    """p -> sigmoid(a * logit(p) + b), fitted on the part named in `fitted_on`."""

    a: float = 1.0
    b: float = 0.0
    fitted_on: str = "validation part"

    @property
    def temperature(self) -> float:
        return 1 / self.a if self.a else float("inf")

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return sigmoid(self.a * logit(p) + self.b)

    def threshold(self, t: float) -> float:
        """A raw-probability threshold on the calibrated scale (the same labels)."""
        return float(self(np.array([t]))[0])

    def to_dict(self) -> dict[str, Any]:
        return {"method": "platt", **asdict(self), "temperature": self.temperature,
                "formula": "sigmoid(a * logit(p) + b), p the model's probability of PNEUMONIA"}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Platt | None":
        return cls(float(d["a"]), float(d["b"]), str(d.get("fitted_on", ""))) if d else None


def fit_platt(y: np.ndarray, p: np.ndarray, fitted_on: str = "validation part", steps: int = 100) -> Platt:
    """Platt scaling minimising the log-loss of (y, p) (use validation data only), by Newton's method on
    (a, b) with backtracking and a small ridge towards the identity; one class only: the identity."""
    y, z = np.asarray(y, np.float64).ravel(), logit(p)
    if y.min() == y.max():
        return Platt(1.0, 0.0, fitted_on)
    x, prior = np.column_stack([z, np.ones_like(z)]), np.array([1.0, 0.0])

    def objective(w: np.ndarray) -> float:
        s = x @ w  # log(1 + e^s) - y s, written to stay finite for large |s|
        return float(np.mean(np.logaddexp(0, s) - y * s) + RIDGE / 2 * np.sum((w - prior) ** 2))

    w = prior.copy()
    for _ in range(steps):
        q = sigmoid(x @ w)
        grad = x.T @ (q - y) / len(y) + RIDGE * (w - prior)
        hess = (x * (q * (1 - q))[:, None]).T @ x / len(y) + RIDGE * np.eye(2)
        step, size, before = np.linalg.solve(hess, grad), 1.0, objective(w)
        while objective(w - size * step) > before and size > 1e-8:  # Newton overshoots far from the optimum
            size /= 2
        w = w - size * step
        if np.abs(size * step).max() < 1e-10:
            break
    return Platt(float(w[0]), float(w[1]), fitted_on)


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of predicted probability: the images in it, their mean prediction and the share
    that are PNEUMONIA (NaN where a bin is empty)."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    which = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return {"count": n, "mean_predicted": np.bincount(which, p, bins) / n,
                "observed": np.bincount(which, y, bins) / n}


def weighted_calibration(y: np.ndarray, p: np.ndarray, w: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Brier score and expected calibration error for many weightings at once (row b of `w` counts how often
    each image is drawn), as metrics.weighted_metrics for the bootstrap."""
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    total = w.sum(axis=1)
    brier = w @ (p - y) ** 2 / total
    onehot = np.eye(bins)[np.minimum((p * bins).astype(int), bins - 1)]  # N x bins
    n, sp, sy = w @ onehot, w @ (onehot * p[:, None]), w @ (onehot * y[:, None])
    ece = np.abs(sp - sy).sum(axis=1) / total  # sum over bins of n_k / N * |mean p - mean y|
    return {"brier": brier, "ece": ece, "n": n}


def calibration_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Brier score, ECE (BINS equal-width bins) and log-loss of (y, p), the first two with percentile
    bootstrap intervals over resampled patients (`groups`, one key per image; else images)."""
    n = len(np.ravel(y))
    w = np.vstack([np.ones((1, n)), resample_weights(np.arange(n) if groups is None else groups, n_boot, seed)])
    values = weighted_calibration(y, p, w)
    return {"brier": float(values["brier"][0]), "brier_ci95": percentiles(values["brier"][1:], level),
            "ece": float(values["ece"][0]), "ece_ci95": percentiles(values["ece"][1:], level),
            "log_loss": log_loss(y, p)}
