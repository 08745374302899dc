"""The on-disk cache of decoded images (LUNGSEARCH_CACHE), and the checks that a folder can be written into
(the cache folder, `run --results`, `data prepare`'s DEST) before any work is done.

A cache entry is an array FINGERPRINT-SIZE[-METHOD].npy with its metadata .json beside it, both written to
temporary files and renamed into place, so concurrent trials read either the whole entry or none; a damaged
entry is decoded afresh with a warning. `data.load_images` is the function that reads a dataset through it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .config import UserError, shown
from .sizes import check_decode

CACHE_HINT = ("set LUNGSEARCH_CACHE to a folder you can write to (default ~/.cache/lungsearch), or make this one "
              "writable")
RESULTS_HINT = "pass --results with a folder you can write to (it is created if missing)"


def writable_folder(path: str | Path, what: str, hint: str) -> Path:
    """`path` (expanded, absolute) if it is a folder this process can write into, or one it can create (a folder
    is made and removed in it, or in the nearest existing folder above it, to be sure); else UserError naming
    `what` (the flag or variable), the path and `hint` (what to do)."""
    path = Path(path).expanduser().absolute()

    def refuse(why: str) -> UserError:
        return UserError(f"{what} {shown(path)} {why}: {hint}")

    try:
        if path.exists() and not path.is_dir():
            raise refuse("is a file, not a folder")
        if path.is_symlink() and not path.exists():
            raise refuse("is a broken symbolic link")
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise refuse(f"cannot be created: {shown(existing)} is a file, not a folder")
    except OSError as err:  # e.g. a parent folder that cannot be searched
        raise refuse(f"cannot be reached ({err.strerror or err})") from err
    if not os.access(existing, os.W_OK | os.X_OK):
        raise refuse("is not writable" if existing == path
                     else f"cannot be created: {shown(existing)} is not writable")
    try:  # the permission bits can say yes where the file system says no (/proc, a read-only mount as root)
        os.rmdir(tempfile.mkdtemp(prefix=".lungsearch-probe-", dir=existing))
    except OSError as err:
        why = f"nothing can be made in {shown(existing)} ({err.strerror or err})"
        raise refuse(f"is not writable: {why}" if existing == path else f"cannot be created: {why}") from None
    return path


def check_results_folder(results_dir: str | Path) -> Path:
    """Fail before any work when `run --results` is not a folder the run can be written into."""
    return writable_folder(results_dir, "--results folder", RESULTS_HINT)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LUNGSEARCH_CACHE") or Path.home() / ".cache" / "lungsearch").expanduser()


def file_sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def read_cache(npy: Path, meta: Path, files: list[str], image_size: int,
               log) -> tuple[np.ndarray, set[str]] | None:
    """The cached images of a dataset's `files` and the unreadable ones, or None when there is no cache entry or
    it is damaged (a warning through `log`; the caller decodes afresh): metadata that lists other files or lacks the
    array's byte size and checksum, an array whose size, checksum, shape or type is not the metadata's."""
    if not (npy.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        bad = set(info["unreadable"])
        if info["files"] != len(files) or not bad <= set(files):
            raise ValueError("its metadata lists other files than the dataset's")
        if npy.stat().st_size != info["npy_bytes"]:
            raise ValueError(f"{npy.stat().st_size} bytes instead of {info['npy_bytes']}")
        if file_sha1(npy) != info["npy_sha1"]:
            raise ValueError("its checksum does not match")
        images = np.load(npy, mmap_mode="r")
        expected = (len(files) - len(bad), image_size, image_size)
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"array of {images.shape} {images.dtype} instead of {expected} uint8")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
        log(f"warning: the cached images {shown(npy)} are damaged ({type(err).__name__}: {shown(err)}); "
            f"decoding them afresh")
        return None
    return images, bad


def write_cache(stem: Path, images: np.ndarray, files: list[str], bad: set[str]) -> None:
    """The array, then its metadata (with byte size and checksum), each written to a temporary file and
    renamed into place: trials may read the cache concurrently."""
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    token = f"{os.getpid()}.{os.urandom(4).hex()}"
    tmp_npy, tmp_meta = stem.with_name(f"{stem.name}.{token}.tmp.npy"), stem.with_name(f"{stem.name}.{token}.tmp.json")
    try:
        np.save(tmp_npy, images)
        info = {"files": len(files), "unreadable": sorted(bad), "shape": list(images.shape),
                "dtype": str(images.dtype), "npy_bytes": tmp_npy.stat().st_size, "npy_sha1": file_sha1(tmp_npy)}
        tmp_meta.write_text(json.dumps(info))
        os.replace(tmp_npy, npy)
        os.replace(tmp_meta, meta)
    except OSError as err:
        for tmp in (tmp_npy, tmp_meta):
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write the image cache {shown(npy)} (LUNGSEARCH_CACHE): {err.strerror or err}; "
                        f"{CACHE_HINT}") from err


def cached_images(folder: Path, fingerprint: str, files: list[str], image_size: int, method: str,
                  decode: Callable[[], list[np.ndarray | None]], log) -> tuple[np.ndarray, set[str]]:
    """The images of a dataset's `files` (uint8, N x size x size, the unreadable ones left out) and the
    unreadable files, from the cache entry of this fingerprint, size and decode-time normalisation `method`.

    Without a sound entry, `folder` must be writable and the decoded images must fit its disk and the memory
    (UserError otherwise, before anything is decoded);
    `decode()` then gives each file's image, or None for an unreadable one, in the order of `files`, and the
    result is written to the cache.
    """
    stem = folder / (f"{fingerprint}-{image_size}" + ("" if method == "none" else f"-{method}"))
    cached = read_cache(stem.with_suffix(".npy"), stem.with_suffix(".json"), files, image_size, log)
    if cached is not None:
        return cached
    writable_folder(folder, "the image cache folder (LUNGSEARCH_CACHE)", CACHE_HINT)  # before decoding
    check_decode(folder, len(files), image_size)
    decoded = decode()
    bad = {f for f, img in zip(files, decoded) if img is None}
    images = np.stack([img for img in decoded if img is not None])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"the image cache folder (LUNGSEARCH_CACHE) {shown(folder)} cannot be created "
                        f"({err.strerror or err}): {CACHE_HINT}") from err
    write_cache(stem, images, files, bad)
    return images, bad
