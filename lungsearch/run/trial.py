"""The function each Ray Tune trial runs, in a worker process on any node of the cluster."""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from ray import tune

from .. import space as spaces


def limit_threads(cpus: float) -> None:
    """A CPU trial computes on as many threads as it has CPUs, so trials side by side do not fight over the
    cores. Takes effect when the backend is first imported in the worker (a reused worker keeps it: every
    trial of a search asks for the same CPUs); a value the user set in the environment wins."""
    for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(var, str(max(1, int(cpus))))


def trainable(config: dict[str, Any], conditions: dict, run_dir: str, dataset=None, cpus: float = 0,
              gpus: float = 0) -> None:
    """The Ray Tune trial: drop inactive conditional parameters, train, report each epoch through Tune.

    Writes into the run folder directly (checkpoints/, attempts/), so on a cluster the run folder must
    be on storage every node reaches. `dataset`: the data folder as the driver scanned it. With reused workers
    (`reuse_workers`) one process runs this for trial after trial; `run_trial` resets what a trial sets.
    `cpus`, `gpus`: the trial's resources."""
    started = time.time()
    # A reused worker takes its next trial once the last one's training thread has ended; Tune waits 2 s for
    # that by default, and on a busy machine a stopped trial can take longer to unwind, which made Tune fail
    # the next trial ("reuse requires reset_config() ... return True"). Read by Tune in this process.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    if cpus and not gpus:
        limit_threads(cpus)
    from ..train import run_trial

    name = tune.get_context().get_trial_name()
    node_ip, node_id = ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()
    attempts = Path(run_dir) / "attempts"
    attempts.mkdir(exist_ok=True)
    with open(attempts / f"{name}.log", "a") as log:  # one line per start: retries, their nodes and processes
        log.write(f"{datetime.now().isoformat(timespec='seconds')} {node_ip} {node_id} {os.getpid()}\n")

    def report(row: dict[str, Any]) -> None:
        tune.report({**row, "node_ip": node_ip, "node_id": node_id})

    run_trial(spaces.active(config, conditions), report, checkpoint_dir=Path(run_dir) / "checkpoints" / name,
              started=started, dataset=dataset)
