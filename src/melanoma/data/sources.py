"""Which images a fold trains and validates on: competition parts, external sets, duplicates dropped.

A fold's training set is the competition's training parts (`data.train_files`, parts with
`part % k != fold`) plus the selected external TFRecords (`data.external_files`); its validation set is
the competition's parts with `part % k == fold` and nothing else. External images never reach
validation or OOF.

External sets. Each entry of `data.external_files` is a glob, or a one-key mapping `{NAME: GLOB}` that
names the set (useful when the files sit under a path that says nothing, such as a cloud bucket). A plain
glob's files are grouped into sets by the folder they are in, named after it. A set named like the public
`isic2019-NxN` dataset has 30 files: even part = 2017+2018 images, odd part = 2019-only images (the part
comes from the file name), used as `data.isic2019_even_files` / `data.isic2019_odd_files` say. Every file of any
other set (e.g. `malignant-v2-NxN`, or records built from the raw ISIC 2019 files) is read
`data.external_upsample` times per pass.

Duplicates, each drop reported with its reason (`duplicates_dropped` in data.json, every image in
duplicates.csv):

* `duplicates_csv_pair`: ISIC's `2020_Challenge_duplicates.csv` (ISIC_id, ISIC_id_paired, partition)
  pairs two competition images; of each group of paired training images one is kept (the first name)
  and the others are dropped from training and validation;
* `train_csv_tfrecord_-1`: the public dataset's train.csv marks duplicates with `tfrecord == -1`; those
  images are dropped (the public TFRecords already lack them; records built from the JPEGs do not);
* `external_same_name`: an external image named like a competition training image is that image
  (ISIC ids are shared across the challenges; malignant-v2 holds the 2020 malignant images);
* `external_exact_hash`: an external image whose JPEG bytes equal a competition image's
  (`data.dedupe_external`);
* `external_perceptual_hash`: an external image whose 64-bit difference hash (of a 9x8 grey thumbnail)
  is within `data.dedupe_perceptual_bits` bits of a competition image's (`data.dedupe_perceptual`).

Negative downsampling (`data.negatives_per_positive`, sampling.py) leaves benign competition training images
out of the fold's training files the same way (never a validation image): data.json's
`negative_downsampling` says how many were kept and left out.

Drops reach tf.data as (file, image_name) pairs, filtered before decoding, so the same name can be
dropped from an external file and kept in the competition file. Validation drops are taken out of the
per-epoch score and the OOF by name.

Per-file tables (names, patients, targets, hashes) come from one pass over each file without decoding
images, and are cached under `<output_dir>/.cache/tables/`, keyed by path, size and modification time, so
the folds after the first read only small CSVs.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf

from melanoma.core import environment, fold_rule, io_utils
from melanoma.core import progress as progress_lib
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError, DataError
from melanoma.data import examples, integrity, pseudo_labels, record_format, sampling, scorable, validation_weights
from melanoma.runs import layout

COMPETITION = "competition"
ISIC2019_SET = re.compile(r"^isic2019-\d+x\d+$")
REASONS = ("duplicates_csv_pair", "train_csv_tfrecord_-1", "external_same_name", "external_exact_hash",
           "external_perceptual_hash")
HASH_BITS = 64
CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# external sets


@dataclass(frozen=True)
class ExternalSet:
    """One external dataset: its selected files (each listed once) and how often each is read."""

    name: str
    files: tuple[record_format.RecordFile, ...]
    matched: int  # files matched before the 2018/2019 selection
    repeats: int
    selection: str


def _entries(value) -> list[tuple[str | None, str]]:
    """`data.external_files` -> [(set name or None, glob)]."""
    if not value:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    entries = []
    for item in value:
        if isinstance(item, str):
            entries.append((None, item))
        elif isinstance(item, dict) and item and all(isinstance(v, str) for v in item.values()):
            entries.extend((str(name), pattern) for name, pattern in item.items())
        else:
            raise ConfigError(f"data.external_files holds {item!r}; each entry is a glob or a mapping "
                              "{set name: glob}")
    return entries


def external_sets(data_config: Config) -> list[ExternalSet]:
    """The external sets of a config's data section, files selected, sorted by set name."""
    if not 0 <= data_config.dedupe_perceptual_bits < HASH_BITS:
        raise ConfigError(f"config key 'data.dedupe_perceptual_bits' must be in 0..{HASH_BITS - 1}, got "
                          f"{data_config.dedupe_perceptual_bits}")
    if data_config.external_upsample < 0:
        raise ConfigError(f"config key 'data.external_upsample' must be 0 or more, got "
                          f"{data_config.external_upsample}")
    grouped: dict[str, dict[str, record_format.RecordFile]] = {}
    for name, pattern in _entries(data_config.external_files):
        paths = io_utils.glob(pattern)
        if not paths:
            raise FileNotFoundError(f"data.external_files entry {pattern!r} matched no file")
        for path in paths:
            record_file = record_format.parse_file_name(path)
            if record_file.split != "train":
                raise DataError(f"external file {path} is a {record_file.split} file; external data must be "
                                "labelled train records")
            set_name = name or os.path.basename(os.path.dirname(path.rstrip("/"))) or "external"
            if set_name == COMPETITION:
                raise ConfigError("an external set may not be named 'competition'")
            grouped.setdefault(set_name, {})[path] = record_file
    sets = []
    for set_name in sorted(grouped):
        files = sorted(grouped[set_name].values(), key=lambda f: (f.part, f.path))
        if ISIC2019_SET.match(set_name):
            wanted = {0: data_config.isic2019_even_files, 1: data_config.isic2019_odd_files}
            chosen = tuple(f for f in files if wanted[f.part % 2])
            labels = [label for label, on in (("2017+2018 (even parts)", data_config.isic2019_even_files),
                                              ("2019 (odd parts)", data_config.isic2019_odd_files)) if on]
            sets.append(ExternalSet(set_name, chosen, len(files), 1, " + ".join(labels) or "none"))
        else:
            repeats = int(data_config.external_upsample)
            sets.append(ExternalSet(set_name, tuple(files) if repeats else (), len(files), repeats,
                                    "all" if repeats else "none (external_upsample 0)"))
    return sets


# ---------------------------------------------------------------------------------------------------
# per-file tables and hashes


def difference_hash(jpeg: bytes) -> int:
    """64-bit difference hash: a 9x8 grey thumbnail, one bit per pair of horizontal neighbours."""
    data = np.frombuffer(jpeg, dtype=np.uint8)
    grey = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if grey is None:
        raise DataError("cannot decode an image to hash it (empty or corrupt JPEG)")
    thumbnail = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (thumbnail[:, 1:] > thumbnail[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def stat_key(path: str) -> str:
    if io_utils.is_remote(path):
        stat = tf.io.gfile.stat(path)
        size, mtime = stat.length, stat.mtime_nsec
    else:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime_ns
    text = f"{CACHE_VERSION}|{os.path.abspath(path) if not io_utils.is_remote(path) else path}|{size}|{mtime}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _read_file(path: str, content_hash: bool, perceptual: bool, bar, skip_corrupt: bool = False) -> pd.DataFrame:
    """image_name, patient_id, target (+ sha1, dhash) of every record of one file, in file order.

    skip_corrupt (data.skip_corrupt) leaves out records that cannot be read or parsed, as training will;
    otherwise such a record is a DataError naming the file, the record and its image (integrity.py)."""
    columns: dict[str, list] = {"image_name": [], "patient_id": [], "target": []}
    if content_hash:
        columns["sha1"] = []
    if perceptual:
        columns["dhash"] = []
    try:
        for batch in examples.batches(path, "train", ("patient_id", "target"), images=content_hash or perceptual,
                                      skip_corrupt=skip_corrupt, batch_size=256):
            names = batch["image_name"].tolist()
            columns["image_name"].extend(names)
            columns["patient_id"].extend(batch["patient_id"].tolist())
            columns["target"].extend(batch["target"].tolist())
            if "image" in batch:
                for name, jpeg in zip(names, batch["image"]):
                    if content_hash:
                        columns["sha1"].append(hashlib.sha1(jpeg).hexdigest())
                    if perceptual:
                        try:
                            columns["dhash"].append(f"{difference_hash(jpeg):016x}")
                        except DataError:
                            raise DataError(f"cannot decode image {name} in {path} to hash it") from None
            bar.update(len(names))
        if skip_corrupt and not columns["image_name"]:  # test records would all be skipped as corrupt
            integrity.refuse_test_records([integrity.scan_file(path, "train", image_size=None)], f"cannot use {path}")
    except tf.errors.OpError as error:
        scan = integrity.scan_file(path, "train", image_size=None)
        integrity.refuse_test_records([scan], f"cannot read {path}")  # one line, not one per record
        found = f":\n  {scan.describe()}\n" if not scan.ok else \
            f": {error.message.splitlines()[0]} (a truncated or corrupt TFRecord, or not the public train schema); "
        raise DataError(f"cannot read {path}{found}{integrity.HINT_TRAIN}") from None
    return pd.DataFrame(columns)


class TableReader:
    """Per-file tables, read once per process and cached on disk between processes."""

    def __init__(self, cache_dir: str | None, progress: bool = True, skip_corrupt: bool = False):
        self.cache_dir = cache_dir
        self.progress = progress
        self.skip_corrupt = skip_corrupt
        self.memory: dict[tuple[str, bool, bool], pd.DataFrame] = {}

    def _cache_path(self, path: str) -> str | None:
        return os.path.join(self.cache_dir, f"{stat_key(path)}.csv") if self.cache_dir else None

    def _cached(self, path: str, content_hash: bool, perceptual: bool) -> pd.DataFrame | None:
        cache_path = self._cache_path(path)
        if not cache_path or not io_utils.exists(cache_path):
            return None
        table = io_utils.read_csv(cache_path, dtype={"image_name": str, "sha1": str, "dhash": str})
        needed = {"image_name", "patient_id", "target"} | ({"sha1"} if content_hash else set()) | (
            {"dhash"} if perceptual else set())
        return table if needed <= set(table.columns) else None

    def tables(self, files: Iterable[record_format.RecordFile], content_hash: bool = False,
               perceptual: bool = False, desc: str = "reading records") -> dict[str, pd.DataFrame]:
        """{path: table} for the files; one pass (with a progress bar) over those not cached."""
        files = list({f.path: f for f in files}.values())
        found, missing = {}, []
        for record_file in files:
            key = (record_file.path, content_hash, perceptual)
            table = self.memory.get(key)
            if table is None:
                table = self._cached(record_file.path, content_hash, perceptual)
            if table is None:
                missing.append(record_file)
            else:
                found[record_file.path] = self.memory[key] = table
        if missing:
            total = sum(f.count for f in missing)
            with progress_lib.bar(total=total, desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
                for record_file in missing:
                    table = _read_file(record_file.path, content_hash, perceptual, bar, self.skip_corrupt)
                    short = len(table) != record_file.count
                    if short and not self.skip_corrupt:
                        raise DataError(f"{record_file.path} holds {len(table)} records but its name says "
                                        f"{record_file.count}; the file is truncated or misnamed")
                    cache_path = self._cache_path(record_file.path)
                    if cache_path and not short:  # a damaged file's partial table is never reused
                        io_utils.write_csv_atomic(table, cache_path)
                    found[record_file.path] = self.memory[(record_file.path, content_hash, perceptual)] = table
        return found


    def test_names(self, files: Iterable[record_format.RecordFile]) -> set[str]:
        """image_name of every record of the test files (cached like the tables)."""
        names: set[str] = set()
        for record_file in files:
            key = (record_file.path, "test names")
            cache_path = (os.path.join(self.cache_dir, f"{stat_key(record_file.path)}-names.csv")
                          if self.cache_dir else None)
            table = self.memory.get(key)
            if table is None and cache_path and io_utils.exists(cache_path):
                table = io_utils.read_csv(cache_path, dtype={"image_name": str})
            if table is None:
                try:
                    read = [name for batch in examples.batches(record_file.path, "test", columns=(), batch_size=1024)
                            for name in batch["image_name"].tolist()]
                except tf.errors.OpError:
                    raise DataError(f"cannot read the image names of {record_file.path} (a truncated or corrupt "
                                    f"TFRecord, or not the public test schema); {integrity.HINT_PREDICT}") from None
                table = pd.DataFrame({"image_name": read})
                if cache_path:
                    io_utils.write_csv_atomic(table, cache_path)
            self.memory[key] = table
            names.update(table["image_name"].astype(str))
        return names


def check_train_test_overlap(data: Config, competition: pd.DataFrame, reader: TableReader) -> None:
    """No image is both a training image and a test image (a test image trained on or scored as OOF, its
    prediction submitted as if unseen): DataError naming them."""
    if not data.test_files:
        return
    test_files = record_format.list_files(data.test_files, "data.test_files")
    shared = sorted(set(competition["image_name"].astype(str)) & reader.test_names(test_files))
    if shared:
        raise DataError(f"{len(shared)} image name(s) are in both data.train_files and data.test_files (e.g. "
                        f"{_examples(shared)}): a test image must never be trained on or scored. Rebuild the "
                        "records from a train.csv and a test.csv that share no image")


def check_splits_apart(config: Config, progress: bool = True) -> None:
    """Before a run is bound and any fold trains: no competition training image is also a test image
    (check_train_test_overlap over every train file), and validation_weights.file covers them all. The
    tables are read as the folds will read them, so the folds find them cached; only the process that writes
    the run caches them (a cluster's other workers keep theirs in memory). Every fold can be scored
    (data/scorable.py)."""
    data = config.data
    files = record_format.list_files(data.train_files, "data.train_files")
    external = bool([f for s in external_sets(data) for f in s.files])
    content_hash, perceptual = _hash_flags(data, external)
    cache = os.path.join(config.output_dir, ".cache", "tables") if environment.is_chief() else None
    reader = TableReader(cache, progress, skip_corrupt=bool(data.skip_corrupt))
    tables = reader.tables(files, content_hash, perceptual, desc="competition records")
    competition = _joined(tables, files, COMPETITION)
    parts = competition["path"].map(lambda path: record_format.parse_file_name(path).part)
    scorable.check_folds(competition["target"], fold_rule.part_fold(parts, data.folds), data.folds,
                         training_too=not external)
    check_train_test_overlap(data, competition, reader)
    check_validation_weights(config, competition["image_name"])
    check_pseudo_label_images(config, competition, reader)


def check_pseudo_label_images(config: Config, competition: pd.DataFrame, reader: TableReader) -> None:
    """Under pseudo_labels.source, its source predicts exactly the test records' images and (matched folds) its
    folds validated the images this config's folds validate (data/pseudo_labels.py); DataError otherwise."""
    source = pseudo_labels.check_source(config)
    if source is None:
        return
    test_names = reader.test_names(record_format.list_files(config.data.test_files, "data.test_files"))
    parts = competition["path"].map(lambda path: record_format.parse_file_name(path).part)
    image_folds = pd.Series(fold_rule.part_fold(parts, config.data.folds).to_numpy(),
                            index=competition["image_name"].astype(str))
    pseudo_labels.check_images(source, test_names, image_folds)


def check_validation_weights(config: Config, names) -> None:
    """Under validation_weights.file, its CSV gives a test-likeness to every image that may be validated
    (`names`); DataError naming those it lacks (a CSV made for other records)."""
    if config.validation_weights.file:
        validation_weights.fold_weights(config, names)


def _hash_flags(data: Config, external: bool) -> tuple[bool, bool]:
    """(content hashes, perceptual hashes) the duplicate checks need: only with external records."""
    return external and bool(data.dedupe_external), external and bool(data.dedupe_perceptual)


# ---------------------------------------------------------------------------------------------------
# competition duplicates


def read_duplicates(paths) -> dict[str, pd.DataFrame]:
    """{reason: frame of image_name, duplicate_of} from each duplicates CSV, recognised by its columns.

    `2020_Challenge_duplicates.csv` (ISIC_id, ISIC_id_paired[, partition]) gives pairs; the public
    train.csv (image_name, tfrecord) gives the images marked -1.
    """
    if not paths:
        return {}
    found: dict[str, list[pd.DataFrame]] = {}
    for path in [paths] if isinstance(paths, str) else paths:
        table = io_utils.read_csv(path, dtype=str)
        columns = set(table.columns)
        if {"ISIC_id", "ISIC_id_paired"} <= columns:
            pairs = table[["ISIC_id", "ISIC_id_paired"]].dropna().astype(str)
            found.setdefault("duplicates_csv_pair", []).append(
                pairs.rename(columns={"ISIC_id": "image_name", "ISIC_id_paired": "duplicate_of"}))
        elif {"image_name", "tfrecord"} <= columns:
            marked = table.loc[pd.to_numeric(table["tfrecord"], errors="coerce") == -1, ["image_name"]]
            found.setdefault("train_csv_tfrecord_-1", []).append(marked.assign(duplicate_of=""))
        else:
            raise DataError(f"duplicates CSV {path} has columns {', '.join(table.columns)}; expected ISIC's "
                            "2020_Challenge_duplicates.csv (ISIC_id, ISIC_id_paired, partition) or the "
                            "public train.csv (image_name, tfrecord; -1 marks a duplicate)")
    return {reason: pd.concat(frames, ignore_index=True) for reason, frames in found.items()}


def pair_drops(pairs: pd.DataFrame, present: set[str]) -> pd.DataFrame:
    """Of each connected group of paired images present in the training data, all but the first name."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            parent[name] = parent.get(parent[name], parent[name])
            name = parent[name]
        return name

    for a, b in zip(pairs["image_name"], pairs["duplicate_of"]):
        if a in present and b in present:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    rows = [(name, root(name)) for name in sorted(parent) if root(name) != name]
    return pd.DataFrame(rows, columns=["image_name", "duplicate_of"])


# ---------------------------------------------------------------------------------------------------
# near duplicates


def hamming_matches(queries: np.ndarray, references: np.ndarray, max_bits: int,
                    block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(query index, reference index) of the nearest reference within max_bits, for queries that have one."""
    if not len(queries) or not len(references):
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    hits_q, hits_r = [], []
    for start in range(0, len(queries), block):
        chunk = queries[start:start + block]
        distance = np.bitwise_count(chunk[:, None] ^ references[None, :])
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(chunk)), nearest] <= max_bits
        hits_q.append(np.nonzero(close)[0] + start)
        hits_r.append(nearest[close])
    return np.concatenate(hits_q), np.concatenate(hits_r)


def _hashes(values: pd.Series) -> np.ndarray:
    return np.array([int(v, 16) for v in values], dtype=np.uint64)


# ---------------------------------------------------------------------------------------------------
# the fold


@dataclass
class FoldData:
    """What train_fold reads: files, what to drop from them, counts, and the summary for data.json."""

    fold: int
    train_files: list[record_format.RecordFile]  # competition training files, then external files (repeated)
    valid_files: list[record_format.RecordFile]
    excluded: set[tuple[str, str]]  # (file path, image_name) pairs left out of training and validation
    valid_dropped: frozenset[str]  # validation image names left out of the score and the OOF
    valid_names: frozenset[str]  # the competition validation images that the OOF must hold
    train_images: int  # images per pass over the training files (drops out, repeats in)
    valid_images: int
    summary: dict
    drops: pd.DataFrame = field(repr=False)
    train_sources: list[str] = field(default_factory=list)  # source of each of train_files
    # pseudo_labels.source: the test images the fold also trains on (image_name, label, weight) and the test files
    # that hold them; none otherwise (fold_data.with_pseudo_labels)
    pseudo: pd.DataFrame | None = field(default=None, repr=False)
    pseudo_files: list[record_format.RecordFile] = field(default_factory=list)

    @property
    def train_paths(self) -> list[str]:
        return [f.path for f in self.train_files]

    @property
    def valid_paths(self) -> list[str]:
        return [f.path for f in self.valid_files]

    def record_filter(self) -> Callable | None:
        """tf predicate (file path, serialized record) -> keep?, or None when nothing is dropped."""
        return record_filter(self.excluded) if self.excluded else None


def record_filter(excluded: Iterable[tuple[str, str]]) -> Callable:
    """A tf.data predicate that drops the given (file path, image_name) records before decoding."""
    keys = sorted({f"{path}\n{name}" for path, name in excluded})
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.ones(len(keys), tf.int64)),
        default_value=0)
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string)}

    def keep(path, serialized):
        name = tf.io.parse_single_example(serialized, spec)["image_name"]
        return tf.equal(table.lookup(tf.strings.join([path, name], separator="\n")), 0)

    return keep


def check_competition_files(files: list[record_format.RecordFile]) -> None:
    """One file per part, train records only: a second file with the same part is data in the wrong key."""
    by_part: dict[int, list[str]] = {}
    for record_file in files:
        if record_file.split != "train":
            raise DataError(f"data.train_files matched the {record_file.split} file {record_file.path}: "
                            f"{record_format.TEST_RECORDS_GIVEN}")
        by_part.setdefault(record_file.part, []).append(record_file.path)
    doubled = {part: paths for part, paths in by_part.items() if len(paths) > 1}
    if doubled:
        part, paths = min(doubled.items())
        raise CheckFailed(f"data.train_files has {len(paths)} files for part {part} ({', '.join(paths[:3])}); "
                          "the competition has one file per part. External TFRecords (isic2019, "
                          "malignant-v2, ...) belong in data.external_files, never in data.train_files")


def _counts(table: pd.DataFrame, files: int, **extra) -> dict:
    patients = table.loc[table["patient_id"] >= 0, "patient_id"]
    row = {"files": files, "images": int(len(table)), "malignant": int((table["target"] == 1).sum()),
           "patients": int(patients.nunique()),
           "images_without_patient": int((table["patient_id"] < 0).sum())}
    row.update(extra)
    return row


def _examples(values: Iterable, limit: int = 3) -> str:
    values = sorted({str(v) for v in values})
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def prepare_fold(config: Config, fold: int, progress: bool = True, reader: TableReader | None = None) -> FoldData:
    """The fold's files and drops, after the integrity checks; CheckFailed on any leak."""
    data = config.data
    files = record_format.list_files(data.train_files, "data.train_files")
    check_competition_files(files)
    train_files, valid_files = record_format.split_folds(files, fold, data.folds)
    sets = external_sets(data)
    competition_paths = {f.path for f in files}
    for external in sets:
        shared = sorted(competition_paths & {f.path for f in external.files})
        if shared:
            raise CheckFailed(f"{shared[0]} is matched by both data.train_files and data.external_files "
                              f"(set '{external.name}'); external images must never be in validation")
    external_files = [f for s in sets for f in s.files]
    content_hash, perceptual = _hash_flags(data, bool(external_files))
    reader = reader or TableReader(os.path.join(config.output_dir, ".cache", "tables"), progress,
                                   skip_corrupt=bool(data.skip_corrupt))
    tables = reader.tables(files, content_hash, perceptual, desc="competition records")
    tables.update(reader.tables(external_files, content_hash, perceptual, desc="external records"))
    training = _joined(tables, train_files, COMPETITION)
    validation = _joined(tables, valid_files, COMPETITION)
    competition = _checked_competition(training, validation)
    check_train_test_overlap(data, competition, reader)
    check_validation_weights(config, validation["image_name"])
    competition_drops = _competition_drops(competition, data.duplicates_csv)
    dropped_names = set(competition_drops["image_name"])
    external_frames, external_drop_rows = _external_drops(data, sets, tables, competition, content_hash,
                                                          perceptual)
    columns = ["image_name", "source", "path", "reason", "duplicate_of"]
    drops = pd.concat([competition_drops.reindex(columns=columns)]
                      + [d.reindex(columns=columns) for d in external_drop_rows], ignore_index=True)
    drops["duplicate_of"] = drops["duplicate_of"].fillna("")
    excluded = set(zip(drops["path"], drops["image_name"]))
    kept_training = training[~training["image_name"].isin(dropped_names)]
    kept_validation = validation[~validation["image_name"].isin(dropped_names)]
    valid_names = _check_leaks(fold, kept_training, kept_validation, external_frames)
    kept_training, excluded, sampled = _downsampled(config, fold, kept_training, excluded)
    scorable.check_validation(fold, kept_validation["target"], data.folds)  # as check_splits_apart: the net
    scorable.check_training(pd.concat([kept_training["target"]] + [f["target"] for f in external_frames.values()]),
                            f"fold {fold}'s training images")

    repeats = {s.name: s.repeats for s in sets}
    # train.upsample_malignant repeats malignant competition images (pipeline.train_dataset)
    upsampled = (int(config.train.upsample_malignant) - 1) * int((kept_training["target"] == 1).sum())
    train_images = (len(kept_training) + upsampled
                    + sum(len(f) * repeats[name] for name, f in external_frames.items()))
    train_list = list(train_files) + [f for s in sets for f in s.files for _ in range(s.repeats)]
    train_sources = [COMPETITION] * len(train_files) + [s.name for s in sets for _ in s.files
                                                        for _ in range(s.repeats)]
    summary = build_summary(fold, data.folds, kept_training, kept_validation, train_files, valid_files,
                            sets, external_frames, drops, train_images,
                            upsample=int(config.train.upsample_malignant))
    summary["negative_downsampling"] = sampled
    return FoldData(fold=fold, train_files=train_list, valid_files=list(valid_files), excluded=excluded,
                    valid_dropped=frozenset(validation.loc[validation["image_name"].isin(dropped_names),
                                                           "image_name"]),
                    valid_names=frozenset(valid_names), train_images=int(train_images),
                    valid_images=len(kept_validation), summary=summary, drops=drops,
                    train_sources=train_sources)


def _downsampled(config: Config, fold: int, training: pd.DataFrame, excluded: set) -> tuple[pd.DataFrame, set, dict]:
    """data.negatives_per_positive (sampling.py): the competition training images the fold trains on, the
    pairs left out of its training files (duplicates and the benign images not drawn), and the draw's
    summary for data.json. Validation is never sampled; external sets keep data.external_upsample."""
    left_out = sampling.negatives_dropped(training, config.data.negatives_per_positive, int(config.seed) + fold)
    info = sampling.summary(training, left_out, config.data.negatives_per_positive)
    if not len(left_out):
        return training, excluded, info
    out = training["image_name"].isin(left_out)
    excluded = set(excluded) | set(zip(training.loc[out, "path"], training.loc[out, "image_name"]))
    return training[~out], excluded, info


def _joined(tables: dict[str, pd.DataFrame], record_files, source: str) -> pd.DataFrame:
    """The record files' tables in one, each row with its file's path and the source's name."""
    frames = [tables[f.path].assign(path=f.path, source=source) for f in record_files]
    return (pd.concat(frames, ignore_index=True) if frames else
            pd.DataFrame(columns=["image_name", "patient_id", "target", "path", "source"]))


def _checked_competition(training: pd.DataFrame, validation: pd.DataFrame) -> pd.DataFrame:
    """The fold's competition images, training then validation; CheckFailed when an image repeats or a
    validation image has no patient id (external data given as data.train_files)."""
    competition = pd.concat([training, validation], ignore_index=True)
    repeated = competition.loc[competition["image_name"].duplicated(), "image_name"]
    if len(repeated):
        raise CheckFailed(f"image(s) {_examples(repeated)} appear more than once in data.train_files; the "
                          "parts overlap (two copies of the data, or an external file among them)")
    unknown = validation.loc[validation["patient_id"] < 0]
    if len(unknown):
        paths = sorted(set(unknown["path"]))
        raise CheckFailed(f"validation file(s) {_examples(paths, 2)} hold {len(unknown)} image(s) without a "
                          "patient id (e.g. " + _examples(unknown["image_name"]) + "): external data given as "
                          "data.train_files would put non-competition images in validation and OOF; list "
                          "them under data.external_files")
    return competition


def _competition_drops(competition: pd.DataFrame, duplicates_csv) -> pd.DataFrame:
    """Competition duplicates (data.duplicates_csv), dropped from training and validation."""
    drop_rows = []
    present = set(competition["image_name"])
    for reason, listed in read_duplicates(duplicates_csv).items():
        if reason == "duplicates_csv_pair":
            listed = pair_drops(listed, present)
        listed = listed[listed["image_name"].isin(present)].drop_duplicates("image_name")
        drop_rows.append(competition.merge(listed, on="image_name").assign(reason=reason))
    return (pd.concat(drop_rows, ignore_index=True).drop_duplicates("image_name")
            if drop_rows else pd.DataFrame(columns=["image_name", "path", "source", "reason"]))


def _external_drops(data, sets: list[ExternalSet], tables: dict[str, pd.DataFrame], competition: pd.DataFrame,
                    content_hash: bool, perceptual: bool) -> tuple[dict[str, pd.DataFrame], list[pd.DataFrame]]:
    """External images that are competition images (same name, same bytes, or a near perceptual hash):
    ({set name: its images kept}, [each set's dropped images with reason and duplicate_of])."""
    external_frames, external_drop_rows = {}, []
    competition_names = set(competition["image_name"])
    sha_index = (competition.drop_duplicates("sha1").set_index("sha1")["image_name"]
                 if content_hash else None)
    reference_hashes = _hashes(competition["dhash"]) if perceptual else None
    for external in sets:
        frame = _joined(tables, external.files, external.name)
        if frame.empty:
            external_frames[external.name] = frame
            continue
        reason = pd.Series("", index=frame.index, dtype=object)
        duplicate_of = pd.Series("", index=frame.index, dtype=object)
        same = frame["image_name"].isin(competition_names)
        reason[same], duplicate_of[same] = "external_same_name", frame.loc[same, "image_name"]
        if content_hash:
            hit = (reason == "") & frame["sha1"].isin(sha_index.index)
            reason[hit] = "external_exact_hash"
            duplicate_of[hit] = sha_index.loc[frame.loc[hit, "sha1"]].to_numpy()
        if perceptual:
            open_rows = np.nonzero((reason == "").to_numpy())[0]
            queries, refs = hamming_matches(_hashes(frame["dhash"].iloc[open_rows]), reference_hashes,
                                            int(data.dedupe_perceptual_bits))
            rows = frame.index[open_rows[queries]]
            reason[rows] = "external_perceptual_hash"
            duplicate_of[rows] = competition["image_name"].to_numpy()[refs]
        hit = reason != ""
        external_drop_rows.append(frame.loc[hit].assign(reason=reason[hit], duplicate_of=duplicate_of[hit]))
        external_frames[external.name] = frame.loc[~hit]
    return external_frames, external_drop_rows


def _check_leaks(fold: int, kept_training: pd.DataFrame, kept_validation: pd.DataFrame,
                 external_frames: dict[str, pd.DataFrame]) -> set[str]:
    """The leak checks, on what will actually be read: no patient on both sides, no external image in
    validation. Returns the validation image names."""
    shared_patients = (set(kept_training.loc[kept_training["patient_id"] >= 0, "patient_id"])
                       & set(kept_validation.loc[kept_validation["patient_id"] >= 0, "patient_id"]))
    if shared_patients:
        raise CheckFailed(f"fold {fold}: {len(shared_patients)} patient(s) (codes {_examples(shared_patients)}) "
                          "have images in both training and validation; the parts are not patient-disjoint. "
                          "Rebuild the records with `python -m melanoma records` (its parts never split a "
                          "patient) or check data.train_files")
    valid_names = set(kept_validation["image_name"])
    leaked = {name for frame in external_frames.values() for name in frame["image_name"]} & valid_names
    if leaked:
        raise CheckFailed(f"fold {fold}: external image(s) {_examples(leaked)} would be in validation")
    return valid_names


def build_summary(fold, folds, training, validation, train_files, valid_files, sets, external_frames,
                  drops, train_images, upsample: int = 1) -> dict:
    training_rows = {COMPETITION: _counts(training, len(train_files), repeats=1, malignant_repeats=upsample)}
    for external in sets:
        training_rows[external.name] = _counts(external_frames[external.name], len(external.files),
                                               repeats=external.repeats, files_matched=external.matched,
                                               selection=external.selection)
    drops = drops.assign(split=np.where(drops["path"].isin({f.path for f in valid_files}), "validation",
                                        "training"))
    by_split = {split: {reason: int(((drops["reason"] == reason) & (drops["split"] == split)).sum())
                        for reason in REASONS} for split in ("training", "validation")}
    return {
        "fold": fold,
        "folds": folds,
        "training": training_rows,
        "validation": {COMPETITION: _counts(validation, len(valid_files))},
        "training_images_per_epoch": int(train_images),
        "duplicates_dropped": {reason: int((drops["reason"] == reason).sum()) for reason in REASONS},
        "duplicates_dropped_by_split": by_split,
        "checks": {"patients_in_training_and_validation": 0, "external_images_in_validation": 0,
                   "non_competition_images_in_validation": 0},
    }


def format_summary(summary: dict) -> str:
    lines = [f"fold {summary['fold']} data:",
             f"  {'split':<11}{'source':<26}{'files':>6}{'images':>9}{'malignant':>10}{'patients':>9}"
             f"{'repeats':>8}"]
    for split in ("training", "validation"):
        for source, row in summary[split].items():
            lines.append(f"  {split:<11}{source:<26}{row['files']:>6}{row['images']:>9}{row['malignant']:>10}"
                         f"{row['patients']:>9}{row.get('repeats', 1):>8}")
    dropped = {k: v for k, v in summary["duplicates_dropped"].items() if v}
    lines.append("  duplicates dropped: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"))
    sampled = summary.get("negative_downsampling") or {}
    if sampled.get("negatives_per_positive") is not None:
        lines.append(f"  negative downsampling: {sampled['negatives_per_positive']:g} benign per malignant image, "
                     f"{sampled['benign_kept']} benign training images kept, {sampled['benign_left_out']} left out")
    pseudo = summary.get("pseudo_labels")
    if pseudo:
        lines.append(f"  pseudo-labelled test images: {pseudo['images']} (labels sum to {pseudo['label_sum']}, weight "
                     f"{pseudo['weight']:g}, {pseudo['rule']}, {pseudo['folds']} folds) from {pseudo['source']}")
    lines.append(f"  training images per epoch: {summary['training_images_per_epoch']}")
    return "\n".join(lines)


def write_summary(fold_data: FoldData, folder: str) -> str:
    """Print the fold's data summary; write data.json and duplicates.csv (every dropped image) in folder."""
    path = os.path.join(folder, layout.FOLD_DATA)
    io_utils.write_text_atomic(path, json.dumps(fold_data.summary, indent=1) + "\n")
    io_utils.write_csv_atomic(fold_data.drops, os.path.join(folder, layout.DUPLICATES))
    print(format_summary(fold_data.summary))
    return path


def check_oof(oof: pd.DataFrame, fold_data: FoldData) -> pd.DataFrame:
    """The fold's OOF without the dropped validation duplicates; CheckFailed unless it is exactly the
    competition's validation images."""
    oof = oof[~oof["image_name"].isin(fold_data.valid_dropped)].reset_index(drop=True)
    names = set(oof["image_name"])
    stray = names - fold_data.valid_names
    if stray:
        raise CheckFailed(f"fold {fold_data.fold}: OOF would hold image(s) {_examples(stray)} that are not "
                          "competition validation images")
    missing = fold_data.valid_names - names
    if missing or oof["image_name"].duplicated().any():
        raise CheckFailed(f"fold {fold_data.fold}: OOF lacks or repeats validation images "
                          f"({_examples(missing) or _examples(oof.loc[oof['image_name'].duplicated(), 'image_name'])})")
    return oof
