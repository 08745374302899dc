"""Which part should early stopping watch under the target split: the target validation or the in-distribution holdout?

Trains the report's three models (and any extra configs given as JSON) on the `target` split for a
fixed number of epochs without early stopping, predicting the validation half of test/ and the
in-distribution holdout after every epoch. The validation half is then cut by patient into two
quarters, A and B: each stopping rule picks an epoch, and the picked epoch is scored on B, which no
rule saw. Rules: best A AUC (target validation), best holdout AUC, lowest holdout loss (the report's
rule, on in-distribution data). The test half of test/ is never read.

    python benchmarks/early_stopping.py --data DIR [--image-size 64] [--epochs 12] [--seeds 0 1]

Prints one line per model and seed, a table of means, and as its last line a JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import data, models, train  # noqa: E402
from lungsearch.config import FIXED_POINTS, TrialConfig  # noqa: E402
from lungsearch.metrics import binary_metrics  # noqa: E402


def trace(cfg: TrialConfig, parts: dict, epochs: int) -> dict[str, list[np.ndarray]]:
    """Train for `epochs` epochs; the predictions on val and holdout after each."""
    keras.utils.set_random_seed(cfg.seed)
    (x, y), out = parts["train"], {"val": [], "holdout": []}
    model = models.build(cfg)
    train.compile_model(model, cfg, int(np.ceil(len(x) / cfg.batch_size)))
    for _ in range(epochs):
        model.fit(x, y, batch_size=cfg.batch_size, epochs=1, verbose=0, shuffle=True)
        for part in out:
            out[part].append(models.predict_proba(model, parts[part][0], cfg.tta))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--extra", default="[]", help="JSON list of config dicts to add to the report's models")
    args = ap.parse_args()
    configs = {name: changes for name, changes in FIXED_POINTS.items()}
    configs.update({f"extra{i}": c for i, c in enumerate(json.loads(args.extra))})
    rows = []
    for seed in args.seeds:
        ds, images = data.load_images(args.data, args.image_size)
        split = data.make_split(ds, "target", seed=seed)
        parts = {p: data.arrays(images, ds, idx) for p, idx in split.items()}
        val = split["val"]
        quarter_a = data.grouped_pick(ds.labels[val], [ds.patients[i] for i in val], 0.5,
                                      np.random.default_rng(1000 + seed))
        y_val, y_hold = parts["val"][1].ravel(), parts["holdout"][1].ravel()
        for name, changes in configs.items():
            cfg = TrialConfig(**changes, image_size=args.image_size, max_epochs=args.epochs, split="target", seed=seed)
            preds = trace(cfg, parts, args.epochs)
            a = [binary_metrics(y_val[quarter_a], p[quarter_a])["auc"] for p in preds["val"]]
            hold = [binary_metrics(y_hold, p) for p in preds["holdout"]]
            picks = {"target_val_auc": int(np.argmax(a)), "holdout_auc": int(np.argmax([h["auc"] for h in hold])),
                     "holdout_loss": int(np.argmin([h["loss"] for h in hold]))}
            b = {rule: binary_metrics(y_val[~quarter_a], preds["val"][e][~quarter_a]) for rule, e in picks.items()}
            row = {"model": name, "seed": seed, "epochs": {r: e + 1 for r, e in picks.items()},
                   "b_auc": {r: m["auc"] for r, m in b.items()}, "b_loss": {r: m["loss"] for r, m in b.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    rules = ("target_val_auc", "holdout_auc", "holdout_loss")
    print(f"\n{'rule':<16} {'mean B AUC':>10} {'mean B loss':>11} {'mean epoch':>10}  (B: a quarter of test/ no rule saw)")
    summary = {}
    for r in rules:
        summary[r] = {k: float(np.mean([row[k][r] for row in rows])) for k in ("b_auc", "b_loss", "epochs")}
        print(f"{r:<16} {summary[r]['b_auc']:>10.4f} {summary[r]['b_loss']:>11.4f} {summary[r]['epochs']:>10.1f}")
    print(json.dumps({"image_size": args.image_size, "epochs": args.epochs, "seeds": args.seeds, "runs": len(rows),
                      "mean": summary}))


if __name__ == "__main__":
    main()
