"""split.json: a run's parts written once, and read (never drawn again) by its trials, its report, `resume` and
`evaluate`: an image changed since the run is named, never scored or trained on silently."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import make_dataset
from lungsearch import data, train
from lungsearch.config import TrialConfig, UserError


@pytest.fixture
def stored(tmp_path) -> tuple[Path, Path]:
    """A dataset and its target split written as a run writes it, with a quarter training share."""
    folder = make_dataset(tmp_path / "xrays", {"train": 12, "test": 6})
    ds = data.scan(folder)
    split = data.make_split(ds, "target", seed=3)
    path = tmp_path / "split.json"
    data.write_split(path, data.split_record(ds, split, "target", 3, (0.5,)))
    return folder, path


def trial(folder: Path, path: Path, **changes) -> TrialConfig:
    return TrialConfig(data_dir=str(folder), cache_dir=str(folder.parent / "cache"), split="target", image_size=32,
                       split_file=str(path), **changes)


def test_a_trial_trains_on_exactly_the_files_split_json_lists(stored):
    folder, path = stored
    record = json.loads(path.read_text())
    ds = data.scan(folder)
    x, y, parts = train.trial_data(trial(folder, path))
    assert len(x) == len(record["parts"]["train"]) and len(parts["val"][0]) == len(record["parts"]["val"])
    dropped = record["parts"]["train"].pop(0)  # edit the stored split: the trial follows it, not the seed
    record["parts"]["val"].append(dropped)
    path.write_text(json.dumps(record))
    x2, _, parts2 = train.trial_data(trial(folder, path))
    assert len(x2) == len(x) - 1 and len(parts2["val"][0]) == len(parts["val"][0]) + 1
    assert ds.files.index(dropped[0]) in data.read_split(path, ds)["val"]
    share, _, _ = train.trial_data(trial(folder, path, data_fraction=0.5))
    assert len(share) == len(record["train_shares"]["0.5"])


def test_a_changed_or_missing_image_is_an_error_naming_it_not_a_silent_rebuild(stored):
    folder, path = stored
    record = json.loads(path.read_text())
    name = record["parts"]["test"][0][0]
    img = folder / name
    shutil.copy(folder / record["parts"]["test"][1][0], img)  # other pixels under the same name
    with pytest.raises(UserError, match=r"1 changed \(e.g. .*" + Path(name).name):
        data.read_split(path, data.scan(folder))
    img.unlink()
    with pytest.raises(UserError, match=r"1 missing or unreadable .*point --data at the dataset the run used"):
        data.read_split(path, data.scan(folder))


def test_a_split_file_of_a_newer_format_is_refused(stored):
    folder, path = stored
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": data.SPLIT_FORMAT + 1}))
    with pytest.raises(UserError, match=rf"split .*split.json is format_version {data.SPLIT_FORMAT + 1}, and this "
                                        rf"lungsearch reads format {data.SPLIT_FORMAT} at most: the run was made by a "
                                        rf"newer lungsearch"):
        data.read_split(path, data.scan(folder))


SPACE = '''"""One small model, one epoch."""
import keras_tuner as kt
hp = kt.HyperParameters()
hp.Choice("dense_units", [8])
SETTINGS = {"num_samples": 1, "fixed_points": False, "max_epochs": 1, "image_size": 32, "max_failures": 0}
'''


def test_resume_report_and_evaluate_each_name_an_image_changed_after_the_run(dataset, cache_dir, tmp_path, capsys):
    """A real run lists its images in split.json; one of them then gets another image's pixels. `resume` and
    `report` refuse the run's data folder, naming both fingerprints and the file; `evaluate` refuses to score the
    folder, naming the file, until the image is put back."""
    from lungsearch import cli

    (tmp_path / "space.py").write_text(SPACE)
    assert cli.main(["run", str(tmp_path / "space.py"), "--data", str(dataset), "--results", str(tmp_path / "results"),
                     "--cpus-per-trial", "1"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["status"] == "finished"
    before = manifest["data"]["fingerprint"]
    parts = json.loads((run_dir / data.SPLIT_FILE).read_text())["parts"]
    listed = {f for entries in parts.values() for f, _ in entries}
    first, second = sorted(f for f in listed if f.startswith("test/PNEUMONIA/"))[:2]
    original = (dataset / first).read_bytes()
    (dataset / first).write_bytes((dataset / second).read_bytes())  # the same name, another image's pixels
    try:
        after = data.scan(dataset).fingerprint
        which = f"of the images split.json lists, 1 changed (e.g. {first})"

        assert cli.main(["resume", str(run_dir)]) == 2
        assert capsys.readouterr().err.startswith(
            f"error: cannot resume {run_dir}: its data folder {dataset} has changed since the run started (fingerprint "
            f"now {after}, the run's {before} in manifest.json; {which}), so the resumed search would train and score "
            f"on other images than its trials so far. Put the run's images back, or start a new run on the changed "
            f"data: `python -m lungsearch run")
        assert cli.main(["report", str(run_dir)]) == 2
        assert capsys.readouterr().err == (
            f"error: dataset {dataset} has fingerprint {after} but the run used {before}: the files changed ({which}), so "
            f"the run's parts are not the images it trained and scored on; pass --data DIR with the dataset the run was "
            f"trained on\n")
        card = run_dir / "best_model.json"
        assert cli.main(["evaluate", str(card), "--data", str(dataset)]) == 2
        out = capsys.readouterr()
        assert "threshold" not in out.out and out.err == (
            f"error: 1 image of {dataset / 'test'} changed since the model's run listed it in {run_dir / 'split.json'}: "
            f"{first} (same name, other content). This folder holds the run's images, but not as the run found them, "
            f"so its metrics would not be the run's; put the run's images back, or score images the run never listed "
            f"in a folder of their own\n")
    finally:
        (dataset / first).write_bytes(original)  # put back: the run's images again (the dataset is shared)
    assert cli.main(["evaluate", str(card), "--data", str(dataset)]) == 0
    assert "threshold 0.5000 (default)" in capsys.readouterr().out
