"""Read a chest X-ray folder, decode it once into a cached array, and split it into train/val/test parts."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .config import UserError

CLASSES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
PARTS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
LAYOUT = (
    "expected a folder with train/ (and optionally val/ and test/) inside, each holding NORMAL/ and "
    "PNEUMONIA/ folders of .jpeg/.jpg/.png images (folder names in any case), as in the Kermany chest "
    "X-ray download"
)
PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1000_bacteria_2931.jpeg
    re.compile(r"^(NORMAL\d*-IM-\d+)-", re.IGNORECASE),  # NORMAL2-IM-0381-0001.jpeg
    re.compile(r"^(IM-\d+)-", re.IGNORECASE),  # IM-0115-0001.jpeg
)


@dataclass
class Dataset:
    """The readable images of a dataset folder, in a fixed order, with what was left out and why."""

    root: Path
    files: list[str]  # paths relative to root
    labels: np.ndarray  # 0 NORMAL, 1 PNEUMONIA
    parts: np.ndarray  # the folder each image came from: train, val or test
    patients: list[str]
    hashes: list[str]  # sha1 of the file bytes
    fingerprint: str
    unreadable: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def unknown_patients(self) -> int:
        return sum(p.startswith("file:") for p in self.patients)


def patient_key(file_name: str, rel_path: str) -> str:
    """The patient a file belongs to, from its name; an unrecognised name is a patient of its own."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return match.group(1).upper()
    return "file:" + rel_path


def find_children(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Sub-folders of `folder` whose names match `names` in any case, keyed by the canonical name."""
    wanted = {n.lower(): n for n in names}
    found = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            found[wanted[child.name.lower()]] = child
    return found


def dataset_parts(root: Path) -> dict[str, Path]:
    """The part folders of a dataset; a folder with class folders directly inside is one 'train' part."""
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist or is not a folder: {LAYOUT}")
    parts = find_children(root, PARTS)
    if not parts and find_children(root, CLASSES):
        return {"train": root}
    if "train" not in parts:
        raise UserError(f"no train/ folder in {root}: {LAYOUT}")
    return parts


def is_complete(raw: np.ndarray, suffix: str) -> bool:
    """False for a file cut short: a JPEG without its end marker, a PNG without its IEND chunk."""
    data = raw.tobytes()
    if suffix == ".png":
        return data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data[-64:]
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" in data[-4096:]


def read_image(path: Path, size: int | None) -> np.ndarray | None:
    """Decode one image as 8-bit greyscale (resized to size x size when size is given); None if unreadable."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or not is_complete(raw, path.suffix.lower()):
        return None
    image = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        return None
    if size is not None:
        image = cv2.resize(image, (size, size))  # OpenCV's default bilinear, as the report
    return image


def scan(data_dir: str | Path) -> Dataset:
    """List every image of a dataset folder with its part, label, patient and content hash."""
    root = Path(data_dir).expanduser().resolve()
    records, ignored = [], []
    for part, part_dir in dataset_parts(root).items():
        class_dirs = find_children(part_dir, CLASSES)
        missing = [c for c in CLASSES if c not in class_dirs]
        if missing:
            raise UserError(f"{part_dir} has no {'/ or '.join(missing)}/ folder: {LAYOUT}")
        for label, name in enumerate(CLASSES):
            for path in sorted(class_dirs[name].rglob("*")):
                if not path.is_file():
                    continue
                rel = str(path.relative_to(root))
                if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    ignored.append(rel)
                    continue
                records.append((rel, label, part, patient_key(path.name, rel)))
    if not records:
        raise UserError(f"no images found in {root}: {LAYOUT}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = list(pool.map(lambda r: hashlib.sha1((root / r[0]).read_bytes()).hexdigest(), records))
    digest = hashlib.sha256("\n".join(f"{r[0]} {h}" for r, h in zip(records, hashes)).encode()).hexdigest()
    return Dataset(
        root=root,
        files=[r[0] for r in records],
        labels=np.array([r[1] for r in records], dtype=np.int64),
        parts=np.array([r[2] for r in records]),
        patients=[r[3] for r in records],
        hashes=hashes,
        fingerprint=digest[:16],
        ignored=ignored,
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("LUNGSEARCH_CACHE", Path.home() / ".cache" / "lungsearch")).expanduser()


def load(data_dir: str | Path, image_size: int, cache_dir: str | Path | None = None,
         log=print) -> tuple[Dataset, np.ndarray]:
    """Scan a dataset and return it with its images (uint8, N x size x size), decoded once and cached on disk.

    The cache is keyed by the dataset fingerprint (file names and contents) and the image size, so a
    changed file or size decodes afresh. Unreadable images are dropped from the dataset and listed in
    `Dataset.unreadable`.
    """
    ds = scan(data_dir)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    stem = cache / f"{ds.fingerprint}-{image_size}"
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if npy.exists() and meta.exists():
        bad = set(json.loads(meta.read_text())["unreadable"])
        images = np.load(npy, mmap_mode="r")
    else:
        log(f"decoding {len(ds.files)} images of {ds.root} at {image_size}x{image_size} (once; cached in {cache})")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            decoded = list(pool.map(lambda f: read_image(ds.root / f, image_size), ds.files))
        bad = {f for f, img in zip(ds.files, decoded) if img is None}
        images = np.stack([img for img in decoded if img is not None])
        cache.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(f"{stem.name}.{os.getpid()}.tmp.npy")  # write then rename: trials may read concurrently
        np.save(tmp, images)
        os.replace(tmp, npy)
        meta.write_text(json.dumps({"files": len(ds.files), "unreadable": sorted(bad)}))
    if bad:
        keep = np.array([f not in bad for f in ds.files])
        ds = Dataset(ds.root, [f for f, k in zip(ds.files, keep) if k], ds.labels[keep], ds.parts[keep],
                     [p for p, k in zip(ds.patients, keep) if k], [h for h, k in zip(ds.hashes, keep) if k],
                     ds.fingerprint, sorted(bad), ds.ignored)
        log(f"warning: skipped {len(bad)} unreadable image(s): {', '.join(sorted(bad)[:10])}"
            + (" ..." if len(bad) > 10 else ""))
    return ds, images


def stratified_pick(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask choosing about `fraction` of each class at random."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        mask[idx[: int(round(fraction * len(idx)))]] = True
    return mask


def grouped_pick(labels: np.ndarray, groups: list[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask choosing whole groups (patients), about `fraction` of the images of each class."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keys = sorted(g for g, idx in members.items() if round(labels[idx].mean()) == c)
        rng.shuffle(keys)
        target, taken = fraction * int((labels == c).sum()), 0
        for g in keys:
            if taken >= target:
                break
            mask[members[g]] = True
            taken += len(members[g])
    return mask


def make_split(ds: Dataset, protocol: str, seed: int = 0, data_limit: int = 0) -> dict[str, np.ndarray]:
    """Indices of the train, val and test parts under a split protocol.

    report:  every image pooled, stratified random 80:20; the 20% is test; val is 10% of the 80%.
    patient: the dataset's own test/ if it has one, else 20% of patients; val is 12% of the remaining
             patients. Patient-grouped and stratified; no patient in two parts.
    data_limit > 0 keeps a stratified random subset: that many training images, a quarter as many for
    val and test (smoke runs).
    """
    rng = np.random.default_rng(seed)
    all_idx = np.arange(len(ds.files))
    labels = ds.labels
    if protocol == "report":
        test = stratified_pick(labels, 0.2, rng)
        rest = all_idx[~test]
        val_in_rest = stratified_pick(labels[rest], 0.1, rng)
        split = {"train": rest[~val_in_rest], "val": rest[val_in_rest], "test": all_idx[test]}
    elif protocol == "patient":
        if (ds.parts == "test").any():
            test = ds.parts == "test"
        else:
            test = grouped_pick(labels, ds.patients, 0.2, rng)
        rest = all_idx[~test]
        val_in_rest = grouped_pick(labels[rest], [ds.patients[i] for i in rest], 0.12, rng)
        split = {"train": rest[~val_in_rest], "val": rest[val_in_rest], "test": all_idx[test]}
        shared = shared_patients(ds, split)
        if shared:  # only possible when the dataset's own test/ shares patients with train/ or val/
            print(f"warning: {len(shared)} patient(s) appear in two parts: {', '.join(sorted(shared)[:5])}",
                  file=sys.stderr)
    else:
        raise UserError(f"--split must be 'patient' or 'report', got {protocol!r}")
    if data_limit:
        limits = {"train": data_limit, "val": max(data_limit // 4, 8), "test": max(data_limit // 4, 8)}
        for part, idx in split.items():
            if len(idx) > limits[part]:
                keep = stratified_pick(labels[idx], limits[part] / len(idx), rng)
                split[part] = idx[keep]
    for part in split:
        if len(split[part]) == 0:
            raise UserError(f"the {protocol} split left the {part} part empty: the dataset is too small "
                            f"({len(ds.files)} readable images)")
    return {k: np.sort(v) for k, v in split.items()}


def shared_patients(ds: Dataset, split: dict[str, np.ndarray]) -> set[str]:
    """Patient keys (real ones, not per-file keys) found in more than one part."""
    seen: dict[str, set[str]] = {}
    for part, idx in split.items():
        for i in idx:
            if not ds.patients[i].startswith("file:"):
                seen.setdefault(ds.patients[i], set()).add(part)
    return {p for p, parts in seen.items() if len(parts) > 1}


def shared_images(ds: Dataset, split: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """Pairs of files with the same content in two different parts (leakage)."""
    first: dict[str, tuple[str, str]] = {}
    pairs = []
    for part, idx in split.items():
        for i in idx:
            h = ds.hashes[i]
            if h in first and first[h][0] != part:
                pairs.append((first[h][1], ds.files[i]))
            first.setdefault(h, (part, ds.files[i]))
    return pairs


def split_summary(ds: Dataset, split: dict[str, np.ndarray], protocol: str) -> dict:
    """Counts per part and class, patients per part, and leakage checks, for the manifest and the log."""
    parts = {}
    for part, idx in split.items():
        counts = Counter(int(x) for x in ds.labels[idx])
        parts[part] = {"images": int(len(idx)), "NORMAL": counts[0], "PNEUMONIA": counts[1],
                       "patients": len({ds.patients[i] for i in idx})}
    return {
        "protocol": protocol,
        "parts": parts,
        "unknown_patient_keys": ds.unknown_patients,
        "patients_in_two_parts": sorted(shared_patients(ds, split)),
        "images_in_two_parts": shared_images(ds, split),
    }


def arrays(images: np.ndarray, ds: Dataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the given indices: float32 in [0, 1], N x size x size x 1, and float32 labels N x 1."""
    x = np.asarray(images[idx], dtype=np.float32)[..., None] / 255.0
    y = ds.labels[idx].astype(np.float32)[:, None]
    return x, y
