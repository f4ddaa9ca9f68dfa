"""The ISIC 2024 flow end to end on tiny generated data, with the repository's three 2024 configs: records -> the
CNN (negative downsampling, checkpoint on pauc_tpr80) -> its test predictions -> the trees with the CNN stacked
in -> submission.csv (isic_id,target) validated against the sample -> score --json with pauc_tpr80. The flow uses
the tests' stand-in network; the real EfficientNet-Lite0 from its packaged ImageNet weights trains a fold of the
same config at 32 px; the diagnosis head is refused on these records."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import reliability_helpers as helpers
from conftest import REPO, isic2024_settings

from melanoma import cli
from melanoma.core import metrics
from melanoma.core.config import load_config
from melanoma.input import tbp_table
from melanoma.runs import run_config
from melanoma.train.families import trees

CNN = str(REPO / "configs" / "isic2024_cnn.yaml")
TABULAR = str(REPO / "configs" / "isic2024_tabular.yaml")
STACK = str(REPO / "configs" / "isic2024_stack.yaml")
SMALL_CNN = ["data.image_size=32", "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=4",
             "train.verbose=0", "tta.steps=2", "tta.prediction_batch_size=16", "data.negatives_per_positive=3",
             "train.checkpoint=best_pauc_tpr80"]


def test_the_2024_flow_from_records_to_a_scored_submission(isic2024_data, tmp_path, monkeypatch, capsys):
    helpers.install_tiny_model(monkeypatch)
    settings = isic2024_settings(isic2024_data, tmp_path)
    runs, sample = tmp_path / "outputs", pd.read_csv(isic2024_data["sample"])
    train_table = pd.read_csv(isic2024_data["records"] / "train.csv")

    assert cli.main(["train", "--config", CNN, "--set", *settings, *SMALL_CNN]) == 0
    cnn_oof = pd.read_csv(runs / "isic2024_cnn" / "oof.csv")
    assert sorted(cnn_oof["image_name"]) == sorted(train_table["image_name"])  # every crop scored
    history = pd.read_csv(runs / "isic2024_cnn" / "fold0" / "history.csv")
    assert "val_pauc_tpr80" in history and history["val_pauc_tpr80"].between(0, 0.2).all()
    state = json.loads((runs / "isic2024_cnn" / "fold0" / "state.json").read_text())
    assert state["monitor"] == "val_pauc_tpr80"
    assert state["best_epoch"] == int(history["val_pauc_tpr80"].idxmax()) + 1
    drawn = json.loads((runs / "isic2024_cnn" / "fold0" / "data.json").read_text())["negative_downsampling"]
    assert drawn["negatives_per_positive"] == 3 and drawn["benign_left_out"] > 0
    assert cli.main(["infer", "--config", CNN, "--set", *settings, *SMALL_CNN]) == 0
    cnn_submission = pd.read_csv(tmp_path / "submissions" / "isic2024_cnn.csv")
    assert list(cnn_submission.columns) == ["isic_id", "target"]

    assert cli.main(["train", "--config", STACK, "--set", *settings]) == 0
    saved = trees.load_model(str(runs / "isic2024_stack" / "fold1" / "model.joblib"))
    assert {"run_isic2024_cnn", "pdiff_run_isic2024_cnn", "prank_run_isic2024_cnn"} <= set(saved["columns"])
    assert cli.main(["infer", "--config", STACK, "--set", *settings]) == 0
    submission = tmp_path / "submissions" / "submission.csv"
    written = pd.read_csv(submission)
    assert list(written.columns) == ["isic_id", "target"] and written["isic_id"].tolist() == sample["isic_id"].tolist()
    assert cli.main(["validate", str(submission), "--sample", str(isic2024_data["sample"])]) == 0
    # the stacked test feature is the CNN's test prediction, the mean over its folds
    stacked = tbp_table.test_rows(load_config(STACK, settings), saved["vocabulary"]).frame
    by_name = cnn_submission.set_index("isic_id")["target"]
    np.testing.assert_allclose(stacked["run_isic2024_cnn"], by_name.loc[stacked["image_name"]])

    assert cli.main(["blend", str(runs / "isic2024_cnn"), str(runs / "isic2024_stack"), "--method", "rank",
                     "--name", "both"]) == 0
    blended = pd.read_csv(tmp_path / "submissions" / "blend-both.csv")
    assert list(blended.columns) == ["isic_id", "target"] and len(blended) == len(sample)  # the runs' id column

    capsys.readouterr()
    assert cli.main(["score", str(runs / "isic2024_stack" / "oof.csv"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    oof = pd.read_csv(runs / "isic2024_stack" / "oof.csv")
    assert scored["pauc_tpr80"] == pytest.approx(metrics.partial_auc_above_tpr(oof["target"], oof["pred"]))
    assert 0 <= scored["pauc_tpr80"] <= 0.2 and scored["n"] == len(train_table)


def test_a_submission_id_column_the_sample_lacks_is_exit_2_before_any_work(isic2024_data, tmp_path, capsys):
    settings = isic2024_settings(isic2024_data, tmp_path)
    assert cli.main(["train", "--config", TABULAR, "--set", *settings]) == 0
    assert cli.main(["infer", "--config", TABULAR, "--set", *settings, "submission.id_column=image_name"]) == 2
    err = capsys.readouterr().err
    assert "submission.id_column=isic_id" in err and "Traceback" not in err
    assert not (tmp_path / "outputs" / "isic2024_tabular" / "fold0" / "test.csv").exists()


def test_the_diagnosis_head_is_refused_on_2024_records(isic2024_data, tmp_path, capsys):
    settings = isic2024_settings(isic2024_data, tmp_path, *SMALL_CNN, "model.head=diagnosis", "model.weights=none")
    assert cli.main(["train", "--config", CNN, "--set", *settings]) == 2
    err = capsys.readouterr().err
    assert "model.head=diagnosis is refused for the ISIC 2024 records" in err and "basal and squamous" in err
    assert "Traceback" not in err and not (tmp_path / "outputs" / "isic2024_cnn" / "config.yaml").exists()


def test_the_2024_cnn_trains_a_fold_of_the_real_lite0_from_its_imagenet_weights(isic2024_data, tmp_path):
    """The config's own network (EfficientNet-Lite0, its packaged ImageNet weights, frozen batch norms), cheaply:
    32 px, one epoch of two steps, fold 0."""
    settings = isic2024_settings(isic2024_data, tmp_path, *SMALL_CNN, "train.epochs=1", "tta.steps=0")
    assert cli.main(["train", "--config", CNN, "--fold", "0", "--set", *settings]) == 0
    fold = tmp_path / "outputs" / "isic2024_cnn" / "fold0"
    oof = pd.read_csv(fold / "oof.csv")
    table = pd.read_csv(isic2024_data["records"] / "train.csv")
    assert sorted(oof["image_name"]) == sorted(table.loc[table["part"] % 2 == 0, "image_name"])
    assert oof["pred"].between(0, 1).all() and oof["pred"].nunique() > 1
    saved = run_config.read_saved_config(tmp_path / "outputs" / "isic2024_cnn")
    assert (saved.model.backbone, saved.model.weights, saved.model.freeze_batch_norm) == \
        ("efficientnet-lite0", "imagenet", True)
