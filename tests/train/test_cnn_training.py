"""Recipes: `describe` on every config, and a tiny fold trained with each head, loss and schedule.

The tiny dataset is written here: 32 px lesion-like JPEGs in public-schema TFRecords, 4 train parts
(2 folds) with malignant images in every part, 1 test part, encodings.json and a sample submission.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core import layout
from melanoma.data import diagnoses, record_format
from melanoma.input import pipeline
from melanoma.model import network as model_lib
from melanoma.tools import describe
from melanoma.train import schedules, cnn_training

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "base.yaml")
SIZE = 32
DIAGNOSES = ["melanoma", "nevus", "seborrheic keratosis", "unknown"]  # sorted, as encode_metadata codes them


def lesion_jpeg(rng: np.random.Generator, malignant: bool) -> bytes:
    """Skin-coloured background with a darker ellipse; malignant ones larger and irregular."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = rng.integers(150, 220, size=3)
    centre = tuple(int(v) for v in rng.integers(12, 20, size=2))
    axes = tuple(int(v) for v in (rng.integers(8, 13, size=2) if malignant else rng.integers(3, 7, size=2)))
    colour = tuple(int(v) for v in rng.integers(20, 90, size=3))
    cv2.ellipse(image, centre, axes, int(rng.integers(0, 180)), 0, 360, colour, -1)
    if malignant:
        cv2.circle(image, tuple(int(v) for v in rng.integers(8, 24, size=2)), 4, (10, 10, 60), -1)
    image = np.clip(image.astype(np.int16) + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def write_tiny_records(folder: Path, parts: int = 4, per_part: int = 8, test_images: int = 6) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    patient = 0
    for part in range(parts):
        rows = []
        for slot in range(per_part):
            if slot % 4 == 0:
                patient += 1  # 4 images per patient, patients never span parts
            malignant = slot % 4 == 0
            diagnosis = 0 if malignant else 1 + slot % 3
            rows.append({"image_name": f"ISIC_{index:07d}", "patient_id": patient,
                         "sex": slot % 2 if slot != 3 else -1, "age_approx": 30 + 5 * slot if slot != 5 else -1,
                         "anatom_site_general_challenge": slot % 7 - 1, "diagnosis": diagnosis,
                         "target": int(malignant)})
            index += 1
        path = folder / record_format.record_name("train", part, len(rows))
        with tf.io.TFRecordWriter(str(path)) as writer:
            for row in rows:
                writer.write(record_format.serialize_example(lesion_jpeg(rng, row["target"] == 1), row,
                                                       record_format.TRAIN_INT_FEATURES))
    names = []
    with tf.io.TFRecordWriter(str(folder / record_format.record_name("test", 0, test_images))) as writer:
        for slot in range(test_images):
            row = {"image_name": f"ISIC_{9000000 + slot:07d}", "patient_id": 100 + slot // 3, "sex": 1,
                   "age_approx": 50, "anatom_site_general_challenge": 2}
            names.append(row["image_name"])
            writer.write(record_format.serialize_example(lesion_jpeg(rng, slot == 0), row, record_format.TEST_INT_FEATURES))
    (folder / "encodings.json").write_text(json.dumps({
        "sex": {"female": 0, "male": 1}, "diagnosis": {name: code for code, name in enumerate(DIAGNOSES)}}))
    pd.DataFrame({"image_name": names, "target": 0.0}).to_csv(folder / "sample_submission.csv", index=False)
    return {"train": str(folder / "train*.tfrec"), "test": str(folder / "test*.tfrec"),
            "sample": str(folder / "sample_submission.csv")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("tiny") / "records")


def tiny_overrides(tiny, tmp_path, *overrides) -> list[str]:
    """--set values for a tiny run: 32 px, 2 folds, 1 epoch of 2 steps of 4 images, no TTA."""
    return [
        f"data.train_files={tiny['train']}", f"data.test_files={tiny['test']}",
        f"data.sample_submission={tiny['sample']}", "data.folds=2", f"data.image_size={SIZE}",
        f"output_dir={tmp_path / 'outputs'}", "name=tiny", "model.weights=none",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4", "train.verbose=0",
        "train.lr_ramp_epochs=1", "tta.steps=0", "tta.batch_size=16", "augment.rotate_limit=0",
        "train.mixed_precision=false", *overrides]


def tiny_config(tiny, tmp_path, *overrides):
    return config_lib.load_config(REPO / "configs" / "b0_256.yaml", tiny_overrides(tiny, tmp_path, *overrides))


# ---------------------------------------------------------------------------------------------------
# describe


# Building EfficientNet-B4..B7 at 384-768 px only to count their parameters takes most of this test's
# time; those configs are described in `make test-full` (every config still loads and validates in
# test_config.py, and describe runs on the smaller recipes here).
HEAVY = {"b5_384_ext", "b6_512_meta", "b7_768", "diagnosis_b4_512"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p
                                  for p in CONFIGS], ids=[p.stem for p in CONFIGS])
def test_describe_every_config(path):
    config = config_lib.load_config(path)
    facts = describe.describe(config)
    assert facts["name"] == path.stem
    assert facts["backbone"] == config.model.backbone
    assert facts["input_size"] == config.data.image_size
    assert facts["replicas"] >= 1
    assert facts["global_batch_size"] == config.train.batch_size * facts["replicas"]
    assert facts["peak_learning_rate"] == pytest.approx(config.train.lr_max * facts["global_batch_size"])
    assert len(facts["learning_rates"]) == config.train.epochs
    assert facts["precision"] == "float32"  # this machine has no accelerator
    assert facts["parameters"] > facts["trainable_parameters"] > 3_000_000
    json.dumps(facts)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_describe_command_prints_json(capsys):
    status = cli.main(["describe", "--config", str(REPO / "configs" / "b0_256.yaml"),
                       "--set", "train.batch_size=8", "model.head=diagnosis", "model.metadata=true"])
    assert status == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["global_batch_size"] == 8 * facts["replicas"]
    assert facts["head"] == "diagnosis" and facts["metadata"] is True
    assert facts["weights"] == "imagenet" and "weights_cached" in facts
    assert facts["strategy"] == "DefaultStrategy" and facts["accelerator"] == "cpu"


def test_describe_reports_records_when_present(tiny):
    config = config_lib.load_config(REPO / "configs" / "b0_256.yaml", [
        f"data.train_files={tiny['train']}", "data.folds=2", "train.batch_size=4", f"data.image_size={SIZE}"])
    facts = describe.describe(config)
    assert facts["train_files_found"] == 4 and facts["train_images"] == 32
    assert facts["steps_per_epoch"] == 16 // 4  # fold 0 trains on 2 of the 4 parts


# ---------------------------------------------------------------------------------------------------
# tiny folds: every head, loss, schedule and checkpoint rule


def small_backbone(name, image_size, weights="none", pretrained=True, drop_connect=None, bn_momentum=None):
    """A two-convolution stand-in for EfficientNet: the heads, losses, schedules and pipeline are what
    these runs check, and tracing a real EfficientNet's training step costs ~30 s of CPU per run."""
    image = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="swish")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="swish")(x)
    return keras.Model(image, x, name="small_backbone")


@pytest.fixture
def small_model(monkeypatch):
    monkeypatch.setattr(model_lib, "build_backbone", small_backbone)


RUNS = {
    "binary-bce-rampup": ["model.head=binary", "train.loss=bce", "train.schedule=rampup",
                          "train.checkpoint=best_auc", "train.upsample_malignant=2"],
    "metadata-focal-cosine-xla": ["model.head=binary", "model.metadata=true", "train.loss=focal",
                                  "train.schedule=cosine", "train.checkpoint=best_loss", "train.class_weight=5",
                                  "train.xla=true"],
    "diagnosis-bce-last": ["model.head=diagnosis", "train.loss=bce", "train.schedule=rampup",
                           "train.checkpoint=last", "train.class_weight=3"],
    "diagnosis-metadata-focal-cosine": ["model.head=diagnosis", "model.metadata=true", "train.loss=focal",
                                        "train.schedule=cosine", "train.upsample_malignant=3"],
}


def check_fold(config, summary):
    folder = Path(layout.fold_dir(config, 0))
    oof = pd.read_csv(folder / "oof.csv")
    test = pd.read_csv(folder / "test.csv")
    history = pd.read_csv(folder / "history.csv")
    assert (folder / "model.keras").exists()
    assert len(oof) == 16 and set(oof["fold"]) == {0} and oof["pred"].between(0, 1).all()
    assert len(test) == 6 and test["pred"].between(0, 1).all()
    assert np.isfinite(summary["auc"])
    assert history["lr"].iloc[0] == pytest.approx(config.train.lr_start)
    assert summary["best_epoch"] == 1
    assert keras.mixed_precision.global_policy().name == "float32"


# The metadata variants retrace the step with a second input; they run in `make test-full`.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if "metadata" in name else name
                                  for name in RUNS])
def test_tiny_fold_trains(tiny, tmp_path, small_model, name):
    config = tiny_config(tiny, tmp_path, *RUNS[name])
    check_fold(config, cnn_training.train_fold(config, 0))


@pytest.mark.slow
def test_tiny_fold_trains_efficientnet(tiny, tmp_path):
    """The real EfficientNet-B0, once, with the diagnosis head and the metadata branch (~30 s of CPU
    for tracing its training step, so it runs with the slow tests)."""
    config = tiny_config(tiny, tmp_path, "model.head=diagnosis", "model.metadata=true")
    check_fold(config, cnn_training.train_fold(config, 0))


@pytest.mark.parametrize("head", ["binary", "diagnosis"])
def test_float16_compiles_with_loss_scaling(tiny, tmp_path, small_model, head):
    """On a GPU, mixed_float16 gets Keras' loss scaling, and the schedule still reaches the rate."""
    config = tiny_config(tiny, tmp_path, f"model.head={head}")
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = cnn_training.compile_model(model_lib.build_model(config), config, 32)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        callbacks, _, _ = cnn_training.make_callbacks(config, str(tmp_path), 32, [])
        callbacks[0].set_model(model)
        callbacks[0].on_epoch_begin(3)
        assert float(model.optimizer.learning_rate) == pytest.approx(
            schedules.learning_rate(3, config.train, 32), rel=1e-6)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_two_folds_gather_oof(tiny, tmp_path, small_model):
    overrides = tiny_overrides(tiny, tmp_path, "model.head=diagnosis", "model.metadata=true")
    status = cli.main(["train", "--config", str(REPO / "configs" / "b0_256.yaml"), "--fold", "all",
                       "--set", *overrides])
    assert status == 0
    oof = pd.read_csv(tmp_path / "outputs" / "tiny" / "oof.csv")
    assert len(oof) == 32 and sorted(set(oof["fold"])) == [0, 1]
    assert not oof["image_name"].duplicated().any()


# ---------------------------------------------------------------------------------------------------
# checkpoint rules, on a stream of made-up epoch logs


@pytest.mark.parametrize("rule, expected_epoch", [("best_auc", 2), ("best_loss", 3), ("last", 4)])
def test_checkpoint_rules(tmp_path, rule, expected_epoch):
    config = config_lib.load_config(REPO / "configs" / "demo.yaml", [f"train.checkpoint={rule}"])
    _, guard, checkpoint = cnn_training.make_callbacks(config, str(tmp_path), 32, [])
    inputs = keras.Input((2,))
    checkpoint.set_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))
    logs = [{"val_auc": 0.6, "val_loss": 0.5}, {"val_auc": 0.8, "val_loss": 0.4},
            {"val_auc": 0.7, "val_loss": 0.3}, {"val_auc": float("nan"), "val_loss": 0.35}]
    for epoch, values in enumerate(logs):
        checkpoint.on_epoch_end(epoch, dict(values))
    assert checkpoint.best_epoch == expected_epoch
    assert (tmp_path / "model.keras").exists()


# ---------------------------------------------------------------------------------------------------
# pipeline pieces the heads rely on


def test_patient_counts_and_metadata_vector(tiny):
    paths = [f.path for f in record_format.list_files(tiny["train"])]
    counts = pipeline.patient_counts(paths, "train")
    assert set(counts.values()) == {4} and len(counts) == 8
    config = config_lib.load_config(REPO / "configs" / "demo.yaml",
                                    ["model.metadata=true", f"data.image_size={SIZE}"])
    dataset, views = pipeline.prediction_dataset(paths[:1], config, "train", batch_size=8)
    batch = next(iter(dataset))
    metadata = batch["inputs"]["metadata"].numpy()
    assert metadata.shape == (8, pipeline.METADATA_SIZE)
    np.testing.assert_allclose(metadata[:, 4], np.log(4.0), rtol=1e-6)  # log of the patient's count
    assert (metadata[:, 5] == 0).all()  # count known
    assert (metadata[:, 6:].sum(axis=1) == 1).all()  # one-hot site, missing included


def test_unknown_patient_count_is_flagged(tiny):
    import tensorflow as tf

    paths = [f.path for f in record_format.list_files(tiny["train"])][:1]
    dataset = tf.data.Dataset.from_tensors({"patient_id": tf.constant(-1, tf.int64)})
    example = next(iter(pipeline.with_patient_counts(dataset, paths, "train")))
    assert float(example["patient_count"]) == 0.0


def test_diagnosis_targets_follow_the_encodings(tiny, tmp_path):
    config = tiny_config(tiny, tmp_path, "model.head=diagnosis")
    files = record_format.list_files(tiny["train"])
    lookup = diagnoses.source_lookups(config, files)["competition"]
    assert lookup == [0, 1, 4, 8]  # melanoma MEL, nevus NV, seborrheic keratosis BKL, unknown UNK
    batch = {"diagnosis": np.array([0, 1, 2, 3, 0, 7, -1]), "target": np.array([1, 0, 0, 0, 0, 0, 1])}
    labels = pipeline.diagnosis_target(batch, lookup).numpy().argmax(axis=1)
    # a benign image never becomes MEL; a malignant one always is; an unknown code is UNK
    assert labels.tolist() == [0, 1, 4, 8, 8, 8, 0]


def test_diagnosis_names_from_config_or_error(tiny, tmp_path):
    config = tiny_config(tiny, tmp_path, "model.head=diagnosis", "data.diagnosis_names=[MEL, nevus, BKL, UNK]")
    assert diagnoses.source_lookups(config, record_format.list_files(tiny["train"])) == {"competition": [0, 1, 4, 8]}
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in record_format.list_files(tiny["train"]):
        (bare / os.path.basename(path.path)).symlink_to(path.path)
    config = tiny_config(tiny, tmp_path, "model.head=diagnosis", f"data.train_files={bare}/train*.tfrec")
    with pytest.raises(config_lib.ConfigError, match="data.diagnosis_names"):
        diagnoses.source_lookups(config, record_format.list_files(config.data.train_files))
    config = tiny_config(tiny, tmp_path, "model.head=diagnosis", "data.diagnosis_names=[melanoma, wart]")
    with pytest.raises(config_lib.ConfigError, match="wart"):
        diagnoses.source_lookups(config, record_format.list_files(tiny["train"]))


def test_upsampling_repeats_malignant_images(tiny, tmp_path):
    config = tiny_config(tiny, tmp_path, "train.upsample_malignant=3")
    paths = [f.path for f in record_format.list_files(tiny["train"])]
    dataset = pipeline.train_dataset(paths, config, batch_size=4, seed=1)
    # the shuffle buffer holds a whole pass, so the first 48 images are one pass over the files:
    # 24 benign + 8 malignant x 3
    first_pass = np.concatenate([target.numpy() for _, target in dataset.take(12)])
    assert len(first_pass) == 48 and first_pass.sum() == 24


def test_class_weights_cover_every_class(tiny, tmp_path):
    assert cnn_training.class_weights(tiny_config(tiny, tmp_path)) is None
    assert cnn_training.class_weights(tiny_config(tiny, tmp_path, "train.class_weight=4")) == {0: 1.0, 1: 4.0}
    weights = cnn_training.class_weights(tiny_config(tiny, tmp_path, "train.class_weight=4", "model.head=diagnosis"))
    assert len(weights) == 9 and weights[0] == 4.0 and set(list(weights.values())[1:]) == {1.0}
