"""What every system of the race shares: the systems, the race's data, split and budget, what a system did, and
the target (the source report's three models)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import analysis, data, space as spaces
from ..config import SMOKE, SearchSettings, TrialConfig, UserError
from .clock import Budget

SYSTEMS = {  # name: what it is, in words
    "lungsearch-random": "lungsearch (Ray Tune, ASHA, random sampling)",
    "lungsearch-tpe": "lungsearch (Ray Tune, ASHA, Optuna's TPE sampling)",
    "keras-tuner-random": "keras-tuner RandomSearch",
    "keras-tuner-hyperband": "keras-tuner Hyperband",
    "optuna": "Optuna (TPE sampler, successive-halving pruner)",
}
LUNGSEARCH = ("lungsearch-random", "lungsearch-tpe")
DEFAULT_TRIALS = 10  # without a budget flag: as many epochs as this many trials of max_epochs
FAILURES_IN_A_ROW = 3  # an in-process system stops after this many trials in a row failed (keras-tuner's default)
FAILURES_DIR = "failures"  # in the race's folder: failures/<system>/<trial>.txt, each failed trial's traceback


@dataclass
class Outcome:
    """What one system did: its counted epochs (records), how it ran, its trials that succeeded (ran without
    raising) and those that failed, and the model it ranks first. A system with no successful trial failed."""

    system: str
    parallelism: str
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    over: int = 0
    succeeded: int = 0  # trials that ran without raising (to their end, or stopped early, pruned or cut by the budget)
    failures: dict[str, str] = field(default_factory=dict)  # each failed trial: its traceback
    error: str = ""  # the traceback of an error the system raised outside its trials
    first: analysis.Evaluation | None = None
    first_trial: str = ""
    first_objective: float = math.nan
    ranking: str = ""  # how the system picks its first-ranked model
    folder: str = ""
    status: str = "ran"  # ran | skipped | failed
    note: str = ""

    def settle(self) -> None:
        """The status from the trials: failed when no trial succeeded (skipped stays skipped); the note counts the
        failed trials."""
        if self.status == "skipped":
            return
        self.status = "ran" if self.succeeded else "failed"
        said = ""
        if self.failures:
            n = len(self.failures)
            said = (f"{n} of {self.succeeded + n} trials failed" if self.succeeded else
                    f"no trial succeeded: {'the one' if n == 1 else f'all {n}'} failed")
            said += f" (tracebacks in {self.failures_dir()}/)"
        elif not self.succeeded:
            said = "no trial succeeded"
        raised = f"{self.note} (traceback in {self.failures_dir()}/error.txt)" if self.error else self.note
        self.note = "; ".join(text for text in (said, raised) if text)

    def failures_dir(self) -> str:
        return f"{FAILURES_DIR}/{self.system}"

    def write_failures(self, race_dir: Path) -> None:
        """Each failed trial's traceback as failures/<system>/<trial>.txt, and the system's own error (raised
        outside its trials) as failures/<system>/error.txt."""
        if not self.failures and not self.error:
            return
        folder = race_dir / self.failures_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for trial, text in self.failures.items():
            (folder / f"{trial}.txt").write_text(text)
        if self.error:
            (folder / "error.txt").write_text(self.error)


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

    def evaluate_model(self, model, cfg: TrialConfig, name: str) -> analysis.Evaluation:
        """The model on the validation and test parts: metrics at 0.5 and at the threshold chosen on validation,
        with 95% patient bootstrap intervals on test."""
        from .. import models, train

        _, _, parts = train.trial_data(cfg, self.dataset)
        y = {k: labels.ravel() for k, (_, labels) in parts.items()}
        p = {k: models.predict_proba(model, x, cfg.tta) for k, (x, _) in parts.items()}
        return analysis.evaluate_probabilities(name, [name], [cfg.image_size], y, p, 1000, cfg.seed, cfg.fixed_point, self.groups)


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


def prepare_race(space_path, data_arg, results_dir, smoke: bool, overrides: dict[str, Any],
                 budget_of: Callable[[SearchSettings], Budget]) -> Race:
    """Check the inputs (the space once, and `budget_of` its settings: the race's budget), read the data and make
    the race's folder (UserError before any work for a mistake)."""
    from ..run.folder import new_run_folder
    from ..run.plan import make_plan, read_space
    from ..run.settings import data_dir_from

    data.check_results_folder(results_dir)
    space, settings = read_space(space_path, overrides, smoke)
    if not space.params:
        raise UserError(f"space {space.path} searches nothing (no `hp` declarations): every system would train the "
                        f"same model; race a space that searches something, e.g. ablation")
    budget = budget_of(settings)
    plan = make_plan(space, settings, data_dir_from(data_arg), smoke)
    settings, data_dir, cache_dir, ds, split = plan.settings, plan.data_dir, plan.cache_dir, plan.dataset, plan.split
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
    return Race(space, settings, overrides, smoke, data_dir, plan.scanned, ds, base, held, budget, folder, groups)
