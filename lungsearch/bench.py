"""`lungsearch bench`: epoch times with and without augmentation, trial start-up, trials per hour.

Prints a table, then as its last line one JSON object with the figures.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import data, space as spaces, store
from .config import FIXED_POINTS, SMOKE as SMOKE_SEARCH, TrialConfig, UserError

FULL = {"image_size": 150, "images": 0, "epochs": 2}  # all training images of the patient split
SMOKE = {"image_size": SMOKE_SEARCH["image_size"], "images": SMOKE_SEARCH["data_limit"], "epochs": 3}  # --smoke's


def epoch_time(cfg: TrialConfig, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Seconds of the fastest of `epochs` epochs after a warm-up epoch (which pays for tracing and
    compiling). The fastest, not the mean: other work on the machine only ever adds time."""
    import keras

    from . import models, train

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    keras.utils.set_random_seed(0)
    model = models.build(cfg)
    train.compile_model(model, cfg)
    model.fit(x, y, batch_size=cfg.batch_size, epochs=1, verbose=0)
    times: list[float] = []
    model.fit(x, y, batch_size=cfg.batch_size, epochs=epochs, verbose=0, callbacks=[Timer()])
    return min(times)


def feed_time(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Seconds to move one epoch of shuffled training batches from host memory to the device, as `fit` does
    with NumPy arrays, without training: what keeping the training images on the device could save per epoch
    at most. The fastest of 3 passes after a warm-up pass."""
    import keras

    order = np.random.default_rng(0).permutation(len(x))
    times = []
    for _ in range(4):
        started = time.perf_counter()
        for i in range(0, len(x), batch_size):
            batch = order[i:i + batch_size]
            last = keras.ops.convert_to_tensor(x[batch]), keras.ops.convert_to_tensor(y[batch])
        keras.ops.convert_to_numpy(last[0][:1])  # waits for the transfers queued before it
        times.append(time.perf_counter() - started)
    return min(times[1:])


STARTUP_PROBE = """
import json, os, pickle, sys
from lungsearch.train import run_trial
config = json.loads(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    dataset = pickle.load(f)  # what a search's driver hands its trials
cold, warm = [], []
run_trial(config, cold.append, started=float(os.environ["LUNGSEARCH_T0"]), dataset=dataset)
run_trial(config, warm.append, dataset=dataset)
print(json.dumps([cold[0]["startup_s"], warm[0]["startup_s"]]))
"""


def trial_startup(dataset: data.Dataset, image_size: int, limit: int) -> tuple[float, float]:
    """Trial start-up, cold and warm: process start to the first batch of a one-epoch trial in a fresh Python
    process (a new trial worker), then call to first batch of the same trial again in that process (a reused
    worker: Python, Keras and the decoded images are loaded already)."""
    config = {"data_dir": str(dataset.root), "image_size": image_size, "max_epochs": 1, "data_limit": limit}
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp) / "dataset.pickle"
        scan.write_bytes(pickle.dumps(dataset))
        env = {**os.environ, "LUNGSEARCH_T0": repr(time.time())}
        out = subprocess.run([sys.executable, "-c", STARTUP_PROBE, json.dumps(config), str(scan)],
                             capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"start-up probe failed: {out.stderr[-2000:]}")
    cold, warm = json.loads(out.stdout.strip().splitlines()[-1])
    return float(cold), float(warm)


def smoke_search(data_dir: Path, results: Path, reuse_workers: bool, cpus_per_trial: float | None = None) -> Path:
    """Run the bundled ablation space with --smoke (what a first search on a laptop runs); its run folder."""
    space = Path(__file__).resolve().parent / "spaces" / "ablation.py"  # bundled with the package
    flags = ([] if reuse_workers else ["--no-reuse-workers"]) + \
        ([f"--cpus-per-trial={cpus_per_trial:g}"] if cpus_per_trial else [])
    out = subprocess.run([sys.executable, "-m", "lungsearch", "run", str(space), "--data", str(data_dir), "--smoke",
                          "--results", str(results), *flags], capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"bench search failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def trial_epochs(run_dir: Path) -> list[tuple[TrialConfig, int]]:
    """Each trial of a finished run folder: its config (inactive conditional parameters dropped, as the trial
    ran it) and the epochs it trained."""
    manifest = store.read_manifest(run_dir)
    history = pd.read_csv(run_dir / "history.csv")
    epochs = history.groupby("trial").size().to_dict()
    trials = []
    for params in sorted((run_dir / "ray").glob("*/params.json")):
        config = spaces.active(store.read_json(params), manifest["conditions"])
        trials.append((TrialConfig.from_dict(config), int(epochs.get(params.parent.name, 0))))
    return trials


def slots(manifest: dict[str, Any]) -> float:
    """How many trials the machine runs side by side at full speed: its GPUs when trials use GPUs, else its
    CPUs over the CPUs per trial."""
    res, machine = manifest["resources"], manifest["cluster"]
    if res["gpu_per_trial"]:
        return machine["GPU"]
    return max(1.0, machine["CPU"] // res["cpu_per_trial"])


SOLO_PROBE = """
import json, sys
from lungsearch.bench import epoch_time
from lungsearch.config import TrialConfig
from lungsearch.data import scan
from lungsearch.train import trial_data
times, scans = [], {}
for config in json.loads(sys.argv[1]):
    cfg = TrialConfig.from_dict(config)
    if cfg.data_dir not in scans:  # hash the folder once, as a search's driver does for its trials
        scans[cfg.data_dir] = scan(cfg.data_dir)
    x, y, _ = trial_data(cfg, scans[cfg.data_dir])
    times.append(epoch_time(cfg, x, y, 1))
print(json.dumps(times))
"""


def solo_epoch_times(configs: list[TrialConfig], cpus: float) -> list[float]:
    """One epoch of each config on its trial's own training images, after a warm-up epoch, alone in a fresh
    process; on CPUs (`cpus` > 0) with as many threads as a trial gets."""
    env = dict(os.environ)
    if cpus:
        env.update({v: str(max(1, int(cpus))) for v in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")})
    out = subprocess.run([sys.executable, "-c", SOLO_PROBE, json.dumps([c.to_dict() for c in configs])],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"solo epoch timing failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def search_efficiency(run_dir: Path, solo: dict[TrialConfig, float], sample: int = 0) -> dict[str, Any]:
    """Epochs trained x each trial's solo epoch time, over search wall time x slots: 1.0 when the search keeps
    every slot training all the time. `solo` caches the solo epoch time of each trial config
    (`solo_epoch_times`, on the CPUs of one trial, or alone on a GPU).

    `sample` > 0 times at most that many of the configs not in `solo` (a seeded random choice); the epochs of
    the others count at the epoch-weighted mean solo time of those timed, so a large search is measured in
    minutes. `solo_timed` and `configs` in the result say how many were timed of how many."""
    manifest = store.read_manifest(run_dir)
    res = manifest["resources"]
    trials = trial_epochs(run_dir)
    configs = list(dict.fromkeys(cfg for cfg, n in trials if n))
    missing = [cfg for cfg in configs if cfg not in solo]
    if sample and len(missing) > sample:
        missing = random.Random(0).sample(missing, sample)
    if missing:
        solo.update(zip(missing, solo_epoch_times(missing, 0 if res["gpu_per_trial"] else res["cpu_per_trial"])))
    timed = [(cfg, n) for cfg, n in trials if n and cfg in solo]
    epochs = sum(n for _, n in trials)
    per_epoch = sum(n * solo[cfg] for cfg, n in timed) / max(1, sum(n for _, n in timed))
    wall = manifest["search_wall_s"]
    return {"wall_s": wall, "epochs": epochs, "epochs_per_s": round(epochs / wall, 3),
            "slots": slots(manifest), "efficiency": round(per_epoch * epochs / (wall * slots(manifest)), 3),
            "solo_epoch_s_mean": round(per_epoch, 3), "solo_timed": len({cfg for cfg, _ in timed}),
            "configs": len(configs), "trial_startup_s_mean": manifest["trial_startup_s_mean"],
            "trials": len(trials)}


def run_efficiency(run_dir: str | Path, sample: int = 0) -> dict[str, Any]:
    """`bench --efficiency RUN_DIR`: the search efficiency of a finished run folder (its first stage, `ray/`),
    printed as a line and then one JSON object."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file() or not (run_dir / "history.csv").is_file():
        raise UserError(f"{run_dir} is not a finished run folder (no manifest.json or history.csv): give the folder "
                        f"`lungsearch run` printed last")
    f = search_efficiency(run_dir, {}, sample)
    print(f"search {run_dir.name}: {f['trials']} trials, {f['epochs']} epochs in {f['wall_s']:.0f} s "
          f"({f['epochs_per_s']:.2f} epochs/s) on {f['slots']:g} slots; solo epoch {f['solo_epoch_s_mean']:.2f} s "
          f"(mean per epoch, {f['solo_timed']} of {f['configs']} configurations timed); efficiency "
          f"{f['efficiency']:.2f}; mean trial start-up {f['trial_startup_s_mean']:.1f} s", flush=True)
    print(json.dumps(f), flush=True)
    return f


def check_options(search: bool, compare_fresh: bool, cpus_per_trial: float | None) -> None:
    """Refuse, before any work, a bad --cpus-per-trial and the search's options without the search."""
    if cpus_per_trial is not None and not (math.isfinite(cpus_per_trial) and cpus_per_trial >= 0):
        raise UserError(f"--cpus-per-trial must be 0 (chosen from the machine) or more, got {cpus_per_trial:g}")
    given = [flag for flag, value in (("--cpus-per-trial", cpus_per_trial is not None),
                                      ("--compare-fresh-workers", compare_fresh)) if value]
    if not search and given:
        raise UserError(f"{' and '.join(given)} set{'' if len(given) > 1 else 's'} the smoke search, which "
                        f"--no-search skips: drop one or the other")


def run_bench(data_arg: str | None, smoke: bool, search: bool = True, compare_fresh: bool = False,
              cpus_per_trial: float | None = None) -> dict[str, Any]:
    from .run.settings import data_dir_from

    check_options(search, compare_fresh, cpus_per_trial)
    import keras

    sizes = SMOKE if smoke else FULL
    data_dir = data_dir_from(data_arg)
    ds, images = data.load_images(data_dir, sizes["image_size"])
    split = data.make_split(ds, "patient", seed=0, data_limit=sizes["images"])
    x, y = data.arrays(images, ds, split["train"])
    print(f"backend {keras.backend.backend()}, {len(x)} training images at {sizes['image_size']} px, "
          f"batch 32, fastest of {sizes['epochs']} epochs after a warm-up epoch", flush=True)
    print(f"{'model':<16} {'epoch s':>9} {'with aug s':>11} {'ratio':>7}", flush=True)
    rows = {}
    for name, changes in FIXED_POINTS.items():
        cfg = TrialConfig(**{**changes, "image_size": sizes["image_size"]})
        plain = epoch_time(TrialConfig(**{**cfg.to_dict(), "augment": False}), x, y, sizes["epochs"])
        augmented = epoch_time(TrialConfig(**{**cfg.to_dict(), "augment": True}), x, y, sizes["epochs"])
        rows[name] = (plain, augmented)
        print(f"{name:<16} {plain:>9.2f} {augmented:>11.2f} {augmented / plain:>7.2f}", flush=True)
    feed = feed_time(x, y, 32)
    print(f"data feed, host to device, one epoch of batches of 32 without training: {feed:.3f} s "
          f"({100 * feed / rows['base'][0]:.0f}% of a plain base epoch)", flush=True)
    cold, warm = trial_startup(ds, sizes["image_size"], sizes["images"])
    print(f"trial start-up, to the first batch: {cold:.1f} s cold (from process start: a new worker), "
          f"{warm:.1f} s warm (a reused worker)", flush=True)
    result = {
        "backend": keras.backend.backend(), "image_size": sizes["image_size"], "images": int(len(x)),
        "epoch_s": round(rows["base"][0], 3), "aug_epoch_s": round(rows["base"][1], 3),
        "aug_ratio": round(rows["base"][1] / rows["base"][0], 3),
        "aug_ratio_max": round(max(a / p for p, a in rows.values()), 3),
        "per_model": {n: {"epoch_s": round(p, 3), "aug_epoch_s": round(a, 3)} for n, (p, a) in rows.items()},
        "feed_s": round(feed, 4), "feed_share": round(feed / rows["base"][0], 3),
        "trial_startup_cold_s": round(cold, 2), "trial_startup_warm_s": round(warm, 2),
    }
    if search:
        print("smoke search (ablation --smoke): efficiency = epochs trained x solo epoch time / (wall time x slots)",
              flush=True)
        print(f"{'workers':<8} {'wall s':>7} {'epochs':>7} {'epochs/s':>9} {'slots':>6} {'efficiency':>11} "
              f"{'start-up s':>11}", flush=True)
        solo: dict[TrialConfig, float] = {}
        figures = {}
        with tempfile.TemporaryDirectory() as tmp:
            for kind in (["fresh"] if compare_fresh else []) + ["reused"]:
                run_dir = smoke_search(data_dir, Path(tmp) / kind, reuse_workers=kind == "reused", cpus_per_trial=cpus_per_trial)
                f = figures[kind] = search_efficiency(run_dir, solo)
                print(f"{kind:<8} {f['wall_s']:>7.0f} {f['epochs']:>7} {f['epochs_per_s']:>9.2f} {f['slots']:>6g} "
                      f"{f['efficiency']:>11.2f} {f['trial_startup_s_mean']:>11.1f}", flush=True)
        best = figures["reused"]
        result.update({"search_efficiency": best["efficiency"], "search_epochs_per_s": best["epochs_per_s"],
                       "search_wall_s": best["wall_s"], "search_slots": best["slots"],
                       "trials_per_hour": round(best["trials"] / best["wall_s"] * 3600, 1)})
        if compare_fresh:
            result["fresh_workers"] = figures["fresh"]
    print(json.dumps(result), flush=True)
    return result
