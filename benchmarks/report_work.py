"""How much work `report` does on a finished run: the data-folder scans (each hashes every image), the model files
read, and the wall time, for the whole report (analysis, exports, figures, the reviewer's sections).

    python benchmarks/report_work.py RUN_DIR [--keep]

Works on a copy of the run folder (removed afterwards unless --keep), so the run's own report is left as it is.
Prints the trials in the run, the counts and the time, and as its last line a JSON object.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import analysis, data, report  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the copy of the run folder (its path is printed)")
    args = p.parse_args()
    copy = Path(tempfile.mkdtemp(prefix="report-work-")) / args.run_dir.name
    shutil.copytree(args.run_dir, copy)
    scans, reads = [], []
    scan, read = data.scan, analysis.load_model

    def counted_scan(folder, *a, **k):
        scans.append(str(folder))
        return scan(folder, *a, **k)

    def counted_read(path):
        reads.append(str(path))
        return read(path)

    data.scan, analysis.load_model = counted_scan, counted_read
    started = time.time()
    report.write_report(copy)
    wall = time.time() - started
    trials = sum(1 for line in (copy / "trials.csv").read_text().splitlines()[1:] if line.strip())
    out = {"run": args.run_dir.name, "trials": trials, "data_scans": len(scans), "model_reads": len(reads),
           "distinct_models_read": len(set(reads)), "wall_s": round(wall, 1)}
    print(f"{trials} trials: report scanned the data folder {len(scans)} time(s), read {len(reads)} model file(s) "
          f"({len(set(reads))} distinct), in {wall:.0f} s")
    if args.keep:
        print(f"copy kept: {copy}")
    else:
        shutil.rmtree(copy.parent, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
