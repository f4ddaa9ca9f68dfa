"""OOF scoring: the competition metric, the patient bootstrap, DeLong's test and bad OOF files."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.core import tables
from melanoma.core.errors import DataError
from melanoma.evaluate import scoring, statistics

HYPOTHESIS = settings(deadline=None, max_examples=120,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def make_oof(rows: int = 600, patients: int = 120, folds: int = 5, seed: int = 0, rate: float = 0.2,
             decimals: int | None = 2) -> pd.DataFrame:
    """A competition-shaped OOF table: patients spread over folds, predictions with ties."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, patients, rows)
    target = (rng.random(rows) < rate).astype(int)
    pred = np.clip(rng.normal(0.3 + 0.25 * target, 0.2), 0, 1)
    if decimals is not None:
        pred = np.round(pred, decimals)
    return pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(rows)],
                         "patient_id": [f"IP_{p:05d}" for p in patient],
                         "target": target, "pred": pred, "fold": patient % folds})


def write(tmp_path, frame: pd.DataFrame, name: str = "oof.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


# --------------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_score_equals_roc_auc_score_on_random_data_with_ties(seed):
    frame = make_oof(seed=seed, decimals=1)  # ten distinct values: many ties within and across classes
    assert frame["pred"].duplicated().sum() > 500
    result = scoring.score_oof(frame, bootstrap=0)
    assert result["auc"] == roc_auc_score(frame["target"], frame["pred"])
    for fold, rows in frame.groupby("fold"):
        assert result["folds"][str(fold)] == roc_auc_score(rows["target"], rows["pred"])
    per_fold = [result["folds"][key] for key in result["folds"]]
    assert result["fold_mean"] == pytest.approx(np.mean(per_fold))
    assert result["fold_std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert result["n"] == len(frame) and result["n_positive"] == int(frame["target"].sum())
    assert result["ci95"] is None


def test_score_command_json_matches_roc_auc_score(tmp_path, capsys):
    frame = make_oof(seed=3, decimals=2)
    path = write(tmp_path, frame)
    assert cli.main(["score", path, "--json", "--bootstrap", "200", "--seed", "7"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"auc", "folds", "fold_mean", "fold_std", "ci95", "n", "n_positive"} <= set(result)
    assert result["auc"] == roc_auc_score(frame["target"], frame["pred"])
    assert sorted(result["folds"]) == ["0", "1", "2", "3", "4"]
    assert len(result["ci95"]) == 2 and result["ci95"][0] <= result["auc"] <= result["ci95"][1]


def test_score_command_prints_a_human_table(tmp_path, capsys):
    frame = make_oof(seed=4)
    path = write(tmp_path, frame)
    assert cli.main(["score", path, "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "OOF AUC" in out and "95% CI" in out and "mean" in out and "±" in out
    assert "malignant" in out and "patients" in out
    # one row per fold: its number, images, malignant images and AUC, as score_oof has them
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3, 4]
    expected = scoring.score_oof(frame, bootstrap=0)["folds"]
    for row in rows:
        part = frame[frame["fold"] == int(row[0])]
        assert (int(row[1]), int(row[2])) == (len(part), int(part["target"].sum()))
        assert float(row[3]) == pytest.approx(expected[row[0]], abs=5e-5)


@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])),
                min_size=2, max_size=60))
@HYPOTHESIS
def test_unit_weight_auc_is_roc_auc_score(rows):
    target = np.array([row[0] for row in rows], dtype=float)
    pred = np.array([row[1] for row in rows])
    if len(set(target)) < 2:
        return
    order = np.argsort(pred, kind="mergesort")
    sorted_pred = pred[order]
    starts = np.flatnonzero(np.r_[True, sorted_pred[1:] != sorted_pred[:-1]])
    auc = statistics._weighted_auc_rows(np.ones((1, len(pred))), target[order], starts)[0]
    assert auc == pytest.approx(roc_auc_score(target, pred), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------

def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    frame = make_oof(rows=2000, patients=300, seed=11)
    first = scoring.score_oof(frame, bootstrap=500, seed=123)
    again = scoring.score_oof(frame, bootstrap=500, seed=123)
    other = scoring.score_oof(frame, bootstrap=500, seed=124)
    low, high = first["ci95"]
    assert low < first["auc"] < high
    assert 0 < high - low < 0.2
    assert again["ci95"] == first["ci95"]
    assert other["ci95"] != first["ci95"]


def test_bootstrap_resamples_patients_not_images():
    """Copying every image of a patient changes nothing when patients are what is resampled."""
    frame = make_oof(rows=400, patients=80, seed=5)
    doubled = pd.concat([frame, frame.assign(image_name=frame["image_name"] + "_copy")], ignore_index=True)
    once = statistics.bootstrap_aucs(frame["target"], frame["pred"], frame["patient_id"], 300, seed=9)
    twice = statistics.bootstrap_aucs(doubled["target"], doubled["pred"], doubled["patient_id"], 300, seed=9)
    np.testing.assert_allclose(once, twice, rtol=0, atol=1e-12)
    # An image-level bootstrap would see twice the data and a narrower spread; patients keep it.
    assert scoring.score_oof(frame, 300, 9)["ci95"] == pytest.approx(scoring.score_oof(doubled, 300, 9)["ci95"])


@pytest.mark.parametrize("rows,patients,rate,decimals", [(500, 40, 0.3, 1), (800, 800, 0.05, None),
                                                         (300, 50, 0.8, 2)])
def test_bootstrap_methods_agree(rows, patients, rate, decimals):
    frame = make_oof(rows=rows, patients=patients, seed=2, rate=rate, decimals=decimals)
    args = (frame["target"], frame["pred"], frame["patient_id"], 120)
    by_patients = statistics.bootstrap_aucs(*args, seed=4, method="patients")
    by_images = statistics.bootstrap_aucs(*args, seed=4, method="images")
    np.testing.assert_allclose(by_patients, by_images, rtol=0, atol=1e-9)


def test_single_class_fold_is_null_and_named_in_a_warning():
    frame = make_oof(seed=6)
    frame.loc[frame["fold"] == 2, "target"] = 0
    with pytest.warns(scoring.ScoreWarning, match="fold 2"):
        result = scoring.score_oof(frame, bootstrap=0)
    assert result["folds"]["2"] is None
    assert any("fold 2" in note for note in result["warnings"])
    scored = [value for value in result["folds"].values() if value is not None]
    assert len(scored) == 4 and result["fold_mean"] == pytest.approx(np.mean(scored))


def test_single_class_fold_warning_is_printed_by_the_command(tmp_path, capsys):
    frame = make_oof(seed=6)
    frame.loc[frame["fold"] == 1, "target"] = 0
    assert cli.main(["score", write(tmp_path, frame), "--json", "--bootstrap", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["folds"]["1"] is None
    assert "warning: fold 1" in captured.err


# --------------------------------------------------------------------------------------------------
# Bad OOF files
# --------------------------------------------------------------------------------------------------

def test_missing_columns_are_named(tmp_path):
    path = write(tmp_path, make_oof().drop(columns=["patient_id", "fold"]))
    with pytest.raises(DataError, match="patient_id, fold"):
        tables.read_oof(path)


def test_nan_predictions_are_rejected(tmp_path):
    frame = make_oof()
    frame.loc[[3, 7], "pred"] = np.nan
    with pytest.raises(DataError, match="NaN.*ISIC_0000003, ISIC_0000007"):
        tables.read_oof(write(tmp_path, frame))


def test_single_class_is_rejected(tmp_path):
    with pytest.raises(DataError, match="both"):
        tables.read_oof(write(tmp_path, make_oof().assign(target=0)))


def test_duplicate_image_names_are_named(tmp_path):
    frame = make_oof()
    frame = pd.concat([frame, frame.iloc[:8]], ignore_index=True)
    with pytest.raises(DataError, match=r"duplicate image names ISIC_0000000, .*\(8 in all\)"):
        tables.read_oof(write(tmp_path, frame))


@pytest.mark.parametrize("column,value,message", [("pred", "high", "non-numeric"), ("pred", "inf", "infinite"),
                                                  ("target", "2", "0 or 1"), ("fold", "1.5", "whole number")])
def test_bad_values_are_rejected(tmp_path, column, value, message):
    frame = make_oof().astype({column: object})
    frame.loc[4, column] = value
    with pytest.raises(DataError, match=message):
        tables.read_oof(write(tmp_path, frame))


def test_bad_file_and_missing_file_both_exit_2_with_a_message(tmp_path, capsys):
    assert cli.main(["score", write(tmp_path, make_oof().drop(columns=["target"]))]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["score", str(tmp_path / "absent.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_only_competition_rows_are_scored(tmp_path):
    frame = make_oof(seed=8).assign(source="competition")
    external = make_oof(rows=50, seed=9).assign(source="isic2019", pred=1.0, target=0)
    external["image_name"] = "EXT_" + external["image_name"]
    both = pd.concat([frame, external], ignore_index=True)
    oof = tables.read_oof(write(tmp_path, both))
    result = scoring.score_oof(oof, bootstrap=0)
    assert result["n"] == len(frame) and result["excluded"] == 50
    assert result["auc"] == roc_auc_score(frame["target"], frame["pred"])


# --------------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------------

def test_delong_on_a_hand_worked_example():
    # Positives A: .9 .7 .4, negatives A: .5 .2 -> components V10 = 1, 1, 1/2; V01 = 2/3, 1; AUC 5/6.
    # Positives B: .8 .3 .6, negatives B: .3 .5 -> V10 = 1, 1/4, 1; V01 = 5/6, 2/3; AUC 3/4.
    # Sample covariances: S10 = [[1/12, -1/16], [-1/16, 3/16]], S01 = [[1/18, -1/36], [-1/36, 1/72]].
    # var(A - B) = (1/12 + 3/16 + 1/8) / 3 + (1/18 + 1/72 + 1/18) / 2 = 19/144 + 9/144 = 7/36.
    # z = (5/6 - 3/4) / sqrt(7/36) = 1 / (2 sqrt 7); p = erfc(z / sqrt 2).
    target = [1, 1, 1, 0, 0]
    pred_a = [0.9, 0.7, 0.4, 0.5, 0.2]
    pred_b = [0.8, 0.3, 0.6, 0.3, 0.5]
    auc_a, auc_b, p_value = statistics.delong_test(target, pred_a, pred_b)
    assert auc_a == pytest.approx(5 / 6) and auc_b == pytest.approx(3 / 4)
    z = 1 / (2 * math.sqrt(7))
    assert p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert p_value == pytest.approx(0.8501, abs=1e-4)


def slow_delong(target, pred_a, pred_b):
    """DeLong et al. (1988) from the definition: O(m n) comparisons of every positive with every negative."""
    target = np.asarray(target)
    variances = []
    aucs = []
    components = []
    for pred in (np.asarray(pred_a, float), np.asarray(pred_b, float)):
        pos, neg = pred[target == 1], pred[target == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(psi.mean())
        components.append((psi.mean(axis=1), psi.mean(axis=0)))
    (v10_a, v01_a), (v10_b, v01_b) = components
    m, n = len(v10_a), len(v01_a)

    def cov(x, y):
        return float(((x - x.mean()) * (y - y.mean())).sum() / (len(x) - 1))

    variance = ((cov(v10_a, v10_a) + cov(v10_b, v10_b) - 2 * cov(v10_a, v10_b)) / m
                + (cov(v01_a, v01_a) + cov(v01_b, v01_b) - 2 * cov(v01_a, v01_b)) / n)
    variances.append(variance)
    z = (aucs[0] - aucs[1]) / math.sqrt(variance)
    return aucs[0], aucs[1], math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize("seed", range(6))
def test_delong_matches_the_slow_structural_components_reference(seed):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(20, 300))
    target = (rng.random(rows) < 0.3).astype(int)
    target[:2] = [0, 1]
    pred_a = np.round(rng.normal(target * 0.8, 1.0), 1)   # rounded: ties
    pred_b = np.round(pred_a + rng.normal(0, 0.7, rows), 1)
    expected = slow_delong(target, pred_a, pred_b)
    assert statistics.delong_test(target, pred_a, pred_b) == pytest.approx(expected, rel=1e-9)
    assert expected[0] == pytest.approx(roc_auc_score(target, pred_a))


def test_delong_edge_cases():
    target = [0, 1, 0, 1, 1, 0]
    pred = [0.1, 0.9, 0.3, 0.4, 0.8, 0.2]
    assert statistics.delong_test(target, pred, pred)[2] == 1.0
    assert statistics.delong_test(target, pred, [2 * value for value in pred])[2] == 1.0
    with pytest.raises(DataError):
        statistics.delong_test([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(DataError):
        statistics.delong_test([0, 1], [0.1, 0.2, 0.3], [0.3, 0.2])


# --------------------------------------------------------------------------------------------------
# Arbitrary CSV content (issue 7)
# --------------------------------------------------------------------------------------------------

CELLS = st.one_of(st.sampled_from(["0", "1", "0.5", "1.0", "", "nan", "NaN", "inf", "-inf", "1e400", "abc",
                                   "IP_1", "IP_2", "ISIC_1", "ISIC_2", "competition", "isic2019", " 1 ",
                                   "0x1", "-0", "2", '"', "a,b", "\n"]),
                  st.text(max_size=6))
COLUMNS = st.lists(st.sampled_from(list(tables.OOF_COLUMNS) + ["source", "extra", "pred"]),
                   min_size=1, max_size=7)


@st.composite
def csv_documents(draw):
    if draw(st.booleans()):
        return draw(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
    columns = draw(COLUMNS)
    rows = draw(st.lists(st.lists(CELLS, min_size=len(columns), max_size=len(columns)), max_size=12))
    frame = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    return frame.to_csv(index=False).encode("utf-8")


@given(csv_documents())
@HYPOTHESIS
def test_score_of_arbitrary_csv_gives_a_result_or_a_clear_error(tmp_path, document):
    path = tmp_path / "oof.csv"
    path.write_bytes(document)
    try:
        frame = tables.read_oof(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scoring.ScoreWarning)
            result = scoring.score_oof(frame, bootstrap=20)
    except DataError as error:
        assert str(error)
        return
    assert result["auc"] == roc_auc_score(frame["target"], frame["pred"])
    assert 0 <= result["auc"] <= 1 and result["n"] == len(frame)
    assert set(frame["target"]) == {0, 1} and np.isfinite(frame["pred"]).all()
    assert not frame["image_name"].duplicated().any()
    json.dumps(result, allow_nan=False)


@given(st.lists(st.tuples(st.integers(0, 1), st.floats(-1e6, 1e6, allow_nan=False), st.integers(0, 4),
                          st.integers(0, 9)), min_size=2, max_size=40))
@HYPOTHESIS
def test_score_of_valid_csv_is_exact(tmp_path, rows):
    frame = pd.DataFrame({"image_name": [f"img{i}" for i in range(len(rows))],
                          "patient_id": [f"p{row[3]}" for row in rows], "target": [row[0] for row in rows],
                          "pred": [row[1] for row in rows], "fold": [row[2] for row in rows]})
    path = tmp_path / "oof.csv"
    path.write_text(frame.to_csv(index=False))
    if frame["target"].nunique() < 2:
        with pytest.raises(DataError):
            tables.read_oof(str(path))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scoring.ScoreWarning)
        result = scoring.score_oof(tables.read_oof(str(path)), bootstrap=10)
    assert result["auc"] == roc_auc_score(frame["target"], frame["pred"])


def test_a_fold_of_near_constant_predictions_is_named_collapsed():
    """A network that collapsed to one output (every prediction within a hair of 0.19) is named as such,
    in the score's collapsed_folds and its warnings; folds whose predictions spread are not."""
    frame = make_oof(decimals=None)
    rows = frame["fold"] == 2
    frame.loc[rows, "pred"] = 0.19 + 1e-4 * np.random.default_rng(0).random(int(rows.sum()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scoring.ScoreWarning)
        result = scoring.score_oof(frame, bootstrap=0)
    assert result["collapsed_folds"] == ["2"]
    assert any(note.startswith("fold 2 COLLAPSED: near-constant predictions") for note in result["warnings"])
    healthy = scoring.score_oof(make_oof(decimals=None), bootstrap=0)
    assert healthy["collapsed_folds"] == []


def test_collapse_threshold_sits_between_a_weak_model_and_a_constant():
    from melanoma.core import metrics

    rng = np.random.default_rng(1)
    weak = 1 / (1 + np.exp(-(rng.normal(-1.5, 0.3, 500))))  # log-odds std 0.3: weak, but it moves
    assert metrics.collapse_problem(weak) is None
    stuck = 1 / (1 + np.exp(-(rng.normal(-1.5, 0.02, 500))))
    assert "collapsed" in metrics.collapse_problem(stuck)
    assert metrics.collapse_problem(np.full(10, 0.5)) is not None
    assert metrics.collapse_problem([0.3]) is None  # one prediction says nothing about spread


def test_a_collapsed_fold_gets_one_line_in_every_family(capsys):
    """The line both families print at a fold's end (metrics.say_if_collapsed), with a family's advice."""
    from melanoma.core import metrics

    metrics.say_if_collapsed(3, np.full(10, 0.5), "try a lower train.lr_peak_per_image")
    metrics.say_if_collapsed(4, np.linspace(0.01, 0.99, 10))
    metrics.say_if_collapsed(5, np.full(10, 0.5))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("fold 3: COLLAPSED: near-constant predictions")
    assert lines[0].endswith("its AUC means nothing (try a lower train.lr_peak_per_image)")
    assert lines[1].startswith("fold 5: COLLAPSED: ") and lines[1].endswith("its AUC means nothing")
