"""Build a Keras CNN from a TrialConfig: the report's three models and the search space around them.

Backend-neutral Keras 3 (keras.ops only), so it runs on TensorFlow, JAX and PyTorch.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from .config import DECODE_TIME_NORMALIZATIONS, TrialConfig


@keras.saving.register_keras_serializable(package="lungsearch")
class RandomAffine(layers.Layer):
    """The report's augmentation (Keras ImageDataGenerator settings) as one affine warp per image.

    Per image: rotation in [-rotation, rotation] degrees, zoom factors in [1-zoom, 1+zoom] drawn for x and
    y, shifts in [-shift, shift] of the width and height, shear in [-shear, shear] degrees (as
    ImageDataGenerator reads `shear_range`), and a horizontal flip half of the time. All are combined into
    one matrix and applied by a single batched bilinear warp with nearest fill, which is much cheaper than
    chaining Keras' RandomRotation, RandomZoom, RandomTranslation and RandomShear layers.
    Active only in training.
    """

    def __init__(self, rotation: float = 20.0, zoom: float = 0.15, shift: float = 0.2, shear: float = 0.15,
                 flip: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.shear, self.flip, self.seed = rotation, zoom, shift, shear, flip, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def transforms(self, batch: int, height: int, width: int):
        """Output-to-input affine maps, one row [a0, a1, a2, b0, b1, b2, 0, 0] per image."""
        def uniform(low, high):
            return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

        deg = math.pi / 180.0
        theta = uniform(-self.rotation * deg, self.rotation * deg)
        shear = uniform(-self.shear * deg, self.shear * deg)
        zx = uniform(1.0 - self.zoom, 1.0 + self.zoom)
        zy = uniform(1.0 - self.zoom, 1.0 + self.zoom)
        tx = uniform(-self.shift, self.shift) * width
        ty = uniform(-self.shift, self.shift) * height
        if self.flip:
            fx = ops.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
        else:
            fx = ops.ones((batch,))
        cos, sin = ops.cos(theta), ops.sin(theta)
        # A = rotation @ shear @ zoom @ flip, mapping output offsets from the centre to input offsets.
        a00 = cos * zx * fx
        a01 = (-cos * ops.sin(shear) - sin * ops.cos(shear)) * zy
        a10 = sin * zx * fx
        a11 = (-sin * ops.sin(shear) + cos * ops.cos(shear)) * zy
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        b0 = cx - a00 * cx - a01 * cy + tx
        b1 = cy - a10 * cx - a11 * cy + ty
        zeros = ops.zeros((batch,))
        return ops.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)

    def call(self, images, training=None):
        if not training:
            return images
        shape = ops.shape(images)
        matrix = self.transforms(shape[0], images.shape[1], images.shape[2])
        return ops.image.affine_transform(images, ops.cast(matrix, images.dtype), interpolation="bilinear",
                                          fill_mode="nearest")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "shear": self.shear, "flip": self.flip, "seed": self.seed}


@keras.saving.register_keras_serializable(package="lungsearch")
class RandomIntensity(layers.Layer):
    """Intensity augmentation of [0, 1] images, one draw per image; active only in training.

    In order: gamma x ** exp(U(-gamma, gamma)), contrast (x - mean) * U(1-contrast, 1+contrast) + mean
    (the image's mean), brightness + U(-brightness, brightness), Gaussian noise of std `noise`; the
    result is clipped to [0, 1]. A strength of 0 skips its part.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, gamma: float = 0.0, noise: float = 0.0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.gamma, self.noise, self.seed = brightness, contrast, gamma, noise, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        shape = ops.shape(images)

        def uniform(low, high):
            return keras.random.uniform((shape[0], 1, 1, 1), low, high, seed=self.seed_generator)

        x = images
        if self.gamma:
            x = ops.power(ops.clip(x, 1e-6, 1.0), ops.exp(uniform(-self.gamma, self.gamma)))
        if self.contrast:
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            x = (x - mean) * uniform(1.0 - self.contrast, 1.0 + self.contrast) + mean
        if self.brightness:
            x = x + uniform(-self.brightness, self.brightness)
        if self.noise:
            x = x + keras.random.normal(shape, stddev=self.noise, seed=self.seed_generator)
        return ops.clip(x, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "brightness": self.brightness, "contrast": self.contrast,
                "gamma": self.gamma, "noise": self.noise, "seed": self.seed}


@keras.saving.register_keras_serializable(package="lungsearch")
class PerImageStandardization(layers.Layer):
    """(x - mean) / max(std, 1e-3) per image, in training and at inference."""

    def call(self, images):
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(images - mean), axis=(1, 2, 3), keepdims=True))
        return (images - mean) / ops.maximum(std, 1e-3)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="lungsearch")
class DecodedWith(layers.Layer):
    """Identity. Records in the saved model the decode-time normalisation (equalize, clahe) its inputs need."""

    def __init__(self, method: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.method = method

    def call(self, images):
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "method": self.method}


def decode_normalization(model: keras.Model) -> str:
    """The decode-time normalisation a model's inputs need (its DecodedWith layer's method), else "none"."""
    for layer in model.layers:
        if isinstance(layer, DecodedWith):
            return layer.method
    return "none"


def predict_proba(model: keras.Model, x: np.ndarray, tta: bool = False, batch_size: int = 256) -> np.ndarray:
    """PNEUMONIA probabilities (float64, shape (N,)) of N x H x W x 1 images; with tta, the mean with the
    prediction of the horizontally flipped images.

    Batch by batch with `predict_on_batch`, the last batch padded to the size of the others, so a model is
    traced for one input shape only and each call skips `predict`'s per-call set-up (a trial scores its
    validation images every epoch)."""
    x = np.asarray(x)
    size = max(1, min(batch_size, len(x)))

    def run(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            n = len(chunk)
            if n < size:
                chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(model.predict_on_batch(chunk), np.float64).ravel()[:n])
        return np.concatenate(out) if out else np.zeros(0)

    probs = run(x)
    if tta:
        probs = (probs + run(np.ascontiguousarray(x[:, :, ::-1]))) / 2
    return probs


def conv_block(x, filters: int, cfg: TrialConfig, index: int):
    """Conv(relu) [+ BatchNorm] [+ residual shortcut] + pooling; residual blocks use 'same' padding."""
    padding = "same" if cfg.residual else cfg.padding
    y = layers.Conv2D(filters, cfg.kernel_size, activation="relu", padding=padding, name=f"conv{index}")(x)
    if cfg.batchnorm:
        y = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{index}")(y)
    if cfg.residual:
        shortcut = layers.Conv2D(filters, 1, name=f"shortcut{index}")(x)
        y = layers.Add(name=f"add{index}")([y, shortcut])
    pool = layers.MaxPooling2D if cfg.pooling == "max" else layers.AveragePooling2D
    return pool(2, name=f"pool{index}")(y)


def build(cfg: TrialConfig) -> keras.Model:
    """The CNN a config describes. Defaults give the report's base model (2,460,289 parameters at 150 px)."""
    inputs = keras.Input((cfg.image_size, cfg.image_size, 1), name="xray")
    x = inputs
    if cfg.normalize in DECODE_TIME_NORMALIZATIONS:  # applied when images are decoded; recorded in the model
        x = DecodedWith(cfg.normalize, name="decoded_with")(x)
    if cfg.augment:
        x = RandomAffine(cfg.aug_rotation, cfg.aug_zoom, cfg.aug_shift, cfg.aug_shear, cfg.aug_flip,
                         seed=cfg.seed, name="augment", dtype="float32")(x)  # warps in float32 under bfloat16
    if max(cfg.aug_brightness, cfg.aug_contrast, cfg.aug_gamma, cfg.aug_noise) > 0:
        x = RandomIntensity(cfg.aug_brightness, cfg.aug_contrast, cfg.aug_gamma, cfg.aug_noise,
                            seed=cfg.seed + 1, name="intensity", dtype="float32")(x)  # +1: not RandomAffine's draws
    if cfg.normalize == "standardize":
        x = PerImageStandardization(name="standardize", dtype="float32")(x)
    for i in range(cfg.conv_blocks):
        side = x.shape[1] - (0 if cfg.residual or cfg.padding == "same" else cfg.kernel_size - 1)
        if side < 2:
            raise ValueError(f"{cfg.conv_blocks} conv blocks with kernel {cfg.kernel_size} do not fit a "
                             f"{cfg.image_size} px input: block {i + 1} would see {x.shape[1]} px")
        x = conv_block(x, int(round(cfg.filters * cfg.filter_growth ** i)), cfg, i + 1)
    x = layers.Flatten(name="flatten")(x) if cfg.head == "flatten" else layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.batchnorm:
        x = layers.BatchNormalization(momentum=cfg.bn_momentum, name="bn_dense")(x)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(x)
    name = cfg.fixed_point or "cnn"
    return keras.Model(inputs, outputs, name=name)
