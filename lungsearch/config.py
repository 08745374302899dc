"""Trial configuration with the source report's defaults, and the error type for user mistakes."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any


class UserError(Exception):
    """A mistake in the user's input (a path, a flag, a space file); the message says how to fix it."""


SPLITS = ("patient", "report", "target")
# "auto" (a search's default): target when the dataset has its own test/ folder, else patient.
SEARCH_SPLITS = ("auto", *SPLITS)

# The one number that early stopping, ASHA, the searchers and the leaderboard all compare: validation AUC
# of the weights a trial keeps (its best epoch so far). AUC does not depend on a threshold, so a trial
# trained with class weights, label smoothing or MixUp is compared on the same footing as one without,
# and a model that calls everything PNEUMONIA (F1 about 0.77 on this data) scores 0.5, not well.
OBJECTIVE, OBJECTIVE_MODE = "objective", "max"
OBJECTIVE_TEXT = "validation AUC at the kept epoch (the epoch whose weights the trial keeps)"
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
    seed: int = 0
    # data and bookkeeping
    data_dir: str = ""
    cache_dir: str = ""
    split: str = "patient"
    data_limit: int = 0  # keep at most this many training images (0: all); smoke runs only
    fixed_point: str = ""  # name of the report model this trial reproduces, empty for sampled trials

    def __post_init__(self) -> None:
        checks = [
            (self.conv_blocks >= 1, "conv_blocks", "at least 1"),
            (self.filters >= 1, "filters", "at least 1"),
            (self.filter_growth > 0, "filter_growth", "above 0"),
            (self.kernel_size in (1, 3, 5, 7), "kernel_size", "one of 1, 3, 5, 7"),
            (self.pooling in ("max", "avg"), "pooling", "'max' or 'avg'"),
            (self.head in ("flatten", "gap"), "head", "'flatten' or 'gap'"),
            (self.padding in ("valid", "same"), "padding", "'valid' or 'same'"),
            (self.dense_units >= 1, "dense_units", "at least 1"),
            (0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)"),
            (self.image_size >= 16, "image_size", "at least 16"),
            (self.learning_rate > 0, "learning_rate", "above 0"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.max_epochs >= 1, "max_epochs", "at least 1"),
            (self.patience >= 1, "patience", "at least 1"),
            (self.split in SPLITS, "split", f"one of {', '.join(SPLITS)}"),
            (self.data_limit >= 0, "data_limit", "0 or more"),
            (0.0 <= self.aug_brightness <= 1.0, "aug_brightness", "in [0, 1]"),
            (0.0 <= self.aug_contrast < 1.0, "aug_contrast", "in [0, 1)"),
            (0.0 <= self.aug_gamma <= 2.0, "aug_gamma", "in [0, 2]"),
            (0.0 <= self.aug_noise <= 1.0, "aug_noise", "in [0, 1]"),
            (self.normalize in NORMALIZATIONS, "normalize", f"one of {', '.join(NORMALIZATIONS)}"),
            (self.optimizer in ("adam", "adamw"), "optimizer", "'adam' or 'adamw'"),
            (self.weight_decay >= 0.0, "weight_decay", "0 or more"),
            (self.weight_decay == 0.0 or self.optimizer == "adamw", "weight_decay",
             "0 unless optimizer is 'adamw' (Adam has no decoupled weight decay)"),
            (self.lr_schedule in ("constant", "cosine", "plateau"), "lr_schedule", "'constant', 'cosine' or 'plateau'"),
            (0.0 <= self.label_smoothing < 0.5, "label_smoothing", "in [0, 0.5)"),
            (self.mixup >= 0.0, "mixup", "0 (off) or more"),
            (self.early_stop_on in ("val", "holdout"), "early_stop_on", "'val' or 'holdout'"),
            (self.early_stop_on == "val" or self.split == "target", "early_stop_on",
             "'val' unless split is 'target' (only the target split has an in-distribution holdout)"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise UserError(f"{key} must be {expected}, got {getattr(self, key)!r}")

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


def coerce(key: str, value: Any, type_name: str) -> Any:
    """Turn numpy scalars and ints-for-floats into the declared type; reject the rest."""
    if hasattr(value, "item"):  # numpy scalar from a search algorithm
        value = value.item()
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "str":
        if isinstance(value, str):
            return value
    raise UserError(f"{key} must be a {type_name}, got {value!r}")


# The report's three models, as changes to the defaults. The report does not give its Dropout rate; 0.5 is
# Keras' customary value and is what bn_aug_dropout uses here.
FIXED_POINTS: dict[str, dict[str, Any]] = {
    "base": {},
    "bn_aug": {"batchnorm": True, "augment": True, "dense_units": 128},
    "bn_aug_dropout": {"batchnorm": True, "augment": True, "dense_units": 128, "dropout": 0.5},
}


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs. A space file's SETTINGS change these defaults; command-line flags change both."""

    num_samples: int = 0  # sampled trials, not counting the fixed points
    max_epochs: int = 50
    patience: int = 5
    image_size: int = 150
    split: str = "auto"  # auto: target when the dataset has test/, else patient
    seed: int = 0
    data_limit: int = 0
    grace_period: int = 3  # ASHA: epochs before a trial can first be stopped
    reduction_factor: int = 3  # ASHA: keep the best 1/reduction_factor at each rung
    searcher: str = "random"  # random | tpe
    fixed_points: bool = True
    cpus_per_trial: float = 0  # 0: chosen from the cluster (see run.resources)
    gpus_per_trial: float = -1  # -1: one GPU per trial when the cluster has GPUs, else none
    max_concurrent: int = 0  # 0: as many as resources allow
    max_failures: int = 1  # retries of a trial that raises before it counts as failed
    keep_checkpoints: int = 5  # saved models of the best sampled trials (fixed points are always kept)

    def __post_init__(self) -> None:
        checks = [
            (self.num_samples >= 0, "num_samples", "0 or more"),
            (self.max_epochs >= 1, "max_epochs", "at least 1"),
            (self.image_size >= 16, "image_size", "at least 16"),
            (self.split in SEARCH_SPLITS, "split", f"one of {', '.join(SEARCH_SPLITS)}"),
            (1 <= self.grace_period, "grace_period", "at least 1"),
            (self.reduction_factor >= 2, "reduction_factor", "at least 2"),
            (self.searcher in ("random", "tpe"), "searcher", "'random' or 'tpe'"),
            (self.cpus_per_trial >= 0, "cpus_per_trial", "0 (automatic) or more"),
            (self.max_failures >= 0, "max_failures", "0 or more"),
            (self.keep_checkpoints >= 0, "keep_checkpoints", "0 or more"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise UserError(f"{key} must be {expected}, got {getattr(self, key)!r}")

    def replace(self, **changes: Any) -> "SearchSettings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# What --smoke changes: small images, few epochs and images, so a search takes minutes on 2 CPU cores.
SMOKE = {"image_size": 48, "max_epochs": 4, "data_limit": 480, "grace_period": 1, "reduction_factor": 2,
         "patience": 3}
