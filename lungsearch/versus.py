"""`lungsearch versus`: race lungsearch against the tools people use instead, on one space file.

One after the other, on the same machine, data, split, image size, epoch cap, patience and seed, each with the
same budget (epochs trained in all, or minutes of wall time):

  lungsearch-random      lungsearch's search (Ray Tune, ASHA), random sampling
  lungsearch-tpe         the same with Optuna's TPE sampler
  keras-tuner-random     keras-tuner RandomSearch
  keras-tuner-hyperband  keras-tuner Hyperband
  optuna                 Optuna: TPE sampler, successive-halving pruner (skipped when Optuna is missing)

keras-tuner and Optuna train with lungsearch's own code (models.build, train.compile_model, trial_data,
reset_state, fit), so only the search strategy differs; every system compares the same objective (validation AUC
at the kept epoch). The target is the best validation objective of the source report's three models, trained
once up front outside every budget. The race writes versus.csv, curves.csv, versus.md and versus.png into its
folder, whose path is the last line printed. No Ray here: lungsearch's systems run through lungsearch.run."""
from __future__ import annotations

import importlib.util
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import analysis, data, space as spaces, store
from .config import FIXED_POINTS, OBJECTIVE, OBJECTIVE_TEXT, SMOKE, TrialConfig, UserError, count
from .metrics import paired_difference

SYSTEMS = {  # name: what it is, in words
    "lungsearch-random": "lungsearch (Ray Tune, ASHA, random sampling)",
    "lungsearch-tpe": "lungsearch (Ray Tune, ASHA, Optuna's TPE sampling)",
    "keras-tuner-random": "keras-tuner RandomSearch",
    "keras-tuner-hyperband": "keras-tuner Hyperband",
    "optuna": "Optuna (TPE sampler, successive-halving pruner)",
}
LUNGSEARCH = ("lungsearch-random", "lungsearch-tpe")
DEFAULT_TRIALS = 10  # without a budget flag: as many epochs as this many trials of max_epochs
SHOWN = (("auc", False), ("f1", True), ("accuracy", True), ("recall", True), ("specificity", True))
HEARTBEAT_S = 30.0


class BudgetSpent(Exception):
    """Raised from a trial's report when an epoch ends after the system's time budget: the epoch does not count and
    the trial ends there."""


@dataclass
class Budget:
    """A budget in epochs (trained in all, summed over trials) or in seconds of wall time since the system started."""

    epochs: int = 0
    seconds: float = 0.0

    def text(self) -> str:
        return f"{self.epochs} epochs" if self.epochs else f"{self.seconds / 60:g} min"


@dataclass
class Clock:
    """One system's budget and record of the race: every epoch its trials trained, in the order they ended, with
    the time since the system started. The report callable `reporter(trial)` gives to train.fit counts epochs
    against the budget; an epoch that ends after the deadline raises BudgetSpent (not counted)."""

    system: str
    budget: Budget
    started: float = field(default_factory=time.time)
    records: list[dict[str, Any]] = field(default_factory=list)
    over: int = 0  # epochs that ended past the deadline (not counted)
    cut: set[str] = field(default_factory=set)  # trials the budget ended
    spent: bool = False
    said: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return time.time() - self.started

    def progress(self) -> str:
        used = (f"{len(self.records)} of {self.budget.epochs} epochs" if self.budget.epochs else
                f"{self.elapsed() / 60:.1f} of {self.budget.seconds / 60:g} min, {count(len(self.records), 'epoch')}")
        best = max((r["objective"] for r in self.records if math.isfinite(r["objective"])), default=math.nan)
        return f"{used} | best val AUC {'-' if math.isnan(best) else f'{best:.4f}'}"

    def say(self, text: str) -> None:
        seconds = int(self.elapsed())
        print(f"[{self.system} {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}] {text} | "
              f"{self.progress()}", flush=True)
        self.said = time.time()

    def reporter(self, trial: str) -> Callable[[dict[str, Any]], None]:
        def report(row: dict[str, Any]) -> None:
            t = self.elapsed()
            if self.spent or (self.budget.seconds and t > self.budget.seconds):
                self.spent, self.over = True, self.over + 1
                self.cut.add(trial)
                raise BudgetSpent
            objective = float(row.get(OBJECTIVE, math.nan))
            self.records.append({"t_s": t, "trial": trial, "epoch": int(row["epoch"]), "objective": objective,
                                 "final": bool(row.get("final"))})
            if self.budget.epochs and len(self.records) >= self.budget.epochs:
                self.spent = True
            if row.get("final"):
                self.say(f"trial {trial} ended after epoch {row['epoch']}, val AUC {objective:.4f}")
            elif time.time() - self.said > HEARTBEAT_S:
                self.say(f"trial {trial} at epoch {row['epoch']}")
        return report

    def trial_records(self, trial: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["trial"] == trial]


@dataclass
class Outcome:
    """What one system did: its counted epochs (records), how it ran, and the model it ranks first."""

    system: str
    parallelism: str
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    over: int = 0
    failed_trials: int = 0
    first: analysis.Evaluation | None = None
    first_trial: str = ""
    first_objective: float = math.nan
    ranking: str = ""  # how the system picks its first-ranked model
    folder: str = ""
    status: str = "ran"  # ran | skipped | failed
    note: str = ""


@dataclass
class Race:
    """Everything the systems share."""

    space: spaces.Space
    settings: Any  # SearchSettings
    overrides: dict[str, Any]
    smoke: bool
    data_dir: Path
    dataset: data.Dataset  # as scanned (passed to the trials)
    loaded: data.Dataset  # as loaded (unreadable images dropped): the split's patient keys
    base: dict[str, Any]  # the run constants every trial config starts from
    held: list[str]  # parameters --smoke holds at the run's value
    budget: Budget
    dir: Path
    groups: np.ndarray  # patient key of each test image (bootstrap)

    def config(self, values: dict[str, Any]) -> TrialConfig:
        """A trial's full config: the run constants, then the searched values that are active and not held."""
        active = spaces.active({k: v for k, v in values.items() if k in self.space.params}, self.space.conditions)
        return TrialConfig.from_dict({**self.base, **{k: v for k, v in active.items() if k not in self.held}})

    def evaluate(self, model, cfg: TrialConfig, name: str) -> analysis.Evaluation:
        """The model on the validation and test parts: metrics at 0.5 and at the threshold chosen on validation,
        with 95% patient bootstrap intervals on test."""
        from . import models, train

        _, _, parts = train.trial_data(cfg, self.dataset)
        y = {k: labels.ravel() for k, (_, labels) in parts.items()}
        p = {k: models.predict_proba(model, x, cfg.tta) for k, (x, _) in parts.items()}
        return analysis.evaluate(name, [name], [cfg.image_size], y, p, 1000, cfg.seed, cfg.fixed_point, self.groups)


def budget_from(settings, smoke: bool, budget_epochs: float | None, budget_minutes: float | None) -> Budget:
    """The race's budget: the flag given, else as many epochs as DEFAULT_TRIALS trials of max_epochs (40 with
    --smoke). Both flags, or a budget that is not above 0, is a UserError."""
    if budget_epochs is not None and budget_minutes is not None:
        raise UserError(f"give one budget, not both: --budget-epochs {budget_epochs} (epochs trained in all, per "
                        f"system) or --budget-minutes {budget_minutes:g} (wall time per system)")
    if budget_epochs is not None:
        if budget_epochs < 1 or budget_epochs != int(budget_epochs):
            raise UserError(f"--budget-epochs must be a whole number of epochs, 1 or more, got {budget_epochs}")
        return Budget(epochs=int(budget_epochs))
    if budget_minutes is not None:
        if not budget_minutes > 0 or not math.isfinite(budget_minutes):
            raise UserError(f"--budget-minutes must be above 0, got {budget_minutes:g}")
        return Budget(seconds=60.0 * budget_minutes)
    return Budget(epochs=DEFAULT_TRIALS * settings.max_epochs)


def prepare(space_path, data_arg, results_dir, smoke: bool, budget: Budget, overrides: dict[str, Any]) -> Race:
    """Check the inputs, read the data and make the race's folder (UserError before any work for a mistake)."""
    from .run.folder import new_run_folder, print_split
    from .run.settings import data_dir_from, resolve_settings

    data.check_results_folder(results_dir)
    space = spaces.load(space_path)
    if not space.params:
        raise UserError(f"space {space.path} searches nothing (no `hp` declarations): every system would train the "
                        f"same model; race a space that searches something, e.g. ablation")
    spaces.check_defaults(space, {"split": "target"})
    settings = resolve_settings(space, overrides, smoke)
    data_dir = data_dir_from(data_arg)
    cache_dir = data.default_cache_dir()
    scanned = data.scan(data_dir)
    ds, _ = data.load(data_dir, settings.image_size, cache_dir, dataset=scanned)
    settings = settings.replace(split=data.resolve_split(ds, settings.split))
    spaces.check_defaults(space, {"split": settings.split})
    split = data.make_split(ds, settings.split, settings.split_seed, settings.data_limit)
    print_split(data.split_summary(ds, split, settings.split))
    base = {"data_dir": str(data_dir), "cache_dir": str(cache_dir), "split": settings.split,
            "image_size": settings.image_size, "max_epochs": settings.max_epochs, "patience": settings.patience,
            "seed": settings.seed, "split_seed": settings.split_seed, "data_limit": settings.data_limit}
    held = sorted(set(SMOKE) & set(space.params)) if smoke else []
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = new_run_folder(Path(results_dir).expanduser().resolve(),
                            f"{stamp}-versus-{space.name}{'-smoke' if smoke else ''}")
    data.write_split(folder / data.SPLIT_FILE, data.split_record(ds, split, settings.split, settings.split_seed))
    base["split_file"] = str(folder / data.SPLIT_FILE)  # every system trains and scores on these very parts
    groups = np.array([ds.patients[i] for i in split["test"]], dtype=object)
    return Race(space, settings, overrides, smoke, data_dir, scanned, ds, base, held, budget, folder, groups)


# --- the target: the report's three models, once, outside every budget ---------------------------------------------

def reference(race: Race) -> pd.DataFrame:
    """Train the report's three models (config.FIXED_POINTS) at the race's settings, each to its own end, and
    evaluate them on test. The best validation objective among them is the target every system races to."""
    from . import train
    from .predict import load_model

    rows = []
    for name, changes in FIXED_POINTS.items():
        cfg = TrialConfig.from_dict({**race.base, **changes, "fixed_point": name})
        started = time.time()
        last = train.run_trial(cfg.to_dict(), lambda row: None, checkpoint_dir=race.dir / "reference" / name)
        wall = time.time() - started
        ev = race.evaluate(load_model(race.dir / "reference" / name / "model.keras"), cfg, name)
        print(f"reference {name}: {count(int(last['epoch']), 'epoch')} in {wall:.0f} s, val AUC (objective) "
              f"{last[OBJECTIVE]:.4f}, test AUC {ev.test['auc']:.4f}", flush=True)
        rows.append({"model": name, "epochs": int(last["epoch"]), "kept_epoch": int(last["kept_epoch"]),
                     "wall_s": round(wall, 1), "objective": float(last[OBJECTIVE]), **test_columns(ev)})
    return pd.DataFrame(rows)


# --- lungsearch: its own search through Ray Tune -----------------------------------------------------------------

def run_lungsearch(race: Race, system: str) -> Outcome:
    """lungsearch's search (lungsearch.run.run_search) with the race's budget, without the fixed points (the
    target is theirs), on as many trials at once as lungsearch puts on this machine."""
    from .run import SearchIncomplete, run_search
    from .predict import load_model

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


# --- keras-tuner: RandomSearch and Hyperband around lungsearch's build and fit --------------------------------------

def keras_tuner_classes():
    """A keras-tuner HyperModel around lungsearch's own build and training loop, and RandomSearch and Hyperband
    that stop at the race's budget. Made on first use (keras-tuner imports Keras)."""
    import keras
    import keras_tuner as kt

    from . import models, train

    class LungHyperModel(kt.HyperModel):
        """build: models.build and train.compile_model of the config the hp values give; fit: train.fit with
        lungsearch's early stopping and reports, counted against the race's budget."""

        def __init__(self, race: Race, clock: Clock):
            super().__init__(name="lungsearch")
            self.race, self.clock, self.data, self.trial = race, clock, {}, ""

        def arrays(self, cfg: TrialConfig):
            key = (cfg.image_size, cfg.normalize)
            if key not in self.data:
                self.data = {key: train.trial_data(cfg, self.race.dataset)}  # one size in memory at a time
            return self.data[key]

        def build(self, hp):
            cfg = self.race.config(hp.values)
            train.reset_state(cfg)
            model = models.build(cfg)
            train.compile_model(model, cfg, math.ceil(len(self.arrays(cfg)[0]) / cfg.batch_size))
            return model

        def fit(self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, **kwargs):
            cfg = self.race.config(hp.values)
            x, y, parts = self.arrays(cfg)
            trial = self.trial  # keras-tuner's trial id (Raced.on_trial_begin)
            stop = StopWhenSpent(self.clock)
            try:
                last = train.fit(model, cfg, x, y, parts, self.clock.reporter(trial), callbacks=[*callbacks, stop],
                                 epochs=epochs, initial_epoch=initial_epoch)
                if not last.get("final"):
                    self.clock.cut.add(trial)
                    self.clock.say(f"trial {trial} stopped after epoch {last['epoch']}: the budget is spent")
            except BudgetSpent:
                self.clock.say(f"trial {trial} stopped: the budget ran out during its epoch, which does not count")
            kept = [r["objective"] for r in self.clock.trial_records(trial) if math.isfinite(r["objective"])]
            return {OBJECTIVE: max(kept, default=math.nan)}  # the kept epoch's, within the budget

    class StopWhenSpent(keras.callbacks.Callback):
        """After every other callback of the epoch (keras-tuner's checkpoint of the best epoch included): end the
        trial when that epoch spent the budget."""

        def __init__(self, clock: Clock):
            super().__init__()
            self.clock = clock

        def on_epoch_end(self, epoch, logs=None):
            if self.clock.spent:
                self.model.stop_training = True

    class Raced:
        """What the race changes in a keras-tuner tuner: no new trial once the budget is spent, and no import of
        TensorBoard's hparams plugin when no TensorBoard callback is given (keras-tuner imports it for every trial
        with the TensorFlow backend, to configure TensorBoard callbacks; the race passes none, and tensorflow-cpu
        does not install tensorboard)."""

        def pre_create_trial(self):
            if self.hypermodel.clock.spent:
                self.oracle.max_trials = max(len(self.oracle.trials), 1)

        def on_trial_begin(self, trial):
            self.hypermodel.trial = trial.trial_id  # the records' name for the trial
            super().on_trial_begin(trial)

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            if any(type(c).__name__ == "TensorBoard" for c in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

    class RandomSearch(Raced, kt.RandomSearch):
        pass

    class Hyperband(Raced, kt.Hyperband):
        pass

    return LungHyperModel, RandomSearch, Hyperband


def run_keras_tuner(race: Race, system: str) -> Outcome:
    """keras-tuner's RandomSearch or Hyperband on the space's own `hp` declarations, one trial at a time in this
    process; its project folder goes into the race's folder."""
    import keras_tuner as kt

    hypermodel_class, random_search, hyperband = keras_tuner_classes()
    clock = Clock(system, race.budget)
    hypermodel = hypermodel_class(race, clock)
    s, b = race.settings, race.budget
    most = b.epochs + 1 if b.epochs else int(b.seconds) + 1
    common = dict(objective=kt.Objective(OBJECTIVE, "max"), seed=s.seed + 1,  # keras-tuner reads seed 0 as unseeded
                  hyperparameters=race.space.hp.copy(), tune_new_entries=False, directory=str(race.dir),
                  project_name=system, overwrite=True,
                  max_consecutive_failed_trials=10 ** 6)  # a trial that fails is recorded and the search goes on
    if system == "keras-tuner-hyperband":
        tuner = hyperband(hypermodel, max_epochs=s.max_epochs, factor=s.reduction_factor,
                          hyperband_iterations=10 ** 6, **common)
        ranking = "keras-tuner's oracle: the best objective of any round of any trial (its best epoch's weights)"
    else:
        tuner = random_search(hypermodel, max_trials=most, **common)
        ranking = "keras-tuner's oracle: the best objective of any trial (its best epoch's weights)"
    clock.started = time.time()
    error = ""
    try:
        tuner.search(verbose=0)
    except Exception as err:  # noqa: BLE001  e.g. keras-tuner's limit of consecutive failed trials
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    wall = clock.elapsed()
    failed = sum(t.status in ("FAILED", "INVALID") and t.trial_id not in clock.cut
                 for t in tuner.oracle.trials.values())
    out = Outcome(system, "one trial at a time in this process (keras-tuner runs trials in parallel only as "
                          "separate processes with its chief/worker setup)", clock.records, wall, clock.over, failed,
                  folder=system, ranking=ranking, status="failed" if error and not clock.records else "ran",
                  note=error)
    best = tuner.oracle.get_best_trials(1)
    if best and math.isfinite(best[0].score or math.nan):
        trial = best[0]
        model = tuner.load_model(trial)
        cfg = race.config(trial.hyperparameters.values)
        out.first, out.first_trial, out.first_objective = race.evaluate(model, cfg, trial.trial_id), trial.trial_id, \
            float(trial.score)
    for other in tuner.oracle.trials.values():  # keras-tuner keeps every trial's best weights: keep the first's
        if not best or other.trial_id != best[0].trial_id:
            for weights in Path(tuner.get_trial_dir(other.trial_id)).glob("checkpoint*"):
                weights.unlink()
    return out


# --- Optuna: TPE with a successive-halving pruner ----------------------------------------------------------------

def suggest(trial, race: Race) -> dict[str, Any]:
    """The values of one Optuna trial for the space's keras-tuner declarations: the same types, bounds (inclusive),
    steps, log scales and conditions (a parameter is drawn only when its parents' values activate it)."""
    import keras_tuner as kt

    hps, values = kt.engine.hyperparameters, {}
    for name, p in race.space.params.items():  # declared order: a parent comes before its children
        if name in race.held or any(parent not in values or values[parent] not in allowed
                                    for parent, allowed in race.space.conditions.get(name, [])):
            continue
        if isinstance(p, hps.Fixed):
            values[name] = p.value
        elif isinstance(p, hps.Boolean):
            values[name] = trial.suggest_categorical(name, [False, True])
        elif isinstance(p, hps.Choice):
            values[name] = trial.suggest_categorical(name, list(p.values))
        elif p.sampling == "log" and p.step:  # keras-tuner's step is then a factor: its grid, as to_ray draws it
            values[name] = trial.suggest_categorical(name, spaces.geometric_grid(p, p.min_value, p.max_value,
                                                                                 p.step))
        elif isinstance(p, hps.Int):
            values[name] = trial.suggest_int(name, p.min_value, p.max_value, step=p.step or 1,
                                             log=p.sampling == "log")
        else:
            step = p.step or None
            value = trial.suggest_float(name, p.min_value, p.max_value, step=step, log=p.sampling == "log")
            values[name] = float(f"{value:.12g}") if step else value
    return values


def run_optuna(race: Race, system: str) -> Outcome:
    """Optuna's TPE sampler with its successive-halving pruner (ASHA's rule, at lungsearch's grace period and
    reduction factor), one trial at a time in this process."""
    if importlib.util.find_spec("optuna") is None:
        return Outcome(system, "", status="skipped", note='Optuna is not installed (pip install -e ".[tpe]")')
    import keras
    import optuna

    from . import models, train
    from .predict import load_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s, clock = race.settings, Clock(system, race.budget)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min(s.grace_period, s.max_epochs),
                                                    reduction_factor=s.reduction_factor)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=s.seed), pruner=pruner)
    folder, best = race.dir / system, {"value": -math.inf, "number": None}

    class Pruning(keras.callbacks.Callback):
        """Report each epoch's objective to Optuna and end the trial when the pruner says so; then the budget."""

        def __init__(self, trial):
            super().__init__()
            self.trial, self.pruned = trial, False

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(OBJECTIVE, math.nan)
            if math.isfinite(value):
                self.trial.report(value, epoch + 1)
                if not self.model.stop_training and self.trial.should_prune():
                    self.model.stop_training, self.pruned = True, True
            if clock.spent:
                self.model.stop_training = True

    def objective(trial) -> float:
        cfg = race.config(suggest(trial, race))
        train.reset_state(cfg)
        x, y, parts = train.trial_data(cfg, race.dataset)
        model = models.build(cfg)
        train.compile_model(model, cfg, math.ceil(len(x) / cfg.batch_size))
        name, pruning = str(trial.number), Pruning(trial)
        try:
            last = train.fit(model, cfg, x, y, parts, clock.reporter(name), folder / f"trial_{name}",
                             callbacks=[pruning])
        except BudgetSpent:
            clock.say(f"trial {name} stopped: the budget ran out during its epoch, which does not count")
            raise optuna.TrialPruned("the budget is spent") from None
        if pruning.pruned or not last.get("final"):  # by the pruner, or cut by the budget: not a complete trial
            shutil.rmtree(folder / f"trial_{name}", ignore_errors=True)
            clock.say(f"trial {name} " + (f"pruned after epoch {last['epoch']}" if pruning.pruned else
                                          f"stopped after epoch {last['epoch']}: the budget is spent"))
            raise optuna.TrialPruned()
        value = float(last[OBJECTIVE])
        if value > best["value"]:  # keep the best model only
            if best["number"] is not None:
                shutil.rmtree(folder / f"trial_{best['number']}", ignore_errors=True)
            best.update(value=value, number=name)
        else:
            shutil.rmtree(folder / f"trial_{name}", ignore_errors=True)
        return value

    clock.started = time.time()
    error = ""
    try:
        study.optimize(objective, callbacks=[lambda study, trial: study.stop() if clock.spent else None],
                       catch=(Exception,), gc_after_trial=True)
    except Exception as err:  # noqa: BLE001
        error = f"{type(err).__name__}: {err}"
    wall = clock.elapsed()
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    out = Outcome(system, "one trial at a time in this process (Optuna's n_jobs runs threads of one process, "
                          "which Keras' global state does not allow)", clock.records, wall, clock.over, failed,
                  folder=system, ranking="Optuna's study.best_trial: the best objective among complete (not "
                                         "pruned) trials", status="failed" if error and not clock.records else "ran",
                  note=error)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete and best["number"] is not None:
        trial = study.best_trial
        cfg = race.config(trial.params)
        model = load_model(folder / f"trial_{trial.number}" / "model.keras")
        out.first, out.first_trial, out.first_objective = race.evaluate(model, cfg, str(trial.number)), \
            str(trial.number), float(trial.value)
    return out


RUNNERS: dict[str, Callable[[Race, str], Outcome]] = {
    "lungsearch-random": run_lungsearch, "lungsearch-tpe": run_lungsearch,
    "keras-tuner-random": run_keras_tuner, "keras-tuner-hyperband": run_keras_tuner, "optuna": run_optuna,
}


# --- the record: curves, time to target, test metrics ------------------------------------------------------------

def curve(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Best-so-far: after each counted epoch (in the order they ended), the time since the system started, the
    epochs trained so far and the best objective any trial had reached."""
    rows = sorted(records, key=lambda r: r["t_s"])
    best, out = -math.inf, []
    for k, r in enumerate(rows, 1):
        if math.isfinite(r["objective"]):
            best = max(best, r["objective"])
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
    rows = []
    for o in outcomes:
        c = curve(o.records)
        reached = c[c["best"] >= target] if len(c) else c
        trials = {r["trial"] for r in o.records}
        rows.append({
            "system": o.system, "what": SYSTEMS[o.system], "status": o.status, "parallelism": o.parallelism,
            "budget": race.budget.text(), "epochs": len(o.records), "epochs_over_budget": o.over,
            "wall_s": round(o.wall_s, 1), "first_epoch_s": c["t_s"].iloc[0] if len(c) else math.nan,
            "trials": len(trials),
            "trials_ended": len({r["trial"] for r in o.records if r["final"]}), "trials_failed": o.failed_trials,
            "best_objective": c["best"].iloc[-1] if len(c) else math.nan, "target": target,
            "time_to_target_s": reached["t_s"].iloc[0] if len(reached) else math.nan,
            "epochs_to_target": int(reached["epochs"].iloc[0]) if len(reached) else math.nan,
            "first_ranked": o.first_trial, "first_ranked_objective": o.first_objective, "ranking": o.ranking,
            **test_columns(o.first), "folder": o.folder, "note": o.note,
        })
    return pd.DataFrame(rows)


def minutes(seconds: float) -> str:
    return "–" if not math.isfinite(seconds) else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def with_ci(row, key: str) -> str:
    v = row[key]
    return "–" if not math.isfinite(v) else f"{v:.4f} [{row[key + '_lo']:.3f}, {row[key + '_hi']:.3f}]"


def verdict(race: Race, table: pd.DataFrame, outcomes: list[Outcome], ref: pd.DataFrame) -> list[str]:
    """The findings in sentences: who reached the target first, whose first-ranked model tests best, and whether
    the test part can tell them apart."""
    lines, ran = [], table[table["status"] == "ran"]
    best_ref = ref.loc[ref["objective"].idxmax()]
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
    s, b = race.settings, race.budget
    lines = [f"# lungsearch versus keras-tuner and Optuna: {race.space.name}", ""]
    lines += [f"- {line}" for line in verdict(race, table, outcomes, ref)]
    lines += ["", "## Systems", "",
              "| system | status | parallelism | trials (ended) | epochs | wall | first epoch at | best val AUC | "
              "time to target | epochs to target | first-ranked | its val AUC | test AUC [95% CI] | F1* | accuracy* | "
              "recall* | specificity* |", "|" + " --- |" * 17]
    for r in table.itertuples():
        row = table.loc[r.Index]
        lines.append(
            f"| {r.system} | {r.status} | {r.parallelism or '–'} | {r.trials} ({r.trials_ended}) | {r.epochs}"
            + (f" (+{r.epochs_over_budget} over)" if r.epochs_over_budget else "") + f" | {minutes(r.wall_s)} | "
            f"{minutes(r.first_epoch_s)} | {analysis.fmt(r.best_objective)} | {minutes(r.time_to_target_s)} | "
            f"{'–' if not math.isfinite(r.epochs_to_target) else int(r.epochs_to_target)} | "
            f"{r.first_ranked or '–'} | "
            f"{analysis.fmt(r.first_ranked_objective)} | {with_ci(row, 'test_auc')} | "
            + " | ".join(with_ci(row, f"test_{m}_at_threshold") for m in ("f1", "accuracy", "recall", "specificity"))
            + " |")
    lines += ["", "\\* at the threshold chosen on the validation part (the one that maximises validation F1). "
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
    sizes = race.loaded and data.split_summary(race.loaded, data.make_split(race.loaded, s.split, s.split_seed,
                                                                             s.data_limit), s.split)["parts"]
    budget_words = (f"{b.epochs} epochs per system, summed over its trials, in the order they ended; an "
                    f"in-process system stops at exactly that many, lungsearch's Ray driver counts the epochs its "
                    f"trials report and stops them all at the last one" if b.epochs else
                    f"{b.seconds / 60:g} minutes of wall time per system, from the moment it starts (lungsearch's "
                    f"Ray start-up included); only epochs that ended within it count")
    lines += ["", "## How the race ran", "",
              f"- Space: `{race.space.path}`; objective: {OBJECTIVE_TEXT} (every system compares it, "
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
              "or the epoch cap); a keras-tuner Hyperband round is a trial of its own. Epochs (+ over): epochs "
              "counted (+ epochs trained past the budget, not counted).",
              "", "Files: versus.csv (this table), curves.csv (every counted epoch with the best so far), "
              f"{figure.name}; reference/ (the three models), and each system's own folder."]
    path = race.dir / "versus.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def quiet() -> None:
    """Keep the notices the race expects off the console: TensorFlow retracing a new model's training step (every
    trial builds one), Keras skipping a saved optimizer's state (a Hyperband round goes on from the weights of the
    round before, with a new optimizer, as keras-tuner intends), and Optuna moving a range's end onto its step's
    grid (0.6 is not a whole multiple of 0.1 in floating point)."""
    import logging
    import warnings

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
    warnings.filterwarnings("ignore", message=".*the range is not divisible by `step`")  # Optuna: 0.6 / 0.1


def race(space_path, data_arg: str | None = None, results_dir: str | Path = "results", smoke: bool = False,
         budget_epochs: float | None = None, budget_minutes: float | None = None, **overrides: Any) -> Path:
    """Run the race and write its record; return its folder. `overrides`: the search settings the command line
    sets (image_size, max_epochs, seed, split)."""
    from .figures import fig_versus
    from .run.settings import resolve_settings

    quiet()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = resolve_settings(spaces.load(space_path), overrides, smoke)
    budget = budget_from(settings, smoke, budget_epochs, budget_minutes)
    started = time.time()
    r = prepare(space_path, data_arg, results_dir, smoke, budget, overrides)
    print(f"race folder: {r.dir}", flush=True)
    print(f"budget: {budget.text()} per system; systems: {', '.join(SYSTEMS)}", flush=True)
    print("reference: the source report's three models, once, outside every budget (the target)", flush=True)
    ref = reference(r)
    target = float(ref["objective"].max())
    print(f"target: validation AUC {target:.4f} ({ref.loc[ref['objective'].idxmax(), 'model']})", flush=True)
    outcomes = []
    for k, system in enumerate(SYSTEMS, 1):
        print(f"== [{k}/{len(SYSTEMS)}] {system}: {SYSTEMS[system]}, budget {budget.text()} ==", flush=True)
        try:
            o = RUNNERS[system](r, system)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001  one system failing does not end the race
            (r.dir / f"{system}-error.txt").write_text(traceback.format_exc())
            o = Outcome(system, "", status="failed", note=f"{type(err).__name__}: {err} (traceback in "
                                                          f"{system}-error.txt)")
        c = curve(o.records)
        best = analysis.fmt(c["best"].iloc[-1]) if len(c) else "–"
        print(f"== {system}: {o.status}, {count(len(o.records), 'epoch')} in {minutes(o.wall_s)}, best val AUC {best}"
              + (f"; {o.note}" if o.note else ""), flush=True)
        outcomes.append(o)
    table = summary(r, outcomes, target)
    table.to_csv(r.dir / "versus.csv", index=False)
    curves = {o.system: curve(o.records) for o in outcomes if o.records}
    pd.concat([c.assign(system=s) for s, c in curves.items()] or [pd.DataFrame()]).to_csv(r.dir / "curves.csv",
                                                                                          index=False)
    ref.to_csv(r.dir / "reference.csv", index=False)
    figure = fig_versus(curves, target, budget.epochs, budget.seconds, r.dir)
    report = write_markdown(r, table, outcomes, ref, figure, time.time() - started)
    print(report.read_text(), flush=True)
    return r.dir

