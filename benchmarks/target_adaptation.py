"""Does fine-tuning the final model on the validation half (target distribution) help? Cross-fitted, so that
validation can still judge it.

Reads a finished run folder with an exported best_model.json (a target-split run) and runs the search's own
adaptation (lungsearch.adaptation.cross_fit on data.patient_folds) on the final model as it was chosen, with the
folds, epochs and learning rate given here. It prints both validation rules: the search's, fold by fold, and the
pooled out-of-fold AUC against the model as exported (whose validation AUC is optimistic: early stopping and the
choice of the final model both read it). The test part is scored for the record, as in the run's report, never to
choose.

    python benchmarks/target_adaptation.py RUN_DIR [--folds 5] [--epochs 5] [--learning-rate 1e-4]

Prints one line per model, each fold's AUC before and after, the validation and test AUCs before and after, the
paired difference against the base model on the test patients, and as its last line a JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import adaptation, analysis, data, models, store  # noqa: E402
from lungsearch.metrics import paired_difference  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    args = p.parse_args()
    a = analysis.analyse(args.run_dir, log=lambda s: None)
    card = store.read_json(a.run.dir / "best_model.json")
    trials = list(dict.fromkeys(adaptation.source_trial(t) for t in card["trials"]))  # as chosen, before adapting
    members, before = [], {"val": [], "test": []}
    for trial in trials:
        cfg, model = a.run.config(trial), a.run.model(trial)
        parts = a.data.parts(int(model.input_shape[1]), models.decode_normalization(model))  # as it was trained
        x = {part: parts[part][0] for part in ("val", "test")}
        members.append(adaptation.Member(trial, model, cfg.tta, x))
        for part in before:
            before[part].append(models.predict_proba(model, x[part], cfg.tta))
    y = {part: a.data.parts(int(a.run.manifest["run_constants"]["image_size"]))[part][1].ravel()
         for part in ("val", "test")}
    folds = data.patient_folds(a.data.patients("val"), y["val"], args.folds,
                               int(a.run.manifest["run_constants"]["split_seed"]))
    got = adaptation.cross_fit(members, y["val"], folds, np.mean(before["val"], 0), args.epochs, args.learning_rate,
                               a.run.seed, models.predict_proba)
    for f in got.fold_auc:
        print(f"fold {f['fold']} ({f['images']} images): AUC {f['before']:.4f} before, {f['adapted']:.4f} adapted")
    groups = a.data.patients("test")
    after = analysis.evaluate_probabilities("adapted", trials, [0], y, got.p, 1000, a.run.seed, groups=groups)
    exported = analysis.evaluate_probabilities("exported", trials, [0], y,
                                               {k: np.mean(v, 0) for k, v in before.items()}, 1000, a.run.seed,
                                               groups=groups)
    base = next(e for e in a.evals.values() if e.fixed_point == "base")
    out = {"run": a.run.dir.name, "models": len(trials), "folds": args.folds, "epochs": args.epochs,
           "learning_rate": args.learning_rate, "fold_auc": got.fold_auc, "fold_gain": got.gain,
           "val_auc_exported": exported.val["auc"], "val_auc_adapted_oof": after.val["auc"],
           "test_auc_exported": exported.test["auc"], "test_auc_adapted": after.test["auc"],
           "test_auc_base": base.test["auc"],
           "adapted_minus_base": paired_difference(after, base, 1000, a.run.seed)["auc"],
           "exported_minus_base": paired_difference(exported, base, 1000, a.run.seed)["auc"],
           "fold_rule_says_keep": got.kept,
           "pooled_rule_says_keep": bool(after.val["auc"] > exported.val["auc"])}
    print(f"validation: fold-by-fold gain {got.gain:+.4f} ({'keep' if got.kept else 'drop'}); pooled out-of-fold AUC "
          f"{out['val_auc_adapted_oof']:.4f} against {out['val_auc_exported']:.4f} as exported (optimistic)")
    print(f"test AUC: exported {out['test_auc_exported']:.4f}, adapted {out['test_auc_adapted']:.4f}, base "
          f"{out['test_auc_base']:.4f}")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
