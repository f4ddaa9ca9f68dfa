"""tf.data input pipelines over public-schema TFRecords: train, evaluation and TTA variants.

Train pipelines read files interleaved, shuffle, repeat and drop the remainder. Evaluation and TTA
pipelines read files in order, drop nothing and carry each image's name through to the prediction, so
predictions are matched to images by name. Each image is decoded once per pass; TTA views are built
from the decoded image.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from melanoma import augment, io_utils, records
from melanoma.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 2048
TTA_MODES = ("random", "dihedral")


def _feature_spec(split: str) -> dict:
    int_features = records.TRAIN_INT_FEATURES if split == "train" else records.TEST_INT_FEATURES
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "image_name": tf.io.FixedLenFeature([], tf.string)}
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in int_features})
    return spec


def list_files(patterns, key: str = "data files") -> list[records.RecordFile]:
    """Public-schema files matching the glob(s), sorted by part; an empty match is an error."""
    paths = io_utils.glob(patterns)
    if not paths:
        raise FileNotFoundError(f"{key} {patterns!r} matched no file")
    files = [records.parse_file_name(path) for path in paths]
    return sorted(files, key=lambda f: (f.part, f.path))


def split_folds(files: list[records.RecordFile], fold: int, folds: int):
    """(training files, validation files): a fold validates on the parts with part % folds == fold."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is out of range for {folds} folds (0..{folds - 1})")
    valid = [f for f in files if f.part % folds == fold]
    train = [f for f in files if f.part % folds != fold]
    if not valid:
        raise DataError(f"fold {fold} has no validation file: parts found are "
                        f"{sorted({f.part for f in files})}, folds = {folds}")
    if not train:
        raise DataError(f"fold {fold} has no training file")
    return train, valid


def count_images(files: list[records.RecordFile]) -> int:
    return sum(f.count for f in files)


def per_image_train_dataset(paths: list[str], config, batch_size: int, augment_image,
                            seed: int | None = None):
    """`train_dataset` with the augmentation mapped per image before batching (`augment_image`:
    uint8 [H, W, 3] -> uint8 [H, W, 3]): the usual per-image layout, kept as a reference for `bench`."""
    dataset = _decoded(paths, "train", config.data.image_size, ordered=False, seed=seed,
                       cache=bool(config.data.cache))
    dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()

    def apply(example):
        example["image"] = augment_image(example["image"])
        return example

    dataset = dataset.map(apply, num_parallel_calls=AUTOTUNE, deterministic=False)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    metadata = config.model.metadata
    dataset = dataset.map(lambda b: (model_inputs(b, metadata), tf.cast(b["target"], tf.float32)),
                          num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def parse_examples(serialized, split: str):
    return tf.io.parse_single_example(serialized, _feature_spec(split))


def decode_image(data, image_size: int):
    """JPEG bytes -> uint8 [image_size, image_size, 3], resized when the record holds another size."""
    image = tf.io.decode_jpeg(data, channels=3)
    shape = tf.shape(image)
    image = tf.cond(
        tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size)),
        lambda: image,
        lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, [image_size, image_size])),
                                         0, 255), tf.uint8))
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _read(paths: list[str], ordered: bool, seed: int | None = None):
    if ordered:
        # One file after another: order is the files' order, and within a file the records' order.
        return tf.data.TFRecordDataset(paths, num_parallel_reads=None)
    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=seed)
    return files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), 16),
                            num_parallel_calls=AUTOTUNE, deterministic=False)


def _decoded(paths, split: str, image_size: int, ordered: bool, seed=None, cache: bool = False):
    def parse_and_decode(serialized):
        example = parse_examples(serialized, split)
        example["image"] = decode_image(example["image"], image_size)
        return example

    dataset = _read(paths, ordered, seed).map(parse_and_decode, num_parallel_calls=AUTOTUNE,
                                              deterministic=ordered)
    return dataset.cache() if cache else dataset


def model_inputs(example: dict, metadata: bool) -> dict:
    """The model's input dict from a parsed example (image as float32 0..255)."""
    inputs = {"image": tf.cast(example["image"], tf.float32)}
    if metadata:
        inputs["metadata"] = metadata_vector(example)
    return inputs


SITES = 6  # anatom_site_general_challenge codes 0..5; -1 is missing


def metadata_vector(example: dict):
    """sex, age / 100, one-hot site (6 + missing), each with a missing flag where it can be missing.

    Codes come from `records.encode_metadata` (sex: female 0, male 1; -1 missing everywhere).
    """
    sex = tf.cast(example["sex"], tf.float32)
    age = tf.cast(example["age_approx"], tf.float32)
    site = tf.cast(example["anatom_site_general_challenge"], tf.int32)
    values = [
        tf.where(sex < 0, 0.5, sex), tf.cast(sex < 0, tf.float32),
        tf.where(age < 0, 0.5, age / 100.0), tf.cast(age < 0, tf.float32),
    ]
    site_onehot = tf.one_hot(tf.where(site < 0, SITES, site), SITES + 1)
    return tf.concat([tf.stack(values, axis=-1), site_onehot], axis=-1)


METADATA_SIZE = 4 + SITES + 1


def train_dataset(paths: list[str], config, batch_size: int, seed: int | None = None,
                  augmenter: augment.BatchAugmenter | None = None):
    """Shuffled, repeated, remainder-dropped batches of (inputs, target) for model.fit."""
    dataset = _decoded(paths, "train", config.data.image_size, ordered=False, seed=seed,
                       cache=bool(config.data.cache))
    dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if augmenter is not None:
        def apply(batch):
            batch["image"] = augment.augment_batch_op(batch["image"], augmenter)
            return batch
        dataset = dataset.map(apply, num_parallel_calls=AUTOTUNE)
    metadata = config.model.metadata
    dataset = dataset.map(lambda b: (model_inputs(b, metadata), tf.cast(b["target"], tf.float32)),
                          num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def prediction_dataset(paths: list[str], config, split: str, tta_steps: int = 0,
                       tta_mode: str = "random", batch_size: int = 64,
                       augmenter: augment.BatchAugmenter | None = None):
    """Ordered batches of dicts: model `inputs` ([B*V, ...] with V views per image) plus `image_name`
    (and `target`, `patient_id` for train records). Each image is decoded once; V = max(1, tta_steps)."""
    if tta_mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode '{tta_mode}'; choose one of {', '.join(TTA_MODES)}")
    views = max(1, tta_steps)
    if tta_mode == "dihedral" and views > 8:
        raise ValueError(f"dihedral TTA has 8 views; tta.steps={tta_steps}")
    if tta_steps and tta_mode == "random" and augmenter is None:
        raise ValueError("random TTA needs an augmenter")
    metadata = config.model.metadata
    dataset = _decoded(paths, split, config.data.image_size, ordered=True)

    def make_views(example):
        image = example["image"]
        if tta_steps and tta_mode == "dihedral":
            stack = augment.dihedral_views(image)[:views]
        else:
            stack = tf.repeat(image[None], views, axis=0)
            if tta_steps:
                stack = augment.augment_batch_op(stack, augmenter)
        example["image"] = stack
        return example

    dataset = dataset.map(make_views, num_parallel_calls=AUTOTUNE, deterministic=True)
    images_per_batch = max(1, batch_size // views)
    dataset = dataset.batch(images_per_batch)

    def to_inputs(batch):
        flat = dict(batch)
        shape = tf.shape(batch["image"])
        flat["image"] = tf.reshape(batch["image"], tf.concat([[shape[0] * views], shape[2:]], 0))
        for name in records.TEST_INT_FEATURES:
            flat[name] = tf.repeat(batch[name], views)
        out = {"inputs": model_inputs(flat, metadata), "image_name": batch["image_name"]}
        for name in ("target", "patient_id"):
            if name in batch:
                out[name] = batch[name]
        return out

    dataset = dataset.map(to_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.prefetch(AUTOTUNE), views


def read_table(paths: list[str], split: str) -> "pd.DataFrame":
    """image_name, patient_id (+ target) of every record, in file order, without decoding images."""
    import pandas as pd

    spec = {k: v for k, v in _feature_spec(split).items() if k != "image"}
    dataset = tf.data.TFRecordDataset(paths).map(lambda s: tf.io.parse_single_example(s, spec),
                                                 num_parallel_calls=AUTOTUNE, deterministic=True)
    columns: dict[str, list] = {name: [] for name in spec}
    for batch in dataset.batch(4096):
        for name in spec:
            columns[name].append(batch[name].numpy())
    table = {name: (np.concatenate(values) if values else np.array([])) for name, values in columns.items()}
    table["image_name"] = [n.decode() for n in table["image_name"]]
    return pd.DataFrame(table)
