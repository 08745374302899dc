import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_bench_prints_a_table_then_one_json_line(dataset, cache_dir):
    out = subprocess.run([sys.executable, "-m", "lungsearch", "bench", "--smoke", "--no-search", "--data",
                          str(dataset)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("bn_aug_dropout") for line in lines)
    figures = json.loads(lines[-1])
    for key in ("epoch_s", "aug_epoch_s", "aug_ratio", "trial_startup_s"):
        assert figures[key] > 0
    assert figures["aug_ratio"] == pytest.approx(figures["aug_epoch_s"] / figures["epoch_s"], rel=0.02)
    assert set(figures["per_model"]) == {"base", "bn_aug", "bn_aug_dropout"}
