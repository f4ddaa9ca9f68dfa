"""Finding the bad records in TFRecord files: truncated files, records missing a feature, bad images.

TensorFlow reports a bad record from deep inside a tf.data pipeline, where the file and the image are
unknown ("truncated record at 30489", "Unknown image file format"). The scan here reads each file on
its own and names what is wrong: the file, the record's position, its image_name when the record has
one, and the reason. Training uses it in two ways:

* `data.skip_corrupt: false` (the default) costs nothing up front: a pipeline error is caught
  (`named_data_errors`), the files are scanned, and a DataError names the culprits.
* `data.skip_corrupt: true` scans the training files before the fold starts, reports how many and which
  images will be left out, and the pipelines drop exactly those (tf.data `ignore_errors` with the same
  parse and decode the scan checks). Test images are never skipped: a submission needs all of them.

A file is also checked against the image count in its name (`train%.2i-%i.tfrec`): a file cut exactly
at a record boundary reads without any error, and only the count shows that records are missing.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import tensorflow as tf

from melanoma.core import progress as progress_lib
from melanoma.core.errors import DataError
from melanoma.data import examples, record_format

SHOWN = 5  # bad records named in a message; the rest are counted


@dataclass
class BadRecord:
    path: str
    index: int  # 0-based position of the record in its file
    image_name: str | None
    reason: str

    def describe(self) -> str:
        name = f"image {self.image_name!r}" if self.image_name else "a record without image_name"
        return f"{name} (record {self.index + 1} of {self.path}): {self.reason}"


@dataclass
class FileScan:
    path: str
    expected: int | None  # image count in the file name, None when the name does not carry one
    readable: int  # records read before the end of the file or the first unreadable byte
    read_error: str | None = None  # TensorFlow's reason when the file could not be read to its end
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Records the file name promises that could not be read at all (truncation)."""
        if self.expected is None:
            return 0
        return max(0, self.expected - self.readable)

    @property
    def ok(self) -> bool:
        """Every record promised can be read and used (more records than the name says is a naming
        matter, noted by `describe`, not damage)."""
        return not self.bad and self.read_error is None and self.lost == 0

    @property
    def skipped(self) -> int:
        return len(self.bad) + self.lost

    def describe(self) -> str:
        lines = []
        if self.read_error or self.lost:
            promised = f" of the {self.expected} its name promises" if self.expected is not None else ""
            cause = f": {self.read_error}" if self.read_error else ""
            lines.append(f"{self.path} is truncated or corrupt: only {self.readable} record(s){promised} "
                         f"can be read{cause}")
        elif self.expected is not None and self.readable > self.expected:
            lines.append(f"{self.path} holds {self.readable} records but its name says {self.expected}")
        lines.extend(bad.describe() for bad in self.bad)
        return "\n".join(lines)


def clean_message(error: BaseException) -> str:
    """TensorFlow's error text without its function-node prefix and op suffix."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return " ".join(text.split())


def _expected_count(path: str) -> int | None:
    try:
        return record_format.parse_file_name(path).count
    except DataError:
        return None


def _expected_features(split: str) -> dict[str, str]:
    """feature -> the kind of list it must be ('bytes_list' or 'int64_list'), as the pipeline parses it."""
    return {key: "bytes_list" if spec.dtype == tf.string else "int64_list"
            for key, spec in examples.feature_spec(split).items()}


def _check_example(serialized: bytes, expected: dict[str, str]) -> tuple[str | None, str | None]:
    """(image_name or None, reason the record is unusable or None), from the raw bytes."""
    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError has no stable import path
        return None, f"not a tf.train.Example ({type(error).__name__})"
    features = example.features.feature
    name = None
    if "image_name" in features and len(features["image_name"].bytes_list.value) == 1:
        name = features["image_name"].bytes_list.value[0].decode("utf-8", "replace")
    problems = []
    for key, kind in expected.items():
        if key not in features:
            problems.append(f"missing feature '{key}'")
            continue
        if features[key].WhichOneof("kind") != kind or len(getattr(features[key], kind).value) != 1:
            problems.append(f"feature '{key}' is not one {kind.split('_')[0]} value")
    if problems:
        return name, "; ".join(problems)
    return name, None


def _decode_reason(serialized: bytes, split: str, image_size: int) -> str:
    """Why the pipeline's own parse + decode fails on this record (run eagerly, on bad records only)."""
    try:
        example = examples.parse_examples(tf.constant(serialized), split)
        examples.decode_image(example["image"], image_size)
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        return f"the image cannot be decoded ({clean_message(error)})"
    return "the record fails in the input pipeline"


def scan_file(path: str, split: str, image_size: int | None) -> FileScan:
    """Read one file record by record; check every record's features and decode every image
    (image_size None: the features only, no decoding).

    The features are checked in Python from the raw bytes (so a record missing `image_name` is still
    found); the images are decoded in a tf.data pass with the pipeline's own parse and decode, which
    drops failing records with `ignore_errors`; the positions that did not come through are the bad ones.
    """
    scan = FileScan(path=str(path), expected=_expected_count(path), readable=0)
    names: dict[int, str | None] = {}
    structural: set[int] = set()
    expected = _expected_features(split)
    reader = tf.data.TFRecordDataset(str(path)).prefetch(tf.data.AUTOTUNE)
    iterator = iter(reader)
    while True:
        try:
            serialized = next(iterator).numpy()
        except StopIteration:
            break
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as error:
            scan.read_error = clean_message(error)
            break
        index = scan.readable
        name, reason = _check_example(serialized, expected)
        names[index] = name
        if reason:
            structural.add(index)
            scan.bad.append(BadRecord(str(path), index, name, reason))
        scan.readable += 1

    if image_size is None:
        return scan

    def decodes(index, serialized):
        example = examples.parse_examples(serialized, split)
        image = examples.decode_image(example["image"], image_size)
        # A value computed from the pixels: a static shape alone would let the decode be pruned.
        return index, tf.reduce_max(image)

    checked = (tf.data.TFRecordDataset(str(path)).take(scan.readable).enumerate()
               .map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors())
    passed = {int(index) for index, _ in checked.as_numpy_iterator()}
    failed = [i for i in range(scan.readable) if i not in passed and i not in structural]
    if failed:
        raw = tf.data.TFRecordDataset(str(path)).take(max(failed) + 1).enumerate()
        wanted = set(failed)
        for index, serialized in raw.as_numpy_iterator():
            if int(index) in wanted:
                scan.bad.append(BadRecord(str(path), int(index), names.get(int(index)),
                                          _decode_reason(serialized, split, image_size)))
        scan.bad.sort(key=lambda bad: bad.index)
    return scan


# Scans of unchanged files, so `--fold all` checks each file once rather than once per fold.
_SCANS: dict[tuple, FileScan] = {}


def _scan_key(path: str, split: str, image_size: int) -> tuple:
    stat = tf.io.gfile.stat(str(path))
    return (str(path), split, image_size, stat.length, stat.mtime_nsec)


def scan_files(paths: list[str], split: str, image_size: int, progress: bool = True) -> list[FileScan]:
    """Scans of `paths` (sorted); a file unchanged since this process last scanned it is not read again."""
    scans = []
    for path in progress_lib.bar(sorted(paths), desc=f"checking {split} records", unit="file", leave=False,
                     disable=not progress):
        key = _scan_key(path, split, image_size)
        if key not in _SCANS:
            _SCANS[key] = scan_file(path, split, image_size)
        scans.append(_SCANS[key])
    return scans


def summary(scans: list[FileScan], shown: int = SHOWN) -> str:
    """The problems of the bad files, one per line, the first `shown` bad records named."""
    lines: list[str] = []
    named = 0
    for scan in scans:
        if scan.ok:
            continue
        for line in scan.describe().splitlines():
            if line.startswith(scan.path) or named < shown:
                lines.append(line)
                named += 0 if line.startswith(scan.path) else 1
    hidden = sum(len(scan.bad) for scan in scans) - named
    if hidden > 0:
        lines.append(f"... and {hidden} more bad record(s)")
    return "\n  ".join(lines)


def bad_images(scans: list[FileScan]) -> list[BadRecord]:
    return [bad for scan in scans for bad in scan.bad]


MISSING_TARGET = "missing feature 'target'"


def without_target(scans: list[FileScan]) -> list[str]:
    """The files none of whose records has a target: test records under a train name, or read as training
    data. One line says so (record_format.TEST_RECORDS_GIVEN), not one per record."""
    return [scan.path for scan in scans
            if scan.readable and len(scan.bad) == scan.readable
            and all(MISSING_TARGET in bad.reason for bad in scan.bad)]


def refuse_test_records(scans: list[FileScan], what: str) -> None:
    """DataError (exit 2) in one line when the scanned training files hold test records (`without_target`)."""
    files = without_target(scans)
    if files:
        raise DataError(f"{what}: {len(files)} file(s) hold records without a target (first: {files[0]}): "
                        f"{record_format.TEST_RECORDS_GIVEN}")


def raise_if_bad(scans: list[FileScan], what: str, hint: str) -> None:
    refuse_test_records(scans, what)
    bad = [scan for scan in scans if not scan.ok]
    if bad:
        count = sum(scan.skipped for scan in bad)
        raise DataError(f"{what}: {count} bad record(s) in {len(bad)} file(s):\n  {summary(scans)}\n{hint}")


HINT_TRAIN = ("Download or rebuild the named file(s), or set data.skip_corrupt: true to train without "
              "the bad images.")
HINT_PREDICT = "Download or rebuild the named file(s): predictions need every image."


@contextlib.contextmanager
def named_data_errors(paths: list[str], split: str, image_size: int, what: str, hint: str = HINT_PREDICT):
    """Turn a pipeline's DataLossError / InvalidArgumentError into a DataError that names the bad files
    and images. When the scan finds nothing wrong the error was not about the data and is re-raised."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        print(f"{what}: the input pipeline failed; checking the files to find the bad records ...")
        scans = scan_files(paths, split, image_size)
        raise_if_bad(scans, what, hint)
        raise
