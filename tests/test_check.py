import subprocess
import sys

from conftest import REPO, copy_into, truncate


def run_check(path):
    return subprocess.run([sys.executable, "-m", "lungsearch", "data", "check", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_clean_dataset_passes(dataset):
    out = run_check(dataset)
    assert out.returncode == 0, out.stderr
    assert "OK: no image and no patient shared" in out.stdout
    assert "train       24         24        24" in out.stdout


def test_catches_truncated_jpeg_non_image_and_image_copied_into_test(dataset):
    victim = sorted((dataset / "train" / "NORMAL").glob("*.jpg"))[0]
    truncate(victim)
    (dataset / "train" / "PNEUMONIA" / "readme.txt").write_text("hello")
    src = sorted((dataset / "train" / "PNEUMONIA").glob("*.png"))[0]
    copy_into(src, dataset / "test" / "PNEUMONIA", src.name)  # same file name: same patient key too
    out = run_check(dataset)
    assert out.returncode == 1
    assert "unreadable or truncated images: 1" in out.stdout and victim.name in out.stdout
    assert "non-image files ignored: 1" in out.stdout and "readme.txt" in out.stdout
    assert "LEAKAGE: 1 image(s) and 1 patient(s)" in out.stdout


def test_missing_folder_is_a_clear_error(tmp_path):
    out = run_check(tmp_path / "missing")
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "NORMAL/" in out.stderr
