"""(No Ray.) A search's plan, built once: the space and its settings, the data folder scanned (hashed) once, the
decoded dataset, and the split with its summary. `run` and `versus` build it the same way; the run folder then
stores it (manifest.json, split.json) for `resume` and `report`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import data, space as spaces
from ..config import SearchSettings
from .folder import print_split
from .settings import resolve_settings


@dataclass
class Plan:
    space: spaces.Space
    settings: SearchSettings  # the split resolved (e.g. target when the data has its own test/ folder)
    smoke: bool
    data_dir: Path
    cache_dir: Path
    scanned: data.Dataset  # the data folder's scan: trials get it instead of hashing every image again
    dataset: data.Dataset  # decoded at settings.image_size
    requested_split: str  # the split the settings asked for (auto, or one by name)
    split: dict[str, np.ndarray]  # part: image indices
    summary: dict[str, Any]  # data.split_summary: what the console and the manifest say of the split


def read_space(space_path: str | Path, overrides: dict[str, Any], smoke: bool) -> tuple[spaces.Space, SearchSettings]:
    """The space file and its settings (SETTINGS, then --smoke, then the flags), checked before any data is read."""
    space = spaces.load_space(space_path)
    spaces.check_defaults(space, {"split": "target"})  # again in make_plan, with the split the data allows
    return space, resolve_settings(space, overrides, smoke)


def make_plan(space: spaces.Space, settings: SearchSettings, data_dir: Path, smoke: bool,
              check_scan: Callable[[data.Dataset], Any] = lambda scanned: None) -> Plan:
    """Scan the data folder once (`check_scan` may refuse it, e.g. too big for the machine), decode it, resolve and
    draw the split, and print the split's summary."""
    cache_dir = data.default_cache_dir()
    scanned = data.scan(data_dir)
    check_scan(scanned)
    ds, _ = data.load_images(data_dir, settings.image_size, cache_dir, dataset=scanned)
    requested = settings.split
    settings = settings.replace(split=data.resolve_split(ds, settings.split))
    spaces.check_defaults(space, {"split": settings.split})  # e.g. early_stop_on holdout needs the target split
    split = data.make_split(ds, settings.split, settings.split_seed, settings.data_limit)
    summary = data.split_summary(ds, split, settings.split)
    print_split(summary)
    return Plan(space, settings, smoke, Path(data_dir), cache_dir, scanned, ds, requested, split, summary)
