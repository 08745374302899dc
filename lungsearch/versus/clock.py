"""One in-process system's budget and its record of the race: every epoch its trials trained, and when."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import OBJECTIVE, count

HEARTBEAT_S = 30.0  # a progress line at least this often while a trial trains


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
            objective = float(row.get(OBJECTIVE.key, math.nan))
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
