#!/usr/bin/env python3
"""Copy a chest X-ray dataset at a smaller size for an offline machine (same layout and file names).

    python offline/pack_data.py /path/to/chest_xray data-small --size 150 --quality 80

The 5,216 training images at 150 px, JPEG quality 80, take about 20 MB. lungsearch reads the copy like
the original (it resizes to the trial's size anyway); data fingerprints differ from the original's.
"""
import argparse
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import data  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--size", type=int, default=150, help="side in pixels (default 150)")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality (default 80)")
    args = p.parse_args()
    ds = data.scan(args.src)
    dst = Path(args.dst)
    written = 0
    for rel in ds.files:
        image = data.read_image(ds.root / rel, args.size)
        if image is None:
            print(f"skipped unreadable {rel}", file=sys.stderr)
            continue
        out = (dst / rel).with_suffix(".jpeg")
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), image, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
        written += 1
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"wrote {written} images, {size / 2**20:.1f} MB, to {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
