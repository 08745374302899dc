"""`lungsearch data prepare ARCHIVE DEST`: unpack a downloaded chest X-ray archive into the layout lungsearch reads.

The public downloads do not unpack to DEST/{train,val,test}/{NORMAL,PNEUMONIA}: Kaggle's zip nests the images
in chest_xray/chest_xray/, some versions hold a second copy in chest_xray/, and macOS adds __MACOSX/ and
.DS_Store entries. This finds each image's part and class folder wherever it sits in the archive, skips the
junk and the second copies, checks that every part has both classes, and writes the result in a temporary
folder beside DEST that is renamed into place only when complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import cache, data
from .config import UserError

MARKER = ".lungsearch-prepare.json"  # written into DEST last: what was prepared, from which archive
CLASS_NAMES = {c.lower(): c for c in data.CLASSES}
LAYOUT = ("images in {train,val,test}/{NORMAL,PNEUMONIA}/ folders (at any depth, in any case), as in the "
          "Kermany chest X-ray download")


@dataclass
class Plan:
    """What unpacking an archive would write, and what it leaves out and why."""

    members: dict[str, zipfile.ZipInfo] = field(default_factory=dict)  # DEST-relative path -> archive member
    counts: Counter = field(default_factory=Counter)  # (part, class) -> images
    junk: int = 0  # __MACOSX/ entries and dotfiles (.DS_Store, ._name)
    links: int = 0  # symbolic links: never followed, never written
    non_images: int = 0
    outside: list[str] = field(default_factory=list)  # images not in a part/class folder
    duplicates: int = 0  # the same part/class/file again with the same content (a second copy)
    conflicts: list[str] = field(default_factory=list)  # the same part/class/file again with other content

    @property
    def bytes(self) -> int:
        return sum(m.file_size for m in self.members.values())

    def digest(self) -> str:
        """The identity of what is unpacked: each kept file's destination, CRC and size."""
        listing = "\n".join(f"{rel} {m.CRC:08x} {m.file_size}" for rel, m in sorted(self.members.items()))
        return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    def count_table(self) -> dict[str, dict[str, int]]:
        return {part: {c: self.counts[part, c] for c in data.CLASSES}
                for part in data.PARTS if any(self.counts[part, c] for c in data.CLASSES)}


def unsafe(name: str) -> str | None:
    """Why an archive member's path would land outside DEST (zip-slip), or None when it is safe."""
    if "\x00" in name:
        return "its name holds a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "it is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "it climbs out with '..'"
    return None


def is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def place(parts: list[str]) -> str | None:
    """DEST-relative path (part/CLASS/name) of an image whose archive path is `parts`, or None when it is not
    inside a part folder's class folder. The deepest such pair of folders counts."""
    for i in range(len(parts) - 3, -1, -1):
        if parts[i].lower() in data.PARTS and parts[i + 1].lower() in CLASS_NAMES:
            return "/".join([parts[i].lower(), CLASS_NAMES[parts[i + 1].lower()], *parts[i + 2:]])
    return None


def make_plan(zf: zipfile.ZipFile, archive: Path) -> Plan:
    """Sort the archive's members into kept images and what is skipped; refuse an archive with a member whose
    path escapes the destination (UserError, before anything is written)."""
    infos = zf.infolist()
    for info in infos:
        why = unsafe(info.filename)
        if why:
            raise UserError(f"archive {data.shown(archive)} holds the member {data.shown(info.filename)!r}, whose path "
                            f"would be written outside DEST ({why}): refusing to unpack an unsafe archive; nothing "
                            f"was written. Download the dataset again from its source")
    plan = Plan()
    for info in infos:
        if info.is_dir():
            continue
        parts = [p for p in re.split(r"[/\\]", info.filename) if p not in ("", ".")]
        if is_symlink(info):
            plan.links += 1
            continue
        if any(p == "__MACOSX" or p.startswith(".") for p in parts):
            plan.junk += 1
            continue
        if Path(parts[-1]).suffix.lower() not in data.IMAGE_SUFFIXES:
            plan.non_images += 1
            continue
        rel = place(parts)
        if rel is None:
            plan.outside.append(info.filename)
            continue
        kept = plan.members.get(rel)
        if kept is None:
            plan.members[rel] = info
            part, cls = rel.split("/")[:2]
            plan.counts[part, cls] += 1
        elif (kept.CRC, kept.file_size) == (info.CRC, info.file_size):
            plan.duplicates += 1
        else:
            plan.conflicts.append(f"{info.filename} (kept {kept.filename})")
    return plan


def table(counts: dict[str, dict[str, int]]) -> str:
    rows = [("part", *data.CLASSES, "total")]
    rows += [(part, *(f"{n:,}" for n in by_class.values()), f"{sum(by_class.values()):,}")
             for part, by_class in counts.items()]
    rows.append(("all", *(f"{sum(c[k] for c in counts.values()):,}" for k in data.CLASSES),
                 f"{sum(sum(c.values()) for c in counts.values()):,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)


def on_disk(dest: Path) -> dict[str, dict[str, int]]:
    """Images per part and class in a prepared folder."""
    out = {}
    for part in data.PARTS:
        if (dest / part).is_dir():
            out[part] = {c: sum(1 for p in (dest / part / c).rglob("*") if p.is_file()) if (dest / part / c).is_dir()
                         else 0 for c in data.CLASSES}
    return out


def clean_stale(dest: Path) -> None:
    """Remove temporary folders left by an earlier prepare of `dest` that was killed (its process is gone)."""
    if os.name != "posix" or not dest.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.incomplete-(\d+)$")
    for sibling in dest.parent.iterdir():
        match = pattern.match(sibling.name)
        if not match or not sibling.is_dir():
            continue
        try:
            os.kill(int(match.group(1)), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(sibling, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


def check_dest(dest: Path, digest: str) -> bool:
    """True when `dest` holds a complete earlier prepare of the same archive content (nothing to do); False when
    it is free (missing or an empty folder); else UserError."""
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise UserError(f"DEST {data.shown(dest)} is a file; pass a new folder to unpack into")
    entries = list(dest.iterdir())
    if not entries:
        return False
    marker = dest / MARKER
    try:
        info = json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError):
        info = None
    if not info or info.get("content") != digest:
        what = "an earlier prepare of another archive" if info else f"{len(entries)} entries"
        raise UserError(f"DEST {data.shown(dest)} is not empty (it holds {what}); pass a new or empty folder, or "
                        f"remove this one first")
    if on_disk(dest) != info.get("counts"):
        raise UserError(f"DEST {data.shown(dest)} was prepared from this archive but its images have changed since "
                        f"(counts differ from {MARKER}); remove the folder and prepare it again")
    return True


def extract(zf: zipfile.ZipFile, plan: Plan, tmp: Path, archive: Path) -> None:
    root = tmp.resolve()
    for rel, info in plan.members.items():
        target = (tmp / rel).resolve()
        if root not in target.parents:  # belt and braces: make_plan refused such names already
            raise UserError(f"archive member {data.shown(info.filename)!r} would be written outside DEST; nothing was "
                            f"written")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # a bad CRC or a cut-off member
            raise UserError(f"archive {data.shown(archive)} is damaged: {data.shown(info.filename)} cannot be read "
                            f"({err}); download it again. Nothing was written") from err


def unpack_archive(archive: str | Path, dest: str | Path, log: Callable[[str], object] = print) -> Path:
    """Unpack `archive` (a .zip) into `dest`/{train,val,test}/{NORMAL,PNEUMONIA}; return `dest`. The last line
    logged is the --data to use. Refusals (an unsafe or damaged archive, a part without one of the classes, a
    non-empty `dest`, too little disk space) are UserErrors raised before `dest` exists."""
    archive = Path(archive).expanduser()
    dest = Path(dest).expanduser().absolute()
    with open_archive(archive) as zf:
        plan = make_plan(zf, archive)
        counts = checked_counts(plan, archive)
        digest = plan.digest()
        if check_dest(dest, digest):
            log(f"{data.shown(dest)} already holds this archive, complete:\n{table(counts)}")
            log(f"--data {shlex.quote(str(dest))}")
            return dest
        check_room(dest, plan)
        unpack_atomically(zf, plan, archive, dest, counts, digest, log)
    log_summary(plan, counts, dest, log)
    return dest


def open_archive(archive: Path) -> zipfile.ZipFile:
    """The opened zip archive; UserError when `archive` is a folder, missing, not a zip or unreadable."""
    if archive.is_dir():
        found = [p for p in sorted(archive.rglob("*")) if p.is_dir() and p.name.lower() == "train"][:1]
        hint = f"; pass --data {shlex.quote(str(found[0].parent))} to use it as it is" if found else ""
        raise UserError(f"{data.shown(archive)} is a folder, not an archive: it is unpacked already{hint}")
    if not archive.is_file():
        raise UserError(f"archive {data.shown(archive)} not found; pass the downloaded .zip file")
    if not zipfile.is_zipfile(archive):
        raise UserError(f"{data.shown(archive)} is not a zip archive (or an incomplete download of one): prepare "
                        f"unpacks .zip files; unpack other archives yourself and pass the folder holding train/ "
                        f"as --data")
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"cannot open the archive {data.shown(archive)} ({err}); download it again") from err


def checked_counts(plan: Plan, archive: Path) -> dict[str, dict[str, int]]:
    """The plan's images per part and class; UserError when it has no images in part/class folders, or a part
    lacks one of the classes."""
    if not plan.members:
        sample = f" (e.g. {data.shown(plan.outside[0])})" if plan.outside else ""
        raise UserError(f"archive {data.shown(archive)} holds no images in part/class folders: expected {LAYOUT}; "
                        f"found {len(plan.outside)} image(s) elsewhere{sample}. Nothing was written")
    counts = plan.count_table()
    missing = [f"{part}/{c}" for part, by_class in counts.items() for c, n in by_class.items() if n == 0]
    if missing:
        raise UserError(f"archive {data.shown(archive)} has no images in {', '.join(missing)}:\n{table(counts)}\n"
                        f"a classifier needs both classes, NORMAL and PNEUMONIA, in every part; this is not the "
                        f"complete dataset (download it again). Nothing was written")
    return counts


def check_room(dest: Path, plan: Plan) -> None:
    """Create `dest`'s parent folder; UserError when it cannot be written to or has too little free space for the
    plan's images."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    cache.writable_folder(dest.parent, "DEST's parent folder", "pass a DEST in a folder you can write to")
    free = shutil.disk_usage(dest.parent).free
    if free < plan.bytes * 1.05 + (50 << 20):
        raise UserError(f"not enough disk space in {data.shown(dest.parent)}: the images take "
                        f"{plan.bytes / 1e9:.2f} GB and {free / 1e9:.2f} GB are free. Nothing was written")


def unpack_atomically(zf: zipfile.ZipFile, plan: Plan, archive: Path, dest: Path, counts: dict[str, dict[str, int]],
                      digest: str, log: Callable[[str], object]) -> None:
    """Extract the plan's images into a temporary folder beside `dest`, check what was written, add the marker
    and rename the folder to `dest`. On an error or Ctrl-C the temporary folder is removed: nothing half-made is
    left."""
    clean_stale(dest)
    tmp = dest.parent / f".{dest.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"unpacking {len(plan.members):,} images ({plan.bytes / 1e6:,.0f} MB) from {data.shown(archive)}")
    try:
        tmp.mkdir()
        extract(zf, plan, tmp, archive)
        written = on_disk(tmp)
        if written != counts:
            raise UserError(f"unpacking wrote other counts than the archive lists ({written} instead of "
                            f"{counts}); nothing was kept")
        (tmp / MARKER).write_text(json.dumps({
            "archive": archive.name, "archive_bytes": archive.stat().st_size, "content": digest,
            "counts": counts, "skipped": {"junk": plan.junk, "links": plan.links, "non_images": plan.non_images,
                                          "duplicates": plan.duplicates, "conflicts": len(plan.conflicts),
                                          "outside_layout": len(plan.outside)}}, indent=1))
        if dest.exists():
            dest.rmdir()  # check_dest found it empty
        os.replace(tmp, dest)
    except BaseException:  # an error or Ctrl-C: nothing half-made is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def log_summary(plan: Plan, counts: dict[str, dict[str, int]], dest: Path, log: Callable[[str], object]) -> None:
    """After unpacking: the counts table, what was skipped, warnings (to stderr) about conflicting copies and a
    missing train/ part, and last the --data to use."""
    log(table(counts))
    skipped = [f"{n:,} {what}" for n, what in ((plan.duplicates, "second copies of the same file"),
                                               (plan.junk, "__MACOSX/ and dot files"),
                                               (plan.links, "symbolic link(s)"),
                                               (plan.non_images, "non-image file(s)"),
                                               (len(plan.outside), "images outside part/class folders"))
               if n]
    if skipped:
        log("skipped: " + ", ".join(skipped))
    if plan.conflicts:
        print(f"warning: {len(plan.conflicts)} file(s) appear twice with different contents; the first copy was "
              f"kept: " + "; ".join(map(data.shown, plan.conflicts[:5])) + (" ..." if len(plan.conflicts) > 5 else ""),
              file=sys.stderr)
    if "train" not in counts:
        print("warning: the archive has no train/ part: `run` needs one; `evaluate` can score this folder",
              file=sys.stderr)
    log(f"check it with: lungsearch data check {shlex.quote(str(dest))}")
    log(f"--data {shlex.quote(str(dest))}")
