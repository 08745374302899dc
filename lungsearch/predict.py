"""Use an exported model: `evaluate` a dataset folder, `predict` single images.

MODEL is a .keras file (threshold from the JSON card beside it, e.g. best_model.json, else 0.5), a
model card (best_model.json) or an ensemble card (ensemble.json), whose members are each fed at their
own input size and whose probabilities are averaged.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import data
from .config import UserError
from .metrics import binary_metrics

BATCH = 256


@dataclass
class Predictor:
    """One model or an ensemble, with the threshold it was exported with."""

    source: Path
    models: list[Any]
    threshold: float = 0.5
    card: dict[str, Any] = field(default_factory=dict)
    tta: list[bool] = field(default_factory=list)  # per model: average with the flipped image's prediction

    @property
    def sizes(self) -> list[int]:
        return [int(m.input_shape[1]) for m in self.models]

    def probabilities(self, paths: list[Path]) -> tuple[np.ndarray, list[Path]]:
        """Mean PNEUMONIA probability of each readable image, and the paths that could not be read."""
        from . import models

        bad: list[Path] = []
        probs = []
        methods = [models.decode_normalization(m) for m in self.models]
        ttas = self.tta or [False] * len(self.models)
        for start in range(0, len(paths), BATCH):
            chunk = paths[start: start + BATCH]
            per_model = []
            for model, size, method, tta in zip(self.models, self.sizes, methods, ttas):
                images = [data.read_image(p, size, method) for p in chunk]
                if not per_model:  # the first member decides which images are unreadable
                    bad += [p for p, img in zip(chunk, images) if img is None]
                images = [img for img in images if img is not None]
                if not images:
                    break
                x = np.stack(images).astype(np.float32)[..., None] / 255.0
                per_model.append(models.predict_proba(model, x, tta, BATCH))
            if per_model:
                probs.append(np.mean(per_model, axis=0))
        return (np.concatenate(probs) if probs else np.zeros(0)), bad


def load_model(path: str | Path):
    """A saved lungsearch model, loaded in safe mode (the custom augmentation layer registered first)."""
    import keras

    from . import models  # noqa: F401  registers RandomAffine

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # a truncated file, another program's model, a layer this version does not know
        raise UserError(f"cannot load model {path}: {type(err).__name__}: {err}") from None


def read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read model card {path}: {err}") from None


def uses_tta(card: dict[str, Any]) -> bool:
    """Whether a model card (or ensemble member) says the model was evaluated with flip TTA."""
    return bool((card.get("config") or {}).get("tta", False))


def load(model_path: str | Path) -> Predictor:
    """A Predictor from a .keras file, a model card or an ensemble card; a bad path is a UserError."""
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"model {path} not found; pass a .keras file, best_model.json or ensemble.json from a "
                        f"run folder (written by `lungsearch report`)")
    if path.suffix == ".keras":
        card_file = path.with_suffix(".json")
        card = read_card(card_file) if card_file.is_file() else {}
        return Predictor(path, [load_model(path)], float(card.get("threshold", 0.5)), card, [uses_tta(card)])
    if path.suffix != ".json":
        raise UserError(f"model {path} is neither a .keras file nor a .json model or ensemble card")
    card = read_card(path)
    members = [m["model"] for m in card.get("members", [])] or ([card["model"]] if "model" in card else [])
    if not members:
        raise UserError(f"{path} names no model: expected a 'model' or a 'members' list (best_model.json or "
                        f"ensemble.json written by `lungsearch report`)")
    files = [path.parent / m for m in members]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{path} lists model file(s) that are missing: {', '.join(missing)}; keep the card "
                        f"next to the files it names (copy the whole run folder, or ensemble/ with ensemble.json)")
    ttas = [uses_tta(m) for m in card["members"]] if card.get("members") else [uses_tta(card)]
    return Predictor(path, [load_model(f) for f in files], float(card.get("threshold", 0.5)), card, ttas)


def predict(model_path: str | Path, images: list[str]) -> int:
    """Print probability and label of each image; exit status 1 if any could not be read."""
    predictor = load(model_path)
    paths = [Path(p).expanduser() for p in images]
    missing = [p for p in paths if not p.is_file()]
    readable = [p for p in paths if p.is_file()]
    probs, bad = predictor.probabilities(readable)
    by_path = dict(zip([p for p in readable if p not in bad], probs))
    for p in paths:
        if p in by_path:
            label = data.CLASSES[int(by_path[p] >= predictor.threshold)]
            print(f"{p}\t{by_path[p]:.4f}\t{label}")
        else:
            why = "file not found" if p in missing else "not a readable JPEG or PNG image (corrupt or truncated?)"
            print(f"error: cannot read {p}: {why}", file=sys.stderr)
    print(f"# probability of PNEUMONIA; label at threshold {predictor.threshold:.4f}"
          f" ({'from ' + predictor.source.name if predictor.card else 'default'})", file=sys.stderr)
    return 1 if missing or bad else 0


def evaluate(model_path: str | Path, data_dir: str | Path | None) -> int:
    """Print the metrics of a dataset folder (default $LUNGSEARCH_DATA): its test/ part, or every image."""
    data_dir = data_dir or os.environ.get("LUNGSEARCH_DATA")
    if not data_dir:
        raise UserError("no dataset given: pass --data DIR (a folder with NORMAL/ and PNEUMONIA/, or with "
                        "train/ and test/ holding them) or set LUNGSEARCH_DATA")
    predictor = load(model_path)
    root = Path(data_dir).expanduser().resolve()
    test = data.find_children(root, data.PARTS).get("test") if root.is_dir() else None
    ds = data.scan(test or root)  # a folder holding NORMAL/ and PNEUMONIA/ counts as one part
    paths, labels = [ds.root / f for f in ds.files], ds.labels
    probs, bad = predictor.probabilities(paths)
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s): {', '.join(map(str, bad[:10]))}", file=sys.stderr)
    bad_set = set(bad)
    keep = np.array([p not in bad_set for p in paths], dtype=bool)
    y = labels[keep]
    if len(y) == 0:
        raise UserError(f"no readable images in {ds.root}")
    print(f"{predictor.source.name} on {ds.root}{'' if test else ' (no test/ part: every image)'}: {len(y)} images, "
          f"{int((y == 0).sum())} NORMAL / {int((y == 1).sum())} PNEUMONIA, fingerprint {ds.fingerprint}")
    if test and predictor.card.get("split_protocol") == "target":
        print("warning: this model comes from a search on the target split, which chose it (and its threshold) on "
              "half of a test/ folder's patients; if this is that dataset, half of these images are its validation "
              "data and the metrics below are optimistic: the run's report gives the untouched test half",
              file=sys.stderr)
    thresholds = [(0.5, "default")]
    if predictor.threshold != 0.5:
        thresholds.append((predictor.threshold, "chosen on the run's validation part"))
    for thr, why in thresholds:
        m = binary_metrics(y, probs, thr)
        print(f"threshold {thr:.4f} ({why}): " + ", ".join(
            f"{k} {m[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "loss"))
            + f", tp {m['tp']} fp {m['fp']} fn {m['fn']} tn {m['tn']}")
    return 0
