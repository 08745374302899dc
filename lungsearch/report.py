"""The run report: its sections (words and tables) written as report.md and a self-contained report.html;
write_report also draws the figures (figures), writes evaluation.json and exports the best model (analysis)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import analysis, data, store
from .analysis import FIXED, SOURCE_REPORT, SPLIT_NAMES, Analysis, Evaluation, fmt, objective_text
from .figures import STATUS_WORDS, fig_asha, fig_best, fig_curves, fig_params, fig_samples, fig_shift
from .config import count
from .metrics import CI_METRICS
from .predict import load_model

SHIFT_METRICS = ("auc", "accuracy", "specificity")


def setting(m: dict, k: str, v: Any) -> str:
    """A setting as the run used it: CPUs and GPUs per trial as resolved (0 and -1 ask lungsearch to choose)."""
    got = m.get("resources", {}).get(f"{k[:3]}_per_trial") if k in ("cpus_per_trial", "gpus_per_trial") else None
    if got is not None:
        return f"{got:g}" + (" (chosen for the machine)" if v == {"c": 0, "g": -1}[k[0]] else "")
    return "no limit" if k == "max_concurrent" and v == 0 else str(v)


def one_class(shown: list[Evaluation], tuned: bool) -> list:
    """Words for the models that call every test image one class at a threshold (their accuracy and F1 there
    reflect only the share of each class)."""
    said = [f"**{e.name}** calls every test image {c} (specificity {fmt(m['specificity'], 3)}, recall "
            f"{fmt(m['recall'], 3)})" for e in shown for m in [e.test_tuned if tuned else e.test]
            for c in ["PNEUMONIA" if m["tn"] + m["fn"] == 0 else "NORMAL" if m["tp"] + m["fp"] == 0 else ""] if c]
    return [("p", "At this threshold " + "; ".join(said) + f": {'its' if len(said) == 1 else 'their'} accuracy, "
                  "precision and F1 only reflect the share of each class in the test part; AUC does not depend on "
                  "the threshold.")] if said else []


def with_ci(ev: Evaluation, m: str, tuned: bool = False) -> str:
    lo, hi = (ev.ci_tuned if tuned else ev.ci)[m]
    return f"{fmt((ev.test_tuned if tuned else ev.test)[m])} [{fmt(lo, 3)}, {fmt(hi, 3)}]"


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


def asha_blocks(m: dict, b: pd.DataFrame, rungs: list[list[str]], fig: Path, col: str) -> list:
    """The objective at each rung, or why ASHA had nothing to do (no sampled trials: only fixed points)."""
    text = (f"ASHA compares trials by {objective_text(m) if 'objective' in m else 'validation loss'} at each rung "
            f"and stops the worse; fixed points never stop.")
    if not (b["fixed_point"] == "").any():
        return [("p", f"{text} This run has no sampled trials, only fixed points, so ASHA had nothing to stop: "
                      f"every trial ran until early stopping or its last epoch.")]
    return [("p", text), ("table", ["rung (epoch)", "sampled trials reaching it", f"median {col}", f"best {col}"],
                          rungs), ("img", fig, f"Epochs survived and {col} per rung")]


def sections(a: Analysis, figs: dict[str, Path | None], files: list[str]) -> list[tuple[str, list]]:
    """(title, blocks): ("p", text), ("ul", items), ("pre", text), ("img", png, caption), ("table", head, rows)."""
    m, b, best, protocol = a.run.manifest, a.board, a.best, a.run.manifest["run_constants"]["split"]
    shown, parts = [*a.evals.values(), *([a.ensemble] if a.ensemble else [])], m["data"]["split"]["parts"]
    src, col = m["data"]["split"].get("sources", {}), analysis.score_column(b)
    tuned = "chosen on the validation part" + (" (target distribution)" if protocol == "target" else "")
    params, failed = [c for c in b.columns if c.startswith("cfg_")], b[b["status"] == "failed"]
    unsaved = int((~b["checkpoint"].astype(bool) & (b["status"] == "finished")).sum())
    summary: list[str] = []
    if best:
        load_model(a.run.checkpoint(best.trials[0])).summary(print_fn=lambda s, **k: summary.append(s))
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
            ("p", f"Trials are ranked by **{objective_text(m)}**, measured on the validation part ("
                  f"{src.get('val', 'see Data')}); the same number is used by "
                  + ", ".join(m.get("objective", {}).get("used_by", ["the leaderboard"])) + "."),
            ("p", f"Two thresholds: **0.5** (as the source report) and a threshold **{tuned}** to maximise "
                  f"validation F1 (never on test). Brackets: {analysis.CI_TEXT}."),
            ("p", f"Best model: **{best.name}** (validation AUC {fmt(best.val['auc'])}): test F1 {with_ci(best, 'f1')} "
                  f"at threshold 0.5; {with_ci(best, 'f1', True)} at threshold {best.threshold:.3f} chosen on "
                  f"validation." if best else "No trial saved a model, so nothing was evaluated on test."),
            ("p", analysis.vs_base_text(a))]),
        ("Table 1: the source report's models and the best trial", [
            ("p", "Test metrics at threshold 0.5, laid out as the source report's Table 1. The **source report** "
                  "columns are its published figures (test set of its random 80:20 image split), copied for "
                  "comparison, not rerun" + ("; this run uses the same protocol." if protocol == "report" else
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
            ("p", f"Ranked by {objective_text(m)}" + (", ties broken by validation F1" if col == "objective" else "")
                  + " (15 best shown; all in `leaderboard.csv`). "
                  f"Test F1 at threshold 0.5, as recorded when the trial ended. Only trials with a saved model are "
                  f"evaluated above" + (f"; {count(unsaved, 'finished trial')} {'has' if unsaved == 1 else 'have'} "
                                        f"none" if unsaved else "") + "."),
            ("table", ["rank", "trial", "model saved", "status", "epochs", "objective", "val F1", "val AUC", "test F1",
                       *(c[4:] for c in params)], board)]),
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
        ("How ASHA spent the budget", asha_blocks(m, b, rungs, figs["asha"], col)),
        ("Hyperparameters", [("img", figs["hyperparameters"], f"Each searched hyperparameter against the "
                                                                   f"{col} ({STATUS_WORDS})")]
         if figs["hyperparameters"] else [("p", "No hyperparameters were searched in this space.")]),
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
                 data_dir: str | Path | None = None, log: Callable[[str], Any] = print) -> Path:
    """Analyse a run and write leaderboard.csv, evaluation.json, figures/, report.md, report.html and
    best_model.keras + best_model.json (ensemble.json + ensemble/ with export_ensemble); return report.html."""
    a = analysis.analyse(run_dir, top, ensemble, data_dir, log=log)
    for warning in missing_fixed_point_models(a):
        log(warning)
    root, folder = a.run.dir, a.run.dir / "figures"
    folder.mkdir(exist_ok=True)
    curves = list(dict.fromkeys([*a.board.loc[a.board["fixed_point"] != "", "trial"], *a.board["trial"].head(top)]))
    figs = {"samples": fig_samples(a, folder), "learning_curves": fig_curves(a, folder, curves),
            "asha": fig_asha(a, folder), "hyperparameters": fig_params(a, folder),
            "best_model": fig_best(a, folder) if a.best else None, "shift": fig_shift(a, folder)}
    store.write_json(root / "evaluation.json", [{"model": e.name, "image_sizes": e.image_sizes, **analysis.card(a, e),
                                                 **({"best_minus_base": a.vs_base} if e is a.best else {})}
                                                for e in [*a.evals.values(), *filter(None, [a.ensemble])]])
    analysis.export_best(a)
    if export_ensemble:
        analysis.export_ensemble(a)
    files = [f"`{n}`" for n in ("best_model.keras", "best_model.json", "ensemble.json", "ensemble/",
                                "leaderboard.csv", "evaluation.json", "figures/") if (root / n).exists()]
    if a.best is not None:
        files.append(f"use the best model: `python -m lungsearch predict {root / 'best_model.keras'} IMAGE...` or "
                     f"`python -m lungsearch evaluate {root / 'best_model.keras'} --data DIR`")
    title, secs = f"lungsearch report: {root.name}", sections(a, figs, files)
    (root / "report.md").write_text(to_markdown(title, secs, root))
    (root / "report.html").write_text(to_html(title, secs))
    log(f"report: {root / 'report.html'}")
    return root / "report.html"
