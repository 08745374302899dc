"""Tiny synthetic chest X-ray folders: real image files on disk, in the layout users download."""
from __future__ import annotations

import os
import shutil
import signal
import struct
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def xray(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A greyscale picture a small CNN can tell apart: 'pneumonia' has a bright blob in one lung."""
    img = rng.normal(70, 12, (size, size))
    img[:, size // 2 - 2: size // 2 + 2] += 60  # spine
    if label:
        cy, cx = rng.integers(size // 4, 3 * size // 4), rng.choice([size // 4, 3 * size // 4])
        yy, xx = np.mgrid[:size, :size]
        img += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, img: np.ndarray, kind: str) -> None:
    """Write greyscale `img` as a JPEG/PNG of the given kind: grey, rgb, rgba or 16-bit."""
    if kind == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif kind == "rgba":
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif kind == "16bit":
        img = img.astype(np.uint16) * 257
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path


def make_dataset(root: Path, parts: dict[str, int], class_names=("NORMAL", "PNEUMONIA"), seed: int = 0,
                 images_per_patient: int = 2) -> Path:
    """A dataset folder: for each part, `n` patients per class, each with a few images in varied formats."""
    rng = np.random.default_rng(seed)
    kinds = ["grey", "rgb", "rgba", "16bit"]
    counter = 0
    for part, patients in parts.items():
        for label, cname in enumerate(class_names):
            for p in range(patients):
                counter += 1
                for k in range(images_per_patient):
                    if label:
                        name = f"person{counter}_bacteria_{counter * 10 + k}"
                    else:
                        name = f"IM-{counter:04d}-{k + 1:04d}"
                    kind = kinds[(counter + k) % 4]
                    suffix = ".png" if kind in ("rgba", "16bit") else (".jpeg" if k % 2 else ".jpg")
                    write_image(root / part / cname / f"{name}{suffix}", xray(label, rng), kind)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """train/ and test/ with upper-case class folders, 12 patients per class in train and 4 in test."""
    return make_dataset(tmp_path / "xrays", {"train": 12, "test": 4})


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("LUNGSEARCH_CACHE", str(path))
    return path


def huge_png(path: Path, width: int = 40000, height: int = 30000) -> Path:
    """A PNG file that says it is width x height (above OpenCV's pixel limit by default), a few bytes long: its
    one row of pixel data is enough, as OpenCV refuses it on the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def copy_into(src: Path, dst_dir: Path, name: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dst_dir / name))


def real_data() -> Path | None:
    value = os.environ.get("LUNGSEARCH_DATA")
    return Path(value) if value and Path(value).is_dir() else None


def processes_marked(tag: str) -> list[int]:
    """PIDs of other processes whose command line or environment holds `tag` (read from /proc)."""
    own, found = {os.getpid(), os.getppid()}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            if any(tag.encode() in (entry / f).read_bytes() for f in ("cmdline", "environ")):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            pass
    return found


@pytest.fixture(scope="session", autouse=True)
def ray_processes_stopped():
    """Every Ray process the tests start (local instances, `ray start` nodes, their agents) inherits one short
    RAY_TMPDIR. At the end, whatever of them is still alive is stopped: a driver killed on purpose by the
    resume tests leaves Ray's agents behind, and the suite must leave no process behind."""
    tag = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")  # short: Ray's socket paths live under it
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tag
    yield tag
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_marked(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while processes_marked(tag) and time.time() < deadline:
            time.sleep(0.2)
    if saved is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = saved
    shutil.rmtree(tag, ignore_errors=True)
