"""The run report's figures: matplotlib Figures (no pyplot, no display) saved as PNGs in the run's figures/
folder: sample images, learning curves, ROC and confusion matrices, ASHA's rungs, hyperparameters, shift."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import analysis, confirmation, data, importance
from .config import OBJECTIVE
from .analysis import Analysis, fmt
from .metrics import roc_points

CURVE_METRICS = ("loss", "accuracy", "f1", "auc", "precision", "recall")
STATUS_COLOURS = {"finished": "tab:green", "stopped": "tab:orange", "budget": "tab:purple", "diverged": "tab:brown",
                  "failed": "tab:red", "not started": "grey"}
STATUS_WORDS = "green: finished, orange: stopped by ASHA, purple: stopped by the spent budget, brown: diverged"


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def fig_samples(a: Analysis, folder: Path) -> Path:
    """Sample training images per class at the run's input size."""
    rng, train = np.random.default_rng(0), a.data.split["train"]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(2, 6, subplot_kw={"frame_on": False, "xticks": [], "yticks": []})
    for row, label in enumerate((0, 1)):
        idx = train[a.data.ds.labels[train] == label]
        for ax, i in zip(axes[row], rng.choice(idx, min(6, len(idx)), replace=False)):
            ax.imshow(a.data.images[i], cmap="gray", vmin=0, vmax=255)
            name = data.shown(Path(a.data.ds.files[i]).name)  # in full, wrapped
            ax.set_title("\n".join([data.CLASSES[label], *(name[k:k + 32] for k in range(0, len(name), 32))]),
                         fontsize=7)
    return save(fig, folder / "samples.png")


def fig_curves(a: Analysis, folder: Path, trials: list[str]) -> Path:
    fig, h = Figure(figsize=(13, 7.5), layout="constrained"), a.run.history
    axes = fig.subplots(2, 3)
    for k, t in enumerate(trials):
        rows, label = h[h["trial"] == t], a.evals[t].name if t in a.evals else t
        for ax, m in zip(axes.flat, CURVE_METRICS):
            ax.plot(rows["epoch"], rows[m], color=f"C{k}", marker=".", label=f"{label}: training")
            ax.plot(rows["epoch"], rows[f"val_{m}"], color=f"C{k}", ls="--", marker=".", label=f"{label}: validation")
    for ax, m in zip(axes.flat, CURVE_METRICS):
        ax.set(title=m, xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8)
    return save(fig, folder / "learning_curves.png")


def fig_best(a: Analysis, folder: Path) -> Path:
    """ROC curve of the best model (and the ensemble) on test, confusion matrices at both thresholds."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for ev in filter(None, (a.best, a.ensemble)):
        axes[0].plot(*roc_points(ev.y["test"], ev.p["test"]), label=f"{ev.name} (AUC {fmt(ev.test['auc'])})")
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    axes[0].set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (recall)",
                title="ROC on the test part", aspect="equal")
    axes[0].legend(loc="lower right", fontsize=8)
    for ax, (thr, m, why) in zip(axes[1:], ((0.5, a.best.test, "default"),
                                            (a.best.threshold, a.best.test_tuned, "chosen on validation"))):
        cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], data.CLASSES)
        ax.set_yticks([0, 1], data.CLASSES, rotation=90, va="center")
        ax.set(xlabel="predicted", ylabel="true", title=f"{a.best.name} on test, threshold {thr:.3f}\n({why})")
    return save(fig, folder / "best_model.png")


def fig_asha(a: Analysis, folder: Path) -> Path:
    """Epochs each trial survived, and the objective at each ASHA rung."""
    b, h = confirmation.stage_of(a.board, "search"), confirmation.stage_of(a.run.history, "search")
    rungs, col = analysis.asha_rungs(a.run), OBJECTIVE.key
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    present = [s for s in STATUS_COLOURS if (b["status"] == s).any()]
    axes[0].hist([b.loc[b["status"] == s, "epochs_run"] for s in present], stacked=True, label=present, rwidth=0.8,
                 bins=np.arange(-0.5, b["epochs_run"].max() + 1), color=[STATUS_COLOURS[s] for s in present])
    axes[0].set(xlabel="epochs trained", ylabel="trials", title="epochs each trial survived (all trials)")
    for axis in (axes[0].xaxis, axes[0].yaxis):  # counts of trials and epochs: whole numbers
        axis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    for k, (r, _) in enumerate(rungs):
        at = h[h["epoch"] == r]
        fixed = (at["fixed_point"].fillna("") != "").to_numpy()
        axes[1].scatter(k + 0.15 * fixed, at[col], c=np.where(fixed, "tab:purple", "tab:blue"),
                        s=np.where(fixed, 60, 20))
    axes[1].set_xticks(range(len(rungs)), [f"epoch {r}\n{len(f1)} sampled" for r, f1 in rungs])
    axes[1].set(ylabel=col, title=f"{col} at each rung (blue: sampled, purple: fixed points)")
    return save(fig, folder / "asha.png")


def fig_params(a: Analysis, folder: Path) -> Path | None:
    """Each searched parameter against the objective every sampled trial reached at the first rung (one budget
    for all, so a knob's effect is not confused with how long ASHA let a trial train)."""
    rung = first_rung(a)
    table = importance.at_common_budget(a.board, a.run.history, rung)
    params, score_col = [c for c in table.columns if c.startswith("cfg_")], OBJECTIVE.key
    if not params or table.empty:
        return None
    table = table.merge(a.board[["trial", "status"]], on="trial")
    cols, rng = min(4, len(params)), np.random.default_rng(0)
    fig = Figure(figsize=(3.3 * cols, 2.9 * math.ceil(len(params) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(len(params) / cols), cols, squeeze=False)
    for ax, col in zip(axes.flat, params):
        rows = table[table[score_col].notna() & table[col].notna()]
        x = rows[col]
        if pd.api.types.is_bool_dtype(x) or not pd.api.types.is_numeric_dtype(x) or x.nunique() <= 2:
            cats = sorted(x.astype(str).unique())
            ax.set_xticks(range(len(cats)), cats)
            x = np.array([cats.index(v) for v in x.astype(str)], dtype=float) + rng.uniform(-0.12, 0.12, len(x))
        elif (x > 0).all() and x.max() / x.min() > 20:
            ax.set_xscale("log")
        ax.scatter(x, rows[score_col], c=[STATUS_COLOURS.get(s, "grey") for s in rows["status"]], s=22)
        ax.set(title=col[4:], ylabel=f"{score_col} at epoch {rung}")
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    return save(fig, folder / "hyperparameters.png")


def first_rung(a: Analysis) -> int:
    """ASHA's first rung in epochs: a budget every trial of the search stage reaches."""
    s = a.run.manifest["settings"]
    return int(min(s.get("grace_period", 1), a.run.manifest["run_constants"].get("max_epochs", s["max_epochs"])))


def fig_shift(a: Analysis, folder: Path) -> Path | None:
    """Per trial (kept epoch): holdout AUC (in-distribution) against validation AUC (target distribution)."""
    rows = a.board.dropna(subset=["holdout_auc", "val_auc"]) if "holdout_auc" in a.board else a.board.iloc[:0]
    if rows.empty:
        return None
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.subplots()
    ax.scatter(rows["holdout_auc"], rows["val_auc"], c=[STATUS_COLOURS.get(s, "grey") for s in rows["status"]], s=28)
    for r in rows[rows["fixed_point"] != ""].itertuples():
        ax.annotate(r.fixed_point, (r.holdout_auc, r.val_auc), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.axline((0.5, 0.5), slope=1, ls=":", color="grey")  # y = x
    ax.set(xlabel="holdout AUC (in-distribution)", ylabel="validation AUC (target distribution)", aspect="equal",
           title="Each trial at its kept epoch: points below the\ndiagonal lose on the target distribution")
    return save(fig, folder / "shift.png")


def fig_versus(curves: dict[str, pd.DataFrame], target: float, budget_epochs: int, budget_s: float,
               folder: Path) -> Path:
    """`lungsearch versus`: each system's best validation objective so far against wall time (minutes since it
    started) and against epochs trained, one line per system; dashed: the target, dotted: the budget."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for k, (system, c) in enumerate(curves.items()):
        style = {"color": f"C{k}", "lw": 2.2 if system.startswith("lungsearch") else 1.5, "where": "post",
                 "label": system}
        for ax, x in ((axes[0], c["t_s"] / 60), (axes[1], c["epochs"])):
            ax.step(x, c["best"], **style)
            ax.plot(x.iloc[-1:], c["best"].iloc[-1:], "o", color=f"C{k}", ms=4)
    for ax in axes:
        ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:.4f}")
    if budget_s:
        axes[0].axvline(budget_s / 60, ls=":", color="black", lw=1, label="budget")
    if budget_epochs:
        axes[1].axvline(budget_epochs, ls=":", color="black", lw=1, label="budget")
    axes[0].set(xlabel="wall time since the system started (min)", ylabel="best validation AUC so far",
                title="best objective so far, by time")
    axes[1].set(xlabel="epochs trained (all trials)", title="best objective so far, by epochs")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=8, loc="lower right")
    return save(fig, folder / "versus.png")


def reviewed(a: Analysis) -> list:
    """The models the reviewer's figures show: the best, base and the ensemble, each once."""
    found = [e for e in (a.best, *(e for e in a.evals.values() if e.fixed_point == "base"), a.ensemble) if e]
    return [e for k, e in enumerate(found) if all(e is not f for f in found[:k])]


def fig_calibration(a: Analysis, rv, folder: Path) -> Path:
    """Reliability diagrams on the test part, before and after the calibration fitted on validation: the best
    model, base and the ensemble."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    chosen = list(dict.fromkeys(e.name for e in reviewed(a)))
    for k, name in enumerate(chosen):
        c = rv.calibrated[name]
        for ax, when, part in ((axes[0], "before", c.before), (axes[1], "after", c.after)):
            bins = part["bins"]
            pts = [(x, y, n) for x, y, n in zip(bins["mean_predicted"], bins["observed"], bins["count"]) if n]
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], "o-", color=f"C{k}",
                    label=f"{name} (ECE {fmt(part['ece'], 3)}, Brier {fmt(part['brier'], 3)})")
    for ax, title in zip(axes, ("as the model outputs", "after Platt scaling fitted on validation")):
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="mean predicted probability of PNEUMONIA (10 bins)", title=f"test part, {title}",
               xlim=(0, 1), ylim=(0, 1), aspect="equal")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("observed share of PNEUMONIA")
    return save(fig, folder / "calibration.png")


def fig_roc_pr(a: Analysis, rv, folder: Path) -> Path:
    """ROC and precision-recall curves on the test part (best model, base, ensemble), each with the operating
    points chosen on validation marked."""
    from .metrics import average_precision, pr_points

    fig = Figure(figsize=(11, 4.8), layout="constrained")
    roc, pr = fig.subplots(1, 2)
    chosen = reviewed(a)
    for k, e in enumerate(chosen):
        y, p = e.y["test"], e.p["test"]
        roc.plot(*roc_points(y, p), color=f"C{k}", label=f"{e.name} (AUC {fmt(e.test['auc'], 3)})")
        pr.step(*pr_points(y, p), where="post", color=f"C{k}", label=f"{e.name} (AP {fmt(average_precision(y, p), 3)})")
        for op in rv.operating.get(e.name, {}).values():
            roc.plot(1 - op["test_specificity"], op["test_recall"], "s", color=f"C{k}", ms=5)
    roc.plot([0, 1], [0, 1], ":", color="grey")
    prevalence = float(np.mean(chosen[0].y["test"])) if chosen else 0.5
    pr.axhline(prevalence, ls=":", color="grey", label=f"prevalence {prevalence:.2f}")
    roc.set(xlabel="1 - specificity", ylabel="sensitivity (recall)", aspect="equal",
            title="ROC on test (squares: operating points chosen on validation)")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="precision-recall on test", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
    return save(fig, folder / "roc_pr.png")


def fig_gallery(rv, folder: Path) -> Path | None:
    """The gallery's test images, each beside its saliency overlay, titled with its kind and probability."""
    if not rv.gallery:
        return None
    from .explain import overlay

    cols = 4
    rows = math.ceil(len(rv.gallery) / (cols // 2))
    fig = Figure(figsize=(11, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, subplot_kw={"frame_on": False, "xticks": [], "yticks": []}, squeeze=False)
    for k, case in enumerate(rv.gallery):
        left, right = axes.flat[2 * k], axes.flat[2 * k + 1]
        left.imshow(case.image, cmap="gray", vmin=0, vmax=1)
        name = data.shown(Path(case.file).name)
        left.set_title(f"{case.kind}, p {case.probability:.3f}\n{name[:34]}", fontsize=7)
        right.imshow(overlay(case.image, case.heat)[..., ::-1])
        right.set_title(f"{rv.saliency_method}", fontsize=7)
    return save(fig, folder / "gallery.png")


def fig_flow(rv, folder: Path) -> Path:
    """The flow of images and patients: dataset folders on the left, the run's parts on the right, exclusions
    below, arrows labelled with image counts."""
    f = rv.flow
    fig = Figure(figsize=(11, 1.6 + 1.3 * max(len(f["folders"]), len(f["parts"]))), layout="constrained")
    ax = fig.subplots(subplot_kw={"frame_on": False, "xticks": [], "yticks": []})
    n = max(len(f["folders"]), len(f["parts"]))
    ax.set(xlim=(0, 10), ylim=(-1.6, n))

    def box(x: float, y: float, title: str, v: dict) -> None:
        ax.text(x, y, f"{title}\n{v['images']} images, {v['patients']} patients\n{v['NORMAL']} NORMAL / "
                      f"{v['PNEUMONIA']} PNEUMONIA", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "#eef2f7", "ec": "#4a6a8a"})

    left = {k: n - 1 - i for i, k in enumerate(f["folders"])}
    right = {k: n - 1 - i for i, k in enumerate(f["parts"])}
    for k, y in left.items():
        box(1.8, y, f"folder {k}/", f["folders"][k])
    for k, y in right.items():
        box(8.2, y, f"part: {k}", f["parts"][k])
    for src, edges in f["edges"].items():
        for dst, v in edges.items():
            if v["images"]:
                ax.annotate("", (6.9, right[dst]), (3.1, left[src]), arrowprops={"arrowstyle": "->", "color": "grey"})
                ax.text(5, (left[src] + right[dst]) / 2, str(v["images"]), fontsize=7, ha="center",
                        bbox={"fc": "white", "ec": "none", "pad": 0.5})
    unused = sum(v["images"] for v in f["unused"].values())
    ax.text(5, -1.1, f"excluded: {f['unreadable']} unreadable images, {f['ignored']} other files, {unused} readable "
                     f"images in no part" + (f" (data limit {f['data_limit']}: a smoke subset)" if f["data_limit"] else ""),
            ha="center", va="center", fontsize=8, bbox={"boxstyle": "round", "fc": "#fbeaea", "ec": "#a05050"})
    return save(fig, folder / "flow.png")
