"""Ray itself: start a private local instance or join a cluster (checked to answer within seconds), and the CPUs
and GPUs each trial asks of it."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import ray

from ..config import SearchSettings, UserError
from .progress import quiet_ray

ENV_PASSED = ("KERAS_BACKEND", "XLA_PYTHON_CLIENT_PREALLOCATE", "TF_FORCE_GPU_ALLOW_GROWTH", "TF_CPP_MIN_LOG_LEVEL",
              "LUNGSEARCH_CACHE")
LOOPBACK = "127.0.0.1"
CLUSTERS_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's own switch: 0 keeps every Ray process on this machine
PROBE_TIMEOUT_S = 5.0  # a cluster's GCS port must accept a connection this fast
CONNECT_TIMEOUT_S = 120.0  # ray.init on a cluster (LUNGSEARCH_CONNECT_TIMEOUT_S): Ray itself retries forever


def cluster_totals() -> dict[str, float]:
    """The CPUs and GPUs of the connected cluster's live nodes, in all."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {key: sum(n.get(key, 0.0) for n in nodes) for key in ("CPU", "GPU")}


def resources(settings: SearchSettings, nodes: list[dict[str, float]] | None = None) -> dict[str, float]:
    """CPUs and GPUs per trial: one GPU each where the cluster has GPUs, else one CPU (a trial computes on one
    thread, and trials side by side overlap one's Python work, such as tracing a new model, with another's
    training: a smoke search on 2 cores took 41 s this way and 62 s with two CPUs per trial), never more than
    one node has. `nodes`: each live node's resources (default: the connected cluster's).

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
        cpus = min(1.0, most("CPU"))
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
    local = {} if target else {"_node_ip_address": LOOPBACK}
    watchdog = None
    if target:  # the port answered, but a port that is not a Ray cluster's would keep ray.init waiting forever
        limit = float(os.environ.get("LUNGSEARCH_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
        watchdog = threading.Timer(limit, gave_up_connecting, (address, target, limit))
        watchdog.daemon = True
        watchdog.start()
    try:
        with sigterm_handler_kept(), contextlib.nullcontext() if target else loopback_only():
            ray.init(address=target or "local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, runtime_env={"env_vars": env}, **local)
    except ConnectionError as err:
        raise UserError(f"--address {address}: could not join the Ray cluster at {target}: {err}") from None
    finally:
        if watchdog:
            watchdog.cancel()
    if not target and node_address() != LOOPBACK:  # a Ray version whose switch works otherwise: do not hide it
        print(f"warning: the local Ray instance listens on {node_address()}, not on {LOOPBACK} only: its ports run "
              f"any code sent to them; keep them behind a firewall", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigterm_handler_kept():
    """ray.init replaces the SIGTERM handler with one that exits at once: put back the one found (`run` and
    `resume` stop a search on SIGTERM as on Ctrl-C, so that it can be resumed)."""
    main = threading.current_thread() is threading.main_thread()
    found = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if found is not None:
            signal.signal(signal.SIGTERM, found)


@contextlib.contextmanager
def loopback_only():
    """While a private local Ray instance starts: keep its node address 127.0.0.1, so that its GCS, raylet, agents,
    workers and this driver listen on the loopback interface only (they run any code sent to them).

    ray.init turns a loopback `_node_ip_address` into the machine's reachable address
    (`services.resolve_ip_for_localhost`), and a node on that address listens on every interface, unless Ray
    takes multi-node clusters to be off, as on Windows and macOS. Its switch for that,
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, is read when Ray is imported, so the constant it sets is switched off here
    too; the processes ray.init starts inherit the variable. Both are put back afterwards: a later `--address`
    connection is a cluster's."""
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(CLUSTERS_SWITCH), getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[CLUSTERS_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(CLUSTERS_SWITCH, None)
        else:
            os.environ[CLUSTERS_SWITCH] = saved_env


def node_address() -> str:
    """The address the connected Ray node listens on (127.0.0.1 for a private local instance)."""
    return ray.util.get_node_ip_address()


def gave_up_connecting(address: str, target: str, limit: float) -> None:
    """ray.init blocks in Ray's C++ client and retries forever: say why and end the process (nothing was written)."""
    print(f"error: --address {address}: {target} accepts connections but no Ray cluster answered there within "
          f"{limit:g} s (another service on that port, a different Ray version, or an authentication token "
          f"mismatch). Pass the address `ray start --head` printed (LUNGSEARCH_CONNECT_TIMEOUT_S sets the wait)",
          file=sys.stderr, flush=True)
    os._exit(2)
