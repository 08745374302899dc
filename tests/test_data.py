import numpy as np
import pytest

from conftest import copy_into, huge_png, make_dataset, truncate
from lungsearch import cache, data
from lungsearch.config import UserError


def test_scan_reads_every_format_and_both_class_spellings(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 3}, class_names=("normal", "Pneumonia"))
    ds = data.scan(root)
    assert len(ds.files) == 12
    assert sorted(set(ds.labels.tolist())) == [0, 1]
    assert {f.rsplit(".", 1)[1] for f in ds.files} == {"jpg", "jpeg", "png"}
    for f in ds.files:
        img = data.read_image(ds.root / f, 32)
        assert img.shape == (32, 32) and img.dtype == np.uint8


def test_sixteen_bit_and_rgba_decode_to_the_same_grey_values(tmp_path):
    from conftest import write_image
    img = np.arange(0, 250, 250 / 1600).astype(np.uint8).reshape(40, 40)
    for kind in ("grey", "rgb", "rgba", "16bit"):
        write_image(tmp_path / f"{kind}.png", img, kind)
    decoded = {k: data.read_image(tmp_path / f"{k}.png", None) for k in ("grey", "rgb", "rgba", "16bit")}
    for k, v in decoded.items():
        assert np.abs(v.astype(int) - img).max() <= 1, k


def test_missing_folders_name_the_path_and_layout(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.scan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train/ folder"):
        data.scan(tmp_path / "empty")
    (tmp_path / "half" / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(UserError, match=r"has no PNEUMONIA/ folder.*NORMAL/ and PNEUMONIA/"):
        data.scan(tmp_path / "half")


def test_truncated_images_are_skipped_and_listed_non_images_counted(dataset, cache_dir):
    victim = sorted((dataset / "train" / "PNEUMONIA").glob("*.jp*g"))[0]
    truncate(victim)
    (dataset / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (dataset / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    messages = []
    ds, images = data.load_images(dataset, 32, log=messages.append)
    rel = str(victim.relative_to(dataset))
    assert ds.unreadable == [rel]
    assert rel not in ds.files
    assert len(images) == len(ds.files) == 63
    assert sorted(ds.ignored) == ["train/NORMAL/.DS_Store", "train/NORMAL/notes.txt"]
    assert any("skipped 1 unreadable" in m and rel in m for m in messages)


def test_an_image_too_large_for_opencv_is_skipped_as_unreadable(dataset, cache_dir):
    huge = huge_png(dataset / "train" / "NORMAL" / "IM-9999-0001.png")
    assert data.read_image(huge, 32) is None and data.read_image(huge, None) is None
    messages = []
    ds, images = data.load_images(dataset, 32, log=messages.append)
    assert ds.unreadable == ["train/NORMAL/IM-9999-0001.png"] and len(images) == len(ds.files) == 64
    assert any("skipped 1 unreadable (damaged, truncated or too large) image(s): train/NORMAL/IM-9999-0001.png" in m
               for m in messages)


def test_cache_decodes_once_and_follows_content_and_size(dataset, cache_dir):
    logs = []
    ds1, im1 = data.load_images(dataset, 24, log=logs.append)
    ds2, im2 = data.load_images(dataset, 24, log=logs.append)
    assert sum("decoding" in m for m in logs) == 1
    assert np.array_equal(np.asarray(im1), np.asarray(im2))
    assert im1.shape == (64, 24, 24) and im1.dtype == np.uint8
    data.load_images(dataset, 28, log=logs.append)  # another size decodes afresh
    victim = sorted((dataset / "train" / "NORMAL").glob("*.jpg"))[0]
    victim.write_bytes((dataset / "test" / "NORMAL" / sorted(p.name for p in (dataset / "test" / "NORMAL").glob("*.jpg"))[0]).read_bytes())
    ds3, _ = data.load_images(dataset, 24, log=logs.append)  # changed content: new fingerprint
    assert sum("decoding" in m for m in logs) == 3
    assert ds3.fingerprint != ds1.fingerprint


@pytest.mark.parametrize("name, key", [
    ("person1000_bacteria_2931.jpeg", "PERSON1000"),
    ("person1_virus_6.jpeg", "PERSON1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
    ("scan.png", "file:x/scan.png"),
])
def test_patient_keys_from_file_names(name, key):
    assert data.patient_key(name, "x/" + name) == key


def test_report_split_is_stratified_80_20_with_val_from_the_80(tmp_path, cache_dir):
    ds = data.scan(make_dataset(tmp_path / "d", {"train": 25}, images_per_patient=4))
    split = data.make_split(ds, "report", seed=1)
    assert sum(len(v) for v in split.values()) == 200
    assert len(split["test"]) == 40 and len(split["val"]) == 16
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    for part in split.values():
        assert abs(ds.labels[part].mean() - 0.5) < 0.05
    assert data.make_split(ds, "report", seed=1)["test"].tolist() == split["test"].tolist()


def test_patient_split_uses_official_test_and_never_shares_a_patient(dataset):
    ds = data.scan(dataset)
    split = data.make_split(ds, "patient", seed=0)
    assert set(split["test"]) == set(np.flatnonzero(ds.parts == "test"))
    assert len(split["val"]) > 0
    assert not data.shared_patients(ds, split)


def test_patient_split_without_test_holds_out_whole_patients(tmp_path):
    ds = data.scan(make_dataset(tmp_path / "d", {"train": 30}, images_per_patient=3))
    split = data.make_split(ds, "patient", seed=3)
    assert not data.shared_patients(ds, split)
    frac = len(split["test"]) / len(ds.files)
    assert 0.15 < frac < 0.3
    summary = data.split_summary(ds, split, "patient")
    assert summary["patients_in_two_parts"] == [] and summary["unknown_patient_keys"] == 0


def test_copied_image_is_reported_as_leakage(dataset):
    src = sorted((dataset / "train" / "PNEUMONIA").glob("*.png"))[0]
    copy_into(src, dataset / "test" / "PNEUMONIA", "copy_of_train.png")
    ds = data.scan(dataset)
    split = data.make_split(ds, "patient")
    pairs = data.split_summary(ds, split, "patient")["images_in_two_parts"]
    assert any("copy_of_train.png" in b for _, b in pairs)


def test_every_part_of_a_split_holds_both_classes(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 12, "test": 4})
    for f in sorted((root / "train" / "NORMAL").iterdir())[1:]:  # one NORMAL image left in train/
        f.unlink()
    ds = data.scan(root)
    with pytest.raises(UserError, match=r"the target split left its train part \(train/ less the holdout\) with no "
                                        r"NORMAL image \(20 images in it\): the dataset \(41 readable images: 9 "
                                        r"NORMAL, 32 PNEUMONIA\) is too small for this split, and every part needs "
                                        r"both classes"):
        data.make_split(ds, "target")
    with pytest.raises(UserError, match="the patient split left its train part .* with no NORMAL image"):
        data.make_split(ds, "patient")
    split = data.make_split(ds, "report")  # stratified by image: the one image goes somewhere, the others elsewhere
    assert all(set(ds.labels[idx].tolist()) == {0, 1} for idx in split.values())


def test_data_limit_keeps_a_stratified_subset(tmp_path):
    ds = data.scan(make_dataset(tmp_path / "d", {"train": 25}, images_per_patient=4))
    split = data.make_split(ds, "report", data_limit=40)
    assert len(split["train"]) == 40 and len(split["val"]) == 10 and len(split["test"]) == 10


def test_equalize_and_clahe_change_decoded_pixels_deterministically(dataset):
    path = sorted((dataset / "train" / "PNEUMONIA").glob("*.jpg"))[0]
    plain = data.read_image(path, 32)
    assert np.array_equal(data.read_image(path, 32, "standardize"), plain)  # standardize is a model layer
    for method in ("equalize", "clahe"):
        out = data.read_image(path, 32, method)
        assert out.shape == (32, 32) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - plain).mean() > 1, method
        assert np.array_equal(out, data.read_image(path, 32, method))
    with pytest.raises(UserError, match="normalize"):
        data.read_image(path, 32, "histogram")


def test_clahe_has_its_own_cache_file(dataset, cache_dir):
    ds, plain = data.load_images(dataset, 24)
    _, clahe = data.load_images(dataset, 24, normalize="clahe")
    _, standardized = data.load_images(dataset, 24, normalize="standardize")
    names = sorted(p.name for p in cache_dir.glob("*.npy"))
    assert names == [f"{ds.fingerprint}-24-clahe.npy", f"{ds.fingerprint}-24.npy"]
    assert not np.array_equal(np.asarray(plain), np.asarray(clahe))
    assert np.array_equal(np.asarray(plain), np.asarray(standardized))


def test_target_split_halves_test_by_patient_stratified_and_keeps_an_in_distribution_holdout(tmp_path):
    ds = data.scan(make_dataset(tmp_path / "d", {"train": 30, "test": 20}, images_per_patient=3))
    split = data.make_split(ds, "target", seed=5)
    assert set(split) == {"train", "val", "test", "holdout"}
    assert not data.shared_patients(ds, split)  # no patient key in two parts
    test_folder = set(np.flatnonzero(ds.parts == "test"))
    assert set(split["val"]) | set(split["test"]) == test_folder and not set(split["val"]) & set(split["test"])
    for half in ("val", "test"):  # each half holds half of each class's test/ patients
        assert ds.labels[split[half]].sum() == 30 and (1 - ds.labels[split[half]]).sum() == 30
    assert set(split["train"]) | set(split["holdout"]) == set(np.flatnonzero(ds.parts == "train"))
    assert 0.05 < len(split["holdout"]) / (ds.parts == "train").sum() < 0.15
    assert {0, 1} <= set(ds.labels[split["holdout"]].tolist())
    again = data.make_split(ds, "target", seed=5)
    assert all(again[p].tolist() == split[p].tolist() for p in split)  # deterministic by seed
    other = data.make_split(ds, "target", seed=6)
    assert other["val"].tolist() != split["val"].tolist()
    sources = data.split_summary(ds, split, "target")["sources"]
    assert "test/" in sources["val"] and sources["train"] == "train/ less the holdout"


def test_target_split_needs_a_test_folder_and_says_which_splits_work(tmp_path):
    ds = data.scan(make_dataset(tmp_path / "d", {"train": 6}))
    with pytest.raises(UserError, match="--split patient .*--split report"):
        data.make_split(ds, "target")
    assert data.resolve_split(ds, "auto") == "patient"
    assert data.resolve_split(data.scan(make_dataset(tmp_path / "e", {"train": 6, "test": 2})), "auto") == "target"


def test_a_big_enough_own_val_folder_is_used_and_a_small_one_is_pooled(tmp_path, monkeypatch):
    ds = data.scan(make_dataset(tmp_path / "d", {"train": 12, "val": 4, "test": 4}))
    val_folder = set(np.flatnonzero(ds.parts == "val"))
    small = data.make_split(ds, "patient", seed=0)
    assert not data.own_val_usable(ds) and val_folder <= set(small["train"]) | set(small["val"])
    assert "too small" in data.split_sources(ds, "patient")["train"]
    monkeypatch.setattr(data, "OWN_VAL_MIN", 16)
    assert data.own_val_usable(ds)
    assert set(data.make_split(ds, "patient", seed=0)["val"]) == val_folder
    target = data.make_split(ds, "target", seed=0)
    assert set(target["holdout"]) == val_folder and set(target["train"]) == set(np.flatnonzero(ds.parts == "train"))
    assert "own val/" in data.split_sources(ds, "target")["holdout"]


# --- Fail loudly and honestly: one-class data, odd file names, bad folders, a damaged cache ---

def non_utf8_copy(src, folder, name=b"person9_bacteria_\xff.jpeg"):
    """Copy `src` into `folder` under a file name that is not valid UTF-8; the name as Python sees it."""
    import os
    import shutil
    dst = os.path.join(os.fsencode(folder), name)
    shutil.copy(src, dst)
    return os.fsdecode(name)


def test_one_class_train_part_is_refused_by_load(dataset, cache_dir):
    for f in (dataset / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    assert len(data.scan(dataset).files) == 40  # scan lists what is there (evaluate scores one class)
    with pytest.raises(UserError, match=r"train/PNEUMONIA \(.*\) has no readable images: a classifier needs both"):
        data.load_images(dataset, 24)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.npy"))  # refused before decoding


def test_a_test_class_with_only_unreadable_images_is_refused_after_decoding(dataset, cache_dir):
    for f in (dataset / "test" / "NORMAL").iterdir():
        truncate(f)
    with pytest.raises(UserError, match=r"test/NORMAL .*has no readable images.*remove the optional test/"):
        data.load_images(dataset, 24)
    with pytest.raises(UserError, match="test/NORMAL"):  # again from the cache entry
        data.load_images(dataset, 24)


def test_empty_class_helpers_name_part_and_class(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 1})
    for f in (root / "val" / "NORMAL").iterdir():
        f.unlink()
    ds = data.scan(root)
    assert [(p, c) for p, c, _ in data.empty_classes(ds)] == [("val", "NORMAL")]
    readable = ds.labels == 0  # as if every PNEUMONIA image were unreadable
    assert [(p, c) for p, c, _ in data.empty_classes(ds, readable)] == [
        ("train", "PNEUMONIA"), ("val", "NORMAL"), ("val", "PNEUMONIA")]
    with pytest.raises(UserError, match="val/NORMAL"):
        data.require_both_classes(ds)


def test_non_utf8_file_name_is_read_fingerprinted_and_shown_escaped(dataset, cache_dir):
    from lungsearch.check import check_dataset
    src = sorted((dataset / "train" / "PNEUMONIA").glob("*.jpg"))[0]
    name = non_utf8_copy(src, dataset / "train" / "PNEUMONIA")
    ds = data.scan(dataset)
    rel = f"train/PNEUMONIA/{name}"
    assert rel in ds.files and len(ds.files) == 65
    assert data.shown(rel) == "train/PNEUMONIA/person9_bacteria_\\xff.jpeg"
    ds2, images = data.load_images(dataset, 24)
    assert rel in ds2.files and not ds2.unreadable and len(images) == 65
    assert np.array_equal(images[ds2.files.index(rel)], data.read_image(src, 24))
    text, ok = check_dataset(str(dataset))
    assert ok and "unreadable, truncated or too large images: 0" in text
    text.encode("utf-8")  # printable


def test_fingerprint_of_valid_names_is_unchanged(dataset):
    import hashlib
    ds = data.scan(dataset)
    old = hashlib.sha256("\n".join(f"{f} {h}" for f, h in zip(ds.files, ds.hashes)).encode()).hexdigest()[:16]
    assert ds.fingerprint == old  # existing caches and run manifests stay valid


def test_cache_folder_that_is_a_file_is_a_user_error_naming_the_variable(dataset, tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    for value, why in [(blocker, "is a file, not a folder"), (blocker / "sub", "cannot be created: .* is a file")]:
        monkeypatch.setenv("LUNGSEARCH_CACHE", str(value))
        with pytest.raises(UserError, match=f"LUNGSEARCH_CACHE.*{value}.* {why}.*set LUNGSEARCH_CACHE"):
            data.load_images(dataset, 24)


def test_read_only_cache_folder_is_a_user_error(dataset, tmp_path, monkeypatch):
    import os
    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setenv("LUNGSEARCH_CACHE", str(folder))
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            with pytest.raises(UserError, match=f"LUNGSEARCH_CACHE.*{folder} is not writable"):
                data.load_images(dataset, 24)
        finally:
            folder.chmod(0o700)
    else:  # root writes anywhere: check the rule itself on a folder the process may not write
        real_access = os.access
        monkeypatch.setattr(cache.os, "access", lambda p, mode, **k: False if str(p) == str(folder)
                            else real_access(p, mode, **k))
        with pytest.raises(UserError, match=f"LUNGSEARCH_CACHE.*{folder} is not writable"):
            data.load_images(dataset, 24)


def test_results_folder_is_checked_before_any_work(dataset, tmp_path):
    from lungsearch import run
    blocker = tmp_path / "results.txt"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"--results folder {blocker} is a file, not a folder: pass --results"):
        run.run_search("spaces/report.py", str(dataset), results_dir=blocker)
    with pytest.raises(UserError, match="--results folder .*cannot be created: .* is a file"):
        cache.check_results_folder(blocker / "runs")
    fresh = tmp_path / "new" / "runs"
    assert cache.check_results_folder(fresh) == fresh and not fresh.exists()  # checked, not created
    assert sorted(tmp_path.iterdir()) == [blocker, dataset]  # the probe left nothing behind
    # a folder whose permission bits allow writing, in a file system that refuses it
    with pytest.raises(UserError, match=r"--results folder /proc/x cannot be created: nothing can be made in /proc"):
        run.run_search("spaces/report.py", str(dataset), results_dir="/proc/x")


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_results_folder_is_a_user_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match=f"--results folder {folder} is not writable"):
            cache.check_results_folder(folder)
    finally:
        folder.chmod(0o700)


def test_truncated_cache_array_is_rebuilt_with_a_warning(dataset, cache_dir):
    ds, first = data.load_images(dataset, 24)
    first = np.array(first)
    npy = cache_dir / f"{ds.fingerprint}-24.npy"
    truncate(npy)
    logs = []
    _, again = data.load_images(dataset, 24, log=logs.append)
    assert any("warning: the cached images" in m and "damaged" in m for m in logs)
    assert sum("decoding 64 images" in m for m in logs) == 1 and np.array_equal(np.asarray(again), first)
    logs.clear()
    data.load_images(dataset, 24, log=logs.append)
    assert logs == []  # rebuilt entry is used as is


def test_changed_cache_bytes_fail_the_checksum_and_are_rebuilt(dataset, cache_dir):
    ds, first = data.load_images(dataset, 24)
    first = np.array(first)
    npy = cache_dir / f"{ds.fingerprint}-24.npy"
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF  # same size, one pixel changed
    npy.write_bytes(bytes(raw))
    logs = []
    _, again = data.load_images(dataset, 24, log=logs.append)
    assert any("checksum" in m for m in logs) and np.array_equal(np.asarray(again), first)


def test_cache_metadata_without_its_checksum_or_damaged_is_rebuilt(dataset, cache_dir):
    import json
    ds, first = data.load_images(dataset, 24)
    first = np.array(first)
    meta = cache_dir / f"{ds.fingerprint}-24.json"
    info = json.loads(meta.read_text())
    assert {"npy_bytes", "npy_sha1"} <= set(info)
    meta.write_text(json.dumps({"files": info["files"], "unreadable": info["unreadable"]}))  # nothing to verify by
    logs = []
    _, again = data.load_images(dataset, 24, log=logs.append)
    assert any("damaged (KeyError: 'npy_bytes')" in m for m in logs) and np.array_equal(np.asarray(again), first)
    meta.write_text("{trunc")  # damaged metadata
    logs.clear()
    _, again = data.load_images(dataset, 24, log=logs.append)
    assert any("damaged" in m for m in logs) and np.array_equal(np.asarray(again), first)
    assert not list(cache_dir.glob("*.tmp.*"))  # no temporary files left behind
