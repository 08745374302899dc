"""Rank a run's trials by the search's objective, evaluate the best models and the report's three models on
the held-out test part (bootstrap confidence intervals over resampled patients) and, with the target split,
on the in-distribution holdout; compare the best trial with the base model (paired bootstrap); average the top
trials into an ensemble, export models. Thresholds are only ever chosen on the validation part. The statistics
themselves (threshold, bootstrap, paired difference) are in metrics; no plotting here (figures)."""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import adaptation, confirmation, data, models, space as spaces, store
from .config import FIXED_POINTS, OBJECTIVE, RANK_BY, TrialConfig, UserError, count
from .metrics import binary_metrics, bootstrap_ci, paired_difference, roc_auc, val_threshold
from .predict import load_model

FIXED = tuple(FIXED_POINTS)  # base, bn_aug, bn_aug_dropout
CI_TEXT = ("95% percentile bootstrap intervals over 1000 seeded resamples of the test patients (a drawn patient "
           "brings all of its images: images of one child are not independent)")
# The source report's test figures (random 80:20 image split); no loss, recall and precision for base only.
SOURCE_REPORT = {"base": {"accuracy": 0.9555, "f1": 0.9686, "recall": 0.9762, "precision": 0.9622},
                 "bn_aug": {"accuracy": 0.9478, "f1": 0.9632},
                 "bn_aug_dropout": {"accuracy": 0.9418, "f1": 0.9572}}
SPLIT_NAMES = {"patient": "patient-grouped split (no child in two parts)",
               "report": "random 80:20 image split, as the source report (images of one child may sit in "
                         "train and test, so figures are optimistic)",
               "target": "target-distribution split: validation and test are halves of the dataset's own test/ "
                         "folder, grouped by patient; an in-distribution holdout of train/ patients is only reported"}


@dataclass
class Run:
    """A finished run folder: manifest, trials (leaderboard order) and per-epoch history."""

    dir: Path
    manifest: dict[str, Any]
    trials: pd.DataFrame
    history: pd.DataFrame
    loaded: dict[str, Any] = field(default_factory=dict, repr=False)  # trial: its model, loaded once (model())
    rank_by: str = "objective"  # config.RANK_BY: what the leaderboard ranks by

    def checkpoint(self, trial: str) -> Path | None:
        """The trial's saved model (or a fine-tuned copy's: adaptation.copy_name); None when there is none."""
        path = (self.dir / adaptation.FOLDER / f"{trial}.keras" if adaptation.FOLD_MARK in trial else
                self.dir / "checkpoints" / trial / "model.keras")
        return path if path.is_file() else None

    @property
    def seed(self) -> int:
        """The run's seed, which also seeds the report's bootstrap resamples."""
        return int(self.manifest["run_constants"].get("seed", 0))

    def model(self, trial: str):
        """The trial's saved model, read from disk once however often the report needs it."""
        if trial not in self.loaded:
            self.loaded[trial] = load_model(self.checkpoint(trial))
        return self.loaded[trial]

    def config(self, trial: str) -> TrialConfig:
        """The trial's full config, inactive conditional parameters dropped, as it was trained (a fine-tuned copy:
        its trial's)."""
        trial = adaptation.source_trial(trial)
        folder = next((self.dir / f / trial for f in store.STAGES if (self.dir / f / trial).is_dir()),
                      self.dir / "ray" / trial)
        params = store.read_json(folder / "params.json")
        return TrialConfig.from_dict(spaces.active(params, self.manifest.get("conditions", {})))


def objective_text(manifest: dict[str, Any]) -> str:
    """In words, the one number that ranked the run's trials (and drove early stopping and ASHA)."""
    return manifest["objective"]["text"]


@dataclass
class Evaluation:
    """One model (or an ensemble) on the validation, test and (target split) holdout parts."""

    name: str  # fixed point name, trial name, or "ensemble of k"
    trials: list[str]
    image_sizes: list[int]
    threshold: float  # chosen on validation (maximises validation F1)
    val: dict[str, float]  # at 0.5
    test: dict[str, float]  # at 0.5
    test_tuned: dict[str, float]  # at the validation threshold
    ci: dict[str, tuple[float, float]]  # 95% bootstrap intervals at 0.5
    ci_tuned: dict[str, tuple[float, float]]  # ... at the validation threshold
    y: dict[str, np.ndarray] = field(repr=False)  # labels and probabilities by part, for ensembles and figures
    p: dict[str, np.ndarray] = field(repr=False)
    fixed_point: str = ""
    holdout: dict[str, float] | None = None  # at 0.5; None without a holdout part (split other than target)
    holdout_tuned: dict[str, float] | None = None  # at the validation threshold
    groups: np.ndarray | None = field(default=None, repr=False)  # patient key of each test image (bootstrap)


@dataclass
class Analysis:
    run: Run
    board: pd.DataFrame  # the leaderboard
    evals: dict[str, Evaluation]  # by trial name: the fixed points, the top trials and the ensemble members
    top: list[str]  # the top trials with checkpoints, best first
    best: Evaluation | None
    ensemble: Evaluation | None
    data: "RunData"
    vs_base: dict[str, Any] | None = None  # paired_difference(best, base); None without both models
    confirmed: pd.DataFrame | None = None  # confirmation.summary: configurations by their seeds' mean objective
    final: dict[str, Any] | None = None  # the final-model rule: candidates' validation AUC and the one chosen
    fidelity: dict[str, Any] | None = None  # confirmation.fidelity: low- vs higher-fidelity rank correlations
    vs_base_seeds: dict[str, Any] | None = None  # paired_difference(best, base's confirmed seeds averaged)


def load_run(run_dir: str | Path, rank_by: str | None = None) -> Run:
    """Read a run folder, its trials ranked by `rank_by` (None: the run's setting, else the objective); a folder
    that is not a finished run is a UserError saying what to do."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "trials.csv").is_file() or not (run_dir / "manifest.json").is_file():
        from .run.folder import run_folder_problem  # the words `resume` uses for the same folder

        raise UserError(run_folder_problem(run_dir) or
                        f"{run_dir} has no trials.csv: the search did not finish; finish it with "
                        f"`python -m lungsearch resume {run_dir}`, then report again")
    manifest = store.read_manifest(run_dir)  # a newer format is refused before its tables are read
    if (run_dir / "trials.csv").stat().st_size < 5:  # pandas writes an empty table as a blank line
        raise UserError(f"{run_dir / 'trials.csv'} lists no trials: nothing ran, so there is nothing to report")
    trials = pd.read_csv(run_dir / "trials.csv", dtype={"fixed_point": str, "error": str})
    trials[["fixed_point", "error"]] = trials[["fixed_point", "error"]].fillna("")
    hist = run_dir / "history.csv"
    history = (pd.read_csv(hist) if hist.is_file() and hist.stat().st_size > 1 else
               pd.DataFrame(columns=["trial", "fixed_point", "stage", *store.HISTORY]))  # no trial trained an epoch
    rank_by = rank_by or manifest.get("settings", {}).get("rank_by") or "objective"
    if rank_by not in RANK_BY:
        raise UserError(f"--rank-by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    return Run(run_dir, manifest, leaderboard(trials, rank_by), history, rank_by=rank_by)


def leaderboard(trials: pd.DataFrame, rank_by: str = "objective") -> pd.DataFrame:
    """Trials ranked by the objective, ties broken by validation F1 (rank_by f1: by validation F1 at the
    validation threshold, ties broken by the objective); trials without metrics last."""
    keys = [OBJECTIVE.key, "val_f1"] if rank_by == "objective" else [RANK_BY[rank_by], OBJECTIVE.key]
    board = trials.sort_values(keys, ascending=not OBJECTIVE.descending, na_position="last",
                               kind="mergesort").reset_index(drop=True)  # validation F1 too: higher is better
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board


class RunData:
    """The run's dataset and split, with the arrays of its evaluated parts decoded once per image size and
    decode-time normalisation."""

    def __init__(self, run: Run, data_dir: str | Path | None = None, log: Callable[[str], Any] = print):
        consts = run.manifest["run_constants"]
        self.dir = Path(data_dir or consts["data_dir"]).expanduser()
        if not self.dir.is_dir():
            raise UserError(f"the run's dataset {self.dir} is not there; pass --data DIR pointing at the same "
                            f"dataset (fingerprint {run.manifest['data']['fingerprint']})")
        self.consts, self.log, self.manifest = consts, log, run.manifest
        self.arrays: dict[tuple[int, str], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self.scanned = data.scan(self.dir)  # hashed once; every image size and decoding reuses it
        if self.scanned.fingerprint != run.manifest["data"]["fingerprint"]:
            listed = data.split_changes(run.dir / data.SPLIT_FILE, self.scanned)
            raise UserError(f"dataset {self.dir} has fingerprint {self.scanned.fingerprint} but the run used "
                            f"{run.manifest['data']['fingerprint']}: the files changed"
                            + (f" (of the images {data.SPLIT_FILE} lists, {listed})" if listed else "")
                            + ", so the run's parts are not the images it trained and scored on; pass --data DIR "
                              "with the dataset the run was trained on")
        self.ds, self.images = self.load_images(int(consts["image_size"]))
        stored = run.dir / data.SPLIT_FILE
        self.split = data.read_split(stored, self.ds)

    def load_images(self, size: int, normalize: str = "none") -> tuple[data.Dataset, np.ndarray]:
        # this user's cache ($LUNGSEARCH_CACHE)
        return data.load_images(self.dir, size, None, log=self.log, normalize=normalize, dataset=self.scanned)

    def parts(self, size: int, normalize: str = "none") -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Validation, test and (when the split has one) holdout inputs at `size` px, decoded with `normalize`
        (a model's decode_normalization); the split's indices depend on neither."""
        key = (size, normalize)
        if key not in self.arrays:
            own = key == (int(self.consts["image_size"]), "none")
            ds, images = (self.ds, self.images) if own else self.load_images(size, normalize)
            self.arrays[key] = {p: data.arrays(images, ds, idx) for p, idx in self.split.items() if p != "train"}
        return self.arrays[key]

    def patients(self, part: str) -> np.ndarray:
        """The patient key of each image of `part`, in the order of parts()' arrays."""
        return np.array([self.ds.patients[i] for i in self.split[part]], dtype=object)


def fmt(v: Any, digits: int = 4) -> str:
    """A number for the report and its figures: `digits` decimals, a dash when missing (None or NaN)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def vs_base_text(a: "Analysis") -> str:
    """The paired comparison of the best trial with the base model, in a sentence for the report."""
    c = a.vs_base
    if c is None:
        return ("No comparison with the base model: " + ("no trial saved a model." if a.best is None else
                                                         "it was not run or saved no model in this run."))
    if c["best"] == c["base"]:
        return "The best trial is the base model itself: there is no difference to compare."
    return paired_text(c, "the base model")


def vs_base_seeds_text(a: "Analysis") -> str | None:
    """The final model against base's confirmed seeds averaged, in a sentence; None without that comparison. Base
    alone is one seed, and seeds of one configuration differ on test: this asks whether the search adds more than
    averaging base's seeds does."""
    c = a.vs_base_seeds
    if c is None:
        return None
    if c["best"] == c["base"]:
        return f"The final model is {c['base']}, base's seeds averaged: the search found nothing better on validation."
    return (paired_text(c, c["base"]) + " Base's seeds averaged is what the search must beat to add more than "
            f"training base again with other seeds.")


def paired_text(c: dict[str, Any], against: str) -> str:
    """A paired_difference record (`versus_base`) in a sentence: each metric, the difference and its interval."""
    names = {"f1_at_0.5": "F1 at 0.5", "f1_at_threshold": "F1 at each model's validation threshold", "auc": "AUC"}
    return (f"**{c['best']} minus {against}** on the same test patients, with paired 95% bootstrap intervals "
            f"(the same resamples score both models): " + "; ".join(
                f"{names[k]} {v['best']:.4f} vs {v['base']:.4f}: {v['difference']:+.4f} [{v['ci95'][0]:+.3f}, "
                f"{v['ci95'][1]:+.3f}]" for k, v in c["metrics"].items()) + ". An interval that holds 0 shows no "
            f"difference.")


def evaluate_probabilities(name: str, trials: list[str], sizes: list[int], y: dict[str, np.ndarray],
                           p: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0, fixed_point: str = "",
                           groups: np.ndarray | None = None) -> Evaluation:
    """Metrics at 0.5 and at the threshold chosen on validation, with bootstrap intervals on test (resampling
    the patients in `groups`, one key per test image; images without it); labels `y` and probabilities `p` by
    part (val, test, optionally holdout)."""
    thr = val_threshold(y["val"], p["val"])
    at = {part: [binary_metrics(y[part], p[part], t) for t in (0.5, thr)] for part in y}  # at 0.5, at thr
    ci = [bootstrap_ci(y["test"], p["test"], t, n_boot, seed, groups=groups) for t in (0.5, thr)]
    return Evaluation(name, trials, sizes, thr, at["val"][0], *at["test"], *ci, y, p, fixed_point,
                      *at.get("holdout", [None, None]), groups=groups)


def analyse(run_dir: str | Path, top: int = 5, ensemble: int = 3, data_dir: str | Path | None = None,
            n_boot: int = 1000, log: Callable[[str], Any] = print, rank_by: str | None = None) -> Analysis:
    """Rank the trials and evaluate the fixed points, the `top` best trials with checkpoints and an
    ensemble of the `ensemble` best (0: none) on the run's own validation, test and holdout parts, each
    model fed images decoded as it was trained on and predicted with test-time flips when its config says.
    A run with a confirmation stage is judged on its confirmation trials (confirmed_analysis)."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if ensemble == 1 or ensemble < 0:
        raise UserError(f"--ensemble must be 2 or more (or 0 for none), got {ensemble}")
    run = load_run(run_dir, rank_by)  # trials in leaderboard order
    board = run.trials.assign(checkpoint=[run.checkpoint(t) is not None for t in run.trials["trial"]])
    board = board.drop(columns=["trial_dir"], errors="ignore")
    board.to_csv(run.dir / "leaderboard.csv", index=False)  # rank, trial, ..., checkpoint (True if saved)
    rdata = RunData(run, data_dir, log)
    if not confirmation.stage_of(board, confirmation.STAGE).empty:
        return confirmed_analysis(run, board, rdata, top, n_boot, log)
    ranked = list(board.loc[board["checkpoint"], "trial"])
    fixed = [t for t in ranked if board.set_index("trial").loc[t, "fixed_point"]]
    evals = evaluate_trials(run, rdata, list(dict.fromkeys(ranked[: max(top, ensemble)] + fixed)), n_boot, log)
    members = ranked[:ensemble] if ensemble else []
    ens = combine(f"ensemble of {len(members)}", [evals[m] for m in members], rdata, run, n_boot) \
        if len(members) >= 2 else None
    best = evals[ranked[0]] if ranked else None
    return Analysis(run, board, evals, ranked[:top], best, ens, rdata, versus_base(best, evals, run, n_boot))


def evaluate_trials(run: Run, rdata: "RunData", trials: list[str], n_boot: int,
                    log: Callable[[str], Any]) -> dict[str, Evaluation]:
    """Each trial's saved model on the validation, test and holdout parts."""
    seed, groups, evals = run.seed, rdata.patients("test"), {}
    for trial in trials:
        cfg = run.config(trial)
        model = run.model(trial)
        size = int(model.input_shape[1])
        parts = rdata.parts(size, models.decode_normalization(model))
        y = {k: labels.ravel() for k, (_, labels) in parts.items()}
        p = {k: models.predict_proba(model, x, cfg.tta) for k, (x, _) in parts.items()}
        evals[trial] = evaluate_probabilities(cfg.fixed_point or trial, [trial], [size], y, p, n_boot, seed,
                                              cfg.fixed_point, groups)
        log(f"evaluated {trial}: test F1 {evals[trial].test['f1']:.4f} at 0.5, "
            f"{evals[trial].test_tuned['f1']:.4f} at the validation threshold {evals[trial].threshold:.3f}")
    return evals


def combine(name: str, members: list[Evaluation], rdata: "RunData", run: Run, n_boot: int) -> Evaluation:
    """The ensemble of `members`: the mean of their probabilities, evaluated as one model (its own threshold
    chosen on validation)."""
    first = members[0]
    if len(members) == 1:
        return first
    return evaluate_probabilities(name, [t for m in members for t in m.trials],
                                  [s for m in members for s in m.image_sizes], first.y,
                                  {k: np.mean([m.p[k] for m in members], axis=0) for k in first.p}, n_boot, run.seed,
                                  groups=rdata.patients("test"))


def versus_base(best: Evaluation | None, evals: dict[str, Evaluation], run: Run, n_boot: int,
                base: Evaluation | None = None) -> dict | None:
    """paired_difference of the best model and `base` (default: the base model among `evals`) on the same test
    patients; None without both."""
    base = base or next((e for e in evals.values() if e.fixed_point == "base"), None)
    if not (best and base):
        return None
    return {"best": best.name, "base": base.name, "metrics": paired_difference(best, base, n_boot, run.seed)}


def seeds_averaged(configuration: str, trials: list[str], members: dict[str, Evaluation], rdata: "RunData", run: Run,
                   n_boot: int) -> Evaluation:
    """A configuration's confirmed seeds (`trials`) averaged, as one model named after it."""
    return combine(f"{configuration} ({count(len(trials), 'seed')})", [members[t] for t in trials], rdata, run, n_boot)


def base_seeds(confirmed: pd.DataFrame, groups: list[list[str]], members: dict[str, Evaluation],
               candidates: dict[str, Evaluation], rdata: "RunData", run: Run, n_boot: int) -> Evaluation | None:
    """Base's confirmed seeds averaged, as one model: the final-model candidate itself when base is the best
    configuration (`candidates`, final_candidates); None unless base was confirmed with 2 seeds or more."""
    row = next((i for i, f in enumerate(confirmed["fixed_point"].fillna("")) if f == "base"), None)
    if row is None or len(groups[row]) < 2:
        return None
    return candidates.get("base") or seeds_averaged("base", groups[row], members, rdata, run, n_boot)


FINAL_RULE = ("the final model is the better on validation {metric} of two candidates: the confirmed best "
              "configuration (its seeds' models averaged) and the ensemble of every model of the confirmed top "
              "configurations; a tie goes to the single configuration. Test data plays no part in the choice.")
FINAL_METRIC = {"objective": "AUC", "f1": "F1 at the validation threshold"}


def final_candidates(names: list[str], groups: list[list[str]], members: dict[str, Evaluation], k: int,
                     rdata: "RunData", run: Run, n_boot: int) -> dict[str, Evaluation]:
    """The two candidates of FINAL_RULE: the best configuration's seed ensemble and, when it holds other models,
    the ensemble of every model of the top k configurations. `names` and `groups`: the confirmed configurations,
    best first, and their saved models."""
    first = next((i for i, g in enumerate(groups) if g), None)
    if first is None:
        return {}
    best = seeds_averaged(names[first], groups[first], members, rdata, run, n_boot)
    candidates = {names[first]: best}
    top_trials = [t for g in groups[:k] for t in g]
    if set(top_trials) != set(best.trials):
        name = f"ensemble of the top {min(k, len(groups))} configurations"
        candidates[name] = combine(f"{name} ({count(len(top_trials), 'model')})", [members[t] for t in top_trials],
                                   rdata, run, n_boot)
    return candidates


def confirmed_analysis(run: Run, board: pd.DataFrame, rdata: "RunData", top: int, n_boot: int,
                       log: Callable[[str], Any]) -> Analysis:
    """A two-stage run: configurations ranked by their seeds' mean objective (confirmation.summary), every saved
    confirmation model evaluated; the fixed points as the report trains them (the run's first seed); the final
    model chosen on validation between the best configuration's seed ensemble and the top configurations'
    ensemble (FINAL_RULE)."""
    confirmed = confirmation.summary(run.trials, RANK_BY[run.rank_by])
    confirmed.to_csv(run.dir / confirmation.TABLE, index=False)  # as leaderboard.csv: the ranking this report used
    saved = set(board.loc[board["checkpoint"], "trial"])
    groups = [[t for t in row.trials.split() if t in saved] for row in confirmed.itertuples()]
    first_seed = int(run.manifest["settings"].get("seed", 0))
    conf = confirmation.stage_of(board, confirmation.STAGE).set_index("trial")
    members = evaluate_trials(run, rdata, [t for g in groups for t in g], n_boot, log)
    for t, ev in members.items():  # only the first seed's model stands for a fixed point in Table 1
        if ev.fixed_point and int(conf.loc[t, "seed"]) != first_seed:
            ev.fixed_point, ev.name = "", f"{ev.fixed_point} (seed {int(conf.loc[t, 'seed'])})"
    candidates = final_candidates(list(confirmed["configuration"]), groups, members,
                                  int(run.manifest["settings"].get("confirm_top") or 3), rdata, run, n_boot)
    metric = "f1" if run.rank_by == "f1" else "auc"
    chosen, scores = (confirmation.choose_final({n: (e.y["val"], e.p["val"]) for n, e in candidates.items()}, metric)
                      if candidates else (None, {}))
    best = candidates.get(chosen)
    ens = next((e for n, e in candidates.items() if n.startswith("ensemble")), None)
    evals = {t: e for t, e in members.items() if e.fixed_point}
    evals.update({g[0]: members[g[0]] for g in groups[:top] if g})
    final = {"rule": FINAL_RULE.format(metric=FINAL_METRIC[run.rank_by]), "metric": f"validation {metric}",
             "scores": scores, "chosen": chosen}
    adapted, final["adaptation"] = adapt_final(run, rdata, best, n_boot, log) if best else (None, {})
    best = adapted if final["adaptation"].get("kept") else best
    final["model"] = best.name if best else None
    fid = confirmation.fidelity(run.trials, run.history, int(run.manifest["settings"].get("grace_period", 1)))
    ranked = [t for g in groups for t in g]
    seeds_of_base = base_seeds(confirmed, groups, members, candidates, rdata, run, n_boot)
    vs_seeds = versus_base(best, members, run, n_boot, seeds_of_base) if seeds_of_base else None
    return Analysis(run, board, evals, ranked[:top], best, ens, rdata, versus_base(best, members, run, n_boot),
                    confirmed, final, fid, vs_seeds)


def adapt_final(run: Run, rdata: "RunData", best: Evaluation, n_boot: int,
                log: Callable[[str], Any]) -> tuple[Evaluation | None, dict[str, Any]]:
    """The final model adapted to the validation part by cross-fitting (adaptation), and the decision with its
    fold-by-fold figures; (None, {}) when the run's settings ask for none. Done once per final model: the copies
    and their predictions are kept in the run folder's adapted/ and read again by a later report."""
    s = run.manifest["settings"]
    folds_k = int(s.get("adapt_folds") or 0)
    if not folds_k:
        return None, {}
    key = {"members": best.trials, "folds": folds_k, "epochs": int(s.get("adapt_epochs", 5)),
           "learning_rate": float(s.get("adapt_learning_rate", 1e-4)), "seed": run.seed}
    folder = run.dir / adaptation.FOLDER
    record = store.read_json(folder / adaptation.RECORD) if (folder / adaptation.RECORD).is_file() else {}
    if {k: record.get(k) for k in key} != key:
        record = cross_fit_final(run, rdata, best, key, folder, log)
    with np.load(folder / adaptation.PREDICTIONS) as stored:
        p = dict(stored)
    names = [adaptation.copy_name(t, j) for t in best.trials for j in range(folds_k)]
    sizes = [size for size in best.image_sizes for _ in range(folds_k)]
    ev = evaluate_probabilities(f"{best.name}, adapted", names, sizes, best.y, p, n_boot, run.seed,
                                groups=rdata.patients("test"))
    text = adaptation.RULE.format(folds=folds_k, epochs=key["epochs"], lr=key["learning_rate"])
    interval = adaptation.gain_interval(best.y["val"], np.asarray(record["fold_of_val_image"]), best.p["val"],
                                        p["val"], rdata.patients("val"), n_boot, run.seed)
    return ev, {"rule": text, "adapted_from": best.trials, **{k: record[k] for k in ("fold_auc", "gain", "kept")},
                "gain_ci95": interval, "val_auc_out_of_fold": roc_auc(best.y["val"], p["val"])}


def cross_fit_final(run: Run, rdata: "RunData", best: Evaluation, key: dict[str, Any], folder: Path,
                    log: Callable[[str], Any]) -> dict[str, Any]:
    """Run adaptation.cross_fit on the final model `best` and write adapted/: the decision (adaptation.json), the
    out-of-fold and averaged probabilities, and the copies when they are kept."""
    members = []
    for trial in best.trials:
        model = run.model(trial)
        parts = rdata.parts(int(model.input_shape[1]), models.decode_normalization(model))
        members.append(adaptation.Member(trial, model, run.config(trial).tta, {k: x for k, (x, _) in parts.items()}))
    folds = data.patient_folds(rdata.patients("val"), best.y["val"], key["folds"],
                               int(run.manifest["run_constants"]["split_seed"]))
    log(f"adapting the final model ({len(members)} model(s)) to the validation part: {key['folds']} folds")
    got = adaptation.cross_fit(members, best.y["val"], folds, best.p["val"], key["epochs"], key["learning_rate"],
                               key["seed"], models.predict_proba, log)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.savez(folder / adaptation.PREDICTIONS, **got.p)
    if got.kept:
        for name, model in got.copies.items():
            model.save(folder / f"{name}.keras")
    record = {**key, "fold_of_val_image": folds.tolist(), "fold_auc": got.fold_auc, "gain": got.gain,
              "kept": got.kept}
    store.write_json(folder / adaptation.RECORD, record)
    return record


def asha_rungs(run: Run) -> list[tuple[int, pd.Series]]:
    """ASHA's rungs (epochs, placed as Ray's AsyncHyperBand places them), each with the objective there (the
    number ASHA compares) of the sampled trials that reached it (fixed points are never stopped, so they are left
    out)."""
    s, h = run.manifest["settings"], confirmation.stage_of(run.history, "search")
    hi = int(run.manifest["run_constants"].get("max_epochs", s["max_epochs"]))  # the search stage's epochs
    lo, rf = min(s["grace_period"], hi), s["reduction_factor"]
    rungs = sorted({lo * rf ** k for k in range(int(np.log(hi / lo) / np.log(rf) + 1))} | {hi})
    search = confirmation.stage_of(run.trials, "search")
    sampled = set(search.loc[search["fixed_point"] == "", "trial"])
    return [(r, h.loc[(h["epoch"] == r) & h["trial"].isin(sampled), "objective"]) for r in rungs]


def card(a: Analysis, ev: Evaluation) -> dict[str, Any]:
    """What a user of an exported model needs: input, threshold, metrics, config, data and split."""
    protocol, split = a.run.manifest["run_constants"]["split"], a.run.manifest["data"]["split"]
    holdout = {"holdout_at_0.5": ev.holdout, "holdout_at_threshold": ev.holdout_tuned} if ev.holdout else {}
    return {
        "classes": list(data.CLASSES), "output": "probability of PNEUMONIA (sigmoid)",
        "input": "greyscale, resized to image_size x image_size (OpenCV bilinear), scaled to [0, 1]",
        "greyscale": True, "image_size": ev.image_sizes[0] if len(set(ev.image_sizes)) == 1 else ev.image_sizes,
        "threshold": ev.threshold, "threshold_chosen_on": "validation part (maximises validation F1)",
        "metrics": {"test_at_0.5": ev.test, "test_at_threshold": ev.test_tuned, "val_at_0.5": ev.val,
                    "test_ci95_at_0.5": ev.ci, "test_ci95_at_threshold": ev.ci_tuned, **holdout},
        "intervals": CI_TEXT,
        "trials": ev.trials, "fixed_point": ev.fixed_point, "data_fingerprint": a.run.manifest["data"]["fingerprint"],
        "split_protocol": protocol, "split": SPLIT_NAMES.get(protocol, protocol), "split_sources":
            split.get("sources", {}), "objective": objective_text(a.run.manifest), "run_dir": str(a.run.dir),
        "keras_backend": a.run.manifest.get("keras_backend"),
    }


def export_best(a: Analysis) -> Path | None:
    """The best model in the run folder with its card best_model.json; None if no trial has a model. One model:
    best_model.keras (the search's first-ranked trial with a checkpoint, ranked by the objective, never by test).
    An ensemble (a run with a confirmation stage: FINAL_RULE): its members in best_model/, listed by the card.
    Returns the file to predict with."""
    if a.best is None:
        return None
    folder, single = a.run.dir / "best_model", a.run.dir / "best_model.keras"
    shutil.rmtree(folder, ignore_errors=True)  # what an earlier report of this run exported
    single.unlink(missing_ok=True)
    if len(a.best.trials) > 1:
        path = a.run.dir / "best_model.json"
        store.write_json(path, {"kind": "ensemble", "combine": "mean of member probabilities",
                                "members": write_members(a, a.best, folder), "final_choice": a.final,
                                **card(a, a.best)})
        return path
    cfg = a.run.config(a.best.trials[0])
    a.run.model(a.best.trials[0]).save(single)  # without optimizer state: a third the size
    store.write_json(a.run.dir / "best_model.json", {"model": single.name, **card(a, a.best), "tta": cfg.tta,
                                                     "normalize": cfg.normalize, "config": cfg.to_dict()})
    return single


def write_members(a: Analysis, ev: Evaluation, folder: Path) -> list[dict[str, Any]]:
    """The models of an ensemble evaluation copied into `folder`, as the entries of its card's members list."""
    folder.mkdir(parents=True, exist_ok=True)
    members = []
    for trial, size in zip(ev.trials, ev.image_sizes):
        a.run.model(trial).save(folder / f"{trial}.keras")
        members.append({"model": f"{folder.name}/{trial}.keras", "trial": trial, "image_size": size,
                        "config": a.run.config(trial).to_dict()})
    return members


def export_ensemble(a: Analysis) -> Path | None:
    """ensemble.json listing member models copied into ensemble/, each fed at its own input size."""
    if a.ensemble is None:
        return None
    folder = a.run.dir / "ensemble"
    shutil.rmtree(folder, ignore_errors=True)
    path = a.run.dir / "ensemble.json"
    store.write_json(path, {"kind": "ensemble", "combine": "mean of member probabilities",
                            "members": write_members(a, a.ensemble, folder), **card(a, a.ensemble)})
    return path
