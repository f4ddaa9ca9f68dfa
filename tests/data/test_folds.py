"""Patient-grouped, stratified parts and folds (melanoma.data.folds)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest

from melanoma import cli
from melanoma.core.errors import DataError
from melanoma.data import folds


def make_frame(patients: int = 400, seed: int = 0) -> pd.DataFrame:
    """A competition-shaped train table: skewed image counts per patient, ~2% malignant images."""
    rng = np.random.default_rng(seed)
    rows = []
    counter = 0
    for index in range(patients):
        images = int(np.clip(rng.lognormal(2.3, 0.8), 2, 80))
        malignant = int(rng.choice([0, 1, 2, 3], p=[0.8, 0.14, 0.04, 0.02])) if rng.random() < 0.9 else 0
        malignant = min(malignant, images)
        targets = np.zeros(images, dtype=int)
        targets[rng.choice(images, size=malignant, replace=False)] = 1
        for target in targets:
            rows.append({
                "image_name": f"ISIC_{counter:07d}",
                "patient_id": f"IP_{index:05d}",
                "sex": rng.choice(["male", "female"]),
                "age_approx": float(rng.integers(2, 18) * 5),
                "target": int(target),
            })
            counter += 1
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def assigned(frame) -> pd.DataFrame:
    return folds.assign_folds(frame, folds=5, parts=15, seed=42)


# ---------------------------------------------------------------------------------------------------
# assignment


def test_patients_never_span_parts_or_folds(frame, assigned):
    assert (assigned.groupby("patient_id")["part"].nunique() == 1).all()
    assert (assigned.groupby("patient_id")["fold"].nunique() == 1).all()
    folds.check_patient_disjoint(assigned, "part")
    folds.check_patient_disjoint(assigned, "fold")
    assert len(assigned) == len(frame)


def test_keeps_input_rows_and_columns(frame, assigned):
    assert list(assigned.columns) == list(frame.columns) + ["part", "fold"]
    pd.testing.assert_frame_equal(assigned[frame.columns], frame)
    assert assigned["part"].dtype == np.int64 and assigned["fold"].dtype == np.int64


def test_fold_is_part_mod_k(frame):
    for k in (2, 3, 5, 15):
        result = folds.assign_folds(frame, folds=k, parts=15, seed=3)
        assert (result["fold"] == result["part"] % k).all()
        assert sorted(result["fold"].unique()) == list(range(k))
    assert sorted(result["part"].unique()) == list(range(15))


def test_stratification_bounds(frame, assigned):
    table = folds.part_table(assigned)
    assert len(table) == 15
    assert table["malignant_images"].max() - table["malignant_images"].min() <= 2
    assert table["malignant_patients"].max() - table["malignant_patients"].min() <= 2
    assert table["patients"].max() - table["patients"].min() <= 2
    assert (table["images"].max() - table["images"].min()) <= 0.01 * table["images"].max()
    # image-count stratification: every part holds patients of every size band, evenly
    patients = folds.patient_table(assigned)
    patients["part"] = assigned.groupby("patient_id")["part"].first()
    bands = pd.crosstab(patients["part"], patients["size_band"])
    assert (bands.max() - bands.min()).max() <= 2


def test_fold_table_counts(frame, assigned):
    table = folds.fold_table(assigned)
    assert list(table.index) == [0, 1, 2, 3, 4]
    assert list(table.columns) == ["images", "patients", "malignant_images", "malignant_patients"]
    assert table["images"].sum() == len(frame)
    assert table["patients"].sum() == frame["patient_id"].nunique()
    assert table["malignant_images"].sum() == frame["target"].sum()
    assert table["malignant_patients"].sum() == frame.loc[frame["target"] == 1, "patient_id"].nunique()


def test_deterministic_and_seeded(frame, tmp_path):
    first = folds.assign_folds(frame, folds=5, seed=7)
    second = folds.assign_folds(frame, folds=5, seed=7)
    other = folds.assign_folds(frame, folds=5, seed=8)
    paths = [tmp_path / name for name in ("a.csv", "b.csv")]
    for result, path in zip((first, second), paths):
        result.to_csv(path, index=False)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not (first["part"] == other["part"]).all()


def test_row_order_does_not_matter(frame):
    shuffled = frame.sample(frac=1.0, random_state=99)
    a = folds.assign_parts(frame, seed=5).set_index("image_name")["part"]
    b = folds.assign_parts(shuffled, seed=5).set_index("image_name")["part"]
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())


def test_existing_part_column_kept_unless_reassign(frame):
    given = frame.copy()
    given["part"] = given["patient_id"].str[-1].astype(int)  # 10 patient-grouped parts
    kept = folds.assign_folds(given, folds=5)
    assert (kept["part"] == given["part"]).all()
    assert (kept["fold"] == given["part"] % 5).all()
    redone = folds.assign_folds(given, folds=5, parts=15, reassign=True)
    assert redone["part"].nunique() == 15


def test_existing_part_column_checked(frame):
    given = frame.copy()
    given["part"] = np.arange(len(given)) % 3  # splits patients
    with pytest.raises(DataError, match=r"patient IP_\d+ spans parts"):
        folds.assign_parts(given)
    given["part"] = 0
    given.loc[0, "part"] = -1
    with pytest.raises(DataError, match="whole numbers"):
        folds.assign_parts(given)


def test_few_patients_use_fewer_parts():
    small = make_frame(patients=9, seed=1)
    with pytest.warns(folds.FewPatientsWarning, match="using 4 parts"):
        result = folds.assign_folds(small, folds=2, parts=15)
    assert result["part"].nunique() == 4
    folds.check_patient_disjoint(result, "part")


# ---------------------------------------------------------------------------------------------------
# errors


def test_check_patient_disjoint_names_patient_and_values():
    table = pd.DataFrame({"patient_id": ["IP_1", "IP_1", "IP_2"], "fold": [0, 3, 1]})
    with pytest.raises(DataError, match="patient IP_1 spans folds 0, 3"):
        folds.check_patient_disjoint(table, "fold")
    folds.check_patient_disjoint(table.iloc[1:], "fold")


def test_missing_columns_are_named(frame):
    with pytest.raises(DataError, match="patient_id, target"):
        folds.assign_parts(frame.drop(columns=["patient_id", "target"]))


@pytest.mark.parametrize("k, message", [(1, "at least 2"), (16, "more than the 15 parts")])
def test_bad_fold_count(frame, k, message):
    with pytest.raises(DataError, match=message):
        folds.assign_folds(frame, folds=k, parts=15)


def test_too_many_folds_for_few_patients():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", folds.FewPatientsWarning)
        with pytest.raises(DataError, match="more than the 2 parts"):
            folds.assign_folds(make_frame(patients=5, seed=2), folds=3)


@pytest.mark.parametrize("value", [2, -1, 0.5, np.nan])
def test_non_binary_target(frame, value):
    bad = frame.copy()
    bad["target"] = bad["target"].astype(float)
    bad.loc[3, "target"] = value
    with pytest.raises(DataError, match="target must be 0 or 1"):
        folds.assign_parts(bad)


def test_duplicate_image_names(frame):
    bad = pd.concat([frame, frame.iloc[[4]]], ignore_index=True)
    with pytest.raises(DataError, match=frame["image_name"].iloc[4]):
        folds.assign_parts(bad)


def test_missing_patient_id(frame):
    bad = frame.copy()
    bad.loc[2, "patient_id"] = np.nan
    with pytest.raises(DataError, match="no patient_id"):
        folds.assign_parts(bad)


def test_empty_table(frame):
    with pytest.raises(DataError, match="no rows"):
        folds.assign_parts(frame.iloc[:0])


# ---------------------------------------------------------------------------------------------------
# command line


def run_cli(*argv: str) -> int:
    return cli.main(["folds", *argv])


def test_cli_writes_csv(frame, tmp_path, capsys):
    source, out = tmp_path / "train.csv", tmp_path / "out" / "folds.csv"
    frame.to_csv(source, index=False)
    assert run_cli("--train-csv", str(source), "--folds", "5", "--seed", "1", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "malignant_images" in printed and "images per part: min" in printed
    written = pd.read_csv(out)
    assert list(written.columns) == list(frame.columns) + ["part", "fold"]
    assert (written["fold"] == written["part"] % 5).all()
    folds.check_patient_disjoint(written, "part")
    expected = folds.assign_folds(frame, folds=5, seed=1)
    assert (written["part"].to_numpy() == expected["part"].to_numpy()).all()
    assert not [name for name in os.listdir(out.parent) if name != "folds.csv"]  # no temporary left

    again = tmp_path / "again.csv"
    assert run_cli("--train-csv", str(source), "--folds", "5", "--seed", "1", "--out", str(again)) == 0
    assert again.read_bytes() == out.read_bytes()


def test_cli_errors(frame, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert run_cli("--train-csv", str(tmp_path / "absent.csv"), "--folds", "5", "--out", str(out)) == 2
    assert "not found" in capsys.readouterr().err

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert run_cli("--train-csv", str(empty), "--folds", "5", "--out", str(out)) == 2
    assert "empty" in capsys.readouterr().err

    header_only = tmp_path / "header.csv"
    header_only.write_text("image_name,patient_id,target\n")
    assert run_cli("--train-csv", str(header_only), "--folds", "5", "--out", str(out)) == 2
    assert "no rows" in capsys.readouterr().err

    no_target = tmp_path / "no_target.csv"
    frame.drop(columns="target").to_csv(no_target, index=False)
    assert run_cli("--train-csv", str(no_target), "--folds", "5", "--out", str(out)) == 2
    assert "target" in capsys.readouterr().err

    source = tmp_path / "train.csv"
    frame.to_csv(source, index=False)
    assert run_cli("--train-csv", str(source), "--folds", "1", "--out", str(out)) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not out.exists()


def test_cli_few_patients_says_so(tmp_path, capsys):
    source, out = tmp_path / "small.csv", tmp_path / "out.csv"
    make_frame(patients=9, seed=1).to_csv(source, index=False)
    assert run_cli("--train-csv", str(source), "--folds", "2", "--out", str(out)) == 0
    assert "using 4 parts" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# the real competition metadata (not committed; skipped where absent)


@pytest.mark.parametrize("drop_duplicates", [True, False], ids=["without-duplicates", "all-rows"])
def test_real_metadata(drop_duplicates, real_metadata):
    metadata = pd.read_csv(real_metadata)
    if drop_duplicates:
        # the public TFRecords leave out the rows marked tfrecord == -1 (duplicate images)
        metadata = metadata[metadata["tfrecord"] != -1].reset_index(drop=True)
    result = folds.assign_folds(metadata, folds=5, parts=15, seed=42)
    folds.check_patient_disjoint(result, "part")
    assert (result.groupby("patient_id")["part"].nunique() == 1).all()
    table = folds.part_table(result)
    assert len(table) == 15
    assert table["malignant_images"].max() - table["malignant_images"].min() <= 2
    assert table["images"].max() - table["images"].min() <= 0.01 * table["images"].min()
    assert table["images"].sum() == len(metadata)
