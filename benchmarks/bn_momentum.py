"""BatchNorm's momentum at low and full fidelity: validation and holdout AUC epoch by epoch.

Trains a configuration with BatchNorm (the report's bn_aug by default) on a run's split (its split.json) at the
search stage's fidelity (a share of the training patients) and at full fidelity, once with Keras' default
momentum 0.99 and once with 0.9, and prints each epoch's validation AUC (the objective) and holdout AUC. Reads
no test image.

    python benchmarks/bn_momentum.py RUN_DIR [--fractions 0.25 1.0] [--epochs 6 8] [--fixed-point bn_aug]

The last line is a JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import store, train  # noqa: E402
from lungsearch.config import FIXED_POINTS  # noqa: E402


def curve(run_dir: Path, fixed_point: str, fraction: float, epochs: int, momentum: float) -> dict:
    """One training: the configuration at `momentum`, on `fraction` of the run's training patients."""
    constants = store.read_json(run_dir / "manifest.json")["run_constants"]
    cfg = {**FIXED_POINTS[fixed_point], "bn_momentum": momentum, "image_size": constants["image_size"],
           "split": constants["split"], "data_dir": constants["data_dir"], "cache_dir": constants["cache_dir"],
           "split_file": str(run_dir / "split.json"), "split_seed": constants["split_seed"], "seed": 0,
           "data_fraction": fraction, "max_epochs": epochs, "patience": epochs}
    rows = []
    started = time.time()
    train.run_trial(cfg, rows.append)
    return {"fixed_point": fixed_point, "fraction": fraction, "momentum": momentum, "seconds": time.time() - started,
            "val_auc": [round(r["val_auc"], 3) for r in rows],
            "holdout_auc": [round(r["holdout_auc"], 3) for r in rows if "holdout_auc" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--fixed-point", default="bn_aug", choices=[n for n, c in FIXED_POINTS.items() if c])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 8], help="epochs at each fraction")
    args = parser.parse_args()
    if len(args.epochs) != len(args.fractions):
        parser.error("give one --epochs value per --fractions value")
    results = []
    for fraction, epochs in zip(args.fractions, args.epochs):
        for momentum in (0.99, 0.9):
            r = curve(args.run_dir, args.fixed_point, fraction, epochs, momentum)
            results.append(r)
            print(f"{r['fixed_point']} on {fraction:.0%} of the training patients, momentum {momentum}: "
                  f"val AUC by epoch {r['val_auc']}, holdout AUC {r['holdout_auc']} ({r['seconds']:.0f} s)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
