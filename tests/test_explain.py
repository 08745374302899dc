"""Saliency on a real Keras model trained on synthetic images whose only signal is a bright square: Grad-CAM
(TensorFlow and JAX) and occlusion peak on it; `explain` writes overlays from any folder, for a .keras file and
for a card listing members."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from conftest import REPO
from lungsearch import explain, models
from lungsearch.config import TrialConfig

SIDE, SQUARE = 24, 5


def picture(rng: np.random.Generator, at: tuple[int, int] | None) -> np.ndarray:
    """Noise, and where `at` is given a bright square there: the only thing that tells the classes apart."""
    img = rng.normal(0.3, 0.05, (SIDE, SIDE))
    if at:
        img[at[0]:at[0] + SQUARE, at[1]:at[1] + SQUARE] += 0.6
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def square_model(tmp_path_factory) -> tuple[keras.Model, Path]:
    """A small CNN (same padding, global pooling) trained to find the square, saved as a .keras file."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    at = [tuple(rng.integers(0, SIDE - SQUARE, 2)) if k % 2 else None for k in range(256)]
    x = np.stack([picture(rng, a) for a in at])[..., None]
    y = np.array([a is not None for a in at], np.float32)
    inputs = keras.Input((SIDE, SIDE, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=25, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.95
    path = tmp_path_factory.mktemp("explain") / "square.keras"
    model.save(path)
    return model, path


def peak(m: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(m), m.shape))


def inside(point: tuple[int, int], at: tuple[int, int], slack: int = 1) -> bool:
    return all(a - slack <= p < a + SQUARE + slack for p, a in zip(point, at))


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_saliency_peaks_on_the_only_signal(square_model, method):
    model, _ = square_model
    rng = np.random.default_rng(5)
    spots = [(2, 3), (15, 16), (3, 17)]
    x = np.stack([picture(rng, a) for a in spots])[..., None]
    maps, used = explain.saliency(model, x, method)
    assert used == method and maps.shape == (3, SIDE, SIDE)
    for m, at in zip(maps, spots):
        assert inside(peak(m), at), (peak(m), at)
        assert m.max() == pytest.approx(1.0)


def test_grad_cam_under_jax_peaks_on_the_square(square_model, tmp_path):
    _, path = square_model
    script = f"""
import numpy as np, keras
from lungsearch import explain
assert keras.backend.backend() == "jax"
model = keras.saving.load_model({str(path)!r})
img = np.random.default_rng(5).normal(0.3, 0.05, ({SIDE}, {SIDE}))
img[15:20, 4:9] += 0.6
m, used = explain.saliency(model, np.clip(img, 0, 1)[None, ..., None].astype("float32"))
print(used, *np.unravel_index(np.argmax(m[0]), m[0].shape))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    used, r, c = out.stdout.split()
    assert used == "gradcam" and inside((int(r), int(c)), (15, 4))


def test_grad_cam_fits_the_report_models_and_border_share():
    for cfg in (TrialConfig(image_size=32), TrialConfig(image_size=32, residual=True, batchnorm=True, head="gap")):
        model = models.build(cfg)
        maps = explain.gradcam(model, np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32))
        assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    even, edge = np.ones((20, 20)), np.zeros((20, 20))
    edge[0, :] = 1
    assert explain.border_share(even) == pytest.approx(1 - 0.8 ** 2) and explain.border_share(edge) == 1.0
    centre = np.zeros((20, 20))
    centre[8:12, 8:12] = 1
    assert explain.border_share(centre) == 0.0 and np.isnan(explain.border_share(np.zeros((4, 4))))


def run_explain(*args, cwd: Path, backend: str = "tensorflow"):
    return subprocess.run([sys.executable, "-m", "lungsearch", "explain", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)})


def images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(9)
    folder.mkdir()
    paths = [folder / "square.png", folder / "plain.jpeg"]
    for p, at in zip(paths, [(2, 14), None]):
        assert cv2.imwrite(str(p), (255 * picture(rng, at)).astype(np.uint8))
    return paths


def test_explain_command_on_a_keras_file_and_a_card_with_members_from_another_folder(square_model, tmp_path):
    _, path = square_model
    pics = images(tmp_path / "pics")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_explain(path, *pics, tmp_path / "missing.png", cwd=elsewhere)
    assert out.returncode == 1 and "cannot read" in out.stderr and "missing.png" in out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("# probability of PNEUMONIA, uncalibrated; label PNEUMONIA above threshold 0.5000")
    square, plain = (line.split("\t") for line in lines[1:])
    assert square[2] == "PNEUMONIA" and plain[2] == "NORMAL" and float(square[1]) > float(plain[1])
    overlay = cv2.imread(square[4])
    assert Path(square[4]).parent == elsewhere / "explain" and overlay.shape == (256, 256, 3)
    assert not np.array_equal(overlay[..., 0], overlay[..., 2])  # coloured by the heat map

    # a card listing members (an ensemble), calibrated: the same model twice, under JAX
    card = {"kind": "ensemble", "threshold": 0.5, "members": [{"model": "square.keras"}, {"model": "square.keras"}],
            "calibration": {"method": "platt", "a": 0.5, "b": 0.0, "fitted_on": "validation part"}}
    (path.parent / "ensemble.json").write_text(json.dumps(card))
    out = run_explain(path.parent / "ensemble.json", pics[0], "--out", tmp_path / "maps", cwd=elsewhere,
                      backend="jax")
    assert out.returncode == 0, out.stderr[-3000:]
    head, line = out.stdout.strip().splitlines()
    assert "calibrated (Platt scaling" in head and "temperature 2.00" in head
    prob = float(line.split("\t")[1])
    assert abs(prob - 0.5) < abs(float(square[1]) - 0.5)  # temperature 2 pulls it towards 0.5
    assert (tmp_path / "maps" / "square_gradcam.png").is_file()
