"""(No Ray.) A search's settings, from the space file's SETTINGS, --smoke and the flags, and its dataset folder."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .. import sizes, space as spaces
from ..config import SMOKE, InvalidValue, SearchSettings, UserError


def flag(key: str) -> str:
    return "--no-fixed-points" if key == "fixed_points" else "--" + key.replace("_", "-")


def resolve_settings(space: spaces.Space, overrides: dict[str, Any], smoke: bool) -> SearchSettings:
    """The space file's SETTINGS, then --smoke, then the flags; a bad value names the flag or the file."""
    try:
        settings = SearchSettings(**space.settings)
    except UserError as err:
        raise UserError(f"SETTINGS of {space.path}: {err}") from None
    if smoke:
        settings = settings.replace(**SMOKE, num_samples=min(settings.num_samples, 8), search_epochs=0,
                                    confirm_top=min(settings.confirm_top, 2), confirm_seeds=min(settings.confirm_seeds, 2),
                                    adapt_folds=min(settings.adapt_folds, 2), adapt_epochs=min(settings.adapt_epochs, 2))
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = settings.replace(**given)
    except InvalidValue as err:
        if err.key not in given:
            raise
        raise UserError(f"{flag(err.key)} must be {err.expected}, got {err.value!r}") from None
    if settings.num_samples == 0 and not settings.fixed_points:
        def source(key: str, value: Any) -> str:
            if key in given:
                return "--no-fixed-points" if key == "fixed_points" else f"{flag(key)} {value}"
            return f"{key}: {value!r} in SETTINGS of {space.path}" if key in space.settings else f"the default {key} {value!r}"
        raise UserError(f"nothing to run: no sampled trials ({source('num_samples', 0)}) and no fixed points "
                        f"({source('fixed_points', False)}); pass --num-samples N (1 or more) or keep the report's "
                        f"three models (drop --no-fixed-points)")
    if settings.searcher == "tpe" and importlib.util.find_spec("optuna") is None:
        raise UserError('--searcher tpe needs Optuna: pip install -e ".[tpe]"')
    return settings


def check_sampled_trials(space: spaces.Space, settings: SearchSettings, overrides: dict[str, Any]) -> None:
    """Refuse sampled trials of a space that declares no parameter: each would be the report's base model again.
    Warn when ASHA can never stop a sampled trial: a grace period of max_epochs or more leaves it no rung."""
    if settings.num_samples and settings.grace_period >= settings.max_epochs:
        print(f"warning: --grace-period (grace_period) {settings.grace_period} is not below --max-epochs (max_epochs) "
              f"{settings.max_epochs}: ASHA can never stop a trial early (its first rung would be at epoch "
              f"{settings.grace_period}, and every trial ends by epoch {settings.max_epochs}); set a grace period "
              f"below {settings.max_epochs} to let it stop weak trials", file=sys.stderr, flush=True)
    if not settings.num_samples or space.params:
        return
    asked = (f"--num-samples {settings.num_samples}" if overrides.get("num_samples") is not None
             else f"num_samples: {settings.num_samples} in SETTINGS of {space.path}")
    raise UserError(f"{asked} asks for sampled trials, but space file {space.path} declares no parameter to search "
                    f"(no `hp` declarations), so every sampled trial would be the report's base model again: "
                    f"declare parameters (hp = keras_tuner.HyperParameters(); hp.Float(...), as in the bundled "
                    f"spaces), or run the fixed points only with --num-samples 0")


def check_machine(settings: SearchSettings, images: int, address: str | None) -> None:
    """Refuse an image size at which a trial cannot fit this machine's memory (sizes.check_trial), for a local
    run: a cluster's trials run on its nodes."""
    if not address:
        sizes.check_trial(settings, images)


def data_dir_from(arg: str | None) -> Path:
    value = arg or os.environ.get("LUNGSEARCH_DATA")
    if not value:
        raise UserError("no dataset given: pass --data DIR or set LUNGSEARCH_DATA. Download the Kermany chest "
                        "X-ray dataset (e.g. 'chest_xray' from Kaggle or Mendeley Data) and point at the folder "
                        "that holds train/ (and test/)")
    return Path(value).expanduser().resolve()
