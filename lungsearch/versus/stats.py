"""The race's numbers: best-so-far curves, time to target and the first-ranked models' test metrics."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .. import analysis
from ..config import OBJECTIVE
from .shared import SYSTEMS, Outcome, Race

SHOWN = (("auc", False), ("f1", True), ("accuracy", True), ("recall", True), ("specificity", True))


def curve(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Best-so-far: after each counted epoch (in the order they ended), the time since the system started, the
    epochs trained so far and the best objective any trial had reached."""
    rows = sorted(records, key=lambda r: r["t_s"])
    best, out = OBJECTIVE.worst, []
    for k, r in enumerate(rows, 1):
        if OBJECTIVE.better(r["objective"], best):
            best = r["objective"]
        out.append({"t_s": r["t_s"], "epochs": k, "best": best if math.isfinite(best) else math.nan,
                    "trial": r["trial"], "epoch": r["epoch"], "objective": r["objective"]})
    return pd.DataFrame(out, columns=["t_s", "epochs", "best", "trial", "epoch", "objective"])


def test_columns(ev: analysis.Evaluation | None) -> dict[str, Any]:
    """Test AUC, and F1, accuracy, recall and specificity at the validation threshold, each with its 95% interval."""
    out: dict[str, Any] = {}
    for m, tuned in SHOWN:
        key = f"test_{m}" + ("_at_threshold" if tuned else "")
        if ev is None:
            out.update({key: math.nan, f"{key}_lo": math.nan, f"{key}_hi": math.nan})
            continue
        value, ci = (ev.test_tuned, ev.ci_tuned) if tuned else (ev.test, ev.ci)
        out.update({key: value[m], f"{key}_lo": ci[m][0], f"{key}_hi": ci[m][1]})
    out["threshold"] = ev.threshold if ev is not None else math.nan
    return out


def summary(race: Race, outcomes: list[Outcome], target: float) -> pd.DataFrame:
    """versus.csv: one row per system. trials: those with a counted epoch; trials_succeeded and trials_failed:
    those that ran without raising and those that raised (their tracebacks in the folder `failures` names)."""
    rows = []
    for o in outcomes:
        c = curve(o.records)
        reached = c[[OBJECTIVE.reached(b, target) for b in c["best"]]] if len(c) else c
        trials = {r["trial"] for r in o.records}
        rows.append({
            "system": o.system, "what": SYSTEMS[o.system], "status": o.status, "parallelism": o.parallelism,
            "budget": race.budget.text(), "epochs": len(o.records), "epochs_over_budget": o.over,
            "wall_s": round(o.wall_s, 1), "first_epoch_s": c["t_s"].iloc[0] if len(c) else math.nan,
            "trials": len(trials),
            "trials_ended": len({r["trial"] for r in o.records if r["final"]}), "trials_succeeded": o.succeeded,
            "trials_failed": len(o.failures),
            "best_objective": c["best"].iloc[-1] if len(c) else math.nan, "target": target,
            "time_to_target_s": reached["t_s"].iloc[0] if len(reached) else math.nan,
            "epochs_to_target": int(reached["epochs"].iloc[0]) if len(reached) else math.nan,
            "first_ranked": o.first_trial, "first_ranked_objective": o.first_objective, "ranking": o.ranking,
            **test_columns(o.first), "folder": o.folder,
            "failures": o.failures_dir() if o.failures or o.error else "", "note": o.note,
        })
    return pd.DataFrame(rows)
