"""`records --isic2017`: the ISIC 2017 challenge's Part 3 layout -> train records (training + validation, copies of
one lesion grouped as one patient), the official test split whole as test records, the sample submission and the
test labels beside them; refused before anything is written when the folder is not the layout or labels and
images disagree. The layout is generated here (a few random JPEGs); one test reads the real copy beside the
checkout where it is there."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from melanoma import cli
from melanoma.data import examples, isic2017, record_format, taxonomy

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / ".." / "shared" / "data" / "isic2017"
FOLDERS = {"training": "ISIC-2017_Training_Data", "validation": "ISIC-2017_Validation_Data",
           "test": "ISIC-2017_Test_v2_Data"}
GROUND_TRUTH = {"training": "ISIC-2017_Training_Part3_GroundTruth.csv",
                "validation": "ISIC-2017_Validation_Part3_GroundTruth.csv",
                "test": "ISIC-2017_Test_v2_Part3_GroundTruth.csv"}
# (split, first id, images, melanoma at every n-th, keratosis at every n-th)
SPLITS = (("training", 0, 18, 3, 4), ("validation", 100, 6, 3, 4), ("test", 200, 8, 4, 3))
# test ISIC_0000200 has the bytes of training ISIC_0000001; training ISIC_0000017 those of ISIC_0000002
TEST_COPY, TRAIN_ORIGINAL = "ISIC_0000200", "ISIC_0000001"
TRAIN_COPY, TRAIN_TWIN = "ISIC_0000017", "ISIC_0000002"


def jpeg(rng: np.random.Generator, size: int = 64) -> bytes:
    return cv2.imencode(".jpg", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))[1].tobytes()


def write_layout(root: Path, seed: int = 0) -> Path:
    """A tiny copy of the Part 3 layout: random JPEGs named ISIC_<7 digits>, the three ground-truth CSVs, the
    training and validation metadata ('unknown' where missing); one test image and one training image repeat
    the bytes of training images."""
    rng = np.random.default_rng(seed)
    data: dict[str, bytes] = {}
    for split, first, count, every_melanoma, every_keratosis in SPLITS:
        (root / FOLDERS[split]).mkdir(parents=True)
        rows, metadata = [], []
        for index in range(count):
            name = f"ISIC_{first + index:07d}"
            data[name] = {TEST_COPY: data.get(TRAIN_ORIGINAL), TRAIN_COPY: data.get(TRAIN_TWIN)}.get(name) or jpeg(rng)
            (root / FOLDERS[split] / f"{name}.jpg").write_bytes(data[name])
            melanoma = int(index % every_melanoma == 0)
            keratosis = int(not melanoma and index % every_keratosis == 1)
            rows.append((name, float(melanoma), float(keratosis)))
            age = "unknown" if index == 1 else str(30 + 5 * index)
            metadata.append((name, age, ("female", "male", "unknown")[index % 3]))
        pd.DataFrame(rows, columns=["image_id", "melanoma", "seborrheic_keratosis"]).to_csv(
            root / GROUND_TRUTH[split], index=False)
        if split != "test":
            pd.DataFrame(metadata, columns=["image_id", "age_approximate", "sex"]).to_csv(
                root / f"{FOLDERS[split]}_metadata.csv", index=False)
    (root / FOLDERS["training"] / "ISIC_0000000_superpixels.png").write_bytes(b"not a JPEG: left alone")
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return write_layout(tmp_path_factory.mktemp("isic2017") / "download")


@pytest.fixture(scope="module")
def converted(layout, tmp_path_factory):
    out = tmp_path_factory.mktemp("isic2017-records") / "records"
    printed = io.StringIO()  # a module's fixture has no capsys
    with contextlib.redirect_stdout(printed):
        status = cli.main(["records", "--isic2017", str(layout), "--out", str(out), "--size", "32", "--parts", "3",
                           "--test-parts", "2", "--workers", "1"])
    assert status == 0
    return out, printed.getvalue().splitlines()


def read_records(pattern: str, split: str) -> pd.DataFrame:
    rows = []
    for record_file in record_format.list_files(pattern):
        for batch in examples.batches(record_file.path, split):
            rows += [{key: value[index] for key, value in batch.items()} | {"part": record_file.part}
                     for index in range(len(batch["image_name"]))]
    return pd.DataFrame(rows)


def test_training_and_validation_become_grouped_train_records(converted):
    out, printed = converted
    summary = json.loads(printed[0])
    assert summary["train_images"] == 24 and summary["validation_images"] == 6 and summary["parts"] == 3
    assert summary["malignant_images"] == 6 + 2 and summary["train_identical_images"] == 1
    table = pd.read_csv(out / "train.csv")
    records = read_records(str(out / "train*.tfrec"), "train").set_index("image_name").loc[table["image_name"]]
    assert (records["part"].to_numpy() == table["part"].to_numpy()).all()
    for column in ("patient_id", "sex", "age_approx", "diagnosis", "target"):
        assert (records[column].to_numpy() == table[f"{column}_code"].to_numpy()).all(), column
    twins = table.set_index("image_name").loc[[TRAIN_COPY, TRAIN_TWIN]]
    assert twins["patient_id"].nunique() == 1 and twins["part"].nunique() == 1
    assert table["patient_id"].nunique() == 23 == summary["train_patients"]
    assert (table.groupby("patient_id_code")["patient_id"].nunique() == 1).all()
    encodings = json.loads((out / "encodings.json").read_text())
    names = {code: name for name, code in encodings["diagnosis"].items()}
    classes = {taxonomy.DIAGNOSIS_CLASSES[taxonomy.diagnosis_class(names[code])] for code in records["diagnosis"]}
    assert classes == {"MEL", "BKL", "NV"}
    assert encodings["patient_id"]["source"] == "isic2017"
    assert (records["patient_id"] >= taxonomy.PATIENT_CODE_START["isic2017"]).all()
    melanoma = table["melanoma"] == 1
    assert (table.loc[melanoma, "target_code"] == 1).all() and (table.loc[~melanoma, "target_code"] == 0).all()
    unknown = table["image_name"].isin(["ISIC_0000001", "ISIC_0000101"])
    assert (table.loc[unknown, "age_approx_code"] == -1).all() and (table.loc[unknown, "sex_code"] == 1).all()
    assert (table.loc[table["sex"].isna(), "sex_code"] == -1).sum() == 6 + 2
    assert (table["anatom_site_general_challenge_code"] == -1).all()


def test_the_test_split_stays_whole_with_its_labels_apart(converted):
    out, printed = converted
    summary = json.loads(printed[0])
    assert summary["test_images"] == 8 and summary["test_files"] == 2 and summary["test_equal_to_training"] == 1
    assert "1 test image equal training images" in printed[1] and f"{TEST_COPY} = {TRAIN_ORIGINAL}" in printed[1]
    records = read_records(str(out / "test*.tfrec"), "test")
    names = [f"ISIC_{200 + index:07d}" for index in range(8)]
    assert sorted(records["image_name"]) == names and set(records.columns) >= {"patient_id", "sex", "age_approx"}
    assert (records[["sex", "age_approx", "anatom_site_general_challenge"]] == -1).all().all()
    sample = pd.read_csv(out / "sample_submission.csv")
    assert list(sample.columns) == ["image_name", "target"] and sorted(sample["image_name"]) == names
    labels = pd.read_csv(out / "test_labels.csv")
    assert list(labels.columns) == ["image_name", "target", "diagnosis", "patient_id"]
    assert labels["target"].tolist() == [int(index % 4 == 0) for index in range(8)]
    assert set(labels.loc[labels["target"] == 0, "diagnosis"]) == {"nevus", "benign keratosis"}
    test_table = pd.read_csv(out / "test.csv")
    assert not {"target", "melanoma", "diagnosis", "seborrheic_keratosis"} & set(test_table.columns)
    assert record_format.folder_problem(str(out)) is None


@pytest.mark.parametrize("damage, words", [
    (lambda root: (root / GROUND_TRUTH["validation"]).unlink(), "lacks ISIC-2017_Validation_Part3_GroundTruth.csv"),
    (lambda root: (root / FOLDERS["test"] / "ISIC_0000999.jpg").write_bytes(jpeg(np.random.default_rng(1))),
     "have no row in ISIC-2017_Test_v2_Part3_GroundTruth.csv (first: ISIC_0000999)"),
    (lambda root: (root / FOLDERS["training"] / "ISIC_0000003.jpg").unlink(), "a label without an image"),
    (lambda root: [path.unlink() for path in root.glob("*.csv")], "lacks ISIC-2017_Training_Part3_GroundTruth.csv"),
    (lambda root: [path.rename(root.parent / path.name) for path in root.iterdir()], "is not the ISIC 2017 layout"),
])
def test_a_folder_that_is_not_the_layout_is_refused_before_writing(tmp_path, capsys, damage, words):
    root = write_layout(tmp_path / "download")
    damage(root)
    out = tmp_path / "records"
    assert cli.main(["records", "--isic2017", str(root), "--out", str(out), "--size", "32", "--workers", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error, error
    assert not out.exists() and not list(tmp_path.glob(".records*"))


def test_ground_truth_that_is_not_zero_or_one_is_refused(tmp_path, capsys):
    root = write_layout(tmp_path / "download")
    truth = pd.read_csv(root / GROUND_TRUTH["training"])
    truth.loc[4, ["melanoma", "seborrheic_keratosis"]] = 1
    truth.to_csv(root / GROUND_TRUTH["training"], index=False)
    assert cli.main(["records", "--isic2017", str(root), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert "not both 1" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_real_copy_reads_as_the_challenge_counts_it():
    """Table building on the real images (hashes and thumbnails, no records): a few seconds."""
    if not (REAL / FOLDERS["training"]).is_dir():
        pytest.skip(f"the real ISIC 2017 copy is not here ({REAL.resolve()})")
    tables = isic2017.read_tables(str(REAL), progress=False)
    assert len(tables.train) == 2150 and tables.train["target"].sum() == 404
    assert len(tables.test) == 600 and tables.test["target"].sum() == 117
    assert {("ISIC_0015982", "ISIC_0012175"), ("ISIC_0016018", "ISIC_0012271"),
            ("ISIC_0016002", "ISIC_0012221")} == set(tables.test_equal)
    group = tables.train.set_index("image_name")["patient_id"]
    assert group["ISIC_0012127"] == group["ISIC_0012970"] and group["ISIC_0012290"] == group["ISIC_0013594"]
    test_group = tables.test.set_index("image_name")["patient_id"]
    assert test_group["ISIC_0012152"] == test_group["ISIC_0015979"]
