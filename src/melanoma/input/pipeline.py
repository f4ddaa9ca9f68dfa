"""tf.data input pipelines over public-schema TFRecords: train, evaluation and TTA variants.

Train pipelines read files interleaved, shuffle, repeat and drop the remainder. Evaluation and TTA
pipelines read files in order, drop nothing and carry each image's name through to the prediction, so
predictions are matched to images by name. Each image is decoded once per pass; TTA views are built
from the decoded image.

Under train.deterministic every map and interleave keeps its order, and each image carries its position
in the stream (`AUGMENT_KEY`) to the augmenter, which draws that image's parameters from (seed, position)
alone (input/augment.py): the same seed and files give the same batches, however the threads run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from melanoma.core import config as config_lib
from melanoma.core import progress as progress_lib
from melanoma.core.config import Config
from melanoma.data import examples, record_format, taxonomy
from melanoma.data.sources import COMPETITION
from melanoma.data.taxonomy import DIAGNOSIS_CLASSES, MELANOMA_CLASS, UNKNOWN_CLASS
from melanoma.input import augment

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 2048
TTA_MODES = config_lib.CHOICES["tta.mode"]
AUGMENT_KEY = "augment_key"  # an example's position in the training stream (train.deterministic)
is_deterministic = config_lib.is_deterministic


def per_image_train_dataset(paths: list[str], config: Config, batch_size: int, augment_image,
                            seed: int | None = None):
    """`train_dataset` with the augmentation mapped per image before batching (`augment_image`:
    uint8 [H, W, 3] -> uint8 [H, W, 3]): the usual per-image layout, kept as a reference for `bench`."""
    dataset = _decoded(paths, "train", config.data.image_size, ordered=False, seed=seed,
                       cache=bool(config.data.cache))
    metadata = config.model.metadata_input
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


def _read(paths: list[str], ordered: bool, seed: int | None = None, keep=None, tags: list[int] | None = None,
          shard: tuple[int, int] = (1, 0), deterministic: bool = False):
    """Serialized records; `keep(path, serialized) -> bool` (sources.record_filter) drops records per file.

    With `tags` (an int per path: the index of its source), each element is (serialized, tag).
    shard = (workers, index): this worker keeps every workers-th record of each file, starting at
    `index` (a multi-worker cluster's training data: the shards are disjoint, cover every record and
    differ in size by at most one record per file, however few the files are).
    `deterministic`: files read interleaved (not `ordered`) still give their records in one order.
    """
    workers, index = shard
    if ordered and keep is None and tags is None and workers == 1:
        # One file after another: order is the files' order, and within a file the records' order.
        return tf.data.TFRecordDataset(paths, num_parallel_reads=None)

    def open_file(path, tag=None):
        dataset = tf.data.TFRecordDataset(path)
        if workers > 1:
            dataset = dataset.shard(workers, index)
        dataset = dataset if keep is None else dataset.filter(lambda serialized: keep(path, serialized))
        return dataset if tag is None else dataset.map(lambda serialized: (serialized, tag))

    files = tf.data.Dataset.from_tensor_slices(
        paths if tags is None else (paths, tf.constant(tags, tf.int64)))
    if ordered:
        return files.flat_map(open_file)
    return files.shuffle(len(paths), seed=seed).interleave(
        open_file, cycle_length=min(len(paths), 16), num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _decoded(paths, split: str, image_size: int, ordered: bool, seed=None, cache: bool = False, keep=None,
             skip_corrupt: bool = False, tags: list[int] | None = None, shard: tuple[int, int] = (1, 0),
             deterministic: bool = False):
    """Parsed examples with decoded images (and `source`, the tag of their file, when `tags` are given).
    skip_corrupt drops records that fail to read, parse or decode (data.skip_corrupt;
    `integrity.scan_files` names them beforehand with the same checks)."""
    def parse_and_decode(serialized, tag=None):
        example = examples.parse_examples(serialized, split)
        example["image"] = examples.decode_image(example["image"], image_size)
        if tag is not None:
            example["source"] = tag
        return example

    dataset = _read(paths, ordered, seed, keep, tags, shard, deterministic).map(
        parse_and_decode, num_parallel_calls=AUTOTUNE, deterministic=ordered or deterministic)
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

    Codes come from `record_format.encode_metadata` (sex: female 0, male 1; -1 missing everywhere). The image
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
    # Unreadable records are passed over here: they are named (or skipped, data.skip_corrupt) by the
    # pipeline that reads the images, and a count is only a feature.
    ids = [np.zeros(0, np.int64)]
    total = sum(record_format.parse_file_name(p).count for p in paths)
    with progress_lib.bar(total=total, desc=f"{split} patient counts", unit="img", leave=False) as bar:
        for batch in examples.batches(list(paths), split, ("patient_id",), skip_corrupt=True,
                                      batch_size=8192, names=False, ordered=False):
            ids.append(batch["patient_id"])
            bar.update(len(ids[-1]))
    ids = np.concatenate(ids)
    keys, counts = np.unique(ids[ids >= 0], return_counts=True)
    return tuple(zip(keys.tolist(), counts.tolist()))


def patient_counts(paths: list[str], split: str) -> dict[int, int]:
    """Images per patient_id over the records in `paths` (negative ids, i.e. unknown, left out).

    One pass over the files reading only patient_id, remembered per process (validation runs every
    epoch); a file listed more than once (an upsampled external set) is counted once. Counts are exact
    for the competition's records: a train part never splits a patient, so any set of whole parts (a
    fold's training or validation files) holds all of a patient's images, and test predictions always
    read every test file. Files of several sources are counted per source (`with_patient_counts`).
    """
    return dict(_patient_counts(tuple(dict.fromkeys(paths)), split))


PATIENT_KEY_STRIDE = 1 << 40  # key of a patient within a source: source tag x stride + patient code


def with_patient_counts(dataset, paths: list[str], split: str, tags: list[int] | None = None):
    """Adds `patient_count` (float32; 0 for an unknown patient) to each example of `dataset`.

    With `tags` (the source of each path, as in `train_dataset`) a patient's images are counted within
    its source only, and each example's `source` picks the counts it is looked up in: two sources'
    patient codes may coincide without their patients being one.

    The lookup is a binary search in constant tensors rather than a hash table, so the dataset holds
    no resource and distributes the same way on every strategy.
    """
    groups = {0: list(paths)} if tags is None else {
        tag: [path for path, t in zip(paths, tags) if t == tag] for tag in sorted(set(tags))}
    counts = {tag * PATIENT_KEY_STRIDE + patient: count for tag, group in groups.items()
              for patient, count in patient_counts(group, split).items()}
    keys = np.array(sorted(counts) or [-1], dtype=np.int64)
    values = np.array([counts.get(int(k), 0) for k in keys], dtype=np.float32)
    keys_tensor, values_tensor = tf.constant(keys), tf.constant(values)

    def add(example):
        patient = tf.reshape(example["patient_id"], [-1])
        if tags is not None:
            patient = tf.where(patient >= 0, tf.reshape(example["source"], [-1]) * PATIENT_KEY_STRIDE + patient,
                               tf.constant(-1, tf.int64))
        index = tf.minimum(tf.searchsorted(keys_tensor, patient), len(keys) - 1)
        found = tf.equal(tf.gather(keys_tensor, index), patient)
        count = tf.where(found, tf.gather(values_tensor, index), 0.0)
        example["patient_count"] = tf.reshape(count, tf.shape(example["patient_id"]))
        return example

    return dataset.map(add, num_parallel_calls=AUTOTUNE, deterministic=True)


def diagnosis_target(batch: dict, lookup):
    """One-hot ISIC class per image, from its diagnosis code through `lookup` (class index per code):
    one list for every image, or one list per source tag (then `batch["source"]` picks it).

    The rule is `taxonomy.true_classes`: the competition's target decides MEL (a malignant image is MEL
    whatever its diagnosis code, and a benign one never is; an unknown code is UNK), so the head's MEL
    probability is trained on exactly the labels the AUC is measured on.
    """
    if not lookup:
        raise ValueError("the diagnosis head needs the class of each diagnosis code; got none")
    tables = [list(t) for t in lookup] if isinstance(lookup[0], (list, tuple)) else [list(lookup)]
    if not all(tables):
        raise ValueError("the diagnosis head needs the class of each diagnosis code; a source has none")
    width = max(len(t) for t in tables)
    # codes past a source's own table are unknown (UNK), as are negative codes
    table = tf.constant([t + [UNKNOWN_CLASS] * (width - len(t)) for t in tables], tf.int32)
    code = tf.cast(batch["diagnosis"], tf.int32)
    source = tf.cast(batch["source"], tf.int32) if len(tables) > 1 else tf.zeros_like(code)
    sizes = tf.gather(tf.constant([len(t) for t in tables], tf.int32), source)
    known = tf.logical_and(code >= 0, code < sizes)
    index = tf.stack([source, tf.clip_by_value(code, 0, width - 1)], axis=-1)
    label = tf.where(known, tf.gather_nd(table, index), UNKNOWN_CLASS)
    label = tf.where(label == MELANOMA_CLASS, UNKNOWN_CLASS, label)
    label = tf.where(tf.equal(batch["target"], 1), MELANOMA_CLASS, label)
    return tf.one_hot(label, len(DIAGNOSIS_CLASSES), dtype=tf.float32)


def source_tags(paths: list[str], sources: list[str] | None) -> tuple[list[str], list[int]]:
    """(source names, tag of each path): the competition's tag is 0, other sources follow by name.
    `sources` names each path's source (sources.FoldData.train_sources); None: all competition."""
    sources = [COMPETITION] * len(paths) if sources is None else list(sources)
    if len(sources) != len(paths):
        raise ValueError(f"{len(sources)} source names for {len(paths)} paths")
    names = sorted(set(sources) | {COMPETITION}, key=lambda name: (name != COMPETITION, name))
    return names, [names.index(source) for source in sources]


def lookup_per_tag(lookups: dict[str, list[int]], names: list[str], tags: list[int]) -> list[list[int]]:
    """One diagnosis lookup per source tag (`source_tags`), from the lookups by source name;
    ValueError when a source that a file carries has none."""
    used = {names[tag] for tag in tags}
    missing = sorted(used - set(lookups))
    if missing:
        raise ValueError(f"no diagnosis lookup for source(s) {', '.join(missing)}")
    # a tag no file carries still needs a row in the table
    return [list(lookups.get(name) or [taxonomy.UNKNOWN_CLASS]) for name in names]


@dataclass
class PseudoLabelled:
    """Test images a fold trains on beside its own (pseudo_labels.source): the test record files, each kept image's
    name, soft label and sample weight, and how many labelled images one pass over the training files gives
    (the two are drawn in proportion to their counts)."""

    paths: list[str]
    names: list[str]
    labels: np.ndarray
    weights: np.ndarray
    labelled_images: int
    class_weight: float | None = None  # train.class_weight of the labelled malignant images, as a sample weight


def train_dataset(paths: list[str], config: Config, batch_size: int, seed: int | None = None,
                  augmenter: augment.BatchAugmenter | None = None, keep=None,
                  diagnosis_lookup: list[int] | dict[str, list[int]] | None = None,
                  sources: list[str] | None = None, shard: tuple[int, int] = (1, 0),
                  pseudo: PseudoLabelled | None = None):
    """Shuffled, repeated, remainder-dropped batches of (inputs, target) for model.fit; with `pseudo`,
    (inputs, target, sample weight), the pseudo-labelled test images mixed in (`train_examples`).

    `batch_size` is the global batch. On a multi-worker cluster, shard = (workers, this worker's
    index) (`environment.input_shard`): each worker reads its own records, and tf.distribute's own
    sharding is turned off, so each worker's batches are split among its replicas only.

    The target is the 0/1 label (binary head) or a one-hot ISIC class (diagnosis head, which needs
    `diagnosis_lookup`: the class index of each diagnosis code, one list for all files or one per
    source name, as sources may code diagnoses differently).
    """
    head = config.model.head
    names, tags = source_tags(paths, sources)
    if isinstance(diagnosis_lookup, dict):
        diagnosis_lookup = lookup_per_tag(diagnosis_lookup, names, tags)
    dataset = train_examples(paths, config, seed, keep, diagnosis_lookup, sources, shard, pseudo)
    keyed = augmenter is not None and is_deterministic(config)
    if keyed:
        dataset = dataset.enumerate().map(_with_key, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if augmenter is not None:
        def apply(batch):
            batch["image"] = augment.augment_batch_op(batch["image"], augmenter,
                                                      batch[AUGMENT_KEY] if keyed else None)
            return batch
        dataset = dataset.map(apply, num_parallel_calls=AUTOTUNE, deterministic=True)
    metadata = config.model.metadata_input

    def to_pair(batch):
        if head == "diagnosis":
            return model_inputs(batch, metadata), diagnosis_target(batch, diagnosis_lookup)
        if pseudo is not None:
            return model_inputs(batch, metadata), batch["target"], batch["weight"]
        return model_inputs(batch, metadata), tf.cast(batch["target"], tf.float32)

    dataset = dataset.map(to_pair, num_parallel_calls=AUTOTUNE)
    if shard[0] > 1:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset.prefetch(AUTOTUNE)


def _with_key(position, example: dict) -> dict:
    """The example with its position in the stream, the key its augmentation is drawn from."""
    return {**example, AUGMENT_KEY: position}


def train_examples(paths: list[str], config: Config, seed: int | None = None, keep=None, diagnosis_lookup=None,
                   sources: list[str] | None = None, shard: tuple[int, int] = (1, 0),
                   pseudo: PseudoLabelled | None = None):
    """The shuffled, repeated stream of decoded training examples (dicts) that `train_dataset` batches.

    A path may be listed more than once (upsampled external files); `keep` drops duplicates.
    `sources` names the source of each path ('competition' or an external set; None: all competition).
    With train.upsample_malignant = k, each malignant competition image appears k times per pass over the
    files, before the shuffle; external images are not repeated (their sets have data.external_upsample).
    The metadata branch's patient image counts count within each source. With `pseudo`, every example
    carries a float `target` and a `weight` (1, or train.class_weight for a malignant labelled image), and
    the pseudo-labelled test images (their label, their weight) are drawn among the labelled ones in
    proportion to their counts.
    """
    if config.model.head == "diagnosis" and diagnosis_lookup is None:
        raise ValueError("the diagnosis head needs diagnosis_lookup (class index per diagnosis code)")
    names, tags = source_tags(paths, sources)
    ordered = is_deterministic(config)
    dataset = _decoded(paths, "train", config.data.image_size, ordered=False, seed=seed,
                       cache=bool(config.data.cache), keep=keep,
                       skip_corrupt=bool(config.data.skip_corrupt), tags=tags, shard=shard, deterministic=ordered)
    upsample = int(config.train.upsample_malignant)
    if upsample > 1:
        # tag 0 is the competition (source_tags)
        dataset = dataset.flat_map(lambda example: tf.data.Dataset.from_tensors(example).repeat(
            tf.where(tf.logical_and(tf.equal(example["target"], 1), tf.equal(example["source"], 0)),
                     tf.constant(upsample, tf.int64), tf.constant(1, tf.int64))))
    if config.model.metadata_input:
        dataset = with_patient_counts(dataset, paths, "train", tags)
    if pseudo is None:
        return dataset.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()
    dataset = dataset.map(functools.partial(_weighted, class_weight=pseudo.class_weight),
                          num_parallel_calls=AUTOTUNE, deterministic=ordered)
    labelled = dataset.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()
    test = pseudo_examples(pseudo, config, len(names), seed, shard).shuffle(SHUFFLE_BUFFER, seed=seed).repeat()
    share = len(pseudo.names) / (len(pseudo.names) + max(1, pseudo.labelled_images))
    return tf.data.Dataset.sample_from_datasets([labelled, test], weights=[1.0 - share, share], seed=seed)


def _weighted(example: dict, class_weight: float | None = None) -> dict:
    """A labelled example with a float target and its sample weight (train.class_weight if malignant)."""
    example["target"] = tf.cast(example["target"], tf.float32)
    malignant = tf.equal(example["target"], 1.0)
    example["weight"] = tf.where(malignant, float(class_weight or 1.0), 1.0)
    return example


def pseudo_examples(pseudo: PseudoLabelled, config: Config, tag: int, seed: int | None = None,
                    shard: tuple[int, int] = (1, 0)):
    """The pseudo-labelled test images as training examples: their records (the others filtered out before
    decoding), each with its soft label as `target`, its `weight`, an unknown diagnosis and source `tag`."""
    index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(pseudo.names, tf.string),
                                            tf.range(len(pseudo.names), dtype=tf.int64)), default_value=-1)
    labels = tf.constant(np.asarray(pseudo.labels, np.float32))
    weights = tf.constant(np.asarray(pseudo.weights, np.float32))
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string)}

    def kept(path, serialized):
        return index.lookup(tf.io.parse_single_example(serialized, spec)["image_name"]) >= 0

    def labelled(example):
        position = index.lookup(example["image_name"])
        example["target"] = tf.gather(labels, position)
        example["weight"] = tf.gather(weights, position)
        example["diagnosis"] = tf.constant(-1, tf.int64)
        example["source"] = tf.constant(tag, tf.int64)
        return example

    ordered = is_deterministic(config)
    dataset = _decoded(pseudo.paths, "test", config.data.image_size, ordered=False, seed=seed,
                       cache=bool(config.data.cache), keep=kept, shard=shard, deterministic=ordered)
    dataset = dataset.map(labelled, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    if config.model.metadata_input:
        dataset = with_patient_counts(dataset, pseudo.paths, "test")
    return dataset


def prediction_dataset(paths: list[str], config: Config, split: str, tta_steps: int = 0,
                       tta_mode: str = "random", batch_size: int = 64,
                       augmenter: augment.BatchAugmenter | None = None, skip_corrupt: bool = False):
    """Ordered batches of dicts: model `inputs` ([B*V, ...] with V views per image) plus `image_name`
    (and `target`, `patient_id`, `diagnosis` for train records). Each image is decoded once; V = max(1, tta_steps).
    skip_corrupt drops unreadable records (validation under data.skip_corrupt; never for test images)."""
    if tta_mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode '{tta_mode}'; choose one of {', '.join(TTA_MODES)}")
    views = max(1, tta_steps)
    if tta_mode == "dihedral" and views > 8:
        raise ValueError(f"dihedral TTA has 8 views; tta.steps={tta_steps}")
    if tta_steps and tta_mode == "random" and augmenter is None:
        raise ValueError("random TTA needs an augmenter")
    metadata = config.model.metadata_input
    dataset = _decoded(paths, split, config.data.image_size, ordered=True, skip_corrupt=skip_corrupt)
    if metadata:
        dataset = with_patient_counts(dataset, paths, split)
    # random views under train.deterministic: view v of the image at position i is drawn with key i x V + v
    keyed = bool(tta_steps) and tta_mode == "random" and is_deterministic(config)
    if keyed:
        dataset = dataset.enumerate().map(_with_key, num_parallel_calls=AUTOTUNE, deterministic=True)

    def make_views(example):
        image = example["image"]
        if tta_steps and tta_mode == "dihedral":
            stack = augment.dihedral_views(image)[:views]
        else:
            stack = tf.repeat(image[None], views, axis=0)
            if tta_steps:
                keys = example[AUGMENT_KEY] * views + tf.range(views, dtype=tf.int64) if keyed else None
                stack = augment.augment_batch_op(stack, augmenter, keys)
        example["image"] = stack
        return example

    dataset = dataset.map(make_views, num_parallel_calls=AUTOTUNE, deterministic=True)
    images_per_batch = max(1, batch_size // views)
    dataset = dataset.batch(images_per_batch)

    def to_inputs(batch):
        flat = dict(batch)
        shape = tf.shape(batch["image"])
        flat["image"] = tf.reshape(batch["image"], tf.concat([[shape[0] * views], shape[2:]], 0))
        for name in record_format.TEST_INT_FEATURES + (("patient_count",) if metadata else ()):
            flat[name] = tf.repeat(batch[name], views)
        out = {"inputs": model_inputs(flat, metadata), "image_name": batch["image_name"]}
        for name in ("target", "patient_id", "diagnosis"):
            if name in batch:
                out[name] = batch[name]
        return out

    dataset = dataset.map(to_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.prefetch(AUTOTUNE), views


