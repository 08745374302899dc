"""`lungsearch data prepare`: archives laid out like the public download, unpacked into the layout lungsearch reads."""
import json
import zipfile
from pathlib import Path

import pytest

from conftest import make_dataset
from lungsearch import cli, data, prepare
from lungsearch.config import UserError

PARTS = {"train": 2, "val": 1, "test": 1}  # patients per class; 2 images each


def source_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kaggle_zip(tmp_path: Path, files: dict[str, bytes], name: str = "chest-xray-pneumonia.zip",
               copies: tuple[str, ...] = ("chest_xray/chest_xray/", "chest_xray/")) -> Path:
    """A zip like Kaggle's: the images nested in chest_xray/chest_xray/, a second copy in chest_xray/, folder
    entries, __MACOSX/ resource forks, .DS_Store files and a non-image."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for prefix in copies:
            z.writestr(prefix, b"")  # a folder entry
            z.writestr(prefix + ".DS_Store", b"\0\0\0\1Bud1")
            for rel, content in files.items():
                z.writestr(prefix + rel, content)
                z.writestr("__MACOSX/" + prefix + rel.rsplit("/", 1)[0] + "/._" + rel.rsplit("/", 1)[1], b"\0\5\26\7")
        z.writestr("chest_xray/train/NORMAL/.DS_Store", b"junk")
        z.writestr("chest_xray/README.txt", b"not an image")
    return path


@pytest.fixture
def download(tmp_path):
    files = source_files(make_dataset(tmp_path / "src", PARTS))
    return kaggle_zip(tmp_path, files), files


def test_a_kaggle_style_archive_unpacks_into_the_layout_lungsearch_reads(download, tmp_path, capsys):
    archive, files = download
    dest = tmp_path / "data" / "chest_xray"
    assert cli.main(["data", "prepare", str(archive), str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"--data {dest}"
    assert source_files(dest) == {**files, prepare.MARKER: (dest / prepare.MARKER).read_bytes()}
    assert sorted(p.name for p in dest.iterdir()) == [prepare.MARKER, "test", "train", "val"]
    # the table: 4 images per class in train, 2 in val and in test
    assert [line.split() for line in out.splitlines() if line.split()[:1] in (["train"], ["all"])] == [
        ["train", "4", "4", "8"], ["all", "8", "8", "16"]]
    assert f"skipped: {len(files)} second copies of the same file" in out and "__MACOSX/ and dot files" in out
    assert "1 non-image file(s)" in out
    assert data.scan(dest).fingerprint == data.scan(tmp_path / "src").fingerprint  # the same dataset, byte for byte
    assert not [p for p in dest.parent.iterdir() if p.name != "chest_xray"]  # no temporary folder left


def test_preparing_again_is_a_no_op_and_another_archive_is_refused(download, tmp_path, capsys):
    archive, files = download
    dest = tmp_path / "chest_xray"
    prepare.unpack_archive(archive, dest)
    capsys.readouterr()
    prepare.unpack_archive(archive, dest)
    out = capsys.readouterr().out
    assert "already holds this archive, complete" in out and out.strip().splitlines()[-1] == f"--data {dest}"
    other = kaggle_zip(tmp_path, {k: v + b"x" if "NORMAL" in k else v for k, v in files.items()}, "other.zip")
    with pytest.raises(UserError, match="is not empty .*an earlier prepare of another archive"):
        prepare.unpack_archive(other, dest)
    next((dest / "train" / "NORMAL").iterdir()).unlink()
    with pytest.raises(UserError, match="its images have changed since"):
        prepare.unpack_archive(archive, dest)


def test_a_non_empty_destination_is_refused_and_an_empty_one_is_used(download, tmp_path):
    archive, _ = download
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="busy is not empty"):
        prepare.unpack_archive(archive, busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare.unpack_archive(archive, empty) == empty and (empty / "train" / "PNEUMONIA").is_dir()


@pytest.mark.parametrize("member", ["../evil.jpeg", "chest_xray/../../train/NORMAL/evil.jpeg",
                                    "/tmp/train/NORMAL/evil.jpeg", "C:\\train\\NORMAL\\evil.jpeg",
                                    "__MACOSX/../../evil.jpeg"])
def test_a_member_that_escapes_the_destination_is_refused(download, tmp_path, member):
    archive, _ = download
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(member, b"\xff\xd8 not really \xff\xd9")
    dest = tmp_path / "out" / "chest_xray"
    with pytest.raises(UserError, match=r"would be written outside DEST .*nothing was written"):
        prepare.unpack_archive(archive, dest)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("evil.jpeg"))


def test_a_part_without_one_class_is_refused(tmp_path):
    files = {k: v for k, v in source_files(make_dataset(tmp_path / "src", PARTS)).items()
             if not k.startswith("test/PNEUMONIA")}
    archive = kaggle_zip(tmp_path, files)
    dest = tmp_path / "chest_xray"
    with pytest.raises(UserError, match=r"(?s)no images in test/PNEUMONIA:\npart .*\ntest +2 +0 +2\n.*both classes") as info:
        prepare.unpack_archive(archive, dest)
    assert "Nothing was written" in str(info.value) and not dest.exists()
    assert cli.main(["data", "prepare", str(archive), str(dest)]) == 2


def test_an_interrupted_prepare_leaves_nothing_behind(download, tmp_path, monkeypatch):
    archive, _ = download
    dest = tmp_path / "chest_xray"
    real = prepare.extract

    def interrupted(zf, plan, tmp, archive):
        plan.members = dict(list(plan.members.items())[:3])  # a few files written, then Ctrl-C
        real(zf, plan, tmp, archive)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.unpack_archive(archive, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chest-xray-pneumonia.zip", "src"]
    stale = tmp_path / ".chest_xray.incomplete-4194305"  # a killed prepare's folder: above any Linux pid
    (stale / "train").mkdir(parents=True)
    monkeypatch.setattr(prepare, "extract", real)
    prepare.unpack_archive(archive, dest)
    assert not stale.exists() and json.loads((dest / prepare.MARKER).read_text())["counts"]["val"] == {
        "NORMAL": 2, "PNEUMONIA": 2}


def test_a_damaged_member_is_refused_and_nothing_is_kept(download, tmp_path):
    archive, _ = download
    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".png") and "__MACOSX" not in i.filename)
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # the stored file's bytes
    raw[start + 20] ^= 0xFF
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "chest_xray"
    with pytest.raises(UserError, match="is damaged: .* cannot be read"):
        prepare.unpack_archive(archive, dest)
    assert not dest.exists() and not list(tmp_path.glob(".chest_xray.*"))


def test_other_inputs_say_what_to_pass(download, tmp_path):
    archive, _ = download
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(UserError, match="is not a zip archive"):
        prepare.unpack_archive(text, tmp_path / "a")
    with pytest.raises(UserError, match="not found; pass the downloaded .zip"):
        prepare.unpack_archive(tmp_path / "missing.zip", tmp_path / "a")
    with pytest.raises(UserError, match=f"is a folder, not an archive: it is unpacked already; pass --data "
                                        f"{tmp_path}/src"):
        prepare.unpack_archive(tmp_path, tmp_path / "a")
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat, "w") as z:
        z.writestr("images/IM-0001-0001.jpeg", b"x")
    with pytest.raises(UserError, match=r"holds no images in part/class folders: .*found 1 image\(s\) elsewhere"):
        prepare.unpack_archive(flat, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_a_symbolic_link_member_is_skipped_and_named_as_one(tmp_path, capsys):
    files = source_files(make_dataset(tmp_path / "src", PARTS))
    archive = tmp_path / "linked.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for rel, content in files.items():
            z.writestr(rel, content)
        link = zipfile.ZipInfo("train/NORMAL/IM-9999-0001.jpeg")
        link.external_attr = 0o120777 << 16  # a symbolic link, as `zip --symlinks` stores one
        z.writestr(link, "/etc/passwd")
    dest = tmp_path / "data"
    assert cli.main(["data", "prepare", str(archive), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "skipped: 1 symbolic link(s)" in out and "dot files" not in out
    assert not (dest / "train" / "NORMAL" / "IM-9999-0001.jpeg").exists()
    assert json.loads((dest / prepare.MARKER).read_text())["skipped"]["links"] == 1
