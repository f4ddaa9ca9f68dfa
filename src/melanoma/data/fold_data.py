"""A fold's data, ready for a model to train on: the files and drops of `sources.prepare_fold`, every bad
record named at once when one cannot be read, and, under `data.skip_corrupt: true`, the corrupt records
found before training and taken out of the fold (listed in fold<K>/skipped.csv). data.json and
duplicates.csv are written into the fold folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import pandas as pd

from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import DataError
from melanoma.data import integrity, pseudo_labels, record_format, sources
from melanoma.runs import layout


def read(config: Config, fold: int, folder: str):
    """The fold's files and drops, its corrupt records skipped (data.skip_corrupt only), data.json
    written; returns (sources.FoldData, {path: records skipped in that file})."""
    # competition training parts + external sets, duplicates dropped, leak checks (CheckFailed)
    fold_data = read_fold(config, fold)
    fold_data, skipped = skip_corrupt_records(config, fold_data, folder)  # data.skip_corrupt only
    fold_data = with_pseudo_labels(config, fold_data, folder)  # pseudo_labels.source only
    sources.write_summary(fold_data, folder)
    return fold_data, skipped


def with_pseudo_labels(config: Config, fold_data, folder: str):
    """Under pseudo_labels.source: the test images the fold trains on beside its own (data/pseudo_labels.py),
    after checking that the source is still the one the run recorded; they are listed in
    fold<K>/pseudo_labels.csv, counted in the epoch's images and in data.json. The fold as it is otherwise."""
    source = pseudo_labels.check_unchanged(config, f"fold {fold_data.fold}")
    target = os.path.join(folder, layout.PSEUDO_LABELS)
    if source is None:
        if io_utils.exists(target):
            io_utils.remove(target)
        return fold_data
    rows = pseudo_labels.fold_images(config, source, fold_data.fold, fold_data.valid_names | fold_data.valid_dropped)
    files = record_format.list_files(config.data.test_files, "data.test_files")
    io_utils.write_csv_atomic(rows, target)
    summary = dict(fold_data.summary, pseudo_labels=pseudo_labels.fold_summary(config, source, rows, len(files)),
                   training_images_per_epoch=fold_data.train_images + len(rows))
    return dataclasses.replace(fold_data, pseudo=rows, pseudo_files=files, summary=summary,
                               train_images=fold_data.train_images + len(rows))


def read_fold(config: Config, fold: int):
    """sources.prepare_fold; when a file cannot be read, every file of the run is checked so that one
    message names all the bad records, not only the first one met."""
    with bad_records_named_together(config, f"fold {fold} data"):
        return sources.prepare_fold(config, fold)


def check_splits_apart(config: Config) -> None:
    """sources.check_splits_apart (no test image among the training images), bad records named together."""
    with bad_records_named_together(config, "the training records"):
        sources.check_splits_apart(config)


@contextlib.contextmanager
def bad_records_named_together(config: Config, what: str):
    """On a DataError from reading the run's training records (data.skip_corrupt off), scan every train and
    external file and raise one DataError naming all the bad records."""
    try:
        yield
    except DataError:
        if config.data.skip_corrupt:
            raise
        paths = [f.path for f in record_format.list_files(config.data.train_files, "data.train_files")]
        paths += [f.path for external in sources.external_sets(config.data) for f in external.files]
        scans = integrity.scan_files(sorted(set(paths)), "train", config.data.image_size)
        integrity.raise_if_bad(scans, what, integrity.HINT_TRAIN)
        raise


def skip_corrupt_records(config: Config, fold_data, folder: str):
    """Under data.skip_corrupt: find the fold's bad records before training, say how many and which
    (also in fold<K>/skipped.csv), and take the named ones out of the fold like dropped duplicates:
    filtered before decoding, out of the validation score and the OOF. Records without a name, and a
    truncated file's lost tail, are not in the fold's tables and are dropped by the pipelines.
    Returns (fold data, {path: records skipped in that file})."""
    if not config.data.skip_corrupt:
        return fold_data, {}
    fold = fold_data.fold
    paths = sorted({f.path for f in fold_data.train_files + fold_data.valid_files})
    scans = integrity.scan_files(paths, "train", config.data.image_size)
    integrity.refuse_test_records(scans, f"fold {fold} data")  # test records are no corrupt ones to skip
    rows = [{"file": b.path, "record": b.index + 1, "image_name": b.image_name or "", "reason": b.reason}
            for b in integrity.bad_images(scans)]
    rows += [{"file": scan.path, "record": scan.readable + 1, "image_name": "",
              "reason": f"{scan.lost} record(s) unreadable from here: {scan.read_error or 'file truncated'}"}
             for scan in scans if scan.lost]
    target = os.path.join(folder, layout.SKIPPED)
    io_utils.write_csv_atomic(pd.DataFrame(rows, columns=["file", "record", "image_name", "reason"]), target)
    bad = [scan for scan in scans if not scan.ok]
    if not bad:
        return fold_data, {}
    count = sum(scan.skipped for scan in bad)
    print(f"fold {fold}: skipping {count} corrupt training image(s) (data.skip_corrupt: true), listed in "
          f"{target}:\n  {integrity.summary(scans)}")
    named = {(b.path, b.image_name) for b in integrity.bad_images(scans) if b.image_name}
    valid_paths = {f.path for f in fold_data.valid_files}
    valid_bad = {name for path, name in named if path in valid_paths} & set(fold_data.valid_names)
    train_bad = sum(1 for f in fold_data.train_files for path, _ in named if path == f.path)
    fold_data = dataclasses.replace(
        fold_data, excluded=set(fold_data.excluded) | named,
        valid_dropped=frozenset(fold_data.valid_dropped | valid_bad),
        valid_names=frozenset(fold_data.valid_names - valid_bad),
        valid_images=fold_data.valid_images - len(valid_bad),
        train_images=fold_data.train_images - train_bad)
    return fold_data, {scan.path: scan.skipped for scan in scans}
