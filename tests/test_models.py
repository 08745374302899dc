import os
import subprocess
import sys

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
