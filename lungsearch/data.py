"""Read a chest X-ray folder, decode it once into a cached array, and split it into train/val/test parts.

`load` is the way in: `scan` lists the images, `read_image` decodes one, cache.py keeps the decoded array on
disk, and `make_split` (with the protocols it names) splits the dataset into parts.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .cache import cached_images, default_cache_dir
from .cache import check_results_folder  # noqa: F401  data.check_results_folder, as run calls it
from .config import DECODE_TIME_NORMALIZATIONS, NORMALIZATIONS, UserError, shown

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

    def without(self, unreadable: set[str]) -> Dataset:
        """This dataset less the `unreadable` files, which it lists as such."""
        keep = np.array([f not in unreadable for f in self.files], dtype=bool)
        return Dataset(self.root, [f for f, k in zip(self.files, keep) if k], self.labels[keep], self.parts[keep],
                       [p for p, k in zip(self.patients, keep) if k], [h for h, k in zip(self.hashes, keep) if k],
                       self.fingerprint, sorted(unreadable), self.ignored)


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


def imdecode(raw: np.ndarray, flags: int) -> np.ndarray | None:
    """cv2.imdecode, with None for every file OpenCV cannot decode: one above its pixel limit
    (CV_IO_MAX_IMAGE_PIXELS, 2**30 pixels) raises where a damaged file returns None."""
    try:
        return cv2.imdecode(raw, flags)
    except cv2.error:
        return None


def decode_method(normalize: str) -> str:
    """The normalisation applied when decoding: equalize or clahe; none for none and standardize (a model layer)."""
    if normalize in DECODE_TIME_NORMALIZATIONS:
        return normalize
    if normalize in NORMALIZATIONS:
        return "none"
    raise UserError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")


def read_image(path: Path, size: int | None, normalize: str = "none") -> np.ndarray | None:
    """Decode one image as 8-bit greyscale (resized to size x size when size is given); None if unreadable
    (damaged, truncated, or too large for OpenCV).

    normalize "equalize" (histogram equalisation) or "clahe" (CLAHE, clip limit 2, 8 x 8 tiles) is applied
    to the full-size image before resizing; "none" and "standardize" decode as is.
    """
    method = decode_method(normalize)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or not is_complete(raw, path.suffix.lower()):
        return None
    image = imdecode(raw, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        return None
    if method == "equalize":
        image = cv2.equalizeHist(image)
    elif method == "clahe":
        image = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image)
    if size is not None:
        image = cv2.resize(image, (size, size))  # OpenCV's default bilinear, as the report
    return image


def scan(data_dir: str | Path) -> Dataset:
    """List every image of a dataset folder with its part, label, patient and content hash.

    A file name that is not valid UTF-8 is kept as Python keeps it (undecodable bytes as surrogates), so
    the file is read as any other; its bytes go into the fingerprint, and `shown` makes it printable.
    """
    root = Path(data_dir).expanduser().resolve()
    records, ignored = [], []
    for part, part_dir in dataset_parts(root).items():
        class_dirs = find_children(part_dir, CLASSES)
        missing = [c for c in CLASSES if c not in class_dirs]
        if missing:
            raise UserError(f"{shown(part_dir)} has no {'/ or '.join(missing)}/ folder: {LAYOUT}")
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
        raise UserError(f"no images found in {shown(root)}: {LAYOUT}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = list(pool.map(lambda r: hashlib.sha1((root / r[0]).read_bytes()).hexdigest(), records))
    # the names' own bytes (the same as UTF-8 for every valid name, so fingerprints do not change)
    listing = "\n".join(f"{r[0]} {h}" for r, h in zip(records, hashes)).encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(listing).hexdigest()
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


def empty_classes(ds: Dataset, readable: np.ndarray | None = None) -> list[tuple[str, str, Path]]:
    """(part, class, folder) of each class folder, in each part folder of the dataset, that holds no image
    (no readable one, where `readable` marks which of `ds.files` can be read)."""
    readable = np.ones(len(ds.files), dtype=bool) if readable is None else np.asarray(readable, dtype=bool)
    empty = []
    folders = dataset_parts(ds.root)
    for part in [p for p in PARTS if p in folders]:
        class_dirs = find_children(folders[part], CLASSES)
        for label, name in enumerate(CLASSES):
            if not ((ds.parts == part) & (ds.labels == label) & readable).any():
                empty.append((part, name, class_dirs.get(name, folders[part] / name)))
    return empty


def empty_class_message(empty: list[tuple[str, str, Path]]) -> str:
    """Why a dataset with an empty class folder cannot be trained on, and what to do."""
    names = ", ".join(f"{part}/{name} ({shown(folder)})" for part, name, folder in empty)
    optional = sorted({part for part, _, _ in empty if part != "train"})
    return (f"{names} {'has' if len(empty) == 1 else 'have'} no readable images: a classifier needs both classes, "
            f"NORMAL and PNEUMONIA, in every part of the dataset (train/, and val/ and test/ where present); add "
            f"images of the missing class" + (f", or remove the optional {'/, '.join(optional)}/ folder(s)"
                                              if optional else ""))


def require_both_classes(ds: Dataset, readable: np.ndarray | None = None) -> None:
    """Raise UserError when a part folder of the dataset has no (readable) image of a class."""
    empty = empty_classes(ds, readable)
    if empty:
        raise UserError(empty_class_message(empty))


def require_both_classes_in_parts(ds: Dataset, split: dict[str, np.ndarray], protocol: str) -> None:
    """Raise UserError when a part of a split holds no image of a class: nothing can be trained, stopped, chosen
    or scored on one class, as with a dataset folder that lacks one."""
    for part, idx in split.items():
        missing = [name for label, name in enumerate(CLASSES) if not (ds.labels[idx] == label).any()]
        if missing:
            counts = ", ".join(f"{int((ds.labels == label).sum())} {name}" for label, name in enumerate(CLASSES))
            source = split_sources(ds, protocol).get(part, "")
            raise UserError(f"the {protocol} split left its {part} part ({source}) with no "
                            f"{' and no '.join(missing)} image ({len(idx)} images in it): the dataset "
                            f"({len(ds.files)} readable images: {counts}) is too small for this split, and every "
                            f"part needs both classes. Add images of more patients of each class"
                            + ("" if protocol == "report" else
                               ", or use --split report (it splits images, not patients)"))


def load_images(data_dir: str | Path, image_size: int, cache_dir: str | Path | None = None,
                log=print, normalize: str = "none", dataset: Dataset | None = None) -> tuple[Dataset, np.ndarray]:
    """Scan a dataset and return it with its images (uint8, N x size x size), decoded once and cached on disk.

    The cache (see cache.py) is keyed by the dataset fingerprint (file names and contents), the image size and
    the decode-time normalisation (see read_image), so a changed file, size or normalisation decodes afresh;
    a damaged cache entry (truncated, or not matching its recorded size and checksum) is decoded afresh
    with a warning. Unreadable images are dropped from the dataset and listed in `Dataset.unreadable`.
    Every part folder must keep readable images of both classes (UserError otherwise), and the cache
    folder must be a folder that can be written when something is to be decoded (UserError otherwise).
    `dataset`: the folder's `scan`, when the caller has it already (a search's trials get the driver's).
    """
    method = decode_method(normalize)
    ds = dataset if dataset is not None else scan(data_dir)
    require_both_classes(ds)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    def decode() -> list[np.ndarray | None]:
        how = "" if method == "none" else f" with {method}"
        log(f"decoding {len(ds.files)} images of {shown(ds.root)} at {image_size}x{image_size}{how} "
            f"(once; cached in {shown(folder)})")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            decoded = list(pool.map(lambda f: read_image(ds.root / f, image_size, method), ds.files))
        require_both_classes(ds, np.array([img is not None for img in decoded], dtype=bool))
        return decoded

    images, bad = cached_images(folder, ds.fingerprint, ds.files, image_size, method, decode, log)
    if bad:
        ds = ds.without(bad)
        log(f"warning: skipped {len(bad)} unreadable (damaged, truncated or too large) image(s): "
            f"{', '.join(shown(f) for f in sorted(bad)[:10])}"
            + (" ..." if len(bad) > 10 else ""))
    require_both_classes(ds)  # again without the unreadable images
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


OWN_VAL_MIN = 200  # a dataset's own val/ folder is used as such from this many images (both classes) up
HOLDOUT_FRACTION = 0.10  # target split: share of train/ patients kept as the in-distribution holdout


def own_val_usable(ds: Dataset) -> bool:
    """True when the dataset's own val/ folder is big enough to validate on (Kermany's has 16 images)."""
    val = ds.parts == "val"
    return int(val.sum()) >= OWN_VAL_MIN and len(set(ds.labels[val].tolist())) == 2


def resolve_split(ds: Dataset, protocol: str) -> str:
    """'auto' becomes 'target' for a dataset with its own test/ folder, else 'patient'."""
    if protocol != "auto":
        return protocol
    return "target" if (ds.parts == "test").any() else "patient"


def split_sources(ds: Dataset, protocol: str) -> dict[str, str]:
    """Where each part of a split comes from, in words, for the manifest and the report."""
    has_test, own_val = bool((ds.parts == "test").any()), own_val_usable(ds)
    val_folder = "the dataset's own val/ folder"
    pooled = "train/" + (" and val/ (too small to validate on)" if (ds.parts == "val").any() and not own_val else "")
    if protocol == "report":
        return {"train": "every image pooled, 72%", "val": "every image pooled, 8%", "test": "every image pooled, 20%"}
    if protocol == "target":
        return {"train": "train/" if own_val else f"{pooled} less the holdout",
                "holdout": val_folder if own_val else f"{100 * HOLDOUT_FRACTION:.0f}% of the patients of {pooled}"
                                                      " (in-distribution)",
                "val": "half of the dataset's own test/ patients (target distribution)",
                "test": "the other half of test/ patients (target distribution)"}
    return {"train": "train/" if own_val else f"{pooled} less validation",
            "val": val_folder if own_val else f"12% of the patients of {pooled}",
            "test": "the dataset's own test/ folder" if has_test else f"20% of the patients of {pooled}"}


def make_split(ds: Dataset, protocol: str, seed: int = 0, data_limit: int = 0) -> dict[str, np.ndarray]:
    """Indices of the parts (train, val, test; the target split adds holdout) under a split protocol.

    report:  every image pooled, stratified random 80:20; the 20% is test; val is 10% of the 80%.
    patient: the dataset's own test/ if it has one, else 20% of patients; val is the dataset's own val/
             when it has at least OWN_VAL_MIN images, else 12% of the remaining patients.
    target:  validate on the target distribution: the dataset's own test/ is halved by patient, stratified
             by class, into val and test; train/ (with a small val/) is the training data, less an
             in-distribution holdout of 10% of its patients (or the own val/ when big enough) that is
             only reported, never selected on.
    Patient-grouped protocols keep each patient key in one of the parts they carve. data_limit > 0 keeps
    a stratified random subset: that many training images, a quarter as many for the other parts (smoke runs).
    A part left without an image of a class is a UserError.
    """
    rng = np.random.default_rng(seed)
    all_idx = np.arange(len(ds.files))
    labels = ds.labels

    def grouped(idx: np.ndarray, fraction: float) -> np.ndarray:
        return grouped_pick(labels[idx], [ds.patients[i] for i in idx], fraction, rng)

    if protocol == "report":
        test = stratified_pick(labels, 0.2, rng)
        rest = all_idx[~test]
        val_in_rest = stratified_pick(labels[rest], 0.1, rng)
        split = {"train": rest[~val_in_rest], "val": rest[val_in_rest], "test": all_idx[test]}
    elif protocol in ("patient", "target"):
        has_test = (ds.parts == "test").any()
        if protocol == "target" and not has_test:
            raise UserError(f"--split target validates on the dataset's own test/ folder, and {ds.root} has none: "
                            f"add the official test/ folder, or use --split patient (patient-grouped, validation "
                            f"from train/) or --split report (the source report's random 80:20 split)")
        own_val = own_val_usable(ds)
        fit = all_idx[(ds.parts != "test") & ~((ds.parts == "val") & own_val)]
        if protocol == "target":
            test_idx = all_idx[ds.parts == "test"]
            val_half = grouped(test_idx, 0.5)
            inside = all_idx[ds.parts == "val"] if own_val else fit[grouped(fit, HOLDOUT_FRACTION)]
            split = {"train": np.setdiff1d(fit, inside), "val": test_idx[val_half], "test": test_idx[~val_half],
                     "holdout": inside}
        else:
            test = all_idx[ds.parts == "test"] if has_test else fit[grouped(fit, 0.2)]
            rest = np.setdiff1d(fit, test)
            val = all_idx[ds.parts == "val"] if own_val else rest[grouped(rest, 0.12)]
            split = {"train": np.setdiff1d(rest, val), "val": val, "test": test}
    else:
        raise UserError(f"--split must be one of patient, report, target, got {protocol!r}")
    if data_limit:
        limits = {part: max(data_limit // 4, 8) for part in split}
        limits["train"] = data_limit
        for part, idx in split.items():
            if len(idx) > limits[part]:
                keep = stratified_pick(labels[idx], limits[part] / len(idx), rng)
                split[part] = idx[keep]
    require_both_classes_in_parts(ds, split, protocol)
    return {k: np.sort(v) for k, v in split.items()}


def training_share(ds: Dataset, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """About `fraction` of the training indices `train`, whole patients, stratified by class (multi-fidelity: a
    cheap trial trains on these). Drawn with the split's seed, so every trial of a search gets the same images;
    at least one patient of each class is kept."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the parts do not depend on the fraction
    keep = grouped_pick(ds.labels[train], [ds.patients[i] for i in train], fraction, rng)
    for c in (0, 1):
        if not (ds.labels[train[keep]] == c).any() and (ds.labels[train] == c).any():
            keep[np.flatnonzero(ds.labels[train] == c)[0]] = True
    return np.sort(train[keep])


def patient_folds(patients: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number (0 to k - 1) per image: whole patients, each class's patients dealt round-robin after a
    shuffle seeded by `seed`, so every fold holds both classes when each class has k patients or more."""
    patients, labels = np.asarray(patients, dtype=object), np.ravel(labels)
    fold = np.zeros(len(patients), dtype=int)
    rng = np.random.default_rng([seed, 2])  # a stream of its own, like training_share's
    for c in (0, 1):
        keys = sorted({p for p, y in zip(patients, labels) if y == c})
        rng.shuffle(keys)
        for j, key in enumerate(keys):
            fold[patients == key] = j % k
    return fold


SPLIT_FILE = "split.json"  # in the run folder: every part's files and content hashes, written once by the driver
SPLIT_FORMAT = 1


def split_record(ds: Dataset, split: dict[str, np.ndarray], protocol: str, split_seed: int,
                 shares: tuple[float, ...] = ()) -> dict:
    """What split.json holds: each part's files (relative to the data folder) with their sha1, and each training
    share (multi-fidelity) of the train part, so that trials, reports and checks use these very images rather
    than a split drawn again from the seed (NumPy promises the same stream only on the same build)."""
    def listed(idx: np.ndarray) -> list[list[str]]:
        return [[ds.files[i], ds.hashes[i]] for i in idx]

    return {"format_version": SPLIT_FORMAT, "protocol": protocol, "split_seed": split_seed,
            "fingerprint": ds.fingerprint, "parts": {part: listed(idx) for part, idx in split.items()},
            "train_shares": {repr(float(f)): listed(training_share(ds, split["train"], f, split_seed))
                             for f in shares if f < 1}}


def write_split(path: str | Path, record: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def listed_changes(listed: dict[str, str], ds: Dataset, prefix: str = "") -> tuple[list[str], list[str]]:
    """(changed, missing): of the files a split.json lists under `prefix` ({file: sha1}, names relative to the run's
    data folder), those `ds` holds with other content, and those it lacks. `ds` holds the run's data folder, or
    (`prefix`, e.g. "test/") the part of it whose files are `prefix` + its own names."""
    here = {prefix + f: h for f, h in zip(ds.files, ds.hashes)}
    mine = [(f, h) for f, h in listed.items() if f.startswith(prefix)]
    return sorted(f for f, h in mine if f in here and here[f] != h), sorted(f for f, _ in mine if f not in here)


def changes_text(changed: list[str], missing: list[str]) -> str:
    """The listed images that are not as the run found them, in words naming the first of each kind."""
    return "; ".join(f"{len(v)} {w} (e.g. {shown(v[0])})" for v, w in ((missing, "missing or unreadable"),
                                                                      (changed, "changed")) if v)


def indices_of(ds: Dataset, entries: list[list[str]], path: str | Path) -> np.ndarray:
    """The indices in `ds` of split.json's [file, sha1] entries; a file missing or changed since is a UserError
    naming it, never a silent rebuild."""
    changed, missing = listed_changes(dict(entries), ds)
    if missing or changed:
        raise UserError(f"{shown(path)} lists images of {shown(ds.root)} that are not as the run found them: "
                        f"{changes_text(changed, missing)}. The run's parts cannot be used as they were; point "
                        f"--data at the dataset the run used")
    index = {f: i for i, f in enumerate(ds.files)}
    return np.sort(np.array([index[f] for f, _ in entries], dtype=int))


def read_split_record(path: str | Path) -> dict:
    """split.json as written (split_record); one that cannot be read, or of a format newer than SPLIT_FORMAT, is a
    UserError. A split.json without format_version is format 1, the format that added the field."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the run's split {shown(path)} ({err}); it is written when the run starts") from None
    if not isinstance(record, dict) or not isinstance(record.get("parts"), dict):
        raise UserError(f"the run's split {shown(path)} lists no parts: not a split.json lungsearch wrote")
    found = record.get("format_version", 1)
    if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= SPLIT_FORMAT:
        raise UserError(f"the run's split {shown(path)} is format_version {found!r}, and this lungsearch reads format "
                        f"{SPLIT_FORMAT} at most: the run was made by a newer lungsearch; use that version to read it")
    return record


def split_changes(path: str | Path, ds: Dataset) -> str:
    """In words, the images split.json lists that `ds` (the run's data folder) holds with other content or lacks;
    "" when they are all as the run found them, or split.json cannot be read."""
    try:
        parts = read_split_record(path)["parts"]
    except UserError:
        return ""
    return changes_text(*listed_changes({f: h for entries in parts.values() for f, h in entries}, ds))


def read_split(path: str | Path, ds: Dataset, fraction: float = 1.0) -> dict[str, np.ndarray]:
    """The parts split.json lists, as indices of `ds` (the train part cut to its recorded `fraction` share)."""
    record = read_split_record(path)
    split = {part: indices_of(ds, entries, path) for part, entries in record["parts"].items()}
    if fraction < 1:
        share = record.get("train_shares", {}).get(repr(float(fraction)))
        split["train"] = (indices_of(ds, share, path) if share is not None
                          else training_share(ds, split["train"], fraction, int(record.get("split_seed", 0))))
    return split


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
        "sources": split_sources(ds, protocol),
        "unknown_patient_keys": ds.unknown_patients,
        "patients_in_two_parts": sorted(shared_patients(ds, split)),
        "images_in_two_parts": shared_images(ds, split),
    }


def arrays(images: np.ndarray, ds: Dataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the given indices: float32 in [0, 1], N x size x size x 1, and float32 labels N x 1."""
    x = np.asarray(images[idx], dtype=np.float32)[..., None] / 255.0
    y = ds.labels[idx].astype(np.float32)[:, None]
    return x, y
