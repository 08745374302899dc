"""Load a search space file and turn its keras-tuner declarations into a Ray Tune search space.

A space file is plain Python with a docstring, an optional `hp = keras_tuner.HyperParameters()` with
declarations, and an optional `SETTINGS = {...}` dict of search settings (see config.SearchSettings).
"""
from __future__ import annotations

import dataclasses
import math
import runpy
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SearchSettings, TrialConfig, UserError, field_names, unknown_key_message

# Parameters a space may not search: they describe the run, not the model.
RUN_KEYS = {"data_dir", "cache_dir", "split", "fixed_point", "data_limit", "seed"}


@dataclass
class Space:
    path: Path
    source: str
    doc: str
    params: dict[str, Any]  # name -> keras-tuner HyperParameter
    conditions: dict[str, list[tuple[str, list]]]  # name -> [(parent, values that make it active)]
    settings: dict[str, Any]  # SETTINGS as written in the file

    @property
    def name(self) -> str:
        return self.path.stem


def load(path: str | Path) -> Space:
    """Read and check a space file; any mistake is a UserError that names the file, the key and the fix."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"space file {path} not found; spaces are Python files such as spaces/ablation.py")
    source = path.read_text()
    try:
        namespace = runpy.run_path(str(path), run_name="lungsearch_space")
    except SyntaxError as err:
        raise UserError(f"syntax error in space file {path}, line {err.lineno}: {err.msg}") from None
    except Exception as err:  # anything the file raises, e.g. a keras-tuner range error
        where = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
        line = f", line {where[-1].lineno}" if where else ""
        raise UserError(f"space file {path}{line} raised {type(err).__name__}: {err}") from None
    settings = namespace.get("SETTINGS", {})
    if not isinstance(settings, dict):
        raise UserError(f"SETTINGS in {path} must be a dict, got {type(settings).__name__}")
    known_settings = {f.name for f in dataclasses.fields(SearchSettings)}
    for key in settings:
        if key not in known_settings:
            raise UserError(f"unknown setting {key!r} in SETTINGS of {path}; known settings: "
                            f"{', '.join(sorted(known_settings))}")
    try:
        SearchSettings(**settings)
    except UserError as err:
        raise UserError(f"SETTINGS of {path}: {err}") from None
    params, conditions = {}, {}
    hp = namespace.get("hp")
    if hp is not None:
        import keras_tuner as kt

        if not isinstance(hp, kt.HyperParameters):
            raise UserError(f"hp in {path} must be a keras_tuner.HyperParameters, got {type(hp).__name__}")
        for p in hp.space:
            if p.name not in field_names():
                raise UserError(f"space file {path}: {unknown_key_message(p.name)}")
            if p.name in RUN_KEYS:
                raise UserError(f"space file {path}: {p.name!r} is a run setting, not a searchable parameter; "
                                f"set it in SETTINGS or on the command line")
            params[p.name] = p
            conditions[p.name] = [(c.name, list(c.values)) for c in p.conditions]
        for name, conds in conditions.items():
            for parent, _ in conds:
                if parent not in params:
                    raise UserError(f"space file {path}: {name!r} depends on {parent!r}, which is not declared")
    doc = (namespace.get("__doc__") or "").strip()
    return Space(path, source, doc, params, conditions, settings)


def to_ray(param) -> Any:
    """The Ray Tune domain for one keras-tuner hyperparameter, with the same (inclusive) bounds."""
    from ray import tune
    import keras_tuner as kt

    hps = kt.engine.hyperparameters
    if isinstance(param, hps.Fixed):
        return param.value
    if isinstance(param, hps.Boolean):
        return tune.choice([False, True])
    if isinstance(param, hps.Choice):
        return tune.choice(list(param.values))
    if isinstance(param, hps.Int):
        lo, hi, step = int(param.min_value), int(param.max_value), param.step
        if lo > hi:
            raise UserError(f"{param.name}: min_value {lo} is above max_value {hi}")
        if param.sampling == "log":
            if step and step != 1:
                raise UserError(f"{param.name}: log sampling with a step is not supported; drop the step")
            return tune.lograndint(lo, hi + 1)  # Ray's upper bound is exclusive, keras-tuner's inclusive
        return tune.choice(list(range(lo, hi + 1, int(step or 1))))
    if isinstance(param, hps.Float):
        lo, hi, step = float(param.min_value), float(param.max_value), param.step
        if not lo < hi:
            raise UserError(f"{param.name}: min_value {lo} must be below max_value {hi}")
        if param.sampling == "log":
            if lo <= 0:
                raise UserError(f"{param.name}: log sampling needs min_value above 0, got {lo}")
            return tune.loguniform(lo, hi)
        if step:
            count = int(math.floor((hi - lo) / step + 1e-9))
            return tune.choice([round(lo + i * step, 12) for i in range(count + 1)])
        return tune.uniform(lo, hi)
    raise UserError(f"{param.name}: unsupported hyperparameter type {type(param).__name__}")


def ray_space(space: Space) -> dict[str, Any]:
    return {name: to_ray(p) for name, p in space.params.items()}


def active(config: dict[str, Any], conditions: dict[str, list[tuple[str, list]]]) -> dict[str, Any]:
    """The config without parameters whose parent conditions are not met (they keep the report's default)."""
    out = dict(config)
    changed = True
    while changed:  # a parent dropped may deactivate its own children
        changed = False
        for name, conds in conditions.items():
            if name in out and any(parent not in out or out[parent] not in values for parent, values in conds):
                del out[name]
                changed = True
    return out


def check_defaults(space: Space, context: dict[str, Any] | None = None) -> None:
    """Build a TrialConfig from each parameter's bounds so a bad value fails before any trial starts.

    `context` holds run constants (e.g. the split); a conditional parameter is checked with its parents
    set to a value that activates it."""
    for name, p in space.params.items():
        values = getattr(p, "values", None) or [getattr(p, "min_value", None), getattr(p, "max_value", None),
                                                 getattr(p, "value", None)]
        parents = {parent: allowed[0] for parent, allowed in space.conditions.get(name, []) if allowed}
        for v in values:
            if v is not None:
                TrialConfig.from_dict({**(context or {}), **parents, name: v})
