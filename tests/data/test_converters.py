"""Other sources keep their meaning: ISIC 2019 (nine classes) and HAM10000 converted from their published
layouts, codes mapped by name across sources, patients counted within a source, upsampling of
competition images only, and a tiny diagnosis-head run on HAM10000 records with its per-class report.

The raw files are written here in the exact published layouts (file and folder names, columns, value
vocabularies), with small images; the conversion resizes them to 32 px.
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
import yaml

from melanoma import cli
from melanoma.core.config import ConfigError, load_config
from melanoma.data import diagnoses, record_format, sources, taxonomy
from melanoma.input import pipeline

ISIC2019_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]  # published column order
HAM10000_DX = {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV", "vasc": "VASC"}
PLANTED = "ISIC_0099999"  # a HAM10000 image that is a competition image under another name


def lesion_image(rng: np.random.Generator, large: bool, shape=(30, 40)) -> np.ndarray:
    image = np.empty(shape + (3,), np.uint8)
    image[:] = rng.integers(140, 220, size=3)
    centre = (int(rng.integers(15, 25)), int(rng.integers(12, 18)))
    axes = (int(rng.integers(8, 12)), int(rng.integers(6, 10))) if large else (4, 3)
    cv2.ellipse(image, centre, axes, int(rng.integers(0, 180)), 0, 360,
                tuple(int(v) for v in rng.integers(20, 90, size=3)), -1)
    return np.clip(image.astype(np.int16) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)


def read_records(pattern: str) -> pd.DataFrame:
    """Every record's int features and name (no images) of the files matching `pattern`."""
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string)}
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in record_format.TRAIN_INT_FEATURES})
    rows = []
    for record_file in record_format.list_files(pattern):
        for serialized in tf.data.TFRecordDataset(record_file.path):
            example = {k: v.numpy() for k, v in tf.io.parse_single_example(serialized, spec).items()}
            rows.append({**example, "image_name": example["image_name"].decode(), "part": record_file.part})
    return pd.DataFrame(rows)


def class_of_code(encodings: dict, code: int) -> str:
    names = {c: name for name, c in encodings["diagnosis"].items()}
    return taxonomy.DIAGNOSIS_CLASSES[taxonomy.diagnosis_class(names[code])]


# ---------------------------------------------------------------------------------------------------
# raw sources in their published layouts


@pytest.fixture(scope="module")
def isic2019_raw(tmp_path_factory) -> dict:
    """ISIC_2019_Training_GroundTruth.csv (one-hot floats over the nine classes), ISIC_2019_Training_
    Metadata.csv and ISIC_2019_Training_Input/<image>.jpg: two images of each class, three of MEL; lesions
    of two images each, two images without a lesion."""
    root = tmp_path_factory.mktemp("isic2019")
    (root / "ISIC_2019_Training_Input").mkdir()
    rng = np.random.default_rng(5)
    classes = [cls for cls in ISIC2019_CLASSES for _ in range(2)] + ["MEL"]
    names = [f"ISIC_00{i:05d}" for i in range(len(classes))]
    truth = pd.DataFrame({"image": names, **{cls: [float(c == cls) for c in classes] for cls in ISIC2019_CLASSES}})
    truth.to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    lesions = [f"BCN_{i // 2:07d}" for i in range(len(names))]
    lesions[4] = lesions[17] = None
    sites = ["anterior torso", "posterior torso", "lateral torso", "head/neck", "upper extremity",
             "lower extremity", "palms/soles", "oral/genital", None]
    metadata = pd.DataFrame({"image": names,
                             "age_approx": [20 + 5 * (i % 12) if i != 3 else None for i in range(len(names))],
                             "anatom_site_general": [sites[i % len(sites)] for i in range(len(names))],
                             "lesion_id": lesions,
                             "sex": [["male", "female", None][i % 3] for i in range(len(names))]})
    metadata.to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    for name, cls in zip(names, classes):
        cv2.imwrite(str(root / "ISIC_2019_Training_Input" / f"{name}.jpg"), lesion_image(rng, cls == "MEL"))
    return {"root": root, "classes": dict(zip(names, classes)), "lesions": dict(zip(names, lesions))}


@pytest.fixture(scope="module")
def ham_raw(tiny_data, tmp_path_factory) -> dict:
    """HAM10000_metadata.csv (lesion_id, image_id, dx, dx_type, age, sex, localization) and the images in
    HAM10000_images_part_1/ and _part_2/: six images of each dx, in lesions of two, plus one image whose
    JPEG is a competition training image's (the duplicate check must drop it as external data); each
    melanoma its own lesion, so that every part can hold one."""
    root = tmp_path_factory.mktemp("ham10000")
    parts = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    for folder in parts:
        folder.mkdir()
    rng = np.random.default_rng(6)
    localizations = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot",
                     "unknown", "neck", "scalp", "hand", "ear", "genital", "acral"]
    rows = []
    for index, dx in enumerate(dx for dx in HAM10000_DX for _ in range(6)):
        name = f"ISIC_00{24306 + index:05d}"
        lesion = f"HAM_{1000 + index:07d}" if dx == "mel" else f"HAM_{index // 2:07d}"  # 6 melanomas
        rows.append({"lesion_id": lesion, "image_id": name, "dx": dx,
                     "dx_type": ["histo", "follow_up", "consensus", "confocal"][index % 4],
                     "age": float(30 + 5 * (index % 10)) if index != 7 else None,
                     "sex": ["male", "female", "unknown"][index % 3],
                     "localization": localizations[index % len(localizations)]})
        cv2.imwrite(str(parts[index % 2] / f"{name}.jpg"), lesion_image(rng, dx == "mel", shape=(45, 60)))
    competition = pd.read_csv(tiny_data["train_csv"])
    copied = competition.loc[competition["target"] == 0, "image_name"].iloc[0]
    shutil.copy(Path(tiny_data["train_images"]) / f"{copied}.jpg", parts[1] / f"{PLANTED}.jpg")
    rows.append({"lesion_id": "HAM_0099999", "image_id": PLANTED, "dx": "nv", "dx_type": "follow_up",
                 "age": 45.0, "sex": "female", "localization": "back"})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return {"root": root, "metadata": pd.DataFrame(rows), "copied": copied}


@pytest.fixture(scope="module")
def ham_records(ham_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "ham10000-32"
    assert cli.main(["records", "--ham10000", str(ham_raw["root"]), "--out", str(out), "--size", "32",
                     "--parts", "4", "--workers", "1"]) == 0
    return out


def competition_patients(tiny_data) -> set[int]:
    return set(read_records(f"{tiny_data['records']}/train*.tfrec")["patient_id"])


# ---------------------------------------------------------------------------------------------------
# converters


def test_isic2019_keeps_all_nine_classes_and_its_own_patients(isic2019_raw, tiny_data, tmp_path):
    out = tmp_path / "isic2019-raw-32"
    assert cli.main(["records", "--isic2019", str(isic2019_raw["root"]), "--out", str(out), "--size", "32",
                     "--parts", "3", "--workers", "1"]) == 0
    encodings = json.loads((out / "encodings.json").read_text())
    written = read_records(f"{out}/train*.tfrec").set_index("image_name")
    assert set(written.index) == set(isic2019_raw["classes"])
    # every class by name: the record's code -> the name in encodings.json -> the class it was in the CSV
    for name, cls in isic2019_raw["classes"].items():
        assert class_of_code(encodings, written.loc[name, "diagnosis"]) == cls, name
        assert written.loc[name, "target"] == int(cls == "MEL")
    codes = {cls: {written.loc[n, "diagnosis"] for n, c in isic2019_raw["classes"].items() if c == cls}
             for cls in ISIC2019_CLASSES}
    assert all(len(found) == 1 for found in codes.values()) and len({c.pop() for c in codes.values()}) == 9
    # shared names keep the competition's codes; the others follow them
    assert encodings["diagnosis"]["melanoma"] == taxonomy.COMPETITION_ENCODINGS["diagnosis"]["melanoma"]
    assert encodings["diagnosis"]["basal cell carcinoma"] == 9
    # lesions: one part each, patient codes in the source's own range, none a competition patient
    table = pd.read_csv(out / "train.csv")
    assert (table.dropna(subset=["lesion_id"]).groupby("lesion_id")["part"].nunique() == 1).all()
    grouped = written.assign(lesion=pd.Series(isic2019_raw["lesions"])).dropna(subset=["lesion"])
    assert (grouped.groupby("lesion")["part"].nunique() == 1).all()
    assert (grouped.groupby("lesion")["patient_id"].nunique() == 1).all()
    assert grouped["patient_id"].nunique() == grouped["lesion"].nunique()
    first, count = encodings["patient_id"]["first"], encodings["patient_id"]["count"]
    assert count == grouped["lesion"].nunique() and first == taxonomy.PATIENT_CODE_START["isic2019"]
    assert grouped["patient_id"].between(first, first + count - 1).all()
    assert (written.loc[written.index.isin(["ISIC_0000004", "ISIC_0000017"]), "patient_id"] == -1).all()
    assert not set(written["patient_id"]) & competition_patients(tiny_data)
    competition_range = json.loads((tiny_data["records"] / "encodings.json").read_text())["patient_id"]
    assert competition_range["first"] + competition_range["count"] <= first


def test_ham10000_records_in_the_published_layout(ham_raw, ham_records, tiny_data, tmp_path, capsys):
    encodings = json.loads((ham_records / "encodings.json").read_text())
    written = read_records(f"{ham_records}/train*.tfrec").set_index("image_name")
    metadata = ham_raw["metadata"].set_index("image_id")
    assert set(written.index) == set(metadata.index)  # images from both part folders
    for name, row in metadata.iterrows():
        assert class_of_code(encodings, written.loc[name, "diagnosis"]) == HAM10000_DX[row["dx"]], name
        assert written.loc[name, "target"] == int(row["dx"] == "mel")
    assert {class_of_code(encodings, c) for c in written["diagnosis"]} == set(HAM10000_DX.values())
    # HAM10000 and ISIC 2019 records give a class the same code (one table over every source)
    assert encodings["diagnosis"]["vascular lesion"] == 13 and encodings["diagnosis"]["nevus"] == 5
    # metadata in the competition's vocabulary; unknown -> -1
    sites = encodings["anatom_site_general_challenge"]
    expected_site = {"back": sites["torso"], "face": sites["head/neck"], "acral": sites["palms/soles"],
                     "hand": sites["upper extremity"], "genital": sites["oral/genital"], "unknown": -1}
    for name, row in metadata.iterrows():
        if row["localization"] in expected_site:
            assert written.loc[name, "anatom_site_general_challenge"] == expected_site[row["localization"]]
        sex = {"male": encodings["sex"]["male"], "female": encodings["sex"]["female"], "unknown": -1}[row["sex"]]
        assert written.loc[name, "sex"] == sex
        assert written.loc[name, "age_approx"] == (-1 if pd.isna(row["age"]) else round(row["age"]))
    # lesions are the patients: one part each, one code each, in HAM10000's range
    lesion = metadata["lesion_id"].reindex(written.index)
    assert (written.groupby(lesion)["part"].nunique() == 1).all()
    assert (written.groupby(lesion)["patient_id"].nunique() == 1).all()
    assert written["patient_id"].nunique() == lesion.nunique() == encodings["patient_id"]["count"]
    assert written["patient_id"].min() >= taxonomy.PATIENT_CODE_START["ham10000"]
    assert not set(written["patient_id"]) & competition_patients(tiny_data)
    # parts stratified as `folds` does: every part has melanoma
    assert sorted(written["part"].unique()) == [0, 1, 2, 3]
    assert (written.groupby("part")["target"].sum() > 0).all()
    table = pd.read_csv(ham_records / "train.csv").set_index("image_name")
    assert table.loc[PLANTED, "dx"] == "nv" and table.loc[PLANTED, "isic_class"] == "NV"

    only = tmp_path / "ham-mel"
    assert cli.main(["records", "--ham10000", str(ham_raw["root"]), "--out", str(only), "--size", "32",
                     "--malignant-only", "--workers", "1"]) == 0
    assert set(read_records(f"{only}/train*.tfrec")["target"]) == {1}
    assert sum(f.count for f in record_format.list_files(f"{only}/train*.tfrec")) == 6
    capsys.readouterr()
    assert cli.main(["records", "--ham10000", str(tmp_path), "--out", str(tmp_path / "x"), "--size", "32"]) == 2
    assert "HAM10000_metadata.csv" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# several sources in one run


def write_yaml(folder: Path, name: str, tiny_data: dict, data: dict, **sections) -> Path:
    section = {"train_files": f"{tiny_data['records']}/train*.tfrec",
               "test_files": f"{tiny_data['records']}/test*.tfrec",
               "sample_submission": str(tiny_data["sample_submission"]), "folds": 2, "image_size": 32}
    section.update(data)
    body = {"output_dir": str(folder / "outputs"), "submission_dir": str(folder / "subs"), "data": section,
            "train": {"epochs": 1, "batch_size": 8, "steps_per_epoch": 2, "verbose": 0},
            "tta": {"prediction_batch_size": 32}}
    for key, values in sections.items():
        body.setdefault(key, {}).update(values)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def one_pass(dataset, images: int) -> np.ndarray:
    """The labels of the first `images` elements of a batch-1 training dataset."""
    return np.concatenate([labels.numpy() for _, labels in dataset.take(images)])


def test_external_ham10000_duplicates_and_classes_mapped_by_name(ham_raw, ham_records, tiny_data, tmp_path):
    path = write_yaml(tmp_path, "mixed", tiny_data, {"external_files": [f"{ham_records}/train*.tfrec"]},
                      model={"head": "diagnosis"})
    config = load_config(path)
    fold = sources.prepare_fold(config, 0, progress=False)
    external = fold.summary["training"]["ham10000-32"]
    assert external["images"] == 42 and fold.summary["duplicates_dropped"]["external_exact_hash"] == 1
    assert fold.drops.set_index("image_name").loc[PLANTED, "duplicate_of"] == ham_raw["copied"]
    assert set(fold.summary["validation"]) == {"competition"}

    # the two sources code diagnoses differently; each is mapped by its own names
    lookups = diagnoses.source_lookups(config, fold.train_files, fold.train_sources)
    competition_codes = json.loads((tiny_data["records"] / "encodings.json").read_text())["diagnosis"]
    ham_codes = json.loads((ham_records / "encodings.json").read_text())["diagnosis"]
    assert competition_codes["melanoma"] != ham_codes["melanoma"]
    dataset = pipeline.train_dataset(fold.train_paths, config, batch_size=1, seed=0, keep=fold.record_filter(),
                                     diagnosis_lookup=lookups, sources=fold.train_sources)
    labels = one_pass(dataset, fold.train_images)
    counts = dict(zip(taxonomy.DIAGNOSIS_CLASSES, labels.sum(axis=0).astype(int)))

    competition = pd.read_csv(tiny_data["records"] / "train.csv")
    training_rows = competition[competition["part"] % 2 == 1]
    competition_classes = np.asarray(taxonomy.DIAGNOSIS_CLASSES)[taxonomy.true_classes(
        training_rows["diagnosis_code"], training_rows["target"],
        taxonomy.diagnosis_lookup(taxonomy.names_in_code_order(competition_codes)))]
    ham = pd.read_csv(ham_records / "train.csv")
    expected = pd.Series(list(competition_classes) + list(ham.loc[ham["image_name"] != PLANTED, "isic_class"]))
    assert counts == {cls: int((expected == cls).sum()) for cls in taxonomy.DIAGNOSIS_CLASSES}
    assert counts["BCC"] == counts["AK"] == counts["DF"] == counts["VASC"] == 6  # HAM10000 only


def test_upsampling_repeats_competition_images_only_and_steps_count_them(ham_records, tiny_data, tmp_path):
    path = write_yaml(tmp_path, "upsample", tiny_data, {"external_files": [f"{ham_records}/train*.tfrec"]},
                      train={"upsample_malignant": 3})
    config = load_config(path)
    fold = sources.prepare_fold(config, 0, progress=False)
    competition = fold.summary["training"]["competition"]
    external = fold.summary["training"]["ham10000-32"]
    assert competition["malignant_repeats"] == 3
    assert fold.train_images == competition["images"] + 2 * competition["malignant"] + external["images"]
    assert fold.summary["training_images_per_epoch"] == fold.train_images
    dataset = pipeline.train_dataset(fold.train_paths, config, batch_size=1, seed=0, keep=fold.record_filter(),
                                     sources=fold.train_sources)
    targets = one_pass(dataset, fold.train_images)
    assert targets.sum() == 3 * competition["malignant"] + external["malignant"]  # external MEL once


def test_patient_counts_count_within_a_source(tmp_path):
    """Two sources that both use patient code 1, one file listed twice (an upsampled external set)."""
    def write(folder: Path, patients: list[int]) -> str:
        folder.mkdir()
        path = folder / record_format.record_name("train", 0, len(patients))
        jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
        with tf.io.TFRecordWriter(str(path)) as writer:
            for index, patient in enumerate(patients):
                row = {"image_name": f"{folder.name}_{index}", "patient_id": patient, "sex": 0, "age_approx": 50,
                       "anatom_site_general_challenge": 0, "diagnosis": 0, "target": 0}
                writer.write(record_format.serialize_example(jpeg, row, record_format.TRAIN_INT_FEATURES))
        return str(path)

    competition = write(tmp_path / "competition", [1, 1, 2])
    external = write(tmp_path / "external", [1, 1, 1, 5])
    paths = [competition, external, external]
    _, tags = pipeline.source_tags(paths, ["competition", "ext", "ext"])
    examples = tf.data.Dataset.from_tensor_slices({"patient_id": tf.constant([1, 1, 2, 5, -1], tf.int64),
                                                   "source": tf.constant([0, 1, 0, 1, 1], tf.int64)})
    counted = [float(e["patient_count"]) for e in pipeline.with_patient_counts(examples, paths, "train", tags)]
    assert counted == [2.0, 3.0, 1.0, 1.0, 0.0]
    assert pipeline.patient_counts([external, external], "train") == {1: 3, 5: 1}


def test_records_without_encodings_are_an_error_for_the_diagnosis_head(ham_records, tiny_data, tmp_path, capsys):
    bare = tmp_path / "bare-ham"
    bare.mkdir()
    for path in ham_records.glob("train*.tfrec"):
        shutil.copy(path, bare / path.name)
    path = write_yaml(tmp_path, "bare", tiny_data, {"external_files": [f"{bare}/train*.tfrec"]},
                      model={"head": "diagnosis"})
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 2
    error = capsys.readouterr().err
    assert str(bare) in error and "encodings.json" in error and "data.diagnosis_names" in error
    assert not (tmp_path / "outputs" / "bare").exists()  # nothing written, no model built
    # the way out: the codes' names for that source alone
    names = taxonomy.names_in_code_order(json.loads((ham_records / "encodings.json").read_text())["diagnosis"])
    config = load_config(path, [f"data.diagnosis_names={{bare-ham: [{', '.join(repr(n) for n in names)}]}}"])
    diagnoses.check_diagnosis_sources(config)
    files = record_format.list_files(f"{bare}/train*.tfrec")
    lookups = diagnoses.source_lookups(config, files, ["bare-ham"] * len(files))
    assert lookups["bare-ham"] == taxonomy.diagnosis_lookup(names)
    with pytest.raises(ConfigError, match="elsewhere"):  # a source the run does not read
        diagnoses.check_diagnosis_sources(load_config(path, ["data.diagnosis_names={elsewhere: [MEL]}"]))


# ---------------------------------------------------------------------------------------------------
# the diagnosis head on HAM10000 alone, and its per-class report


@pytest.fixture
def small_diagnosis_model(monkeypatch):
    """Pooling + a 9-way softmax in the diagnosis head's wrapper: the data flow is what is under test."""
    import keras

    from melanoma.model import network as model

    def build(config, pretrained=True):
        size = config.data.image_size
        image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
        pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(image))
        output = keras.layers.Dense(len(taxonomy.DIAGNOSIS_CLASSES), activation="softmax", dtype="float32",
                                    name="diagnosis")(pooled)
        wrapper = model.DiagnosisModel(keras.Model({"image": image}, output))
        wrapper({"image": keras.ops.zeros((1, size, size, 3))})
        return wrapper

    monkeypatch.setattr(model, "build_model", build)


@pytest.mark.slow  # the diagnosis head trains and reports in test_perclass.py and test_model.py too
def test_diagnosis_head_on_ham10000_writes_class_probabilities_and_the_per_class_report(
        ham_records, tiny_data, tmp_path, small_diagnosis_model, capsys):
    path = write_yaml(tmp_path, "ham", tiny_data, {"train_files": f"{ham_records}/train*.tfrec",
                                                   "test_files": None},
                      model={"head": "diagnosis"})
    assert cli.main(["train", "--config", str(path), "--fold", "all"]) == 0
    assert cli.main(["infer", "--config", str(path)]) == 2  # no test set: nothing to predict, said so
    assert "data.test_files is null" in capsys.readouterr().err
    run = tmp_path / "outputs" / "ham"
    oof = pd.read_csv(run / "oof.csv")
    class_columns = [f"p_{cls}" for cls in taxonomy.DIAGNOSIS_CLASSES]
    assert list(oof.columns) == ["image_name", "patient_id", "target", "pred", "fold", "diagnosis"] + class_columns
    np.testing.assert_allclose(oof[class_columns].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(oof["pred"], oof["p_MEL"])
    truth = pd.read_csv(ham_records / "train.csv").set_index("image_name")
    assert len(oof) == len(truth) and (oof["diagnosis"].to_numpy() == truth.loc[oof["image_name"], "isic_class"]).all()
    assert not (run / "fold0" / "test.csv").exists()

    assert cli.main(["report", str(path), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    folder = run / "report"
    per_class = pd.read_csv(folder / "per_class.csv").set_index("class")
    assert list(per_class.columns) == ["precision", "recall", "f1", "support", "auc"]
    for cls, count in oof["diagnosis"].value_counts().items():
        assert per_class.loc[cls, "support"] == count
        assert 0 <= per_class.loc[cls, "auc"] <= 1
    assert {"macro avg", "weighted avg", "accuracy", "balanced accuracy"} <= set(per_class.index)
    present = per_class.loc[list(oof["diagnosis"].unique())]
    assert per_class.loc["balanced accuracy", "recall"] == pytest.approx(present["recall"].mean())
    predicted = np.asarray(taxonomy.DIAGNOSIS_CLASSES)[oof[class_columns].to_numpy().argmax(axis=1)]
    assert per_class.loc["accuracy", "recall"] == pytest.approx((predicted == oof["diagnosis"]).mean())
    assert (folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "balanced accuracy" in out and "per_class.csv" in out

    assert cli.main(["infer", "--config", str(path)]) == 2
    assert "data.test_files is null" in capsys.readouterr().err
