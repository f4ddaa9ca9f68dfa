"""`score SUBMISSION --labels LABELS_CSV`: a submission scored against public test labels (a benchmark) with the
project's one AUC, its bootstrap interval and pAUC; ids missing on either side, labels without a target and
predictions that are not probabilities are refused with one line and exit status 2."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.core import metrics


def labelled(rows: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels as `records --isic2017` writes them, a submission in another row order with ties)."""
    rng = np.random.default_rng(seed)
    names = [f"ISIC_{index:07d}" for index in range(rows)]
    target = (rng.random(rows) < 0.25).astype(int)
    target[:2] = [0, 1]
    labels = pd.DataFrame({"image_name": names, "target": target,
                           "diagnosis": np.where(target == 1, "melanoma", "nevus")})
    pred = np.round(np.clip(0.4 * target + rng.random(rows) * 0.6, 0, 1), 2)
    submission = pd.DataFrame({"image_name": names, "target": pred}).sample(frac=1.0, random_state=seed)
    return labels, submission


def write(tmp_path, labels: pd.DataFrame, submission: pd.DataFrame) -> tuple[str, str]:
    labels.to_csv(tmp_path / "test_labels.csv", index=False)
    submission.to_csv(tmp_path / "submission.csv", index=False)
    return str(tmp_path / "submission.csv"), str(tmp_path / "test_labels.csv")


def test_json_auc_is_roc_auc_score_with_its_interval_and_pauc(tmp_path, capsys):
    labels, submission = labelled()
    paths = write(tmp_path, labels, submission)
    assert cli.main(["score", paths[0], "--labels", paths[1], "--json", "--bootstrap", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    matched = labels.merge(submission, on="image_name", suffixes=("", "_pred"))
    assert result["auc"] == roc_auc_score(matched["target"], matched["target_pred"])
    pauc = metrics.partial_auc_above_tpr(matched["target"], matched["target_pred"])
    assert result["pauc_tpr80"] == pytest.approx(pauc)
    low, high = result["ci95"]
    assert low < result["auc"] < high and result["bootstrap"] == 200
    assert result["n"] == 120 and result["n_positive"] == labels["target"].sum() and result["n_patients"] == 120


def test_the_table_and_patient_groups(tmp_path, capsys):
    labels, submission = labelled()
    labels["patient_id"] = [f"P{index // 2}" for index in range(len(labels))]  # copies resampled together
    paths = write(tmp_path, labels, submission)
    assert cli.main(["score", paths[0], "--labels", paths[1], "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("test AUC ") and "(50 patient resamples)" in printed and "pauc_tpr80" in printed
    assert cli.main(["score", paths[0], "--labels", paths[1], "--json", "--bootstrap", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_patients"] == 60 and result["ci95"] is None


@pytest.mark.parametrize("change, words", [
    (lambda labels, sub: (labels, sub.iloc[3:]), "submission.csv lacks 3 of the 120 labelled images"),
    (lambda labels, sub: (labels.iloc[:-2], sub),
     "has no label for 2 of the 120 predicted images (ISIC_0000118, ISIC_0000119)"),
    (lambda labels, sub: (labels.drop(columns="target"), sub), "lacks column(s) target"),
    (lambda labels, sub: (labels, sub.assign(target=sub["target"] + 0.5)), "outside [0, 1]"),
    (lambda labels, sub: (labels, sub.assign(target=sub["target"].where(sub["image_name"] != "ISIC_0000005"))),
     "NaN (missing) predictions for images ISIC_0000005"),
    (lambda labels, sub: (labels.assign(target=2), sub), "target must be 0 or 1"),
])
def test_mistakes_are_refused_with_one_line(tmp_path, capsys, change, words):
    paths = write(tmp_path, *change(*labelled()))
    assert cli.main(["score", paths[0], "--labels", paths[1]]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error, error
