"""`evaluate`'s checks against the model's own run, read from the run folder's split.json:

- `check_unchanged`: a folder that holds the run's images (the names and contents split.json lists) must hold them
  as the run found them: an image the run listed, changed since, is an error naming it, as `report` and `resume`
  refuse the run's changed data folder. A folder holding none of them is another dataset, scored as it is.
- `training_overlap`: how many of the scored images the model was trained, validated or early-stopped on, compared
  by file content.

The run folder is the model card's run_dir, else the folder around the card or model.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, store
from .config import UserError, count


@dataclass
class RunSplit:
    """The parts of the run a model comes from, as its split.json lists them."""

    folder: Path
    protocol: str
    listed: dict[str, str]  # every listed file (relative to the run's data folder): its sha1
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
        listed = {f: h for entries in parts.values() for f, h in entries}
        part_of = {h: part for part in ("test", "holdout", "val", "train") for _, h in parts.get(part, [])}
        return RunSplit(folder, str(manifest["run_constants"].get("split", "?")), listed, part_of), ""
    if unread:
        return None, unread
    if other is not None:
        return None, f"the run folder {data.shown(other)} found has a manifest for other data than the model card's"
    if card.get("run_dir"):
        return None, f"its run folder {data.shown(card['run_dir'])} (manifest.json) is not reachable"
    return None, "the model has no card naming its run (best_model.json, beside it) and no run folder around it"


def listed_prefix(run: RunSplit, evaluated: data.Dataset) -> str | None:
    """Where the evaluated folder sits in the run's data folder: the prefix ("", "test/", ...) that makes most of
    its images the run's, by name and content; None when it holds no image the run listed (another dataset)."""
    by_suffix: dict[str, list[str]] = {}
    for name in run.listed:
        words = name.split("/")
        for k in range(len(words) - 1):  # CLASS/FILE at least: a bare file name says too little
            by_suffix.setdefault("/".join(words[k:]), []).append(name)
    prefixes = Counter(name[: len(name) - len(f)] for f, h in zip(evaluated.files, evaluated.hashes)
                       for name in by_suffix.get(f, []) if run.listed[name] == h)
    return prefixes.most_common(1)[0][0] if prefixes else None


def check_unchanged(run: RunSplit | None, evaluated: data.Dataset) -> None:
    """Refuse to score a folder that holds the run's images when an image the run listed under a name the folder
    holds has other content now: its metrics would not be the run's, and nothing else would say so."""
    prefix = None if run is None else listed_prefix(run, evaluated)
    if prefix is None:
        return
    changed, _ = data.listed_changes(run.listed, evaluated, prefix)
    if changed:
        names = ", ".join(data.shown(f) for f in changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3
                                                                  else "")
        raise UserError(f"{count(len(changed), 'image')} of {data.shown(evaluated.root)} changed since the "
                        f"model's run listed {'it' if len(changed) == 1 else 'them'} in "
                        f"{data.shown(run.folder / data.SPLIT_FILE)}: {names} (same name, other content). This folder "
                        f"holds the run's images, but not as the run found them, so its metrics would not be the "
                        f"run's; put the run's images back, or score images the run never listed in a folder of "
                        f"their own")


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
