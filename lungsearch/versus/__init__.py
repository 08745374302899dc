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
folder, whose path is the last line printed. No Ray here: lungsearch's systems run through lungsearch.run.

A trial that raises is recorded, not fatal: its traceback goes into the race's folder as
failures/<system>/<trial>.txt, and the race counts it. A system with no successful trial failed: the record says
so, and race() raises SystemsFailed once the record is written (`lungsearch versus` exits 1). An in-process system
stops after FAILURES_IN_A_ROW failed trials in a row; lungsearch's own search runs its planned trials.

  driver               the race: the target, each system in turn, the record
  shared               what the systems share: the race's data and budget (Race), what a system did (Outcome)
  clock                an in-process system's budget and record of its epochs
  lungsearch_system    lungsearch's own search, through lungsearch.run
  kt_system            keras-tuner's RandomSearch and Hyperband
  optuna_system        Optuna's TPE sampler and successive-halving pruner
  stats                best-so-far curves, time to target, test metrics
  markdown             versus.md"""

from .clock import Budget, BudgetSpent, Clock
from .optuna_system import suggest
from .driver import RUNNERS, SystemsFailed, race
from .shared import SYSTEMS, Outcome, Race, budget_from

__all__ = ["Budget", "BudgetSpent", "Clock", "Outcome", "RUNNERS", "Race", "SYSTEMS", "SystemsFailed", "budget_from",
           "race", "suggest"]
