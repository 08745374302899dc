"""Run a search with Ray Tune: `run_search` starts one, `resume_search` finishes an interrupted one, `execute`
runs the Tune experiment of a run folder. This package is the only place that imports Ray (bar
lungsearch.space, which builds Ray Tune's sampling domains from a space file's declarations), and only in the
modules that need it: importing `lungsearch.run` or its Ray-free modules does not import Ray, so `report` and
`bench` stay light.

  search     run_search, resume_search, execute: the entry points
  cluster    start or join Ray; the CPUs and GPUs per trial
  searchers  what is searched: param space, fixed points, searcher, ASHA scheduler
  budget     the search's budget (epochs in all, or minutes): a stopper that writes budget.csv
  trial      the function each Tune trial runs
  progress   the console while a search runs; Ray's log into the run folder
  tracking   MLflow logging (--mlflow)
  settings   (no Ray) the search's settings and dataset folder, from SETTINGS, --smoke and the flags
  folder     (no Ray) the run folder: manifest, resumable or not, the command to start it again, tables
  outcome    (no Ray) how a search ended: finished, every trial failed, or interrupted
"""
from __future__ import annotations

import importlib

from .outcome import SearchIncomplete

__all__ = ["SearchIncomplete", "execute", "resume_search", "run_search"]

# Imported on first use, as they import Ray.
LAZY = {"run_search": "search", "resume_search": "search", "execute": "search"}


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(f"{__name__}.{LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
