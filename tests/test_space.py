import pickle
import subprocess
import sys
import textwrap

import keras_tuner as kt
import numpy as np
import pytest
from ray.tune.search.sample import Domain

from conftest import REPO
from lungsearch import space
from lungsearch.config import UserError


def sample(domain, n=3000):
    rng = np.random.default_rng(0)
    return [domain.sample(random_state=rng) for _ in range(n)] if isinstance(domain, Domain) else [domain]


def declare(fn):
    hp = kt.HyperParameters()
    fn(hp)
    return hp.space[0]


@pytest.mark.parametrize("declaration, low, high, values", [
    (lambda hp: hp.Boolean("batchnorm"), False, True, {False, True}),
    (lambda hp: hp.Choice("pooling", ["max", "avg"]), None, None, {"max", "avg"}),
    (lambda hp: hp.Int("conv_blocks", 2, 5), 2, 5, {2, 3, 4, 5}),
    (lambda hp: hp.Int("filters", 16, 64, step=16), 16, 64, {16, 32, 48, 64}),
    (lambda hp: hp.Int("dense_units", 32, 40, sampling="log"), 32, 40, set(range(32, 41))),
    (lambda hp: hp.Float("dropout", 0.0, 0.6, step=0.1), 0.0, 0.6, {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6}),
    (lambda hp: hp.Float("aug_zoom", 0.1, 0.2), 0.1, 0.2, None),
    (lambda hp: hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"), 1e-4, 1e-2, None),
    (lambda hp: hp.Fixed("padding", "same"), "same", "same", {"same"}),
])
def test_keras_tuner_declarations_become_ray_domains_with_the_same_bounds(declaration, low, high, values):
    drawn = sample(space.to_ray(declare(declaration)))
    if values is not None:
        assert set(np.round(drawn, 9).tolist() if isinstance(drawn[0], float) else drawn) == values
    if isinstance(low, float):  # continuous: inside the bounds and reaching near both ends
        assert low <= min(drawn) < low * 1.05 + 1e-9 and high * 0.95 < max(drawn) <= high
    elif low is not None:
        assert min(drawn) == low and max(drawn) == high


def grid_values(domain):
    """A domain's values rounded to 9 digits, and its Ray type: (domain class, sampler class, q)."""
    sampler = domain.get_sampler()
    inner = getattr(sampler, "sampler", sampler)
    kind = (type(domain).__name__, type(inner).__name__, getattr(sampler, "q", None))
    return set(np.round(sample(domain), 9).tolist()), kind


@pytest.mark.parametrize("declaration, values, kind", [
    # stepped ranges on a multiple of the step keep their order for TPE: Ray's quantised domains
    (lambda hp: hp.Int("filters", 16, 64, step=16), {16, 32, 48, 64}, ("Integer", "_Uniform", 16)),
    (lambda hp: hp.Int("image_size", 96, 230, step=32), {96, 128, 160, 192, 224}, ("Integer", "_Uniform", 32)),
    (lambda hp: hp.Int("conv_blocks", 2, 5), {2, 3, 4, 5}, ("Integer", "_Uniform", None)),
    (lambda hp: hp.Float("dropout", 0.0, 0.6, step=0.1), {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6},
     ("Float", "_Uniform", 0.1)),
    (lambda hp: hp.Float("aug_zoom", 0.05, 0.3, step=0.05), {0.05, 0.1, 0.15, 0.2, 0.25, 0.3},
     ("Float", "_Uniform", 0.05)),
    (lambda hp: hp.Float("aug_shift", 0.0, 0.33, step=0.1), {0.0, 0.1, 0.2, 0.3}, ("Float", "_Uniform", 0.1)),
    # keras-tuner's grid min + k*step off the multiples of step: exactly its values, as a choice
    (lambda hp: hp.Int("filters", 10, 20, step=4), {10, 14, 18}, ("Categorical", "_Uniform", None)),
    (lambda hp: hp.Float("aug_zoom", 0.05, 0.3, step=0.1), {0.05, 0.15, 0.25}, ("Categorical", "_Uniform", None)),
    # log sampling with a step: keras-tuner's step is a factor between values (min * step**k)
    (lambda hp: hp.Int("dense_units", 32, 512, step=2, sampling="log"), {32, 64, 128, 256, 512},
     ("Categorical", "_Uniform", None)),
    (lambda hp: hp.Float("learning_rate", 1e-4, 1e-2, step=10, sampling="log"), {1e-4, 1e-3, 1e-2},
     ("Categorical", "_Uniform", None)),
])
def test_stepped_ranges_keep_keras_tuners_grid_and_both_ends(declaration, values, kind):
    param = declare(declaration)
    domain = space.to_ray(param)
    drawn, got = grid_values(domain)
    assert got == kind and drawn == values  # every grid value drawn, both ends included, nothing else
    raw = sample(domain)
    lo, hi, step = param.min_value, param.max_value, param.step
    assert all(lo <= v <= hi for v in raw)
    if param.sampling == "linear":
        assert all(abs((v - lo) / step - round((v - lo) / step)) < 1e-9 for v in raw)  # on min + k*step
    again = pickle.loads(pickle.dumps(domain))  # as Ray's experiment state keeps it for `resume`
    assert grid_values(again) == (drawn, got)


@pytest.mark.parametrize("declaration", [
    lambda hp: hp.Float("learning_rate", 1e-4, 1e-2, sampling="reverse_log"),
    lambda hp: hp.Int("dense_units", 32, 512, sampling="reverse_log"),
])
def test_reverse_log_sampling_is_refused_not_drawn_linearly(declaration):
    with pytest.raises(UserError, match=r"(learning_rate|dense_units): .*reverse_log.* use sampling='log'"):
        space.to_ray(declare(declaration))


def test_conditions_switch_children_off_with_their_parent():
    conditions = {"aug_zoom": [("augment", [True])], "aug_shift": [("aug_zoom", [0.1])]}
    assert space.active({"augment": False, "aug_zoom": 0.1, "aug_shift": 0.2}, conditions) == {"augment": False}
    assert space.active({"augment": True, "aug_zoom": 0.1, "aug_shift": 0.2}, conditions)["aug_shift"] == 0.2


def write_space(tmp_path, body):
    path = tmp_path / "myspace.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("body, message", [
    ("import keras_tuner as kt\nhp = kt.HyperParameters()\nhp.Boolean('batchnrom')\n",
     r"unknown parameter 'batchnrom' \(did you mean 'batchnorm'\?\)"),
    ("import keras_tuner as kt\nhp = kt.HyperParameters()\nhp.Int('filters', 64, 16)\n",
     r"line 3 raised ValueError: .*min_value 64 is greater than the max_value 16"),
    ("hp = None\nSETTINGS = {'num_sample': 3}\n", "unknown setting 'num_sample'"),
    ("SETTINGS = {'num_samples': 3\n", r"syntax error in space file .*myspace.py, line 1"),
    ("import keras_tuner as kt\nhp = kt.HyperParameters()\nhp.Choice('pooling', ['max', 'median'])\n",
     "pooling must be 'max' or 'avg', got 'median'"),
    ("import keras_tuner as kt\nhp = kt.HyperParameters()\nhp.Choice('split', ['report'])\n",
     "'split' is a run setting"),
    ("import keras_tuner as kt\nhp = kt.HyperParameters()\nhp.Float('learning_rate', 0.0, 0.1, sampling='log')\n",
     r"line 3 raised ValueError: .*sampling='log' does not support"),
    ("hp = {'dropout': 0.5}\n", "hp in .* must be a keras_tuner.HyperParameters"),
    ("import keras_tuner as kt\nhp = kt.HyperParameters()\n"
     "hp.Float('learning_rate', 1e-4, 1e-2, sampling='reverse_log')\n",
     r"learning_rate: Float with sampling='reverse_log' has no Ray Tune equivalent"),
    ("raise RuntimeError('oops')\n", r"myspace.py, line 1 raised RuntimeError: oops"),
    ("import sys\nsys.exit(0)\n", r"myspace.py, line 2 exits \(SystemExit 0\); a space file only declares"),
    ("exit('bye')\n", r"myspace.py, line 1 exits \(SystemExit 'bye'\)"),
    ("SETTINGS = {'reduction_factor': 1}\n", r"SETTINGS of .*myspace.py: reduction_factor must be at least 2"),
])
def test_malformed_space_files_are_named_before_any_trial(tmp_path, body, message):
    path = write_space(tmp_path, body)
    with pytest.raises(UserError, match=message):
        loaded = space.load_space(path)
        space.check_defaults(loaded)
        space.ray_space(loaded)


def test_a_bad_space_stops_the_run_with_exit_2_and_no_run_folder(tmp_path, dataset):
    path = write_space(tmp_path, "import keras_tuner as kt\nhp = kt.HyperParameters()\nhp.Float('dropuot', 0, .5)\n")
    out = subprocess.run([sys.executable, "-m", "lungsearch", "run", str(path), "--data", str(dataset),
                          "--results", str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "did you mean 'dropout'" in out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["report", "ablation", "architecture"])
def test_shipped_spaces_load_with_a_docstring_and_command(name):
    loaded = space.load_space(REPO / "spaces" / f"{name}.py")
    space.check_defaults(loaded)
    space.ray_space(loaded)
    assert f"spaces/{name}.py" in loaded.doc


@pytest.mark.parametrize("name", ["robust", "architecture"])
def test_stepped_float_ranges_reach_optuna_with_bounds_on_the_grid(name):
    """TPE's Optuna distributions take the space's bounds as written: 0.0 to 0.6 by 0.1 ends at 0.6, not
    0.6000000000000001, which Optuna warns about and replaces."""
    import warnings

    from ray.tune.search.optuna import OptunaSearch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = OptunaSearch.convert_search_space(space.ray_space(space.load_space(REPO / "spaces" / f"{name}.py")))
    assert not [w for w in caught if "step" in str(w.message)]
    if name == "robust":
        assert converted["dropout"].high == 0.6 and converted["dropout"].step == 0.1


@pytest.mark.parametrize("spec", ["ablation", "ablation.py", "spaces/ablation.py", "./spaces/ablation.py"])
def test_a_bundled_space_is_found_by_name_from_any_folder(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no spaces/ folder here
    assert space.resolve(spec) == space.BUNDLED_DIR / "ablation.py"
    loaded = space.load_space(spec)
    assert loaded.name == "ablation" and loaded.params


def test_an_existing_path_comes_before_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = '"""My own ablation."""\nSETTINGS = {"num_samples": 2}\n'
    (tmp_path / "ablation.py").write_text(mine)
    assert space.load_space("ablation.py").settings == {"num_samples": 2}
    assert space.load_space("ablation").path == space.BUNDLED_DIR / "ablation.py"  # no file named `ablation` here
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "report.py").write_text(mine)
    assert space.load_space("spaces/report.py").path == tmp_path / "spaces" / "report.py"


def test_an_unknown_space_lists_the_bundled_names(tmp_path):
    names = "ablation, architecture, report, robust"
    for spec in ("ablaton", str(tmp_path / "ablation.py"), "spaces/nope.py", "other/ablation.py"):
        with pytest.raises(UserError, match=f"is neither a file nor the name of a bundled space; bundled spaces: "
                                            f"{names} .*or pass the path of your own space file"):
            space.load_space(spec)
    with pytest.raises(UserError, match="is a folder, not a space file"):
        space.load_space(tmp_path)


def test_the_repository_spaces_folder_is_the_bundled_one():
    """One copy: the repository's spaces/ (a link to lungsearch/spaces) shows the files the package installs."""
    bundled = space.bundled()
    assert sorted(bundled) == ["ablation", "architecture", "report", "robust"]
    assert sorted(p.stem for p in (REPO / "spaces").glob("*.py")) == sorted(bundled)
    for name, path in bundled.items():
        assert (REPO / "spaces" / f"{name}.py").read_bytes() == path.read_bytes()
        assert space.first_doc_line(path) and not space.first_doc_line(path).startswith("python")


def test_the_bundled_spaces_are_package_data():
    """pyproject.toml ships lungsearch/spaces/*.py with the package, so a regular (non-editable) install has them."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["lungsearch"]
    shipped = {p for g in globs for p in (REPO / "lungsearch").glob(g)}
    assert set(space.bundled().values()) <= shipped
    assert any(pattern.startswith("lungsearch") for pattern in setuptools["packages"]["find"]["include"])
