import numpy as np
import pytest

from lungsearch.config import FIXED_POINTS, SearchSettings, TrialConfig, UserError


def test_defaults_are_the_reports_protocol():
    cfg = TrialConfig()
    assert (cfg.image_size, cfg.learning_rate, cfg.batch_size, cfg.max_epochs, cfg.patience) == (150, 1e-3, 32, 50, 5)
    assert (cfg.aug_rotation, cfg.aug_zoom, cfg.aug_shift, cfg.aug_shear, cfg.aug_flip) == (20.0, 0.15, 0.2, 0.15, True)
    assert set(FIXED_POINTS) == {"base", "bn_aug", "bn_aug_dropout"}


def test_unknown_key_names_the_closest_known_one():
    with pytest.raises(UserError, match=r"unknown parameter 'dropuot' \(did you mean 'dropout'\?\)"):
        TrialConfig.from_dict({"dropuot": 0.3})


@pytest.mark.parametrize("values, message", [
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
    ({"pooling": "median"}, "pooling must be 'max' or 'avg'"),
    ({"batch_size": "32"}, "batch_size must be a int"),
    ({"split": "random"}, "split must be one of patient, report"),
    ({"kernel_size": 4}, "kernel_size must be one of 1, 3, 5, 7"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(UserError, match=message):
        TrialConfig.from_dict(values)


def test_numpy_scalars_and_whole_floats_are_accepted():
    cfg = TrialConfig.from_dict({"dense_units": np.int64(128), "batchnorm": np.bool_(True), "filters": 16.0,
                                 "learning_rate": 1})
    assert cfg.dense_units == 128 and cfg.batchnorm is True and cfg.filters == 16 and cfg.learning_rate == 1.0


def test_settings_replace_ignores_unset_flags():
    s = SearchSettings(num_samples=4).replace(num_samples=None, max_epochs=7)
    assert s.num_samples == 4 and s.max_epochs == 7
    with pytest.raises(UserError, match="reduction_factor must be at least 2"):
        SearchSettings(reduction_factor=1)


@pytest.mark.parametrize("values, message", [
    ({"num_samples": "ten"}, r"num_samples must be a int \(a whole number\), 0 or more, got 'ten'"),
    ({"num_samples": 2.5}, r"num_samples must be a int \(a whole number\), 0 or more, got 2.5"),
    ({"num_samples": True}, r"num_samples must be a int .*got True"),  # a bool is not a number
    ({"patience": 0}, "patience must be at least 1, got 0"),
    ({"data_limit": -1}, r"data_limit must be 0 \(all\) or more, got -1"),
    ({"max_concurrent": -1}, r"max_concurrent must be 0 \(as many as resources allow\) or more, got -1"),
    ({"gpus_per_trial": -0.5}, "gpus_per_trial must be -1 .*got -0.5"),
    ({"cpus_per_trial": float("inf")}, "cpus_per_trial must be a float .*got inf"),
    ({"cpus_per_trial": "2"}, "cpus_per_trial must be a float"),
    ({"fixed_points": "no"}, r"fixed_points must be a bool \(True or False\), got 'no'"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*32\), got -1"),
    ({"searcher": "grid"}, "searcher must be 'random' or 'tpe', got 'grid'"),
])
def test_search_settings_check_types_and_ranges(values, message):
    with pytest.raises(UserError, match=message):
        SearchSettings(**values)


def test_trial_config_and_search_settings_allow_the_same_values_for_the_same_key():
    for key, bad in [("patience", 0), ("max_epochs", 0), ("image_size", 8), ("data_limit", -1), ("seed", -1),
                     ("patience", 1.5), ("max_epochs", "4")]:
        with pytest.raises(UserError) as trial:
            TrialConfig(**{key: bad})
        with pytest.raises(UserError) as settings:
            SearchSettings(**{key: bad})
        assert str(trial.value) == str(settings.value) and str(trial.value).startswith(f"{key} must be ")
    with pytest.raises(UserError, match="batch_size must be a int"):
        TrialConfig(batch_size="32")  # built directly, not only through from_dict


def test_whole_floats_numpy_scalars_and_ints_for_floats_are_accepted_as_settings():
    s = SearchSettings(num_samples=4.0, max_concurrent=np.int64(2), cpus_per_trial=2, fixed_points=np.bool_(False))
    assert s.num_samples == 4 and type(s.num_samples) is int and type(s.max_concurrent) is int
    assert s.cpus_per_trial == 2.0 and type(s.cpus_per_trial) is float and s.fixed_points is False
    assert SearchSettings(gpus_per_trial=0.25).gpus_per_trial == 0.25 and SearchSettings().gpus_per_trial == -1


def test_the_objective_says_which_way_is_better_for_every_comparison():
    import math

    from lungsearch.config import OBJECTIVE, Objective

    assert (OBJECTIVE.key, OBJECTIVE.mode, OBJECTIVE.direction) == ("objective", "max", "maximize")
    assert OBJECTIVE.better(0.9, 0.8) and not OBJECTIVE.better(0.8, 0.9) and not OBJECTIVE.better(0.8, 0.8)
    assert OBJECTIVE.better(0.5, None) and OBJECTIVE.better(0.5, math.nan) and OBJECTIVE.better(0.5, OBJECTIVE.worst)
    assert not OBJECTIVE.better(math.nan, 0.1) and not OBJECTIVE.better(None, 0.1)
    assert OBJECTIVE.best([0.7, math.nan, 0.9, 0.8]) == 0.9 and math.isnan(OBJECTIVE.best([math.nan]))
    assert OBJECTIVE.reached(0.9, 0.9) and not OBJECTIVE.reached(0.89, 0.9)
    loss = Objective("val_loss", "min", "validation loss")  # the same questions, the other way round
    assert loss.better(0.2, 0.3) and loss.best([0.3, 0.2, 0.4]) == 0.2 and loss.direction == "minimize"
    assert loss.reached(0.2, 0.25) and not loss.descending and loss.worst == math.inf
    with pytest.raises(ValueError, match="max or min"):
        Objective("x", "up", "")
