"""(No Keras.) Whether a search fits this machine at its image size, estimated before any work: the decoded images
(their cache on disk, and memory while they are decoded), and a trial's float32 arrays and training state. A size
that cannot fit is refused with the estimate, rather than found out after the machine runs out of disk or memory.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import FIXED_POINTS, SMOKE, SearchSettings, TrialConfig, UserError, shown

GB = 1e9
HINT = f"use a smaller image size (--image-size; the report's is 150 px, --smoke's {SMOKE['image_size']})"


def available_memory() -> int | None:
    """Bytes of memory the machine can give without swapping (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_disk(folder: Path) -> int | None:
    """Free bytes on the file system that holds `folder` (or would: its nearest existing parent)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def blocks(cfg: TrialConfig) -> list[tuple[int, int]]:
    """(side in pixels, filters) of each conv block's output before pooling, as models.build lays them out."""
    side, out = cfg.image_size, []
    for i in range(cfg.conv_blocks):
        side -= 0 if cfg.residual or cfg.padding == "same" else cfg.kernel_size - 1
        out.append((max(side, 0), int(round(cfg.filters * cfg.filter_growth ** i))))
        side //= 2
    return out


def weights(cfg: TrialConfig) -> int:
    """How many weights the CNN of `cfg` has (models.build), from its layer shapes alone: no model is built."""
    total, channels, shape = 0, 1, blocks(cfg)
    for _, filters in shape:
        total += (cfg.kernel_size ** 2 * channels + 1) * filters + (4 * filters if cfg.batchnorm else 0)
        total += (channels + 1) * filters if cfg.residual else 0  # the 1x1 shortcut
        channels = filters
    last_side = shape[-1][0] // 2 if shape else cfg.image_size
    flat = last_side ** 2 * channels if cfg.head == "flatten" else channels
    dense = cfg.dense_units
    return total + (flat + 1) * dense + (4 * dense if cfg.batchnorm else 0) + dense + 1


def trial_bytes(cfg: TrialConfig, images: int) -> int:
    """A trial's memory, roughly: its images as float32, its weights four times over (weights, gradients, Adam's
    two moments) and a batch's conv outputs twice (forward and backward)."""
    activations = sum(side ** 2 * filters for side, filters in blocks(cfg)) * cfg.batch_size
    return 4 * (images * cfg.image_size ** 2 + 4 * weights(cfg) + 2 * activations)


def trial_images(settings: SearchSettings, images: int) -> int:
    """How many images a trial holds in memory: all, or the smoke subset (data_limit and a quarter as many for
    each of up to three other parts)."""
    if not settings.data_limit:
        return images
    return min(images, settings.data_limit + 3 * max(settings.data_limit // 4, 8))


def check_trial(settings: SearchSettings, images: int) -> None:
    """Refuse an image size at which a trial of the report's models (the fixed points, when the search runs them)
    would not fit this machine's available memory."""
    memory = available_memory()
    if memory is None or not settings.fixed_points:
        return
    held = trial_images(settings, images)
    need, name = max((trial_bytes(TrialConfig(**changes, image_size=settings.image_size), held), name)
                     for name, changes in FIXED_POINTS.items())
    cfg = TrialConfig(**FIXED_POINTS[name], image_size=settings.image_size)
    if need > memory:
        raise UserError(f"image size {settings.image_size} px (image_size) does not fit this machine: a trial of the "
                        f"report's {name} model needs about {need / GB:,.1f} GB of memory ({weights(cfg):,} weights, "
                        f"{held:,} images as float32), and {memory / GB:,.1f} GB is available; {HINT}")


def check_decode(folder: Path, images: int, image_size: int) -> None:
    """Refuse an image size whose decoded images would not fit the cache folder's disk or, while they are decoded
    (each image, then the stacked array), the available memory."""
    cache = images * image_size ** 2
    disk, memory = free_disk(folder), available_memory()
    if disk is not None and cache > disk:
        raise UserError(f"image size {image_size} px (image_size) does not fit: its image cache needs about "
                        f"{cache / GB:,.1f} GB ({images:,} images of {image_size} x {image_size} bytes), and "
                        f"{shown(folder)} has {disk / GB:,.1f} GB free; {HINT}, or set LUNGSEARCH_CACHE to a folder "
                        f"with room")
    if memory is not None and 2 * cache > memory:
        raise UserError(f"image size {image_size} px (image_size) does not fit: decoding {images:,} images at "
                        f"{image_size} x {image_size} needs about {2 * cache / GB:,.1f} GB of memory, and "
                        f"{memory / GB:,.1f} GB is available; {HINT}")
