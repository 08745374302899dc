"""evaluate and predict on a tiny saved model: messages that say what is wrong, and nothing said silently."""
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import make_dataset, truncate, write_image, xray
from lungsearch import predict
from lungsearch.config import UserError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny model taking 8 x 8 greyscale images, saved as a .keras file with no card beside it."""
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.save(path)
    return path


def copy_model(model_file: Path, folder: Path, name: str = "best_model.keras") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(model_file, folder / name))


def test_a_corrupt_keras_file_exists_but_is_not_loadable(model_file, tmp_path):
    for content in (b"", b"not a model", model_file.read_bytes()[:300]):
        bad = tmp_path / "bad.keras"
        bad.write_bytes(content)
        with pytest.raises(UserError, match=r"bad.keras exists but is not a loadable Keras model \(it is not a "
                                            r"\.keras \(zip\) archive") as info:
            predict.load_predictor(bad)
        assert "not found" not in str(info.value).lower()
        assert isinstance(info.value.__cause__, ValueError)  # the underlying error is chained


def test_a_damaged_archive_names_the_underlying_error(model_file, tmp_path):
    import zipfile
    bad = tmp_path / "noconfig.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("metadata.json", "{}")
    with pytest.raises(UserError, match=r"exists but is not a loadable Keras model \(KeyError: .*config.json") as info:
        predict.load_model(bad)
    assert isinstance(info.value.__cause__, KeyError)


def test_load_model_does_not_hide_bugs_as_user_errors(model_file, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the loading code")
    monkeypatch.setattr(keras.saving, "load_model", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        predict.load_model(model_file)


def test_a_folder_passed_as_image_or_model_says_it_is_a_folder(model_file, tmp_path, capsys):
    folder = tmp_path / "xrays"
    folder.mkdir()
    assert predict.predict(model_file, [str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read {folder}: it is a folder: predict takes image files" in err
    assert "file not found" not in err and "evaluate" in err
    with pytest.raises(UserError, match=f"model {tmp_path} is a folder; pass a .keras file"):
        predict.load_predictor(tmp_path)
    images = make_dataset(tmp_path / "data", {"test": 1})
    assert predict.predict(model_file, [str(images / "test" / "NORMAL")]) == 1
    hint = f"lungsearch evaluate MODEL --data {images / 'test'}`"
    assert hint in capsys.readouterr().err
    assert predict.evaluate_folder(model_file, str(images / "test")) == 0  # the hint works


def test_a_bad_card_and_a_foreign_model_are_user_errors(model_file, tmp_path, capsys):
    from lungsearch import cli

    model = copy_model(model_file, tmp_path / "run")
    card = tmp_path / "run" / "best_model.json"
    image = tmp_path / "IM-0001-0001.png"
    write_image(image, xray(0, np.random.default_rng(0)), "grey")
    for bad, found in [({"threshold": "high"}, "'high'"), ({"threshold": 7}, "7"), ({"threshold": True}, "True")]:
        card.write_text(json.dumps({"model": "best_model.keras", "image_size": 8, **bad}))
        for given in (model, card):
            assert cli.main(["predict", str(given), str(image)]) == 2
            err = capsys.readouterr().err
            assert f"bad model card {card}: its threshold must be a number in [0, 1], got {found}" in err, err
    card.write_text(json.dumps({"members": ["best_model.keras"]}))
    with pytest.raises(UserError, match="bad model card .*'members' must be a list of objects"):
        predict.load_predictor(card)

    foreign = tmp_path / "imagenet_like.keras"  # three colour channels in, two classes out
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]).save(foreign)
    assert cli.main(["predict", str(foreign), str(image)]) == 2
    err = capsys.readouterr().err
    assert (f"model {foreign} is not a lungsearch model: it takes (None, 8, 8, 3) and gives (None, 2), where a "
            f"lungsearch model takes square greyscale images (None, S, S, 1)") in err and "Traceback" not in err


def test_a_card_for_another_input_size_is_refused(model_file, tmp_path):
    path = copy_model(model_file, tmp_path / "run")
    card = {"model": "best_model.keras", "image_size": 150, "threshold": 0.3, "config": {"image_size": 150}}
    (tmp_path / "run" / "best_model.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match=r"does not belong to .*best_model.keras: the card is for 150 px input.*"
                                        r"the model takes 8 px"):
        predict.load_predictor(path)
    with pytest.raises(UserError, match="says best_model.keras takes 150 px input, but that file's model takes 8 px"):
        predict.load_predictor(tmp_path / "run" / "best_model.json")
    (tmp_path / "run" / "best_model.json").write_text(json.dumps({"model": "best_model.keras", "config": {}}))
    assert predict.load_predictor(path).threshold == 0.5  # a card without a size is not judged by it


def test_a_card_naming_another_model_file_warns(model_file, tmp_path, capsys):
    path = copy_model(model_file, tmp_path, "renamed.keras")
    (tmp_path / "renamed.json").write_text(json.dumps({"model": "best_model.keras", "image_size": 8,
                                                       "threshold": 0.3}))
    predictor = predict.load_predictor(path)
    assert predictor.threshold == 0.3
    err = capsys.readouterr().err
    assert "warning: model card" in err and "describes the model best_model.keras, not renamed.keras" in err
    (tmp_path / "renamed.json").write_text(json.dumps({"model": "renamed.keras", "image_size": 8, "threshold": 0.3}))
    predict.load_predictor(path)
    assert capsys.readouterr().err == ""


def test_one_class_evaluation_says_auc_is_undefined(model_file, tmp_path, capsys):
    root = make_dataset(tmp_path / "normal_only", {"test": 2})
    shutil.rmtree(root / "test" / "PNEUMONIA")
    (root / "test" / "PNEUMONIA").mkdir()
    assert predict.evaluate_folder(model_file, root) == 0
    out = capsys.readouterr()
    assert "4 images, 4 NORMAL / 0 PNEUMONIA" in out.out
    assert "auc nan" not in out.out and "auc undefined (one class)" in out.out
    assert "every image is NORMAL: AUC is undefined with one class" in out.err


def test_two_class_evaluation_prints_auc(model_file, tmp_path, capsys):
    root = make_dataset(tmp_path / "both", {"test": 2})
    truncate(sorted((root / "test" / "NORMAL").glob("*.jpg"))[0])
    assert predict.evaluate_folder(model_file, root) == 0
    out = capsys.readouterr()
    assert "7 images" in out.out and "undefined" not in out.out and "skipped 1 unreadable" in out.err
    assert float(out.out.split("auc ")[1].split(",")[0]) >= 0


def run_folder(model_file: Path, folder: Path, data_dir: Path, protocol: str, seed: int = 0, data_limit: int = 0,
               unreadable=(), card_run_dir: str | None = None) -> Path:
    """A run folder as `report` leaves it, written by hand: best_model.keras, its card, the manifest and split.json
    (the split of the dataset less its `unreadable` files, as the run drew it)."""
    from lungsearch import data

    fingerprint = data.scan(data_dir).fingerprint
    path = copy_model(model_file, folder)
    card = {"model": "best_model.keras", "image_size": 8, "threshold": 0.5, "data_fingerprint": fingerprint,
            "split_protocol": protocol, "run_dir": card_run_dir or str(folder), "config": {}}
    (folder / "best_model.json").write_text(json.dumps(card))
    manifest = {"run_constants": {"data_dir": str(data_dir), "split": protocol, "seed": seed, "data_limit": data_limit,
                                  "image_size": 8},
                "data": {"fingerprint": fingerprint, "unreadable": sorted(unreadable)}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    ds = data.scan(data_dir).without(set(unreadable))
    data.write_split(folder / data.SPLIT_FILE,
                     data.split_record(ds, data.make_split(ds, protocol, seed, data_limit), protocol, seed))
    return path


@pytest.mark.parametrize("protocol, seed, data_limit", [("patient", 0, 0), ("report", 3, 0), ("patient", 1, 12)])
def test_evaluate_counts_the_images_the_model_was_trained_and_validated_on(model_file, tmp_path, cache_dir, capsys,
                                                                            protocol, seed, data_limit):
    from lungsearch import data

    root = make_dataset(tmp_path / "data", {"train": 12})  # no test/: evaluate scores every image
    bad = sorted((root / "train" / "PNEUMONIA").glob("*.jpg"))[0]
    truncate(bad)  # unreadable: the run left it out before splitting, and evaluate skips it
    ds, _ = data.load_images(root, 8, cache_dir, log=lambda _: None)  # the dataset as the run split it
    split = data.make_split(ds, protocol, seed, data_limit)
    model = run_folder(model_file, tmp_path / "run", root, protocol, seed, data_limit,
                       [str(bad.relative_to(root))])
    assert predict.evaluate_folder(model, root) == 0
    err = capsys.readouterr().err
    scored = len(ds.files)
    assert (f"warning: {len(split['train'])} of the {scored} scored images were in this model's training part and "
            f"{len(split['val'])} in its validation part: these metrics are optimistic (run {tmp_path / 'run'}, "
            f"{protocol} split; compared by file content)") in err
    assert "could not check" not in err


def test_evaluate_on_the_run_test_folder_finds_no_overlap_and_target_counts_the_validation_half(
        model_file, tmp_path, capsys):
    from lungsearch import data

    root = make_dataset(tmp_path / "data", {"train": 6, "test": 4})
    model = run_folder(model_file, tmp_path / "run", root, "patient")
    assert predict.evaluate_folder(model, root) == 0
    out = capsys.readouterr()
    assert ("data overlap: none of the 16 scored images is in this model's training or validation part (run "
            f"{tmp_path / 'run'}, patient split; compared by file content): 16 are in its test part") in out.out
    assert "warning" not in out.err
    model = run_folder(model_file, tmp_path / "target", root, "target")
    split = data.make_split(data.scan(root), "target", 0, 0)
    assert predict.evaluate_folder(model, root) == 0
    err = capsys.readouterr().err
    assert (f"warning: 0 of the 16 scored images were in this model's training part and {len(split['val'])} in its "
            f"validation part: these metrics are optimistic") in err
    assert "comes from a search on the target split" in err  # the warning the card alone gives, kept


def test_evaluate_says_when_overlap_cannot_be_checked(model_file, tmp_path, capsys):
    root = make_dataset(tmp_path / "data", {"train": 6})
    run = tmp_path / "run"
    model = run_folder(model_file, run, root, "patient", card_run_dir=str(tmp_path / "moved-away"))
    assert predict.evaluate_folder(model, root) == 0  # the card's run_dir is gone, but the manifest sits beside the card
    assert "were in this model's training part" in capsys.readouterr().err
    (run / "manifest.json").unlink()
    assert predict.evaluate_folder(model, root) == 0
    err = capsys.readouterr().err
    assert (f"note: could not check whether these images overlap the model's training and validation data: its run "
            f"folder {tmp_path / 'moved-away'} (manifest.json) is not reachable") in err
    model = run_folder(model_file, run, root, "patient")
    (run / "split.json").unlink()
    assert predict.evaluate_folder(model, root) == 0
    assert f"could not check whether these images overlap the model's training and validation data: cannot read " \
           f"the run's split {run / 'split.json'}" in capsys.readouterr().err
    assert predict.evaluate_folder(model_file, root) == 0
    assert "the model has no card naming its run" in capsys.readouterr().err


def test_evaluate_refuses_the_runs_images_changed_since_and_scores_another_dataset(model_file, tmp_path, capsys):
    """The run's own folder, a copy of it and its test/ folder passed directly all hold the run's images: one the
    run listed with other content is an error naming it. Another dataset that reuses the names is scored."""
    root = make_dataset(tmp_path / "data", {"train": 6, "test": 4})
    model = run_folder(model_file, tmp_path / "run", root, "patient")
    first, second = sorted((root / "test" / "PNEUMONIA").iterdir())[:2]
    first.write_bytes(second.read_bytes())  # other pixels under a name the run listed
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    for folder in (root, copy, copy / "test"):
        with pytest.raises(UserError) as err:
            predict.evaluate_folder(model, folder)
        assert str(err.value) == (
            f"1 image of {folder if folder.name == 'test' else folder / 'test'} changed since the model's run listed "
            f"it in {tmp_path / 'run' / 'split.json'}: test/PNEUMONIA/{first.name} (same name, other content). This "
            f"folder holds the run's images, but not as the run found them, so its metrics would not be the run's; "
            f"put the run's images back, or score images the run never listed in a folder of their own")
    other = make_dataset(tmp_path / "other", {"train": 6, "test": 4}, seed=1)  # the same names, other images
    assert predict.evaluate_folder(model, other) == 0
    assert "none of the 16 scored images is in this model's training or validation part" in capsys.readouterr().out


def test_predict_names_the_threshold_before_the_labels_and_applies_the_calibration(model_file, tmp_path, capsys):
    path = copy_model(model_file, tmp_path / "run")
    images = sorted((make_dataset(tmp_path / "xrays", {"test": 1}) / "test").rglob("*.jp*g"))[:2]
    assert predict.predict(path, [str(p) for p in images]) == 0
    head, *plain = capsys.readouterr().out.strip().splitlines()
    assert head == ("# probability of PNEUMONIA, uncalibrated; label PNEUMONIA above threshold 0.5000 (the default: "
                    "no model card with a threshold beside the model)")
    card = {"model": "best_model.keras", "image_size": 8, "threshold": 0.3,
            "calibration": {"method": "platt", "a": 2.0, "b": 0.5, "fitted_on": "validation part"}}
    (tmp_path / "run" / "best_model.json").write_text(json.dumps(card))
    assert predict.predict(path, [str(p) for p in images]) == 0
    head, *calibrated = capsys.readouterr().out.strip().splitlines()
    shown = 1 / (1 + np.exp(-(2.0 * np.log(0.3 / 0.7) + 0.5)))
    assert f"label PNEUMONIA above threshold {shown:.4f}" in head and "0.3000 before calibration" in head
    assert "from best_model.json" in head and "temperature 0.50" in head
    for raw, cal in zip(plain, calibrated):
        p = float(raw.split("\t")[1])
        q = float(cal.split("\t")[1])
        assert q == pytest.approx(1 / (1 + np.exp(-(2.0 * np.log(p / (1 - p)) + 0.5))), abs=2e-4)
        assert cal.split("\t")[2] == ("PNEUMONIA" if p > 0.3 else "NORMAL")
