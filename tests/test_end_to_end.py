"""A tiny real run on generated data: train both folds, gather OOF, score it, infer, validate."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import write_config
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.core.config import load_config


# The real EfficientNet through train, infer, score and validate takes two minutes on 2 cores, most of
# it tracing the model's steps. `make test` runs the same path with the real model in the serve tests'
# trained run (train both folds, infer), and every stage with the tiny model (test_distributed,
# test_cnn_training, test_run_config); this full pass is in `make test-full`.
@pytest.mark.slow
def test_tiny_run_trains_scores_and_submits(tiny_data, tmp_path, capsys):
    path = write_config(tmp_path, tiny_data,
                        body="tta:\n  steps: 2\n  mode: random\n  prediction_batch_size: 16\n")
    config = load_config(path)
    run = tmp_path / "outputs" / "tiny"

    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 0
    fold0 = run / "fold0"
    for name in ("model.keras", "history.csv", "oof.csv", "state.json"):
        assert (fold0 / name).is_file(), name
    assert not (fold0 / "test.csv").exists()  # infer predicts the test images
    assert (run / "config.yaml").is_file()
    assert not (run / "oof.csv").exists()  # one fold of two: nothing gathered yet
    history = pd.read_csv(fold0 / "history.csv")
    assert history["epoch"].tolist() == [1]
    assert {"loss", "val_auc", "val_loss", "lr"} <= set(history.columns)

    oof0 = pd.read_csv(fold0 / "oof.csv")
    assert list(oof0.columns) == ["image_name", "patient_id", "target", "pred", "fold"]
    train_table = pd.read_csv(tiny_data["records"] / "train.csv")
    expected = set(train_table.loc[train_table["part"] % 2 == 0, "image_name"])
    assert set(oof0["image_name"]) == expected and len(oof0) == len(expected)
    assert oof0["pred"].between(0, 1).all()

    capsys.readouterr()
    assert cli.main(["train", "--config", str(path), "--fold", "all"]) == 0
    out = capsys.readouterr().out
    assert "fold 0: already finished" in out
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == len(train_table) and oof["image_name"].is_unique
    reported = float(re.search(r"OOF AUC over 2 folds: ([0-9.]+)", out).group(1))
    assert abs(reported - roc_auc_score(oof["target"], oof["pred"])) < 1e-4

    assert cli.main(["score", str(run / "oof.csv"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["auc"] == roc_auc_score(oof["target"], oof["pred"])
    assert round(scored["auc"], 4) == reported
    assert scored["n"] == len(oof) and scored["n_positive"] == int(oof["target"].sum())

    assert cli.main(["infer", "--config", str(path)]) == 0
    submission = pd.read_csv(tmp_path / "submissions" / "tiny.csv")
    sample = pd.read_csv(tiny_data["sample_submission"])
    assert list(submission.columns) == ["image_name", "target"]
    assert submission["image_name"].tolist() == sample["image_name"].tolist()
    assert submission["image_name"].is_unique
    assert submission["target"].between(0, 1).all()
    folds = [pd.read_csv(run / f"fold{k}" / "test.csv").set_index("image_name")["pred"] for k in (0, 1)]
    mean = (folds[0] + folds[1]) / 2
    np.testing.assert_allclose(submission.set_index("image_name")["target"], mean.loc[submission["image_name"]])
    assert cli.main(["validate", str(tmp_path / "submissions" / "tiny.csv"),
                     "--sample", tiny_data["sample_submission"]]) == 0
    assert config.name == "tiny"
