"""Does fine-tuning the final model on the validation half (target distribution) help? Cross-fitted, so that
validation can still judge it.

Reads a finished run folder with an exported best_model.json (a target-split run). The validation part is cut by
patient into k folds; each model of the final model is copied k times, and copy j is fine-tuned on the other k - 1
folds (a few epochs at a small learning rate) and predicts only fold j (out-of-fold, OOF) and the test part. The
OOF predictions say, on validation alone, whether the adapted model is better than the model as exported (whose
validation AUC is optimistic: early stopping and the choice of the final model both read it). The test part is
scored for the record, as in the run's report, never to choose.

    python benchmarks/target_adaptation.py RUN_DIR [--folds 5] [--epochs 5] [--learning-rate 1e-4]

Prints one line per model and fold, the validation and test AUCs before and after, the paired difference against
the base model on the test patients, and as its last line a JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import analysis, models, store  # noqa: E402
from lungsearch.config import TrialConfig  # noqa: E402
from lungsearch.metrics import paired_difference, roc_auc  # noqa: E402


def patient_folds(patients: np.ndarray, labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A fold number per image: whole patients, each class dealt round-robin after a seeded shuffle."""
    fold = np.zeros(len(patients), dtype=int)
    rng = np.random.default_rng(seed)
    for c in (0, 1):
        keys = sorted({p for p, y in zip(patients, labels) if y == c})
        rng.shuffle(keys)
        for j, key in enumerate(keys):
            fold[patients == key] = j % k
    return fold


def adapted(model: keras.Model, cfg: TrialConfig, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
            seed: int) -> keras.Model:
    """A copy of `model` fine-tuned on (x, y)."""
    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    copy.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=True)
    return copy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    args = p.parse_args()
    a = analysis.analyse(args.run_dir, log=lambda s: None)
    card = store.read_json(a.run.dir / "best_model.json")
    trials = card.get("trials") or [card["trials"][0]]
    patients = a.data.patients("val")
    yv, yt = a.data.parts(int(a.run.manifest["run_constants"]["image_size"]))["val"][1], \
        a.data.parts(int(a.run.manifest["run_constants"]["image_size"]))["test"][1]
    folds = patient_folds(patients, yv.ravel(), args.folds)
    oof, test = np.zeros((len(trials), len(yv))), np.zeros((len(trials), len(yt)))
    before_v, before_t = [], []
    for m, trial in enumerate(trials):
        cfg, model = a.run.config(trial), a.run.model(trial)
        parts = a.data.parts(int(model.input_shape[1]), models.decode_normalization(model))  # as it was trained
        xv, xt = parts["val"][0], parts["test"][0]
        before_v.append(models.predict_proba(model, xv, cfg.tta))
        before_t.append(models.predict_proba(model, xt, cfg.tta))
        for j in range(args.folds):
            fit = folds != j
            tuned = adapted(model, cfg, xv[fit], yv[fit], args.epochs, args.learning_rate, seed=j)
            oof[m, ~fit] = models.predict_proba(tuned, xv[~fit], cfg.tta)
            test[m] += models.predict_proba(tuned, xt, cfg.tta) / args.folds
            print(f"{trial} fold {j}: OOF AUC {roc_auc(yv[~fit].ravel(), oof[m, ~fit]):.4f}", flush=True)
    y = {"val": yv.ravel(), "test": yt.ravel()}
    seed, groups = 0, a.data.patients("test")
    after = analysis.evaluate_probabilities("adapted", trials, [0], y, {"val": oof.mean(0), "test": test.mean(0)}, 1000, seed,
                              groups=groups)
    exported = analysis.evaluate_probabilities("exported", trials, [0], y, {"val": np.mean(before_v, 0), "test": np.mean(before_t, 0)},
                                 1000, seed, groups=groups)
    base = next(e for e in a.evals.values() if e.fixed_point == "base")
    out = {"run": a.run.dir.name, "models": len(trials), "folds": args.folds, "epochs": args.epochs,
           "learning_rate": args.learning_rate,
           "val_auc_exported": exported.val["auc"], "val_auc_adapted_oof": after.val["auc"],
           "test_auc_exported": exported.test["auc"], "test_auc_adapted": after.test["auc"],
           "test_auc_base": base.test["auc"],
           "adapted_minus_base": paired_difference(after, base, 1000, seed)["auc"],
           "exported_minus_base": paired_difference(exported, base, 1000, seed)["auc"],
           "validation_says_keep": bool(after.val["auc"] > exported.val["auc"])}
    print(f"validation AUC: exported {out['val_auc_exported']:.4f} (optimistic), adapted out-of-fold "
          f"{out['val_auc_adapted_oof']:.4f}; validation says {'keep' if out['validation_says_keep'] else 'drop'} it")
    print(f"test AUC: exported {out['test_auc_exported']:.4f}, adapted {out['test_auc_adapted']:.4f}, base "
          f"{out['test_auc_base']:.4f}")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
