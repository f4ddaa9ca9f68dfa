"""Tiny recipe data: 32 px lesion-like JPEGs in public-schema TFRecords, 4 train parts (2 folds) with
malignant images in every part, 1 test part, encodings.json and a sample submission; and the --set values
of a tiny run on them. Shared by the CNN training, describe and input pipeline tests."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf

from melanoma.core import config as config_lib
from melanoma.data import record_format

REPO = Path(__file__).resolve().parents[1]
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
            writer.write(record_format.serialize_example(lesion_jpeg(rng, slot == 0), row,
                                                         record_format.TEST_INT_FEATURES))
    (folder / "encodings.json").write_text(json.dumps({
        "sex": {"female": 0, "male": 1}, "diagnosis": {name: code for code, name in enumerate(DIAGNOSES)}}))
    pd.DataFrame({"image_name": names, "target": 0.0}).to_csv(folder / "sample_submission.csv", index=False)
    return {"train": str(folder / "train*.tfrec"), "test": str(folder / "test*.tfrec"),
            "sample": str(folder / "sample_submission.csv")}


def tiny_overrides(tiny, tmp_path, *overrides) -> list[str]:
    """--set values for a tiny run: 32 px, 2 folds, 1 epoch of 2 steps of 4 images, no TTA."""
    return [
        f"data.train_files={tiny['train']}", f"data.test_files={tiny['test']}",
        f"data.sample_submission={tiny['sample']}", "data.folds=2", f"data.image_size={SIZE}",
        f"output_dir={tmp_path / 'outputs'}", "name=tiny", "model.weights=none",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4", "train.verbose=0",
        "train.lr_ramp_epochs=1", "tta.steps=0", "tta.prediction_batch_size=16", "augment.rotate_limit=0",
        "train.mixed_precision=false", *overrides]


def tiny_config(tiny, tmp_path, *overrides):
    return config_lib.load_config(REPO / "configs" / "b0_256.yaml", tiny_overrides(tiny, tmp_path, *overrides))
