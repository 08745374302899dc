"""A search's budget (settings budget_epochs, budget_minutes): a Ray Tune stopper that ends every trial once the
trials have trained that many epochs in all, or that many minutes after the search began, and writes each epoch
as the driver received it to the run folder's budget.csv (store.read_budget_log reads it)."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from .. import store
from ..config import OBJECTIVE, SearchSettings

COLUMNS = ("at", "elapsed_s", "trial_id", "epoch", "objective", "final", "counted")


class Budget(tune.Stopper):
    """Stop every trial once the search's budget is spent.

    - `epochs`: the epoch results counted so far (every trial's, in the order the driver receives them) reach
      `epochs`; the result that reaches it is the last one counted.
    - `minutes`: that long after this stopper was made (just before the trials start). Tune asks `stop_all` between
      results too, so the trials stop at the deadline, mid-epoch if need be; a result that arrives after it is
      logged but not counted.

    Every result is appended to run_dir/budget.csv (unix time, seconds since the start, trial id, epoch, objective,
    whether it was the trial's last epoch, whether it counts). A resumed search goes on with the epochs and time
    already spent (from budget.csv and the manifest's search_wall_s)."""

    def __init__(self, run_dir: str | Path, epochs: int = 0, minutes: float = 0.0):
        self.run_dir, self.epochs, self.seconds = str(run_dir), int(epochs), float(minutes) * 60
        self.started, self.used, self.late, self.seen = time.time(), 0, False, set()

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "epochs": self.epochs, "seconds": self.seconds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """`resume` unpickles the stopper Tune saved when the search began: go on from what was spent."""
        self.__init__(state["run_dir"], state["epochs"], state["seconds"] / 60)
        self.used = sum(r["counted"] for r in store.read_budget_log(self.run_dir))
        try:
            wall = float(store.read_json(Path(self.run_dir) / "manifest.json").get("search_wall_s") or 0)
        except (OSError, ValueError):
            wall = 0.0
        self.started -= wall

    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def spent(self) -> bool:
        return self.late or bool(self.epochs and self.used >= self.epochs) or bool(
            self.seconds and self.elapsed() >= self.seconds)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        key = (trial_id, result.get("training_iteration"), result.get("time_total_s"))
        if key not in self.seen:  # Tune passes a trial's last result again when its function returns
            self.seen.add(key)
            elapsed = self.elapsed()
            counted = not self.spent
            self.late = self.late or not counted
            self.used += counted
            objective = result.get(OBJECTIVE.key)
            row = {"at": f"{time.time():.3f}", "elapsed_s": f"{elapsed:.3f}", "trial_id": trial_id,
                   "epoch": result.get("epoch", result.get("training_iteration")),
                   "objective": "" if objective is None or not math.isfinite(objective) else objective,
                   "final": int(bool(result.get("final"))), "counted": int(counted)}
            path = Path(self.run_dir) / store.BUDGET_LOG
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
        return self.spent

    def stop_all(self) -> bool:
        return self.spent


def spent(run_dir: str | Path, settings: SearchSettings, wall_s: float) -> bool:
    """Whether the search's budget was spent (a search that ran fewer trials than planned then still finished):
    its counted epochs reached budget_epochs, or its search time reached budget_minutes."""
    rows = store.read_budget_log(run_dir)
    if settings.budget_epochs:
        return sum(r["counted"] for r in rows) >= settings.budget_epochs
    if settings.budget_minutes:
        return wall_s >= settings.budget_minutes * 60 - 1 or any(not r["counted"] for r in rows)
    return False
