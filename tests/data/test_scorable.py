"""Data that cannot be scored is refused before training, in every family: training images of one class, or a
fold whose validation images lack a class, exit status 2 with the counts, and no fold is trained."""
from __future__ import annotations

import pandas as pd
import pytest
import reliability_helpers as helpers
from conftest import write_config

from melanoma import cli
from melanoma.core.errors import DataError
from melanoma.data import make_records, scorable

TABULAR = "model:\n  family: tabular\nfeatures:\n  histogram_bins: 4\n  workers: 1\ntrees:\n  max_iter: 5\n"


def records_with_targets(jpeg_data, out, malignant: int) -> dict:
    """The tiny data's records with only its first `malignant` malignant images kept malignant."""
    table = pd.read_csv(jpeg_data / "original.csv")
    keep = table.index[table["target"] == 1][:malignant]
    table["target"] = 0
    table.loc[keep, "target"] = 1
    table.to_csv(jpeg_data / "train.csv", index=False)
    make_records.build_records(str(jpeg_data / "train.csv"), str(jpeg_data / "test.csv"),
                               str(jpeg_data / "jpeg" / "train"), str(jpeg_data / "jpeg" / "test"), str(out),
                               size=32, parts=6, test_parts=3, workers=1)
    return {"records": out, "sample_submission": jpeg_data / "sample_submission.csv"}


@pytest.mark.parametrize("body", ["", TABULAR], ids=["cnn", "tabular"])
def test_one_class_or_a_fold_without_malignant_images_is_refused_before_any_fold(jpeg_data, tmp_path, capsys,
                                                                                monkeypatch, body):
    helpers.install_tiny_model(monkeypatch)
    (jpeg_data / "original.csv").write_bytes((jpeg_data / "train.csv").read_bytes())
    data = records_with_targets(jpeg_data, tmp_path / "records", malignant=0)
    config = write_config(tmp_path, data, body)
    assert cli.main(["train", "--config", str(config), "--fold", "all"]) == 2
    err = capsys.readouterr().err
    assert "data.train_files hold" in err and "and 0 malignant" in err and "Traceback" not in err, err
    data = records_with_targets(jpeg_data, tmp_path / "one", malignant=1)  # one part holds the malignant image
    config = write_config(tmp_path, data, body)
    assert cli.main(["train", "--config", str(config), "--fold", "all"]) == 2
    err = capsys.readouterr().err
    assert "cannot be scored: its validation images are" in err and "and 0 malignant" in err, err
    assert not list((tmp_path / "outputs").glob("tiny/fold*/oof.csv"))


def test_the_rule_names_the_fold_and_the_counts():
    targets = pd.Series([0, 0, 1, 0, 1, 0])
    scorable.check_folds(targets, pd.Series([0, 1, 0, 1, 1, 0]), 2)  # both classes everywhere
    with pytest.raises(DataError, match=r"fold 1 cannot be scored: its validation images are 2 benign and 0 mal"):
        scorable.check_folds(targets, pd.Series([0, 1, 0, 1, 0, 2]) % 2, 2)
    with pytest.raises(DataError, match="data.train_files hold 3 benign and 0 malignant"):
        scorable.check_folds(pd.Series([0, 0, 0]), pd.Series([0, 1, 0]), 2)
    scorable.check_folds(pd.Series([0, 1, 0, 1]), pd.Series([0, 0, 1, 1]), 2, training_too=False)
    with pytest.raises(DataError, match="fold 3's training images hold 2 benign and 0 malignant"):
        scorable.check_training(pd.Series([0, 0]), "fold 3's training images")
    with pytest.raises(DataError, match="set data.folds to at most 2"):
        scorable.check_folds(targets, pd.Series([0, 1, 0, 1, 1, 2]), 3)


def test_tbp_trees_refuses_a_fold_without_malignant_rows_before_fitting(monkeypatch):
    from types import SimpleNamespace

    from melanoma.core import config as config_lib
    from melanoma.train.families import tbp_trees

    frame = pd.DataFrame({"target": [1, 0, 0, 0, 1, 0], "part": [0, 1, 2, 3, 2, 1]})
    monkeypatch.setattr(tbp_trees.tbp_table, "training_rows", lambda config: SimpleNamespace(frame=frame))
    config = config_lib.load_config("configs/isic2024_tabular.yaml", ["data.folds=2"])
    with pytest.raises(DataError, match=r"fold 1 cannot be scored: its validation images are 3 benign and 0"):
        tbp_trees.Training(config)
