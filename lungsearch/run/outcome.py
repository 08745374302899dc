"""(No Ray.) How a search ended: finished, every trial failed, or interrupted (Ctrl-C, SIGTERM), and the exception
that tells the command line which, with its exit status."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path


class SearchIncomplete(Exception):
    """A search that ended without finishing: interrupted (exit status 130) or every trial failed (1). The
    message says what happened and what to run next."""

    def __init__(self, message: str, exit_code: int, run_dir: Path | None = None):
        super().__init__(message)
        self.exit_code, self.run_dir = exit_code, run_dir


SIGTERM_EXIT = 143  # 128 + SIGTERM, as a shell reports a job the signal ended; Ctrl-C's is 130
TERMINATED = threading.Event()  # a SIGTERM arrived


def sigterm_as_ctrl_c() -> None:
    """Make SIGTERM, what a batch scheduler sends at a job's time limit, stop a search as Ctrl-C does: Tune saves
    its state and stops, the manifest says "interrupted" and `resume` finishes the search. (Ray's own handler exits
    at once and leaves the manifest "running": cluster.connect keeps this one.) Main thread only: signals go there."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def sigterm_stops_search():
    """While a command runs a search: SIGTERM stops it as Ctrl-C does (`sigterm_as_ctrl_c`), and TERMINATED
    says whether one came. The handler found is put back afterwards."""
    TERMINATED.clear()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    sigterm_as_ctrl_c()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def on_sigterm(signum, frame) -> None:
    TERMINATED.set()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Tune's during fit(), InterruptWatch's after it, else Python's: KeyboardInterrupt
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def exit_code(code: int) -> int:
    """The exit status of a command that ended with `code`: an interruption (130) by SIGTERM is SIGTERM_EXIT."""
    return SIGTERM_EXIT if code == 130 and TERMINATED.is_set() else code


def search_status(results, total: int | None, interrupted: bool, budget_spent: bool = False) -> str:
    """'interrupted' (stopped before every planned trial ended: resume finishes it), 'failed' (every trial
    failed) or 'finished'. `results` is Tune's ResultGrid (None if fit() never returned). A search whose budget
    was spent (`budget_spent`) finished, however many of its planned trials ran."""
    if interrupted or results is None or total is None or (len(results) < total and not budget_spent):
        return "interrupted"
    if results.num_terminated + results.num_errors < len(results) and not budget_spent:  # pending or running
        return "interrupted"
    if len(results) and results.num_errors == len(results):
        return "failed"
    return "finished"


class InterruptWatch:
    """Whether Tune stopped a fit() on a stop signal (Ctrl-C, SIGUSR1). Tune 2.60 then stops gracefully and
    fit() returns normally, with the running trials marked TERMINATED as though they had ended, so the result
    alone cannot tell. Tune's handler, installed in fit(), puts back the SIGINT handler it found when the signal
    arrives and leaves itself in place otherwise: ours being back after fit() means an interruption. A second
    Ctrl-C reaches ours: KeyboardInterrupt, as usual. Ray's hint to call Tuner.restore is hidden (`lungsearch
    resume` is the way back); its message that the experiment was interrupted also counts."""

    def __init__(self):
        self.seen = False

    def handler(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "has been interrupted" in text:
            self.seen = True
        return "Tuner.restore" not in text

    def __enter__(self) -> "InterruptWatch":
        self.previous = signal.getsignal(signal.SIGINT)
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            signal.signal(signal.SIGINT, self.handler)
        logging.getLogger("ray.tune.tune").addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        self.tune_handled = self.installed and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
        self.restored = signal.getsignal(signal.SIGINT) == self.handler
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
        logging.getLogger("ray.tune.tune").removeFilter(self)

    @property
    def interrupted(self) -> bool:
        return self.seen or (self.tune_handled and self.restored)
