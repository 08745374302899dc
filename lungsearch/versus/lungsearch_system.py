"""lungsearch in the race: its own search through Ray Tune (lungsearch.run), random or TPE sampling."""
from __future__ import annotations

import importlib.util
import math
import time

import pandas as pd

from .. import store
from .shared import Outcome, Race


def run_lungsearch(race: Race, system: str) -> Outcome:
    """lungsearch's search (lungsearch.run.run_search) with the race's budget, without the fixed points (the
    target is theirs), on as many trials at once as lungsearch puts on this machine."""
    from ..run import SearchIncomplete, run_search
    from ..predict import load_model

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
        return Outcome(system, "", wall_s=time.time() - started, status="failed", note=str(err))
    wall = time.time() - started
    manifest = store.read_json(run_dir / "manifest.json")
    per_trial, cpus = manifest["resources"]["cpu_per_trial"], manifest.get("cluster", {}).get("CPU", 0)
    gpus = manifest["resources"]["gpu_per_trial"]
    at_once = int(cpus // per_trial) if per_trial and not gpus else 0
    if race.settings.max_concurrent:
        at_once = min(at_once, race.settings.max_concurrent) if at_once else race.settings.max_concurrent
    parallelism = (f"Ray Tune: up to {at_once} trial(s) at once, {per_trial:g} CPU(s) each of the machine's "
                   f"{cpus:g}, each in a worker process" if at_once else
                   f"Ray Tune: {per_trial:g} CPU(s) and {gpus:g} GPU(s) per trial")
    log = store.read_budget_log(run_dir)
    folders = [p.name for p in (run_dir / "ray").iterdir() if p.is_dir()]  # <fixed point or "trial">_<trial id>
    names = {i: next((f for f in folders if f.endswith("_" + i)), i) for i in {r["trial_id"] for r in log}}
    records, over = [], 0
    for r in log:
        t = r["at"] - started
        if not r["counted"] or (b.seconds and t > b.seconds):
            over += 1
            continue
        records.append({"t_s": t, "trial": names.get(r["trial_id"], r["trial_id"]), "epoch": r["epoch"],
                        "objective": r["objective"], "final": r["final"]})
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    out = Outcome(system, parallelism, records, wall, over, int((trials["status"] == "failed").sum()),
                  folder=str(run_dir.relative_to(race.dir)),
                  ranking="lungsearch's report: the best objective among the trials that ran to their end and "
                          "saved a model")
    ended = {r["trial"]: r["objective"] for r in records if r["final"]}  # within the budget
    for trial, objective in sorted(ended.items(), key=lambda kv: -kv[1] if math.isfinite(kv[1]) else math.inf):
        path = run_dir / "checkpoints" / trial / "model.keras"
        if path.is_file():
            cfg = race.config(store.read_json(run_dir / "ray" / trial / "params.json"))
            out.first = race.evaluate(load_model(path), cfg, trial)
            out.first_trial, out.first_objective = trial, objective
            break
    return out
