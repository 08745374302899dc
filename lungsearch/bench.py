"""`lungsearch bench`: epoch times with and without augmentation, trial start-up, trials per hour.

Prints a table, then as its last line one JSON object with the figures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data
from .config import FIXED_POINTS, TrialConfig

FULL = {"image_size": 150, "images": 0, "epochs": 2}  # all training images of the patient split
SMOKE = {"image_size": 96, "images": 640, "epochs": 3}


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


def trial_startup(data_dir: Path, image_size: int, limit: int) -> float:
    """Process start to first batch of a one-epoch trial in a fresh Python process."""
    code = ("import json, os, sys; from lungsearch.train import run_trial; rows = [];"
            "run_trial(json.loads(sys.argv[1]), rows.append, started=float(os.environ['LUNGSEARCH_T0']));"
            "print(json.dumps(rows[0]['startup_s']))")
    config = {"data_dir": str(data_dir), "image_size": image_size, "max_epochs": 1, "data_limit": limit}
    env = {**os.environ, "LUNGSEARCH_T0": repr(time.time())}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True, env=env,
                         timeout=1800)
    if out.returncode:
        raise RuntimeError(f"start-up probe failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def trials_per_hour(data_dir: Path, trials: int = 4) -> tuple[float, float]:
    """Run a small smoke search through Ray (sampled trials only, 2 epochs) and count trials per hour of
    its search wall time (Ray start to last trial, as the run's manifest records it)."""
    space = Path(__file__).resolve().parent / "spaces" / "ablation.py"  # bundled with the package
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-m", "lungsearch", "run", str(space), "--data", str(data_dir),
                              "--smoke", "--num-samples", str(trials), "--no-fixed-points", "--max-epochs", "2",
                              "--results", tmp], capture_output=True, text=True, timeout=3600)
        if out.returncode:
            raise RuntimeError(f"bench search failed: {out.stderr[-2000:]}")
        manifest = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "manifest.json").read_text())
        wall = manifest["search_wall_s"]
        return trials / wall * 3600, wall


def run_bench(data_arg: str | None, smoke: bool, search: bool = True) -> dict[str, Any]:
    from .run.settings import data_dir_from

    import keras

    sizes = SMOKE if smoke else FULL
    data_dir = data_dir_from(data_arg)
    ds, images = data.load(data_dir, sizes["image_size"])
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
    startup = trial_startup(data_dir, sizes["image_size"], sizes["images"])
    print(f"trial start-up (process start to first batch): {startup:.1f} s", flush=True)
    result = {
        "backend": keras.backend.backend(), "image_size": sizes["image_size"], "images": int(len(x)),
        "epoch_s": round(rows["base"][0], 3), "aug_epoch_s": round(rows["base"][1], 3),
        "aug_ratio": round(rows["base"][1] / rows["base"][0], 3),
        "aug_ratio_max": round(max(a / p for p, a in rows.values()), 3),
        "per_model": {n: {"epoch_s": round(p, 3), "aug_epoch_s": round(a, 3)} for n, (p, a) in rows.items()},
        "trial_startup_s": round(startup, 2),
    }
    if search:
        per_hour, wall = trials_per_hour(data_dir)
        print(f"smoke search: 4 trials in {wall:.0f} s = {per_hour:.0f} trials per hour", flush=True)
        result.update({"trials_per_hour": round(per_hour, 1)})
    print(json.dumps(result), flush=True)
    return result
