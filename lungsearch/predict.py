"""Use an exported model: `evaluate` a dataset folder, `predict` single images.

MODEL is a .keras file (threshold from the JSON card beside it, e.g. best_model.json, else 0.5), a
model card (best_model.json) or an ensemble card (ensemble.json), whose members are each fed at their
own input size and whose probabilities are averaged.
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
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except BAD_MODEL_ERRORS as err:
        # Keras says "File not found" for a file that is not a zip archive: say what is wrong instead
        why = ("it is not a .keras (zip) archive: truncated, damaged, or not a Keras 3 model file"
               if not zipfile.is_zipfile(path) else f"{type(err).__name__}: {data.shown(err)}")
        raise UserError(f"model {data.shown(path)} exists but is not a loadable Keras model ({why}); export it "
                        f"again with `lungsearch report RUN_DIR`, or pass another .keras file") from err


def read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read model card {data.shown(path)}: {err}") from err
    if not isinstance(card, dict):
        raise UserError(f"model card {data.shown(path)} is not a lungsearch card (a JSON object, as best_model.json)")
    return card


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


def load(model_path: str | Path) -> Predictor:
    """A Predictor from a .keras file, a model card or an ensemble card; a bad path is a UserError."""
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        where = " is a folder" if path.is_dir() else " not found"
        raise UserError(f"model {data.shown(path)}{where}; pass a .keras file, best_model.json or ensemble.json from "
                        f"a run folder (written by `lungsearch report`)")
    if path.suffix == ".keras":
        card_file = path.with_suffix(".json")
        card = read_card(card_file) if card_file.is_file() else {}
        model = load_model(path)
        if card:
            check_card(card_file, card, path, model)
        return Predictor(path, [model], float(card.get("threshold", 0.5)), card, [uses_tta(card)])
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
    loaded = [load_model(f) for f in files]
    for f, model, entry in zip(files, loaded, card.get("members") or [card]):
        size, recorded = int(model.input_shape[1]), card_size(entry)
        if isinstance(recorded, int) and size != recorded:
            raise UserError(f"{data.shown(path)} says {data.shown(f.name)} takes {recorded} px input, but that file's "
                            f"model takes {size} px: the card and the model files come from different runs; copy "
                            f"the run folder's card and models together")
    return Predictor(path, loaded, float(card.get("threshold", 0.5)), card, ttas)


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
            label = data.CLASSES[int(by_path[p] > predictor.threshold)]
            print(f"{data.shown(p)}\t{by_path[p]:.4f}\t{label}")
        else:
            if p.is_dir():
                why = (f"it is a folder: predict takes image files (.jpeg, .jpg, .png), e.g. {data.shown(p)}/*.jpeg; "
                       f"to score a dataset folder use `lungsearch evaluate MODEL --data {data.shown(p)}`")
            elif p in missing:
                why = "not a regular file" if p.exists() else "file not found"
            else:
                why = "not a readable JPEG or PNG image (corrupt or truncated?)"
            print(f"error: cannot read {data.shown(p)}: {why}", file=sys.stderr)
    print(f"# probability of PNEUMONIA; label at threshold {predictor.threshold:.4f}"
          f" ({'from ' + predictor.source.name if predictor.card else 'default'})", file=sys.stderr)
    return 1 if missing or bad else 0


def run_folders(predictor: Predictor) -> list[Path]:
    """Where the model's run folder may be: the card's run_dir, then the folder of the card or model (a run
    folder that was moved or copied whole: best_model.json, ensemble.json, checkpoints/TRIAL/model.keras)."""
    src = predictor.source
    found = [Path(str(predictor.card["run_dir"])).expanduser()] if predictor.card.get("run_dir") else []
    found.append(src.parent)
    if src.parent.name == "ensemble":
        found.append(src.parents[1])
    if len(src.parents) > 2 and src.parents[1].name == "checkpoints":
        found.append(src.parents[2])
    return found


def run_manifest(predictor: Predictor) -> tuple[dict[str, Any] | None, str]:
    """The manifest of the run the model comes from, with its folder; or None with the reason it was not found."""
    fingerprint = predictor.card.get("data_fingerprint")
    other = None
    for folder in run_folders(predictor):
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(manifest, dict) or "run_constants" not in manifest:
            continue
        if fingerprint and (manifest.get("data") or {}).get("fingerprint") != fingerprint:
            other = folder
            continue
        return manifest, str(folder)
    if other is not None:
        return None, f"the run folder {data.shown(other)} found has a manifest for other data than the model card's"
    if predictor.card.get("run_dir"):
        return None, f"its run folder {data.shown(predictor.card['run_dir'])} (manifest.json) is not reachable"
    return None, "the model has no card naming its run (best_model.json, beside it) and no run folder around it"


def run_dataset(manifest: dict[str, Any], evaluated: data.Dataset, root: Path) -> data.Dataset | None:
    """The run's dataset as the run split it (unreadable images left out), found at the manifest's data folder or
    at the folder being evaluated, and only when its fingerprint is the run's; else None."""
    want = (manifest.get("data") or {}).get("fingerprint")
    seen = set()
    for folder in (Path(str(manifest["run_constants"].get("data_dir", ""))).expanduser(), root):
        try:
            folder = folder.resolve()
            if folder in seen or not folder.is_dir():
                continue
            seen.add(folder)
            ds = evaluated if evaluated.root == folder else data.scan(folder)
        except (OSError, UserError):
            continue
        if ds.fingerprint == want:
            bad = set((manifest.get("data") or {}).get("unreadable") or [])
            keep = np.array([f not in bad for f in ds.files], dtype=bool)
            return data.Dataset(ds.root, [f for f, k in zip(ds.files, keep) if k], ds.labels[keep], ds.parts[keep],
                                [q for q, k in zip(ds.patients, keep) if k], [h for h, k in zip(ds.hashes, keep) if k],
                                ds.fingerprint, sorted(bad), ds.ignored)
    return None


def training_overlap(predictor: Predictor, scored: list[str], evaluated: data.Dataset, root: Path) -> None:
    """Say how many of the scored images (by content hash) the model was trained or validated on, from its run's
    split rebuilt from the run's manifest; or that this could not be checked, and why."""
    def unchecked(why: str) -> None:
        print(f"note: could not check whether these images overlap the model's training and validation data: {why}",
              file=sys.stderr)

    manifest, where = run_manifest(predictor)
    if manifest is None:
        return unchecked(where)
    consts = manifest["run_constants"]
    ds = run_dataset(manifest, evaluated, root)
    if ds is None:
        return unchecked(f"the run's dataset {data.shown(consts.get('data_dir'))} (fingerprint "
                         f"{(manifest.get('data') or {}).get('fingerprint')}) is not there or has changed, so its "
                         f"split cannot be rebuilt")
    try:
        split = data.make_split(ds, consts["split"], int(consts.get("seed", 0)), int(consts.get("data_limit", 0)))
    except (UserError, KeyError, ValueError) as err:
        return unchecked(f"the run's split cannot be rebuilt ({err})")
    part_of: dict[str, str] = {}
    for part in ("test", "holdout", "val", "train"):  # an image in two parts counts in the first of train, val, ...
        for i in split.get(part, []):
            part_of[ds.hashes[i]] = part
    counts = {part: sum(part_of.get(h) == part for h in scored) for part in ("train", "val", "holdout", "test")}
    configs = [m.get("config") or {} for m in predictor.card.get("members") or [predictor.card]]
    holdout_selected = any(c.get("early_stop_on") == "holdout" for c in configs)
    seen = counts["train"] + counts["val"] + (counts["holdout"] if holdout_selected else 0)
    run = f"run {data.shown(where)}, {consts['split']} split"
    if not seen:
        extra = [f"{counts[p]:,} are in its {name} part" for p, name in (("holdout", "holdout"), ("test", "test"))
                 if counts[p]]
        print(f"data overlap: none of the {len(scored):,} scored images is in this model's training or validation "
              f"part ({run}; compared by file content)" + (": " + ", ".join(extra) if extra else ""))
        return None
    parts = [f"{counts['train']:,} of the {len(scored):,} scored images were in this model's training part",
             f"{counts['val']:,} in its validation part"]
    if counts["holdout"]:
        parts.append(f"{counts['holdout']:,} in its holdout part"
                     + (" (which early stopping watched)" if holdout_selected else " (not trained on)"))
    print(f"warning: {' and '.join(parts) if len(parts) == 2 else ', '.join(parts[:-1]) + ' and ' + parts[-1]}: "
          f"these metrics are optimistic ({run}; compared by file content). Score images the model never saw: "
          f"the run's report gives its untouched test part", file=sys.stderr)
    return None


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
    training_overlap(predictor, [h for h, k in zip(ds.hashes, keep) if k], ds, root)
    if test and predictor.card.get("split_protocol") == "target":
        print("warning: this model comes from a search on the target split, which chose it (and its threshold) on "
              "half of a test/ folder's patients; if this is that dataset, half of these images are its validation "
              "data and the metrics below are optimistic: the run's report gives the untouched test half",
              file=sys.stderr)
    thresholds = [(0.5, "default")]
    if predictor.threshold != 0.5:
        thresholds.append((predictor.threshold, "chosen on the run's validation part"))
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
