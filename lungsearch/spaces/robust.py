"""Robust training: which choices make a model trained on train/ hold up on the target distribution?

The official test images come from another distribution than train/: models that fit train/ best
call most normal children sick there. This space validates on the target distribution (the `target`
split: half of the dataset's own test/ patients; the other half is the untouched test part) and
searches what may carry over: intensity augmentation (brightness, contrast, gamma, noise), input
normalisation (per-image standardisation, histogram equalisation, CLAHE), class weighting, label
smoothing, MixUp, AdamW with weight decay, learning-rate schedules, a global-average-pooling head,
test-time flip augmentation, together with the report's own knobs (BatchNorm, geometric augmentation,
Dropout, dense width, learning rate). Early stopping watches the validation part, as the objective does.

This is the space to start with. It searches in two stages (see SETTINGS): many cheap trials on a quarter of the
training data, then the best configurations and base retrained in full with several seeds, ranked by their mean.

    python -m lungsearch run robust --data DIR --image-size 64          # about an hour on 2 CPU cores; needs DIR/test/
    python -m lungsearch run robust --data DIR                          # 150 px, the report's size: on a GPU
    python -m lungsearch run robust --data DIR --smoke                  # a few minutes on 2 CPU cores
"""
import keras_tuner as kt

hp = kt.HyperParameters()
# the report's knobs
hp.Boolean("batchnorm")
hp.Boolean("augment")
hp.Float("dropout", 0.0, 0.6, step=0.1)
hp.Int("dense_units", 32, 512, sampling="log")
hp.Float("learning_rate", 1e-4, 3e-3, sampling="log")
# robustness knobs
hp.Choice("head", ["flatten", "gap"])
hp.Float("aug_brightness", 0.0, 0.3, step=0.1)
hp.Float("aug_contrast", 0.0, 0.3, step=0.1)
hp.Float("aug_gamma", 0.0, 0.4, step=0.1)
hp.Float("aug_noise", 0.0, 0.06, step=0.02)
hp.Choice("normalize", ["none", "standardize", "equalize", "clahe"])
hp.Boolean("class_weight")
hp.Float("label_smoothing", 0.0, 0.2, step=0.05)
hp.Choice("mixup", [0.0, 0.2, 0.4])
hp.Choice("optimizer", ["adam", "adamw"])
with hp.conditional_scope("optimizer", ["adamw"]):
    hp.Float("weight_decay", 1e-5, 1e-2, sampling="log")
hp.Choice("lr_schedule", ["constant", "cosine", "plateau"])
hp.Boolean("tta")
# early_stop_on is not searched: a trial judged after its first epoch shows nothing of which part early stopping
# watches, so TPE cannot learn it there, yet it decides what a full-length trial keeps. In one search TPE drifted to
# `holdout` (113 of 145 trials); its first- and third-ranked configurations both watched the holdout, and retrained
# in full they kept epochs the in-distribution holdout liked and the validation part did not: confirmed validation
# AUC 0.943 and 0.943 against 0.976 to 0.980 for every configuration that watched validation. (The objective is
# validation AUC at the kept epoch, so a trial that watches another part is judged on a number it does not keep the
# best of; benchmarks/early_stopping.py found neither rule better on validation images neither saw.)

# Two stages. The search stage trains each trial on a quarter of the training patients for up to 9 epochs, ASHA
# over two brackets (first judged after 1 or after 3 epochs) and TPE learning from every trial's objective at the
# first rung; its budget is 30 minutes. The confirmation stage then retrains the 3 best configurations and base on
# every training image with 3 training seeds each, up to 20 epochs, and the final model is chosen on validation.
# Last, the final model is adapted to the validation part (its distribution is the one the model will meet) by
# cross-fitting over 5 patient folds, and kept that way only when the held-out folds say it helps.
SETTINGS = {
    "split": "target",
    "num_samples": 1000,  # the 30-minute budget ends the search stage first
    "budget_minutes": 30,
    "search_fraction": 0.25,
    "search_epochs": 9,
    "grace_period": 1,
    "reduction_factor": 3,
    "brackets": 2,
    "searcher": "tpe",
    "max_epochs": 20,
    "patience": 5,
    "confirm_top": 3,
    "confirm_seeds": 3,
    "adapt_folds": 5,
    "adapt_epochs": 5,
    "adapt_learning_rate": 1e-4,
    "seed": 0,
    "split_seed": 0,
}
