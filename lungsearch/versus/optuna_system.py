"""Optuna in the race: its TPE sampler with its successive-halving pruner, around lungsearch's build and fit."""
from __future__ import annotations

import importlib.util
import math
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from .. import space as spaces
from ..config import OBJECTIVE
from .clock import BudgetSpent, Clock
from .shared import FAILURES_IN_A_ROW, Outcome, Race


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


def pruning_callback(trial, clock: Clock):
    """A Keras callback that reports each epoch's objective to Optuna and ends the trial when the pruner says so,
    or when the budget is spent. Its `pruned` says whether the pruner ended the trial."""
    import keras

    class Pruning(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.pruned = False

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(OBJECTIVE.key, math.nan)
            if math.isfinite(value):
                trial.report(value, epoch + 1)
                if not self.model.stop_training and trial.should_prune():
                    self.model.stop_training, self.pruned = True, True
            if clock.spent:
                self.model.stop_training = True

    return Pruning()


class Objective:
    """Optuna's objective: train the trial's config with lungsearch's build and fit, counted against the budget,
    and keep the saved model of the best complete trial only (in the system's folder, trial_<number>). A trial
    that raises is recorded with its traceback (`failures`) before Optuna marks it failed."""

    def __init__(self, race: Race, clock: Clock, folder: Path):
        self.race, self.clock, self.folder = race, clock, folder
        self.best_value, self.best_number = OBJECTIVE.worst, None
        self.failures: dict[str, str] = {}

    def __call__(self, trial) -> float:
        import optuna

        try:
            return self.train(trial)
        except optuna.TrialPruned:
            raise
        except Exception:
            self.failures[str(trial.number)] = traceback.format_exc()
            self.clock.say(f"trial {trial.number} failed: {traceback.format_exc().strip().splitlines()[-1]}")
            raise

    def train(self, trial) -> float:
        import optuna

        from .. import models, train

        cfg = self.race.config(suggest(trial, self.race))
        train.reset_state(cfg)
        x, y, parts = train.trial_data(cfg, self.race.dataset)
        model = models.build(cfg)
        train.compile_model(model, cfg, math.ceil(len(x) / cfg.batch_size))
        name, pruning = str(trial.number), pruning_callback(trial, self.clock)
        try:
            last = train.fit(model, cfg, x, y, parts, self.clock.reporter(name), self.folder / f"trial_{name}",
                             callbacks=[pruning])
        except BudgetSpent:
            self.clock.say(f"trial {name} stopped: the budget ran out during its epoch, which does not count")
            raise optuna.TrialPruned("the budget is spent") from None
        if pruning.pruned or not last.get("final"):  # by the pruner, or cut by the budget: not a complete trial
            shutil.rmtree(self.folder / f"trial_{name}", ignore_errors=True)
            self.clock.say(f"trial {name} " + (f"pruned after epoch {last['epoch']}" if pruning.pruned else
                                               f"stopped after epoch {last['epoch']}: the budget is spent"))
            raise optuna.TrialPruned()
        value = float(last[OBJECTIVE.key])
        if OBJECTIVE.better(value, self.best_value):  # keep the best model only
            if self.best_number is not None:
                shutil.rmtree(self.folder / f"trial_{self.best_number}", ignore_errors=True)
            self.best_value, self.best_number = value, name
        else:
            shutil.rmtree(self.folder / f"trial_{name}", ignore_errors=True)
        return value


def failed_in_a_row(study) -> bool:
    """Whether the study's last FAILURES_IN_A_ROW trials all failed."""
    import optuna

    last = study.trials[-FAILURES_IN_A_ROW:]
    return len(last) == FAILURES_IN_A_ROW and all(t.state == optuna.trial.TrialState.FAIL for t in last)


def run_optuna(race: Race, system: str) -> Outcome:
    """Optuna's TPE sampler with its successive-halving pruner (ASHA's rule, at lungsearch's grace period and
    reduction factor), one trial at a time in this process. It stops when the budget is spent, or after
    FAILURES_IN_A_ROW failed trials."""
    if importlib.util.find_spec("optuna") is None:
        return Outcome(system, "", status="skipped", note='Optuna is not installed (pip install -e ".[tpe]")')
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is told once, by Objective
    s, clock = race.settings, Clock(system, race.budget)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min(s.grace_period, s.max_epochs),
                                                    reduction_factor=s.reduction_factor)
    study = optuna.create_study(direction=OBJECTIVE.direction, sampler=optuna.samplers.TPESampler(seed=s.seed), pruner=pruner)
    objective = Objective(race, clock, race.dir / system)
    clock.started = time.time()
    error, note = "", ""
    try:
        study.optimize(objective, callbacks=[lambda study, trial: study.stop() if clock.spent or
                                             failed_in_a_row(study) else None],
                       catch=(Exception,), gc_after_trial=True)  # a failed trial is recorded and the search goes on
    except Exception as err:  # noqa: BLE001
        error, note = traceback.format_exc(), f"{type(err).__name__}: {err}"
    if failed_in_a_row(study):
        note = f"stopped after {FAILURES_IN_A_ROW} failed trials in a row"
    states = optuna.trial.TrialState
    out = Outcome(system, "one trial at a time in this process (Optuna's n_jobs runs threads of one process, "
                          "which Keras' global state does not allow)", clock.records, clock.elapsed(), clock.over,
                  succeeded=sum(t.state in (states.COMPLETE, states.PRUNED) for t in study.trials),
                  failures=objective.failures, error=error, folder=system, note=note,
                  ranking="Optuna's study.best_trial: the best objective among complete (not pruned) trials")
    rank_first(race, study, objective, out)
    return out


def rank_first(race: Race, study, objective: Objective, out: Outcome) -> None:
    """The study's best complete trial, its saved model evaluated on test."""
    import optuna

    from ..predict import load_model

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete and objective.best_number is not None:
        trial = study.best_trial
        cfg = race.config(trial.params)
        model = load_model(objective.folder / f"trial_{trial.number}" / "model.keras")
        out.first, out.first_trial, out.first_objective = race.evaluate_model(model, cfg, str(trial.number)), \
            str(trial.number), float(trial.value)
