"""Pipeline pieces the heads rely on: patient counts and the metadata vector, diagnosis targets from each
source's encodings, malignant upsampling."""
from __future__ import annotations

import os

import numpy as np
import pytest
from tiny_records import REPO, SIZE, tiny_config, write_tiny_records

from melanoma.core import config as config_lib
from melanoma.data import diagnoses, record_format
from melanoma.input import pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("tiny") / "records")


def test_patient_counts_and_metadata_vector(tiny):
    paths = [f.path for f in record_format.list_files(tiny["train"])]
    counts = pipeline.patient_counts(paths, "train")
    assert set(counts.values()) == {4} and len(counts) == 8
    config = config_lib.load_config(REPO / "configs" / "demo.yaml",
                                    ["model.metadata_input=true", f"data.image_size={SIZE}"])
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
