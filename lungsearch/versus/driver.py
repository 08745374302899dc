"""The race: the target first, then each system in turn, then its record (versus.csv, curves.csv, reference.csv,
versus.md, versus.png, and failures/ with the traceback of each trial that failed)."""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .. import analysis
from ..config import FIXED_POINTS, OBJECTIVE, TrialConfig, UserError, count
from .kt_system import run_keras_tuner
from .lungsearch_system import run_lungsearch
from .markdown import minutes, write_markdown
from .optuna_system import run_optuna
from .shared import FAILURES_DIR, SYSTEMS, Outcome, Race, budget_from, prepare_race
from .stats import curve, summary, test_columns

RUNNERS: dict[str, Callable[[Race, str], Outcome]] = {
    "lungsearch-random": run_lungsearch, "lungsearch-tpe": run_lungsearch,
    "keras-tuner-random": run_keras_tuner, "keras-tuner-hyperband": run_keras_tuner, "optuna": run_optuna,
}


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


def reference(race: Race) -> pd.DataFrame:
    """Train the report's three models (config.FIXED_POINTS) at the race's settings, each to its own end, and
    evaluate them on test. The best validation objective among them is the target every system races to."""
    from .. import train
    from ..predict import load_model

    rows = []
    for name, changes in FIXED_POINTS.items():
        cfg = TrialConfig.from_dict({**race.base, **changes, "fixed_point": name})
        started = time.time()
        last = train.run_trial(cfg.to_dict(), lambda row: None, checkpoint_dir=race.dir / "reference" / name)
        wall = time.time() - started
        ev = race.evaluate_model(load_model(race.dir / "reference" / name / "model.keras"), cfg, name)
        print(f"reference {name}: {count(int(last['epoch']), 'epoch')} in {wall:.0f} s, val AUC (objective) "
              f"{last[OBJECTIVE.key]:.4f}, test AUC {ev.test['auc']:.4f}", flush=True)
        rows.append({"model": name, "epochs": int(last["epoch"]), "kept_epoch": int(last["kept_epoch"]),
                     "wall_s": round(wall, 1), "objective": float(last[OBJECTIVE.key]), **test_columns(ev)})
    return pd.DataFrame(rows)


class SystemsFailed(Exception):
    """The race ran and wrote its record, but a system had no successful trial: `lungsearch versus` exits 1, as
    `run` does when every trial failed."""

    exit_code = 1

    def __init__(self, systems: list[str], folder: Path):
        self.systems, self.folder = systems, folder
        super().__init__(f"no trial succeeded in {', '.join(systems)}, so {'it' if len(systems) == 1 else 'they'} "
                         f"failed; the race's record is in {folder} (versus.md) and each failed trial's traceback "
                         f"in {folder / FAILURES_DIR}/<system>/")


def run_system(race: Race, system: str) -> Outcome:
    """One system's turn, its status settled (failed without a successful trial) and its failed trials'
    tracebacks written into the race's folder. A system that raises does not end the race."""
    try:
        outcome = RUNNERS[system](race, system)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001  one system failing does not end the race
        outcome = Outcome(system, "", error=traceback.format_exc(), note=f"{type(err).__name__}: {err}")
    outcome.settle()
    outcome.write_failures(race.dir)
    return outcome


def write_record(race: Race, outcomes: list[Outcome], ref: pd.DataFrame, wall_s: float) -> Path:
    """versus.csv, curves.csv, reference.csv, versus.png and versus.md; return versus.md's path."""
    from ..figures import fig_versus

    target = OBJECTIVE.best(ref[OBJECTIVE.key])
    table = summary(race, outcomes, target)
    table.to_csv(race.dir / "versus.csv", index=False)
    curves = {o.system: curve(o.records) for o in outcomes if o.records}
    pd.concat([c.assign(system=s) for s, c in curves.items()] or [pd.DataFrame()]).to_csv(race.dir / "curves.csv",
                                                                                          index=False)
    ref.to_csv(race.dir / "reference.csv", index=False)
    figure = fig_versus(curves, target, race.budget.epochs, race.budget.seconds, race.dir)
    return write_markdown(race, table, outcomes, ref, figure, wall_s)


def systems_from(names: list[str] | None) -> list[str]:
    """The systems to race, in SYSTEMS' order: all of them by default; a name that is not one is a UserError."""
    if not names:
        return list(SYSTEMS)
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise UserError(f"unknown system {', '.join(map(repr, unknown))} in --systems; the systems: "
                        f"{', '.join(SYSTEMS)}")
    return [s for s in SYSTEMS if s in names]


def race(space_path, data_arg: str | None = None, results_dir: str | Path = "results", smoke: bool = False,
         budget_epochs: float | None = None, budget_minutes: float | None = None, systems: list[str] | None = None,
         **overrides: Any) -> Path:
    """Run the race and write its record; return its folder, or raise SystemsFailed (after the record is written)
    when a system had no successful trial. `systems`: which of SYSTEMS race (default: all). `overrides`: the
    search settings the command line sets (image_size, max_epochs, seed, split)."""
    quiet()
    systems = systems_from(systems)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    started = time.time()
    r = prepare_race(space_path, data_arg, results_dir, smoke, overrides,
                budget_of=lambda settings: budget_from(settings, smoke, budget_epochs, budget_minutes))
    budget = r.budget
    print(f"race folder: {r.dir}", flush=True)
    print(f"budget: {budget.text()} per system; systems: {', '.join(systems)}", flush=True)
    print("reference: the source report's three models, once, outside every budget (the target)", flush=True)
    ref = reference(r)
    first = ref.sort_values(OBJECTIVE.key, ascending=not OBJECTIVE.descending).iloc[0]
    print(f"target: validation AUC {first[OBJECTIVE.key]:.4f} ({first['model']})", flush=True)
    outcomes = []
    for k, system in enumerate(systems, 1):
        print(f"== [{k}/{len(systems)}] {system}: {SYSTEMS[system]}, budget {budget.text()} ==", flush=True)
        o = run_system(r, system)
        c = curve(o.records)
        best = analysis.fmt(c["best"].iloc[-1]) if len(c) else "–"
        print(f"== {system}: {o.status}, {count(len(o.records), 'epoch')} in {minutes(o.wall_s)}, best val AUC {best}"
              + (f"; {o.note}" if o.note else ""), flush=True)
        outcomes.append(o)
    report = write_record(r, outcomes, ref, time.time() - started)
    print(report.read_text(), flush=True)
    failed = [o.system for o in outcomes if o.status == "failed"]
    if failed:
        raise SystemsFailed(failed, r.dir)
    return r.dir
