"""What a reviewer of a medical-imaging model asks of an analysed run (CLAIM, TRIPOD+AI): calibration of each
evaluated model (Platt scaling fitted on validation, Brier score and ECE on test before and after), clinical
operating points chosen on validation, DeLong's test of the best model against base, the best model's
saliency on the test part with a gallery of its most confident mistakes, and the flow of images and patients
from the dataset's folders to the run's parts. Statistics are in metrics and calibration; no plotting here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from . import data
from .analysis import Analysis, Evaluation
from .calibration import Platt, calibration_metrics, fit_platt, reliability_bins
from .metrics import delong_test, operating_points

GALLERY = {"false positive": 3, "false negative": 3, "true positive": 2, "true negative": 2}
SALIENCY_BATCH = 64


@dataclass
class Calibrated:
    """One model's calibration: the map fitted on validation and the test part before and after it."""

    platt: Platt
    before: dict[str, Any]  # calibration_metrics on test, raw probabilities
    after: dict[str, Any]  # ... calibrated
    threshold: float  # chosen on validation, raw scale
    threshold_calibrated: float  # the same cut on the calibrated scale
    val_log_loss: tuple[float, float]  # before, after: what the fit minimised

    def to_dict(self) -> dict[str, Any]:
        return {**self.platt.to_dict(), "threshold_raw": self.threshold,
                "threshold_calibrated": self.threshold_calibrated, "test_before": self.before,
                "test_after": self.after, "val_log_loss_before_after": list(self.val_log_loss)}


@dataclass
class Case:
    """One test image of the gallery, with the best model's (mean) saliency map at its input size."""

    index: int  # into the run's test part
    kind: str  # false positive, false negative, true positive, true negative
    file: str
    probability: float
    image: np.ndarray = field(repr=False)
    heat: np.ndarray = field(repr=False)


@dataclass
class Review:
    calibrated: dict[str, Calibrated]  # by model name
    operating: dict[str, dict[str, dict[str, Any]]]  # by model name: metrics.operating_points
    delong: dict[str, Any] | None  # best minus base; None without both, or when best is base
    gallery: list[Case]
    border_share: dict[str, float]  # saliency share in the outer border on the test part: mean, by class
    saliency_method: str
    flow: dict[str, Any]


def calibrate(e: Evaluation, n_boot: int, seed: int) -> Calibrated:
    """Platt scaling fitted on e's validation part, scored on its test part before and after."""
    from .calibration import log_loss

    platt = fit_platt(e.y["val"], e.p["val"])
    before = calibration_metrics(e.y["test"], e.p["test"], e.groups, n_boot, seed)
    after = calibration_metrics(e.y["test"], platt(e.p["test"]), e.groups, n_boot, seed)
    before["bins"], after["bins"] = (
        {k: [None if np.isnan(v) else float(v) for v in vals] for k, vals in reliability_bins(e.y["test"], p).items()}
        for p in (e.p["test"], platt(e.p["test"])))
    val = (log_loss(e.y["val"], e.p["val"]), log_loss(e.y["val"], platt(e.p["val"])))
    return Calibrated(platt, before, after, e.threshold, platt.threshold(e.threshold), val)


def shown_models(a: Analysis) -> list[Evaluation]:
    """The evaluated models, the ensemble and the best model (which, after a confirmation stage, may be neither)."""
    shown = [*a.evals.values(), *([a.ensemble] if a.ensemble else [])]
    return shown + ([a.best] if a.best is not None and all(e is not a.best for e in shown) else [])


def review(a: Analysis, n_boot: int = 1000, saliency: bool = True) -> Review:
    """The reviewer's analysis of `a`: every threshold and calibration map is fitted on validation only."""
    seed = int(a.run.manifest["run_constants"].get("seed", 0))
    models_ = shown_models(a)
    calibrated = {e.name: calibrate(e, n_boot, seed) for e in models_}
    operating = {e.name: operating_points(e.y["val"], e.p["val"], e.y["test"], e.p["test"], e.groups, n_boot, seed)
                 for e in models_}
    base = next((e for e in a.evals.values() if e.fixed_point == "base"), None)
    delong = (delong_test(a.best.y["test"], a.best.p["test"], base.p["test"])
              if a.best and base and a.best is not base and len(set(a.best.y["test"].tolist())) == 2 else None)
    gallery, border, method = best_saliency(a) if (saliency and a.best) else ([], {}, "")
    return Review(calibrated, operating, delong, gallery, border, method, flow(a))


def best_saliency(a: Analysis) -> tuple[list[Case], dict[str, float], str]:
    """The best model's saliency on every test image (its members' maps averaged at the first member's size):
    the gallery cases and the border share, overall and by true class."""
    from . import explain, models

    maps, method, first = [], "", None
    for trial in a.best.trials:
        model = a.run.model(trial)
        x, _ = a.data.parts(int(model.input_shape[1]), models.decode_normalization(model))["test"]
        first = x if first is None else first
        got = [explain.saliency(model, x[k:k + SALIENCY_BATCH]) for k in range(0, len(x), SALIENCY_BATCH)]
        method = got[0][1]
        m = np.concatenate([g[0] for g in got])
        maps.append(np.stack([cv2.resize(h.astype(np.float32), first.shape[2:0:-1]) for h in m]))
    heat = np.mean(maps, axis=0)
    y, p = a.best.y["test"].astype(int), a.best.p["test"]
    shares = np.array([explain.border_share(h) for h in heat])
    border = {"all": float(np.nanmean(shares)) if np.isfinite(shares).any() else float("nan"),
              **{c: float(np.nanmean(shares[y == k])) if np.isfinite(shares[y == k]).any() else float("nan")
                 for k, c in enumerate(data.CLASSES)}}
    files = [a.data.ds.files[i] for i in a.data.split["test"]]
    cases = [Case(int(i), kind, files[i], float(p[i]), first[i, ..., 0], heat[i])
             for kind, i in gallery_picks(y, p, a.best.threshold)]
    return cases, border, method


def gallery_picks(y: np.ndarray, p: np.ndarray, threshold: float) -> list[tuple[str, int]]:
    """GALLERY's cases at the validation threshold: the most confident false positives (highest scores of
    NORMAL images called PNEUMONIA) and false negatives (lowest scores of PNEUMONIA images called NORMAL),
    and the most confident correct calls."""
    pred = p > threshold
    pools = {"false positive": (pred & (y == 0), -p), "false negative": (~pred & (y == 1), p),
             "true positive": (pred & (y == 1), -p), "true negative": (~pred & (y == 0), p)}
    picks = []
    for kind, (mask, key) in pools.items():
        idx = np.flatnonzero(mask)
        picks += [(kind, int(i)) for i in idx[np.argsort(key[idx], kind="mergesort")][:GALLERY[kind]]]
    return picks


def flow(a: Analysis) -> dict[str, Any]:
    """Images and patients from each folder of the dataset to each part of the run's split, per class, with
    what was left out: unreadable files, other files, and images no part uses (a smoke run's subset)."""
    ds, split, manifest = a.data.ds, a.data.split, a.run.manifest
    part_of = np.full(len(ds.files), "", dtype=object)
    for part, idx in split.items():
        part_of[idx] = part

    def tally(mask: np.ndarray) -> dict[str, int]:
        idx = np.flatnonzero(mask)
        return {"images": int(len(idx)), **{c: int((ds.labels[idx] == k).sum()) for k, c in enumerate(data.CLASSES)},
                "patients": len({ds.patients[i] for i in idx})}

    folders = sorted(set(ds.parts.tolist()))
    return {"folders": {f: tally(ds.parts == f) for f in folders},
            "parts": {p: tally(part_of == p) for p in split},
            "edges": {f: {p: tally((ds.parts == f) & (part_of == p)) for p in split} for f in folders},
            "unused": {f: tally((ds.parts == f) & (part_of == "")) for f in folders},
            "unreadable": len(manifest["data"].get("unreadable", [])),
            "ignored": int(manifest["data"].get("ignored_non_images", 0)),
            "data_limit": int(manifest["run_constants"].get("data_limit", 0) or 0)}
