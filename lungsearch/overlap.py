"""`evaluate`'s training-overlap check: how many of the scored images a model was trained, validated or
early-stopped on, compared by file content with the parts its run's split.json lists.

The run folder is the model card's run_dir, else the folder around the card or model.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, store
from .config import UserError


@dataclass
class RunSplit:
    """The parts of the run a model comes from, as its split.json lists them."""

    folder: Path
    protocol: str
    part_of: dict[str, str]  # sha1: the part (an image in two parts counts in the last of test, holdout, val, train)


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


def find_run(source: Path, card: dict[str, Any]) -> tuple[RunSplit | None, str]:
    """The split of the run the model comes from; or None with the reason it was not found."""
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
            other = other or folder
            continue
        try:
            parts = data.read_split_record(folder / data.SPLIT_FILE)["parts"]
        except UserError as err:
            return None, str(err)
        part_of = {h: part for part in ("test", "holdout", "val", "train") for _, h in parts.get(part, [])}
        return RunSplit(folder, str(manifest["run_constants"].get("split", "?")), part_of), ""
    if unread:
        return None, unread
    if other is not None:
        return None, f"the run folder {data.shown(other)} found has a manifest for other data than the model card's"
    if card.get("run_dir"):
        return None, f"its run folder {data.shown(card['run_dir'])} (manifest.json) is not reachable"
    return None, "the model has no card naming its run (best_model.json, beside it) and no run folder around it"


def training_overlap(run: RunSplit | None, why: str, card: dict[str, Any], scored: list[str]) -> None:
    """Say how many of the scored images (content hashes) the model, with its `card`, was trained or validated on,
    from its run's split; or that this could not be checked (`why`: the reason `find_run` gave)."""
    if run is None:
        print(f"note: could not check whether these images overlap the model's training and validation data: {why}",
              file=sys.stderr)
        return
    counts = {part: sum(run.part_of.get(h) == part for h in scored) for part in ("train", "val", "holdout", "test")}
    configs = [m.get("config") or {} for m in card.get("members") or [card]]
    holdout_selected = any(c.get("early_stop_on") == "holdout" for c in configs)
    seen = counts["train"] + counts["val"] + (counts["holdout"] if holdout_selected else 0)
    where = f"run {data.shown(run.folder)}, {run.protocol} split"
    if not seen:
        extra = [f"{counts[p]:,} are in its {name} part" for p, name in (("holdout", "holdout"), ("test", "test"))
                 if counts[p]]
        print(f"data overlap: none of the {len(scored):,} scored images is in this model's training or validation "
              f"part ({where}; compared by file content)" + (": " + ", ".join(extra) if extra else ""))
        return
    parts = [f"{counts['train']:,} of the {len(scored):,} scored images were in this model's training part",
             f"{counts['val']:,} in its validation part"]
    if counts["holdout"]:
        parts.append(f"{counts['holdout']:,} in its holdout part"
                     + (" (which early stopping watched)" if holdout_selected else " (not trained on)"))
    print(f"warning: {' and '.join(parts) if len(parts) == 2 else ', '.join(parts[:-1]) + ' and ' + parts[-1]}: "
          f"these metrics are optimistic ({where}; compared by file content). Score images the model never saw: "
          f"the run's report gives its untouched test part", file=sys.stderr)
