"""lungsearch in the race: its own search through Ray Tune (lungsearch.run), random or TPE sampling."""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .. import store
from .clock import Budget
from .shared import Outcome, Race

NOT_SUCCEEDED = ("failed", "not started")  # trials.csv statuses; the others ran without raising (finished, stopped)


def run_lungsearch(race: Race, system: str) -> Outcome:
    """lungsearch's search (lungsearch.run.run_search) with the race's budget, without the fixed points (the
    target is theirs), on as many trials at once as lungsearch puts on this machine."""
    from ..run import SearchIncomplete, run_search

    searcher = "tpe" if system == "lungsearch-tpe" else "random"
    if searcher == "tpe" and importlib.util.find_spec("optuna") is None:
        return Outcome(system, "", status="skipped", note='Optuna is not installed (pip install -e ".[tpe]")')
    b = race.budget
    most = b.epochs + 8 if b.epochs else int(b.seconds) + 8  # trials: never the limit (1 epoch, or 1 s, each)
    started = time.time()
    try:
        run_dir = run_search(race.space.path, str(race.data_dir), race.dir / system, smoke=race.smoke,
                             **{**race.overrides, "searcher": searcher, "fixed_points": False, "num_samples": most,
                                "budget_epochs": b.epochs, "budget_minutes": b.seconds / 60})
    except SearchIncomplete as err:
        if err.exit_code != 1 or err.run_dir is None:  # interrupted: no record of its trials to read
            return Outcome(system, "", wall_s=time.time() - started, status="failed", note=str(err))
        run_dir = err.run_dir  # every trial failed: the run folder holds their errors
    out = Outcome(system, parallelism(store.read_json(run_dir / "manifest.json"), race.settings.max_concurrent),
                  wall_s=time.time() - started, folder=str(run_dir.relative_to(race.dir)),
                  ranking="lungsearch's report: the best objective among the trials that ran to their end and "
                          "saved a model")
    out.records, out.over = counted_epochs(run_dir, started, b)
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    out.succeeded = int((~trials["status"].isin(NOT_SUCCEEDED)).sum())
    out.failures = {row.trial: failure_text(row) for row in trials.itertuples() if row.status == "failed"}
    rank_first(race, run_dir, out)
    return out


def parallelism(manifest: dict[str, Any], max_concurrent: int) -> str:
    """How many trials Ray ran at once, in words, from the run's manifest."""
    per_trial, cpus = manifest["resources"]["cpu_per_trial"], manifest.get("cluster", {}).get("CPU", 0)
    gpus = manifest["resources"]["gpu_per_trial"]
    at_once = int(cpus // per_trial) if per_trial and not gpus else 0
    if max_concurrent:
        at_once = min(at_once, max_concurrent) if at_once else max_concurrent
    return (f"Ray Tune: up to {at_once} trial(s) at once, {per_trial:g} CPU(s) each of the machine's {cpus:g}, "
            f"each in a worker process" if at_once else f"Ray Tune: {per_trial:g} CPU(s) and {gpus:g} GPU(s) per trial")


def counted_epochs(run_dir: Path, started: float, budget: Budget) -> tuple[list[dict[str, Any]], int]:
    """The epochs the run's budget log counts, named by trial folder and timed from `started`, and how many
    epochs were trained past the budget (not counted)."""
    log = store.read_budget_log(run_dir)
    folders = [p.name for p in (run_dir / "ray").iterdir() if p.is_dir()]  # <fixed point or "trial">_<trial id>
    names = {i: next((f for f in folders if f.endswith("_" + i)), i) for i in {r["trial_id"] for r in log}}
    records, over = [], 0
    for r in log:
        t = r["at"] - started
        if not r["counted"] or (budget.seconds and t > budget.seconds):
            over += 1
            continue
        records.append({"t_s": t, "trial": names.get(r["trial_id"], r["trial_id"]), "epoch": r["epoch"],
                        "objective": r["objective"], "final": r["final"]})
    return records, over


def failure_text(row) -> str:
    """A failed trial's traceback: Ray's error.txt in its folder, else the last line trials.csv keeps."""
    error_file = Path(row.trial_dir) / "error.txt"
    return error_file.read_text() if error_file.is_file() else row.error or "no error recorded"


def rank_first(race: Race, run_dir: Path, out: Outcome) -> None:
    """The first-ranked model: the best objective among the trials that ended within the budget and kept a
    model, evaluated on test."""
    from ..predict import load_model

    ended = {r["trial"]: r["objective"] for r in out.records if r["final"]}  # within the budget
    for trial, objective in sorted(ended.items(), key=lambda kv: -kv[1] if math.isfinite(kv[1]) else math.inf):
        path = run_dir / "checkpoints" / trial / "model.keras"
        if path.is_file():
            cfg = race.config(store.read_json(run_dir / "ray" / trial / "params.json"))
            out.first = race.evaluate_model(load_model(path), cfg, trial)
            out.first_trial, out.first_objective = trial, objective
            return
