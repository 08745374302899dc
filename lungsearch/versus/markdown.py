"""versus.md: the race's findings in sentences, its table and how it ran."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import analysis, data
from ..config import OBJECTIVE, count
from ..metrics import paired_difference
from .shared import FAILURES_DIR, FAILURES_IN_A_ROW, LUNGSEARCH, Outcome, Race


def minutes(seconds: float) -> str:
    return "–" if not math.isfinite(seconds) else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def with_ci(row, key: str) -> str:
    v = row[key]
    return "–" if not math.isfinite(v) else f"{v:.4f} [{row[key + '_lo']:.3f}, {row[key + '_hi']:.3f}]"


def failure_lines(table: pd.DataFrame) -> list[str]:
    """The systems that failed (no trial succeeded) and those some of whose trials failed, and where the
    tracebacks are."""
    lines = []
    failed = table[table["status"] == "failed"]
    if len(failed):
        lines.append(f"**Failed**: {', '.join(failed['system'])}: no trial succeeded, so "
                     f"{'it has' if len(failed) == 1 else 'they have'} no result. The tracebacks are in "
                     f"{FAILURES_DIR}/<system>/, one file per failed trial.")
    partly = table[(table["status"] == "ran") & (table["trials_failed"] > 0)]
    if len(partly):
        lines.append("**Failed trials**: " + "; ".join(
            f"{r.system} {r.trials_failed} of {r.trials_succeeded + r.trials_failed}" for r in partly.itertuples())
            + f" (tracebacks in {FAILURES_DIR}/<system>/); the trials that succeeded count as usual.")
    return lines


def verdict(race: Race, table: pd.DataFrame, outcomes: list[Outcome], ref: pd.DataFrame) -> list[str]:
    """The findings in sentences: who reached the target first, whose first-ranked model tests best, and whether
    the test part can tell them apart."""
    lines, ran = [], table[table["status"] == "ran"]
    best_ref = ref.sort_values(OBJECTIVE.key, ascending=not OBJECTIVE.descending).iloc[0]
    lines.append(f"**Target**: validation AUC {best_ref['objective']:.4f}, the best of the source report's three "
                 f"models ({best_ref['model']}), trained once at the race's settings before the race, outside every "
                 f"budget.")
    hit = ran[ran["time_to_target_s"].notna()].sort_values(["time_to_target_s", "epochs_to_target"])
    if hit.empty:
        lines.append("**Time to target**: no system reached the target within its budget; the best each reached is "
                     "in the table.")
    else:
        w = hit.iloc[0]
        peer = w["system"] not in LUNGSEARCH
        rest = "; ".join(f"{r.system} {minutes(r.time_to_target_s)} ({count(int(r.epochs_to_target), 'epoch')})"
                         for r in hit.iloc[1:].itertuples())
        missed = [r.system for r in ran.itertuples() if not math.isfinite(r.time_to_target_s)]
        lines.append(f"**Time to target**: {w['system']} won, reaching the target in {minutes(w['time_to_target_s'])} "
                     f"and {count(int(w['epochs_to_target']), 'epoch')}" + (f"; then {rest}" if rest else "")
                     + (f"; not reached within the budget: {', '.join(missed)}" if missed else "") + "."
                     + (" A peer won: lungsearch was not first to the target." if peer else ""))
        fewer = [r for r in hit.itertuples() if r.system in LUNGSEARCH and r.epochs_to_target <= w["epochs_to_target"]]
        if peer and fewer:  # where the time went: lungsearch needed no more epochs, but started later
            ls = fewer[0]
            lines.append(f"Why: {ls.system} needed {count(int(ls.epochs_to_target), 'epoch')} to {w['system']}'s "
                         f"{int(w['epochs_to_target'])}, but its first epoch ended {minutes(ls.first_epoch_s)} after "
                         f"it started, against {minutes(w['first_epoch_s'])} for {w['system']}: lungsearch's start-up "
                         f"(Ray, then worker processes that each import TensorFlow) comes first; the in-process "
                         f"systems start in a process that is already running.")
        by_epochs = hit.sort_values(["epochs_to_target", "time_to_target_s"]).iloc[0]
        if by_epochs["system"] != w["system"]:
            lines.append(f"Counted in epochs rather than time, {by_epochs['system']} was first "
                         f"({count(int(by_epochs['epochs_to_target']), 'epoch')}).")
        for ls in (r for r in hit.itertuples() if r.system in LUNGSEARCH):
            ratios = [f"{ls.time_to_target_s / r.time_to_target_s:.2f} times {r.system}'s"
                      for r in hit.itertuples() if r.system.startswith("keras-tuner")]
            if ratios:
                lines.append(f"{ls.system}'s time to the target was {' and '.join(ratios)}.")
    tested = ran[ran["test_auc"].notna()].sort_values("test_auc", ascending=False)
    if tested.empty:
        lines.append("**Final test quality**: no system ranked a model first, so there is nothing to compare.")
        return lines
    w = tested.iloc[0]
    lines.append(f"**Final test quality** (the model each system ranks first, on the test part): {w['system']} has "
                 f"the highest test AUC, {with_ci(w, 'test_auc')}" + ("; a peer, not lungsearch." if w["system"] not in
                                                                        LUNGSEARCH else "."))
    firsts = {o.system: o.first for o in outcomes if o.first is not None}
    diffs = []
    for r in tested.iloc[1:].itertuples():
        d = paired_difference(firsts[w["system"]], firsts[r.system], seed=race.settings.seed)["auc"]
        lo, hi = d["ci95"]
        diffs.append((r.system, d["difference"], lo, hi))
    if diffs:
        resolved = [d for d in diffs if d[2] > 0]
        lines.append(f"Test AUC of {w['system']}'s model minus each other's, on the same resampled test patients "
                     f"(paired 95% bootstrap interval): " + "; ".join(
                         f"{s} {v:+.4f} [{lo:+.3f}, {hi:+.3f}]" for s, v, lo, hi in diffs) + ". "
                     + ("Every interval holds 0: the test part cannot tell these models apart on AUC."
                        if not resolved else f"The lead is resolved over {', '.join(d[0] for d in resolved)} "
                                             f"(interval above 0); not over the others."))
    return lines


def write_markdown(race: Race, table: pd.DataFrame, outcomes: list[Outcome], ref: pd.DataFrame, figure: Path,
                   wall_s: float) -> Path:
    lines = [f"# lungsearch versus keras-tuner and Optuna: {race.space.name}", ""]
    lines += [f"- {line}" for line in failure_lines(table) + verdict(race, table, outcomes, ref)]
    lines += systems_section(table) + target_section(table, ref, figure) + method_section(race, table, figure, wall_s)
    path = race.dir / "versus.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def systems_section(table: pd.DataFrame) -> list[str]:
    """The systems' table."""
    lines = ["", "## Systems", "",
             "| system | status | parallelism | trials (ended) | failed trials | epochs | wall | first epoch at | "
             "best val AUC | time to target | epochs to target | first-ranked | its val AUC | test AUC [95% CI] | "
             "F1* | accuracy* | recall* | specificity* |", "|" + " --- |" * 18]
    for r in table.itertuples():
        row = table.loc[r.Index]
        lines.append(
            f"| {r.system} | {r.status} | {r.parallelism or '–'} | {r.trials} ({r.trials_ended}) | "
            f"{r.trials_failed} | {r.epochs}"
            + (f" (+{r.epochs_over_budget} over)" if r.epochs_over_budget else "") + f" | {minutes(r.wall_s)} | "
            f"{minutes(r.first_epoch_s)} | {analysis.fmt(r.best_objective)} | {minutes(r.time_to_target_s)} | "
            f"{'–' if not math.isfinite(r.epochs_to_target) else int(r.epochs_to_target)} | "
            f"{r.first_ranked or '–'} | "
            f"{analysis.fmt(r.first_ranked_objective)} | {with_ci(row, 'test_auc')} | "
            + " | ".join(with_ci(row, f"test_{m}_at_threshold") for m in ("f1", "accuracy", "recall", "specificity"))
            + " |")
    return lines


def target_section(table: pd.DataFrame, ref: pd.DataFrame, figure: Path) -> list[str]:
    """The table's footnote and notes, the figure, and the target's three models."""
    lines = ["", "\\* at the threshold chosen on the validation part (the one that maximises validation F1). "
             "Intervals: " + analysis.CI_TEXT + ".", ""]
    notes = [f"- {r.system}: {r.note}" for r in table.itertuples() if r.note]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    lines += [f"![best-so-far curves]({figure.name})", "",
              "Best validation AUC any trial of each system had reached, against wall time since the system started "
              "(left) and epochs trained (right); dashed: the target.", "",
              "## The target: the source report's three models", "",
              "| model | epochs (kept) | wall | val AUC (objective) | test AUC [95% CI] | F1* | accuracy* |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in ref.itertuples():
        row = ref.loc[r.Index]
        lines.append(f"| {r.model} | {r.epochs} ({r.kept_epoch}) | {minutes(r.wall_s)} | {r.objective:.4f} | "
                     f"{with_ci(row, 'test_auc')} | {with_ci(row, 'test_f1_at_threshold')} | "
                     f"{with_ci(row, 'test_accuracy_at_threshold')} |")
    return lines


def method_section(race: Race, table: pd.DataFrame, figure: Path, wall_s: float) -> list[str]:
    """How the race ran: space, data, budget, the systems' settings, and what the columns mean."""
    s, b = race.settings, race.budget
    sizes = race.loaded and data.split_summary(race.loaded, data.make_split(race.loaded, s.split, s.split_seed,
                                                                             s.data_limit), s.split)["parts"]
    budget_words = (f"{b.epochs} epochs per system, summed over its trials, in the order they ended; an "
                    f"in-process system stops at exactly that many, lungsearch's Ray driver counts the epochs its "
                    f"trials report and stops them all at the last one" if b.epochs else
                    f"{b.seconds / 60:g} minutes of wall time per system, from the moment it starts (lungsearch's "
                    f"Ray start-up included); only epochs that ended within it count")
    return ["", "## How the race ran", "",
            f"- Space: `{race.space.path}`; objective: {OBJECTIVE.text} (every system compares it, "
            f"direction max).",
            f"- Data: `{race.data_dir}`, split `{s.split}`: " + ", ".join(
                f"{p} {v['images']} images" for p, v in sizes.items()) + f"; {s.image_size} px, up to "
            f"{s.max_epochs} epochs per trial, patience {s.patience}, seed {s.seed}"
            + (" (--smoke)" if race.smoke else "") + ".",
            f"- Budget: {budget_words}. The systems ran one after the other, in the order of the table; the whole "
            f"race took {minutes(wall_s)}.",
            f"- ASHA (lungsearch) and the successive-halving pruner (Optuna): grace period "
            f"{count(min(s.grace_period, s.max_epochs), 'epoch')}, reduction factor {s.reduction_factor}; "
            f"keras-tuner Hyperband: max_epochs {s.max_epochs}, factor {s.reduction_factor} (its rounds start at 1 "
            f"epoch). lungsearch runs without its fixed points here (they are the target).",
            "- keras-tuner and Optuna train with lungsearch's own model builder and training loop (models.build, "
            "train.compile_model, train.trial_data, train.reset_state, train.fit), so only the search strategy and "
            "its machinery differ. keras-tuner's sampler is seeded with seed + 1 (it reads 0 as unseeded).",
            "- First-ranked model: each system's own rule: " + "; ".join(
                f"{r.system}: {r.ranking}" for r in table.itertuples() if r.ranking) + ". It is evaluated on the "
            "test part, which no system saw.",
            "- Time to target: the wall time (and epochs) at the end of the first epoch whose objective reached "
            "the target; – where the budget ran out first. First epoch at: when the system's first epoch ended "
            "(its start-up). Trials (ended): trials that trained a counted epoch (those that ran to early stopping "
            "or the epoch cap); a keras-tuner Hyperband round is a trial of its own. Failed trials: trials that "
            f"raised (each one's traceback is in {FAILURES_DIR}/<system>/); a system none of whose trials "
            f"succeeded failed, and an in-process system stops after {FAILURES_IN_A_ROW} failed trials in a row. "
            "Epochs (+ over): epochs counted (+ epochs trained past the budget, not counted).",
            "", "Files: versus.csv (this table), curves.csv (every counted epoch with the best so far), "
            f"{figure.name}; reference/ (the three models), each system's own folder, and {FAILURES_DIR}/ (the "
            "tracebacks of the trials that failed, if any)."]
