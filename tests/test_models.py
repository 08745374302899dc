import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO
from lungsearch import models
from lungsearch.config import FIXED_POINTS, TrialConfig


@pytest.mark.parametrize("name, params", [("base", 2_460_289), ("bn_aug", 4_829_313), ("bn_aug_dropout", 4_829_313)])
def test_report_models_have_the_reports_parameter_counts(name, params):
    model = models.build(TrialConfig(**FIXED_POINTS[name]))
    assert model.count_params() == params
    kinds = [type(layer).__name__ for layer in model.layers]
    assert ("RandomAffine" in kinds) == (name != "base")
    assert ("Dropout" in kinds) == (name == "bn_aug_dropout")
    assert kinds.count("BatchNormalization") == (0 if name == "base" else 4)


def test_search_architectures_build():
    for changes in [dict(conv_blocks=5, image_size=96, head="gap", residual=True, pooling="avg", kernel_size=5),
                    dict(conv_blocks=2, filters=16, filter_growth=1.5, image_size=64)]:
        model = models.build(TrialConfig(**changes))
        assert model.output_shape == (None, 1)
    with pytest.raises(ValueError, match="do not fit"):
        models.build(TrialConfig(conv_blocks=5, image_size=32))


def augment(images, seed=0, **ranges):
    layer = models.RandomAffine(**{"rotation": 0, "zoom": 0, "shift": 0, "shear": 0, "flip": False, **ranges},
                                seed=seed)
    return np.asarray(layer(images, training=True))


def point_image(n=64, size=41, y=10, x=30):
    img = np.zeros((n, size, size, 1), "float32")
    img[:, y, x] = 1.0
    return img


def centre_of_mass(images):
    ys, xs = np.mgrid[: images.shape[1], : images.shape[2]]
    mass = images[..., 0].sum(axis=(1, 2))
    return (images[..., 0] * ys).sum(axis=(1, 2)) / mass, (images[..., 0] * xs).sum(axis=(1, 2)) / mass


def test_augmentation_is_identity_without_ranges_and_off_at_inference():
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    assert np.allclose(augment(x), x, atol=1e-5)
    layer = models.RandomAffine(seed=0)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)


def test_flip_mirrors_about_half_the_images():
    x = point_image()
    _, cx = centre_of_mass(augment(x, flip=True))
    flipped = np.isclose(cx, 40 - 30, atol=0.01)
    assert np.all(flipped | np.isclose(cx, 30, atol=0.01))
    assert 16 < flipped.sum() < 48


def test_shift_stays_within_twenty_percent_and_uses_the_range():
    x = point_image(n=256, size=101, y=50, x=50)
    cy, cx = centre_of_mass(augment(x, shift=0.2))
    assert np.abs(cx - 50).max() <= 20.5 and np.abs(cy - 50).max() <= 20.5
    assert np.abs(cx - 50).max() > 15  # the range is used, not just its middle


def test_rotation_keeps_the_radius_and_stays_within_twenty_degrees():
    x = point_image(n=256, size=101, y=50, x=90)  # 40 px right of the centre
    cy, cx = centre_of_mass(augment(x, rotation=20))
    angle = np.degrees(np.arctan2(cy - 50, cx - 50))
    assert np.allclose(np.hypot(cy - 50, cx - 50), 40, atol=0.6)
    assert np.abs(angle).max() <= 20.5 and np.abs(angle).max() > 15


def test_zoom_scales_distances_by_at_most_fifteen_percent():
    x = point_image(n=256, size=101, y=50, x=90)
    _, cx = centre_of_mass(augment(x, zoom=0.15))
    scale = 40 / (cx - 50)  # the output samples the input at zoom * offset
    assert scale.min() >= 0.85 - 0.02 and scale.max() <= 1.15 + 0.02


def test_nearest_fill_leaves_no_empty_corners():
    x = np.full((8, 32, 32, 1), 0.7, "float32")
    out = augment(x, rotation=20, zoom=0.15, shift=0.2, shear=0.15, flip=True)
    assert np.allclose(out, 0.7, atol=1e-5)


def test_builds_and_trains_with_the_jax_backend():
    pytest.importorskip("jax")
    code = (
        "import numpy as np; from lungsearch import models, train; from lungsearch.config import TrialConfig;"
        "cfg = TrialConfig(image_size=32, batchnorm=True, augment=True, dense_units=8, dropout=0.5);"
        "m = models.build(cfg); train.compile_model(m, cfg);"
        "x = np.random.rand(16, 32, 32, 1).astype('float32'); y = (np.random.rand(16, 1) > .5).astype('float32');"
        "h = m.fit(x, y, epochs=1, batch_size=8, verbose=0);"
        "import keras; print(keras.backend.backend(), m.count_params(), sorted(h.history))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KERAS_BACKEND": "jax"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("jax ") and "'f1'" in out.stdout


def intensity(x, training=True, seed=0, **strengths):
    layer = models.RandomIntensity(**{"brightness": 0, "contrast": 0, "gamma": 0, "noise": 0, **strengths}, seed=seed)
    return np.asarray(layer(x, training=training))


def test_random_intensity_is_off_at_inference_and_each_part_acts_within_unit_range():
    x = np.random.default_rng(0).uniform(0.2, 0.8, (8, 16, 16, 1)).astype("float32")
    every = dict(brightness=0.3, contrast=0.5, gamma=0.5, noise=0.1)
    assert np.array_equal(intensity(x, training=False, **every), x)
    out = intensity(x, **every)
    assert out.min() >= 0 and out.max() <= 1 and not np.allclose(out, x, atol=1e-3)
    for part in every:
        out = intensity(x, **{part: every[part]})
        assert out.min() >= 0 and out.max() <= 1
        assert np.abs(out - x).max() > 1e-3, part
    # brightness shifts each image by one offset; contrast keeps each image's mean
    shift = intensity(x, brightness=0.1) - x
    assert np.allclose(shift, shift[:, :1, :1], atol=1e-5)
    assert np.allclose(intensity(x, contrast=0.5).mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-4)


def test_per_image_standardization_gives_zero_mean_unit_std():
    x = np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 1)).astype("float32") * [[[[0.2]]], [[[1]]], [[[3]]], [[[0.5]]]]
    out = np.asarray(models.PerImageStandardization()(x.astype("float32")))
    assert np.allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert np.allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-3)
    flat = np.asarray(models.PerImageStandardization()(np.full((1, 8, 8, 1), 0.5, "float32")))
    assert np.all(np.isfinite(flat)) and np.allclose(flat, 0)


def test_knobs_add_their_layers_and_clahe_model_reloads_with_its_method(tmp_path):
    import keras
    cfg = TrialConfig(image_size=24, conv_blocks=2, filters=4, dense_units=4, normalize="clahe", aug_gamma=0.3,
                      aug_noise=0.05)
    model = models.build(cfg)
    assert model.count_params() == models.build(TrialConfig(image_size=24, conv_blocks=2, filters=4,
                                                            dense_units=4)).count_params()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[1:3] == ["DecodedWith", "RandomIntensity"]
    assert models.decode_normalization(model) == "clahe"
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert models.decode_normalization(loaded) == "clahe"
    assert models.decode_normalization(models.build(TrialConfig(image_size=24, conv_blocks=2, filters=4,
                                                                dense_units=4, normalize="standardize"))) == "none"
    x = np.random.default_rng(0).random((3, 24, 24, 1)).astype("float32")
    assert np.allclose(models.predict_proba(loaded, x), models.predict_proba(model, x), atol=1e-6)


def test_predict_proba_with_tta_averages_plain_and_flipped():
    keras.mixed_precision.set_dtype_policy("float32")
    keras.utils.set_random_seed(1)  # an unseeded tiny model can come out with only dead units: 0.5 everywhere
    model = models.build(TrialConfig(image_size=16, conv_blocks=1, filters=4, dense_units=4))
    x = np.random.default_rng(0).random((5, 16, 16, 1)).astype("float32")
    plain, tta = models.predict_proba(model, x), models.predict_proba(model, x, tta=True)
    flipped = models.predict_proba(model, x[:, :, ::-1])
    assert plain.shape == (5,) and plain.dtype == np.float64
    assert np.allclose(tta, (plain + flipped) / 2, atol=1e-6)
    assert not np.allclose(plain, flipped, atol=1e-6)
    symmetric = (x + x[:, :, ::-1]) / 2
    assert np.allclose(models.predict_proba(model, symmetric, tta=True), models.predict_proba(model, symmetric),
                       atol=1e-6)
