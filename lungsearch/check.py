"""`lungsearch data check DIR`: what is in a dataset folder and whether its parts leak into each other."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from . import data


def image_info(path) -> str | None:
    """'WxH channels depth' of a readable image, None if it is unreadable or truncated."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or not data.is_complete(raw, path.suffix.lower()):
        return None
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    channels = 1 if image.ndim == 2 else image.shape[2]
    return f"{image.shape[1]}x{image.shape[0]} {channels}ch {image.dtype.itemsize * 8}bit"


def check_dataset(data_dir: str) -> tuple[str, bool]:
    """A printable report and False when an image or a patient is shared between train/val and test."""
    ds = data.scan(data_dir)
    with ThreadPoolExecutor() as pool:
        infos = list(pool.map(lambda f: image_info(ds.root / f), ds.files))
    lines = [f"dataset {ds.root} (fingerprint {ds.fingerprint})", ""]
    lines.append(f"{'part':<6} {'NORMAL':>7} {'PNEUMONIA':>10} {'patients':>9}")
    parts = [p for p in data.PARTS if (ds.parts == p).any()]
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
    lines.append(f"unreadable or truncated images: {len(unreadable)}" + "".join(f"\n  {f}" for f in unreadable))
    lines.append(f"non-image files ignored: {len(ds.ignored)}" + "".join(f"\n  {f}" for f in ds.ignored[:20]))
    lines.append(f"file names with no patient key (one patient each): {ds.unknown_patients}")

    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(ds.hashes):
        by_hash.setdefault(h, []).append(i)
    duplicates = [idx for idx in by_hash.values() if len(idx) > 1]
    lines.append(f"identical images (same content): {len(duplicates)} group(s)"
                 + "".join("\n  " + " = ".join(ds.files[i] for i in idx) for idx in duplicates[:20]))
    fit_parts = {"train", "val"}
    leaked_images = [idx for idx in duplicates
                     if {ds.parts[i] for i in idx} & fit_parts and "test" in {ds.parts[i] for i in idx}]
    split = {p: np.flatnonzero(ds.parts == p) for p in parts}
    shared = data.shared_patients(ds, split)
    leaked_patients = sorted(p for p in shared if any(ds.patients[i] == p for i in split.get("test", [])))
    lines.append(f"patient keys in more than one part: {len(shared)}"
                 + (f" ({', '.join(sorted(shared)[:10])}{' ...' if len(shared) > 10 else ''})" if shared else ""))
    ok = not leaked_images and not leaked_patients
    lines.append("")
    if ok:
        lines.append("OK: no image and no patient shared between train/val and test")
    else:
        lines.append(f"LEAKAGE: {len(leaked_images)} image(s) and {len(leaked_patients)} patient(s) shared "
                     "between train/val and test")
    return "\n".join(lines), ok
