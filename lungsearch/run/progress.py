"""What a person sees while a search runs (`Progress`, a Ray Tune callback), and where Ray's own log records go
instead of the console (`RayLog`, the run folder's ray.log)."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

from ray import tune

from .. import store
from ..config import OBJECTIVE, count

RAY_LOG = "ray.log"  # in the run folder: what Ray logs (its warnings, a failed trial's traceback)
RAY_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


class RayLog(logging.Handler):
    """Where Ray's own log records go: the run folder's ray.log, not the console (a user cannot act on Ray's
    notices, and Progress reports a failed trial in its own words). Records made before the run folder exists
    (ray.init runs first) are kept in memory and written when it is known. Ray's console handler keeps only
    its errors, less a trial's failure (`quiet_ray`)."""

    KEEP = 1000  # records kept in memory at most, while no run folder is open
    TRIAL_ERRORS = ("Trial task failed", "Trials did not complete")  # Tune's errors that Progress reports

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.file: logging.FileHandler | None = None
        self.pending: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        else:
            self.pending = [*self.pending[1 - self.KEEP:], record]

    def open(self, run_dir: Path) -> None:
        """Write the records so far, and all that follow, to run_dir/ray.log (appended: resume adds to it)."""
        self.close()
        self.file = logging.FileHandler(run_dir / RAY_LOG, encoding="utf-8")
        self.file.setFormatter(logging.Formatter(RAY_LOG_FORMAT))
        for record in self.pending:
            self.file.emit(record)
        self.pending = []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    @staticmethod
    def console(record: logging.LogRecord) -> bool:
        """The filter on Ray's console handler: errors only, and not failed trials (Progress says so)."""
        return record.levelno >= logging.ERROR and not record.getMessage().startswith(RayLog.TRIAL_ERRORS)


RAY_LOG_HANDLER = RayLog()


def quiet_ray() -> None:
    """Keep Ray's notices off the console, before ray.init: its log records go to the run folder's ray.log
    (RayLog), and Tune's console output engine is the legacy one, which prints nothing at verbose=0 (the
    default engine prints a "Configuration for experiment" box, "View detailed results here" and a TensorBoard
    hint whatever the verbosity). Token authentication is left as Ray sets it (on for a local instance)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray_logger = logging.getLogger("ray")
    for handler in ray_logger.handlers:
        if handler is not RAY_LOG_HANDLER and RayLog.console not in handler.filters:
            handler.addFilter(RayLog.console)
    if RAY_LOG_HANDLER not in ray_logger.handlers:
        ray_logger.addHandler(RAY_LOG_HANDLER)
    RAY_LOG_HANDLER.pending = []  # a new Ray session: what an earlier one logged is not this run's


def duration(seconds: float) -> str:
    """An estimate, rounded: 'under a minute', 'about 12 min', 'about 2 h 05 min'."""
    minutes = round(seconds / 60)
    return ("under a minute" if minutes < 1 else f"about {minutes} min" if minutes < 60
            else f"about {minutes // 60} h {minutes % 60:02d} min")


def trial_name(trial) -> str:
    """base_1a2b3_00000, trial_1a2b3_00004; confirm_base_..., confirm_trial_... in the confirmation stage."""
    return f"{'confirm_' if trial.config.get('confirms') else ''}{trial.config.get('fixed_point') or 'trial'}_{trial.trial_id}"


class Progress(tune.Callback):
    """What a person sees while the search runs. On a terminal: one status line redrawn in place (with rich)
    and a permanent line for each trial that ends. Elsewhere (a log file, CI): a line for each trial that starts
    or ends, and the status line at most every HEARTBEAT_S seconds, never a line per epoch.

    The status: trials running, finished, stopped early by ASHA and failed, of the planned total; epochs
    trained; the best objective (validation AUC) and its trial; the time since the start and an estimate of the
    time left (from the share of the trial budget, trials times max_epochs, done so far in this session).
    With a search budget (`budget_epochs`, or `budget_s` seconds) the status shows how much of it is spent, the
    estimate comes from it, and the trials the spent budget stopped say so.
    `live` (None: whether stdout is a terminal), `console` (a rich Console) and `clock` are for tests."""

    HEARTBEAT_S, REDRAW_S = 30.0, 0.25
    showing: list["Progress"] = []  # those with a live line on the terminal now (close_all)

    def __init__(self, total: int, max_epochs: int | None = None, budget_epochs: int = 0, budget_s: float = 0.0,
                 live: bool | None = None, console=None, clock=time.monotonic, run_dir: str | Path | None = None):
        self.total, self.max_epochs, self.live, self.console, self.clock = total, max_epochs, live, console, clock
        self.run_dir = run_dir  # where the trials the budget stopped are noted (store.note_budget_stop)
        self.budget_epochs, self.budget_s, self.epochs = budget_epochs, budget_s, 0
        self.started, self.beat, self.drawn, self.display = clock(), -math.inf, -math.inf, None
        self.done_at_start: float | None = None
        self.ended_ids: set[str] = set()  # trials that ended before (a resumed search) or that Tune said ended
        self.ended_as: dict[str, str] = {}  # trial id: how it ended, when Tune said so (ended)

    def __getstate__(self) -> dict:
        return {"total": self.total, "max_epochs": self.max_epochs, "budget_epochs": self.budget_epochs,
                "budget_s": self.budget_s, "run_dir": self.run_dir}

    def __setstate__(self, state: dict) -> None:
        """`resume` unpickles this callback from the experiment: count afresh from now, on today's terminal."""
        self.__init__(state["total"], state["max_epochs"], state["budget_epochs"], state["budget_s"],
                      run_dir=state["run_dir"])

    def setup(self, **info) -> None:
        self.started = self.clock()
        if self.live is None:
            self.live = sys.stdout.isatty()
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self.console = self.console or Console(highlight=False)
            self.display = Live(console=self.console, auto_refresh=False, transient=True)
            self.display.start()
            Progress.showing.append(self)

    def outcome(self, trial) -> str:
        """running, waiting, interrupted (Tune marks the trials a Ctrl-C stopped as ended too: those it never said
        ended; waiting if they never trained), or how an ended trial ended (store.trial_outcome)."""
        last = trial.last_result or {}
        if trial.status == "TERMINATED":
            if trial.trial_id in self.ended_as:
                return self.ended_as[trial.trial_id]
            ended = last.get("final") or trial.trial_id in self.ended_ids or self.budget_spent()
            if ended and last.get("training_iteration"):  # before a resume, or stopped with the rest at the budget
                return store.trial_outcome(last, False, self.budget_spent() and trial.trial_id not in self.ended_ids)
            return "interrupted" if last.get("training_iteration") else "waiting"
        return {"RUNNING": "running", "ERROR": "failed"}.get(trial.status, "waiting")

    def elapsed(self) -> str:
        seconds = int(self.clock() - self.started)
        return f"[{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}]"

    def status(self, trials) -> str:
        counts = dict.fromkeys(("running", "waiting", "finished", "stopped", "budget", "failed", "interrupted"), 0)
        best, best_trial, done = None, "", 0.0
        if self.done_at_start is None:  # what a resumed search had already ended
            self.ended_ids |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        epochs = self.epochs = sum(int((t.last_result or {}).get("training_iteration", 0) or 0) for t in trials)
        for t in trials:  # (the epochs first: whether the budget is spent decides how a trial ended)
            last, kind = t.last_result or {}, self.outcome(t)
            counts["finished" if kind == "diverged" else "waiting" if kind == "not started" else kind] += 1
            score = last.get(OBJECTIVE.key)
            if isinstance(score, (int, float)) and OBJECTIVE.better(score, best):
                best, best_trial = score, trial_name(t)
            if kind not in ("running", "waiting"):
                done += 1.0
            elif kind == "running" and self.max_epochs:
                done += min(int(last.get("training_iteration", 0) or 0) / self.max_epochs, 1.0)
        if self.done_at_start is None:
            self.done_at_start = done  # trials a resumed search had already ended
        gained, spent = done - self.done_at_start, self.clock() - self.started
        left = ("" if done >= self.total else f" | {duration(spent * (self.total - done) / gained)} left"
                if gained > 0 and self.max_epochs else " | time left: -")
        self.epochs, trained = epochs, f"{epochs} epochs trained"
        if self.budget_epochs:
            trained = f"{epochs} of {self.budget_epochs} epochs trained (budget)"
            left = ("" if epochs >= self.budget_epochs else " | time left: -" if not epochs else
                    f" | {duration(spent * (self.budget_epochs - epochs) / epochs)} left")
        elif self.budget_s:
            trained += f" | {spent / 60:.1f} of {self.budget_s / 60:g} min (budget)"
            left = f" | {duration(self.budget_s - spent)} left" if spent < self.budget_s else ""
        best_text = f"best val AUC {best:.4f} ({best_trial})" if best is not None else "best val AUC -"
        planned = f"at most {self.total}" if self.budget_epochs or self.budget_s else f"{self.total}"
        return (f"{counts['running']} running, {counts['finished']} finished, {counts['stopped']} stopped early, "
                + (f"{counts['budget']} stopped by the budget, " if counts["budget"] else "")
                + f"{counts['failed']} failed" + (f", {counts['interrupted']} interrupted" if counts["interrupted"]
                                                  else "") + f" of {planned} | {trained} | {best_text}{left}")

    def budget_spent(self) -> bool:
        return bool(self.budget_epochs and self.epochs >= self.budget_epochs) or bool(
            self.budget_s and self.clock() - self.started >= self.budget_s)

    def say(self, text: str) -> None:
        """A permanent line (above the live status line on a terminal)."""
        line = f"{self.elapsed()} {text}"
        if self.live and self.console is not None:
            from rich.text import Text

            self.console.print(Text(line))
        else:
            print(line, flush=True)

    def tick(self, trials, force: bool = False) -> None:
        """Redraw the live line (at most every REDRAW_S s), or print the heartbeat (at most every HEARTBEAT_S s)."""
        now = self.clock()
        if self.display is not None:
            if force or now - self.drawn >= self.REDRAW_S:
                from rich.text import Text

                self.display.update(Text(f"{self.elapsed()} {self.status(trials)}"), refresh=True)  # wraps
                self.drawn = now
        elif force or now - self.beat >= self.HEARTBEAT_S:
            print(f"{self.elapsed()} {self.status(trials)}", flush=True)
            self.beat = now

    def ended(self, trial, failed: bool = False) -> str:
        """The line for a trial that ended (Tune calls back before it sets the trial's status)."""
        self.ended_ids.add(trial.trial_id)
        last = trial.last_result or {}
        kind = self.ended_as[trial.trial_id] = store.trial_outcome(last, failed, self.budget_spent())
        if kind == "budget" and self.run_dir:
            store.note_budget_stop(self.run_dir, trial_name(trial))
        epochs = int(last.get("training_iteration", 0) or 0)
        score = last.get(OBJECTIVE.key)
        auc = f", val AUC {score:.4f}" if isinstance(score, (int, float)) and math.isfinite(score) else ""
        if kind == "failed":
            error = ""
            try:
                lines = Path(trial.error_file).read_text().strip().splitlines() if trial.error_file else []
                error = f": {lines[-1][:200]}" if lines else ""
            except (AttributeError, OSError):
                pass
            return f"{trial_name(trial)} failed after {count(epochs, 'epoch')}{error}"
        return f"{trial_name(trial)} {store.OUTCOMES[kind]} after {count(epochs, 'epoch')}{auc}"

    def on_step_end(self, iteration, trials, **info):
        self.tick(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.display is None:
            self.say(f"{trial_name(trial)} started")
        self.tick(trials, force=self.display is not None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tick(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.status(trials)  # the epochs so far: has the budget stopped this trial?
        self.say(self.ended(trial))
        self.tick(trials, force=self.display is not None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(self.ended(trial, failed=True))
        self.tick(trials, force=self.display is not None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.say(f"{trial_name(trial)} failed; trying it again from the start")

    def on_experiment_end(self, trials, **info):
        self.status(trials)  # the epochs so far
        for t in trials:  # those the spent budget stopped all at once: Tune ends them without on_trial_complete
            if t.trial_id not in self.ended_as and self.outcome(t) == "budget":
                self.say(self.ended(t))
        self.close()
        self.say(self.status(trials))

    def close(self) -> None:
        """Stop the live line (idempotent), so what is printed next starts on a line of its own."""
        if self.display is not None:
            self.display.stop()
            self.display = None
            Progress.showing.remove(self)

    @classmethod
    def close_all(cls) -> None:
        for progress in list(cls.showing):
            progress.close()
