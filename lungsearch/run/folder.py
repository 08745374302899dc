"""(No Ray.) The run folder: what a run writes in it before the search, whether `resume` and `report` can use it
(and if not, the `run` command that starts it again), and the tables a run prints."""
from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import data, space as spaces, store
from ..config import OBJECTIVE, SMOKE, SearchSettings, UserError, count, shown
from .settings import flag, resolve_settings


def new_run_folder(results_dir: Path, name: str) -> Path:
    """A new, empty folder results_dir/name made by this call; NAME-2, NAME-3, ... when NAME is taken (two runs
    of one space started in the same second). Never an existing folder: a run that fails removes only what it
    made. A folder that cannot be made is a UserError naming it."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            run_dir = results_dir / (name if n == 1 else f"{name}-{n}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as err:
        raise UserError(f"cannot make a run folder in --results folder {shown(results_dir)} "
                        f"({err.strerror or err}): pass --results with a folder you can write to") from None


def write_run_folder(run_dir: Path, space: spaces.Space, settings: SearchSettings, smoke: bool, data_dir: Path,
                     cache_dir: Path, ds, requested_split: str, summary: dict, split: dict) -> None:
    """The space file, the split (split.json) and the manifest: everything `resume` and `report` need to know
    about the run."""
    (run_dir / "space.py").write_text(space.source)  # resume reads the space from here
    data.write_split(run_dir / data.SPLIT_FILE, data.split_record(ds, split, settings.split, settings.split_seed,
                                                                  (settings.search_fraction,)))
    run_constants = {"data_dir": str(data_dir), "cache_dir": str(cache_dir), "split": settings.split,
                     "image_size": settings.image_size, "max_epochs": settings.stage_epochs,
                     "patience": settings.patience, "seed": settings.seed, "split_seed": settings.split_seed,
                     "data_limit": settings.data_limit, "data_fraction": settings.search_fraction,
                     "split_file": str(run_dir / data.SPLIT_FILE)}
    manifest = {
        "format_version": store.MANIFEST_FORMAT,  # what `report` and `resume` check before they read the folder
        "space_file": str(space.path), "space_source": space.source, "space_doc": space.doc,
        "settings": dataclasses.asdict(settings), "smoke": smoke, "run_constants": run_constants,
        "searched": sorted(space.params), "conditions": space.conditions,
        "held_for_smoke": sorted(set(SMOKE) & set(space.params)) if smoke else [],
        "split_requested": requested_split,
        "objective": {"metric": OBJECTIVE.key, "mode": OBJECTIVE.mode, "text": OBJECTIVE.text,
                      "used_by": ["early stopping", "ASHA", "searcher", "leaderboard"]},
        "asha": {"metric": OBJECTIVE.key, "mode": OBJECTIVE.mode, "time_attr": "training_iteration (epochs)"},
        "packages": store.package_versions(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "python": sys.version.split()[0],
        "data": {"dir": str(data_dir), "fingerprint": ds.fingerprint, "images": len(ds.files),
                 "unreadable": ds.unreadable, "ignored_non_images": len(ds.ignored), "split": summary},
        "started": datetime.now().isoformat(timespec="seconds"), "status": "running",
    }
    store.write_json(run_dir / "manifest.json", manifest)


def search_saved(run_dir: Path) -> bool:
    """Whether Ray Tune saved the search in run_dir/ray as Tuner.restore needs it: tuner.pkl (Tuner.can_restore)
    and an experiment state file (without one, restore raises). Tune writes both only once the search starts."""
    ray_dir = run_dir / "ray"
    return (ray_dir / "tuner.pkl").is_file() and any(ray_dir.glob("experiment_state-*.json"))


def run_folder_problem(run_dir: Path) -> str | None:
    """Why `resume` and `report` cannot use run_dir, in the words both print: no such folder, no manifest (not a
    run folder), or a search that stopped before Ray Tune saved any state (it cannot be resumed: start it again,
    with the `run` command given). None for a finished run (trials.csv) or one `resume` can finish."""
    if run_dir.is_file():
        return (f"{run_dir} is a file, not a run folder; pass the folder `lungsearch run` printed last (the one "
                f"holding manifest.json)")
    if not run_dir.is_dir():
        return f"run folder {run_dir} does not exist; pass the folder `lungsearch run` printed last"
    if not (run_dir / "manifest.json").is_file():
        return (f"{run_dir} has no manifest.json: not a lungsearch run folder (pass the folder `lungsearch run` "
                f"printed last)")
    if (run_dir / "trials.csv").is_file() or search_saved(run_dir):
        return None
    manifest = store.read_manifest(run_dir)
    return (f"{run_dir} is a run that never started a trial: its `run` stopped before Ray Tune saved any state in "
            f"{run_dir / 'ray'} (manifest: status {manifest.get('status', 'unknown')!r}, started "
            f"{manifest.get('started', '?')}), so it cannot be resumed and there is nothing to report. Start it "
            f"again with `{rerun_command(run_dir, manifest)}`")


def unchanged_data(run_dir: Path) -> data.Dataset:
    """The run's data folder, scanned, while it holds the images the run started on (the manifest's fingerprint).
    Changed data is a UserError naming both fingerprints and the images split.json lists that changed: a resumed
    search would train its unfinished trials on other images than its finished ones."""
    manifest = store.read_manifest(run_dir)
    want, folder = manifest["data"]["fingerprint"], manifest["run_constants"]["data_dir"]
    try:
        ds = data.scan(folder)
    except UserError as err:
        raise UserError(f"cannot resume {run_dir}: its data folder cannot be read ({err}); put the run's data back "
                        f"at {shown(folder)}") from None
    if ds.fingerprint != want:
        listed = data.split_changes(run_dir / data.SPLIT_FILE, ds)
        raise UserError(f"cannot resume {run_dir}: its data folder {shown(folder)} has changed since the run started "
                        f"(fingerprint now {ds.fingerprint}, the run's {want} in manifest.json"
                        + (f"; of the images {data.SPLIT_FILE} lists, {listed}" if listed else "") + "), so the "
                        f"resumed search would train and score on other images than its trials so far. Put the run's "
                        f"images back, or start a new run on the changed data: `{rerun_command(run_dir, manifest)}`")
    return ds


def rerun_command(run_dir: Path, manifest: dict[str, Any]) -> str:
    """The `run` command that starts the run of run_dir again, as a new run folder with the same settings: the
    flags for the settings that differ from what the space file's SETTINGS (and --smoke) give."""
    space_file = Path(manifest.get("space_file") or run_dir / "space.py")
    try:
        if space_file.read_text() != manifest.get("space_source"):
            space_file = run_dir / "space.py"  # the space file changed since: the copy the run used
    except OSError:
        space_file = run_dir / "space.py"
    try:  # the space's SETTINGS as written (a literal dict), without running the file
        tree = ast.parse(manifest.get("space_source", ""))
        literal = next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                        and any(getattr(t, "id", None) == "SETTINGS" for t in node.targets)), {})
        base = dataclasses.asdict(resolve_settings(SimpleNamespace(settings=literal, path=space_file), {},
                                                   bool(manifest.get("smoke"))))
    except (ValueError, TypeError, SyntaxError, UserError):  # not a literal: give every flag
        base = {}
    settings = dict(manifest.get("settings", {}))
    if manifest.get("split_requested"):  # "auto", as given, rather than the split it resolved to
        settings["split"] = manifest["split_requested"]
    data_dir = manifest.get("data", {}).get("dir") or manifest.get("run_constants", {}).get("data_dir", "DIR")
    words = ["python", "-m", "lungsearch", "run", str(space_file), "--data", str(data_dir), "--results",
             str(run_dir.parent)] + (["--smoke"] if manifest.get("smoke") else [])
    for key in ("split", "image_size", "max_epochs", "num_samples", "seed", "cpus_per_trial", "gpus_per_trial",
                "max_concurrent", "max_failures", "searcher", "fixed_points", "budget_epochs", "budget_minutes"):
        if settings.get(key) is None or (key in base and settings[key] == base[key]):
            continue
        if key == "fixed_points":
            words += [] if settings[key] else [flag(key)]
        else:
            value = settings[key]
            words += [flag(key), f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def print_split(summary: dict) -> None:
    print(f"split '{summary['protocol']}':")
    for part, p in summary["parts"].items():
        print(f"  {part:<8} {p['images']:>5} images ({p['NORMAL']} normal / {p['PNEUMONIA']} pneumonia, "
              f"{p['patients']} patients): {summary.get('sources', {}).get(part, '')}")
    print(f"objective (early stopping, ASHA, ranking): {OBJECTIVE.text}", flush=True)
    if summary["images_in_two_parts"]:
        print(f"warning: {len(summary['images_in_two_parts'])} identical image(s) in two parts (leakage)")


PRINTED_TRIALS = 30  # the best trials the end-of-run table shows; all are in trials.csv


def print_table(table, manifest: dict) -> None:
    if table.empty:
        print("no trials ran")
        return
    cols = ["trial", "fixed_point", "status", "epochs_run", "objective", "val_f1", "test_auc", "test_accuracy"]
    shown = table.head(PRINTED_TRIALS)
    print(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    if len(table) > len(shown):
        print(f"... and {count(len(table) - len(shown), 'more trial')} in trials.csv")
    counts = table["status"].value_counts().to_dict()
    print(f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"; split '{manifest['settings']['split']}'; search wall time {manifest['search_wall_s']:.0f} s; "
          f"mean trial start-up (trial start to first batch) {manifest['trial_startup_s_mean']:.1f} s; "
          f"{100 * manifest['training_fraction']:.0f}% of trial time spent training", flush=True)
