"""The public schema's records read with TensorFlow: the feature spec, parsing, JPEG decoding, and the one
reader of a records file's columns that every table of records is built from (sources, feature tables,
patient counts, integrity scans).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from melanoma.data import record_format

AUTOTUNE = tf.data.AUTOTUNE


def int_features(split: str) -> tuple[str, ...]:
    return record_format.TRAIN_INT_FEATURES if split == "train" else record_format.TEST_INT_FEATURES


def feature_spec(split: str, columns: tuple[str, ...] | None = None, images: bool = True,
                 names: bool = True) -> dict:
    """tf.io feature spec of a `split` record: image_name (when `names`), the int64 `columns` (default: all
    of the split's), and the JPEG bytes when `images`."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string)} if images else {}
    if names:
        spec["image_name"] = tf.io.FixedLenFeature([], tf.string)
    spec.update({name: tf.io.FixedLenFeature([], tf.int64)
                 for name in (int_features(split) if columns is None else columns)})
    return spec


def parse_examples(serialized, split: str):
    return tf.io.parse_single_example(serialized, feature_spec(split))


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


def batches(paths: str | list[str], split: str, columns: tuple[str, ...] | None = None, images: bool = False,
            skip_corrupt: bool = False, batch_size: int = 512, names: bool = True,
            ordered: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the records' fields as numpy arrays (image_name decoded to str, when `names`), in file
    order unless `ordered` is False (then files are read in parallel, for sums and counts).

    `skip_corrupt` passes over records that cannot be read or parsed; otherwise such a record raises
    tf.errors.OpError, which the caller names (integrity.py)."""
    spec = feature_spec(split, columns, images, names)
    dataset = tf.data.TFRecordDataset(paths, num_parallel_reads=None if ordered else AUTOTUNE)
    dataset = dataset.map(lambda s: tf.io.parse_single_example(s, spec), num_parallel_calls=AUTOTUNE,
                          deterministic=ordered)
    if skip_corrupt:
        dataset = dataset.ignore_errors()
    for batch in dataset.batch(batch_size):
        fields = {name: value.numpy() for name, value in batch.items()}
        if names:
            fields["image_name"] = np.array([name.decode() for name in fields["image_name"]], dtype=object)
        yield fields
