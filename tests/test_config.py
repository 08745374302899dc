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
