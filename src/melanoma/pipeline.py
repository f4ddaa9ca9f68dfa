"""tf.data input pipelines over public-schema TFRecords: train, evaluation and TTA variants.

Train pipelines read files interleaved, shuffle, repeat and drop the remainder. Evaluation and TTA
pipelines read files in order, drop nothing and carry each image's name through to the prediction, so
predictions are matched to images by name. Each image is decoded once per pass; TTA views are built
from the decoded image.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from melanoma import augment, io_utils, progress as progress_lib, records
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
    metadata = config.model.metadata
    if metadata:
        dataset = with_patient_counts(dataset, paths, "train")
    dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()

    def apply(example):
        example["image"] = augment_image(example["image"])
        return example

    dataset = dataset.map(apply, num_parallel_calls=AUTOTUNE, deterministic=False)
    dataset = dataset.batch(batch_size, drop_remainder=True)
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


def _read(paths: list[str], ordered: bool, seed: int | None = None, keep=None):
    """Serialized records; `keep(path, serialized) -> bool` (sources.record_filter) drops records per file."""
    if ordered and keep is None:
        # One file after another: order is the files' order, and within a file the records' order.
        return tf.data.TFRecordDataset(paths, num_parallel_reads=None)

    def open_file(path):
        dataset = tf.data.TFRecordDataset(path)
        return dataset if keep is None else dataset.filter(lambda serialized: keep(path, serialized))

    files = tf.data.Dataset.from_tensor_slices(paths)
    if ordered:
        return files.flat_map(open_file)
    return files.shuffle(len(paths), seed=seed).interleave(
        open_file, cycle_length=min(len(paths), 16), num_parallel_calls=AUTOTUNE, deterministic=False)


def _decoded(paths, split: str, image_size: int, ordered: bool, seed=None, cache: bool = False, keep=None,
             skip_corrupt: bool = False):
    """Parsed examples with decoded images. skip_corrupt drops records that fail to read, parse or
    decode (data.skip_corrupt; `integrity.scan_files` names them beforehand with the same checks)."""
    def parse_and_decode(serialized):
        example = parse_examples(serialized, split)
        example["image"] = decode_image(example["image"], image_size)
        return example

    dataset = _read(paths, ordered, seed, keep).map(parse_and_decode, num_parallel_calls=AUTOTUNE,
                                              deterministic=ordered)
    if skip_corrupt:
        dataset = dataset.ignore_errors()
    return dataset.cache() if cache else dataset


def model_inputs(example: dict, metadata: bool) -> dict:
    """The model's input dict from a parsed example (image as float32 0..255)."""
    inputs = {"image": tf.cast(example["image"], tf.float32)}
    if metadata:
        inputs["metadata"] = metadata_vector(example)
    return inputs


SITES = 6  # anatom_site_general_challenge codes 0..5; -1 is missing


def metadata_vector(example: dict):
    """sex, age / 100, log of the patient's image count, one-hot site (6 + missing), each with a
    missing flag where it can be missing.

    Codes come from `records.encode_metadata` (sex: female 0, male 1; -1 missing everywhere). The image
    count comes from `with_patient_counts` (0 = unknown patient).
    """
    sex = tf.cast(example["sex"], tf.float32)
    age = tf.cast(example["age_approx"], tf.float32)
    count = tf.cast(example["patient_count"], tf.float32)
    site = tf.cast(example["anatom_site_general_challenge"], tf.int32)
    values = [
        tf.where(sex < 0, 0.5, sex), tf.cast(sex < 0, tf.float32),
        tf.where(age < 0, 0.5, age / 100.0), tf.cast(age < 0, tf.float32),
        tf.math.log(tf.maximum(count, 1.0)), tf.cast(count < 1, tf.float32),
    ]
    site_onehot = tf.one_hot(tf.where(site < 0, SITES, site), SITES + 1)
    return tf.concat([tf.stack(values, axis=-1), site_onehot], axis=-1)


METADATA_SIZE = 6 + SITES + 1


@functools.lru_cache(maxsize=16)
def _patient_counts(paths: tuple[str, ...], split: str) -> tuple[tuple[int, int], ...]:
    spec = {"patient_id": tf.io.FixedLenFeature([], tf.int64)}
    # Unreadable records are passed over here: they are named (or skipped, data.skip_corrupt) by the
    # pipeline that reads the images, and a count is only a feature.
    dataset = tf.data.TFRecordDataset(list(paths), num_parallel_reads=AUTOTUNE).map(
        lambda s: tf.io.parse_single_example(s, spec)["patient_id"], num_parallel_calls=AUTOTUNE).ignore_errors()
    ids = [np.zeros(0, np.int64)]
    total = sum(records.parse_file_name(p).count for p in paths)
    with progress_lib.bar(total=total, desc=f"{split} patient counts", unit="img", leave=False) as bar:
        for batch in dataset.batch(8192):
            ids.append(batch.numpy())
            bar.update(len(ids[-1]))
    ids = np.concatenate(ids)
    keys, counts = np.unique(ids[ids >= 0], return_counts=True)
    return tuple(zip(keys.tolist(), counts.tolist()))


def patient_counts(paths: list[str], split: str) -> dict[int, int]:
    """Images per patient_id over the records in `paths` (negative ids, i.e. unknown, left out).

    One pass over the files reading only patient_id, remembered per process (validation runs every
    epoch). Counts are exact for the competition's records: a train part never splits a patient, so
    any set of whole parts (a fold's training or validation files) holds all of a patient's images,
    and test predictions always read every test file. The ids are the records' int64 codes, so files
    of another dataset (external images) must not share codes with these; their patients are counted
    only among the files passed together.
    """
    return dict(_patient_counts(tuple(paths), split))


def with_patient_counts(dataset, paths: list[str], split: str):
    """Adds `patient_count` (float32; 0 for an unknown patient) to each example of `dataset`.

    The lookup is a binary search in constant tensors rather than a hash table, so the dataset holds
    no resource and distributes the same way on every strategy.
    """
    counts = patient_counts(paths, split)
    keys = np.array(sorted(counts) or [-1], dtype=np.int64)
    values = np.array([counts.get(int(k), 0) for k in keys], dtype=np.float32)
    keys_tensor, values_tensor = tf.constant(keys), tf.constant(values)

    def add(example):
        patient = tf.reshape(example["patient_id"], [-1])
        index = tf.minimum(tf.searchsorted(keys_tensor, patient), len(keys) - 1)
        found = tf.equal(tf.gather(keys_tensor, index), patient)
        count = tf.where(found, tf.gather(values_tensor, index), 0.0)
        example["patient_count"] = tf.reshape(count, tf.shape(example["patient_id"]))
        return example

    return dataset.map(add, num_parallel_calls=AUTOTUNE, deterministic=True)


def diagnosis_target(batch: dict, lookup: list[int]):
    """One-hot ISIC class per image, from its diagnosis code through `lookup` (class index per code).

    The competition's target decides MEL: a malignant image is MEL whatever its diagnosis code, and a
    benign one never is (an unknown code or a MEL-mapped benign image counts as UNK), so the head's
    MEL probability is trained on exactly the labels the AUC is measured on.
    """
    from melanoma.model import DIAGNOSIS_CLASSES, MELANOMA_CLASS, UNKNOWN_CLASS

    if not lookup:
        raise ValueError("the diagnosis head needs the class of each diagnosis code; got none")
    table = tf.constant(lookup, tf.int32)
    code = tf.cast(batch["diagnosis"], tf.int32)
    known = tf.logical_and(code >= 0, code < len(lookup))
    label = tf.where(known, tf.gather(table, tf.clip_by_value(code, 0, len(lookup) - 1)), UNKNOWN_CLASS)
    label = tf.where(label == MELANOMA_CLASS, UNKNOWN_CLASS, label)
    label = tf.where(tf.equal(batch["target"], 1), MELANOMA_CLASS, label)
    return tf.one_hot(label, len(DIAGNOSIS_CLASSES), dtype=tf.float32)


def train_dataset(paths: list[str], config, batch_size: int, seed: int | None = None,
                  augmenter: augment.BatchAugmenter | None = None, keep=None,
                  diagnosis_lookup: list[int] | None = None):
    """Shuffled, repeated, remainder-dropped batches of (inputs, target) for model.fit.

    A path may be listed more than once (upsampled external files); `keep` drops duplicates.
    The target is the 0/1 label (binary head) or a one-hot ISIC class (diagnosis head, which needs
    `diagnosis_lookup`: the class index of each diagnosis code). With train.upsample_malignant = k,
    each malignant image appears k times per pass over the files, before the shuffle.
    """
    head = config.model.head
    if head == "diagnosis" and diagnosis_lookup is None:
        raise ValueError("the diagnosis head needs diagnosis_lookup (class index per diagnosis code)")
    dataset = _decoded(paths, "train", config.data.image_size, ordered=False, seed=seed,
                       cache=bool(config.data.cache), keep=keep,
                       skip_corrupt=bool(config.data.skip_corrupt))
    upsample = int(config.train.upsample_malignant)
    if upsample > 1:
        dataset = dataset.flat_map(lambda example: tf.data.Dataset.from_tensors(example).repeat(
            tf.where(tf.equal(example["target"], 1), tf.constant(upsample, tf.int64),
                     tf.constant(1, tf.int64))))
    metadata = config.model.metadata
    if metadata:
        dataset = with_patient_counts(dataset, paths, "train")
    dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if augmenter is not None:
        def apply(batch):
            batch["image"] = augment.augment_batch_op(batch["image"], augmenter)
            return batch
        dataset = dataset.map(apply, num_parallel_calls=AUTOTUNE)

    def to_pair(batch):
        if head == "diagnosis":
            return model_inputs(batch, metadata), diagnosis_target(batch, diagnosis_lookup)
        return model_inputs(batch, metadata), tf.cast(batch["target"], tf.float32)

    dataset = dataset.map(to_pair, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def prediction_dataset(paths: list[str], config, split: str, tta_steps: int = 0,
                       tta_mode: str = "random", batch_size: int = 64,
                       augmenter: augment.BatchAugmenter | None = None, skip_corrupt: bool = False):
    """Ordered batches of dicts: model `inputs` ([B*V, ...] with V views per image) plus `image_name`
    (and `target`, `patient_id` for train records). Each image is decoded once; V = max(1, tta_steps).
    skip_corrupt drops unreadable records (validation under data.skip_corrupt; never for test images)."""
    if tta_mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode '{tta_mode}'; choose one of {', '.join(TTA_MODES)}")
    views = max(1, tta_steps)
    if tta_mode == "dihedral" and views > 8:
        raise ValueError(f"dihedral TTA has 8 views; tta.steps={tta_steps}")
    if tta_steps and tta_mode == "random" and augmenter is None:
        raise ValueError("random TTA needs an augmenter")
    metadata = config.model.metadata
    dataset = _decoded(paths, split, config.data.image_size, ordered=True, skip_corrupt=skip_corrupt)
    if metadata:
        dataset = with_patient_counts(dataset, paths, split)

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
        for name in records.TEST_INT_FEATURES + (("patient_count",) if metadata else ()):
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
