"""Load a search space file and turn its keras-tuner declarations into a Ray Tune search space.

A space file is plain Python with a docstring, an optional `hp = keras_tuner.HyperParameters()` with
declarations, and an optional `SETTINGS = {...}` dict of search settings (see config.SearchSettings).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
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
    hp: Any = None  # the file's keras_tuner.HyperParameters (None without one)

    @property
    def name(self) -> str:
        return self.path.stem


# The spaces shipped with the package (lungsearch/spaces/*.py, installed as package data; the repository's
# top-level spaces/ is a link to this folder).
BUNDLED_DIR = Path(__file__).resolve().parent / "spaces"


def bundled() -> dict[str, Path]:
    """The bundled spaces by name (file stem), sorted."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.py")) if not p.name.startswith(("_", "."))}


def first_doc_line(path: Path) -> str:
    """The first line of a space file's docstring (its question), read without running the file."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(), filename=str(path))) or ""
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def bundled_names() -> str:
    return ", ".join(bundled()) or "(none: the package's spaces/ folder is missing; reinstall lungsearch)"


def resolve(spec: str | Path) -> Path:
    """The space file a `run` argument names, in this order: an existing file at that path; else a bundled
    space by name, with or without `.py` and a leading `spaces/` (so `ablation`, `ablation.py` and
    `spaces/ablation.py` work from any folder); else a UserError listing the bundled names."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    parts = Path(text.replace("\\", "/")).parts
    if parts[:1] == (".",):
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "spaces":
        parts = parts[1:]
    if len(parts) == 1 and not path.is_absolute():
        name = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
        if name in bundled():
            return bundled()[name]
    why = "is a folder, not a space file" if path.is_dir() else "is neither a file nor the name of a bundled space"
    raise UserError(f"space {text!r} {why}; bundled spaces: {bundled_names()} (`lungsearch spaces` lists them with "
                    f"their questions); or pass the path of your own space file (a Python file with a docstring, "
                    f"`hp` and `SETTINGS`, like the bundled ones)")


def load_space(path: str | Path) -> Space:
    """Read and check a space file (a path, or a bundled space's name: see `resolve`); any mistake is a
    UserError that names the file, the key and the fix."""
    path = resolve(path)
    source = path.read_text()
    try:
        namespace = runpy.run_path(str(path), run_name="lungsearch_space")
    except SyntaxError as err:
        raise UserError(f"syntax error in space file {path}, line {err.lineno}: {err.msg}") from None
    except (Exception, SystemExit) as err:  # anything the file raises, e.g. a keras-tuner range error
        where = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
        line = f", line {where[-1].lineno}" if where else ""
        if isinstance(err, SystemExit):  # sys.exit() or exit(): the command would end silently, with its code
            raise UserError(f"space file {path}{line} exits (SystemExit {err.code!r}); a space file only declares "
                            f"`hp` and `SETTINGS`: remove the exit") from None
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
    return Space(path, source, doc, params, conditions, settings, hp)


def on_grid(value: float, step: float) -> bool:
    """Whether `value` is a whole multiple of `step` (up to float rounding)."""
    k = value / step
    return math.isclose(k, round(k), rel_tol=0, abs_tol=1e-9)


@functools.cache
def rounded_grid() -> type:
    """Ray's quantised sampler (so TPE still sees an ordered, stepped range) with values rounded to 12
    significant digits and kept within the bounds: Ray draws k * q, and 6 * 0.05 is 0.30000000000000004.
    Made on first use so that importing this module does not import Ray."""
    from ray.tune.search.sample import Quantized

    class RoundedGrid(Quantized):
        def sample(self, domain, config=None, size=1, random_state=None):
            values = super().sample(domain, config, size, random_state)

            def fix(v):
                return min(max(float(f"{v:.12g}"), domain.lower), domain.upper)

            return [fix(v) for v in values] if isinstance(values, list) else fix(values)

    RoundedGrid.__module__, RoundedGrid.__qualname__ = __name__, "RoundedGrid"
    return RoundedGrid


def __getattr__(name: str) -> Any:  # a pickled search space (Ray's experiment state) finds the class by name
    if name == "RoundedGrid":
        return rounded_grid()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_ray(param) -> Any:
    """The Ray Tune domain for one keras-tuner hyperparameter: the same values, bounds included.

    - Int: keras-tuner's max_value is included. No step: `tune.randint(min, max + 1)` (Ray's upper bound
      is exclusive there). A step: `tune.qrandint(min, max, step)`, whose upper bound is inclusive; it
      draws multiples of `step`, so it is used only when min_value is one (keras-tuner's values are
      min + k*step). Log sampling without a step: `tune.lograndint(min, max + 1)`.
    - Float: `tune.uniform` / `tune.loguniform`; a step: `tune.quniform(min, top, step)` when min_value is
      a multiple of the step, `top` the largest min + k*step not above max_value (Ray wants both bounds on
      the grid). Values are rounded to 12 significant digits (Ray's k * 0.1 can be 0.30000000000000004)
      and stay within [min, max]; the two end values are drawn half as often as the others (a uniform
      draw rounded to the grid), where keras-tuner draws all equally.
    - A step whose grid Ray's quantised domains cannot draw: min_value not a multiple of the step, or a
      step with log sampling, where keras-tuner's step is a *factor* (min, min*step, min*step**2, ...,
      not multiples of step as in `tune.qloguniform`/`tune.qlograndint`): `tune.choice` over exactly
      keras-tuner's values, each as likely as keras-tuner draws it. Random search is then the same; only
      TPE no longer knows the values are ordered (declare a range on a multiple of the step to keep that).
    - `sampling="reverse_log"` has no Ray Tune domain and is refused (UserError) rather than drawn linearly.
    - Boolean, Choice: `tune.choice` (unordered); Fixed: the value itself.
    """
    from ray import tune
    import keras_tuner as kt

    hps = kt.engine.hyperparameters
    if isinstance(param, hps.Fixed):
        return param.value
    if isinstance(param, hps.Boolean):
        return tune.choice([False, True])
    if isinstance(param, hps.Choice):
        return tune.choice(list(param.values))
    if not isinstance(param, (hps.Int, hps.Float)):
        raise UserError(f"{param.name}: unsupported hyperparameter type {type(param).__name__}")
    kind = type(param).__name__
    if param.sampling == "reverse_log":
        raise UserError(f"{param.name}: {kind} with sampling='reverse_log' has no Ray Tune equivalent; use "
                        f"sampling='log' or 'linear', or hp.Choice({param.name!r}, [...]) with the values to try")
    if isinstance(param, hps.Int):
        lo, hi, step = int(param.min_value), int(param.max_value), int(param.step or 1)
        if lo > hi:
            raise UserError(f"{param.name}: min_value {lo} is above max_value {hi}")
        if param.sampling == "log":
            if param.step is None:
                return tune.lograndint(lo, hi + 1)  # Ray's upper bound is exclusive, keras-tuner's inclusive
            return tune.choice(geometric_grid(param, lo, hi, step))
        if step == 1:
            return tune.randint(lo, hi + 1)  # exclusive upper bound (qrandint's too when q is 1)
        if lo % step == 0:
            return tune.qrandint(lo, hi, step)  # inclusive upper bound; multiples of step
        return tune.choice(list(range(lo, hi + 1, step)))
    lo, hi, step = float(param.min_value), float(param.max_value), param.step
    if not lo < hi:
        raise UserError(f"{param.name}: min_value {lo} must be below max_value {hi}")
    if param.sampling == "log":
        if lo <= 0:
            raise UserError(f"{param.name}: log sampling needs min_value above 0, got {lo}")
        return tune.loguniform(lo, hi) if not step else tune.choice(geometric_grid(param, lo, hi, float(step)))
    if not step:
        return tune.uniform(lo, hi)
    step = float(step)
    count = int(math.floor((hi - lo) / step + 1e-9))
    if on_grid(lo, step):  # Ray wants both bounds on the grid: the largest value keras-tuner draws
        domain = tune.quniform(lo, round(lo + count * step, 12), step)  # 6 * 0.1 is 0.6000000000000001
        domain.set_sampler(rounded_grid()(domain.get_sampler().sampler, step), allow_override=True)
        return domain
    return tune.choice([round(lo + i * step, 12) for i in range(count + 1)])


def geometric_grid(param, lo, hi, factor):
    """keras-tuner's values of a log-sampled parameter with a step: min_value * step**k up to max_value."""
    if factor <= 1:
        raise UserError(f"{param.name}: a log-sampled step is a factor between values and must be above 1")
    count = int(math.log(hi / lo, factor) + 1e-8)
    if isinstance(lo, int):
        return [lo * factor ** k for k in range(count + 1)]
    return [float(f"{lo * factor ** k:.12g}") for k in range(count + 1)]


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
    set to a value that activates it. A declaration Ray Tune cannot draw (to_ray) fails here too."""
    for name, p in space.params.items():
        to_ray(p)
        values = getattr(p, "values", None) or [getattr(p, "min_value", None), getattr(p, "max_value", None),
                                                 getattr(p, "value", None)]
        parents = {parent: allowed[0] for parent, allowed in space.conditions.get(name, []) if allowed}
        for v in values:
            if v is not None:
                TrialConfig.from_dict({**(context or {}), **parents, name: v})
