"""keras-tuner in the race: RandomSearch and Hyperband around lungsearch's build and fit."""
from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

from ..config import OBJECTIVE, TrialConfig
from .clock import BudgetSpent, Clock
from .shared import FAILURES_IN_A_ROW, Outcome, Race


def hypermodel_class():
    """A keras-tuner HyperModel around lungsearch's own build and training loop. Made on first use (keras-tuner
    imports Keras)."""
    import keras
    import keras_tuner as kt

    from .. import models, train

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
            return {OBJECTIVE.key: OBJECTIVE.best(kept)}  # the kept epoch's, within the budget

    class StopWhenSpent(keras.callbacks.Callback):
        """After every other callback of the epoch (keras-tuner's checkpoint of the best epoch included): end the
        trial when that epoch spent the budget."""

        def __init__(self, clock: Clock):
            super().__init__()
            self.clock = clock

        def on_epoch_end(self, epoch, logs=None):
            if self.clock.spent:
                self.model.stop_training = True

    return LungHyperModel


def tuner_classes():
    """keras-tuner's RandomSearch and Hyperband, made to stop at the race's budget. Made on first use."""
    import keras_tuner as kt

    class Raced:
        """What the race changes in a keras-tuner tuner: no new trial once the budget is spent, a line for each
        trial that fails, and no import of TensorBoard's hparams plugin when no TensorBoard callback is given
        (keras-tuner imports it for every trial with the TensorFlow backend, to configure TensorBoard callbacks; the
        race passes none, and tensorflow-cpu does not install tensorboard)."""

        def pre_create_trial(self):
            if self.hypermodel.clock.spent:
                self.oracle.max_trials = max(len(self.oracle.trials), 1)

        def on_trial_begin(self, trial):
            self.hypermodel.trial = trial.trial_id  # the records' name for the trial
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            if trial.message:  # it raised (keras-tuner keeps the traceback)
                self.hypermodel.clock.say(f"trial {trial.trial_id} failed: {trial.message.strip().splitlines()[-1]}")
            super().on_trial_end(trial)

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            if any(type(c).__name__ == "TensorBoard" for c in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

    class RandomSearch(Raced, kt.RandomSearch):
        pass

    class Hyperband(Raced, kt.Hyperband):
        pass

    return RandomSearch, Hyperband


def run_keras_tuner(race: Race, system: str) -> Outcome:
    """keras-tuner's RandomSearch or Hyperband on the space's own `hp` declarations, one trial at a time in this
    process; its project folder goes into the race's folder. After FAILURES_IN_A_ROW failed trials keras-tuner
    raises, and the system ends there."""
    import keras_tuner as kt

    random_search, hyperband = tuner_classes()
    clock = Clock(system, race.budget)
    hypermodel = hypermodel_class()(race, clock)
    s, b = race.settings, race.budget
    most = b.epochs + 1 if b.epochs else int(b.seconds) + 1
    common = dict(objective=kt.Objective(OBJECTIVE.key, OBJECTIVE.mode), seed=s.seed + 1,  # keras-tuner reads seed 0 as unseeded
                  hyperparameters=race.space.hp.copy(), tune_new_entries=False, directory=str(race.dir),
                  project_name=system, overwrite=True, max_consecutive_failed_trials=FAILURES_IN_A_ROW)
    if system == "keras-tuner-hyperband":
        tuner = hyperband(hypermodel, max_epochs=s.max_epochs, factor=s.reduction_factor,
                          hyperband_iterations=10 ** 6, **common)
        ranking = "keras-tuner's oracle: the best objective of any round of any trial (its best epoch's weights)"
    else:
        tuner = random_search(hypermodel, max_trials=most, **common)
        ranking = "keras-tuner's oracle: the best objective of any trial (its best epoch's weights)"
    clock.started = time.time()
    error, note = "", ""
    try:
        tuner.search(verbose=0)
    except Exception as err:  # noqa: BLE001  e.g. keras-tuner's limit of failed trials in a row
        error, note = traceback.format_exc(), f"{type(err).__name__}: {first_line(err)}"
    ended = [t for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID")]
    raised = {t.trial_id: t.message for t in ended if t.message}  # a trial without a score but no error: not one
    out = Outcome(system, "one trial at a time in this process (keras-tuner runs trials in parallel only as "
                          "separate processes with its chief/worker setup)", clock.records, clock.elapsed(),
                  clock.over, succeeded=len(ended) - len(raised), failures=raised, error=error, folder=system,
                  ranking=ranking, note=note)
    rank_first(race, tuner, out)
    return out


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def rank_first(race: Race, tuner, out: Outcome) -> None:
    """The oracle's best trial, evaluated on test; the other trials' saved weights are deleted (keras-tuner keeps
    every trial's best epoch)."""
    best = tuner.oracle.get_best_trials(1)
    if best and math.isfinite(best[0].score or math.nan):
        trial = best[0]
        model = tuner.load_model(trial)
        cfg = race.config(trial.hyperparameters.values)
        out.first, out.first_trial, out.first_objective = race.evaluate_model(model, cfg, trial.trial_id), trial.trial_id, \
            float(trial.score)
    for other in tuner.oracle.trials.values():
        if not best or other.trial_id != best[0].trial_id:
            for weights in Path(tuner.get_trial_dir(other.trial_id)).glob("checkpoint*"):
                weights.unlink()
