"""Run a search with Ray Tune: the only module that imports ray."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import logging
import math
import os
import pickle
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, Searcher

from . import data, space as spaces, store
from .config import (FIXED_POINTS, OBJECTIVE, OBJECTIVE_MODE, OBJECTIVE_TEXT, SMOKE, InvalidValue, SearchSettings,
                     TrialConfig, UserError)

ENV_PASSED = ("KERAS_BACKEND", "XLA_PYTHON_CLIENT_PREALLOCATE", "TF_FORCE_GPU_ALLOW_GROWTH", "TF_CPP_MIN_LOG_LEVEL",
              "LUNGSEARCH_CACHE")
PROBE_TIMEOUT_S = 5.0  # a cluster's GCS port must accept a connection this fast
CONNECT_TIMEOUT_S = 120.0  # ray.init on a cluster (LUNGSEARCH_CONNECT_TIMEOUT_S): Ray itself retries forever


class SearchIncomplete(Exception):
    """A search that ended without finishing: interrupted (exit status 130) or every trial failed (1). The
    message says what happened and what to run next."""

    def __init__(self, message: str, exit_code: int, run_dir: Path | None = None):
        super().__init__(message)
        self.exit_code, self.run_dir = exit_code, run_dir


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def duration(seconds: float) -> str:
    """An estimate, rounded: 'under a minute', 'about 12 min', 'about 2 h 05 min'."""
    minutes = round(seconds / 60)
    return ("under a minute" if minutes < 1 else f"about {minutes} min" if minutes < 60
            else f"about {minutes // 60} h {minutes % 60:02d} min")


class Progress(tune.Callback):
    """What a person sees while the search runs. On a terminal: one status line redrawn in place (with rich)
    and a permanent line for each trial that ends. Elsewhere (a log file, CI): a line for each trial that starts
    or ends, and the status line at most every HEARTBEAT_S seconds, never a line per epoch.

    The status: trials running, finished, stopped early by ASHA and failed, of the planned total; epochs
    trained; the best objective (validation AUC) and its trial; the time since the start and an estimate of the
    time left (from the share of the trial budget, trials times max_epochs, done so far in this session).
    `live` (None: whether stdout is a terminal), `console` (a rich Console) and `clock` are for tests."""

    HEARTBEAT_S, REDRAW_S = 30.0, 0.25
    showing: list["Progress"] = []  # those with a live line on the terminal now (close_all)

    def __init__(self, total: int, max_epochs: int | None = None, live: bool | None = None, console=None,
                 clock=time.monotonic):
        self.total, self.max_epochs, self.live, self.console, self.clock = total, max_epochs, live, console, clock
        self.started, self.beat, self.drawn, self.display = clock(), -math.inf, -math.inf, None
        self.done_at_start: float | None = None
        self.ended_ids: set[str] = set()  # trials that ended before (a resumed search) or that Tune said ended

    def __getstate__(self) -> dict:
        return {"total": self.total, "max_epochs": self.max_epochs}

    def __setstate__(self, state: dict) -> None:
        """`resume` unpickles this callback from the experiment: count afresh from now, on today's terminal."""
        self.__init__(state["total"], state.get("max_epochs"))

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
        """running, waiting, finished, diverged, stopped (by ASHA), failed, or interrupted (Tune marks the trials
        a Ctrl-C stopped as ended too: those it never said ended; waiting if they never trained)."""
        last = trial.last_result or {}
        if trial.status == "TERMINATED":
            if last.get("final"):
                return "diverged" if last.get("diverged") else "finished"
            if trial.trial_id in self.ended_ids:
                return "stopped"
            return "interrupted" if last.get("training_iteration") else "waiting"
        return {"RUNNING": "running", "ERROR": "failed"}.get(trial.status, "waiting")

    def elapsed(self) -> str:
        seconds = int(self.clock() - self.started)
        return f"[{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}]"

    def status(self, trials) -> str:
        counts = dict.fromkeys(("running", "waiting", "finished", "stopped", "failed", "interrupted"), 0)
        best, best_trial, epochs, done = None, "", 0, 0.0
        if self.done_at_start is None:  # what a resumed search had already ended
            self.ended_ids |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        for t in trials:
            last, kind = t.last_result or {}, self.outcome(t)
            counts["finished" if kind == "diverged" else kind] += 1
            epochs += int(last.get("training_iteration", 0) or 0)
            score = last.get(OBJECTIVE)
            if isinstance(score, (int, float)) and math.isfinite(score) and (best is None or score > best):
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
        best_text = f"best val AUC {best:.4f} ({best_trial})" if best is not None else "best val AUC -"
        return (f"{counts['running']} running, {counts['finished']} finished, {counts['stopped']} stopped early, "
                f"{counts['failed']} failed" + (f", {counts['interrupted']} interrupted" if counts["interrupted"]
                                                else "") + f" of {self.total} | {epochs} epochs trained | "
                f"{best_text}{left}")

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
        kind = "failed" if failed else ("diverged" if last.get("diverged") else "finished") if last.get("final") \
            else "stopped"
        epochs = int(last.get("training_iteration", 0) or 0)
        score = last.get(OBJECTIVE)
        auc = f", val AUC {score:.4f}" if isinstance(score, (int, float)) and math.isfinite(score) else ""
        if kind == "failed":
            error = ""
            try:
                lines = Path(trial.error_file).read_text().strip().splitlines() if trial.error_file else []
                error = f": {lines[-1][:200]}" if lines else ""
            except (AttributeError, OSError):
                pass
            return f"{trial_name(trial)} failed after {plural(epochs, 'epoch')}{error}"
        what = {"finished": "finished", "diverged": "diverged (loss not finite)",
                "stopped": "stopped early by ASHA"}.get(kind, kind)
        return f"{trial_name(trial)} {what} after {plural(epochs, 'epoch')}{auc}"

    def on_step_end(self, iteration, trials, **info):
        self.tick(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.display is None:
            self.say(f"{trial_name(trial)} started")
        self.tick(trials, force=self.display is not None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tick(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.say(self.ended(trial))
        self.tick(trials, force=self.display is not None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(self.ended(trial, failed=True))
        self.tick(trials, force=self.display is not None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.say(f"{trial_name(trial)} failed; trying it again from the start")

    def on_experiment_end(self, trials, **info):
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


def mlflow_uri(uri: str) -> str:
    """The MLflow tracking URI to log to, checked: a URI as given, a folder as an absolute file:// URI (so that
    resume, from any folder, logs to the same place). MLflow 3 keeps such a file store in maintenance mode and
    refuses it unless MLFLOW_ALLOW_FILE_STORE is set: a folder the user names is taken as that consent. A
    UserError when MLflow is not installed or cannot open the store."""
    if importlib.util.find_spec("mlflow") is None:
        raise UserError(f'--mlflow {uri}: MLflow is not installed; install it with `pip install -e ".[mlflow]"` '
                        f'(or `pip install mlflow-skinny`), or leave out --mlflow')
    if "://" not in uri and uri.split(":", 1)[0] not in ("file", "databricks", "databricks-uc", "sqlite"):
        uri = Path(uri).expanduser().resolve().as_uri()
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # a database file relative to here
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri)  # opens the store (a server is not contacted yet)
    except Exception as err:  # MLflow's own errors: a scheme it does not know, a driver it lacks
        raise UserError(f"--mlflow {uri}: MLflow cannot log there: {str(err).strip().splitlines()[0]}") from None
    return uri


def mlflow_callback(uri: str, run_dir: Path):
    """Ray Tune's MLflow logger: an MLflow run per trial in the experiment named after the run folder, with the
    trial's parameters and its metrics at every epoch (step = epoch); the last epoch's row holds the trial's
    test metrics, so they are the metrics of its last step."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=run_dir.name,
                                tags={"lungsearch_run_folder": str(run_dir)})


def trainable(config: dict[str, Any], conditions: dict, run_dir: str) -> None:
    """The Ray Tune trial: drop inactive conditional parameters, train, report each epoch through Tune.

    Writes into the run folder directly (checkpoints/, attempts/), so on a cluster the run folder must
    be on storage every node reaches."""
    started = time.time()
    from .train import run_trial

    name = tune.get_context().get_trial_name()
    node_ip, node_id = ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()
    attempts = Path(run_dir) / "attempts"
    attempts.mkdir(exist_ok=True)
    with open(attempts / f"{name}.log", "a") as log:  # one line per start: retries and the nodes they ran on
        log.write(f"{datetime.now().isoformat(timespec='seconds')} {node_ip} {node_id}\n")

    def report(row: dict[str, Any]) -> None:
        tune.report({**row, "node_ip": node_ip, "node_id": node_id})

    run_trial(spaces.active(config, conditions), report, checkpoint_dir=Path(run_dir) / "checkpoints" / name,
              started=started)


def trial_name(trial) -> str:
    return f"{trial.config.get('fixed_point') or 'trial'}_{trial.trial_id}"


def flag(key: str) -> str:
    return "--no-fixed-points" if key == "fixed_points" else "--" + key.replace("_", "-")


def resolve_settings(space: spaces.Space, overrides: dict[str, Any], smoke: bool) -> SearchSettings:
    """The space file's SETTINGS, then --smoke, then the flags; a bad value names the flag or the file."""
    try:
        settings = SearchSettings(**space.settings)
    except UserError as err:
        raise UserError(f"SETTINGS of {space.path}: {err}") from None
    if smoke:
        settings = settings.replace(**SMOKE, num_samples=min(settings.num_samples, 8))
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = settings.replace(**given)
    except InvalidValue as err:
        if err.key not in given:
            raise
        raise UserError(f"{flag(err.key)} must be {err.expected}, got {err.value!r}") from None
    if settings.num_samples == 0 and not settings.fixed_points:
        def source(key: str, value: Any) -> str:
            if key in given:
                return "--no-fixed-points" if key == "fixed_points" else f"{flag(key)} {value}"
            return f"{key}: {value!r} in SETTINGS of {space.path}" if key in space.settings else f"the default {key} {value!r}"
        raise UserError(f"nothing to run: no sampled trials ({source('num_samples', 0)}) and no fixed points "
                        f"({source('fixed_points', False)}); pass --num-samples N (1 or more) or keep the report's "
                        f"three models (drop --no-fixed-points)")
    if settings.searcher == "tpe" and importlib.util.find_spec("optuna") is None:
        raise UserError('--searcher tpe needs Optuna: pip install -e ".[tpe]"')
    return settings


def data_dir_from(arg: str | None) -> Path:
    value = arg or os.environ.get("LUNGSEARCH_DATA")
    if not value:
        raise UserError("no dataset given: pass --data DIR or set LUNGSEARCH_DATA. Download the Kermany chest "
                        "X-ray dataset (e.g. 'chest_xray' from Kaggle or Mendeley Data) and point at the folder "
                        "that holds train/ (and test/)")
    return Path(value).expanduser().resolve()


def resources(settings: SearchSettings, nodes: list[dict[str, float]] | None = None) -> dict[str, float]:
    """CPUs and GPUs per trial: one GPU each where the cluster has GPUs, else two CPUs (TensorFlow's sweet spot),
    never more than one node has. `nodes`: each live node's resources (default: the connected cluster's).

    A trial runs on one node, and Ray waits forever for a request no node can hold: such a request is a
    UserError naming the setting, the value and what the cluster has."""
    if nodes is None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def most(key: str, among: list[dict[str, float]] = nodes) -> float:
        return max((n.get(key, 0.0) for n in among), default=0.0)

    def has(key: str) -> str:
        return (f"{sum(n.get(key, 0.0) for n in nodes):g} {key}(s) in all, at most {most(key):g} on one node "
                f"({len(nodes)} node(s))")

    gpus = settings.gpus_per_trial if settings.gpus_per_trial >= 0 else (1.0 if most("GPU") >= 1 else 0.0)
    if gpus > most("GPU"):
        raise UserError(f"--gpus-per-trial (gpus_per_trial) {gpus:g} asks for {gpus:g} GPU(s) per trial, but the Ray "
                        f"cluster has {has('GPU')}, and a trial runs on one node: no trial could ever start. "
                        f"Ask for at most {most('GPU'):g} (0: train on CPUs; -1: one GPU per trial where there are "
                        f"GPUs)")
    hosts = [n for n in nodes if n.get("GPU", 0.0) >= gpus]  # the nodes that can hold a trial's GPUs
    if settings.cpus_per_trial:
        cpus = settings.cpus_per_trial
    elif gpus:
        total = sum(n.get("CPU", 0.0) for n in nodes) // max(sum(n.get("GPU", 0.0) for n in nodes), 1)
        cpus = min(4.0, max(1.0, total), most("CPU", hosts))
    else:
        cpus = min(2.0, most("CPU"))
        if not cpus:
            raise UserError(f"the Ray cluster has {has('CPU')}: no trial could start; give its nodes CPUs "
                            f"(`ray start --num-cpus N`) or train on GPUs (--gpus-per-trial)")
    if cpus > most("CPU", hosts):
        where = f"at most {most('CPU', hosts):g} on a node with {gpus:g} GPU(s)" if gpus else f"{has('CPU')}"
        raise UserError(f"--cpus-per-trial (cpus_per_trial) {cpus:g} asks for {cpus:g} CPU(s) per trial, but the Ray "
                        f"cluster has {where}, and a trial runs on one node: no trial could ever start. Ask for "
                        f"at most {most('CPU', hosts):g} (0: chosen from the cluster)")
    return {"cpu": cpus, "gpu": gpus}


def address_file() -> Path:
    """Where `ray start` records the cluster it started, which Ray's --address auto reads."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except ImportError:  # another Ray layout: the same rule
        tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return Path(tmp) / "ray" / "ray_current_cluster"


def cluster_address(address: str) -> str:
    """The HOST:PORT that --address names ('auto': RAY_ADDRESS, else the cluster the last `ray start` on this
    machine recorded), checked to accept a connection within seconds: Ray itself retries a dead address forever."""
    found, source = address, ""
    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            found, source = os.environ["RAY_ADDRESS"], "the RAY_ADDRESS variable"
        elif address_file().is_file() and address_file().read_text().strip():
            found = address_file().read_text().strip()
            source = f"{address_file()}, which the last `ray start` on this machine wrote"
        else:
            try:  # Ray's fallback: a running Ray instance found among this machine's processes
                from ray._private.services import canonicalize_bootstrap_address_or_die

                found, source = canonicalize_bootstrap_address_or_die("auto"), "this machine's running Ray processes"
            except ConnectionError as err:
                raise UserError(f"--address auto: no Ray cluster found ({err}). Start one with `ray start --head`, "
                                f"pass --address HOST:PORT, or leave out --address to start a local Ray "
                                f"instance") from None
    host, sep, port = found.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        named = f"--address {address}" + (f" (from {source})" if source else "")
        raise UserError(f"{named}: {found!r} is not HOST:PORT; pass --address auto or HOST:PORT (the address "
                        f"`ray start --head` printed)")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        why = f"no answer within {PROBE_TIMEOUT_S:g} s" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        named = f"--address {address}" + (f" (read from {source})" if source else "")
        stale = " That cluster has stopped (the file outlives it)." if source.startswith(str(address_file())) else ""
        raise UserError(f"{named}: no Ray cluster answers at {host}:{port} ({why}).{stale} Start the cluster's "
                        f"head with `ray start --head` and pass the address it prints, or leave out --address to "
                        f"start a local Ray instance") from None
    return found


def connect(address: str | None) -> None:
    """Start a private local Ray instance, or join the cluster at `address` within a bounded time."""
    target = cluster_address(address) if address else None
    env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
    # Save the experiment state every second (default: every 10 s or more), so that a driver killed right
    # after a trial finished still finds that trial finished on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    quiet_ray()  # Ray's notices (its token authentication warning among them) go to the run folder's ray.log
    # Without an address, always a new private instance on loopback: never one that `ray start` left running.
    local = {} if target else {"_node_ip_address": "127.0.0.1"}
    watchdog = None
    if target:  # the port answered, but a port that is not a Ray cluster's would keep ray.init waiting forever
        limit = float(os.environ.get("LUNGSEARCH_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
        watchdog = threading.Timer(limit, gave_up_connecting, (address, target, limit))
        watchdog.daemon = True
        watchdog.start()
    try:
        ray.init(address=target or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, runtime_env={"env_vars": env}, **local)
    except ConnectionError as err:
        raise UserError(f"--address {address}: could not join the Ray cluster at {target}: {err}") from None
    finally:
        if watchdog:
            watchdog.cancel()


def gave_up_connecting(address: str, target: str, limit: float) -> None:
    """ray.init blocks in Ray's C++ client and retries forever: say why and end the process (nothing was written)."""
    print(f"error: --address {address}: {target} accepts connections but no Ray cluster answered there within "
          f"{limit:g} s (another service on that port, a different Ray version, or an authentication token "
          f"mismatch). Pass the address `ray start --head` printed (LUNGSEARCH_CONNECT_TIMEOUT_S sets the wait)",
          file=sys.stderr, flush=True)
    os._exit(2)


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


def run_search(space_path: str | Path, data_arg: str | None = None, results_dir: str | Path = "results",
               smoke: bool = False, address: str | None = None, mlflow: str | None = None,
               **overrides: Any) -> Path:
    """Check everything, write the run folder's manifest, run the search; return the run folder.

    With `address` (a Ray cluster), `results_dir` and the data folder must be paths every node reaches.
    With `mlflow` (a tracking URI or a folder), every trial is logged to MLflow too (`mlflow_callback`).
    """
    tracking = mlflow_uri(mlflow) if mlflow else None  # MLflow missing: say how to install it before any work
    if "://" in str(results_dir):
        raise UserError(f"--storage/--results must be a file system path every node can reach (NFS, or a bucket "
                        f"mounted with e.g. s3fs or gcsfuse), got the URI {results_dir!r}")
    data.check_results_folder(results_dir)  # a file, a read-only folder: say so before any work
    space = spaces.load(space_path)
    spaces.check_defaults(space, {"split": "target"})  # before the data is read; again below with the real split
    settings = resolve_settings(space, overrides, smoke)
    data_dir = data_dir_from(data_arg)
    if address:
        cluster_address(address)  # a dead address fails in seconds, before the data is read
    cache_dir = data.default_cache_dir()
    ds, _ = data.load(data_dir, settings.image_size, cache_dir)
    requested_split = settings.split
    settings = settings.replace(split=data.resolve_split(ds, settings.split))
    spaces.check_defaults(space, {"split": settings.split})  # e.g. early_stop_on holdout needs the target split
    split = data.make_split(ds, settings.split, settings.seed, settings.data_limit)
    summary = data.split_summary(ds, split, settings.split)
    print_split(summary)

    # Ray starts before the run folder exists, so a request the cluster cannot hold leaves nothing behind.
    connect(address)
    run_dir = None
    try:
        resources(settings)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(results_dir).expanduser().resolve() / f"{stamp}-{space.name}{'-smoke' if smoke else ''}"
        run_dir.mkdir(parents=True, exist_ok=False)
        write_run_folder(run_dir, space, settings, smoke, data_dir, cache_dir, ds, requested_split, summary)
    except BaseException:  # a failure (or Ctrl-C) before the search: no Ray left running, no half-made run folder
        ray.shutdown()
        if run_dir is not None and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    print(f"run folder: {run_dir}", flush=True)
    return execute(run_dir, address, mlflow=tracking)


def write_run_folder(run_dir: Path, space: spaces.Space, settings: SearchSettings, smoke: bool, data_dir: Path,
                     cache_dir: Path, ds, requested_split: str, summary: dict) -> None:
    """The space file and the manifest: everything `resume` and `report` need to know about the run."""
    (run_dir / "space.py").write_text(space.source)  # resume reads the space from here
    run_constants = {"data_dir": str(data_dir), "cache_dir": str(cache_dir), "split": settings.split,
                     "image_size": settings.image_size, "max_epochs": settings.max_epochs,
                     "patience": settings.patience, "seed": settings.seed, "data_limit": settings.data_limit}
    manifest = {
        "space_file": str(space.path), "space_source": space.source, "space_doc": space.doc,
        "settings": dataclasses.asdict(settings), "smoke": smoke, "run_constants": run_constants,
        "searched": sorted(space.params), "conditions": space.conditions,
        "held_for_smoke": sorted(set(SMOKE) & set(space.params)) if smoke else [],
        "split_requested": requested_split,
        "objective": {"metric": OBJECTIVE, "mode": OBJECTIVE_MODE, "text": OBJECTIVE_TEXT,
                      "used_by": ["early stopping", "ASHA", "searcher", "leaderboard"]},
        "asha": {"metric": OBJECTIVE, "mode": OBJECTIVE_MODE, "time_attr": "training_iteration (epochs)"},
        "packages": store.package_versions(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "python": sys.version.split()[0],
        "data": {"dir": str(data_dir), "fingerprint": ds.fingerprint, "images": len(ds.files),
                 "unreadable": ds.unreadable, "ignored_non_images": len(ds.ignored), "split": summary},
        "started": datetime.now().isoformat(timespec="seconds"), "status": "running",
    }
    store.write_json(run_dir / "manifest.json", manifest)


def resume_search(run_dir: str | Path, address: str | None = None) -> Path:
    """Finish an interrupted search to its planned size; finished trials are kept, not rerun. A folder that
    cannot be resumed is a UserError (before Ray starts) in the words `report` uses for it."""
    run_dir = Path(run_dir).expanduser().resolve()
    problem = run_folder_problem(run_dir)
    if problem:
        raise UserError(problem)
    return execute(run_dir, address, restore=True)


def search_saved(run_dir: Path) -> bool:
    """Whether Ray Tune saved the search in run_dir/ray as Tuner.restore needs it: tuner.pkl (Tuner.can_restore)
    and an experiment state file (without one, restore raises). Tune writes both only once the search starts."""
    ray_dir = run_dir / "ray"
    return (ray_dir / "tuner.pkl").is_file() and any(ray_dir.glob("experiment_state-*.json"))


def run_folder_problem(run_dir: Path) -> str | None:
    """Why `resume` and `report` cannot use run_dir, in the words both print: no such folder, no manifest (not a
    run folder), or a search that stopped before Ray Tune saved any state (it cannot be resumed: start it again,
    with the `run` command given). None for a finished run (trials.csv) or one `resume` can finish."""
    if not run_dir.is_dir():
        return f"run folder {run_dir} does not exist; pass the folder `lungsearch run` printed last"
    if not (run_dir / "manifest.json").is_file():
        return (f"{run_dir} has no manifest.json: not a lungsearch run folder (pass the folder `lungsearch run` "
                f"printed last)")
    if (run_dir / "trials.csv").is_file() or search_saved(run_dir):
        return None
    manifest = store.read_json(run_dir / "manifest.json")
    return (f"{run_dir} is a run that never started a trial: its `run` stopped before Ray Tune saved any state in "
            f"{run_dir / 'ray'} (manifest: status {manifest.get('status', 'unknown')!r}, started "
            f"{manifest.get('started', '?')}), so it cannot be resumed and there is nothing to report. Start it "
            f"again with `{rerun_command(run_dir, manifest)}`")


def rerun_command(run_dir: Path, manifest: dict[str, Any]) -> str:
    """The `run` command that starts the run of run_dir again, as a new run folder with the same settings: the
    flags for the settings that differ from what the space file's SETTINGS (and --smoke) give."""
    space_file = Path(manifest.get("space_file") or run_dir / "space.py")
    try:
        if space_file.read_text() != manifest.get("space_source"):
            space_file = run_dir / "space.py"  # the space file changed since: the copy the run used
    except OSError:
        space_file = run_dir / "space.py"
    try:  # the space's SETTINGS as written (a literal dict), without running the file
        tree = ast.parse(manifest.get("space_source", ""))
        literal = next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                        and any(getattr(t, "id", None) == "SETTINGS" for t in node.targets)), {})
        base = dataclasses.asdict(resolve_settings(SimpleNamespace(settings=literal, path=space_file), {},
                                                   bool(manifest.get("smoke"))))
    except (ValueError, TypeError, SyntaxError, UserError):  # not a literal: give every flag
        base = {}
    settings = dict(manifest.get("settings", {}))
    if manifest.get("split_requested"):  # "auto", as given, rather than the split it resolved to
        settings["split"] = manifest["split_requested"]
    data_dir = manifest.get("data", {}).get("dir") or manifest.get("run_constants", {}).get("data_dir", "DIR")
    words = ["python", "-m", "lungsearch", "run", str(space_file), "--data", str(data_dir), "--results",
             str(run_dir.parent)] + (["--smoke"] if manifest.get("smoke") else [])
    for key in ("split", "image_size", "max_epochs", "num_samples", "seed", "cpus_per_trial", "gpus_per_trial",
                "max_concurrent", "max_failures", "searcher", "fixed_points"):
        if settings.get(key) is None or (key in base and settings[key] == base[key]):
            continue
        if key == "fixed_points":
            words += [] if settings[key] else [flag(key)]
        else:
            value = settings[key]
            words += [flag(key), f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def execute(run_dir: Path, address: str | None, restore: bool = False, mlflow: str | None = None) -> Path:
    """Start (or restore) the Tune experiment in run_dir/ray as the manifest describes, then write the tables.

    Returns the run folder when the search finished. Raises SearchIncomplete when it was interrupted (Ctrl-C:
    the manifest's status is "interrupted", no trials.csv, resume finishes it) or when every trial failed
    (status "failed"; trials.csv lists the errors). `mlflow`: an MLflow tracking URI (`mlflow_uri`) to log the
    trials to; it is kept in the manifest, and a resumed search logs where the first part did."""
    manifest = store.read_json(run_dir / "manifest.json")
    mlflow = manifest.get("mlflow") if restore else mlflow
    space = spaces.load(run_dir / "space.py")
    settings = SearchSettings(**manifest["settings"])
    started = time.time()
    interrupted, results, total = False, None, None
    try:
        RAY_LOG_HANDLER.open(run_dir)  # Ray's notices, from ray.init on, go to run_dir/ray.log
        if not ray.is_initialized():  # run_search connected already, to check the cluster before the run folder
            connect(address)
        res = resources(settings)
        if mlflow:
            mlflow_uri(mlflow)  # (resume) the search's MLflow callback needs MLflow installed
        manifest.update({"resources": {"cpu_per_trial": res["cpu"], "gpu_per_trial": res["gpu"]}, "mlflow": mlflow})
        store.write_json(run_dir / "manifest.json", {**manifest, "status": "running"})
        param_space, points = build_trials(space, settings, manifest["run_constants"], manifest["held_for_smoke"])
        total = settings.num_samples + len(points)
        print(f"search: {settings.num_samples} sampled trial(s) + {len(points)} fixed point(s), "
              f"{res['cpu']:g} CPU and {res['gpu']:g} GPU per trial, up to {settings.max_epochs} epochs"
              + (" (resumed)" if restore else ""), flush=True)
        fn = tune.with_resources(
            tune.with_parameters(trainable, conditions=space.conditions, run_dir=str(run_dir)), res)
        if restore:
            tuner = tune.Tuner.restore(str(run_dir / "ray"), trainable=fn, resume_unfinished=True,
                                       restart_errored=True)  # a trial lost with the driver or a node gets another go
            store.write_json(run_dir / "manifest.json", {**manifest, "status": "running"})
        else:
            tuner = tune.Tuner(
                fn,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=OBJECTIVE, mode=OBJECTIVE_MODE, num_samples=total,
                    search_alg=searcher(settings, points),
                    scheduler=FixedPointASHA(time_attr="training_iteration", max_t=settings.max_epochs,
                                             grace_period=min(settings.grace_period, settings.max_epochs),
                                             reduction_factor=settings.reduction_factor),
                    max_concurrent_trials=settings.max_concurrent or None,
                    trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                ),
                run_config=tune.RunConfig(
                    name="ray", storage_path=str(run_dir), verbose=0,
                    callbacks=[Progress(total, settings.max_epochs),
                               *([mlflow_callback(mlflow, run_dir)] if mlflow else [])],
                    failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                ),
            )
        with InterruptWatch() as watch:
            results = tuner.fit()
        interrupted = watch.interrupted
    except KeyboardInterrupt:  # Ctrl-C before the search started, or a second one while Tune was stopping
        interrupted = True
    finally:
        Progress.close_all()  # a live status line a second Ctrl-C left on the terminal
        ray.shutdown()
        RAY_LOG_HANDLER.close()
    wall = time.time() - started + (manifest.get("search_wall_s", 0) if restore else 0)
    manifest.update({"search_wall_s": round(wall, 1), "resumed": manifest.get("resumed", 0) + int(restore)})
    status = search_status(results, total, interrupted)
    if status == "interrupted":
        manifest.update({"status": "interrupted", "interrupted": datetime.now().isoformat(timespec="seconds")})
        store.write_json(run_dir / "manifest.json", manifest)
        if tune.Tuner.can_restore(str(run_dir / "ray")):
            raise SearchIncomplete(f"interrupted: the search stopped before it finished; its trials so far are saved "
                                   f"in {run_dir}. Finish it with `python -m lungsearch resume {run_dir}`", 130, run_dir)
        if not restore:  # nothing of the search was saved: the folder could not be resumed, so do not leave it
            shutil.rmtree(run_dir, ignore_errors=True)
        raise SearchIncomplete("interrupted before the search saved any state: nothing to resume; run it again", 130)
    failed = {Path(r.path).name for r in results if r.error}  # out of retries; a retried success is not here
    table = store.collect(run_dir, sorted(space.params), space.conditions, failed)
    kept = store.prune_checkpoints(run_dir, table, settings.keep_checkpoints)
    manifest.update({"status": status, "finished": datetime.now().isoformat(timespec="seconds"),
                     "checkpoints_kept": kept, **store.time_summary(table)})
    store.write_json(run_dir / "manifest.json", manifest)
    print_table(table, manifest)
    if status == "failed":
        first = str(results.errors[0]).strip().splitlines()[-1] if results.errors else "?"
        raise SearchIncomplete(f"error: every trial failed ({len(results)} of {len(results)}), so there is no model "
                               f"to report; the errors are in the error column of {run_dir / 'trials.csv'} (the "
                               f"first: {first})", 1, run_dir)
    return run_dir


def search_status(results, total: int | None, interrupted: bool) -> str:
    """'interrupted' (stopped before every planned trial ended: resume finishes it), 'failed' (every trial
    failed) or 'finished'. `results` is Tune's ResultGrid (None if fit() never returned)."""
    if interrupted or results is None or total is None or len(results) < total:
        return "interrupted"
    if results.num_terminated + results.num_errors < len(results):  # a trial still pending or running
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


class FixedPointsFirst(Searcher):
    """Suggest the fixed points first, then what a model-based searcher suggests. The searcher never sees
    the fixed points: it did not propose them, and they need keys outside its space."""

    def __init__(self, inner: Searcher, points: list[dict]):
        super().__init__()
        self.inner, self.points, self.fixed_ids = inner, list(points), set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        super().set_search_properties(metric, mode, config, **spec)
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.points:
            self.fixed_ids.add(trial_id)
            return self.points.pop(0)
        return self.inner.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.fixed_ids:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id not in self.fixed_ids:
            self.inner.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Everything in the one file Tune names: Tune saves to a temporary name and renames that file only, so
        the inner searcher's state (written by its own save, in a private temporary folder) goes inside it."""
        with tempfile.TemporaryDirectory(prefix="lungsearch-searcher-") as tmp:
            self.inner.save(os.path.join(tmp, "inner"))
            inner = Path(tmp, "inner").read_bytes()
        state = {"points": self.points, "fixed_ids": self.fixed_ids, "inner": inner}
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        if not isinstance(state, dict) or "inner" not in state:  # an older lungsearch lost the inner state
            raise UserError(f"{checkpoint_path} holds no state of the {type(self.inner).__name__} searcher (an "
                            f"older lungsearch saved it beside that file, where Ray Tune lost it): this search "
                            f"cannot be resumed; start it again with `python -m lungsearch run`")
        with tempfile.TemporaryDirectory(prefix="lungsearch-searcher-") as tmp:
            Path(tmp, "inner").write_bytes(state["inner"])
            self.inner.restore(os.path.join(tmp, "inner"))
        self.points, self.fixed_ids = list(state["points"]), set(state["fixed_ids"])


def searcher(settings: SearchSettings, points: list[dict]):
    """Seeded random search, or Optuna's TPE (`searcher: tpe`), with the fixed points run first."""
    if settings.searcher == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return FixedPointsFirst(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=settings.seed)), points)
    return BasicVariantGenerator(points_to_evaluate=points or None, random_state=settings.seed)


def print_split(summary: dict) -> None:
    print(f"split '{summary['protocol']}':")
    for part, p in summary["parts"].items():
        print(f"  {part:<8} {p['images']:>5} images ({p['NORMAL']} normal / {p['PNEUMONIA']} pneumonia, "
              f"{p['patients']} patients): {summary.get('sources', {}).get(part, '')}")
    print(f"objective (early stopping, ASHA, ranking): {OBJECTIVE_TEXT}", flush=True)
    if summary["images_in_two_parts"]:
        print(f"warning: {len(summary['images_in_two_parts'])} identical image(s) in two parts (leakage)")


def print_table(table, manifest: dict) -> None:
    if table.empty:
        print("no trials ran")
        return
    cols = ["trial", "fixed_point", "status", "epochs_run", "objective", "val_f1", "test_auc", "test_accuracy"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    counts = table["status"].value_counts().to_dict()
    print(f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"; split '{manifest['settings']['split']}'; search wall time {manifest['search_wall_s']:.0f} s; "
          f"mean trial start-up (process start to first batch) {manifest['trial_startup_s_mean']:.1f} s; "
          f"{100 * manifest['training_fraction']:.0f}% of trial time spent training", flush=True)
