"""What is searched and in what order: Ray's param space with the report's fixed points, the searcher (seeded
random, or TPE with the fixed points first) and the ASHA scheduler that never stops a fixed point."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, Searcher

from .. import space as spaces
from ..config import FIXED_POINTS, SearchSettings, TrialConfig


def build_trials(space: spaces.Space, settings: SearchSettings, run_constants: dict[str, Any], held: list[str]):
    """Ray's param_space and the fixed points (full configs for points_to_evaluate). Parameters in `held`
    are not searched (a smoke run holds the image size)."""
    sampled = {k: v for k, v in spaces.ray_space(space).items() if k not in held}
    defaults = TrialConfig().to_dict()
    # Ray only lets a point set keys of param_space: the keys the fixed points change go in at the report's
    # defaults, which is what a sampled trial that does not search them should get anyway.
    changed = {k: defaults[k] for changes in FIXED_POINTS.values() for k in changes}
    param_space = {**changed, **run_constants, **sampled, "fixed_point": ""}
    points = []
    if settings.fixed_points:
        for name, changes in FIXED_POINTS.items():
            # every sampled key must be set, else the searcher samples it: the run's value or the report's
            point = {k: run_constants.get(k, defaults[k]) for k in sampled}
            points.append({**point, **changes, "fixed_point": name})
    return param_space, points


def searcher(settings: SearchSettings, points: list[dict]):
    """Seeded random search, or Optuna's TPE (`searcher: tpe`), with the fixed points run first. TPE learns from
    every trial's objective at the first rung (grace_period epochs), a budget every trial reaches, so the objectives
    it compares come from one fidelity (as BOHB fits its model per budget)."""
    if settings.searcher == "tpe":
        from ray.tune.search.optuna import OptunaSearch

        sampler = ExploringTPE(settings.random_fraction, seed=settings.seed, n_startup_trials=10)
        return FixedPointsFirst(OptunaSearch(sampler=sampler), points,
                                tell_at=min(settings.grace_period, settings.stage_epochs))
    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=settings.seed)


class ExploringTPE(optuna.samplers.TPESampler):
    """Optuna's TPE, but a share (`random_fraction`) of its trials after the first n_startup_trials draws every
    parameter at random, as BOHB does with its random fraction. Which trials explore depends on the seed and the
    trial's number only, so a resumed search makes the same choice. TPE still learns from every trial."""

    def __init__(self, random_fraction: float, seed: int = 0, **kwargs: Any):
        super().__init__(seed=seed, **kwargs)
        self.random_fraction, self.explore_seed = random_fraction, seed
        # a stream of its own: seeded as TPE's startup sampler is, it would draw the startup trials again
        self.uniform = optuna.samplers.RandomSampler(seed=int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]))

    def explores(self, trial: optuna.trial.FrozenTrial) -> bool:
        return bool(np.random.default_rng([self.explore_seed, 3, trial.number]).random() < self.random_fraction)

    def infer_relative_search_space(self, study, trial):
        return {} if self.explores(trial) else super().infer_relative_search_space(study, trial)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if self.explores(trial):
            return self.uniform.sample_independent(study, trial, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)


class FixedPointsFirst(Searcher):
    """Suggest the fixed points first, then what a model-based searcher suggests. The searcher never sees
    the fixed points: it did not propose them, and they need keys outside its space.

    `tell_at` (epochs, 0: at the end): the searcher is told a trial's objective once the trial has trained that
    many epochs, and learns nothing from it after; a trial that ends sooner is told its last result."""

    def __init__(self, inner: Searcher, points: list[dict], tell_at: int = 0):
        super().__init__()
        self.inner, self.points, self.fixed_ids, self.tell_at, self.told = inner, list(points), set(), tell_at, set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        super().set_search_properties(metric, mode, config, **spec)
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.points:
            self.fixed_ids.add(trial_id)
            return self.points.pop(0)
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.fixed_ids or trial_id in self.told:
            return
        if self.tell_at and result.get("training_iteration", 0) >= self.tell_at:
            self.told.add(trial_id)
            self.inner.on_trial_complete(trial_id, result)
        else:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id not in self.fixed_ids and trial_id not in self.told:
            self.told.add(trial_id)
            self.inner.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Everything in the one file Tune names: Tune saves to a temporary name and renames that file only, so
        the inner searcher's state (written by its own save, in a private temporary folder) goes inside it."""
        with tempfile.TemporaryDirectory(prefix="lungsearch-searcher-") as tmp:
            self.inner.save(os.path.join(tmp, "inner"))
            inner = Path(tmp, "inner").read_bytes()
        state = {"points": self.points, "fixed_ids": self.fixed_ids, "inner": inner, "told": self.told,
                 "tell_at": self.tell_at}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        with tempfile.TemporaryDirectory(prefix="lungsearch-searcher-") as tmp:
            Path(tmp, "inner").write_bytes(state["inner"])
            self.inner.restore(os.path.join(tmp, "inner"))
        self.points, self.fixed_ids = list(state["points"]), set(state["fixed_ids"])
        self.told, self.tell_at = set(state["told"]), state["tell_at"]


class FixedPointASHA(AsyncHyperBandScheduler):
    """ASHA that never stops a fixed point. Fixed points are still recorded in the rungs, so a sampled
    trial is judged against the report's models as well as against the other trials."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if trial.config.get("fixed_point"):
            if action == TrialScheduler.STOP:
                self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action
