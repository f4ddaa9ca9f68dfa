"""Per-class evaluation (melanoma.evaluate.perclass) on hand-worked examples, and the report's confusion matrices
(no training, no TensorFlow)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melanoma.core.errors import DataError
from melanoma.data import taxonomy
from melanoma.evaluate import perclass, report

PNG = b"\x89PNG\r\n\x1a\n"


def class_frame(truth: list[str], rows: list[dict]) -> pd.DataFrame:
    """An OOF table of the diagnosis head: `rows` give some classes' probabilities, the rest are 0."""
    frame = pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(len(truth))],
                          "patient_id": [f"IP_{i}" for i in range(len(truth))],
                          "target": [int(t == "MEL") for t in truth], "fold": [i % 2 for i in range(len(truth))],
                          "diagnosis": truth})
    for cls in taxonomy.DIAGNOSIS_CLASSES:
        frame[f"p_{cls}"] = [row.get(cls, 0.0) for row in rows]
    frame["pred"] = frame["p_MEL"]
    return frame


# truth and probabilities; the most probable class is the prediction:
#   MEL->MEL, MEL->NV, NV->NV, NV->NV, NV->BKL, NV->DF, BKL->BKL
EXAMPLE = class_frame(
    ["MEL", "MEL", "NV", "NV", "NV", "NV", "BKL"],
    [{"MEL": .7, "NV": .2, "BKL": .1}, {"MEL": .3, "NV": .6, "BKL": .1}, {"MEL": .1, "NV": .8, "BKL": .1},
     {"MEL": .05, "NV": .9, "BKL": .05}, {"MEL": .2, "NV": .3, "BKL": .5}, {"MEL": .1, "NV": .3, "DF": .6},
     {"MEL": .05, "NV": .15, "BKL": .8}])


def test_per_class_table_on_a_hand_worked_example():
    table = perclass.per_class_table(EXAMPLE).set_index("class")
    assert list(table.index) == ["MEL", "NV", "BKL", "DF", "macro avg", "weighted avg", "accuracy",
                                 "balanced accuracy"]
    expected = {  # precision, recall, f1, support, one-vs-rest AUC
        "MEL": (1.0, 0.5, 2 / 3, 2, 1.0),
        "NV": (2 / 3, 0.5, 4 / 7, 4, 10 / 12),  # NV's p: .8 .9 .3 .3 against .2 .6 .15: 10 of 12 pairs
        "BKL": (0.5, 1.0, 2 / 3, 1, 1.0),
        "DF": (0.0, 0.0, 0.0, 0, np.nan),  # predicted once, never true: no recall, no AUC
    }
    for cls, (precision, recall, f1, support, auc) in expected.items():
        row = table.loc[cls]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision, recall, f1, support)), cls
        assert row["auc"] == pytest.approx(auc, nan_ok=True), cls
    # averages over the classes present in the truth (MEL, NV, BKL)
    assert table.loc["macro avg", "precision"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    assert table.loc["macro avg", "recall"] == pytest.approx(2 / 3)
    assert table.loc["weighted avg", "precision"] == pytest.approx((2 * 1 + 4 * 2 / 3 + 0.5) / 7)
    assert table.loc["accuracy", "recall"] == pytest.approx(4 / 7)
    assert table.loc["balanced accuracy", "recall"] == pytest.approx(2 / 3)
    assert table.loc["macro avg", "support"] == 7

    labels, counts = perclass.confusion(EXAMPLE)
    assert labels == ["MEL", "NV", "BKL", "DF"]
    assert counts.tolist() == [[1, 1, 0, 0], [0, 2, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert perclass.row_normalised(counts)[1].tolist() == [0, 0.5, 0.25, 0.25]


def test_per_class_input_is_checked():
    broken = EXAMPLE.assign(diagnosis=["MEL", "MEL", "NV", "NV", "NV", "NV", "WART"])
    with pytest.raises(DataError, match="WART"):
        perclass.per_class_table(broken)
    missing = EXAMPLE.astype({"p_NV": object})
    missing.loc[2, "p_NV"] = ""
    with pytest.raises(DataError, match="ISIC_0000002"):
        perclass.per_class_table(missing)
    assert not perclass.has_classes(EXAMPLE.drop(columns=["diagnosis"]))


def test_report_of_a_diagnosis_run_writes_per_class_table_and_matrix(tmp_path, capsys):
    from melanoma import cli

    run = tmp_path / "outputs" / "diagnosis"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = list(rng.choice(["MEL", "NV", "BKL", "BCC"], size=80, p=[0.2, 0.5, 0.2, 0.1]))
    rows = []
    for cls in truth:
        p = rng.dirichlet(np.ones(4))
        p[["MEL", "NV", "BKL", "BCC"].index(cls)] += 0.5
        rows.append(dict(zip(["MEL", "NV", "BKL", "BCC"], p / p.sum())))
    frame = class_frame(truth, rows)
    frame[["image_name", "patient_id", "target", "pred", "fold", "diagnosis"]
          + [f"p_{c}" for c in taxonomy.DIAGNOSIS_CLASSES]].to_csv(run / "oof.csv", index=False)
    assert cli.main(["report", str(run), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(run / "report" / "per_class.csv")
    assert list(table.columns) == perclass.PER_CLASS_COLUMNS
    pd.testing.assert_frame_equal(table, perclass.per_class_table(frame), check_dtype=False)
    assert (run / "report" / "confusion_matrix.png").read_bytes()[:8] == PNG
    assert "balanced accuracy" in out and "true NV" in out and "per_class.csv" in out


def test_report_of_a_binary_run_has_the_confusion_matrix_at_the_sensitivity_cutoffs(tmp_path, capsys):
    from melanoma import cli

    run = tmp_path / "outputs" / "binary"
    run.mkdir(parents=True)
    rng = np.random.default_rng(1)
    target = (rng.random(200) < 0.2).astype(int)
    pred = np.clip(0.3 * target + rng.random(200) * 0.7, 0, 1)
    pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(200)],
                  "patient_id": [f"IP_{i % 50}" for i in range(200)],
                  "target": target, "pred": pred, "fold": np.arange(200) % 2}).to_csv(run / "oof.csv", index=False)
    assert cli.main(["report", str(run), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert (run / "report" / "confusion_matrix.png").read_bytes()[:8] == PNG
    assert not (run / "report" / "per_class.csv").exists()
    cutoffs = pd.read_csv(run / "report" / "cutoffs.csv").set_index("rule")
    for wanted in ("90%", "95%"):
        cutoff = cutoffs.loc[f"sensitivity >= {wanted}", "cutoff"]
        called = pred >= cutoff
        tn, fp = int((~called & (target == 0)).sum()), int((called & (target == 0)).sum())
        fn, tp = int((~called & (target == 1)).sum()), int((called & (target == 1)).sum())
        assert tp / (tp + fn) >= float(wanted[:-1]) / 100
        assert f"sensitivity >= {wanted} (cutoff {cutoff:.4g}): TN {tn}  FP {fp}  FN {fn}  TP {tp}" in out
    matrices = perclass.binary_confusions(report.cutoff_table(target, pred))
    assert [rule for rule, _, _ in matrices] == ["sensitivity >= 90%", "sensitivity >= 95%"]
