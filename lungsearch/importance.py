"""(No Ray.) What a search learned about its knobs: each searched parameter's importance, computed on the
objective every sampled trial of the search stage reached at one common budget (the first ASHA rung), so that
trials stopped early and trials that trained on are compared at the same number of epochs. Importance is
Optuna's PED-ANOVA (Watanabe et al. 2023): how much a parameter's distribution among the best trials differs
from its distribution among all of them."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .confirmation import stage_of

MIN_TRIALS = 10  # fewer than this and importance is noise


def at_common_budget(trials: pd.DataFrame, history: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """The search stage's sampled trials with their searched parameters (cfg_ columns) and `objective` at `epoch`
    (the first rung); trials that never reached it are left out."""
    search = stage_of(trials, "search")
    sampled = search[search["fixed_point"].fillna("") == ""]
    hist = stage_of(history, "search") if "stage" in history.columns else history
    at = hist[hist["epoch"] == epoch].drop_duplicates("trial").set_index("trial")["objective"]
    params = [c for c in sampled.columns if c.startswith("cfg_")]
    out = sampled.set_index("trial")[params].join(at.rename("objective"), how="inner")
    return out[out["objective"].notna()].reset_index()


def distribution(values: pd.Series):
    """An Optuna distribution spanning `values`: log-float for a positive range over 20x, float for other numbers
    with more than two values, categorical otherwise."""
    import optuna

    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and values.nunique() > 2:
        lo, hi = float(values.min()), float(values.max())
        return optuna.distributions.FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 20)
    return optuna.distributions.CategoricalDistribution(sorted(values.astype(str).unique()))


def importances(table: pd.DataFrame) -> dict[str, float] | None:
    """PED-ANOVA importance of each searched parameter that every trial of `table` (at_common_budget) has, largest
    first; None with fewer than MIN_TRIALS trials, no such parameter, or without Optuna."""
    try:
        import optuna
    except ImportError:
        return None
    params = [c for c in table.columns if c.startswith("cfg_") and table[c].notna().all() and table[c].nunique() > 1]
    if len(table) < MIN_TRIALS or not params:
        return None
    dists = {c[4:]: distribution(table[c]) for c in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in table.iterrows():
        values = {c[4:]: (str(row[c]) if isinstance(dists[c[4:]], optuna.distributions.CategoricalDistribution)
                          else float(row[c])) for c in params}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(row["objective"])))
    scores = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), normalize=True)
    return {k: float(v) for k, v in scores.items() if not math.isnan(v)}


def best_values(table: pd.DataFrame, param: str, share: float = 0.2) -> str:
    """The values `param` took in the best `share` of the trials, in words (a range or the commonest choices)."""
    top = table.nlargest(max(1, int(np.ceil(share * len(table)))), "objective")[f"cfg_{param}"]
    if pd.api.types.is_numeric_dtype(top) and not pd.api.types.is_bool_dtype(top) and table[f"cfg_{param}"].nunique() > 2:
        return f"{top.min():.3g} to {top.max():.3g}"
    counts = top.astype(str).value_counts()
    return ", ".join(f"{v} ({n})" for v, n in counts.items())
