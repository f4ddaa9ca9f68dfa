"""Tabular features of the competition's records, for `model.family: tabular` (see `tabular`).

Groups, each switched in the config's `features` section:

* image statistics (`features.image`), from each record's image decoded with OpenCV at
  `features.image_size` (null: `data.image_size`): colour moments and histograms in RGB, HSV and LAB,
  and the shape and colour of a lesion mask; all finite (see `imagestats` for each one).
* metadata (`features.metadata`): `meta_age`, `meta_sex`, `meta_site` (categorical code), and
  `meta_patient_images` (the patient's images in the same split); missing values are NaN, which the
  trees route on their own.
* stacking (`features.from_runs`): `run_<name>`, the named run's OOF prediction for a training row and
  its test prediction (mean over folds) for a test row; a run whose folds differ from this config's is
  refused, so no row's feature comes from a model that trained on that row.
* patient context (`features.patient_context`): for each image statistic, stacked prediction and the
  age, `pdiff_<feature>` (the value minus the mean over the patient's images) and `prank_<feature>` (its
  rank among them, 0 lowest to 1 highest), plus `patient_distance` (how far the image's standardised
  statistics lie from its patient's mean): the "ugly duckling" sign. A patient with one image gets
  difference 0 and the middle rank 0.5. Computed over the same split only (training records, or test
  records), so training and test patients never mix; no target is used.

Image statistics and the records' metadata are computed once per records file and cached under
`<output_dir>/.cache/features/`, keyed by the file (path, size, modification time) and the settings they
depend on, so a second config on the same records does not decode again. TensorFlow reads the records in
this process; the images are decoded and measured with OpenCV in spawned worker processes (a forked child
of a process running TensorFlow can hang), `features.workers` of them (null: every core).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core import progress as progress_lib
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import examples, integrity, record_format, sources
from melanoma.input import imagestats, patientcontext, stacking

FEATURE_VERSION = 1  # bump when a feature's definition changes: the cache keys include it
CHUNK = 64            # images per task sent to a worker
GROUPS = (("moment_", "colour moments"), ("hist_", "colour histograms"), ("lesion_", "lesion"),
          ("meta_", "metadata"), ("run_", "stacking"), ("pdiff_", "patient context"),
          ("prank_", "patient context"), ("patient_distance", "patient context"))
CATEGORICAL = ("meta_site",)
# Constant over a patient's images by definition: no patient context for them.
PATIENT_LEVEL = ("meta_sex", "meta_site", "meta_patient_images")


# ---------------------------------------------------------------------------------------------------
# per-file tables, cached


def image_size(config: Config) -> int:
    return int(config.features.image_size or config.data.image_size)


def settings_key(config: Config) -> str:
    """What a file's cached table depends on besides the file itself."""
    image = bool(config.features.image)
    settings = {"version": FEATURE_VERSION, "image": image,
                "image_size": image_size(config) if image else None,
                "bins": int(config.features.histogram_bins) if image else None}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _codes_and_images(path: str, split: str, with_images: bool):
    """(metadata table in file order, JPEG bytes or None) of one records file, read with TensorFlow."""
    names = examples.int_features(split)
    columns: dict[str, list] = {"image_name": [], **{name: [] for name in names}}
    jpegs: list[bytes] = []
    hint = integrity.HINT_PREDICT + " The tabular model needs every image."
    with integrity.named_data_errors([path], split, None, f"reading {path}", hint):
        for batch in examples.batches(path, split, images=with_images):
            for name in columns:
                columns[name].extend(batch[name].tolist())
            if with_images:
                jpegs.extend(batch["image"].tolist())
    table = pd.DataFrame(columns)
    expected = record_format.parse_file_name(path).count
    if len(table) != expected:
        raise DataError(f"{path} holds {len(table)} records but its name says {expected}; the file is "
                        "truncated or misnamed. Download or rebuild it.")
    return table, (jpegs if with_images else None)


class _Workers:
    """A pool of spawned processes, started on first use (only when there is enough to share)."""

    def __init__(self, count: int):
        self.count = count
        self.pool = None

    def map(self, tasks: list[tuple]):
        if self.count <= 1 or len(tasks) < 2:
            return map(imagestats.features_task, tasks)
        if self.pool is None:
            self.pool = multiprocessing.get_context("spawn").Pool(self.count)
        return self.pool.imap(imagestats.features_task, tasks)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def worker_count(config: Config) -> int:
    workers = config.features.workers
    return int(workers) if workers else (os.cpu_count() or 1)


def split_table(config: Config, split: str, progress: bool = True) -> pd.DataFrame:
    """Metadata codes (+ image statistics) of every record of `split` (train | test), file by file in
    part order, with each file's `part`; cached per file under <output_dir>/.cache/features/."""
    key = "data.train_files" if split == "train" else "data.test_files"
    files = record_format.list_files(config.get_path(key), key)
    wrong = [f.path for f in files if f.split != split]
    if wrong:
        raise DataError(f"{key} matched {wrong[0]}, which is not a {split} file")
    with_images = bool(config.features.image)
    size, bins = image_size(config), int(config.features.histogram_bins)
    cache_dir = os.path.join(config.output_dir, ".cache", "features")
    suffix = settings_key(config)
    tables, missing = {}, []
    for record_file in files:
        cache = os.path.join(cache_dir, f"{sources.stat_key(record_file.path)}-{suffix}.csv")
        if io_utils.exists(cache):
            tables[record_file.path] = io_utils.read_csv(cache, dtype={"image_name": str})
        else:
            missing.append((record_file, cache))
    if missing:
        workers = _Workers(min(worker_count(config), max(1, sum(f.count for f, _ in missing) // CHUNK)))
        total = sum(f.count for f, _ in missing)
        desc = f"{split} image statistics" if with_images else f"{split} metadata"
        try:
            with progress_lib.bar(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
                for record_file, cache in missing:
                    table, jpegs = _codes_and_images(record_file.path, split, with_images)
                    if with_images:
                        table = _with_image_features(table, jpegs, record_file.path, size, bins, workers, bar)
                    else:
                        bar.update(len(table))
                    io_utils.write_csv_atomic(table, cache)
                    tables[record_file.path] = table
        finally:
            workers.close()
    table = pd.concat([tables[f.path] for f in files], ignore_index=True).copy()  # .copy(): one block per dtype
    table["part"] = np.repeat([f.part for f in files], [len(tables[f.path]) for f in files])
    return table


def _with_image_features(table, jpegs, path, size, bins, workers, bar) -> pd.DataFrame:
    names = table["image_name"].tolist()
    tasks = [(names[i:i + CHUNK], jpegs[i:i + CHUNK], size, bins) for i in range(0, len(jpegs), CHUNK)]
    blocks = []
    try:
        for block in workers.map(tasks):
            blocks.append(block)
            bar.update(len(block))
    except DataError as error:
        raise DataError(f"{path}: {error}. Download or rebuild the file: the tabular model needs every "
                        "image.") from None
    values = np.concatenate(blocks) if blocks else np.zeros((0, len(imagestats.image_feature_names(bins))))
    statistics = pd.DataFrame(values, columns=imagestats.image_feature_names(bins))
    return pd.concat([table.reset_index(drop=True), statistics], axis=1)


# ---------------------------------------------------------------------------------------------------
# metadata, patient context (stacking: input/stacking.py)


def metadata_features(raw: pd.DataFrame) -> pd.DataFrame:
    """meta_* from the records' codes (-1 missing -> NaN); the image count over the rows given."""
    def known(column):
        values = raw[column].astype(np.float64)
        return values.where(values >= 0)

    patients = raw["patient_id"]
    counts = patients.map(patients[patients >= 0].value_counts()).astype(np.float64)
    return pd.DataFrame({"meta_age": known("age_approx"), "meta_sex": known("sex"),
                         "meta_site": known("anatom_site_general_challenge"),
                         "meta_patient_images": counts.where(patients >= 0)})


# ---------------------------------------------------------------------------------------------------
# the table


@dataclass
class FeatureTable:
    """Feature columns for every training record (with image_name, patient_id, target, part) and every
    test record (with image_name, patient_id); `columns` in model order."""

    train: pd.DataFrame
    test: pd.DataFrame
    columns: list[str]
    categorical: list[str]

    def group(self, column: str) -> str:
        return feature_group(column)


def feature_group(column: str) -> str:
    for prefix, group in GROUPS:
        if column.startswith(prefix):
            return group
    raise ValueError(f"feature '{column}' belongs to no group")


def assemble(raw: pd.DataFrame, stacked: pd.DataFrame, config: Config, bins: int) -> pd.DataFrame:
    """The feature columns of one split's rows (`raw`: the records' metadata codes and image statistics;
    `stacked`: the run_<name> columns), patient context computed within these rows."""
    raw = raw.reset_index(drop=True)
    parts = []
    image_columns = imagestats.image_feature_names(bins) if config.features.image else []
    if image_columns:
        parts.append(raw[image_columns])
    if config.features.metadata:
        parts.append(metadata_features(raw))
    parts.append(stacked.reset_index(drop=True))
    features = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=raw.index)
    if config.features.patient_context:
        varying = [c for c in features.columns if c not in PATIENT_LEVEL]
        if varying:
            features = pd.concat([features, patientcontext.patient_context(features, varying, raw["patient_id"],
                                                            image_columns)], axis=1)
    return features


def build_table(config: Config, folds: pd.Series, progress: bool = True) -> FeatureTable:
    """Every enabled feature group for the training and test records. `folds` (image_name -> fold) lists
    the training rows this config scores, for the stacking check. The features section's values are
    checked before (train/families/tabular.py)."""
    train_raw = split_table(config, "train", progress)
    test_raw = split_table(config, "test", progress)
    stacked_train, stacked_test = stacking.stacking_features(config, train_raw["image_name"],
                                                             test_raw["image_name"], folds)
    bins = int(config.features.histogram_bins)
    train = assemble(train_raw, stacked_train, config, bins)
    test = assemble(test_raw, stacked_test, config, bins)
    columns = list(train.columns)
    if not columns:
        raise ConfigError("every feature group is off: turn on features.image, features.metadata or "
                          "features.from_runs")
    ids = ["image_name", "patient_id", "target", "part"]
    train = pd.concat([train_raw[ids].reset_index(drop=True), train], axis=1)
    test = pd.concat([test_raw[["image_name", "patient_id"]].reset_index(drop=True), test], axis=1)
    return FeatureTable(train=train, test=test, columns=columns,
                        categorical=[c for c in columns if c in CATEGORICAL])
