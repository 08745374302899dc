"""The run report: its sections (words and tables) written as report.md and a self-contained report.html;
write_report also draws the figures (figures), writes evaluation.json and exports the best model (analysis)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import analysis, clinical, confirmation, data, importance, store
from .analysis import FIXED, SOURCE_REPORT, SPLIT_NAMES, Analysis, Evaluation, fmt, objective_text
from .card import near_trivial, write_cards
from .figures import (STATUS_WORDS, fig_asha, fig_best, fig_calibration, fig_curves, fig_flow, fig_gallery,
                      fig_params, fig_roc_pr, fig_samples, fig_shift, first_rung)
from .config import OBJECTIVE, RANK_TEXT, count
from .metrics import CI_METRICS

SHIFT_METRICS = ("auc", "accuracy", "specificity")


def setting(m: dict, k: str, v: Any) -> str:
    """A setting as the run used it: CPUs and GPUs per trial as resolved (0 and -1 ask lungsearch to choose)."""
    got = m["resources"][f"{k[:3]}_per_trial"] if k in ("cpus_per_trial", "gpus_per_trial") else None
    if got is not None:
        return f"{got:g}" + (" (chosen for the machine)" if v == {"c": 0, "g": -1}[k[0]] else "")
    return "no limit" if k == "max_concurrent" and v == 0 else str(v)


def one_class(shown: list[Evaluation], tuned: bool) -> list:
    """Words for the models that call every test image, or nearly every one (specificity or recall below
    card.NEAR_TRIVIAL), one class at a threshold: their accuracy and F1 there mostly reflect the share of each
    class."""
    def said(e: Evaluation, m: dict) -> str:
        c = "PNEUMONIA" if m["tn"] + m["fn"] == 0 else "NORMAL" if m["tp"] + m["fp"] == 0 else ""
        if c:
            return f"**{e.name}** calls every test image {c} (specificity {fmt(m['specificity'], 3)}, recall " \
                   f"{fmt(m['recall'], 3)})"
        return f"**{e.name}** {near_trivial(m)}" if near_trivial(m) else ""

    found = [t for e in shown for t in [said(e, e.test_tuned if tuned else e.test)] if t]
    return [("p", "At this threshold " + "; ".join(found) + f": {'its' if len(found) == 1 else 'their'} accuracy, "
                  "precision and F1 mostly reflect the share of each class in the test part (a near-trivial model); "
                  "AUC does not depend on the threshold.")] if found else []


def with_ci(ev: Evaluation, m: str, tuned: bool = False) -> str:
    lo, hi = (ev.ci_tuned if tuned else ev.ci)[m]
    return f"{fmt((ev.test_tuned if tuned else ev.test)[m])} [{fmt(lo, 3)}, {fmt(hi, 3)}]"


def reduced(a: Analysis) -> bool:
    """Whether the run trained on smaller sizes than the source report (--smoke, a data limit, smaller images
    or fewer epochs)."""
    m, c = a.run.manifest, a.run.manifest["run_constants"]
    return bool(m.get("smoke") or int(c.get("data_limit", 0) or 0) or int(c.get("image_size", 150)) < 150
                or int(m["settings"].get("max_epochs", 50)) < 50)


def smoke_note(a: Analysis) -> list:
    """Table 1's warning for a smoke (reduced) run: its figures are no reproduction of the source report."""
    if not reduced(a):
        return []
    c, s = a.run.manifest["run_constants"], a.run.manifest["settings"]
    what = "a smoke (reduced) run" if a.run.manifest.get("smoke") else "a reduced run"
    return [("p", f"**This is {what}, not a reproduction**: {c.get('image_size')} px images (the "
                  f"report: 150), at most {s.get('max_epochs')} epochs (the report: 50) and "
                  f"{c.get('data_limit') or 'all'} training images. It shows that the tool works; its figures say "
                  f"nothing about how the report's models perform. Run at the report's sizes (no --smoke, 150 px, up to 50 "
                  f"epochs, all images) to compare.")]


def table1(a: Analysis) -> tuple[str, list[str], list[list[str]]]:
    """The source report's Table 1 (test loss, accuracy, F1, recall, precision at 0.5), this run beside it."""
    keys, by_fixed = ("loss", "accuracy", "f1", "recall", "precision"), {e.fixed_point: e for e in a.evals.values()}
    ran = set(a.board["fixed_point"])
    rows = [[label, *(fmt(ev.test[k]) if ev else "no saved model" if label in ran else "not run" for k in keys),
             *(fmt(source.get(k)) for k in keys[1:])]
            for label, ev, source in [*((f, by_fixed.get(f), SOURCE_REPORT[f]) for f in FIXED),
                                      (f"best trial: {a.best.name}" if a.best else "best trial", a.best, {}),
                                      (a.ensemble.name if a.ensemble else "ensemble", a.ensemble, {})]]
    return "table", ["model", *(f"test {k}" for k in keys), *(f"source report: {k}" for k in keys[1:])], rows


def facts(a: Analysis) -> list[str]:
    m, b, d, split = a.run.manifest, a.board, a.run.manifest["data"], a.run.manifest["data"]["split"]
    return [f"space: `{m['space_file']}`: {(m.get('space_doc') or ' ').splitlines()[0]}",
            f"settings{' (smoke run)' if m.get('smoke') else ''}: "
            + ", ".join(f"{k}={setting(m, k, v)}" for k, v in m["settings"].items()),
            f"data: `{d['dir']}`, fingerprint `{d['fingerprint']}`, {count(d['images'], 'image')}"
            + (f", {len(d['unreadable'])} unreadable" if d["unreadable"] else "") + f"; {split['protocol']} split: "
            + (" and ".join(count(len(v), w) for v, w in ((split["patients_in_two_parts"], "patient"),
                                                         (split["images_in_two_parts"], "identical image")) if v)
               or "no patient and no identical image") + " in two parts",
            f"time: {m.get('started')} to {m.get('finished')}; search wall time {fmt(m.get('search_wall_s'), 0)} s; "
            f"mean trial start-up {fmt(m.get('trial_startup_s_mean'), 1)} s; share of trial time spent training "
            f"{fmt(m.get('training_fraction'), 2)}; mean epoch {fmt(b['mean_epoch_s'].mean(), 2)} s",
            f"resources: Keras backend {m.get('keras_backend')}, Python {m.get('python')}, nodes "
            + (", ".join(sorted(set(b["node"].dropna().astype(str)))) if "node" in b else "–") + "; packages: "
            + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())]


def shift_blocks(a: Analysis, shown: list[Evaluation], fig: Path | None, tuned: str) -> list:
    """In-distribution holdout beside the target-distribution test part, or why the run has no holdout."""
    protocol, src = a.run.manifest["run_constants"]["split"], a.run.manifest["data"]["split"].get("sources", {})
    if "holdout" not in a.data.split:
        return [("p", f"No shift is measured: this run's {protocol} split has no in-distribution holdout (only "
                      f"the target split, default for a dataset with its own test/ folder, has one).")]
    head = ["model", "holdout AUC", "holdout accuracy (0.5)", "holdout specificity (0.5)", "test AUC",
            "test accuracy (0.5)", "test specificity (0.5)", "threshold", "test accuracy (threshold)",
            "test specificity (threshold)", "AUC gap (holdout - test)"]
    rows = [[e.name, *(fmt(e.holdout[k]) for k in SHIFT_METRICS), *(fmt(e.test[k]) for k in SHIFT_METRICS),
             fmt(e.threshold, 3), *(fmt(e.test_tuned[k]) for k in SHIFT_METRICS[1:]),
             fmt(e.holdout["auc"] - e.test["auc"])] for e in shown if e.holdout]
    return [("p", f"**Holdout**: {src.get('holdout')}. **Test**: {src.get('test')}. Accuracy and specificity at "
                  f"threshold **0.5** and at the threshold **{tuned}**; AUC does not depend on the threshold. The "
                  f"gap, holdout AUC minus test AUC, is what a model loses on the target distribution."),
            ("table", head, rows),
            *([("img", fig, f"Holdout AUC against validation AUC (target distribution) per trial "
                            f"({STATUS_WORDS})")] if fig else [])]


def asha_blocks(m: dict, b: pd.DataFrame, rungs: list[list[str]], fig: Path) -> list:
    """The objective at each rung, or why ASHA had nothing to do (no sampled trials: only fixed points)."""
    text = (f"ASHA compares trials by {objective_text(m)} at each rung "
            f"and stops the worse; fixed points never stop.")
    if not (b["fixed_point"] == "").any():
        return [("p", f"{text} This run has no sampled trials, only fixed points, so ASHA had nothing to stop: "
                      f"every trial ran until early stopping or its last epoch.")]
    col = OBJECTIVE.key
    return [("p", text), ("table", ["rung (epoch)", "sampled trials reaching it", f"median {col}", f"best {col}"],
                          rungs), ("img", fig, f"Epochs survived and {col} per rung")]


def rho_text(f: dict[str, Any] | None) -> str:
    """A rank correlation for the report: rho over n, or why there is none."""
    if not f or f.get("n", 0) < 3 or f["rho"] != f["rho"]:
        return (f"not measurable ({count((f or {}).get('n', 0), 'configuration')} with both: fewer than 3, or one "
                f"side all equal)")
    return f"Spearman rho {f['rho']:+.2f} over {count(f['n'], 'configuration')}"


def confirmation_blocks(a: Analysis) -> list:
    """The confirmation stage: configurations by their seeds' mean objective, whether the first place held, how
    well the cheap objective predicted the confirmed one, and the final-model rule with its outcome."""
    if a.confirmed is None or a.confirmed.empty:
        return [("p", "This run has no confirmation stage (`confirm_top: 0`): the leaderboard ranks single trials "
                      "by one seed each.")]
    s, held = a.run.manifest["settings"], confirmation.first_place(a.confirmed)
    rows = [[str(r.rank), r.configuration, str(r.seeds), f"{fmt(r.objective_mean)} ± {fmt(r.objective_std, 3)}",
             f"{fmt(r.objective_min)} to {fmt(r.objective_max)}", fmt(r.search_objective),
             "–" if r.search_rank != r.search_rank else str(int(r.search_rank))] for r in a.confirmed.itertuples()]
    fid, final = a.fidelity or {}, a.final or {}
    return [
        ("p", f"The search stage trained every trial on {100 * s.get('search_fraction', 1):g}% of the training "
              f"patients for up to {a.run.manifest['run_constants']['max_epochs']} epochs. The best "
              f"{count(s.get('confirm_top'), 'sampled configuration')} and base were then retrained on all of them for "
              f"up to {s['max_epochs']} epochs with {count(s.get('confirm_seeds', 1), 'training seed')} each (one "
              f"split for all: the split seed is {s.get('split_seed', 0)}); bn_aug and bn_aug_dropout once. "
              f"Configurations are ranked by their mean objective over the seeds (± the standard deviation); one "
              f"scored on fewer seeds than the others (bn_aug and bn_aug_dropout, or a failed seed) comes after "
              f"them, since one seed's score is more spread than a mean and would come first by luck."),
        ("table", ["rank", "configuration", "seeds", "objective mean ± sd", "range", "search-stage objective",
                   "search-stage rank"], rows),
        ("p", f"**First place {'held' if held.get('held') else 'did not hold'}**: the search stage ranked "
              f"`{held.get('search_first')}` first among these; over the seeds, `{held.get('confirmed_first')}` "
              f"is first."),
        ("p", f"How well the cheap objective predicts the full one: search stage against confirmed mean, "
              f"{rho_text(fid.get('search_vs_confirmed'))}; within the search stage, the objective at epoch "
              f"{fid.get('first_rung_vs_end', {}).get('rung', '?')} (the first rung) against the objective at the "
              f"end of the trial, {rho_text(fid.get('first_rung_vs_end'))}."),
        ("p", f"**The final model**: {final.get('rule', '')} {final.get('metric', '').capitalize()}: "
              + "; ".join(f"{n} {fmt(v)}" for n, v in final.get("scores", {}).items())
              + f". Chosen: **{final.get('chosen')}**" + ("." if final.get("adaptation") else
                                                           ", exported as `best_model.json`.")),
        *adaptation_blocks(final.get("adaptation") or {}, final.get("model")),
    ]


def adaptation_blocks(adapted: dict, model: str | None) -> list:
    """The cross-fitted adaptation of the final model to the validation part: the rule, each fold's AUC before
    and after, and whether it was kept."""
    if not adapted:
        return []
    rows = [[str(f["fold"]), str(f["images"]), fmt(f["before"]), fmt(f["adapted"]), f"{f['adapted'] - f['before']:+.4f}"]
            for f in adapted["fold_auc"]]
    return [("p", f"**Adaptation to the validation part**: {adapted['rule']}. The mean gain over the folds is "
                  f"{adapted['gain']:+.4f}, so the adapted model is **{'kept' if adapted['kept'] else 'dropped'}**"
                  + gain_interval_text(adapted.get("gain_ci95")) + "; "
                  f"out-of-fold validation AUC {fmt(adapted['val_auc_out_of_fold'])} (pooled over the folds' "
                  f"copies). Exported as `best_model.json`: **{model}**."),
            ("table", ["fold", "validation images", "AUC before", "AUC adapted", "difference"], rows)]


def gain_interval_text(ci: list | tuple | None) -> str:
    """How far validation can tell the adapted model from the model as it was, in words."""
    if not ci or any(v is None or not np.isfinite(v) for v in ci):
        return ""
    verdict = ("it includes 0, so validation alone cannot show which is better" if ci[0] <= 0 <= ci[1] else
               "validation shows adapting helps" if ci[0] > 0 else "validation shows adapting hurts")
    return f" (95% interval over resamples of the validation patients: {ci[0]:+.4f} to {ci[1]:+.4f}; {verdict})"


def importance_blocks(a: Analysis, fig: Path | None) -> list:
    """Each knob's importance at one budget, with the values the best trials took."""
    rung = first_rung(a)
    table = importance.at_common_budget(a.board, a.run.history, rung)
    scores = importance.importances(table)
    blocks: list = []
    if scores:
        blocks += [("p", f"PED-ANOVA importance (Optuna) of each searched parameter on the objective at epoch "
                         f"{rung}, the first rung, which {count(len(table), 'sampled trial')} reached (parameters "
                         f"that a condition switched off in some trials are left out); the values of the best fifth "
                         f"of those trials beside it:"),
                   ("table", ["parameter", "importance", "values in the best 20%"],
                    [[k, f"{v:.3f}", importance.best_values(table, k)] for k, v in scores.items()])]
    else:
        blocks.append(("p", f"Too few sampled trials at epoch {rung} ({len(table)}; at least "
                            f"{importance.MIN_TRIALS} are needed) to say which parameter matters."))
    if fig:
        blocks.append(("img", fig, f"Each searched hyperparameter against the objective at epoch {rung} "
                                   f"({STATUS_WORDS} later)"))
    return blocks


def ranking_text(a: Analysis, m: dict, src: dict) -> str:
    """What ranked the trials, in the words of the summary: the objective, or validation F1 (--rank-by f1)."""
    used = ", ".join(m.get("objective", {}).get("used_by", ["the leaderboard"]))
    if a.run.rank_by == "objective":
        return (f"Trials are ranked by **{objective_text(m)}**, measured on the validation part "
                f"({src.get('val', 'see Data')}); the same number is used by {used}.")
    return (f"Trials are ranked by **{RANK_TEXT[a.run.rank_by]}** (`--rank-by {a.run.rank_by}`), measured on the "
            f"validation part ({src.get('val', 'see Data')}), as the design card asked; the search itself ({used}) "
            f"compared {objective_text(m)}.")


def sections(a: Analysis, figs: dict[str, Path | None], files: list[str]) -> list[tuple[str, list]]:
    """(title, blocks): ("p", text), ("ul", items), ("pre", text), ("img", png, caption), ("table", head, rows)."""
    m, b, best, protocol = a.run.manifest, a.board, a.best, a.run.manifest["run_constants"]["split"]
    shown, parts = clinical.shown_models(a), m["data"]["split"]["parts"]
    src = m["data"]["split"].get("sources", {})
    tuned = "chosen on the validation part" + (" (target distribution)" if protocol == "target" else "")
    params, failed = [c for c in b.columns if c.startswith("cfg_")], b[b["status"] == "failed"]
    unsaved = int((~b["checkpoint"].astype(bool) & (b["status"] == "finished")).sum())
    summary: list[str] = []
    if best:
        a.run.model(best.trials[0]).summary(print_fn=lambda s, **k: summary.append(s))
    rungs = [[str(r), str(len(f1)), *(fmt(f1.agg(g)) if len(f1) else "–" for g in ("median", "max"))]
             for r, f1 in analysis.asha_rungs(a.run)]
    board = [[str(r["rank"]), r["trial"], "yes" if r["checkpoint"] else "no", r["status"], str(r["epochs_run"]),
              *(fmt(r.get(k)) for k in ("objective", "val_f1", "val_auc", "test_f1")),
              *(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r[params].fillna("–"))]
             for _, r in b.head(15).iterrows()]
    return [
        ("Summary", [
            ("p", f"Run `{a.run.dir.name}`: space `{Path(m['space_file']).name}`, {count(len(b), 'trial')} ("
                  + ", ".join(f"{n} {s}" for s, n in b["status"].value_counts().items()) + ")."),
            ("p", f"Split: **{protocol}**: {SPLIT_NAMES.get(protocol, protocol)}. Test metrics are on this run's "
                  f"held-out test part ({parts['test']['images']} images: {src.get('test', 'see Data')}), used for "
                  f"no training or choice."),
            ("p", ranking_text(a, m, src)),
            ("p", f"Two thresholds: **0.5** (as the source report) and a threshold **{tuned}** to maximise "
                  f"validation F1 (never on test). Brackets: {analysis.CI_TEXT}."),
            ("p", f"Best model: **{best.name}** (validation AUC {fmt(best.val['auc'])}): test F1 {with_ci(best, 'f1')} "
                  f"at threshold 0.5; {with_ci(best, 'f1', True)} at threshold {best.threshold:.3f} chosen on "
                  f"validation." if best else "No trial saved a model, so nothing was evaluated on test."),
            ("p", analysis.vs_base_text(a)),
            *([("p", text)] if (text := analysis.vs_base_seeds_text(a)) else [])]),
        ("Table 1: the source report's models and the best trial", [
            *smoke_note(a),
            ("p", "Test metrics at threshold 0.5, laid out as the source report's Table 1. The **source report** "
                  "columns are its published figures (test set of its random 80:20 image split), copied for "
                  "comparison, not rerun" + ("; this run uses the same split protocol" + (
                      ", but not the same sizes (above)." if reduced(a) else ".") if protocol == "report" else
                                             f"; this run's {protocol} split groups images by patient, so "
                                             f"they are not directly comparable.")), table1(a)]),
        ("Test metrics with 95% confidence intervals", [
            ("p", "At threshold **0.5**:"),
            ("table", ["model", *CI_METRICS], [[e.name, *(with_ci(e, k) for k in CI_METRICS)] for e in shown]),
            *one_class(shown, tuned=False),
            ("p", f"At the threshold **{tuned}** (AUC does not depend on the threshold):"),
            ("table", ["model", "threshold", *CI_METRICS[:-1]],
             [[e.name, fmt(e.threshold, 3), *(with_ci(e, k, True) for k in CI_METRICS[:-1])] for e in shown]),
            *one_class(shown, tuned=True)]),
        ("In-distribution vs target distribution", shift_blocks(a, shown, figs["shift"], tuned)),
        ("Leaderboard", [
            ("p", f"Ranked by {RANK_TEXT[a.run.rank_by] if a.run.rank_by != 'objective' else objective_text(m)}"
                  + (", ties broken by validation F1" if a.run.rank_by == "objective" else
                     ", ties broken by the objective")
                  + " (15 best shown; all in `leaderboard.csv`). "
                  f"Test F1 at threshold 0.5, as recorded when the trial ended. Only trials with a saved model are "
                  f"evaluated above" + (f"; {count(unsaved, 'finished trial')} {'has' if unsaved == 1 else 'have'} "
                                        f"none" if unsaved else "") + "."),
            ("table", ["rank", "trial", "model saved", "status", "epochs", "objective", "val F1", "val AUC", "test F1",
                       *(c[4:] for c in params)], board)]),
        ("Confirmation: rankings that hold", confirmation_blocks(a)),
        ("Data", [("table", ["part", "images", "NORMAL", "PNEUMONIA", "% pneumonia", "patients", "source"],
                   [[p, *(str(v[k]) for k in ("images", *data.CLASSES)),
                     f"{100 * v['PNEUMONIA'] / max(v['images'], 1):.1f}", str(v["patients"]), src.get(p, "")]
                    for p, v in parts.items()]),
                  ("img", figs["samples"], f"Sample training images per class, as the models see them "
                                            f"({a.data.images.shape[1]} px, greyscale)")]),
        ("Learning curves", [("img", figs["learning_curves"], "Training (solid) vs validation (dashed) per "
                                                              "metric and epoch, fixed points and top trials")]),
        ("Best model", [("img", figs["best_model"], "ROC curve and confusion matrices on the test part"),
                        ("p", f"Layer summary of **{best.name}** (input {best.image_sizes[0]} px, greyscale; "
                              f"exported as `best_model.keras`):"), ("pre", "\n".join(summary))] if best else []),
        ("How ASHA spent the budget", asha_blocks(m, b, rungs, figs["asha"])),
        ("What the search learned", importance_blocks(a, figs["hyperparameters"])
         if [c for c in b.columns if c.startswith("cfg_")] else [("p", "No hyperparameters were searched in this "
                                                                         "space.")]),
        ("Run facts", [("ul", facts(a)),
                       ("p", f"Failed trials: {len(failed)}" + (", and why:" if len(failed) else ".")),
                       ("ul", [f"`{r.trial}` ({count(r.retries, 'retry', 'retries')}): {r.error}"
                               for r in failed.itertuples()])]),
        ("Files", [("ul", files)]),
    ]


def missing_fixed_point_models(a: Analysis) -> list[str]:
    """A warning for each fixed point that finished but whose saved model is gone: every fixed point keeps its
    model, so the report would otherwise leave it out without a word."""
    b = a.board
    lost = b[(b["fixed_point"] != "") & (b["status"] == "finished") & ~b["checkpoint"].astype(bool)]
    return [f"warning: fixed point {t.fixed_point} ({t.trial}) finished, but its model "
            f"{a.run.dir / 'checkpoints' / t.trial / 'model.keras'} is missing: it is left out of Table 1, the "
            f"evaluation and the comparison with the base model" for t in lost.itertuples()]


def to_markdown(title: str, secs: list[tuple[str, list]], root: Path) -> str:
    out = [f"# {title}", ""]
    for name, blocks in secs:
        out += [f"## {name}", ""]
        for kind, *rest in blocks:
            out += {"p": lambda: [rest[0]], "ul": lambda: [f"- {i}" for i in rest[0]],
                    "pre": lambda: ["```", rest[0], "```"],
                    "img": lambda: [f"![{rest[1]}]({rest[0].relative_to(root).as_posix()})"],
                    "table": lambda: ["| " + " | ".join(rest[0]) + " |", "|" + " --- |" * len(rest[0]),
                                      *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rest[1])],
                    }[kind]() + [""]
    return "\n".join(out)


def inline(text: str) -> str:
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def to_html(title: str, secs: list[tuple[str, list]]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>",
            "<nav>" + " · ".join(f'<a href="#s{i}">{html.escape(n)}</a>' for i, (n, _) in enumerate(secs)) + "</nav>"]
    for i, (name, blocks) in enumerate(secs):
        body.append(f'<h2 id="s{i}">{html.escape(name)}</h2>')
        for kind, *rest in blocks:
            body.append({
                "p": lambda: f"<p>{inline(rest[0])}</p>", "pre": lambda: f"<pre>{html.escape(rest[0])}</pre>",
                "ul": lambda: "<ul>" + "".join(f"<li>{inline(x)}</li>" for x in rest[0]) + "</ul>",
                "img": lambda: f'<figure><img alt="{html.escape(rest[1])}" src="data:image/png;base64,'
                               f'{base64.b64encode(rest[0].read_bytes()).decode()}"><figcaption>'
                               f"{html.escape(rest[1])}</figcaption></figure>",
                "table": lambda: "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in rest[0])
                                 + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r)
                                                                    + "</tr>" for r in rest[1]) + "</tbody></table>",
            }[kind]())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


CSS = ("body{font:14px/1.45 system-ui,sans-serif;max-width:1250px;margin:1.5em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.6em 0;font-size:12px;display:block;overflow-x:auto;max-width:100%}"
       "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eef2f7}img{max-width:100%}"
       "tbody tr:nth-child(even){background:#fafafa}figure{margin:.8em 0}figcaption{color:#555;font-size:12px}"
       "nav{font-size:12px;margin-bottom:1em}pre{font:11px/1.2 'DejaVu Sans Mono',monospace;background:#f6f6f6;"
       "padding:.6em;overflow-x:auto}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}")


def write_report(run_dir: str | Path, top: int = 5, ensemble: int = 3, export_ensemble: bool = False,
                 data_dir: str | Path | None = None, log: Callable[[str], Any] = print,
                 rank_by: str | None = None) -> Path:
    """Analyse a run and write leaderboard.csv, evaluation.json, figures/, report.md, report.html and
    best_model.keras + best_model.json (ensemble.json + ensemble/ with export_ensemble); return report.html."""
    a = analysis.analyse(run_dir, top, ensemble, data_dir, log=log, rank_by=rank_by)
    for warning in missing_fixed_point_models(a):
        log(warning)
    root, folder = a.run.dir, a.run.dir / "figures"
    folder.mkdir(exist_ok=True)
    curves = list(dict.fromkeys([*a.board.loc[a.board["fixed_point"] != "", "trial"], *a.board["trial"].head(top)]))
    figs = {"samples": fig_samples(a, folder), "learning_curves": fig_curves(a, folder, curves),
            "asha": fig_asha(a, folder), "hyperparameters": fig_params(a, folder),
            "best_model": fig_best(a, folder) if a.best else None, "shift": fig_shift(a, folder)}
    rv = clinical.review(a)
    figs.update({"calibration": fig_calibration(a, rv, folder), "roc_pr": fig_roc_pr(a, rv, folder),
                 "gallery": fig_gallery(rv, folder), "flow": fig_flow(rv, folder)})
    store.write_json(root / "evaluation.json", [{"model": e.name, "image_sizes": e.image_sizes, **analysis.card(a, e),
                                                 **({"best_minus_base": a.vs_base,
                                                     "best_minus_base_seeds": a.vs_base_seeds} if e is a.best else {}),
                                                 **review_fields(rv, e, a.best)}
                                                for e in clinical.shown_models(a)])
    exported = analysis.export_best(a)
    if export_ensemble:
        analysis.export_ensemble(a)
    write_cards(a, rv)
    files = [f"`{n}`" for n in ("best_model.keras", "best_model.json", "best_model/", "model_card.md",
                                "ensemble.json", "ensemble/", "leaderboard.csv", confirmation.TABLE, "evaluation.json",
                                "figures/") if (root / n).exists()]
    if exported is not None:
        files.append(f"use the best model: `python -m lungsearch predict {exported} IMAGE...` or "
                     f"`python -m lungsearch evaluate {exported} --data DIR`")
    title, secs = f"lungsearch report: {root.name}", sections(a, figs, files)
    at = next((k for k, (name, _) in enumerate(secs) if name == "Leaderboard"), len(secs))
    secs[at:at] = review_sections(a, rv, figs)
    (root / "report.md").write_text(to_markdown(title, secs, root))
    (root / "report.html").write_text(to_html(title, secs))
    log(f"report: {root / 'report.html'}")
    return root / "report.html"


def review_fields(rv, e: Evaluation, best: Evaluation | None) -> dict[str, Any]:
    """evaluation.json's reviewer fields of one model: calibration, operating points (and DeLong for the best)."""
    cal = rv.calibrated.get(e.name)
    return {"calibration": cal.to_dict() if cal else None, "operating_points": rv.operating.get(e.name),
            **({"delong_best_minus_base": rv.delong} if e is best else {})}


def ci_text(value: float, ci: tuple[float, float] | list[float], digits: int = 3) -> str:
    return f"{fmt(value, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def calibration_blocks(rv, fig: Path | None) -> list:
    rows = [[name, f"{c.platt.a:.3f}", f"{c.platt.b:.3f}", f"{c.platt.temperature:.2f}",
             f"{c.val_log_loss[0]:.4f} → {c.val_log_loss[1]:.4f}",
             ci_text(c.before["brier"], c.before["brier_ci95"]), ci_text(c.after["brier"], c.after["brier_ci95"]),
             ci_text(c.before["ece"], c.before["ece_ci95"]), ci_text(c.after["ece"], c.after["ece_ci95"]),
             f"{c.threshold:.3f} → {c.threshold_calibrated:.3f}"] for name, c in rv.calibrated.items()]
    return [("p", "Does a predicted 0.8 mean 80%? Each model's probabilities are mapped by **Platt scaling**, "
                  "sigmoid(a · logit(p) + b), fitted on the **validation part** (temperature scaling is b = 0, "
                  "temperature 1/a), and scored on the test part before and after: the **Brier score** (mean squared "
                  "error of the probability) and the **expected calibration error** (ECE: the mean gap between "
                  "predicted and observed share over 10 equal-width bins), with 95% patient bootstrap intervals. The "
                  "map keeps every ranking (AUC) and every label; the validation F1 threshold is shown before → "
                  "after calibration. The exported card stores the map, and `evaluate` and `predict` apply it."),
            ("table", ["model", "a", "b", "temperature", "validation log-loss (fitted)", "test Brier before",
                       "test Brier after", "test ECE before", "test ECE after", "threshold before → after"], rows),
            *([("img", fig, "Reliability diagrams on the test part, before and after calibration")] if fig else [])]


def operating_blocks(a: Analysis, rv, fig: Path | None) -> list:
    names = {"sensitivity_at_specificity_0.90": "sensitivity at specificity 0.90",
             "sensitivity_at_specificity_0.95": "sensitivity at specificity 0.95",
             "specificity_at_sensitivity_0.95": "specificity at sensitivity 0.95"}
    rows = [[model, names.get(key, key), f"{op['threshold']:.4f}", fmt(op[f"val_{op['held']}"], 3),
             ci_text(op["test_recall"], op["test_recall_ci95"]),
             ci_text(op["test_specificity"], op["test_specificity_ci95"])]
            for model, ops in rv.operating.items() for key, op in ops.items()]
    d = rv.delong
    delong = ("No DeLong test: " + ("the best trial is the base model itself." if a.best and a.best.fixed_point ==
                                    "base" else "the best trial or the base model is missing.") if d is None else
              f"**DeLong's test** of the AUC difference, {a.best.name} minus base, on the same test images: "
              f"{d['auc_1']:.4f} vs {d['auc_2']:.4f}, difference {d['difference']:+.4f} (standard error "
              f"{d['se']:.4f}, 95% interval [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], z {d['z']:.2f}, two-sided "
              f"p {d['p_value']:.3g}). It treats images as independent; the paired patient bootstrap in the Summary "
              f"does not, so where they disagree trust the bootstrap.")
    return [("p", "Thresholds a clinician asks for, each **chosen on the validation part** (the rate held there "
                  "is shown) and then applied unchanged to the test part, with 95% patient bootstrap intervals: "
                  "the test rates may fall below the target, which is what the target distribution does to a "
                  "threshold."),
            ("table", ["model", "operating point", "threshold", "validation rate held", "test sensitivity",
                       "test specificity"], rows),
            ("p", delong),
            *([("img", fig, "ROC and precision-recall curves on the test part (AP: average precision)")] if fig else [])]


def saliency_blocks(a: Analysis, rv, fig: Path | None) -> list:
    if not rv.gallery:
        return [("p", "No saliency: no trial saved a model.")]
    b = rv.border_share
    return [("p", f"Where **{a.best.name}** looks, by {'Grad-CAM' if rv.saliency_method == 'gradcam' else 'occlusion'} "
                  f"on every test image. The number to track: the **share of saliency in the outer border** (the "
                  f"outer 10% of each side, 36% of the area, where no lung is): {fmt(b.get('all'), 3)} on average "
                  f"(NORMAL {fmt(b.get('NORMAL'), 3)}, PNEUMONIA {fmt(b.get('PNEUMONIA'), 3)}); a map spread evenly "
                  f"scores 0.36. A high share points to shortcuts: text markers, borders, devices."),
            ("p", "The gallery: the test part's most confident false positives and false negatives at the "
                  "validation threshold, and a few confident correct calls, each beside its overlay. Any image: "
                  f"`lungsearch explain {a.run.dir / 'best_model.json'} IMAGE...`."),
            *([("img", fig, "Most confident mistakes and correct calls on test, with saliency")] if fig else [])]


def flow_blocks(rv, fig: Path) -> list:
    f = rv.flow
    rows = [[src, dst, str(v["images"]), str(v["NORMAL"]), str(v["PNEUMONIA"]), str(v["patients"])]
            for src, edges in f["edges"].items() for dst, v in edges.items() if v["images"]]
    rows += [[src, "excluded: in no part", str(v["images"]), str(v["NORMAL"]), str(v["PNEUMONIA"]),
              str(v["patients"])] for src, v in f["unused"].items() if v["images"]]
    return [("p", f"Images and patients from each folder of the dataset to each part of the split (CLAIM item 33). "
                  f"Excluded before the split: {count(f['unreadable'], 'unreadable image')} and "
                  f"{count(f['ignored'], 'other file')}"
                  + (f"; the smoke data limit ({f['data_limit']} training images) leaves the rest in no part."
                     if f["data_limit"] else ".")),
            ("table", ["folder", "part", "images", "NORMAL", "PNEUMONIA", "patients"], rows),
            ("img", fig, "Flow of images from the dataset's folders to the run's parts")]


def card_blocks(a: Analysis, rv) -> list:
    from .card import model_card

    if a.best is None:
        return [("p", "No model card: no trial saved a model.")]
    mc = model_card(a, a.best, rv)
    return [("p", f"For **{a.best.name}**, exported as `best_model.keras`; the same card is in `best_model.json` "
                  f"(`model_card`) and `model_card.md`."),
            ("p", f"**Intended use.** {mc['intended_use']}"), ("p", f"**Out-of-scope use.** {mc['out_of_scope_use']}"),
            ("p", f"**Data.** {mc['data']['split']}; {mc['data']['patient_grouping']}."),
            ("table", ["threshold", "chosen", "test sensitivity", "test specificity"],
             [[f"{r['threshold']:.4f}", r["chosen"], ci_text(r["sensitivity"], r["sensitivity_ci95"]),
               ci_text(r["specificity"], r["specificity_ci95"])] for r in mc["metrics_on_test"]]),
            ("p", "**Limitations.**"), ("ul", mc["limitations"])]


def review_sections(a: Analysis, rv, figs: dict[str, Path | None]) -> list[tuple[str, list]]:
    """The sections a medical-imaging reviewer asks for (CLAIM, TRIPOD+AI), from clinical.review."""
    return [("Calibration", calibration_blocks(rv, figs.get("calibration"))),
            ("Clinical operating points", operating_blocks(a, rv, figs.get("roc_pr"))),
            ("Where the best model looks", saliency_blocks(a, rv, figs.get("gallery"))),
            ("Flow of images and patients", flow_blocks(rv, figs["flow"])),
            ("Model card", card_blocks(a, rv))]
