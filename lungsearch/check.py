"""`lungsearch data check DIR`: what is in a dataset folder and whether its parts leak into each other."""
from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from . import data

INFECTION = re.compile(r"_(bacteria|virus)_")  # person1_bacteria_1.jpeg, person1_virus_6.jpeg


def image_info(path) -> str | None:
    """'WxH channels depth' of a readable image, None if it is unreadable, truncated or too large to decode."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or not data.is_complete(raw, path.suffix.lower()):
        return None
    image = data.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    channels = 1 if image.ndim == 2 else image.shape[2]
    return f"{image.shape[1]}x{image.shape[0]} {channels}ch {image.dtype.itemsize * 8}bit"


def check_dataset(data_dir: str) -> tuple[str, bool]:
    """A printable report, and False when an identical image is in train/val and in test, or when a part
    folder has no readable image of a class (nothing can be trained or scored on it).

    Patient keys shared without a shared image only warn: the official Kermany test folder renumbers
    `personN` keys, so a shared key there is not evidence of the same child (nor is its absence proof).
    File names that are not valid UTF-8 are shown with their odd bytes as \\xNN escapes.
    """
    ds = data.scan(data_dir)
    with ThreadPoolExecutor() as pool:
        infos = list(pool.map(lambda f: image_info(ds.root / f), ds.files))
    lines = [f"dataset {data.shown(ds.root)} (fingerprint {ds.fingerprint})", ""]
    lines.append(f"{'part':<6} {'NORMAL':>7} {'PNEUMONIA':>10} {'patients':>9}")
    folders = data.dataset_parts(ds.root)
    parts = [p for p in data.PARTS if (ds.parts == p).any() or p in folders]
    for part in parts:
        idx = np.flatnonzero(ds.parts == part)
        counts = Counter(int(ds.labels[i]) for i in idx)
        lines.append(f"{part:<6} {counts[0]:>7} {counts[1]:>10} {len({ds.patients[i] for i in idx}):>9}")
    sizes = Counter(i.split(" ", 1)[0] for i in infos if i)
    kinds = Counter(i.split(" ", 1)[1] for i in infos if i)
    lines += ["", f"image sizes: {len(sizes)} distinct; most common: "
              + ", ".join(f"{s} ({n})" for s, n in sizes.most_common(5)),
              "image kinds: " + ", ".join(f"{k} ({n})" for k, n in kinds.most_common())]
    unreadable = [f for f, i in zip(ds.files, infos) if i is None]
    lines.append(f"unreadable, truncated or too large images: {len(unreadable)}"
                 + "".join(f"\n  {data.shown(f)}" for f in unreadable))
    lines.append(f"non-image files ignored: {len(ds.ignored)}"
                 + "".join(f"\n  {data.shown(f)}" for f in ds.ignored[:20]))
    lines.append(f"file names with no patient key (one patient each): {ds.unknown_patients}")

    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(ds.hashes):
        if infos[i] is not None:  # unreadable files (empty ones are all alike) are no image to share
            by_hash.setdefault(h, []).append(i)
    duplicates = [idx for idx in by_hash.values() if len(idx) > 1]
    lines.append(f"identical images (same content): {len(duplicates)} group(s)"
                 + "".join("\n  " + " = ".join(data.shown(ds.files[i]) for i in idx) for idx in duplicates[:20]))
    fit_parts = {"train", "val"}
    leaked_images = [idx for idx in duplicates
                     if {ds.parts[i] for i in idx} & fit_parts and "test" in {ds.parts[i] for i in idx}]
    split = {p: np.flatnonzero(ds.parts == p) for p in parts}
    shared = data.shared_patients(ds, split)
    lines.append(f"patient keys in more than one part: {len(shared)}"
                 + (f" ({', '.join(sorted(shared)[:10])}{' ...' if len(shared) > 10 else ''})" if shared else ""))
    # infection kinds (bacteria/virus) each shared key names on the train/val side and on the test side
    infections: dict[str, tuple[set, set]] = {p: (set(), set()) for p in shared}
    for i, key in enumerate(ds.patients):
        if key in infections:
            side = infections[key][1 if ds.parts[i] == "test" else 0]
            side.update(INFECTION.findall(Path(ds.files[i]).name.lower()))
    leaked_keys = sorted(shared & {ds.patients[i] for i in split.get("test", [])})
    empty = data.empty_classes(ds, np.array([i is not None for i in infos], dtype=bool))
    ok = not leaked_images and not empty
    lines.append("")
    if leaked_images:
        lines.append(f"LEAKAGE: {len(leaked_images)} image(s) identical between train/val and test "
                     f"({len(leaked_keys)} patient key(s) in both)")
    elif leaked_keys:
        renamed = sum(bool(fit and test and not fit & test) for fit, test in (infections[p] for p in leaked_keys))
        lines.append(f"warning: {len(leaked_keys)} patient key(s) appear in both train/val and test "
                     f"({', '.join(leaked_keys[:5])}{', ...' if len(leaked_keys) > 5 else ''}), but no image is "
                     f"identical between them, and {renamed} of them name a different infection (bacteria/virus) "
                     "on each side: the test folder likely renumbers patients, so keys cannot tell whether a "
                     "child is on both sides")
        lines.append("OK: no image shared between train/val and test")
    else:
        lines.append("OK: no image and no patient key shared between train/val and test")
    if empty:
        lines.append(f"ERROR: {data.empty_class_message(empty)}")
    return "\n".join(lines), ok
