"""Data sources of a fold (melanoma.data.sources): fake copies of each public source in its exact format, one
tiny fold trained on each, duplicates planted and dropped, and the leak checks.

Training here uses a stand-in model (pooling + one dense layer): these tests are about which images
reach training, validation and OOF; test_end_to_end.py trains the real EfficientNet.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from melanoma import cli
from melanoma.core.config import ConfigError, load_config
from melanoma.core.errors import CheckFailed
from melanoma.data import converters, record_format, sources, taxonomy
from melanoma.input import pipeline

PUBLIC_TRAIN_COLUMNS = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
                        "diagnosis", "benign_malignant", "target", "tfrecord", "width", "height"]


# ---------------------------------------------------------------------------------------------------
# helpers: reading and writing records in the public schema


def read_records(path) -> list[tuple[bytes, dict]]:
    """(serialized record, parsed example with the image's JPEG bytes) for each record of a file."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_name": tf.io.FixedLenFeature([], tf.string)}
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in record_format.TRAIN_INT_FEATURES})
    out = []
    for serialized in tf.data.TFRecordDataset(str(path)):
        example = {k: v.numpy() for k, v in tf.io.parse_single_example(serialized, spec).items()}
        example["image_name"] = example["image_name"].decode()
        out.append((serialized.numpy(), example))
    return out


def write_records(folder: Path, part: int, rows: list[dict]) -> Path:
    """A train file named as the public datasets name theirs; rows hold `jpeg` and the int features."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / record_format.record_name("train", part, len(rows))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            writer.write(record_format.serialize_example(row["jpeg"], row, record_format.TRAIN_INT_FEATURES))
    return path


def noise_jpeg(rng: np.random.Generator, size: int = 32) -> bytes:
    image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size),
                       interpolation=cv2.INTER_NEAREST)
    return cv2.imencode(".jpg", image)[1].tobytes()


def external_row(name: str, jpeg: bytes, target: int, patient_id: int = -1) -> dict:
    return {"image_name": name, "jpeg": jpeg, "patient_id": patient_id, "sex": 1, "age_approx": 50,
            "anatom_site_general_challenge": 4, "diagnosis": 4 if target else 8, "target": target}


def write_yaml(folder: Path, name: str, tiny_data: dict, data: dict) -> Path:
    """A tiny config; `data` overrides keys of the data section."""
    section = {"train_files": f"{tiny_data['records']}/train*.tfrec",
               "test_files": f"{tiny_data['records']}/test*.tfrec",
               "sample_submission": str(tiny_data["sample_submission"]), "folds": 2, "image_size": 32}
    section.update(data)
    import yaml

    text = yaml.safe_dump({"output_dir": str(folder / "outputs"), "submission_dir": str(folder / "subs"),
                           "data": section,
                           "train": {"epochs": 1, "batch_size": 8, "steps_per_epoch": 1, "verbose": 0},
                           "tta": {"prediction_batch_size": 32}})
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def public(tiny_data, tmp_path_factory) -> dict:
    """Fake public datasets: melanoma-32x32 (+ its train.csv), isic2019-32x32, malignant-v2-32x32.

    Planted in the external sets: exact byte copies of two competition images under new names (one in
    an even isic2019 file, one in an odd one), a re-encoded (near) copy of a third, and a malignant-v2
    record that *is* a competition image (same name), as in the real malignant-v2.
    """
    root = tmp_path_factory.mktemp("public")
    melanoma = root / "melanoma-32x32"
    melanoma.mkdir()
    for path in sorted(tiny_data["records"].glob("*.tfrec")):
        shutil.copy(path, melanoma / path.name)
    table = pd.read_csv(tiny_data["records"] / "train.csv")
    files = record_format.list_files(str(melanoma / "train*.tfrec"))
    competition = {f.part: read_records(f.path) for f in files}
    valid0 = [e for part, rs in competition.items() if part % 2 == 0 for _, e in rs]
    train0 = [e for part, rs in competition.items() if part % 2 == 1 for _, e in rs]

    # the public train.csv: one row per image with its tfrecord (part); -1 marks a duplicate. Two images
    # present in the records are marked here, one of fold 0's training and one of its validation.
    public_csv = table[PUBLIC_TRAIN_COLUMNS[:8]].assign(tfrecord=table["part"], width=48, height=48)
    marked = [train0[0]["image_name"], valid0[0]["image_name"]]
    public_csv.loc[public_csv["image_name"].isin(marked), "tfrecord"] = -1
    public_csv.to_csv(melanoma / "train.csv", index=False)

    rng = np.random.default_rng(7)
    isic = root / "isic2019-32x32"
    copies = {"ISIC_0090001": valid0[1], "ISIC_0090002": train0[1]}  # exact bytes, new names
    near = valid0[2]
    image = cv2.imdecode(np.frombuffer(near["image"], np.uint8), cv2.IMREAD_COLOR)
    near_jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    number = 100
    for part in range(4):  # even: 2017+2018, odd: 2019-only
        rows = []
        for _ in range(4):
            rows.append(external_row(f"ISIC_00{number:05d}", noise_jpeg(rng), int(rng.random() < 0.3)))
            number += 1
        if part == 0:
            rows.append(external_row("ISIC_0090002", copies["ISIC_0090002"]["image"], 0))
        if part == 1:
            rows.append(external_row("ISIC_0090001", copies["ISIC_0090001"]["image"], 0))
        if part == 2:
            rows.append(external_row("ISIC_0090003", near_jpeg, 0))
        write_records(isic, part, rows)

    malignant = root / "malignant-v2-32x32"
    same = next(e for e in valid0[3:] if e["target"] == 1)
    write_records(malignant, 0, [external_row(f"ISIC_00{number + i:05d}", noise_jpeg(rng), 1) for i in range(3)])
    same_row = external_row(same["image_name"], same["image"], 1, patient_id=int(same["patient_id"]))
    write_records(malignant, 1, [same_row] + [external_row(f"ISIC_00{number + 3 + i:05d}", noise_jpeg(rng), 1)
                                              for i in range(2)])
    return {"root": root, "melanoma": melanoma, "isic2019": isic, "malignant": malignant,
            "marked": marked, "copies": {k: v["image_name"] for k, v in copies.items()},
            "near": near["image_name"], "same_name": same["image_name"], "table": table}


@pytest.fixture(scope="module")
def raw2019(tmp_path_factory) -> Path:
    """Raw ISIC 2019 training files in their own layout and column names."""
    root = tmp_path_factory.mktemp("isic2019raw")
    images = root / converters.ISIC2019_IMAGES
    images.mkdir()
    rng = np.random.default_rng(11)
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "MEL", "NV", "MEL", "BKL"]
    names = [f"ISIC_00{i:05d}" for i in range(len(classes))]
    names[3] = names[3] + "_downsampled"
    truth = pd.DataFrame(0.0, index=range(len(names)), columns=list(taxonomy.DIAGNOSIS_CLASSES))
    for row, cls in enumerate(classes):
        truth.loc[row, cls] = 1.0
    truth.insert(0, "image", names)
    truth.to_csv(root / converters.ISIC2019_GROUND_TRUTH, index=False)
    sites = ["anterior torso", "posterior torso", "lateral torso", "head/neck", "upper extremity",
             "lower extremity", "palms/soles", "oral/genital", None, "anterior torso", None, "head/neck"]
    metadata = pd.DataFrame({"image": names, "age_approx": [55, 30, None, 70, 45, 40, 35, 60, 20, 85, 50, 65],
                             "anatom_site_general": sites,
                             "lesion_id": ["HAM_0000001", "HAM_0000001", None, "BCN_0000003", "BCN_0000004",
                                           None, "MSK4_0000006", None, "BCN_0000008", None, None, "HAM_0000011"],
                             "sex": ["male", "female", None, "male", "female", "male", "female", "male",
                                     "female", "male", "female", "male"]})
    metadata.to_csv(root / converters.ISIC2019_METADATA, index=False)
    for name in names:  # any size: the conversion resizes
        image = cv2.resize(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), (72, 48))
        cv2.imwrite(str(images / f"{name}.jpg"), image)
    return root


@pytest.fixture
def fast_model(monkeypatch):
    """Swap the EfficientNet for pooling + one dense layer: the data flow is what is under test."""
    import keras

    from melanoma.model import network as model

    def build(config, pretrained=True):
        size = config.data.image_size
        image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
        pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(image))
        output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="target")(pooled)
        return keras.Model({"image": image}, output)

    monkeypatch.setattr(model, "build_model", build)


def train_fold0(config_path: Path) -> tuple[dict, pd.DataFrame, Path]:
    assert cli.main(["train", "--config", str(config_path), "--fold", "0"]) == 0
    folder = config_path.parent / "outputs" / config_path.stem / "fold0"
    return json.loads((folder / "data.json").read_text()), pd.read_csv(folder / "oof.csv"), folder


def fold0_validation(table: pd.DataFrame) -> set[str]:
    return set(table.loc[table["part"] % 2 == 0, "image_name"])


# ---------------------------------------------------------------------------------------------------
# one tiny fold on each source


def test_public_tfrecords_with_tfrecord_minus_one(public, tiny_data, tmp_path, fast_model, capsys):
    config = write_yaml(tmp_path, "public", tiny_data, {
        "train_files": f"{public['melanoma']}/train*.tfrec", "test_files": f"{public['melanoma']}/test*.tfrec",
        "duplicates_csv": str(public["melanoma"] / "train.csv")})
    summary, oof, folder = train_fold0(config)
    assert "fold 0 data:" in capsys.readouterr().out
    assert list(summary["training"]) == ["competition"] and list(summary["validation"]) == ["competition"]
    assert summary["duplicates_dropped"]["train_csv_tfrecord_-1"] == 2
    assert summary["duplicates_dropped_by_split"]["validation"]["train_csv_tfrecord_-1"] == 1
    table = public["table"]
    expected = fold0_validation(table) - set(public["marked"])
    assert set(oof["image_name"]) == expected and len(oof) == len(expected)
    assert summary["validation"]["competition"]["images"] == len(expected)
    train_names = set(table["image_name"]) - fold0_validation(table) - set(public["marked"])
    assert summary["training"]["competition"]["images"] == len(train_names)
    assert summary["training"]["competition"]["patients"] == table.loc[
        table["image_name"].isin(train_names), "patient_id"].nunique()
    drops = pd.read_csv(folder / "duplicates.csv")
    assert set(drops["image_name"]) == set(public["marked"])


def test_raw_csv_and_jpeg_through_records(tiny_data, tmp_path, fast_model, capsys):
    out = tmp_path / "records"
    data_dir = Path(tiny_data["train_csv"]).parent
    assert cli.main(["records", "--data", str(data_dir), "--out", str(out), "--size", "32", "--parts", "4",
                     "--test-parts", "2", "--workers", "1"]) == 0
    table = pd.read_csv(out / "train.csv")
    raw = pd.read_csv(tiny_data["train_csv"])
    assert len(table) == len(raw) and {"part", "sex_code", "age_approx_code",
                                       "anatom_site_general_challenge_code", "patient_id_code"} <= set(table)
    assert (table.loc[table["sex"].isna(), "sex_code"] == -1).all()
    assert (table.loc[table["anatom_site_general_challenge"].isna(), "anatom_site_general_challenge_code"] == -1).all()
    assert (table.loc[table["age_approx"].isna(), "age_approx_code"] == -1).all()
    assert (table.groupby("patient_id")["part"].nunique() == 1).all()
    assert json.loads((out / "encodings.json").read_text())["sex"] == {"female": 0, "male": 1}

    # ISIC's duplicates list: a pair inside one patient, and a pair with a test image (nothing to drop)
    patient = table.groupby("patient_id").filter(lambda g: len(g) >= 2)["patient_id"].iloc[0]
    pair = sorted(table.loc[table["patient_id"] == patient, "image_name"])[:2]
    test_name = pd.read_csv(tiny_data["test_csv"])["image_name"].iloc[0]
    duplicates = tmp_path / "2020_Challenge_duplicates.csv"
    pd.DataFrame({"ISIC_id": [pair[1], test_name], "ISIC_id_paired": [pair[0], pair[0]],
                  "partition": ["train", "test"]}).to_csv(duplicates, index=False)
    config = write_yaml(tmp_path, "raw", tiny_data, {"train_files": f"{out}/train*.tfrec",
                                                     "test_files": f"{out}/test*.tfrec",
                                                     "duplicates_csv": str(duplicates)})
    summary, oof, folder = train_fold0(config)
    assert summary["duplicates_dropped"]["duplicates_csv_pair"] == 1
    assert pd.read_csv(folder / "duplicates.csv")["image_name"].tolist() == [pair[1]]
    expected = fold0_validation(table) - {pair[1]}
    assert set(oof["image_name"]) == expected
    assert cli.main(["infer", "--config", str(config), "--allow-partial"]) == 0  # fold 0 of 2
    assert len(pd.read_csv(folder / "test.csv")) == len(pd.read_csv(tiny_data["test_csv"]))


def test_public_plus_isic2019_and_malignant(public, tiny_data, tmp_path, fast_model):
    config = write_yaml(tmp_path, "external", tiny_data, {
        "train_files": f"{public['melanoma']}/train*.tfrec", "test_files": f"{public['melanoma']}/test*.tfrec",
        "external_files": [f"{public['isic2019']}/train*.tfrec", f"{public['malignant']}/train*.tfrec"],
        "external_upsample": 2, "dedupe_perceptual": True})
    summary, oof, folder = train_fold0(config)
    training, validation = summary["training"], summary["validation"]
    assert set(training) == {"competition", "isic2019-32x32", "malignant-v2-32x32"}
    assert set(validation) == {"competition"}  # external images only in training
    assert training["isic2019-32x32"]["files"] == 4 and training["isic2019-32x32"]["repeats"] == 1
    assert training["isic2019-32x32"]["images"] == 16  # 19 records, 3 planted copies dropped
    assert training["isic2019-32x32"]["patients"] == 0
    assert training["isic2019-32x32"]["images_without_patient"] == 16
    assert training["malignant-v2-32x32"]["images"] == 5 and training["malignant-v2-32x32"]["repeats"] == 2
    assert training["malignant-v2-32x32"]["malignant"] == 5
    assert summary["training_images_per_epoch"] == training["competition"]["images"] + 16 + 2 * 5
    assert summary["duplicates_dropped"] == {"duplicates_csv_pair": 0, "train_csv_tfrecord_-1": 0,
                                             "external_same_name": 1, "external_exact_hash": 2,
                                             "external_perceptual_hash": 1}
    drops = pd.read_csv(folder / "duplicates.csv").set_index("image_name")
    for new_name, original in public["copies"].items():
        assert drops.loc[new_name, "reason"] == "external_exact_hash"
        assert drops.loc[new_name, "duplicate_of"] == original
    assert drops.loc["ISIC_0090003", "duplicate_of"] == public["near"]
    assert drops.loc[public["same_name"], "source"] == "malignant-v2-32x32"
    assert set(oof["image_name"]) == fold0_validation(public["table"])  # competition images only
    assert (folder / "model.keras").is_file()

    # tables (names, patients, targets, hashes) cached per file for the next folds and runs, and the test
    # files' image names (the train/test overlap check)
    cache = tmp_path / "outputs" / ".cache" / "tables"
    tests = len(list(public["melanoma"].glob("test*.tfrec")))
    assert len(list(cache.glob("*-names.csv"))) == tests
    assert len(list(cache.glob("*.csv"))) == 6 + 4 + 2 + tests


def test_raw_isic2019_through_records(raw2019, public, tiny_data, tmp_path, fast_model):
    out = tmp_path / "isic2019-raw-32"
    assert cli.main(["records", "--isic2019", str(raw2019), "--out", str(out), "--size", "32", "--parts", "3",
                     "--workers", "1"]) == 0
    files = record_format.list_files(str(out / "train*.tfrec"))
    assert [f.part for f in files] == [0, 1, 2] and sum(f.count for f in files) == 12
    table = pd.read_csv(out / "train.csv").set_index("image_name")
    assert table["target"].sum() == 3 and table.loc["ISIC_0000000", "diagnosis"] == "melanoma"
    assert table.loc["ISIC_0000002", "diagnosis"] == "basal cell carcinoma"  # its own name, not "unknown"
    assert table.loc["ISIC_0000002", "isic_class"] == "BCC"
    codes = taxonomy.COMPETITION_ENCODINGS
    assert table.loc["ISIC_0000001", "anatom_site_general_challenge_code"] == codes[
        "anatom_site_general_challenge"]["torso"]
    assert table.loc["ISIC_0000008", "anatom_site_general_challenge_code"] == -1
    assert table.loc["ISIC_0000002", "age_approx_code"] == -1 and table.loc["ISIC_0000002", "sex_code"] == -1
    assert table.loc["ISIC_0000000", "patient_id_code"] == table.loc["ISIC_0000001", "patient_id_code"] >= 0
    assert table.loc["ISIC_0000005", "patient_id_code"] == -1
    read = pd.concat([pd.DataFrame([e for _, e in read_records(f.path)]) for f in files])
    assert set(read["image_name"]) == set(table.index) and "ISIC_0000003_downsampled" in set(read["image_name"])
    row = read.set_index("image_name").loc["ISIC_0000001"]
    assert row["diagnosis"] == codes["diagnosis"]["nevus"] and row["target"] == 0
    assert cv2.imdecode(np.frombuffer(row["image"], np.uint8), cv2.IMREAD_COLOR).shape == (32, 32, 3)

    only = tmp_path / "malignant-only"
    assert cli.main(["records", "--isic2019", str(raw2019), "--out", str(only), "--size", "32",
                     "--malignant-only", "--workers", "1"]) == 0
    assert sum(f.count for f in record_format.list_files(str(only / "train*.tfrec"))) == 3

    config = write_yaml(tmp_path, "raw2019", tiny_data, {"external_files": [f"{out}/train*.tfrec"]})
    summary, oof, _ = train_fold0(config)
    assert summary["training"]["isic2019-raw-32"]["images"] == 12  # not the public isic2019 layout: all parts
    assert summary["training"]["isic2019-raw-32"]["selection"] == "all"
    assert set(summary["validation"]) == {"competition"}
    assert set(oof["image_name"]) == fold0_validation(public["table"])


# ---------------------------------------------------------------------------------------------------
# without training


def test_isic2019_parity_selection(public, tiny_data, tmp_path):
    base = {"external_files": [{"isic2019-32x32": f"{public['isic2019']}/train*.tfrec"}]}
    for flags, parts in (((True, True), [0, 1, 2, 3]), ((True, False), [0, 2]), ((False, True), [1, 3]),
                         ((False, False), [])):
        config = load_config(write_yaml(tmp_path, "parity", tiny_data, dict(
            base, isic2019_even_files=flags[0], isic2019_odd_files=flags[1])))
        (chosen,) = sources.external_sets(config.data)
        assert [f.part for f in chosen.files] == parts
    named = load_config(write_yaml(tmp_path, "named", tiny_data, {
        "external_files": {"other": f"{public['isic2019']}/train*.tfrec"}, "external_upsample": 3,
        "isic2019_odd_files": False}))
    (other,) = sources.external_sets(named.data)
    assert other.name == "other" and len(other.files) == 4 and other.repeats == 3
    with pytest.raises(ConfigError, match="external_upsample"):
        sources.external_sets(load_config(write_yaml(tmp_path, "neg", tiny_data, {"external_upsample": -1})).data)


def test_record_filter_drops_per_file(public, tiny_data, tmp_path):
    """A name dropped from an external file stays in the competition file that also holds it."""
    config = load_config(write_yaml(tmp_path, "filter", tiny_data, {
        "train_files": f"{public['melanoma']}/train*.tfrec",
        "external_files": [f"{public['isic2019']}/train*.tfrec", f"{public['malignant']}/train*.tfrec"]}))
    fold_data = sources.prepare_fold(config, 0, progress=False)
    names = [e["image_name"].numpy().decode() for e in pipeline._read(
        fold_data.train_paths + fold_data.valid_paths, ordered=True, keep=fold_data.record_filter()).map(
        lambda s: tf.io.parse_single_example(s, {"image_name": tf.io.FixedLenFeature([], tf.string)}))]
    assert names.count(public["same_name"]) == 1  # the competition copy (validation), not malignant-v2's
    assert not set(public["copies"]) & set(names)
    assert "ISIC_0090003" in names  # perceptual dedupe is off here
    assert len(names) == len(public["table"]) + 16 + 1 + 5


def test_leak_checks_refuse_to_train(public, tiny_data, tmp_path, capsys):
    melanoma = public["melanoma"]
    # an external file given as a competition file: two files for one part
    config = load_config(write_yaml(tmp_path, "both", tiny_data, {
        "train_files": [f"{melanoma}/train*.tfrec", f"{public['isic2019']}/train01*.tfrec"]}))
    with pytest.raises(CheckFailed, match="2 files for part 1.*data.external_files"):
        sources.prepare_fold(config, 0, progress=False)
    # ... or with a part of its own: images without a patient in validation
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(next(public["isic2019"].glob("train01-*.tfrec")), lonely / "train07-5.tfrec")
    config = load_config(write_yaml(tmp_path, "lonely", tiny_data, {
        "train_files": [f"{melanoma}/train*.tfrec", f"{lonely}/train*.tfrec"]}))
    with pytest.raises(CheckFailed, match="without a patient id"):
        sources.prepare_fold(config, 1, progress=False)
    # the same file as competition and external data
    config = load_config(write_yaml(tmp_path, "same", tiny_data, {
        "train_files": f"{melanoma}/train*.tfrec", "external_files": f"{melanoma}/train00*.tfrec"}))
    with pytest.raises(CheckFailed, match="both data.train_files and data.external_files"):
        sources.prepare_fold(config, 0, progress=False)

    # a patient in both training and validation: move one record of a patient to a part of the other fold
    moved = tmp_path / "moved"
    files = record_format.list_files(f"{melanoma}/train*.tfrec")
    parts = {f.part: read_records(f.path) for f in files}
    patients = pd.Series([e["patient_id"] for _, e in parts[0]])
    shared = patients.duplicated(keep=False).to_numpy().nonzero()[0][0]  # a patient with 2+ images
    parts[1].append(parts[0].pop(shared))
    moved.mkdir()
    for part, serialized in parts.items():
        with tf.io.TFRecordWriter(str(moved / record_format.record_name("train", part, len(serialized)))) as writer:
            for record, _ in serialized:
                writer.write(record)
    path = write_yaml(tmp_path, "moved", tiny_data, {"train_files": f"{moved}/train*.tfrec"})
    capsys.readouterr()
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 1
    error = capsys.readouterr().err
    assert "have images in both training and validation" in error
    assert not (tmp_path / "outputs" / "moved" / "fold0" / "model.keras").exists()


def test_check_oof_keeps_competition_validation_only(public, tiny_data, tmp_path):
    config = load_config(write_yaml(tmp_path, "oof", tiny_data, {
        "train_files": f"{public['melanoma']}/train*.tfrec", "duplicates_csv": str(public["melanoma"] / "train.csv")}))
    fold_data = sources.prepare_fold(config, 0, progress=False)
    valid = sorted(fold0_validation(public["table"]))
    oof = pd.DataFrame({"image_name": valid, "pred": 0.5})
    kept = sources.check_oof(oof, fold_data)
    assert set(kept["image_name"]) == set(valid) - set(public["marked"])
    with pytest.raises(CheckFailed, match="not competition validation images"):
        sources.check_oof(pd.concat([oof, pd.DataFrame({"image_name": ["ISIC_0090001"], "pred": [0.1]})]),
                          fold_data)
    with pytest.raises(CheckFailed, match="lacks or repeats"):
        sources.check_oof(oof.iloc[5:], fold_data)


def test_duplicates_csv_formats(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"ISIC_id": ["B", "C", "E"], "ISIC_id_paired": ["A", "B", "D"],
                  "partition": ["train"] * 3}).to_csv(pairs, index=False)
    found = sources.read_duplicates(str(pairs))
    dropped = sources.pair_drops(found["duplicates_csv_pair"], present={"A", "B", "C", "D"})
    assert dict(zip(dropped["image_name"], dropped["duplicate_of"])) == {"B": "A", "C": "A"}  # E: not present
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"image": ["A"]}).to_csv(bad, index=False)
    with pytest.raises(Exception, match="expected ISIC's"):
        sources.read_duplicates(str(bad))


def test_difference_hash_matches_near_copies():
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_LINEAR)
    original = sources.difference_hash(cv2.imencode(".jpg", image)[1].tobytes())
    smaller = sources.difference_hash(cv2.imencode(".jpg", cv2.resize(image, (48, 48)),
                                                   [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes())
    other = sources.difference_hash(noise_jpeg(np.random.default_rng(1), 64))
    assert bin(original ^ smaller).count("1") <= 4 < bin(original ^ other).count("1")
    queries = np.array([smaller, other], dtype=np.uint64)
    q, r = sources.hamming_matches(queries, np.array([original], dtype=np.uint64), 4)
    assert q.tolist() == [0] and r.tolist() == [0]


def test_real_metadata_duplicate_marks(tmp_path, real_metadata):
    """The real public train.csv: every tfrecord == -1 row is read as a duplicate (no copy is kept)."""
    found = sources.read_duplicates(str(real_metadata))
    marked = pd.read_csv(real_metadata)
    assert set(found["train_csv_tfrecord_-1"]["image_name"]) == set(marked.loc[marked["tfrecord"] == -1, "image_name"])
