"""Estimates of what a search needs at an image size: the weights counted without building a model, and sizes that
cannot fit refused before any image is decoded."""
import re
import time

import pytest

from lungsearch import sizes
from lungsearch.config import FIXED_POINTS, TrialConfig, UserError


@pytest.mark.parametrize("changes", [
    FIXED_POINTS["base"], FIXED_POINTS["bn_aug"], FIXED_POINTS["bn_aug_dropout"],
    {"conv_blocks": 4, "filters": 16, "filter_growth": 1.5, "kernel_size": 5, "head": "gap", "image_size": 96},
    {"residual": True, "batchnorm": True, "pooling": "avg", "image_size": 64},
    {"padding": "same", "conv_blocks": 2, "dense_units": 8, "image_size": 48},
])
def test_weights_are_counted_as_the_built_model_has_them(changes):
    from lungsearch import models

    cfg = TrialConfig(**changes)
    assert sizes.weights(cfg) == models.build(cfg).count_params()


def test_the_report_models_at_150_px_have_the_report_counts():
    assert sizes.weights(TrialConfig()) == 2_460_289
    assert sizes.weights(TrialConfig(**FIXED_POINTS["bn_aug"])) == 4_829_313


def test_an_image_size_that_cannot_fit_is_refused_with_the_estimate(dataset, cache_dir, tmp_path, capsys):
    from lungsearch import cli

    started = time.time()
    args = ["run", "report", "--data", str(dataset), "--results", str(tmp_path / "results")]
    assert cli.main([*args, "--image-size", "10000"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"image size 10000 px \(image_size\) does not fit this machine: a trial of the report's "
                     r"bn_aug_dropout model needs about [\d,.]+ GB of memory \(25,518,239,873 weights, 64 images as float32\), and "
                     r"[\d,.]+ GB is available; use a smaller image size", err), err
    assert not cache_dir.exists() and not (tmp_path / "results").exists() and time.time() - started < 30
    with pytest.raises(UserError, match=r"decoding 1,000 images at 40000 x 40000 needs about 3,200.0 GB of memory|"
                                        r"its image cache needs about 1,600.0 GB"):
        sizes.check_decode(cache_dir, 1000, 40000)
    sizes.check_decode(cache_dir, 1000, 150)  # 22.5 MB: fits
