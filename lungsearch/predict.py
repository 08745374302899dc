"""Use an exported model: `evaluate` a dataset folder, `predict` single images.

MODEL is a .keras file (threshold from the JSON card beside it, e.g. best_model.json, else 0.5), a
model card (best_model.json) or an ensemble card (ensemble.json), whose members are each fed at their
own input size and whose probabilities are averaged. `evaluate` also says how many of the scored images
the model was trained or validated on, and refuses the run's own images changed since the run (overlap.py).
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import data
from .calibration import Platt
from .config import UserError
from .metrics import binary_metrics
from .overlap import check_unchanged, find_run, training_overlap

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

    @property
    def calibration(self) -> Platt | None:
        """The card's calibration map (fitted on the run's validation part); None without one."""
        return Platt.from_dict(self.card.get("calibration"))

    def calibrate(self, p: np.ndarray) -> np.ndarray:
        """Probabilities on the calibrated scale (as they are without a calibration in the card)."""
        return self.calibration(p) if self.calibration else np.asarray(p, np.float64)

    @property
    def shown_threshold(self) -> float:
        """The card's threshold on the scale of calibrate()'s probabilities: the same labels."""
        return self.calibration.threshold(self.threshold) if self.calibration else self.threshold

    def describe(self) -> str:
        """In words: what the probability is and which threshold labels it, and where that threshold comes from."""
        cal = self.calibration
        scale = (f"calibrated (Platt scaling fitted on the run's validation part, temperature {cal.temperature:.2f})"
                 if cal else "uncalibrated")
        card = self.source.with_suffix(".json").name  # the card beside a .keras file, or the card itself
        where = (f"chosen on the run's validation part to maximise F1, from {card}"
                 + (f"; {self.threshold:.4f} before calibration" if cal else "")
                 if "threshold" in self.card else "the default: no model card with a threshold beside the model")
        return (f"probability of PNEUMONIA, {scale}; label PNEUMONIA above threshold {self.shown_threshold:.4f} "
                f"({where})")

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


# what loading a file that is not a (complete, compatible) Keras model raises: a truncated or foreign file,
# a damaged archive or config, a layer or argument this version does not know. Anything else is a bug: let it show.
BAD_MODEL_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile)


def load_model(path: str | Path):
    """A saved lungsearch model, loaded in safe mode (the custom augmentation layer registered first)."""
    import keras

    from . import models  # noqa: F401  registers RandomAffine

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {data.shown(path)} "
                        + ("is a folder, not a .keras file" if path.is_dir() else "not found"))
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except BAD_MODEL_ERRORS as err:
        # Keras says "File not found" for a file that is not a zip archive: say what is wrong instead
        why = ("it is not a .keras (zip) archive: truncated, damaged, or not a Keras 3 model file"
               if not zipfile.is_zipfile(path) else f"{type(err).__name__}: {data.shown(err)}")
        raise UserError(f"model {data.shown(path)} exists but is not a loadable Keras model ({why}); export it "
                        f"again with `lungsearch report RUN_DIR`, or pass another .keras file") from err
    check_shapes(path, model)
    return model


def check_shapes(path: Path, model) -> None:
    """Refuse a Keras model that is not a lungsearch model: one that does not take square greyscale images
    (None, S, S, 1) or does not give one probability per image (None, 1)."""
    shapes = [getattr(model, "input_shape", None), getattr(model, "output_shape", None)]
    inputs, outputs = [tuple(s) if isinstance(s, (tuple, list)) else s for s in shapes]
    square_grey = isinstance(inputs, tuple) and len(inputs) == 4 and inputs[3] == 1 and inputs[1] == inputs[2] \
        and isinstance(inputs[1], int)
    if not (square_grey and outputs == (None, 1)):
        raise UserError(f"model {data.shown(path)} is not a lungsearch model: it takes {inputs} and gives {outputs}, "
                        f"where a lungsearch model takes square greyscale images (None, S, S, 1) and gives the "
                        f"probability of PNEUMONIA (None, 1); pass a model exported by `lungsearch report`")


def read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read model card {data.shown(path)}: {err}") from err
    if not isinstance(card, dict):
        raise UserError(f"model card {data.shown(path)} is not a lungsearch card (a JSON object, as best_model.json)")
    return card


def card_threshold(card_file: Path, card: dict[str, Any]) -> float:
    """The card's threshold (0.5 when it gives none), checked: a number in [0, 1]."""
    value = card.get("threshold", 0.5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UserError(f"bad model card {data.shown(card_file)}: its threshold must be a number in [0, 1], got "
                        f"{value!r}; export the card again with `lungsearch report RUN_DIR`, or move it away to use "
                        f"the model with threshold 0.5")
    return float(value)


def card_members(card_file: Path, card: dict[str, Any]) -> list[dict[str, Any]]:
    """The models a card names: its `members` (an ensemble card), else the card itself; each with a file name."""
    entries = card.get("members") or ([card] if "model" in card else [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("model"), str)
                                                for e in entries):
        raise UserError(f"bad model card {data.shown(card_file)}: 'members' must be a list of objects, each with "
                        f"the 'model' file it names; export the card again with `lungsearch report RUN_DIR`")
    return entries


def card_size(card: dict[str, Any]) -> int | list[int] | None:
    """The input size a model card (or ensemble member) records: image_size, else the config's."""
    size = card.get("image_size", (card.get("config") or {}).get("image_size"))
    if isinstance(size, list):
        return [int(s) for s in size]
    return int(size) if isinstance(size, (int, float)) else None


def check_card(card_file: Path, card: dict[str, Any], model_file: Path, model) -> None:
    """Refuse a card that is not the model's: a card for another input size (its threshold, TTA and decoding
    belong to another model); warn when it names another model file with the same input size (a renamed
    copy, or another model of that size)."""
    size, recorded = int(model.input_shape[1]), card_size(card)
    if recorded is not None and size not in (recorded if isinstance(recorded, list) else [recorded]):
        raise UserError(f"model card {data.shown(card_file)} does not belong to {data.shown(model_file)}: the card is "
                        f"for {recorded} px input{' (' + str(card['model']) + ')' if card.get('model') else ''}, "
                        f"the model takes {size} px, so the card's threshold and settings are not this model's; "
                        f"pass the model the card names, or move the card away to use this model with threshold 0.5")
    named = card.get("model")
    if "members" in card or (named and Path(str(named)).name != model_file.name):
        what = "an ensemble" if "members" in card else f"the model {named}"
        print(f"warning: model card {data.shown(card_file)} describes {what}, not {data.shown(model_file.name)}; "
              f"using its threshold ({float(card.get('threshold', 0.5)):.4f}) since its input size matches. If this "
              f"is not a renamed copy of that model, move the card away", file=sys.stderr)


def uses_tta(card: dict[str, Any]) -> bool:
    """Whether a model card (or ensemble member) says the model was evaluated with flip TTA."""
    return bool((card.get("config") or {}).get("tta", False))


def load_predictor(model_path: str | Path) -> Predictor:
    """A Predictor from a .keras file, a model card or an ensemble card; a bad path is a UserError."""
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        where = " is a folder" if path.is_dir() else " not found"
        raise UserError(f"model {data.shown(path)}{where}; pass a .keras file, best_model.json or ensemble.json from "
                        f"a run folder (written by `lungsearch report`)")
    if path.suffix == ".keras":
        card_file = path.with_suffix(".json")
        card = read_card(card_file) if card_file.is_file() else {}
        threshold = card_threshold(card_file, card)
        model = load_model(path)
        if card:
            check_card(card_file, card, path, model)
        return Predictor(path, [model], threshold, card, [uses_tta(card)])
    if path.suffix != ".json":
        raise UserError(f"model {path} is neither a .keras file nor a .json model or ensemble card")
    card = read_card(path)
    threshold = card_threshold(path, card)
    entries = card_members(path, card)
    members = [m["model"] for m in entries]
    if not members:
        raise UserError(f"{path} names no model: expected a 'model' or a 'members' list (best_model.json or "
                        f"ensemble.json written by `lungsearch report`)")
    files = [path.parent / m for m in members]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{path} lists model file(s) that are missing: {', '.join(missing)}; keep the card "
                        f"next to the files it names (copy the whole run folder, or ensemble/ with ensemble.json)")
    ttas = [uses_tta(m) for m in entries]
    loaded = [load_model(f) for f in files]
    for f, model, entry in zip(files, loaded, entries):
        size, recorded = int(model.input_shape[1]), card_size(entry)
        if isinstance(recorded, int) and size != recorded:
            raise UserError(f"{data.shown(path)} says {data.shown(f.name)} takes {recorded} px input, but that file's "
                            f"model takes {size} px: the card and the model files come from different runs; copy "
                            f"the run folder's card and models together")
    return Predictor(path, loaded, threshold, card, ttas)


def predict(model_path: str | Path, images: list[str]) -> int:
    """Print probability and label of each image; exit status 1 if any could not be read."""
    predictor = load_predictor(model_path)
    paths = [Path(p).expanduser() for p in images]
    missing = [p for p in paths if not p.is_file()]
    readable = [p for p in paths if p.is_file()]
    print(f"# {predictor.describe()}")  # before the results, so the labels are read with their threshold
    probs, bad = predictor.probabilities(readable)
    by_path = dict(zip([p for p in readable if p not in bad], predictor.calibrate(probs)))
    for p in paths:
        if p in by_path:
            label = data.CLASSES[int(by_path[p] > predictor.shown_threshold)]
            print(f"{data.shown(p)}\t{by_path[p]:.4f}\t{label}")
        else:
            if p.is_dir():
                # a class folder (test/NORMAL) is scored with its sibling: evaluate wants both classes
                dataset = p.parent if p.name.upper() in data.CLASSES else p
                why = (f"it is a folder: predict takes image files (.jpeg, .jpg, .png), e.g. {data.shown(p)}/*.jpeg; "
                       f"to score a dataset folder use `lungsearch evaluate MODEL --data {data.shown(dataset)}`")
            elif p in missing:
                why = "not a regular file" if p.exists() else "file not found"
            else:
                why = "not a readable JPEG or PNG image (corrupt or truncated?)"
            print(f"error: cannot read {data.shown(p)}: {why}", file=sys.stderr)
    return 1 if missing or bad else 0


def evaluate_folder(model_path: str | Path, data_dir: str | Path | None) -> int:
    """Print the metrics of a dataset folder (default $LUNGSEARCH_DATA): its test/ part, or every image."""
    data_dir = data_dir or os.environ.get("LUNGSEARCH_DATA")
    if not data_dir:
        raise UserError("no dataset given: pass --data DIR (a folder with NORMAL/ and PNEUMONIA/, or with "
                        "train/ and test/ holding them) or set LUNGSEARCH_DATA")
    predictor = load_predictor(model_path)
    root = Path(data_dir).expanduser().resolve()
    test = data.find_children(root, data.PARTS).get("test") if root.is_dir() else None
    ds = data.scan(test or root)  # a folder holding NORMAL/ and PNEUMONIA/ counts as one part
    run, why = find_run(predictor.source, predictor.card)
    check_unchanged(run, ds)  # the run's images, changed since: refused before any is scored
    paths, labels = [ds.root / f for f in ds.files], ds.labels
    probs, bad = predictor.probabilities(paths)
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s): {', '.join(map(data.shown, bad[:10]))}",
              file=sys.stderr)
    bad_set = set(bad)
    keep = np.array([p not in bad_set for p in paths], dtype=bool)
    y = labels[keep]
    if len(y) == 0:
        raise UserError(f"no readable images in {data.shown(ds.root)}")
    print(f"{predictor.source.name} on {data.shown(ds.root)}{'' if test else ' (no test/ part: every image)'}: "
          f"{len(y)} images, {int((y == 0).sum())} NORMAL / {int((y == 1).sum())} PNEUMONIA, "
          f"fingerprint {ds.fingerprint}")
    training_overlap(run, why, predictor.card, [h for h, k in zip(ds.hashes, keep) if k])
    if test and predictor.card.get("split_protocol") == "target":
        print("warning: this model comes from a search on the target split, which chose it (and its threshold) on "
              "half of a test/ folder's patients; if this is that dataset, half of these images are its validation "
              "data and the metrics below are optimistic: the run's report gives the untouched test half",
              file=sys.stderr)
    probs = predictor.calibrate(probs)
    print(f"# {predictor.describe()}")
    thresholds = [(0.5, "default")]
    if predictor.threshold != 0.5:
        thresholds.append((predictor.shown_threshold, "chosen on the run's validation part"))
    one_class = len(set(y.tolist())) < 2
    if one_class:
        only = data.CLASSES[int(y[0])]
        print(f"warning: every image is {only}: AUC is undefined with one class (it compares NORMAL with PNEUMONIA "
              f"images), and so are " + ("recall and F1 (shown as 0)" if only == "NORMAL"
                                         else "specificity (shown as 0)")
              + "; evaluate on a folder with both classes to rank models", file=sys.stderr)
    for thr, why in thresholds:
        m = binary_metrics(y, probs, thr)
        print(f"threshold {thr:.4f} ({why}): " + ", ".join(
            f"{k} {'undefined (one class)' if k == 'auc' and one_class else format(m[k], '.4f')}"
            for k in ("accuracy", "precision", "recall", "f1", "specificity", "auc", "loss"))
            + f", tp {m['tp']} fp {m['fp']} fn {m['fn']} tn {m['tn']}")
    return 0
