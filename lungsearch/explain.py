"""Where a model looks: Grad-CAM (gradients under TensorFlow and JAX), occlusion sensitivity (forward passes
only, any backend), heat-map overlays, and the share of saliency in the image's outer border, a number that
shows a model reading text markers, borders or devices instead of the lungs. `explain` is the command.

Grad-CAM (Selvaraju et al. 2017) weighs the last feature map before the classifier's head (the input of its
Flatten or global pooling layer) by the mean gradient of the PNEUMONIA logit with respect to each channel,
and keeps the positive part.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import data
from .config import UserError

BORDER = 0.1  # the outer border: this share of the side on each edge (36% of the image's area)
METHODS = ("auto", "gradcam", "occlusion")
GRADIENT_BACKENDS = ("tensorflow", "jax")


def feature_split(model) -> tuple[Any, Any]:
    """The model cut at its last spatial feature map: (inputs -> features, features -> probability)."""
    import keras

    for layer in model.layers:
        inp = layer.input
        if not isinstance(inp, list) and len(inp.shape) == 4 and len(layer.output.shape) == 2:
            return keras.Model(model.inputs[0], inp), keras.Model(inp, model.outputs[0])
    raise UserError(f"model {model.name} has no spatial feature map followed by a Flatten or pooling head, so "
                    f"Grad-CAM cannot be computed; use --method occlusion")


def gradients(head, features: np.ndarray) -> np.ndarray:
    """d logit(probability) / d features of `head`, summed over the batch: each image's own gradient. The one
    place that needs the backend: tf.GradientTape under TensorFlow, jax.grad under JAX."""
    import keras

    backend = keras.backend.backend()

    def logit(p):
        p = keras.ops.clip(p, 1e-7, 1 - 1e-7)
        return keras.ops.sum(keras.ops.log(p) - keras.ops.log(1 - p))

    if backend == "tensorflow":
        import tensorflow as tf

        f = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = logit(head(f, training=False))
        return tape.gradient(out, f).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda f: logit(head(f, training=False)))(features))
    raise UserError(f"Grad-CAM needs gradients, which lungsearch takes under {' or '.join(GRADIENT_BACKENDS)}; "
                    f"this Keras runs on {backend}: use --method occlusion, or set KERAS_BACKEND=jax")


def gradcam(model, x: np.ndarray) -> np.ndarray:
    """Grad-CAM maps (N x H x W, each scaled to [0, 1]; all zero where no feature raises the logit) of N x H x W
    x 1 images at the model's input size."""
    features_of, head = feature_split(model)
    features = np.asarray(features_of(x, training=False), np.float32)
    grads = gradients(head, features)
    weights = grads.mean(axis=(1, 2), keepdims=True)  # one weight per channel and image
    cam = np.maximum((weights * features).sum(axis=-1), 0)
    return np.stack([scaled(cv2.resize(c, x.shape[2:0:-1], interpolation=cv2.INTER_LINEAR)) for c in cam])


def occlusion(model, x: np.ndarray, patch: int | None = None) -> np.ndarray:
    """Occlusion sensitivity (N x H x W in [0, 1]): how much the PNEUMONIA probability drops when a square
    patch (an eighth of the side by default) is set to the image's mean, the patch slid by half its side."""
    from .models import predict_proba

    side = x.shape[1]
    patch = patch or max(2, side // 8)
    stride = max(1, patch // 2)
    starts = sorted({*range(0, side - patch + 1, stride), side - patch})
    out = []
    for img in x:
        base = predict_proba(model, img[None])[0]
        boxes = [(r, c) for r in starts for c in starts]
        batch = np.repeat(img[None], len(boxes), axis=0)
        for k, (r, c) in enumerate(boxes):
            batch[k, r:r + patch, c:c + patch] = img.mean()
        drop = base - predict_proba(model, batch)
        heat, hits = np.zeros((side, side)), np.zeros((side, side))
        for d, (r, c) in zip(drop, boxes):
            heat[r:r + patch, c:c + patch] += d
            hits[r:r + patch, c:c + patch] += 1
        out.append(scaled(np.maximum(heat / np.maximum(hits, 1), 0)))
    return np.stack(out)


def scaled(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return m / m.max() if m.max() > 0 else np.zeros_like(m)


def saliency(model, x: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """Maps of `method` (auto: Grad-CAM where the backend gives gradients, else occlusion) and the method."""
    import keras

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        method = "gradcam" if keras.backend.backend() in GRADIENT_BACKENDS else "occlusion"
    return (gradcam(model, x) if method == "gradcam" else occlusion(model, x)), method


def border_share(m: np.ndarray, border: float = BORDER) -> float:
    """The share of a saliency map's mass in the outer `border` of each side (NaN for an all-zero map). A
    map spread evenly scores the border's share of the area (0.36 for 0.1)."""
    m = np.asarray(m, np.float64)
    h, w = m.shape
    bh, bw = max(1, round(h * border)), max(1, round(w * border))
    total = m.sum()
    return float((total - m[bh:h - bh, bw:w - bw].sum()) / total) if total > 0 else float("nan")


def overlay(image: np.ndarray, heat: np.ndarray, size: int = 256) -> np.ndarray:
    """A BGR picture: the greyscale image (uint8 or [0, 1]) with the heat map (JET colours) blended on it."""
    img = np.asarray(image, np.float64).squeeze()
    img = (img * 255 if img.max() <= 1.0 else img).clip(0, 255).astype(np.uint8)
    img = cv2.cvtColor(cv2.resize(img, (size, size)), cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap((255 * cv2.resize(heat.astype(np.float32), (size, size))).astype(np.uint8),
                               cv2.COLORMAP_JET)
    return cv2.addWeighted(img, 0.6, colour, 0.4, 0)


def predictor_maps(predictor, path: Path, method: str) -> tuple[np.ndarray, float, np.ndarray, str] | None:
    """The image at the first member's size, the (calibrated) probability, and the members' mean map at that
    size; None for an unreadable image."""
    from . import models

    maps, probs, shown_img, used = [], [], None, method
    for model, size in zip(predictor.models, predictor.sizes):
        img = data.read_image(path, size, models.decode_normalization(model))
        if img is None:
            return None
        x = img.astype(np.float32)[None, ..., None] / 255.0
        m, used = saliency(model, x, method)
        shown_img = img if shown_img is None else shown_img
        maps.append(cv2.resize(m[0].astype(np.float32), shown_img.shape[::-1]))
        probs.append(models.predict_proba(model, x)[0])
    prob = float(predictor.calibrate(np.array([np.mean(probs)]))[0])
    return shown_img, prob, scaled(np.mean(maps, axis=0)), used


def explain(model_path: str | Path, images: list[str], out_dir: str | Path = "explain", method: str = "auto") -> int:
    """`lungsearch explain`: an overlay PNG per image in `out_dir` and a line per image (path, probability,
    label, border share, overlay); exit status 1 if an image could not be read."""
    from .predict import load_predictor

    predictor = load_predictor(model_path)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {predictor.describe()}; border: saliency share in the outer {BORDER:.0%} of each side "
          f"(an even map: {1 - (1 - 2 * BORDER) ** 2:.2f})")
    failed = 0
    for name in images:
        path = Path(name).expanduser()
        got = predictor_maps(predictor, path, method) if path.is_file() else None
        if got is None:
            print(f"error: cannot read {data.shown(path)}: not a readable image file", file=sys.stderr)
            failed += 1
            continue
        img, prob, heat, used = got
        dest = out / f"{path.stem}_{used}.png"
        cv2.imwrite(str(dest), overlay(img, heat))
        label = data.CLASSES[int(prob > predictor.shown_threshold)]
        print(f"{data.shown(path)}\t{prob:.4f}\t{label}\tborder {border_share(heat):.2f}\t{data.shown(dest)}")
    return 1 if failed else 0
