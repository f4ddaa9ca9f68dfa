"""JPEGs + CSV -> TFRecords in the public `melanoma-NxN` schema, one file per part.

Train records: image (JPEG bytes), image_name (bytes), int64 patient_id, sex, age_approx,
anatom_site_general_challenge, diagnosis, target. Test records: the same without diagnosis and target.
Files are named `train%.2i-%i.tfrec` / `test%.2i-%i.tfrec` (part, image count) so that parts and counts
come from the names. Categoricals are label-encoded over train and test together (missing -> -1), and a
CSV with the encodings and each image's part is written next to the records.

The output folder is complete or absent: everything is written into a hidden sibling folder, which
replaces `--out` whole once every part, CSV, `encodings.json` and the manifest `records.json` (file ->
image count) are written (`io_utils.folder_written_whole`). A killed or failed run leaves `--out` as it
was; a rerun leaves no stale part beside the new ones. `folder_problem` tells a reader (training) that a
folder is not complete: a manifest that disagrees with the files, or a part left half-written by an
interrupted run of an earlier version.

`python -m melanoma records --data DIR --out OUT --size N`: the competition's layout (train.csv,
test.csv, jpeg/train/, jpeg/test/). `python -m melanoma records --isic2019 DIR` / `--ham10000 DIR --out
OUT --size N [--malignant-only]`: the raw files of those sources as train records with their labels
kept (see `converters`).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from melanoma.core import fold_rule, io_utils, quiet
from melanoma.core import progress as progress_lib
from melanoma.core.errors import DataError
from melanoma.data import taxonomy

TRAIN_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
                      "target")
TEST_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge")
FILE_PATTERN = re.compile(r"(?P<split>train|test)(?P<part>\d+)-(?P<count>\d+)\.tfrec$")
DEFAULT_TEST_PARTS = 16
MANIFEST = "records.json"
# What `records` writes into its folder (anything else there means --out is not a records folder).
OUTPUTS = ("train.csv", "test.csv", "encodings.json", MANIFEST, io_utils.INCOMPLETE_MARKER,
           "sample_submission.csv", "test_labels.csv")  # the last two: a benchmark with public test labels (ISIC 2017)
# Test records carry no target: given as training data they are the user's mistake, said once, not per record.
TEST_RECORDS_GIVEN = "these are test records (no target): point data.train_files at the train*.tfrec files"
HALF_WRITTEN = re.compile(r"^\..+\.tmp-[0-9a-f]{8}\.tfrec$")  # io_utils.temporary_name of a part


@dataclass(frozen=True)
class RecordFile:
    path: str
    split: str
    part: int
    count: int


def parse_file_name(path: str) -> RecordFile:
    """Part and image count from a public-schema file name; a name that does not fit is an error."""
    match = FILE_PATTERN.search(os.path.basename(str(path)))
    if not match:
        raise DataError(f"TFRecord file name '{os.path.basename(str(path))}' does not follow the public "
                        "schema 'train%.2i-%i.tfrec' / 'test%.2i-%i.tfrec' (part index, image count)")
    return RecordFile(str(path), match["split"], int(match["part"]), int(match["count"]))


def record_name(split: str, part: int, count: int) -> str:
    return f"{split}{part:02d}-{count}.tfrec"


def encode_metadata(train: pd.DataFrame, test: pd.DataFrame | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """Integer-encode categoricals over train and test together, the same way for both.

    Categories are sorted so the encoding does not depend on row order; missing values become -1,
    as do missing ages. patient_id strings map to integers over both sets.
    """
    frames = [train] + ([test] if test is not None else [])
    encodings: dict[str, dict[str, int]] = {}
    out = [frame.copy() for frame in frames]
    for column in taxonomy.CATEGORICAL + ("patient_id",):
        values = pd.concat([f[column] for f in frames if column in f]).dropna().astype(str)
        mapping = {value: index for index, value in enumerate(sorted(values.unique()))}
        encodings[column] = mapping
        for frame in out:
            if column in frame:
                frame[column] = frame[column].map(
                    lambda v, mapping=mapping: -1 if pd.isna(v) else mapping[str(v)]).astype(np.int64)
    for frame in out:
        frame["age_approx"] = frame["age_approx"].fillna(-1).round().astype(np.int64)
        if "target" in frame:
            frame["target"] = frame["target"].astype(np.int64)
    # thousands of ids: the CSV keeps the original beside the code; encodings.json keeps their range,
    # which the converted sources' ranges never meet (taxonomy.PATIENT_CODE_START)
    encodings["patient_id"] = taxonomy.patient_range("competition", len(encodings["patient_id"]))
    return out[0], (out[1] if test is not None else None), encodings


def _bytes_feature(value: bytes):
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int):
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def serialize_example(image: bytes, row: dict, int_features) -> bytes:
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    feature = {"image": _bytes_feature(image), "image_name": _bytes_feature(str(row["image_name"]).encode())}
    for name in int_features:
        feature[name] = _int_feature(row[name])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def resize_jpeg(path: str, size: int, quality: int = 95) -> bytes:
    """Read any JPEG, resize it to size x size (as the public datasets do) and encode it again."""
    return resize_image_bytes(io_utils.read_bytes(path), size, quality, where=path)


def resize_image_bytes(data: bytes, size: int, quality: int = 95, where: str = "image") -> bytes:
    """An image file's bytes (JPEG, PNG, ...) -> the JPEG bytes a record of `size` px holds for it.

    `serve` passes an uploaded image through here, so it reaches the model as a record built from it would.
    """
    # OpenCV loads only when images are handled here
    import cv2

    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise DataError(f"cannot decode image {where}: the file is empty, truncated or not an image")
    interpolation = cv2.INTER_AREA if max(image.shape[:2]) > size else cv2.INTER_CUBIC
    image = cv2.resize(image, (size, size), interpolation=interpolation)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"cannot encode image {where} as JPEG")
    return encoded.tobytes()


def _resize_task(task: tuple[str, int]) -> bytes:
    return resize_jpeg(*task)


def write_split(frame: pd.DataFrame, image_dir: str, out_dir: str, split: str, size: int,
                workers: int | None = None, progress: bool = True,
                image_paths: list[str] | None = None) -> list[str]:
    """Write one TFRecord file per value of frame['part']; images resized in parallel on all cores.
    Images are `<image_dir>/<image_name>.jpg`, or `image_paths` (one per row) where given."""
    int_features = TRAIN_INT_FEATURES if split == "train" else TEST_INT_FEATURES
    missing = [c for c in ("image_name", "part") + int_features if c not in frame]
    if missing:
        raise DataError(f"{split} table lacks column(s) {', '.join(missing)}")
    paths = (list(image_paths) if image_paths is not None else
             [os.path.join(image_dir, f"{name}.jpg") for name in frame["image_name"]])
    absent = [p for p in paths if not io_utils.exists(p)]
    if absent:
        raise FileNotFoundError(f"{len(absent)} {split} image(s) missing, first: {', '.join(absent[:3])}")
    io_utils.makedirs(out_dir)
    workers = workers or os.cpu_count() or 1
    written = []
    rows = frame.to_dict("records")
    order = np.argsort(frame["part"].to_numpy(), kind="stable")
    tasks = [(paths[i], size) for i in order]
    # Workers read the JPEGs; gs:// reads go through TensorFlow, which must not be used in a forked
    # child of a process that has already started TensorFlow's threads, so those workers are spawned.
    remote = io_utils.is_remote(image_dir) or any(io_utils.is_remote(p) for p in paths[:1])
    context = multiprocessing.get_context("spawn" if remote else "fork")
    # (a spawned worker imports TensorFlow afresh: quiet.install_filter keeps its start-up lines off the screen)
    pool = context.Pool(workers, initializer=quiet.install_filter) if workers > 1 else None
    try:
        results: Iterator[bytes] = (pool.imap(_resize_task, tasks, chunksize=8) if pool
                                    else map(_resize_task, tasks))
        # the TFRecord writer is TensorFlow's; the module itself stays light for `serve` and the checks
        import tensorflow as tf

        bar = progress_lib.bar(total=len(tasks), desc=f"{split} records", unit="img", disable=not progress)
        position = 0
        for part, count in frame["part"].value_counts().sort_index().items():
            target = os.path.join(out_dir, record_name(split, int(part), int(count)))
            temporary = io_utils.temporary_name(target)
            with tf.io.TFRecordWriter(temporary) as writer:
                for _ in range(count):
                    row = rows[order[position]]
                    writer.write(serialize_example(next(results), row, int_features))
                    position += 1
                    bar.update(1)
            io_utils.replace(temporary, target)
            written.append(target)
        bar.close()
    finally:
        if pool:
            pool.terminate()
    return written


# ---------------------------------------------------------------------------------------------------
# converted sources (converters.py: ISIC 2019, HAM10000)


def write_train_records(table: pd.DataFrame, image_paths: list[str], out_dir: str, size: int,
                        encodings: dict, workers: int | None = None) -> list[str]:
    """Train records of a converted source: `table` holds `part` and the `<feature>_code` columns of
    the public schema; `train.csv` (the whole table) and `encodings.json` are written beside them."""
    frame = table[["image_name", "part"]].copy()
    for column in TRAIN_INT_FEATURES:
        frame[column] = table[f"{column}_code"].to_numpy()
    written = write_split(frame, "", out_dir, "train", size, workers, image_paths=image_paths)
    io_utils.write_csv_atomic(table, os.path.join(out_dir, "train.csv"))
    io_utils.write_text_atomic(os.path.join(out_dir, "encodings.json"), json.dumps(encodings, indent=1))
    return written


def write_manifest(folder: str, argv: list[str] | None = None) -> None:
    """records.json: every part written, with its image count; written last, so it vouches for them. With
    `argv`, the `records` command that wrote them and where it ran, so that records gone stale (synth --force
    over their images) can be rebuilt by the exact command (`rebuild_command`)."""
    parts = {os.path.basename(path): parse_file_name(path).count
             for path in io_utils.glob(os.path.join(folder, "*.tfrec"))}
    manifest: dict = {"files": parts}
    if argv is not None:
        manifest["made_by"] = {"command": shlex.join(["python", "-m", "melanoma", *argv]), "cwd": os.getcwd()}
    io_utils.write_text_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1))


def rebuild_command(folder: str) -> str | None:
    """The command that wrote the records of `folder` (from its manifest; prefixed with `cd` where it ran
    elsewhere), or None when the manifest does not say (written before it did, or not by `records`)."""
    try:
        made_by = json.loads(io_utils.read_text(os.path.join(folder, MANIFEST)))["made_by"]
        command, cwd = str(made_by["command"]), str(made_by["cwd"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return command if cwd == os.getcwd() else f"cd {shlex.quote(cwd)} && {command}"


def folder_problem(folder: str) -> str | None:
    """Why a folder of records is not complete, or None (also for folders not written by `records`,
    such as the public datasets, unless they hold a half-written part)."""
    if not io_utils.isdir(folder):
        return None
    names = [name.rstrip("/") for name in io_utils.listdir(folder)]
    if io_utils.INCOMPLETE_MARKER in names:
        return f"is being written, or its writing was interrupted ({io_utils.INCOMPLETE_MARKER} is there)"
    half = [name for name in names if HALF_WRITTEN.match(name)]
    if half:
        return f"holds a part left half-written by an interrupted `records` ({half[0]})"
    if MANIFEST not in names:
        return None
    try:
        listed = json.loads(io_utils.read_text(os.path.join(folder, MANIFEST)))["files"]
    except (ValueError, KeyError, TypeError):
        return f"has an unreadable {MANIFEST}"
    present = {name for name in names if FILE_PATTERN.search(name)}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        return f"lacks {len(missing)} of the {len(listed)} parts its {MANIFEST} lists (first: {missing[0]})"
    if extra:
        return f"holds {len(extra)} part(s) its {MANIFEST} does not list (first: {extra[0]}), left from another run"
    return None


def list_files(patterns, key: str = "data files") -> list[RecordFile]:
    """Public-schema files matching the glob(s), sorted by part; an empty match is an error."""
    paths = io_utils.glob(patterns)
    if not paths:
        raise FileNotFoundError(f"{key} {patterns!r} matched no file")
    files = [parse_file_name(path) for path in paths]
    return sorted(files, key=lambda f: (f.part, f.path))


def split_folds(files: list[RecordFile], fold: int, folds: int):
    """(training files, validation files): a fold validates on the parts with part % folds == fold."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is out of range for {folds} folds (0..{folds - 1})")
    valid = [f for f in files if fold_rule.validates(f.part, folds, fold)]
    train = [f for f in files if not fold_rule.validates(f.part, folds, fold)]
    if not valid:
        raise DataError(f"fold {fold} has no validation file: parts found are "
                        f"{sorted({f.part for f in files})}, folds = {folds}")
    if not train:
        raise DataError(f"fold {fold} has no training file")
    return train, valid


def count_images(files: list[RecordFile]) -> int:
    return sum(f.count for f in files)
