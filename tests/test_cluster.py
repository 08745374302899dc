"""A real three-node Ray cluster on loopback (a head and two workers started with `ray start`), a smoke
search spread over it, a worker node killed mid-search, and a driver killed and resumed on the cluster."""
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, processes_marked
from test_search import SPACE, kill_driver_then_resume, lungsearch

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with(text: str) -> list[int]:
    """PIDs whose command line contains `text` (read from /proc: no extra dependency)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found + [c for f in found for c in children(f)]


def other_address() -> str | None:
    """This machine's address on its network (not loopback), or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: the kernel only picks the interface
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def listening(pids: list[int]) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, pid) of every TCP socket these processes listen on, read from /proc."""
    owner = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:  # gone, or a file descriptor closed while it was read
            pass
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)  # 32-bit words in the machine's (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(raw)
            found.append((getattr(address, "ipv4_mapped", None) or address, int(hex_port, 16), owner[fields[9]]))
    return found


LOCAL_RAY = """
import json, sys, ray
from lungsearch.run.cluster import connect
connect(None)
ray.get(ray.remote(lambda: 1).remote())  # a worker process, listening as trial workers do
print(json.dumps(ray.get_runtime_context().gcs_address), flush=True)
sys.stdin.readline()
ray.shutdown()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads listening sockets from Linux's /proc")
def test_a_local_run_listens_on_loopback_only(ray_processes_stopped):
    """Ray runs any code sent to its ports: without --address, its GCS, raylet, agents, workers and the driver listen
    on 127.0.0.1 only, and this machine's other address refuses every one of those ports."""
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        gcs = json.loads(driver.stdout.readline())
        sockets = listening(processes_marked(ray_processes_stopped) + [driver.pid])
    finally:
        driver.communicate("\n", timeout=60)
    assert gcs.startswith("127.0.0.1:") and int(gcs.rsplit(":", 1)[1]) in {port for _, port, _ in sockets}
    assert len({pid for _, _, pid in sockets}) >= 3, sockets  # the driver, the GCS, the raylet, a worker, ...
    assert all(address.is_loopback for address, _, _ in sockets), sockets
    outside = other_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback to connect from")
    for _, port, _ in sockets:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outside, port), timeout=5).close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (no CPUs: it only hosts the driver's trials bookkeeping) and two 1-CPU worker nodes."""
    port = free_port()
    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text(secrets.token_hex(32))
    # Token authentication on every node and the driver, as on a real cluster; faster dead-node detection.
    settings = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                    *common], check=True, env=env, capture_output=True, timeout=120)
    workers = {}
    for name in ("worker1", "worker2"):
        nm_port = free_port()
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--node-manager-port={nm_port}",
                        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                        *common], check=True, env=env, capture_output=True, timeout=120)
        workers[name] = nm_port
    address = f"127.0.0.1:{port}"
    node_ids = json.loads(subprocess.run(
        [sys.executable, "-c", "import ray, json; ray.init(address=%r, logging_level='ERROR');"
         "print(json.dumps({n['NodeManagerPort']: n['NodeID'] for n in ray.nodes() if n['Alive']}))" % address],
        capture_output=True, text=True, check=True, env=env, timeout=120).stdout.strip().splitlines()[-1])
    yield {"address": address, "workers": workers, "node_ids": {int(k): v for k, v in node_ids.items()}}
    stop_cluster(port)
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def stop_cluster(port: int) -> None:
    """Kill this cluster's processes only (`ray stop` would also stop every other Ray instance on the machine)."""
    roots = processes_with(f"--gcs_server_port={port}") + processes_with(f"127.0.0.1:{port}")
    for pid in {c for r in roots for c in children(r)} | set(roots):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def kill_node(nm_port: int) -> None:
    """SIGKILL a worker node's raylet and every process under it (its trial workers), as a crashed machine."""
    raylets = [p for p in processes_with(f"--node_manager_port={nm_port}") if "raylet" in
               Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode()]
    assert raylets, f"no raylet with node manager port {nm_port}"
    for pid in [c for r in raylets for c in children(r)] + raylets:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def trials_on(run_dir: Path, node_id: str) -> tuple[list[str], list[str]]:
    """Trials that finished on the node, and trials that are training on it now."""
    finished, running = [], []
    for log in (run_dir / "attempts").glob("*.log"):
        result = run_dir / "ray" / log.stem / "result.json"
        if node_id not in log.read_text() or not result.exists():
            continue
        (finished if '"final": true' in result.read_text() else running).append(log.stem)
    return finished, running


def test_search_survives_losing_a_worker_node(cluster, tmp_path, dataset, cache_dir):
    space_file = tmp_path / "lr.py"
    space_file.write_text(SPACE.replace("[3, 5, 7]", "[3]") % (4, 2))
    results = tmp_path / "results"
    driver = subprocess.Popen([sys.executable, "-m", "lungsearch", "run", str(space_file), "--data", str(dataset),
                               "--smoke", "--address", cluster["address"], "--storage", str(results),
                               "--cpus-per-trial", "1", "--max-failures", "2"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = cluster["workers"]["worker2"]
    victim_id = cluster["node_ids"][victim]
    deadline, done_on_victim = time.time() + 400, None
    while time.time() < deadline and driver.poll() is None:
        dirs = list(results.glob("*"))
        if dirs and (dirs[0] / "attempts").is_dir():
            finished, running = trials_on(dirs[0], victim_id)
            if finished and running:  # kill it while it holds a finished trial and trains another
                kill_node(victim)
                done_on_victim = finished
                break
        time.sleep(0.2)
    assert done_on_victim, "the second worker never finished one trial while training another"
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-4000:]
    run_dir = Path(out.strip().splitlines()[-1])
    trials = pd.read_csv(run_dir / "trials.csv", keep_default_na=False)
    assert len(trials) == 7 and set(trials["status"]) <= {"finished", "stopped"}, trials[["trial", "status", "error"]]
    retried = trials[trials["retries"] > 0]
    assert len(retried) >= 1
    for _, t in retried.iterrows():
        tried = t["nodes_tried"].split()
        assert tried[0] == victim_id[:12] and tried[-1] != victim_id[:12]
    survivor = cluster["node_ids"][cluster["workers"]["worker1"]][:12]
    assert (trials["node"] == survivor).sum() >= 1
    by_name = trials.set_index("trial")
    for name in done_on_victim:  # finished on the lost node: kept, not rerun
        assert by_name.loc[name, "node"] == victim_id[:12] and by_name.loc[name, "retries"] == 0
    print("trials per node:", trials["node"].value_counts().to_dict(), "retried:", list(retried["trial"]))


def test_driver_killed_on_the_cluster_resumes(cluster, tmp_path, dataset, cache_dir):
    kill_driver_then_resume(tmp_path, dataset, ["--address", cluster["address"], "--cpus-per-trial", "1"])
