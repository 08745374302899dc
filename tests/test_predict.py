"""evaluate and predict on a tiny saved model: messages that say what is wrong, and nothing said silently."""
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import make_dataset, truncate
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
            predict.load(bad)
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
        predict.load(tmp_path)


def test_a_card_for_another_input_size_is_refused(model_file, tmp_path):
    path = copy_model(model_file, tmp_path / "run")
    card = {"model": "best_model.keras", "image_size": 150, "threshold": 0.3, "config": {"image_size": 150}}
    (tmp_path / "run" / "best_model.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match=r"does not belong to .*best_model.keras: the card is for 150 px input.*"
                                        r"the model takes 8 px"):
        predict.load(path)
    with pytest.raises(UserError, match="says best_model.keras takes 150 px input, but that file's model takes 8 px"):
        predict.load(tmp_path / "run" / "best_model.json")
    (tmp_path / "run" / "best_model.json").write_text(json.dumps({"model": "best_model.keras", "config": {}}))
    assert predict.load(path).threshold == 0.5  # a card without a size is not judged by it


def test_a_card_naming_another_model_file_warns(model_file, tmp_path, capsys):
    path = copy_model(model_file, tmp_path, "renamed.keras")
    (tmp_path / "renamed.json").write_text(json.dumps({"model": "best_model.keras", "image_size": 8,
                                                       "threshold": 0.3}))
    predictor = predict.load(path)
    assert predictor.threshold == 0.3
    err = capsys.readouterr().err
    assert "warning: model card" in err and "describes the model best_model.keras, not renamed.keras" in err
    (tmp_path / "renamed.json").write_text(json.dumps({"model": "renamed.keras", "image_size": 8, "threshold": 0.3}))
    predict.load(path)
    assert capsys.readouterr().err == ""


def test_one_class_evaluation_says_auc_is_undefined(model_file, tmp_path, capsys):
    root = make_dataset(tmp_path / "normal_only", {"test": 2})
    shutil.rmtree(root / "test" / "PNEUMONIA")
    (root / "test" / "PNEUMONIA").mkdir()
    assert predict.evaluate(model_file, root) == 0
    out = capsys.readouterr()
    assert "4 images, 4 NORMAL / 0 PNEUMONIA" in out.out
    assert "auc nan" not in out.out and "auc undefined (one class)" in out.out
    assert "every image is NORMAL: AUC is undefined with one class" in out.err


def test_two_class_evaluation_prints_auc(model_file, tmp_path, capsys):
    root = make_dataset(tmp_path / "both", {"test": 2})
    truncate(sorted((root / "test" / "NORMAL").glob("*.jpg"))[0])
    assert predict.evaluate(model_file, root) == 0
    out = capsys.readouterr()
    assert "7 images" in out.out and "undefined" not in out.out and "skipped 1 unreadable" in out.err
    assert float(out.out.split("auc ")[1].split(",")[0]) >= 0
