"""The ISIC 2024 challenge's layout (SLICE-3D: crops of 3D total-body photographs) -> records and tables.

`python -m melanoma records --isic2024 DIR --out OUT [--size N] [--parts P] [--test-parts P]` reads DIR in
the published layout (`--test-only [--encodings TRAIN_OUT/encodings.json]`: its test files alone)

    train-metadata.csv   one row per lesion crop: isic_id, target, patient_id, ... (TRAIN_COLUMNS)
    train-image.hdf5     one dataset per isic_id holding the crop's JPEG bytes (about 130 px)
    test-metadata.csv    the same columns less target and the training-only ones (TEST_COLUMNS)
    test-image.hdf5
    sample_submission.csv  isic_id,target

and writes into OUT what every other source gives: TFRecords in the public schema (`isic_id` as
image_name; sex, age and site in the competition's codes, the 2024 torso halves as `torso`; the diagnosis
named after the deepest `iddx_*` level, coded as the ISIC class it belongs to; patients numbered in the
`isic2024` range of patient codes, train and test together), and beside them `train.csv` / `test.csv`: the
metadata tables as published, every value kept as written, with `image_name`, `part` and the records'
`<feature>_code` columns added, for the feature tables of the trees (`input/tbp_features`).

* Streamed: the CSVs are read in chunks (only the key columns are held whole, for the parts), and the
  HDF5 one image at a time in part order; the images are checked (and resized with --size) in worker
  processes. Without --size a crop keeps its own JPEG bytes and size.
* Parts as `folds` assigns them (patient-grouped, stratified by target, malignant patients and patient
  size). About 400,000 small images would make 15 parts of 27,000 images, too coarse for files read in
  parallel: the default is the smallest multiple of 15 parts that keeps a part at most `PART_IMAGES`
  images (30 parts for the 401,059 published images), and the test images likewise.
* Refused before any work (exit 2): a missing file or column, an isic_id twice, an id in both train and
  test, an id the HDF5 has no dataset for (named). A dataset that holds no decodable image stops the
  work with the id named, and OUT is left as it was (`records` writes a folder whole or not at all).
"""
from __future__ import annotations

import collections
import json
import math
import multiprocessing
import os
import tempfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core import progress as progress_lib
from melanoma.core.errors import DataError
from melanoma.data import converters, folds, record_format, taxonomy

TRAIN_METADATA = "train-metadata.csv"
TRAIN_IMAGES = "train-image.hdf5"
TEST_METADATA = "test-metadata.csv"
TEST_IMAGES = "test-image.hdf5"
SAMPLE_SUBMISSION = "sample_submission.csv"
ID = "isic_id"
SOURCE = "isic2024"  # the source name in encodings.json's patient range (taxonomy.PATIENT_CODE_START)

# Colour, shape and position of each lesion from the 3D total-body photograph.
TBP_NUMERIC = (
    "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext", "tbp_lv_H", "tbp_lv_Hext",
    "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean",
    "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm",
    "tbp_lv_eccentricity", "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence", "tbp_lv_norm_border",
    "tbp_lv_norm_color", "tbp_lv_perimeterMM", "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt",
    "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle", "tbp_lv_x", "tbp_lv_y", "tbp_lv_z")
CLINICAL_NUMERIC = ("age_approx", "clin_size_long_diam_mm")
CATEGORICAL = ("sex", "anatom_site_general", "image_type", "tbp_tile_type", "tbp_lv_location",
               "tbp_lv_location_simple", "attribution")
# Who published the image under which licence: a property of the file, not of the lesion.
ADMINISTRATIVE = ("copyright_license",)
IDDX = ("iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5")
# In the training table only: the diagnosis and what was learnt with it. The test table lacks them, so
# a model that used one could not predict; several also give the answer away (a malignant lesion always
# has a lesion_id and an iddx_1 of "Malignant").
TRAINING_ONLY = ("lesion_id",) + IDDX + ("mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence")

TRAIN_COLUMNS = (
    (ID, "target", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
     "image_type", "tbp_tile_type")
    + TBP_NUMERIC[:18] + ("tbp_lv_eccentricity", "tbp_lv_location", "tbp_lv_location_simple")
    + TBP_NUMERIC[19:] + ("attribution", "copyright_license") + TRAINING_ONLY)
TEST_COLUMNS = tuple(column for column in TRAIN_COLUMNS if column not in ("target",) + TRAINING_ONLY)
# What the trees (model.family tbp_trees, input/tbp_features) read from the tables written beside the
# records: a metadata CSV without one is refused when the records are written, not at train or infer.
TREE_COLUMNS = TBP_NUMERIC + CLINICAL_NUMERIC + CATEGORICAL
# The columns `records` needs (the rest are copied as they are).
KEY_COLUMNS = {"train": (ID, "patient_id", "target", "sex", "age_approx", "anatom_site_general") + IDDX,
               "test": (ID, "patient_id", "sex", "age_approx", "anatom_site_general")}

PART_IMAGES = 15_000   # most images per part (one TFRecord file each) by default
PART_MULTIPLE = 15     # default parts come in multiples of 15, so 3, 5 or 15 folds divide them evenly
CHUNK_ROWS = 50_000    # CSV rows per chunk
CHUNK_IMAGES = 64      # images per task sent to a worker

# Diagnosis: the deepest iddx level's words -> ISIC class (first match wins); anything else is unknown.
DIAGNOSIS_WORDS = (("melanoma", "MEL"), ("basal cell", "BCC"), ("squamous", "SCC"), ("actinic", "AK"),
                   ("nevus", "NV"), ("dermatofibroma", "DF"), ("angioma", "VASC"), ("vascular", "VASC"),
                   ("keratosis", "BKL"), ("lentigo", "BKL"), ("lentigines", "BKL"))


@dataclass(frozen=True)
class Layout:
    """Paths of one download in the published layout; the test files may be absent together."""

    train_csv: str | None      # None only for the test files alone (records --isic2024 --test-only)
    train_images: str | None
    test_csv: str | None
    test_images: str | None


def find_layout(folder: str, test_only: bool = False) -> Layout:
    """The files of `folder`, checked: both train files there, both test files or neither; with
    `test_only`, both test files (the train files are not looked at)."""
    if io_utils.is_remote(folder):
        raise DataError(f"--isic2024 {folder}: the HDF5 files are read from a local disk; copy the folder "
                        "there first")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--isic2024 {folder} is not a folder: give the folder of the ISIC 2024 "
                                f"download ({TRAIN_METADATA}, {TRAIN_IMAGES}, ...)")
    path = {name: os.path.join(folder, name) for name in (TRAIN_METADATA, TRAIN_IMAGES, TEST_METADATA, TEST_IMAGES)}
    if test_only:
        missing = [name for name in (TEST_METADATA, TEST_IMAGES) if not os.path.isfile(path[name])]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {' and '.join(missing)}: --test-only converts the test files "
                                    "of the ISIC 2024 layout; give the folder that holds them")
        return Layout(None, None, path[TEST_METADATA], path[TEST_IMAGES])
    missing = [name for name in (TRAIN_METADATA, TRAIN_IMAGES) if not os.path.isfile(path[name])]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {' and '.join(missing)}: give --isic2024 the folder of the "
                                "ISIC 2024 download")
    test = [os.path.isfile(path[name]) for name in (TEST_METADATA, TEST_IMAGES)]
    if any(test) and not all(test):
        have, lack = (TEST_METADATA, TEST_IMAGES) if test[0] else (TEST_IMAGES, TEST_METADATA)
        raise FileNotFoundError(f"{folder} has {have} but not {lack}: the test images need both (or "
                                "remove both to convert the training images alone)")
    return Layout(path[TRAIN_METADATA], path[TRAIN_IMAGES], *((path[TEST_METADATA], path[TEST_IMAGES])
                                                                if all(test) else (None, None)))


# ---------------------------------------------------------------------------------------------------
# tables


def read_keys(path: str, split: str) -> pd.DataFrame:
    """The columns `records` needs from a metadata CSV (the others stay on disk), checked."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: give the metadata CSV of the ISIC 2024 download") from None
    needed = KEY_COLUMNS[split][:6] if split == "train" else KEY_COLUMNS[split]
    missing = [column for column in needed if column not in header]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)} (found: {', '.join(header[:12])}"
                        f"{' ...' if len(header) > 12 else ''}); is it the ISIC 2024 {split} metadata?")
    missing = [column for column in TREE_COLUMNS if column not in header]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}, which the trees (model.family tbp_trees) "
                        f"read from the {split}.csv written beside the records: give the ISIC 2024 {split} metadata "
                        "with every published column (nothing was written)")
    wanted = [column for column in KEY_COLUMNS[split] if column in header]
    table = io_utils.read_csv(path, usecols=wanted, dtype={column: str for column in wanted if column != "age_approx"})
    if table.empty:
        raise DataError(f"{path} has a header but no rows")
    names = table[ID]
    if names.isna().any():
        raise DataError(f"{path}: {int(names.isna().sum())} row(s) have no {ID}")
    twice = names[names.duplicated()]
    if len(twice):
        raise DataError(f"{path} lists {ID} {twice.iloc[0]} twice ({len(twice)} repeated); each crop has one row")
    if split == "train":
        target = pd.to_numeric(table["target"], errors="coerce")
        if not target.isin([0, 1]).all():
            row = int(np.flatnonzero(~target.isin([0, 1]).to_numpy())[0])
            raise DataError(f"{path}: target must be 0 or 1; {table[ID].iloc[row]} has {table['target'].iloc[row]!r}")
        table["target"] = target.astype(np.int64)
    return table


def check_disjoint(train: pd.DataFrame, test: pd.DataFrame | None) -> None:
    if test is None:
        return
    both = sorted(set(train[ID]) & set(test[ID]))
    if both:
        raise DataError(f"{len(both)} {ID}(s) are in both the train and the test metadata (first: "
                        f"{', '.join(both[:3])}): a test image must never be trained on; check that the two "
                        "files come from the same download")


def diagnosis_name(text) -> str:
    """ISIC class of one diagnosis text (an `iddx_*` level), "UNK" when its words name none."""
    lowered = str(text).lower()
    return next((cls for words, cls in DIAGNOSIS_WORDS if words in lowered), "UNK")


def diagnosis_classes(train: pd.DataFrame) -> pd.Series:
    """ISIC class of each lesion from its deepest `iddx_*` level (iddx_full's last one where the levels
    are absent); "UNK" for a lesion without one that names a class, such as a plain "Benign"."""
    deepest = pd.Series(np.nan, index=train.index, dtype=object)
    for column in reversed(IDDX[1:]):
        if column in train:
            deepest = deepest.fillna(train[column].where(train[column].astype("string").str.strip() != ""))
    if "iddx_full" in train:
        deepest = deepest.fillna(train["iddx_full"].astype("string").str.split("::").str[-1].astype(object))
    names = {value: diagnosis_name(value) for value in deepest.dropna().unique()}
    return deepest.map(names).fillna("UNK")


def _codes(values: pd.Series, mapping: dict, what: str) -> np.ndarray:
    lowered = {str(name).lower(): code for name, code in mapping.items()}
    text = values.astype("string").str.strip().str.lower()
    unknown = sorted(set(text.dropna()) - set(lowered))
    if unknown:
        raise DataError(f"unknown {what} value(s) {', '.join(unknown)}; known: {', '.join(mapping)}")
    return text.map(lowered).fillna(-1).astype(np.int64).to_numpy()


def code_tables(train: pd.DataFrame | None, test: pd.DataFrame | None, base: dict | None = None) -> dict:
    """Adds the public schema's `<feature>_code` columns to both tables (either may be None); returns the
    encodings.

    Sex and site take the competition's codes (2024's anterior and posterior torso are the competition's
    torso, as ISIC 2019's are); the diagnosis is named after its ISIC class, with the competition's
    diagnosis codes extended by the classes' names; patients of both tables are numbered together, in
    sorted order, from the `isic2024` range. `base` (the training records' encodings.json, for the test
    files alone) keeps its diagnosis codes and numbers the patients after its own."""
    classes = diagnosis_classes(train) if train is not None else pd.Series([], dtype=object)
    encodings = converters.source_encodings(base, classes.unique(), SOURCE)
    tables = [table for table in (train, test) if table is not None]
    patients = sorted(set().union(*(set(table["patient_id"].dropna()) for table in tables)))
    first = first_patient_code(base)
    number = {patient: first + index for index, patient in enumerate(patients)}
    for table in tables:
        code_metadata(table, encodings, number)
    if train is not None and len(train):
        train["diagnosis_code"] = _codes(classes.map(taxonomy.CLASS_NAMES), encodings["diagnosis"], "diagnosis")
        train["target_code"] = train["target"].astype(np.int64)
    used = taxonomy.patient_range(SOURCE, first - taxonomy.PATIENT_CODE_START[SOURCE] + len(patients))
    return {**encodings, "patient_id": dict(used, first=first, count=len(patients))}


def first_patient_code(base: dict | None) -> int:
    """Where this folder's patient codes start: after the ISIC 2024 patients `base` numbered, else at the
    start of the isic2024 range."""
    used = (base or {}).get("patient_id")
    if isinstance(used, dict) and used.get("source") == SOURCE:
        return int(used["first"]) + int(used["count"])
    return taxonomy.PATIENT_CODE_START[SOURCE]


def code_metadata(table: pd.DataFrame, encodings: dict, number: dict) -> None:
    """sex, age, site and patient codes of one table, as `<feature>_code` columns."""
    site_names = {name: name for name in encodings["anatom_site_general_challenge"]}
    site_names.update(taxonomy.ISIC2019_SITES)
    sites = table["anatom_site_general"].astype("string").str.strip().str.lower()
    unknown = sorted(set(sites.dropna()) - set(site_names))
    if unknown:
        raise DataError(f"unknown anatom_site_general value(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(site_names))}")
    table["sex_code"] = _codes(table["sex"], encodings["sex"], "sex")
    table["age_approx_code"] = pd.to_numeric(table["age_approx"], errors="coerce").fillna(-1).round().astype(np.int64)
    table["anatom_site_general_challenge_code"] = _codes(
        sites.map(site_names), encodings["anatom_site_general_challenge"], "site")
    table["patient_id_code"] = table["patient_id"].map(number).fillna(-1).astype(np.int64)


def default_parts(images: int) -> int:
    """The smallest multiple of PART_MULTIPLE parts that holds at most PART_IMAGES images each."""
    return PART_MULTIPLE * max(1, math.ceil(images / (PART_MULTIPLE * PART_IMAGES)))


def assign_parts(train: pd.DataFrame, parts: int, seed: int) -> np.ndarray:
    """Parts as `folds` assigns them: a patient in one part, stratified and balanced; a tiny set gets fewer
    parts (with a note on stderr)."""
    # a crop without a patient is a group of its own, as converters.lesion_parts does
    patients = train["patient_id"].where(train["patient_id"].notna(), "image:" + train[ID].astype(str))
    frame = pd.DataFrame({"image_name": train[ID].to_numpy(), "target": train["target"].to_numpy(),
                          "patient_id": patients.to_numpy()})
    return folds.assign_parts_noted(frame, parts=parts, seed=seed)["part"].to_numpy()


def test_parts(images: int, parts: int | None) -> np.ndarray:
    """Test images in file order split into `parts` (default: PART_IMAGES each at most) equal runs."""
    count = max(1, min(parts or math.ceil(images / PART_IMAGES), images))
    return np.arange(images) * count // images


# ---------------------------------------------------------------------------------------------------
# streamed copies: the metadata tables and the images


def write_table(source_csv: str, keys: pd.DataFrame, target: str, encoded: list[str]) -> None:
    """`source_csv` copied in chunks, every value as written, with image_name, part and the `encoded`
    code columns of `keys` (the same rows, in the same order) added; written under a temporary name."""
    remote = io_utils.is_remote(target)
    if remote:  # written locally, then copied into the hidden folder on the bucket
        descriptor, temporary = tempfile.mkstemp(suffix=".csv")
        os.close(descriptor)
    else:
        temporary = io_utils.temporary_name(target)
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            copy_chunks(source_csv, keys, encoded, handle)
        if remote:
            io_utils.copy(temporary, target)
        else:
            io_utils.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def copy_chunks(source_csv: str, keys: pd.DataFrame, encoded: list[str], handle) -> None:
    position = 0
    for chunk in pd.read_csv(source_csv, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS):
        rows = keys.iloc[position:position + len(chunk)]
        if not np.array_equal(chunk[ID].to_numpy(), rows[ID].to_numpy(dtype=object)):
            raise DataError(f"{source_csv} changed while it was read (rows from {position} differ); run again")
        chunk.insert(0, "image_name", chunk[ID])
        chunk.insert(1, "part", rows["part"].to_numpy())
        for column in encoded:
            chunk[column] = rows[column].to_numpy()
        chunk.to_csv(handle, index=False, header=position == 0)
        position += len(chunk)


def jpeg_bytes(value, isic_id: str, path: str) -> bytes:
    """The bytes an HDF5 dataset holds (a bytes scalar, opaque void or a uint8 array) as JPEG bytes."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value)
    if isinstance(value, np.void):
        return value.tobytes()
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes()
    raise DataError(f"{path}: the dataset of {isic_id} holds {type(value).__name__} "
                    f"{getattr(value, 'dtype', '')}, not the bytes of a JPEG; download the file again")


def check_image(task: tuple[list[str], list[bytes], int | None, str]) -> list[bytes]:
    """A worker's chunk: each crop decoded (so the records hold no undecodable image) and resized to
    size x size when a size is given, else kept as it is."""
    # OpenCV loads in the worker processes that check the images
    import cv2

    names, images, size, path = task
    kept = []
    for name, data in zip(names, images):
        if size:
            kept.append(record_format.resize_image_bytes(data, size, where=f"{name} in {path}"))
            continue
        buffer = np.frombuffer(data, dtype=np.uint8)
        if not buffer.size or cv2.imdecode(buffer, cv2.IMREAD_COLOR) is None:
            raise DataError(f"the image of {name} in {path} cannot be decoded: the dataset is empty, "
                            "truncated or not a JPEG; download the file again")
        kept.append(data)
    return kept


def open_hdf5(path: str):
    # h5py loads only where an HDF5 file is read
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path} is not a readable HDF5 file ({error}); download it again") from None


def check_keys(path: str, names) -> None:
    """Every id has a dataset in the HDF5 file, checked before any image is read."""
    with open_hdf5(path) as handle:
        present = set(handle.keys())
    missing = [name for name in names if name not in present]
    if missing:
        raise DataError(f"{path} has no image for {ID} {', '.join(missing[:3])}"
                        f"{f' (and {len(missing) - 3} more)' if len(missing) > 3 else ''}: the HDF5 file and "
                        "the metadata CSV must come from the same download")


def read_chunk(handle, names: list[str], path: str) -> list[bytes]:
    images = []
    for name in names:
        item = handle[name]
        if not hasattr(item, "shape"):
            raise DataError(f"{path}: {name} is a group, not a dataset holding a JPEG; download the file again")
        images.append(jpeg_bytes(item[()], name, path))
    return images


def checked_images(handle, names: list[str], size: int | None, path: str, pool,
                   in_flight: int = 8) -> Iterator[bytes]:
    """The crops of `names` in order, read here (h5py stays in this process) and checked by the pool,
    with a few chunks in flight so that reading, checking and writing overlap."""
    pending: collections.deque = collections.deque()
    for start in range(0, len(names), CHUNK_IMAGES):
        chunk = names[start:start + CHUNK_IMAGES]
        task = (chunk, read_chunk(handle, chunk, path), size, path)
        if pool is None:
            yield from check_image(task)
            continue
        pending.append(pool.apply_async(check_image, (task,)))
        while len(pending) > in_flight:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def write_split(table: pd.DataFrame, hdf5: str, out_dir: str, split: str, size: int | None,
                workers: int | None, progress: bool = True) -> list[str]:
    """One TFRecord file per part (part order; file order within a part), images streamed from the HDF5
    file and checked in `workers` processes."""
    int_features = record_format.TRAIN_INT_FEATURES if split == "train" else record_format.TEST_INT_FEATURES
    frame = pd.DataFrame({"image_name": table[ID].to_numpy(), "part": table["part"].to_numpy()})
    for column in int_features:
        frame[column] = table[f"{column}_code"].to_numpy()
    frame = frame.iloc[np.argsort(frame["part"].to_numpy(), kind="stable")].reset_index(drop=True)
    handle = open_hdf5(hdf5)
    workers = workers or os.cpu_count() or 1
    # forked before TensorFlow starts its threads in this process (it writes the records below)
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        images = checked_images(handle, frame["image_name"].tolist(), size, hdf5, pool, in_flight=4 * workers)
        return write_parts(frame, images, out_dir, split, int_features, progress)
    finally:
        if pool:
            pool.terminate()
        handle.close()


def write_parts(frame: pd.DataFrame, images: Iterator[bytes], out_dir: str, split: str, int_features,
                progress: bool) -> list[str]:
    # the TFRecord writer is TensorFlow's; the module itself stays light
    import tensorflow as tf

    written = []
    columns = {name: frame[name].to_numpy() for name in ("image_name",) + tuple(int_features)}
    rows = ({name: values[index] for name, values in columns.items()} for index in range(len(frame)))
    with progress_lib.bar(total=len(frame), desc=f"{split} records", unit="img", disable=not progress) as bar:
        for part, count in frame["part"].value_counts().sort_index().items():
            target = os.path.join(out_dir, record_format.record_name(split, int(part), int(count)))
            temporary = io_utils.temporary_name(target)
            with tf.io.TFRecordWriter(temporary) as writer:
                for _ in range(count):
                    writer.write(record_format.serialize_example(next(images), next(rows), int_features))
                    bar.update(1)
            io_utils.replace(temporary, target)
            written.append(target)
    return written


# ---------------------------------------------------------------------------------------------------
# the whole conversion


def build_records(folder: str, out_dir: str, size: int | None = None, parts: int | None = None,
                  test_part_count: int | None = None, seed: int = 42, workers: int | None = None,
                  progress: bool = True) -> dict:
    """DIR in the ISIC 2024 layout -> public-schema records + train.csv, test.csv and encodings.json in
    `out_dir` (the hidden folder that `records` puts in place whole)."""
    layout = find_layout(folder)
    train = read_keys(layout.train_csv, "train")
    test = read_keys(layout.test_csv, "test") if layout.test_csv else None
    check_disjoint(train, test)
    check_keys(layout.train_images, train[ID])
    if test is not None:
        check_keys(layout.test_images, test[ID])
    encodings = code_tables(train, test)
    train["part"] = assign_parts(train, parts or default_parts(len(train)), seed)
    summary = {"train_images": len(train), "malignant_images": int(train["target"].sum()),
               "train_patients": int(train["patient_id"].nunique())}
    coded = [f"{column}_code" for column in record_format.TRAIN_INT_FEATURES]
    summary["train_files"] = len(write_split(train, layout.train_images, out_dir, "train", size, workers, progress))
    write_table(layout.train_csv, train, os.path.join(out_dir, "train.csv"), coded)
    if test is not None:
        test["part"] = test_parts(len(test), test_part_count)
        coded = [f"{column}_code" for column in record_format.TEST_INT_FEATURES]
        summary["test_files"] = len(write_split(test, layout.test_images, out_dir, "test", size, workers, progress))
        summary["test_images"] = len(test)
        write_table(layout.test_csv, test, os.path.join(out_dir, "test.csv"), coded)
    io_utils.write_text_atomic(os.path.join(out_dir, "encodings.json"), json.dumps(encodings, indent=1))
    summary["parts"] = int(train["part"].nunique())
    return summary


def build_test_records(folder: str, out_dir: str, size: int | None = None, test_part_count: int | None = None,
                       workers: int | None = None, base: dict | None = None, progress: bool = True) -> dict:
    """The test files of DIR alone -> test records, test.csv and encodings.json in `out_dir`: what a
    notebook predicting the hidden test set needs, without reading the training crops. `base` (the training
    records' encodings.json) keeps their codes, the test patients numbered after theirs."""
    layout = find_layout(folder, test_only=True)
    test = read_keys(layout.test_csv, "test")
    check_keys(layout.test_images, test[ID])
    encodings = code_tables(None, test, base)
    test["part"] = test_parts(len(test), test_part_count)
    coded = [f"{column}_code" for column in record_format.TEST_INT_FEATURES]
    summary = {"test_files": len(write_split(test, layout.test_images, out_dir, "test", size, workers, progress)),
               "test_images": len(test)}
    write_table(layout.test_csv, test, os.path.join(out_dir, "test.csv"), coded)
    io_utils.write_text_atomic(os.path.join(out_dir, "encodings.json"), json.dumps(encodings, indent=1))
    return summary
