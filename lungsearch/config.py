"""Trial configuration with the source report's defaults, the error type for user mistakes, and `shown`, how a
path is written into a message."""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable


class UserError(Exception):
    """A mistake in the user's input (a path, a flag, a space file); the message says how to fix it."""


def shown(name) -> str:
    """A path or file name as text that prints and encodes anywhere: the bytes of a name that is not valid
    UTF-8 (kept by Python as surrogates) written as \\xNN escapes."""
    text = str(name)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def count(n: int, word: str, words: str = "") -> str:
    """`n` and the word in the number it needs: "1 epoch", "2 epochs", "2 retries" (with words="retries")."""
    return f"{n} {word if n == 1 else words or word + 's'}"


SPLITS = ("patient", "report", "target")
# "auto" (a search's default): target when the dataset has its own test/ folder, else patient.
SEARCH_SPLITS = ("auto", *SPLITS)


@dataclass(frozen=True)
class Objective:
    """What every part of a search compares, and which way is better: the name trials report it under (and the
    trials.csv column), the mode ("max": higher is better, as Ray Tune and keras-tuner say it) and its words.
    Early stopping, ASHA, the searchers, the leaderboard, the confirmation stage and `versus` all ask it."""

    key: str
    mode: str
    text: str

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"an objective's mode is max or min, got {self.mode!r}")

    @property
    def descending(self) -> bool:
        """Whether best-first order sorts the values descending (pandas: ascending=not descending)."""
        return self.mode == "max"

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"

    @property
    def worst(self) -> float:
        """A value every finite value is better than: where a best-so-far starts."""
        return -math.inf if self.mode == "max" else math.inf

    def better(self, a: Any, b: Any) -> bool:
        """Whether `a` is strictly better than `b`. A missing or NaN `a` never is; any finite `a` is better than a
        missing or NaN `b`."""
        if a is None or not math.isfinite(a):
            return False
        if b is None or (isinstance(b, float) and math.isnan(b)):
            return True
        return a > b if self.mode == "max" else a < b

    def reached(self, value: float, target: float) -> bool:
        """Whether `value` is at least as good as `target`."""
        return value >= target if self.mode == "max" else value <= target

    def best(self, values) -> float:
        """The best finite value of `values`; NaN when there is none."""
        best = self.worst
        for v in values:
            if self.better(v, best):
                best = v
        return best if math.isfinite(best) else math.nan


# The one number that early stopping, ASHA, the searchers and the leaderboard all compare: validation AUC
# of the weights a trial keeps (its best epoch so far). AUC does not depend on a threshold, so a trial
# trained with class weights, label smoothing or MixUp is compared on the same footing as one without,
# and a model that calls everything PNEUMONIA (F1 about 0.77 on this data) scores 0.5, not well.
OBJECTIVE = Objective("objective", "max", "validation AUC at the kept epoch (the epoch whose weights the trial keeps)")
# What a run's leaderboard may rank by: the objective, or validation F1 at the threshold chosen on validation (what
# the design card asked for; it depends on that threshold, which AUC does not)
RANK_BY = {"objective": "objective", "f1": "val_f1_tuned"}  # name: the trials.csv column
RANK_TEXT = {"objective": OBJECTIVE.text,
             "f1": "validation F1 at the threshold chosen on validation, at the kept epoch (rank_by: f1)"}
NORMALIZATIONS = ("none", "standardize", "equalize", "clahe")
DECODE_TIME_NORMALIZATIONS = ("equalize", "clahe")  # applied by OpenCV when images are decoded (cached)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs. Defaults are the report's base model and training protocol."""

    # architecture
    conv_blocks: int = 3
    filters: int = 32
    filter_growth: float = 2.0
    kernel_size: int = 3
    pooling: str = "max"  # max | avg
    head: str = "flatten"  # flatten | gap (global average pooling)
    dense_units: int = 64
    batchnorm: bool = False
    # BatchNorm's moving-statistics momentum. Keras' default, 0.99 (the report's models keep it), needs hundreds of
    # steps before the statistics inference uses catch up with training: a trial on a quarter of the images at
    # 64 px (37 steps an epoch) then scores near chance at every epoch, so a low-fidelity stage culls every
    # BatchNorm configuration. 0.9 catches up within an epoch (benchmarks/bn_momentum.py)
    bn_momentum: float = 0.9
    dropout: float = 0.0
    residual: bool = False
    padding: str = "valid"  # valid (the report's) | same; residual blocks always use same
    # augmentation, with ImageDataGenerator's meaning (shear in degrees, as Keras' ImageDataGenerator)
    augment: bool = False
    aug_rotation: float = 20.0
    aug_zoom: float = 0.15
    aug_shift: float = 0.2
    aug_shear: float = 0.15
    aug_flip: bool = True
    # intensity augmentation, training only (0: off): brightness shift U(-b, b) on [0, 1] images, contrast
    # factor U(1-c, 1+c) around the image mean, gamma exp(U(-g, g)), Gaussian noise of this std
    aug_brightness: float = 0.0
    aug_contrast: float = 0.0
    aug_gamma: float = 0.0
    aug_noise: float = 0.0
    # input normalisation: none | standardize (per image, a model layer) | equalize | clahe (OpenCV, at decode)
    normalize: str = "none"
    # training
    image_size: int = 150
    learning_rate: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    class_weight: bool = False
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; adamw only
    lr_schedule: str = "constant"  # constant | cosine (to 0 over max_epochs) | plateau (halve after patience//2)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0: off
    tta: bool = False  # at evaluation, average the prediction with that of the horizontally flipped image
    early_stop_on: str = "val"  # val (the split's validation part) | holdout (in-distribution, target split)
    mixed_precision: bool = False
    seed: int = 0  # the training seed: weight initialisation, shuffling, augmentation, MixUp
    split_seed: int = 0  # the split's seed: the same split_seed gives the same parts whatever the training seed
    # data and bookkeeping
    data_dir: str = ""
    cache_dir: str = ""
    split: str = "patient"
    data_limit: int = 0  # keep at most this many training images (0: all); smoke runs only
    # multi-fidelity: train on this share of the training part's patients (stratified, drawn with split_seed, so
    # every trial of a search sees the same images); the search stage's cheap trials, 1 at full fidelity
    data_fraction: float = 1.0
    split_file: str = ""  # a run's split.json: the trial trains and is judged on the parts it lists
    fixed_point: str = ""  # name of the report model this trial reproduces, empty for sampled trials
    confirms: str = ""  # confirmation stage: the search trial whose configuration this trial retrains

    def __post_init__(self) -> None:
        validate(self, TRIAL_RULES, [
            (lambda c: c.weight_decay == 0.0 or c.optimizer == "adamw", "weight_decay",
             "0 unless optimizer is 'adamw' (Adam has no decoupled weight decay)"),
            (lambda c: c.early_stop_on == "val" or c.split == "target", "early_stop_on",
             "'val' unless split is 'target' (only the target split has an in-distribution holdout)"),
        ])

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Build a config, naming any unknown key and the closest known one."""
        known = field_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            raise UserError("; ".join(unknown_key_message(k) for k in unknown))
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: coerce(k, v, types[k]) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrialConfig)}


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(field_names()), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown parameter {key!r}{hint}; known parameters: {', '.join(sorted(field_names()))}"


TYPE_TEXT = {"int": "a int (a whole number)", "float": "a float (a finite number)",
             "bool": "a bool (True or False)", "str": "a str"}


def coerce(key: str, value: Any, type_name: str) -> Any:
    """Turn numpy scalars and ints-for-floats into the declared type; reject the rest (a str for a number, a
    float with a fractional part for an int, a bool for a number, inf or nan)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar from a search algorithm
        value = value.item()
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif type_name == "str":
        if isinstance(value, str):
            return value
    raise InvalidValue(key, value, TYPE_TEXT.get(type_name, f"a {type_name}"))


class InvalidValue(UserError):
    """A field of TrialConfig or SearchSettings with a value outside its type or range. `key`, `value` and
    `expected` let a caller name where the value came from (a flag, a space file's SETTINGS)."""

    def __init__(self, key: str, value: Any, expected: str, name: str | None = None):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{name or key} must be {expected}, got {value!r}")


Rule = tuple[Callable[[Any], bool], str]  # (test of the value, the allowed values in words)


def at_least(n: float) -> Rule:
    return (lambda v: v >= n), f"at least {n:g}"


def one_of(*values: str) -> Rule:
    quoted = [repr(v) for v in values]
    return (lambda v: v in values), f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# Rules for the fields TrialConfig and SearchSettings share: the same key allows the same values in both.
COMMON_RULES: dict[str, Rule] = {
    "max_epochs": at_least(1),
    "patience": at_least(1),
    "image_size": at_least(16),
    "data_limit": ((lambda v: v >= 0), "0 (all) or more"),
    "seed": ((lambda v: 0 <= v < 2 ** 32), "in [0, 2**32)"),
    "split_seed": ((lambda v: 0 <= v < 2 ** 32), "in [0, 2**32)"),
}

TRIAL_RULES: dict[str, Rule] = {
    **COMMON_RULES,
    "conv_blocks": at_least(1),
    "filters": at_least(1),
    "filter_growth": ((lambda v: v > 0), "above 0"),
    "kernel_size": ((lambda v: v in (1, 3, 5, 7)), "one of 1, 3, 5, 7"),
    "pooling": one_of("max", "avg"),
    "head": one_of("flatten", "gap"),
    "padding": one_of("valid", "same"),
    "dense_units": at_least(1),
    "dropout": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
    "bn_momentum": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
    "learning_rate": ((lambda v: v > 0), "above 0"),
    "batch_size": at_least(1),
    "split": ((lambda v: v in SPLITS), f"one of {', '.join(SPLITS)}"),
    "aug_brightness": ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]"),
    "aug_contrast": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
    "aug_gamma": ((lambda v: 0.0 <= v <= 2.0), "in [0, 2]"),
    "aug_noise": ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]"),
    "normalize": ((lambda v: v in NORMALIZATIONS), f"one of {', '.join(NORMALIZATIONS)}"),
    "optimizer": one_of("adam", "adamw"),
    "weight_decay": ((lambda v: v >= 0.0), "0 or more"),
    "lr_schedule": one_of("constant", "cosine", "plateau"),
    "label_smoothing": ((lambda v: 0.0 <= v < 0.5), "in [0, 0.5)"),
    "mixup": ((lambda v: v >= 0.0), "0 (off) or more"),
    "early_stop_on": one_of("val", "holdout"),
    "data_fraction": ((lambda v: 0.0 < v <= 1.0), "in (0, 1]"),
}

SETTINGS_RULES: dict[str, Rule] = {
    **COMMON_RULES,
    "num_samples": ((lambda v: v >= 0), "0 or more"),
    "split": ((lambda v: v in SEARCH_SPLITS), f"one of {', '.join(SEARCH_SPLITS)}"),
    "grace_period": at_least(1),
    "reduction_factor": at_least(2),
    "searcher": one_of("random", "tpe"),
    "random_fraction": ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]"),
    "cpus_per_trial": ((lambda v: v >= 0), "0 (automatic) or more"),
    "gpus_per_trial": ((lambda v: v == -1 or v >= 0), "-1 (automatic: one per trial where there are GPUs), 0 or more"),
    "max_concurrent": ((lambda v: v >= 0), "0 (as many as resources allow) or more"),
    "max_failures": ((lambda v: v >= 0), "0 or more"),
    "keep_checkpoints": ((lambda v: v >= 0), "0 or more"),
    "budget_epochs": ((lambda v: v >= 0), "0 (no budget) or more"),
    "budget_minutes": ((lambda v: v >= 0), "0 (no budget) or more"),
    "search_fraction": ((lambda v: 0.0 < v <= 1.0), "in (0, 1]"),
    "search_epochs": ((lambda v: v >= 0), "0 (max_epochs) or more"),
    "brackets": at_least(1),
    "confirm_top": ((lambda v: v >= 0), "0 (no confirmation stage) or more"),
    "confirm_seeds": at_least(1),
    "rank_by": ((lambda v: v in RANK_BY), f"one of {', '.join(RANK_BY)}"),
    "adapt_folds": ((lambda v: v == 0 or v >= 2), "0 (no adaptation) or 2 or more"),
    "adapt_epochs": at_least(1),
    "adapt_learning_rate": ((lambda v: 0.0 < v < 1.0), "in (0, 1)"),
}


def validate(obj: Any, rules: dict[str, Rule], relations: list[tuple[Callable[[Any], bool], str, str]] = ()) -> None:
    """The one check of TrialConfig and SearchSettings (from __post_init__): each field's type, coercing numpy
    scalars, whole floats for ints and ints for floats in place; then each field's range; then `relations`
    between fields, as (test of the object, key, allowed values in words). Raises InvalidValue."""
    for f in dataclasses.fields(obj):
        try:
            object.__setattr__(obj, f.name, coerce(f.name, getattr(obj, f.name), f.type))
        except InvalidValue as err:
            if f.name not in rules:
                raise
            raise InvalidValue(f.name, err.value, f"{err.expected}, {rules[f.name][1]}") from None
    for key, (ok, expected) in rules.items():
        if not ok(getattr(obj, key)):
            raise InvalidValue(key, getattr(obj, key), expected)
    for ok, key, expected in relations:
        if not ok(obj):
            raise InvalidValue(key, getattr(obj, key), expected)


# The report's three models, as changes to the defaults. The report does not give its Dropout rate; 0.5 is
# Keras' customary value and is what bn_aug_dropout uses here. Its BatchNorm is Keras' default (momentum 0.99).
FIXED_POINTS: dict[str, dict[str, Any]] = {
    "base": {},
    "bn_aug": {"batchnorm": True, "bn_momentum": 0.99, "augment": True, "dense_units": 128},
    "bn_aug_dropout": {"batchnorm": True, "bn_momentum": 0.99, "augment": True, "dense_units": 128, "dropout": 0.5},
}


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs. A space file's SETTINGS change these defaults; command-line flags change both."""

    num_samples: int = 0  # sampled trials, not counting the fixed points
    max_epochs: int = 50
    patience: int = 5
    image_size: int = 150
    split: str = "auto"  # auto: target when the dataset has test/, else patient
    seed: int = 0  # the sampler's seed and the first training seed
    split_seed: int = 0  # the split's seed (and the smoke subset's), apart from the training seed
    data_limit: int = 0
    grace_period: int = 3  # ASHA: epochs before a trial can first be stopped
    reduction_factor: int = 3  # ASHA: keep the best 1/reduction_factor at each rung
    searcher: str = "random"  # random | tpe
    # tpe: the share of configurations after the first 10 that are drawn at random rather than by TPE, as BOHB does
    # (its 1/3): TPE's "good" set is the best tenth of the trials so far, so without them it can settle on the
    # region of its first few good trials and never see the rest of a large space
    random_fraction: float = 1 / 3
    fixed_points: bool = True
    cpus_per_trial: float = 0  # 0: chosen from the cluster (see run.cluster.resources)
    gpus_per_trial: float = -1  # -1: one GPU per trial when the cluster has GPUs, else none
    max_concurrent: int = 0  # 0: as many as resources allow
    max_failures: int = 1  # retries of a trial that raises before it counts as failed
    keep_checkpoints: int = 5  # saved models of the best sampled trials (fixed points are always kept)
    reuse_workers: bool = True  # a trial worker runs trial after trial: Python, Keras and the data load once
    # A budget for the whole search (0: none); the search ends when it is spent, or when its trials have run,
    # whichever comes first. Epochs: every trial stops once the trials have trained this many epochs in all.
    # Minutes: every trial stops this long after the trials started (time since the search began training).
    budget_epochs: int = 0
    budget_minutes: float = 0.0
    # Multi-fidelity. The search stage trains every trial (fixed points too) on search_fraction of the training
    # patients for up to search_epochs epochs (0: max_epochs), with ASHA over `brackets` brackets (Hyperband-style:
    # bracket s first judges a trial at grace_period * reduction_factor**s epochs, so slow starters survive in the
    # later brackets). The budget settings above limit this stage.
    search_fraction: float = 1.0
    search_epochs: int = 0
    brackets: int = 1
    # The confirmation stage (confirm_top > 0): the confirm_top best sampled configurations and base are retrained
    # on all the training data for max_epochs with confirm_seeds training seeds each (seed, seed + 1, ...), and
    # bn_aug and bn_aug_dropout once; the leaderboard ranks configurations by their mean objective over the seeds.
    confirm_top: int = 0
    confirm_seeds: int = 3
    # what the leaderboard and the final model's choice rank by (RANK_BY); the search itself (early stopping, ASHA,
    # the searcher) always compares the objective
    rank_by: str = "objective"
    # Adapting the final model to the validation part's distribution (adapt_folds > 0; see lungsearch.adaptation):
    # cross-fitted fine-tuning on adapt_folds patient folds of the validation part, adapt_epochs epochs at
    # adapt_learning_rate, kept only when the held-out folds say it helps. Needs a confirmation stage.
    adapt_folds: int = 0
    adapt_epochs: int = 5
    adapt_learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        validate(self, SETTINGS_RULES, [
            (lambda s: not (s.budget_epochs and s.budget_minutes), "budget_minutes",
             "0 when budget_epochs is set (give one budget: epochs or minutes)"),
            (lambda s: s.confirm_top > 0 or (s.search_fraction == 1.0 and s.search_epochs in (0, s.max_epochs)),
             "confirm_top", "1 or more when the search stage trains at a lower fidelity (search_fraction below 1 "
             "or search_epochs other than max_epochs): only the confirmation stage trains at full fidelity"),
            (lambda s: s.adapt_folds == 0 or s.confirm_top > 0, "adapt_folds",
             "0 without a confirmation stage (confirm_top 0): the model it adapts is the confirmation's final model"),
        ])

    @property
    def stage_epochs(self) -> int:
        """The most epochs a trial of the search stage trains."""
        return self.search_epochs or self.max_epochs

    def replace(self, **changes: Any) -> "SearchSettings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# What --smoke changes: small images, few epochs and images, so a search takes minutes on 2 CPU cores.
SMOKE = {"image_size": 48, "max_epochs": 4, "data_limit": 480, "grace_period": 1, "reduction_factor": 2,
         "patience": 3}
