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
    ("raise RuntimeError('oops')\n", r"myspace.py, line 1 raised RuntimeError: oops"),
    ("SETTINGS = {'reduction_factor': 1}\n", r"SETTINGS of .*myspace.py: reduction_factor must be at least 2"),
])
def test_malformed_space_files_are_named_before_any_trial(tmp_path, body, message):
    path = write_space(tmp_path, body)
    with pytest.raises(UserError, match=message):
        loaded = space.load(path)
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
    loaded = space.load(REPO / "spaces" / f"{name}.py")
    space.check_defaults(loaded)
    space.ray_space(loaded)
    assert f"spaces/{name}.py" in loaded.doc
