"""`evaluate`'s training-overlap check: how many of the scored images a model was trained, validated or
early-stopped on, found by rebuilding its run's split from the run folder's manifest and comparing file contents.

The run folder is the model card's run_dir, else the folder around the card or model; the run's dataset is
the manifest's data folder, else the folder being evaluated, used only while its fingerprint is the run's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import data, store
from .config import UserError


def run_folders(source: Path, card: dict[str, Any]) -> list[Path]:
    """Where the run folder of the model at `source` (with its `card`) may be: the card's run_dir, then the folder
    of the card or model (a run folder that was moved or copied whole: best_model.json, ensemble.json,
    checkpoints/TRIAL/model.keras)."""
    found = [Path(str(card["run_dir"])).expanduser()] if card.get("run_dir") else []
    found.append(source.parent)
    if source.parent.name == "ensemble":
        found.append(source.parents[1])
    if len(source.parents) > 2 and source.parents[1].name == "checkpoints":
        found.append(source.parents[2])
    return found


def run_manifest(source: Path, card: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The manifest of the run the model comes from, with its folder; or None with the reason it was not found."""
    fingerprint = card.get("data_fingerprint")
    other = unread = None
    for folder in run_folders(source, card):
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(manifest, dict) or "run_constants" not in manifest:
            continue
        problem = store.format_problem(manifest)
        if problem:
            unread = unread or f"its run folder {data.shown(folder)} cannot be read by this lungsearch ({problem})"
            continue
        if fingerprint and (manifest.get("data") or {}).get("fingerprint") != fingerprint:
            other = folder
            continue
        return manifest, str(folder)
    if unread:
        return None, unread
    if other is not None:
        return None, f"the run folder {data.shown(other)} found has a manifest for other data than the model card's"
    if card.get("run_dir"):
        return None, f"its run folder {data.shown(card['run_dir'])} (manifest.json) is not reachable"
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
            return ds.without(set((manifest.get("data") or {}).get("unreadable") or []))
    return None


def stored_parts(path: Path) -> dict[str, str] | None:
    """The part of each image content hash in a run's split.json (an image in two parts counts in the last of
    test, holdout, val, train); None without a readable split.json."""
    try:
        parts = json.loads(path.read_text())["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {h: part for part in ("test", "holdout", "val", "train") for _, h in parts.get(part, [])}


def training_overlap(source: Path, card: dict[str, Any], scored: list[str], evaluated: data.Dataset,
                     root: Path) -> None:
    """Say how many of the scored images (content hashes of `evaluated`, the dataset folder `root` or its test/
    part) the model at `source`, with its `card`, was trained or validated on, from its run's split rebuilt from
    the run's manifest; or that this could not be checked, and why."""
    def unchecked(why: str) -> None:
        print(f"note: could not check whether these images overlap the model's training and validation data: {why}",
              file=sys.stderr)

    manifest, where = run_manifest(source, card)
    if manifest is None:
        return unchecked(where)
    consts = manifest["run_constants"]
    part_of = stored_parts(Path(where) / data.SPLIT_FILE)
    if part_of is None:  # a run from before split.json: its split drawn again from the seed
        ds = run_dataset(manifest, evaluated, root)
        if ds is None:
            return unchecked(f"the run's dataset {data.shown(consts.get('data_dir'))} (fingerprint "
                             f"{(manifest.get('data') or {}).get('fingerprint')}) is not there or has changed, so its "
                             f"split cannot be rebuilt")
        try:
            split = data.make_split(ds, consts["split"], data.run_split_seed(consts), int(consts.get("data_limit", 0)))
        except (UserError, KeyError, ValueError) as err:
            return unchecked(f"the run's split cannot be rebuilt ({err})")
        part_of = {ds.hashes[i]: part for part in ("test", "holdout", "val", "train") for i in split.get(part, [])}
    counts = {part: sum(part_of.get(h) == part for h in scored) for part in ("train", "val", "holdout", "test")}
    configs = [m.get("config") or {} for m in card.get("members") or [card]]
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
