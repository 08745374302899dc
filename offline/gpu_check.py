#!/usr/bin/env python3
"""One call on an offline GPU machine: the project's speed and 150 px quality figures, each step time-boxed.

Run from the project root, with the offline kit (kit/site.tar.xz, from make-wheels.sh) and the data packed at
150 px (data-small/, from pack_data.py) beside it:

    python3 offline/gpu_check.py                       # on the GPU machine: at most 9 minutes
    python3 offline/gpu_check.py --smoke --data DIR    # the same steps at tiny sizes, JAX on the CPU: minutes

Steps, in order (each under its own time limit; a step runs even when an earlier one failed):
  setup       unpack the kit (when kit/site.tar.xz is there, else use the installed packages); versions, device
  bench       epochs with and without augmentation, data feed to the device, trial start-up cold and warm
  ablation    a 100-trial ablation search at 150 px (ASHA, up to 20 epochs, 4 trials per GPU), report included
  robust      the recommended two-stage target-split search at 150 px with a time budget, report included
  efficiency  how busy the ablation search kept the GPU (solo epoch times of a sample of its configurations)
  pack        every run folder and the logs into OUT/gpu-check.tar.gz (split into 15 MiB parts if larger)
Then a summary: each step's status and wall time, and the figures the check is for. The exit status is 0 only
when every step passed. Only files under OUT come back from the GPU machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 2**20  # a file that comes back from the GPU machine holds at most 16 MiB
ARCHIVE_BYTES = 56 * 2**20  # what comes back holds at most 64 MiB in all: the archive's share
VERSIONS = """
import json, os, platform, sys
import jax, keras, ray, lungsearch
print(json.dumps({"python": platform.python_version(), "jax": jax.__version__, "keras": keras.__version__,
                  "keras_backend": keras.backend.backend(), "ray": ray.__version__,
                  "lungsearch": lungsearch.__version__, "lungsearch_from": os.path.dirname(lungsearch.__file__),
                  "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count()}))
"""

# Sizes: on the GPU, the figures the check is for; --smoke, the same steps in minutes on 2 CPU cores.
GPU = {
    "minutes": 9,
    "bench": ["--no-search"],
    "ablation": ["--image-size", "150", "--num-samples", "100", "--max-epochs", "20", "--gpus-per-trial", "0.25",
                 "--budget-minutes", "3"],
    "robust": ["--image-size", "150", "--gpus-per-trial", "0.25", "--budget-minutes", "1", "--max-epochs", "15",
               "--confirm-top", "2", "--confirm-seeds", "2"],
    "solo_sample": "6",
    "planned_ablation_trials": 103,
    # seconds: the most a step may take, and the least kept for it while earlier steps run
    "limits": {"setup": (60, 20), "bench": (150, 60), "ablation": (300, 120), "robust": (240, 120),
               "efficiency": (90, 30), "pack": (60, 15)},
}
SMOKE = {
    "minutes": 5,
    "bench": ["--smoke", "--no-search"],
    "ablation": ["--smoke", "--no-fixed-points", "--num-samples", "2", "--max-epochs", "2", "--budget-minutes", "1"],
    "robust": ["--smoke", "--no-fixed-points", "--num-samples", "1", "--max-epochs", "2", "--search-epochs", "2",
               "--budget-minutes", "1", "--confirm-top", "1", "--confirm-seeds", "1"],
    "solo_sample": "1",
    "planned_ablation_trials": 2,
    "limits": {"setup": (45, 10), "bench": (100, 40), "ablation": (90, 40), "robust": (120, 60),
               "efficiency": (60, 20), "pack": (30, 10)},
}
STEPS = list(GPU["limits"])


@dataclass
class Step:
    name: str
    status: str = "skipped"  # passed, failed, timed out, skipped
    wall_s: float = 0.0
    limit_s: float = 0.0
    note: str = ""
    output: list[str] = field(default_factory=list)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, JAX on the CPU (a proof run before the GPU's)")
    p.add_argument("--data", default="data-small", help="the dataset folder, with train/ and test/ (default: "
                                                        "data-small, from pack_data.py)")
    p.add_argument("--kit", default="kit/site.tar.xz", help="the offline kit; when it is missing, the packages "
                                                            "installed here are used (default: kit/site.tar.xz)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out",
                   help="folder for the archive and the summary (default: $OUT, else gpu-check-out)")
    p.add_argument("--minutes", type=float, help="the whole check's time (default: 9; 5 with --smoke)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their commands; run nothing")
    return p.parse_args(argv)


class Check:
    """The steps of one check, their environment, and the time left."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.sizes = args, SMOKE if args.smoke else GPU
        self.started = time.monotonic()
        self.deadline = self.started + 60 * (args.minutes or self.sizes["minutes"])
        self.scale = (args.minutes or self.sizes["minutes"]) / self.sizes["minutes"]  # --minutes scales the limits
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.results, self.logs = self.work / "results", self.work / "logs"
        self.logs.mkdir()
        self.data = str(Path(args.data).resolve())
        self.kit = Path(args.kit).resolve()
        self.env = self.environment()
        self.steps = {name: Step(name) for name in STEPS}
        self.figures: dict = {}

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1",
                   RAY_TMPDIR=str(self.work / "ray"))
        env.setdefault("LUNGSEARCH_CACHE", str(self.work / "cache"))
        paths = ([str(ROOT / ".site")] if self.kit.is_file() else []) + [str(ROOT)]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if self.args.smoke:
            env["JAX_PLATFORMS"] = "cpu"
        return env

    def lungsearch(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lungsearch", *args]

    def command(self, name: str) -> list[str]:
        s = self.sizes
        if name == "setup":
            unpack = (f"mkdir -p {ROOT / '.site'} && tar -xJf {self.kit} -C {ROOT / '.site'} && "
                      if self.kit.is_file() else f"echo 'no kit at {self.kit}: the installed packages' && ")
            return ["bash", "-c", unpack + "(command -v nvidia-smi >/dev/null && nvidia-smi -L || true) && "
                    f"{sys.executable} -c '{VERSIONS}'"]
        if name == "bench":
            return self.lungsearch("bench", "--data", self.data, *s["bench"])
        if name in ("ablation", "robust"):
            return self.lungsearch("run", name, "--data", self.data, "--results", str(self.results / name),
                                   *s[name])
        if name == "efficiency":
            return self.lungsearch("bench", "--efficiency", str(self.run_folder("ablation") or "ABLATION_RUN"),
                                   "--solo-sample", s["solo_sample"])
        return ["pack", str(Path(self.args.out) / "gpu-check.tar.gz")]

    def limit(self, name: str) -> float:
        """The step's own limit, cut so the steps after it keep their least time before the deadline."""
        limits = self.sizes["limits"]
        later = STEPS[STEPS.index(name) + 1:]
        left = self.deadline - time.monotonic() - self.scale * sum(limits[n][1] for n in later)
        return min(self.scale * limits[name][0], left)

    def run(self, name: str) -> None:
        step = self.steps[name]
        step.limit_s = self.limit(name)
        if step.limit_s < 10:
            step.note = "no time left"
            print(f"\n=== {name}: skipped, no time left", flush=True)
            return
        print(f"\n=== {name} (limit {step.limit_s:.0f} s): {' '.join(self.command(name))}", flush=True)
        started = time.monotonic()
        try:
            if name == "pack":
                step.status = self.pack(Path(self.args.out))
            else:
                step.status = self.execute(step, self.command(name))
        except Exception as err:  # noqa: BLE001  the steps after this one still run
            step.status, step.note = "failed", f"{type(err).__name__}: {err}"
        step.wall_s = time.monotonic() - started
        print(f"=== {name}: {step.status} in {step.wall_s:.0f} s {step.note}", flush=True)

    def execute(self, step: Step, cmd: list[str]) -> str:
        """Run `cmd` in its own process group, its output to the console and logs/STEP.log; at the limit, Ctrl-C
        (a search then stops and saves what it has), 30 s later kill. Then any Ray process it left is ended."""
        with open(self.logs / f"{step.name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                    cwd=ROOT, start_new_session=True)

            def pump():
                for line in proc.stdout:
                    sys.stdout.write(line)
                    log.write(line)
                    step.output.append(line.rstrip("\n"))

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=step.limit_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            reader.join(timeout=10)
        self.end_left_processes()
        if timed_out:
            return "timed out"
        step.note = "" if proc.returncode == 0 else f"(exit {proc.returncode})"
        return "passed" if proc.returncode == 0 else "failed"

    def end_left_processes(self) -> None:
        """Kill the processes a step left behind: those carrying this check's own RAY_TMPDIR."""
        mark = f"RAY_TMPDIR={self.env['RAY_TMPDIR']}\0".encode()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if mark in environ.read_bytes() and int(environ.parent.name) != os.getpid():
                    os.kill(int(environ.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def run_folder(self, name: str) -> Path | None:
        found = sorted((self.results / name).glob("*/manifest.json"))
        return found[-1].parent if found else None

    def pack(self, out: Path) -> str:
        """Every run folder and the logs in one gzip archive under `out`, models included while the archive
        stays under ARCHIVE_BYTES: the exported best models first. Models left out are listed in
        left-out.txt. Over PART_BYTES, the archive is split into parts (cat them to join)."""
        out.mkdir(parents=True, exist_ok=True)
        self.write_summary(self.work)
        files = sorted(p for p in self.work.rglob("*") if p.is_file() and not p.is_symlink()
                       and not p.is_relative_to(self.work / "cache") and not p.is_relative_to(self.work / "ray"))
        models = [p for p in files if p.suffix == ".keras"]
        best = [p for p in models if "best_model" in p.relative_to(self.work).as_posix()]
        room = ARCHIVE_BYTES - sum(p.stat().st_size for p in files if p not in models)
        taken, left_out = [], []
        for p in sorted(best, key=lambda p: (not p.is_relative_to(self.results / "robust"), p)) + \
                sorted((p for p in models if p not in best), key=lambda p: p.stat().st_size):
            if p.stat().st_size <= room:
                taken.append(p)
                room -= p.stat().st_size
            else:
                left_out.append(p)
        (self.work / "left-out.txt").write_text("".join(f"{p.relative_to(self.work)} {p.stat().st_size}\n"
                                                        for p in left_out))
        archive = out / "gpu-check.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
            for p in [self.work / "left-out.txt", *(p for p in files if p not in models), *taken]:
                tar.add(p, arcname=f"gpu-check/{p.relative_to(self.work)}")
        size = archive.stat().st_size
        if size > PART_BYTES:
            with open(archive, "rb") as whole:
                for k, chunk in enumerate(iter(lambda: whole.read(PART_BYTES), b"")):
                    (out / f"gpu-check.tar.gz.part{k}").write_bytes(chunk)
            archive.unlink()
        self.steps["pack"].note = (f"{size / 2**20:.1f} MiB, {len(taken)} of {len(models)} models"
                                   + (f", in {-(-size // PART_BYTES)} parts" if size > PART_BYTES else ""))
        return "passed"

    # --- the figures the check is for ---

    def collect(self) -> None:
        f = self.figures
        setup = last_json(self.steps["setup"].output)
        if setup:
            f["versions"] = setup
        bench = last_json(self.steps["bench"].output)
        if bench:
            f["bench"] = bench
        for name in ("ablation", "robust"):
            folder = self.run_folder(name)
            if folder:
                f[name] = run_figures(folder)
        ablation = f.get("ablation")
        if ablation:
            ablation["planned_trials"] = self.sizes["planned_ablation_trials"]
        eff = last_json(self.steps["efficiency"].output)
        if eff:
            f["efficiency"] = eff

    def summary_lines(self) -> list[str]:
        lines = [f"{'step':<11} {'status':<10} {'wall s':>7} {'limit s':>8}  note"]
        for s in self.steps.values():
            lines.append(f"{s.name:<11} {s.status:<10} {s.wall_s:>7.0f} {s.limit_s:>8.0f}  {s.note}")
        lines.append(f"total {time.monotonic() - self.started:.0f} s")
        f = self.figures
        v = f.get("versions")
        if v:
            lines.append(f"python {v['python']}, jax {v['jax']}, keras {v['keras']} ({v['keras_backend']}), "
                         f"ray {v['ray']}, lungsearch {v['lungsearch']}; devices {', '.join(v['devices'])}")
        b = f.get("bench")
        if b:
            lines += [
                f"bench at {b['image_size']} px, {b['images']} images: base epoch {b['epoch_s']:.3f} s, "
                f"with augmentation {b['aug_epoch_s']:.3f} s",
                f"  augmentation / plain epoch: base {b['aug_ratio']:.2f}, worst model {b['aug_ratio_max']:.2f} "
                f"(target <= 1.2: {'yes' if b['aug_ratio_max'] <= 1.2 else 'no'})",
                f"  trial start-up: cold {b['trial_startup_cold_s']:.2f} s, warm {b['trial_startup_warm_s']:.2f} s "
                f"(target warm < 2 s: {'yes' if b['trial_startup_warm_s'] < 2 else 'no'})",
                f"  data feed host to device per epoch: {b['feed_s']:.3f} s, {100 * b['feed_share']:.0f}% of a plain "
                f"epoch (the most keeping the data on the device could save)"]
        a = f.get("ablation")
        if a:
            done = a["trials_ended"] >= a["planned_trials"] and not a["budget_hit"]
            lines += [
                f"ablation search: {a['trials_ended']} of {a['planned_trials']} trials ended, {a['epochs']} epochs in "
                f"{a['search_wall_s']} s ({a['epochs_per_s']} epochs/s); status {a['status']}"
                f"{', budget reached' if a['budget_hit'] else ''}; mean trial start-up {a['trial_startup_s_mean']} s",
                f"  all trials in under 5 min: {'yes' if done and a['search_wall_s'] < 300 else 'no'}"
                + (f" ({60 * a['trials_ended'] / a['search_wall_s']:.1f} trials per minute)" if a["search_wall_s"] else "")]
            lines += ["  " + line for line in a["models"]]
        e = f.get("efficiency")
        if e:
            lines.append(f"search efficiency {e['efficiency']:.2f} (solo epoch {e['solo_epoch_s_mean']:.3f} s, "
                         f"{e['solo_timed']} of {e['configs']} configurations timed; {e['epochs_per_s']} epochs/s "
                         f"on {e['slots']:g} slots)")
        r = f.get("robust")
        if r:
            lines.append(f"robust search: {r['trials_ended']} trials ({', '.join(f'{n} {k}' for k, n in r['stages'].items())}"
                         f"), {r['epochs']} epochs in {r['search_wall_s']} s; status {r['status']}"
                         f"{', budget reached' if r['budget_hit'] else ''}")
            lines += ["  " + line for line in r["models"]]
        return lines

    def write_summary(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.collect()
        (folder / "summary.txt").write_text("\n".join(self.summary_lines()) + "\n")
        (folder / "summary.json").write_text(json.dumps(
            {"steps": {s.name: {"status": s.status, "wall_s": round(s.wall_s, 1), "limit_s": round(s.limit_s),
                                "note": s.note} for s in self.steps.values()}, "figures": self.figures}, indent=2))


def last_json(lines: list[str]) -> dict | None:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_figures(folder: Path) -> dict:
    """Wall time, trials, epochs, whether the time budget cut the search, and the test metrics of the models the
    report evaluated, from a run folder."""
    manifest = json.loads((folder / "manifest.json").read_text())
    wall, budget = manifest.get("search_wall_s") or 0, (manifest.get("settings") or {}).get("budget_minutes") or 0
    trials = [t for t in read_csv(folder / "trials.csv") if t["status"] in ("finished", "stopped")]
    epochs = sum(int(t["epochs_run"] or 0) for t in trials)
    uncounted = any(r["counted"] == "0" for r in read_csv(folder / "budget.csv"))
    out = {"run": folder.name, "status": manifest.get("status"), "search_wall_s": wall,
           "trial_startup_s_mean": manifest.get("trial_startup_s_mean"),
           "training_fraction": manifest.get("training_fraction"), "trials_ended": len(trials),
           "stages": {stage: sum(t["stage"] == stage for t in trials) for stage in sorted({t["stage"] for t in trials})},
           "epochs": epochs, "epochs_per_s": round(epochs / wall, 3) if wall else None,
           "budget_hit": bool(budget) and (uncounted or wall >= budget * 60 - 1), "models": []}
    if (folder / "evaluation.json").is_file():
        for model in json.loads((folder / "evaluation.json").read_text()):
            test = model.get("metrics", {}).get("test_at_threshold") or {}
            out["models"].append(f"{model['model']}: test at its threshold " + ", ".join(
                f"{k} {test[k]:.3f}" for k in ("accuracy", "f1", "recall", "specificity", "auc") if k in test))
    return out


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    check = Check(args)
    if args.dry_run:
        for name in STEPS:
            print(f"{name:<11} limit {check.sizes['limits'][name][0]:>4} s: {' '.join(check.command(name))}")
        shutil.rmtree(check.work)
        return 0
    print(f"gpu check: {'smoke, CPU' if args.smoke else 'GPU'}; data {check.data}; work folder {check.work}; "
          f"{(check.deadline - check.started) / 60:.1f} min in all", flush=True)
    for name in STEPS:
        check.run(name)
    check.write_summary(Path(args.out))
    print("\n=== summary (also in " + str(Path(args.out) / "summary.txt") + ")")
    print("\n".join(check.summary_lines()), flush=True)
    return 0 if all(s.status == "passed" for s in check.steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
