"""Each robustness knob of TrialConfig changes what it should, through the code a trial runs: decoding
(normalize), the model's input layers (augmentation, standardize), the batches fit() trains on (MixUp, class
weights), the compiled optimizer and loss (AdamW, label smoothing) and the per-epoch scoring (TTA).

Tiny arrays and single-layer models, no Ray: the whole module takes seconds."""
import keras
import numpy as np
import pytest

from conftest import make_dataset
from lungsearch import models, train
from lungsearch.config import FIXED_POINTS, TrialConfig
from lungsearch.metrics import binary_metrics

SIZE = 32


class RecordingModel(keras.Sequential):
    """A Sequential model that keeps a copy of every batch its training step receives, (x, y) or (x, y, weights)
    as Keras hands them over, so a test sees exactly what fit() trained on. Run eagerly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def train_step(self, batch):
        self.batches.append([np.asarray(t) for t in batch if t is not None])
        return super().train_step(batch)


def recording_model(cfg: TrialConfig) -> RecordingModel:
    keras.utils.set_random_seed(cfg.seed)
    model = RecordingModel([keras.Input((SIZE, SIZE, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(1, activation="sigmoid")])
    train.compile_model(model, cfg)
    model.run_eagerly = True  # the batches as arrays
    return model


def one_hot_images(n: int = 8) -> np.ndarray:
    """n images, image i all zeros but pixel (0, i): a blend of images shows which images it mixes, and how much."""
    x = np.zeros((n, SIZE, SIZE, 1), "float32")
    x[np.arange(n), 0, np.arange(n), 0] = 1.0
    return x


def fit_once(cfg: TrialConfig, x: np.ndarray, y: np.ndarray) -> tuple[RecordingModel, dict]:
    """train.fit on (x, y) for cfg.max_epochs, validation and test parts the same images; the model, last report."""
    model = recording_model(cfg)
    rows = []
    train.fit(model, cfg, x, y, {"val": (x, y), "test": (x, y)}, rows.append)
    return model, rows[-1]


LABELS = np.array([[0], [1], [1], [1], [1], [1], [0], [1]], "float32")  # 2 NORMAL, 6 PNEUMONIA


def test_clahe_changes_the_decoded_training_pixels_and_keeps_shape_and_range(tmp_path, cache_dir):
    """normalize='clahe' reaches the arrays a trial trains and is scored on (train.trial_data): same shapes, labels
    and [0, 1] range as normalize='none', other pixels, more local contrast, and not global equalisation."""
    root = make_dataset(tmp_path / "xrays", {"train": 2, "test": 1})
    decoded = {}
    for method in ("none", "equalize", "clahe"):
        cfg = TrialConfig(data_dir=str(root), cache_dir=str(cache_dir), image_size=SIZE, normalize=method)
        x, y, parts = train.trial_data(cfg)
        decoded[method] = {"train": (x, y), **parts}
    none, clahe, equalized = decoded["none"], decoded["clahe"], decoded["equalize"]
    assert set(clahe) == set(none) == {"train", "val", "test"}
    for part in none:
        (xn, yn), (xc, yc) = none[part], clahe[part]
        assert xc.shape == xn.shape and xc.shape[1:] == (SIZE, SIZE, 1) and xc.dtype == xn.dtype == np.float32
        assert xc.min() >= 0 and xc.max() <= 1
        assert np.array_equal(yc, yn)
        assert np.abs(xc - xn).mean() > 0.02, part  # other pixels
        assert (xc.std(axis=(1, 2, 3)) > xn.std(axis=(1, 2, 3)) + 0.02).all(), part  # these low-contrast films gain
        assert np.abs(xc - equalized[part][0]).mean() > 0.01, part  # CLAHE, not a global histogram equalisation


def test_mixup_trains_on_convex_blends_of_image_pairs_with_blended_labels_and_class_weights():
    """With mixup > 0, every image fit() trains on is lam * x_a + (1 - lam) * x_b for two training images, its
    label lam * y_a + (1 - lam) * y_b and (class_weight) its weight blended alike; some are true blends."""
    x, y = one_hot_images(), LABELS
    weights = train.class_weights(y)
    cfg = TrialConfig(image_size=SIZE, max_epochs=1, batch_size=4, mixup=0.4, class_weight=True)
    model, _ = fit_once(cfg, x, y)
    assert len(model.batches) == 2 and all(len(b) == 3 for b in model.batches)
    xb, yb, wb = (np.concatenate(parts) for parts in zip(*model.batches))
    assert xb.shape == x.shape and yb.shape == y.shape
    lam = xb[:, 0, :8, 0]  # the share of each training image in each trained image
    assert np.abs(xb).sum() == pytest.approx(np.abs(lam).sum(), abs=1e-5)  # nothing outside those pixels
    assert (lam >= -1e-6).all() and (lam <= 1 + 1e-6).all()
    np.testing.assert_allclose(lam.sum(axis=1), 1.0, atol=1e-5)  # convex combinations
    assert ((lam > 1e-3).sum(axis=1) <= 2).all()  # of two images
    np.testing.assert_allclose(yb, lam @ y, atol=1e-5)  # labels blended as their images
    np.testing.assert_allclose(wb.ravel(), lam @ np.array([weights[int(v)] for v in y.ravel()]), atol=1e-5)
    blended = ((lam > 1e-3) & (lam < 1 - 1e-3)).any(axis=1)
    assert blended.sum() >= 4  # true blends, not copies
    assert ((yb > 0.01) & (yb < 0.99)).any()  # soft labels

    plain, _ = fit_once(TrialConfig(image_size=SIZE, max_epochs=1, batch_size=4), x, y)  # mixup 0
    xp, yp = (np.concatenate(parts) for parts in zip(*plain.batches))
    assert set(np.unique(yp)) == {0.0, 1.0} and sorted(xp.sum(axis=(1, 2, 3))) == [1.0] * 8  # the images as they are


def test_class_weight_gives_each_trained_image_its_class_weight():
    """With class_weight, fit() trains with a weight per image that makes both classes count equally; without it,
    no weights."""
    x, y = one_hot_images(), LABELS
    model, _ = fit_once(TrialConfig(image_size=SIZE, max_epochs=1, batch_size=8, class_weight=True), x, y)
    [(xb, yb, wb)] = model.batches
    assert wb.ravel() == pytest.approx(np.where(yb.ravel() == 0, 8 / (2 * 2), 8 / (2 * 6)))
    assert wb[yb.ravel() == 0].sum() == pytest.approx(wb[yb.ravel() == 1].sum())  # the classes weigh the same
    unweighted, _ = fit_once(TrialConfig(image_size=SIZE, max_epochs=1, batch_size=8), x, y)
    [batch] = unweighted.batches
    assert len(batch) == 2  # images and labels only


def test_adamw_decays_the_weights_that_adam_leaves_alone_with_zero_gradients():
    """The optimizer compile_model gives a model: with zero gradients Adam moves nothing, AdamW shrinks every weight
    by (1 - learning_rate * weight_decay) per step."""
    steps, lr, wd = 5, 0.01, 0.5
    norms = {}
    for name, cfg in (("adam", TrialConfig(learning_rate=lr)),
                      ("adamw", TrialConfig(learning_rate=lr, optimizer="adamw", weight_decay=wd)),
                      ("adamw0", TrialConfig(learning_rate=lr, optimizer="adamw", weight_decay=0.0))):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="ones",
                                                                        bias_initializer="ones")])
        train.compile_model(model, cfg)
        for _ in range(steps):
            model.optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
        norms[name] = [float(np.linalg.norm(v)) for v in model.get_weights()]
    start = [np.sqrt(12), np.sqrt(3)]  # ones: kernel 4 x 3, bias 3
    assert norms["adam"] == pytest.approx(start, rel=1e-6) and norms["adamw0"] == pytest.approx(start, rel=1e-6)
    assert norms["adamw"] == pytest.approx([n * (1 - lr * wd) ** steps for n in start], rel=1e-5)


def test_label_smoothing_reaches_the_compiled_loss():
    """The loss a compiled model trains on (compute_loss, what its training step minimises): a confident correct
    prediction costs nothing without smoothing, and with it what binary cross-entropy charges against the
    smoothed targets (1 -> 1 - s/2, 0 -> s/2)."""
    p = np.array([[1.0], [0.0]], "float32")  # certain, and right
    y = np.array([[1.0], [0.0]], "float32")
    losses = {}
    for s in (0.0, 0.2):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Identity()])
        train.compile_model(model, TrialConfig(label_smoothing=s))
        losses[s] = float(model.compute_loss(x=p, y=y, y_pred=model(p)))
    smoothed = float(keras.ops.mean(keras.losses.binary_crossentropy(np.array([[0.9], [0.1]], "float32"), p)))
    assert losses[0.0] < 1e-5
    assert losses[0.2] > 1.0 and losses[0.2] == pytest.approx(smoothed, rel=1e-4)


def test_tta_scores_each_epoch_and_the_test_part_on_the_mean_with_flipped_images():
    """With tta, the validation and test metrics a trial reports are those of the mean of the plain and the
    horizontally flipped prediction; without it, of the plain one."""
    rng = np.random.default_rng(0)
    x = rng.random((8, SIZE, SIZE, 1), dtype=np.float32)
    y = LABELS
    for tta in (True, False):
        model, last = fit_once(TrialConfig(image_size=SIZE, max_epochs=1, batch_size=8, tta=tta), x, y)
        plain = binary_metrics(y, models.predict_proba(model, x))["loss"]
        averaged = binary_metrics(y, models.predict_proba(model, x, tta=True))["loss"]
        assert abs(plain - averaged) > 1e-3  # the model is not mirror-symmetric: the flip matters
        expected = averaged if tta else plain
        assert last["val_loss"] == pytest.approx(expected, rel=1e-6) and last["test_loss"] == pytest.approx(
            expected, rel=1e-6)


def input_layers(cfg: TrialConfig) -> keras.Model:
    """What models.build puts before the first convolution, as a model of its own."""
    keras.utils.set_random_seed(cfg.seed)
    model = models.build(cfg)
    return keras.Model(model.input, model.get_layer("conv1").input)


TINY = dict(image_size=SIZE, conv_blocks=1, filters=2, dense_units=2)


def monotone(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether each image's pixels keep their order."""
    return all(np.array_equal(np.argsort(b.ravel(), kind="stable"), np.argsort(a.ravel(), kind="stable"))
               for b, a in zip(before, after))


def shifted(x, out):  # brightness: one offset per image
    d = out - x
    return np.ptp(d.reshape(len(d), -1), axis=1).max() < 1e-5 and np.abs(d[:, 0, 0, 0]).min() > 1e-4


def contrasted(x, out):  # contrast: around each image's mean, keeping order
    return np.allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5) and monotone(x, out)


def gamma_curved(x, out):  # gamma: keeps order, moves the mean
    return monotone(x, out) and np.abs(out.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3))).max() > 1e-3


def noised(x, out):  # noise: per-pixel Gaussian of std 0.05
    d = (out - x).reshape(len(x), -1)
    return np.allclose(d.std(axis=1), 0.05, rtol=0.15) and np.abs(d.mean(axis=1)).max() < 0.01


@pytest.mark.parametrize("knob, signature", [
    (dict(aug_brightness=0.2), shifted), (dict(aug_contrast=0.3), contrasted), (dict(aug_gamma=0.5), gamma_curved),
    (dict(aug_noise=0.05), noised), (dict(augment=True), lambda x, out: not monotone(x, out)),
], ids=["brightness", "contrast", "gamma", "noise", "augment"])
def test_augmentation_knobs_change_training_inputs_their_own_way_and_leave_inference_alone(knob, signature):
    """A model built with the knob changes its training inputs as that knob does (and not as the others), and feeds
    inference inputs through untouched; the same model without augmentation changes nothing."""
    x = np.random.default_rng(1).uniform(0.3, 0.7, (8, SIZE, SIZE, 1)).astype("float32")  # no clipping at [0, 1]
    layers = input_layers(TrialConfig(**TINY, **knob))
    trained_on = np.asarray(layers(x, training=True))
    assert trained_on.shape == x.shape and trained_on.min() >= 0 and trained_on.max() <= 1
    assert np.abs(trained_on - x).max() > 1e-2
    assert signature(x, trained_on)
    assert np.array_equal(np.asarray(layers(x, training=False)), x)
    assert np.array_equal(np.asarray(input_layers(TrialConfig(**TINY))(x, training=True)), x)


def test_standardize_makes_the_model_blind_to_brightness_and_contrast():
    """normalize='standardize' (a model layer): every image reaches the convolutions with mean 0 and std 1, so
    a*x + b gets the prediction x gets; without it, it does not."""
    x = np.random.default_rng(2).uniform(0.2, 0.6, (4, SIZE, SIZE, 1)).astype("float32")
    brighter = 1.5 * x + 0.1
    cfg = TrialConfig(**TINY, normalize="standardize")
    seen = np.asarray(input_layers(cfg)(x, training=False))
    assert np.allclose(seen.mean(axis=(1, 2, 3)), 0, atol=1e-5) and np.allclose(seen.std(axis=(1, 2, 3)), 1, atol=1e-3)
    for normalize, blind in (("standardize", True), ("none", False)):
        keras.utils.set_random_seed(0)
        model = models.build(TrialConfig(**TINY, normalize=normalize))
        p, q = models.predict_proba(model, x), models.predict_proba(model, brighter)
        assert np.allclose(p, q, atol=1e-5) == blind, normalize


def test_bn_momentum_sets_how_fast_inference_statistics_catch_up_and_the_reports_models_keep_keras_default():
    """Every BatchNorm layer gets cfg.bn_momentum. After 10 training steps that barely move the weights, the
    statistics inference uses have gone most of the way to the training activations' mean at 0.9 and under a
    fifth of it at Keras' 0.99 (what the report's bn_aug and bn_aug_dropout keep)."""
    x = np.random.default_rng(3).uniform(0.5, 1.0, (80, SIZE, SIZE, 1)).astype("float32")
    y = (np.arange(80) % 2).astype("float32").reshape(-1, 1)
    covered = {}
    for momentum in (0.9, 0.99):
        cfg = TrialConfig(**TINY, batchnorm=True, bn_momentum=momentum, learning_rate=1e-9, batch_size=8)
        keras.utils.set_random_seed(0)
        model = models.build(cfg)
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert bns and all(layer.momentum == momentum for layer in bns)
        train.compile_model(model, cfg)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        conv = keras.Model(model.input, model.get_layer("conv1").output)
        target = np.asarray(conv(x)).mean(axis=(0, 1, 2))  # what the moving mean should reach (it starts at 0)
        covered[momentum] = float(np.median(np.asarray(model.get_layer("bn1").moving_mean) / target))
    assert covered[0.9] > 0.6 and covered[0.99] < 0.2, covered
    assert all(FIXED_POINTS[name]["bn_momentum"] == 0.99 for name in ("bn_aug", "bn_aug_dropout"))
    assert TrialConfig().bn_momentum == 0.9
