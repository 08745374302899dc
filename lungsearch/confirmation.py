"""(No Ray.) The confirmation stage of a search: which configurations are retrained at full fidelity with several
training seeds, the leaderboard of configurations by their mean objective, how well the search stage's cheap
objective predicted the confirmed one, and the rule that picks the final model on validation alone.

A search with `confirm_top: k` and `confirm_seeds: r` runs in two stages:
  search     every sampled trial and the fixed points on `search_fraction` of the training patients, ASHA
  confirm    the k best sampled configurations and base, r training seeds each, bn_aug and bn_aug_dropout
             once, all on every training image for up to max_epochs (no ASHA); one split for all
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import store
from .config import FIXED_POINTS, OBJECTIVE, SearchSettings
from .metrics import binary_metrics, roc_auc, val_threshold

STAGE = "confirm"  # the Tune experiment's folder in the run folder (the search stage's is ray/)
PLAN = "confirm_plan.json"  # the configurations the stage trains, written before it starts
TABLE = "confirmed.csv"  # one row per configuration: its seeds' mean objective and spread
SEEDED_FIXED = ("base",)  # fixed points retrained with every seed; the others once, as the report trained them


def stage_of(trials: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The rows of trials.csv (or history.csv) of one stage: search or confirm (a one-stage run: all search)."""
    if "stage" not in trials.columns:
        return trials if stage == "search" else trials.iloc[:0]
    return trials[trials["stage"].fillna("search") == stage]


def pick(trials: pd.DataFrame, top: int) -> list[str]:
    """The search trials whose configurations are confirmed: the `top` best sampled trials by objective, those
    ASHA let run to their end first (they were judged better than the others at every rung they met)."""
    sampled = stage_of(trials, "search")
    sampled = sampled[(sampled["fixed_point"].fillna("") == "") & sampled[OBJECTIVE.key].notna()]
    order = sampled.assign(survived=sampled["status"].isin(["finished"]))
    order = order.sort_values(["survived", OBJECTIVE.key], ascending=[False, not OBJECTIVE.descending],
                              kind="mergesort")
    return list(order["trial"].head(top))


def configs(run_dir: str | Path, trials: pd.DataFrame, settings: SearchSettings) -> list[dict[str, Any]]:
    """The confirmation trials' configs: each picked trial's (and each fixed point's) config as the search trained
    it, now on every training image for up to max_epochs, with training seeds seed, seed + 1, ... The split seed
    stays the run's, so every seed trains and is judged on the same parts."""
    search = stage_of(trials, "search")
    fixed = {r.fixed_point: r.trial for r in search.itertuples() if r.fixed_point in FIXED_POINTS}
    chosen = [(t, settings.confirm_seeds) for t in pick(trials, settings.confirm_top)]
    chosen += [(fixed[f], settings.confirm_seeds if f in SEEDED_FIXED else 1) for f in FIXED_POINTS if f in fixed]
    out = []
    for trial, seeds in chosen:
        params = store.read_json(Path(run_dir) / "ray" / trial / "params.json")
        for i in range(seeds):
            out.append({**params, "data_fraction": 1.0, "max_epochs": settings.max_epochs,
                        "seed": settings.seed + i, "confirms": trial})
    return out


def plan_text(configs: list[dict[str, Any]], settings: SearchSettings) -> str:
    """The confirmation stage in words, for the console."""
    sampled = len({c["confirms"] for c in configs if not c.get("fixed_point")})
    return (f"{len(configs)} trials: {sampled} best sampled configuration(s) and base with "
            f"{settings.confirm_seeds} training seed(s) each, bn_aug and bn_aug_dropout once; all on every training "
            f"image, up to {settings.max_epochs} epochs")


def config_name(row) -> str:
    """How a confirmed configuration is named: its fixed point, or the search trial it came from."""
    return row["fixed_point"] or row["confirms"]


def summary(trials: pd.DataFrame, column: str = "objective") -> pd.DataFrame:
    """One row per confirmed configuration, best mean first: seeds, the mean of `column` (the objective, or what
    the run ranks by) with its standard deviation, min and max, the same column in the search stage (low
    fidelity) and the rank there. Ranked by the mean, never by one lucky seed: configurations scored on fewer
    seeds than the most any has (bn_aug and bn_aug_dropout, trained once as the report trains them; one whose
    seed failed) are ranked after those scored on every seed, since one seed's score is more spread than a mean
    of several and would come first by luck."""
    confirm = stage_of(trials, STAGE)
    if column not in confirm.columns:
        column = "objective"
    if confirm.empty:
        return pd.DataFrame()
    search = stage_of(trials, "search").set_index("trial")
    search_rank = search[column].rank(ascending=False, method="min")
    rows = []
    for source, group in confirm.groupby("confirms", sort=False):
        scores = group[column].dropna()
        rows.append({"configuration": config_name(group.iloc[0]), "confirms": source,
                     "fixed_point": group.iloc[0]["fixed_point"], "seeds": len(group), "scored": len(scores),
                     "objective_mean": scores.mean(), "objective_std": scores.std(ddof=1) if len(scores) > 1 else 0.0,
                     "objective_min": scores.min(), "objective_max": scores.max(),
                     "search_objective": search[column].get(source, np.nan), "ranked_by": column,
                     "search_rank": search_rank.get(source, np.nan), "trials": " ".join(group["trial"])})
    table = pd.DataFrame(rows)
    table["all_seeds"] = table["scored"] == table["scored"].max()
    desc = OBJECTIVE.descending
    table = table.sort_values(["all_seeds", "objective_mean", "objective_min"], ascending=[False, not desc, not desc],
                              na_position="last", kind="mergesort")  # a tie: the steadier one
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    pairs = pd.DataFrame({"x": x, "y": y}).dropna()
    if len(pairs) < 3 or pairs["x"].nunique() < 2 or pairs["y"].nunique() < 2:
        return float("nan")
    return float(np.corrcoef(pairs["x"].rank(), pairs["y"].rank())[0, 1])


def first_place(confirmed: pd.DataFrame) -> dict[str, Any]:
    """Whether the search's first place held: the confirmed configuration the search stage ranked first (by its
    low-fidelity objective) against the one with the best mean over seeds."""
    if confirmed.empty:
        return {}
    search_first = confirmed.sort_values("search_objective", ascending=not OBJECTIVE.descending,
                                         kind="mergesort").iloc[0]
    return {"search_first": search_first["configuration"], "confirmed_first": confirmed.iloc[0]["configuration"],
            "held": bool(search_first["configuration"] == confirmed.iloc[0]["configuration"])}


def fidelity(trials: pd.DataFrame, history: pd.DataFrame, first_rung: int) -> dict[str, Any]:
    """How well a low-fidelity objective predicts a higher-fidelity one (Spearman over the configurations that
    reached both): the search stage's objective against the confirmed mean (full data, full epochs), and within
    the search stage the objective at the first rung against the objective at the end of the trial."""
    out: dict[str, Any] = {}
    confirmed = summary(trials)
    if not confirmed.empty:
        out["search_vs_confirmed"] = {"rho": spearman(confirmed["search_objective"], confirmed["objective_mean"]),
                                      "n": int(confirmed[["search_objective", "objective_mean"]].dropna().shape[0])}
    search = stage_of(trials, "search")
    hist = stage_of(history, "search") if "stage" in history.columns else history
    at_rung = hist[hist["epoch"] == first_rung].set_index("trial")["objective"]
    ended = search[search["epochs_run"] > first_rung].set_index("trial")["objective"]
    both = pd.concat([at_rung.rename("low"), ended.rename("high")], axis=1, join="inner").dropna()
    out["first_rung_vs_end"] = {"rho": spearman(both["low"], both["high"]), "n": len(both), "rung": first_rung}
    return out


def validation_score(y: np.ndarray, p: np.ndarray, metric: str = "auc") -> float:
    """AUC, or F1 at the threshold chosen on these very labels (metric 'f1'): validation data only."""
    y, p = np.ravel(y), np.ravel(p)
    if metric == "f1":
        return binary_metrics(y, p, val_threshold(y, p))["f1"]
    return roc_auc(y, p)


def choose_final(candidates: dict[str, tuple[np.ndarray, np.ndarray]],
                 metric: str = "auc") -> tuple[str, dict[str, float]]:
    """The final model among `candidates` (name: validation labels and probabilities), by validation AUC (or F1 at
    the validation threshold); a tie goes to the one listed first (the simpler model). Only validation data is
    passed in: no test can sway it. Returns the chosen name and each candidate's score."""
    scores = {name: validation_score(y, p, metric) for name, (y, p) in candidates.items()}
    best = max(scores, key=lambda name: (np.nan_to_num(scores[name], nan=-1.0), -list(scores).index(name)))
    return best, scores
