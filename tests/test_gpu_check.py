"""offline/gpu_check.py: the steps it runs and the archive it packs (the run itself is proven by .ci/run)."""
import argparse
import importlib.util
import shutil
import subprocess
import sys
import tarfile

from conftest import REPO

SCRIPT = REPO / "offline" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_every_step_with_the_figures_the_check_is_for():
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    steps = [line.split()[0] for line in out.stdout.splitlines() if " limit " in line]
    assert steps == ["setup", "bench", "ablation", "robust", "efficiency", "pack"]
    text = out.stdout
    for flags in ("run ablation", "--image-size 150 --num-samples 100 --max-epochs 20 --gpus-per-trial 0.25",
                  "run robust", "--budget-minutes", "bench --efficiency", "no kit at"):
        assert flags in text, flags
    smoke = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--smoke"], capture_output=True, text=True,
                           timeout=60)
    assert smoke.returncode == 0 and "--smoke" in smoke.stdout and "--gpus-per-trial" not in smoke.stdout


def test_step_limits_keep_time_for_the_later_steps_within_the_whole_check():
    gpu_check = load()
    for sizes in (gpu_check.GPU, gpu_check.SMOKE):
        assert list(sizes["limits"]) == gpu_check.STEPS
        assert sum(least for _, least in sizes["limits"].values()) < 60 * sizes["minutes"]
    assert gpu_check.GPU["minutes"] <= 9


def test_pack_takes_the_best_models_first_and_splits_a_large_archive(tmp_path, monkeypatch):
    gpu_check = load()
    monkeypatch.setattr(gpu_check, "ARCHIVE_BYTES", 300_000)
    monkeypatch.setattr(gpu_check, "PART_BYTES", 100_000)
    args = argparse.Namespace(smoke=True, data=str(tmp_path), kit=str(tmp_path / "no-kit"), out=str(tmp_path / "out"),
                              minutes=1, dry_run=False)
    check = gpu_check.Check(args)
    rng = __import__("random").Random(0)

    def write(rel, size):  # incompressible, like weights
        path = check.results / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))

    write("robust/run1/best_model/member0.keras", 120_000)
    write("robust/run1/confirm/t1/checkpoint/model.keras", 150_000)
    write("ablation/run2/best_model.keras", 120_000)
    write("ablation/run2/trials.csv", 10)
    assert check.pack(tmp_path / "out") == "passed"
    parts = sorted((tmp_path / "out").glob("gpu-check.tar.gz.part*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 100_000 for p in parts)
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        names = set(tar.getnames())
        left_out = tar.extractfile("gpu-check/left-out.txt").read().decode()
    assert {"gpu-check/results/robust/run1/best_model/member0.keras", "gpu-check/results/ablation/run2/best_model.keras",
            "gpu-check/results/ablation/run2/trials.csv", "gpu-check/summary.txt"} <= names
    assert "gpu-check/results/robust/run1/confirm/t1/checkpoint/model.keras" not in names
    assert left_out.startswith("results/robust/run1/confirm/t1/checkpoint/model.keras 150000")
    shutil.rmtree(check.work)
