"""The run folder: manifest, trials table, per-epoch history, kept checkpoints. Reads Ray's trial folders
directly (params.json, result.json, error.txt), so it works the same after a resume."""
from __future__ import annotations

import csv
import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from . import space as spaces
from .config import OBJECTIVE, UserError
from .metrics import COUNTS, SCORES

PACKAGES = ("lungsearch", "keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "ray", "keras-tuner",
            "numpy", "opencv-python-headless", "pandas", "matplotlib")
METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auc")
HISTORY = ("epoch", "epoch_s", "lr", "objective", "kept_epoch", "val_f1_tuned", *METRICS,
           *(f"val_{m}" for m in SCORES),
           *(f"holdout_{m}" for m in SCORES))
TEST_METRICS = (*SCORES, *COUNTS)


BUDGET_LOG = "budget.csv"  # a search with a budget: each epoch result as the driver received it (run.budget)


def read_budget_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder's budget.csv (none when the search had no budget or trained no epoch): unix time
    the driver received the epoch, seconds since the search began, trial id, epoch, objective (NaN before a kept
    epoch), whether it was the trial's last epoch, and whether it counts against the budget."""
    path = Path(run_dir) / BUDGET_LOG
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{**r, "at": float(r["at"]), "elapsed_s": float(r["elapsed_s"]), "epoch": int(r["epoch"]),
                 "objective": float(r["objective"]) if r["objective"] else float("nan"), "final": r["final"] == "1",
                 "counted": r["counted"] == "1"} for r in csv.DictReader(f)]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# The format of a run folder, as manifest.json's format_version says: what this lungsearch writes, and the newest it
# reads. A manifest without format_version is format 1: the field was added to that format, not a new one. A change
# that an older lungsearch would misread (a file, column or key that changes meaning or goes) raises it.
MANIFEST_FORMAT = 1


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's manifest.json; a format newer than MANIFEST_FORMAT (a run made by a newer lungsearch) is a
    UserError saying so, as this lungsearch would misread the folder."""
    path = Path(run_dir) / "manifest.json"
    manifest = read_json(path)
    problem = format_problem(manifest)
    if problem:
        raise UserError(f"{path}: {problem}")
    return manifest


def format_problem(manifest: Any) -> str | None:
    """Why this lungsearch cannot read a run folder with this manifest (not a JSON object, a format_version it does
    not know); None when it can."""
    if not isinstance(manifest, dict):
        return "not a lungsearch manifest (a JSON object)"
    found = manifest.get("format_version", 1)
    whole = isinstance(found, int) and not isinstance(found, bool)
    if whole and 1 <= found <= MANIFEST_FORMAT:
        return None
    if whole and found > MANIFEST_FORMAT:
        from . import version

        packages = manifest.get("packages")
        made_by = packages.get("lungsearch") if isinstance(packages, dict) else None
        return (f"run folder format {found}, newer than this lungsearch ({version()}) reads (format "
                f"{MANIFEST_FORMAT} at most): the run was made by a newer lungsearch"
                + (f" ({made_by})" if made_by else "") + "; use that version, or upgrade this one, to read it")
    return f"format_version {found!r} is not a run folder format (a whole number from 1 to {MANIFEST_FORMAT})"


STAGES = {"ray": "search", "confirm": "confirm"}  # Tune experiment folder in the run folder: the stage it holds


def trial_dirs(run_dir: Path) -> list[Path]:
    """The trial folders of both stages: the search's (ray/), then the confirmation's (confirm/)."""
    return [p.parent for folder in STAGES for p in sorted((Path(run_dir) / folder).glob("*/params.json"))]


def read_trial(trial_dir: Path) -> dict[str, Any]:
    """One trial's config, the rows of its last attempt, how many attempts it took, and its error if it failed."""
    config = read_json(trial_dir / "params.json")
    rows = []
    result_file = trial_dir / "result.json"
    if result_file.exists():
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    starts = [i for i, r in enumerate(rows) if r.get("epoch") == 1]
    attempts_file = trial_dir.parent.parent / "attempts" / f"{trial_dir.name}.log"
    lines = attempts_file.read_text().splitlines() if attempts_file.exists() else []
    nodes = [line.split()[2][:12] for line in lines if line.strip()]  # "<time> <node ip> <node id> [<pid>]"
    if starts:
        rows = rows[starts[-1]:]  # a retried trial starts again from epoch 1
    error_file = trial_dir / "error.txt"
    error = error_file.read_text().strip() if error_file.exists() else ""
    return {"dir": trial_dir, "config": config, "rows": rows, "attempts": max(len(nodes), 1), "nodes": nodes,
            "error": error}


# How a trial ended, and the words for it. "stopped" is ASHA's doing; "budget" the search's spent budget (the trial
# was still training when it ran out, so it was never judged at a rung it did not reach).
OUTCOMES = {"finished": "finished", "diverged": "diverged (loss not finite)", "stopped": "stopped early by ASHA",
            "budget": "stopped: the budget is spent", "failed": "failed", "not started": "not started"}
BUDGET_STOPS = "budget_stops.txt"  # in the run folder: the trials the spent budget stopped, a name a line


def trial_outcome(last: dict[str, Any], failed: bool, budget_stopped: bool) -> str:
    """How a trial ended (a key of OUTCOMES), from its last epoch's result `last` ({} if it trained none), whether
    Ray gave up on it, and whether the spent budget stopped it. The one rule the run folder's tables and the
    console's lines share."""
    if last.get("final"):
        return "diverged" if last.get("diverged") else "finished"
    if failed:
        return "failed"
    if not (last.get("epoch") or last.get("training_iteration")):
        return "not started"
    return "budget" if budget_stopped else "stopped"


def note_budget_stop(run_dir: str | Path, trial: str) -> None:
    with open(Path(run_dir) / BUDGET_STOPS, "a") as f:
        f.write(trial + "\n")


def budget_stops(run_dir: str | Path) -> set[str]:
    path = Path(run_dir) / BUDGET_STOPS
    return set(path.read_text().split()) if path.is_file() else set()


def collect(run_dir: Path, searched: list[str], conditions: dict[str, list], failed: set[str]) -> pd.DataFrame:
    """Write trials.csv (one row per trial) and history.csv (one row per trial and epoch); return the trials.

    `failed` names the trials Ray gave up on; a trial that failed and then succeeded on a retry is not one.
    """
    table, history = tables(run_dir, searched, conditions, failed)
    table.to_csv(Path(run_dir) / "trials.csv", index=False)
    history.to_csv(Path(run_dir) / "history.csv", index=False)
    return table


def tables(run_dir: Path, searched: list[str], conditions: dict[str, list],
           failed: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials (best objective first) and their per-epoch history as the trial folders hold them now, written
    nowhere: a search still running (before its confirmation stage) reads them without leaving a trials.csv that
    would call the run finished."""
    run_dir = Path(run_dir)
    trials, history, by_budget = [], [], budget_stops(run_dir)
    for t in map(read_trial, trial_dirs(run_dir)):
        active = spaces.active(t["config"], conditions)
        rows, last = t["rows"], (t["rows"][-1] if t["rows"] else {})
        name = t["dir"].name
        status = trial_outcome(last, name in failed, name in by_budget)
        best_epoch = last.get("kept_epoch") or None  # the epoch whose weights the trial keeps (or kept)
        best = next((r for r in rows if r.get("epoch") == best_epoch), {})
        record = {
            "trial": name,
            "fixed_point": t["config"].get("fixed_point", ""),
            "stage": STAGES[t["dir"].parent.name],
            "confirms": t["config"].get("confirms", ""),  # confirm stage: the search trial whose configuration it is
            "seed": t["config"].get("seed"),
            "data_fraction": t["config"].get("data_fraction", 1.0),
            "train_images": rows[0].get("train_images") if rows else None,
            "status": status,
            "epochs_run": len(rows),
            "best_epoch": best_epoch,
            "stopped_at_rung": len(rows) if status == "stopped" else None,
            "retries": t["attempts"] - 1,
            "node": t["nodes"][-1] if t["nodes"] else "",
            "node_ip": last.get("node_ip", ""),
            "nodes_tried": " ".join(t["nodes"]),
            "startup_s": rows[0].get("startup_s") if rows else None,
            "mean_epoch_s": sum(r.get("epoch_s", 0) for r in rows) / len(rows) if rows else None,
            "objective": last.get("objective"),
            **{f"val_{m}": best.get(f"val_{m}") for m in SCORES},
            "val_f1_tuned": best.get("val_f1_tuned"),  # at the threshold chosen on validation (rank_by: f1)
            **{f"holdout_{m}": best.get(f"holdout_{m}") for m in SCORES},
            **{f"test_{m}": last.get(f"test_{m}") for m in TEST_METRICS},
            **{f"cfg_{k}": active.get(k) for k in searched},  # blank where a condition switched it off
            "error": t["error"].splitlines()[-1] if t["error"] else "",  # the last error, also of a retried trial
            "trial_dir": str(t["dir"]),
        }
        trials.append(record)
        for r in rows:
            history.append({"trial": name, "fixed_point": record["fixed_point"], "stage": record["stage"],
                            **{k: r.get(k) for k in HISTORY}})
    table = pd.DataFrame(trials)
    if not table.empty:
        for col in ("best_epoch", "stopped_at_rung"):
            table[col] = table[col].astype("Int64")
        table = table.sort_values([OBJECTIVE.key, "val_f1"], ascending=not OBJECTIVE.descending, na_position="last")
    return table, pd.DataFrame(history)


def prune_checkpoints(run_dir: Path, table: pd.DataFrame, keep: int) -> list[str]:
    """Keep the saved models of the fixed points, of the `keep` best finished sampled trials and of every
    confirmation trial (the final model is chosen among them); delete the rest."""
    sampled = table[(table["fixed_point"].fillna("") == "") & (table["status"] == "finished")]
    fixed = table[table["fixed_point"].fillna("") != ""]
    confirmed = table[table["stage"] == "confirm"] if "stage" in table.columns else table.iloc[:0]
    keep_names = set(sampled["trial"].head(keep)) | set(fixed["trial"]) | set(confirmed["trial"])
    kept = []
    for folder in sorted((Path(run_dir) / "checkpoints").glob("*")):
        if folder.name in keep_names:
            kept.append(folder.name)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return kept


def time_summary(table: pd.DataFrame) -> dict[str, float | None]:
    """Mean trial start-up and the share of summed trial time spent in training epochs."""
    if table.empty:
        return {"trial_startup_s_mean": None, "training_fraction": None}
    startup = table["startup_s"].fillna(0)
    training = (table["mean_epoch_s"].fillna(0) * table["epochs_run"]).sum()
    return {"trial_startup_s_mean": round(float(startup.mean()), 2),
            "training_fraction": round(float(training / max(training + startup.sum(), 1e-9)), 3)}
