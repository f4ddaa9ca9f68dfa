"""The demo dataset generator: CSV shapes, images on disk, determinism, class balance, learnability."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import snapshot
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.tools import synth

TRAIN_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
]
TEST_COLUMNS = TRAIN_COLUMNS[:5]
SITES = {"torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"}
BENIGN_DIAGNOSES = {
    "unknown",
    "nevus",
    "seborrheic keratosis",
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
    "cafe-au-lait macule",
    "atypical melanocytic proliferation",
}


def _make(folder, **kwargs):
    kwargs.setdefault("progress", False)
    return synth.synthesize(str(folder), **kwargs)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth_small")
    summary = _make(folder, size=32, patients=12, test_patients=4, seed=3)
    return folder, summary


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Enough patients for distribution checks; tiny images keep it fast."""
    folder = tmp_path_factory.mktemp("synth_medium")
    _make(folder, size=16, patients=300, test_patients=40, seed=11)
    return pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "test.csv")


def test_csv_columns_and_types(small):
    folder, _ = small
    train = pd.read_csv(folder / "train.csv")
    test = pd.read_csv(folder / "test.csv")
    sample = pd.read_csv(folder / "sample_submission.csv")
    labels = pd.read_csv(folder / "test_labels.csv")
    assert list(train.columns) == TRAIN_COLUMNS
    assert list(test.columns) == TEST_COLUMNS
    assert list(sample.columns) == ["image_name", "target"]
    assert list(labels.columns) == ["image_name", "target"]
    assert pd.api.types.is_integer_dtype(train["target"])
    assert pd.api.types.is_float_dtype(train["age_approx"])
    assert pd.api.types.is_integer_dtype(labels["target"])
    assert set(train["target"]) == {0, 1}
    assert (train["benign_malignant"] == train["target"].map({0: "benign", 1: "malignant"})).all()
    assert (train.loc[train["target"] == 1, "diagnosis"] == "melanoma").all()
    assert set(train.loc[train["target"] == 0, "diagnosis"]) <= BENIGN_DIAGNOSES


def test_names_and_ids_look_like_the_competition(small):
    folder, _ = small
    train = pd.read_csv(folder / "train.csv")
    test = pd.read_csv(folder / "test.csv")
    names = pd.concat([train["image_name"], test["image_name"]])
    assert names.str.fullmatch(r"ISIC_\d{7}").all()
    assert names.is_unique
    ids = pd.concat([train["patient_id"], test["patient_id"]])
    assert ids.str.fullmatch(r"IP_\d{7}").all()


def test_every_row_has_a_decodable_jpeg_of_the_asked_size(small):
    folder, summary = small
    for split in ("train", "test"):
        frame = pd.read_csv(folder / f"{split}.csv")
        on_disk = {name[:-4] for name in os.listdir(folder / "jpeg" / split)}
        assert on_disk == set(frame["image_name"])
        for name in frame["image_name"]:
            image = cv2.imread(str(folder / "jpeg" / split / f"{name}.jpg"))
            assert image is not None, name
            assert image.shape == (32, 32, 3)
    assert summary["train_images"] == len(pd.read_csv(folder / "train.csv"))
    assert summary["test_images"] == len(pd.read_csv(folder / "test.csv"))


def test_submission_files_follow_test_order(small):
    folder, summary = small
    test = pd.read_csv(folder / "test.csv")
    sample = pd.read_csv(folder / "sample_submission.csv")
    labels = pd.read_csv(folder / "test_labels.csv")
    assert list(sample["image_name"]) == list(test["image_name"])
    assert list(labels["image_name"]) == list(test["image_name"])
    assert (sample["target"] == 0).all()
    assert set(labels["target"]) == {0, 1}  # a demo submission can be scored
    assert summary["test_malignant"] == labels["target"].sum()


def test_patients_belong_to_one_split(small):
    folder, summary = small
    train = pd.read_csv(folder / "train.csv")
    test = pd.read_csv(folder / "test.csv")
    assert set(train["patient_id"]).isdisjoint(test["patient_id"])
    assert train["patient_id"].nunique() == summary["train_patients"] == 12
    assert test["patient_id"].nunique() == summary["test_patients"] == 4
    for frame in (train, test):  # per-patient values stay the patient's own
        assert (frame.groupby("patient_id")["sex"].nunique(dropna=False) == 1).all()


def test_same_seed_gives_same_bytes(small, tmp_path):
    folder, _ = small
    again = tmp_path / "again"
    other = tmp_path / "other"
    _make(again, size=32, patients=12, test_patients=4, seed=3)
    _make(other, size=32, patients=12, test_patients=4, seed=4)

    def files(root):
        return {
            os.path.relpath(os.path.join(base, name), root): open(os.path.join(base, name), "rb").read()
            for base, _, names in os.walk(root)
            for name in names
        }

    first = files(folder)
    assert files(again) == first
    assert files(other).keys() != first.keys()


def test_distributions_match_the_competition_shape(medium):
    train, test = medium
    fraction = train["target"].mean()
    assert 0.03 <= fraction <= 0.08, fraction
    counts = train.groupby("patient_id").size()
    assert counts.min() >= 1 and counts.max() <= 12
    assert 4.0 <= counts.mean() <= 6.5
    assert (counts <= 3).mean() > 0.3 and (counts >= 8).mean() > 0.1  # many small, a long tail
    # Malignant images cluster in a minority of patients.
    affected = train.groupby("patient_id")["target"].max()
    assert 0.08 <= affected.mean() <= 0.35
    assert train["target"].sum() > affected.sum()
    assert set(train["sex"].dropna()) == {"male", "female"}
    ages = train["age_approx"].dropna()
    assert (ages % 5 == 0).all() and ages.between(10, 90).all()
    assert set(train["anatom_site_general_challenge"].dropna()) <= SITES
    for column in ("sex", "age_approx", "anatom_site_general_challenge"):
        assert 0 < train[column].isna().mean() < 0.1, column
    assert train["diagnosis"].value_counts().index[0] == "unknown"
    assert {"nevus", "melanoma"} <= set(train["diagnosis"])
    # Older patients are somewhat more likely to be malignant.
    by_target = train.groupby("target")["age_approx"].mean()
    assert by_target[1] > by_target[0]
    assert test["patient_id"].nunique() == 40


@pytest.mark.parametrize(
    "arguments, word",
    [
        ({"size": 8}, "size"),
        ({"patients": 1}, "patients"),
        ({"test_patients": 0}, "test-patients"),
    ],
)
def test_bad_arguments_raise(tmp_path, arguments, word):
    with pytest.raises(ValueError, match=word):
        _make(tmp_path / "bad", **arguments)
    assert not (tmp_path / "bad").exists()


def test_cli_writes_dataset_and_rejects_bad_size(tmp_path, capsys):
    out = tmp_path / "demo"
    status = cli.main(["synth", str(out), "--size", "16", "--patients", "3", "--test-patients", "1", "--no-progress"])
    assert status == 0
    assert (out / "train.csv").exists() and (out / "sample_submission.csv").exists()
    assert "malignant" in capsys.readouterr().out
    assert cli.main(["synth", str(tmp_path / "bad"), "--size", "4"]) == 2
    assert "--size" in capsys.readouterr().err


def test_render_lesion_shape_and_determinism():
    image = synth.render_lesion(np.random.default_rng(0), 48, malignant=True)
    assert image.dtype == np.uint8 and image.shape == (48, 48, 3)
    again = synth.render_lesion(np.random.default_rng(0), 48, malignant=True)
    assert np.array_equal(image, again)
    with pytest.raises(ValueError, match="size"):
        synth.render_lesion(np.random.default_rng(0), 8, malignant=False)


def _dark_fraction(image: np.ndarray) -> float:
    """Share of central pixels clearly darker than the typical (skin) pixel: a crude lesion-size feature.

    Only the central disc counts, so the black rim of the dermatoscope in some photos does not.
    """
    size = image.shape[0]
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    central = np.add.outer(axis**2, axis**2) < 0.75**2
    grey = image.astype(np.float32).mean(axis=2)
    return float(((grey < 0.85 * np.median(grey[central])) & central).mean())


def test_a_crude_feature_separates_classes_but_not_perfectly():
    """Guards learnability: the classes differ, yet overlap (the task must not be trivial)."""
    features, targets = [], []
    for index in range(120):
        for malignant in (0, 1):
            rng = np.random.default_rng([21, malignant, index])
            features.append(_dark_fraction(synth.render_lesion(rng, 40, bool(malignant))))
            targets.append(malignant)
    auc = roc_auc_score(targets, features)
    assert 0.65 < auc < 0.97, auc


def test_synth_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["synth", str(out), "--size", "16", "--patients", "3", "--test-patients", "1", "--no-progress"]
    assert cli.main(argv) == 0
    stray = out / "jpeg" / "train" / "ISIC_9999999.jpg"
    stray.write_bytes((next((out / "jpeg" / "train").glob("*.jpg"))).read_bytes())
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    capsys.readouterr()
    assert cli.main(argv + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err
    assert snapshot(out) == before
    assert cli.main(argv + ["--seed", "1", "--force"]) == 0
    assert not stray.exists(), "images of the earlier dataset must not mix with the new one"
    assert (out / "notes.txt").read_text() == "mine" and "kept notes.txt" in capsys.readouterr().err
    names = set(pd.read_csv(out / "train.csv")["image_name"])
    assert {p.stem for p in (out / "jpeg" / "train").glob("*.jpg")} == names


def test_synth_force_over_records_says_in_one_line_they_are_stale_and_the_exact_command(tmp_path, capsys,
                                                                                         monkeypatch):
    """Records built from the old images are not synth's to remove; the last line says they are stale now and
    gives the `records` command that built them (kept in their manifest), to run again as it is."""
    monkeypatch.chdir(tmp_path)
    argv = ["synth", "demo", "--size", "16", "--patients", "6", "--test-patients", "2", "--no-progress"]
    assert cli.main(argv) == 0
    built = ["records", "--data", "demo", "--out", "demo/records 16", "--size", "16", "--parts", "3", "--workers", "1"]
    assert cli.main(built) == 0
    records = snapshot(tmp_path / "demo" / "records 16")
    capsys.readouterr()
    assert cli.main(argv + ["--seed", "1", "--force"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("warning: demo/records 16 holds records of the old images, stale now: rebuild them with "
                       "`python -m melanoma records --data demo --out 'demo/records 16' --size 16 --parts 3 "
                       "--workers 1`"), err
    assert not any("kept" in line for line in err)  # said once, in that line
    assert snapshot(tmp_path / "demo" / "records 16") == records  # kept as it was
    # the command as printed runs again, over its own folder
    assert cli.main(built) == 0 and snapshot(tmp_path / "demo" / "records 16") != records
