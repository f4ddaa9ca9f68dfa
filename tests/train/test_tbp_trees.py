"""The ISIC 2024 tree family (model.family: tbp_trees): the tables beside the records, the records' folds, negative
downsampling of the training part only, the feature switches, importances on a subsample, the codes saved with
each fold so that the test rows predict from test.csv alone, and the refusals."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, isic2024_settings

from melanoma import cli
from melanoma.core.config import load_config
from melanoma.core.errors import ConfigError
from melanoma.input import tbp_features, tbp_table
from melanoma.train.families import family as family_lib
from melanoma.train.families import trees

TABULAR = str(REPO / "configs" / "isic2024_tabular.yaml")


@pytest.fixture(scope="module")
def tree_run(isic2024_data, tmp_path_factory) -> dict:
    """isic2024_tabular.yaml trained (2 folds, 3 benign rows per malignant one) and inferred on the tiny data."""
    folder = tmp_path_factory.mktemp("tbp-trees")
    settings = isic2024_settings(isic2024_data, folder, "data.negatives_per_positive=3", "trees.importance_rows=40")
    assert cli.main(["train", "--config", TABULAR, "--set", *settings]) == 0
    assert cli.main(["infer", "--config", TABULAR, "--set", *settings]) == 0
    return {"folder": folder, "run": folder / "outputs" / "isic2024_tabular", "settings": settings}


def test_every_training_row_is_scored_in_the_fold_of_its_records_part(isic2024_data, tree_run):
    table = pd.read_csv(isic2024_data["records"] / "train.csv")
    oof = pd.read_csv(tree_run["run"] / "oof.csv")
    assert sorted(oof["image_name"]) == sorted(table["image_name"])  # every row, though training was sampled
    by_name = table.set_index("image_name").loc[oof["image_name"]]
    assert (oof["fold"].to_numpy() == by_name["part"].to_numpy() % 2).all()
    assert (oof["patient_id"].to_numpy() == by_name["patient_id_code"].to_numpy()).all()  # the records' codes
    assert (oof["target"].to_numpy() == by_name["target"].to_numpy()).all() and oof["pred"].between(0, 1).all()
    for fold in (0, 1):
        summary = json.loads((tree_run["run"] / f"fold{fold}" / "data.json").read_text())
        training = table[table["part"] % 2 != fold]
        malignant = int(training["target"].sum())
        assert summary["training"]["malignant"] == malignant
        assert summary["training"]["images"] == malignant + min(3 * malignant, len(training) - malignant)
        assert summary["negative_downsampling"]["benign_left_out"] == len(training) - summary["training"]["images"]
        assert summary["validation"]["images"] == int((table["part"] % 2 == fold).sum())
        importance = pd.read_csv(tree_run["run"] / f"fold{fold}" / "importance.csv")
        valid = table[table["part"] % 2 == fold]
        assert set(importance["rows"]) == {min(len(valid), max(40, int(valid["target"].sum())))}
        assert {"derived", "patient context", "measurements", "clinical"} <= set(importance["group"])


def test_the_submission_takes_the_samples_ids_and_the_test_rows_predict_from_test_csv_alone(
        isic2024_data, tree_run, tmp_path):
    submission = pd.read_csv(tree_run["folder"] / "submissions" / "isic2024_tabular.csv")
    sample = pd.read_csv(isic2024_data["sample"])
    assert list(submission.columns) == ["isic_id", "target"]
    assert submission["isic_id"].tolist() == sample["isic_id"].tolist() and submission["target"].between(0, 1).all()
    saved = trees.load_model(str(tree_run["run"] / "fold0" / "model.joblib"))
    assert saved["vocabulary"] == tbp_features.vocabularies(pd.read_csv(isic2024_data["records"] / "train.csv"))
    # the notebook's case: test records and test.csv alone (records --isic2024 --test-only), no train.csv near
    alone = tmp_path / "test-records"
    assert cli.main(["records", "--isic2024", str(isic2024_data["download"]), "--test-only", "--out", str(alone),
                     "--encodings", str(isic2024_data["records"] / "encodings.json"), "--workers", "1"]) == 0
    assert not list(alone.glob("train*"))
    config = tree_run["settings"] + [f"data.test_files={alone}/test*.tfrec", "submission.file_name=submission.csv"]
    assert cli.main(["infer", "--config", TABULAR, "--set", *config]) == 0
    again = pd.read_csv(tree_run["folder"] / "submissions" / "submission.csv")
    pd.testing.assert_frame_equal(again, submission)


def test_the_switches_choose_the_feature_groups(isic2024_data, tmp_path):
    settings = isic2024_settings(isic2024_data, tmp_path)
    every = tbp_table.training_rows(load_config(TABULAR, settings))
    plain = tbp_table.training_rows(load_config(TABULAR, settings + ["features.tbp_derived=false",
                                                                      "features.patient_context=false"]))
    groups = {tbp_features.feature_group(column) for column in plain.columns}
    assert groups == {"measurements", "clinical"} and len(plain.columns) == 41
    assert set(every.columns) > set(plain.columns)
    assert {tbp_features.feature_group(c) for c in set(every.columns) - set(plain.columns)} == {"derived",
                                                                                                 "patient context"}
    assert len(every.frame) == len(pd.read_csv(isic2024_data["records"] / "train.csv"))


def test_importance_rows_keep_every_malignant_row_and_groups_alone_are_few_shuffles():
    target = np.array([0] * 95 + [1] * 5)
    rows = trees.importance_rows(target, 20, seed=0)
    assert len(rows) == 20 and set(np.flatnonzero(target)) <= set(rows) and (np.diff(rows) > 0).all()
    assert (trees.importance_rows(target, None, seed=0) == np.arange(100)).all()
    assert len(trees.importance_rows(target, 3, seed=0)) == 5  # malignant rows are never left out
    columns = ["tbp_lv_A", "pdiff_tbp_lv_A", "colour_contrast", "sex"]
    by_feature = trees.importance_sets(columns, tbp_features.feature_group)
    by_group = trees.importance_sets(columns, tbp_features.feature_group, by="group")
    assert [kind for kind, *_ in by_group] == ["group"] * 4 and len(by_feature) == 3 + 4
    assert ("feature", "tbp_lv_A", "measurements", [0, 1]) in by_feature


def test_a_table_that_disagrees_with_its_records_or_is_missing_is_exit_2(isic2024_data, tmp_path, capsys):
    copy = tmp_path / "records"
    shutil.copytree(isic2024_data["records"], copy)
    table = pd.read_csv(copy / "train.csv")
    table.iloc[1:].to_csv(copy / "train.csv", index=False)
    settings = isic2024_settings(isic2024_data, tmp_path, f"data.train_files={copy}/train*.tfrec")
    assert cli.main(["train", "--config", TABULAR, "--set", *settings]) == 2
    err = capsys.readouterr().err
    assert "disagree" in err and f"part {table['part'].iloc[0]}" in err and "Traceback" not in err
    (copy / "train.csv").unlink()
    assert cli.main(["train", "--config", TABULAR, "--set", *settings]) == 2
    assert "records --isic2024" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "isic2024_tabular" / "config.yaml").exists()  # refused before the run


def test_serve_refuses_a_tbp_tree_run_with_what_to_do(isic2024_data, tmp_path):
    config = load_config(TABULAR, isic2024_settings(isic2024_data, tmp_path))
    with pytest.raises(ConfigError, match="serve a CNN run instead"):
        family_lib.lookup(config).serving(config, str(tmp_path), [0])


def test_pseudo_labels_are_refused_by_the_tbp_trees(isic2024_data, tmp_path, capsys):
    settings = isic2024_settings(isic2024_data, tmp_path, "pseudo_labels.source=outputs/demo")
    assert cli.main(["train", "--config", TABULAR, "--set", *settings]) == 2
    err = capsys.readouterr().err
    assert "tbp_trees does not take pseudo-labels" in err and "pseudo_labels.source=null" in err
    assert not (tmp_path / "outputs" / "isic2024_tabular").exists()
