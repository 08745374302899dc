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
