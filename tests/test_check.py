import subprocess
import sys

import numpy as np
from conftest import REPO, copy_into, huge_png, truncate, write_image, xray
from lungsearch.check import check_dataset


def run_check(path):
    return subprocess.run([sys.executable, "-m", "lungsearch", "data", "check", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_clean_dataset_passes(dataset):
    out = run_check(dataset)
    assert out.returncode == 0, out.stderr
    assert "OK: no image and no patient key shared" in out.stdout
    assert "warning" not in out.stdout
    assert "train       24         24        24" in out.stdout


def test_catches_truncated_jpeg_non_image_and_image_copied_into_test(dataset):
    victim = sorted((dataset / "train" / "NORMAL").glob("*.jpg"))[0]
    truncate(victim)
    (dataset / "train" / "PNEUMONIA" / "readme.txt").write_text("hello")
    src = sorted((dataset / "train" / "PNEUMONIA").glob("*.png"))[0]
    copy_into(src, dataset / "test" / "PNEUMONIA", src.name)  # same file name: same patient key too
    out = run_check(dataset)
    assert out.returncode == 1
    assert "unreadable, truncated or too large images: 1" in out.stdout and victim.name in out.stdout
    assert "non-image files ignored: 1" in out.stdout and "readme.txt" in out.stdout
    assert "LEAKAGE: 1 image(s) identical between train/val and test (1 patient key(s) in both)" in out.stdout


def test_patient_key_shared_without_identical_image_only_warns(dataset):
    # as in the real Kermany test folder: a renumbered key names a viral case in test, a bacterial one in train
    train_keys = sorted((dataset / "train" / "PNEUMONIA").glob("person*_bacteria_*"))
    key = train_keys[0].name.split("_")[0]
    write_image(dataset / "test" / "PNEUMONIA" / f"{key}_virus_99.jpeg", xray(1, np.random.default_rng(99)), "grey")
    out = run_check(dataset)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "LEAKAGE" not in out.stdout
    assert (f"warning: 1 patient key(s) appear in both train/val and test ({key.upper()}), but no image is "
            "identical between them, and 1 of them name a different infection (bacteria/virus) on each side"
            ) in out.stdout
    assert "OK: no image shared between train/val and test" in out.stdout


def test_missing_folder_is_a_clear_error(tmp_path):
    out = run_check(tmp_path / "missing")
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "NORMAL/" in out.stderr


def test_a_part_with_an_empty_or_unreadable_class_fails_the_check(dataset):
    for f in (dataset / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    for f in (dataset / "test" / "NORMAL").iterdir():
        truncate(f)
    out = run_check(dataset)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "train       24          0        12" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("ERROR: train/PNEUMONIA (") and "test/NORMAL (" in last
    assert "have no readable images: a classifier needs both classes" in last


def test_file_names_that_are_not_utf8_are_checked_and_shown_escaped(dataset):
    import os
    import shutil
    folder = os.fsencode(dataset / "train" / "PNEUMONIA")
    src = sorted((dataset / "train" / "PNEUMONIA").glob("*.jpg"))[0]
    shutil.copy(src, os.path.join(folder, b"person9_bacteria_\xff.jpeg"))
    with open(os.path.join(folder, b"notes_\xe9.txt"), "w") as f:
        f.write("not an image")
    out = run_check(dataset)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "train       24         25        25" in out.stdout
    assert "non-image files ignored: 1" in out.stdout and "train/PNEUMONIA/notes_\\xe9.txt" in out.stdout
    assert "unreadable, truncated or too large images: 0" in out.stdout
    assert "train/PNEUMONIA/person9_bacteria_\\xff.jpeg" in out.stdout  # an identical copy: listed as such


def test_an_image_too_large_for_opencv_is_listed_as_unreadable(dataset):
    huge_png(dataset / "test" / "NORMAL" / "IM-9999-0001.png")
    text, ok = check_dataset(str(dataset))
    assert ok, text
    assert "unreadable, truncated or too large images: 1\n  test/NORMAL/IM-9999-0001.png" in text


def test_empty_files_are_unreadable_and_not_identical_images(dataset):
    for part in ("train", "test"):
        for k in range(3):
            (dataset / part / "NORMAL" / f"IM-{8000 + k}-0001.jpeg").write_bytes(b"")
    text, ok = check_dataset(str(dataset))
    assert ok and "LEAKAGE" not in text, text
    assert "unreadable, truncated or too large images: 6" in text and "identical images (same content): 0" in text
