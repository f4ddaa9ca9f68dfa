"""The `records` command: JPEGs + CSV -> a complete folder of TFRecords in the public schema.

`python -m melanoma records --data DIR --out FOLDER` (the competition's layout), or `--isic2019 DIR` /
`--ham10000 DIR` (converters.py), or `--isic2024 DIR` (the ISIC 2024 layout: isic2024.py), or `--isic2017 DIR`
(the ISIC 2017 challenge's Part 3 layout, a benchmark with public test labels: isic2017.py). The
competition's train images get patient-grouped parts (folds.py) unless the CSV has a `part` column. The
folder is written whole under a hidden name and put in place with its manifest only when complete, so an
interrupted run never leaves a folder that looks finished.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy as np

from melanoma.core import io_utils
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import converters, folds, isic2017, isic2024, preflight
from melanoma.data.record_format import (
    DEFAULT_TEST_PARTS,
    FILE_PATTERN,
    HALF_WRITTEN,
    MANIFEST,
    OUTPUTS,
    TEST_INT_FEATURES,
    TRAIN_INT_FEATURES,
    encode_metadata,
    write_manifest,
    write_split,
)

DEFAULT_SIZE = 256


def build_records(train_csv: str, test_csv: str | None, train_images: str, test_images: str | None,
                  out_dir: str, size: int, parts: int = 15, test_parts: int = DEFAULT_TEST_PARTS,
                  seed: int = 42, workers: int | None = None) -> dict:
    """Competition layout -> public-schema TFRecords + `train.csv`/`test.csv`/`encodings.json` beside them."""
    train = io_utils.read_csv(train_csv)
    test = io_utils.read_csv(test_csv) if test_csv else None
    for path, frame, needed in ((train_csv, train, TRAIN_INT_FEATURES), (test_csv, test, TEST_INT_FEATURES)):
        if frame is None:
            continue
        missing = [column for column in ("image_name",) + needed if column not in frame.columns]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)} "
                            f"(found: {', '.join(map(str, frame.columns))})")
        if frame.empty:
            raise DataError(f"{path} has a header but no rows")
    check_tables(train_csv, train, test_csv, test)
    train_out, test_out, encodings = encode_metadata(train, test)
    if "part" not in train_out:
        train_out["part"] = folds.assign_parts_noted(train, parts=parts, seed=seed)["part"].to_numpy()
    folds.check_patient_disjoint(train_out.assign(patient_id=train["patient_id"].to_numpy()), "part")
    written = write_split(train_out, train_images, out_dir, "train", size, workers)
    summary = {"train_files": len(written), "train_images": len(train_out)}
    table = train.copy()
    table["part"] = train_out["part"].to_numpy()
    for column in TRAIN_INT_FEATURES:
        table[f"{column}_code"] = train_out[column].to_numpy()
    io_utils.write_csv_atomic(table, os.path.join(out_dir, "train.csv"))
    if test is not None:
        test_parts = max(1, min(test_parts, len(test_out)))
        test_out["part"] = np.arange(len(test_out)) * test_parts // len(test_out)
        written = write_split(test_out, test_images, out_dir, "test", size, workers)
        summary.update(test_files=len(written), test_images=len(test_out))
        table = test.copy()
        table["part"] = test_out["part"].to_numpy()
        for column in TEST_INT_FEATURES:
            table[f"{column}_code"] = test_out[column].to_numpy()
        io_utils.write_csv_atomic(table, os.path.join(out_dir, "test.csv"))
    io_utils.write_text_atomic(os.path.join(out_dir, "encodings.json"), json.dumps(encodings, indent=1))
    return summary


def check_tables(train_csv: str, train, test_csv: str | None, test) -> None:
    """The train table can be split into folds (names, patients, 0/1 targets; folds.check_train_table), and
    no image is in both tables: DataError naming the file and the first culprits."""
    try:
        folds.check_train_table(train)
    except DataError as error:
        raise DataError(f"{train_csv}: {error}") from None
    if test is None:
        return
    shared = sorted(set(train["image_name"].astype(str)) & set(test["image_name"].astype(str)))
    if shared:
        raise DataError(f"{len(shared)} image name(s) are in both {train_csv} and {test_csv} (first: "
                        f"{', '.join(shared[:3])}): a test image must never be trained on; remove them from one")


def check_out_folder(out: str, inputs: list[str | None]) -> None:
    """--out is replaced whole, so it must be a folder of its own: not holding the input, and either
    absent, empty, or a folder `records` wrote (io_utils.check_replaceable)."""
    target = os.path.abspath(out) if not io_utils.is_remote(out) else out.rstrip("/")
    for path in filter(None, inputs):
        where = os.path.abspath(path) if not io_utils.is_remote(path) else path
        if where == target or where.startswith(target.rstrip("/") + "/"):
            raise ConfigError(f"--out {out} holds the input {path}; records replaces its --out folder whole: "
                              "give it a folder of its own (e.g. input/records-256)")
    io_utils.check_replaceable(out, "records", records_only)


def records_only(names: list[str]) -> bool:
    """A folder `records` wrote before folders carried their writer's marker: parts, CSVs, manifest only."""
    return all(FILE_PATTERN.search(name) or name in OUTPUTS or HALF_WRITTEN.match(name) for name in names)


def remove_abandoned(out: str) -> None:
    """Hidden sibling folders a killed `records` left (`.<name>.tmp-*`, `.<name>.old-*`)."""
    parent, name = os.path.split(out.rstrip("/"))
    for kind in ("tmp", "old"):
        for path in io_utils.glob(os.path.join(parent, f".{name}.{kind}-" + "[0-9a-f]" * 8)):
            print(f"removing {path}, left by an interrupted run", file=sys.stderr)
            io_utils.remove_tree(path)


@contextlib.contextmanager
def output_folder(out: str, inputs: list[str | None], argv: list[str] | None = None):
    """The folder to write into (yielded): checked, then put in place of `out` whole with its manifest
    (which keeps `argv`, the command as typed)."""
    check_out_folder(out, inputs)
    # written beside --out first (a hidden sibling), then renamed: --out's folder must take files
    preflight.check_writable({"--out": os.path.dirname(os.path.abspath(out)) if io_utils.exists(out) else out})
    remove_abandoned(out)
    with io_utils.folder_written_whole(out, last=MANIFEST, command="records", own=records_only) as folder:
        yield folder
        write_manifest(folder, argv)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="folder in the competition's layout: train.csv, test.csv, "
                        "jpeg/train/, jpeg/test/ (each may also be given below)")
    parser.add_argument("--train-csv")
    parser.add_argument("--test-csv")
    parser.add_argument("--train-images", help="folder of train JPEGs (<image_name>.jpg)")
    parser.add_argument("--test-images", help="folder of test JPEGs")
    parser.add_argument("--isic2019", metavar="DIR", help="raw ISIC 2019 training files instead: "
                        f"{converters.ISIC2019_GROUND_TRUTH}, {converters.ISIC2019_METADATA}, "
                        f"{converters.ISIC2019_IMAGES}/")
    parser.add_argument("--isic2019-ground-truth", help=f"path of {converters.ISIC2019_GROUND_TRUTH}")
    parser.add_argument("--isic2019-metadata", help=f"path of {converters.ISIC2019_METADATA}")
    parser.add_argument("--isic2019-images", help="folder of the ISIC 2019 JPEGs (<image>.jpg)")
    parser.add_argument("--ham10000", metavar="DIR", help="HAM10000 instead: a folder with "
                        f"{converters.HAM10000_METADATA}, {', '.join(converters.HAM10000_IMAGE_FOLDERS)}/")
    parser.add_argument("--isic2024", metavar="DIR", help="the ISIC 2024 layout instead: a folder with "
                        f"{isic2024.TRAIN_METADATA}, {isic2024.TRAIN_IMAGES} (and {isic2024.TEST_METADATA}, "
                        f"{isic2024.TEST_IMAGES}); records + the metadata tables beside them")
    parser.add_argument("--isic2017", metavar="DIR", help="the ISIC 2017 challenge's Part 3 layout instead: "
                        f"{', '.join(images for _, images, _ in isic2017.SPLITS)}/ and their ground truth and "
                        f"metadata CSVs; training + validation -> train records, test -> test records, with "
                        f"{isic2017.SAMPLE_SUBMISSION} and {isic2017.TEST_LABELS} beside them")
    parser.add_argument("--test-only", action="store_true",
                        help="--isic2024: convert the test files alone (a notebook predicting the hidden test set); "
                        "--encodings keeps the training records' codes")
    parser.add_argument("--malignant-only", action="store_true",
                        help="ISIC 2019 / HAM10000: keep only the melanoma images")
    parser.add_argument("--encodings", help="ISIC 2019 / HAM10000: encodings.json of the competition records "
                        "to extend (default: the competition's own codes); --isic2024 --test-only: the training "
                        "records' encodings.json")
    parser.add_argument("--out", required=True, help="folder for the TFRecords")
    parser.add_argument("--size", type=int, default=None, help="images are resized to size x size (default "
                        f"{DEFAULT_SIZE}; --isic2024: each crop kept as it is)")
    parser.add_argument("--parts", type=int, default=None, help="train parts when the CSV has no 'part' "
                        f"(default {folds.DEFAULT_PARTS}; --isic2024: {isic2024.PART_MULTIPLE} per "
                        f"{isic2024.PART_MULTIPLE * isic2024.PART_IMAGES:,} images)")
    parser.add_argument("--test-parts", type=int, default=None, help=f"test files (default {DEFAULT_TEST_PARTS}; "
                        f"--isic2024: one per {isic2024.PART_IMAGES:,} images)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def convert_source(args: argparse.Namespace) -> dict:
    """`records --isic2019` / `--ham10000`: another source's raw files -> train records (converters)."""
    if args.data or args.train_csv or (args.ham10000 and (args.isic2019 or args.isic2019_ground_truth)):
        raise FileNotFoundError("records takes one source: competition data (--data/--train-csv), ISIC 2019 "
                                "files (--isic2019) or HAM10000 (--ham10000)")
    options = dict(malignant_only=args.malignant_only, parts=args.parts or folds.DEFAULT_PARTS, seed=args.seed,
                   workers=args.workers, encodings_json=args.encodings)
    if args.ham10000:
        with output_folder(args.out, [args.ham10000, args.encodings], getattr(args, "argv", None)) as folder:
            return converters.build_ham10000_records(args.ham10000, folder, args.size or DEFAULT_SIZE, **options)

    def raw(explicit, name):
        if explicit:
            return explicit
        if not args.isic2019:
            raise FileNotFoundError(f"records needs --isic2019 DIR or the path of {name}")
        return os.path.join(args.isic2019, name)

    paths = (raw(args.isic2019_ground_truth, converters.ISIC2019_GROUND_TRUTH),
             raw(args.isic2019_metadata, converters.ISIC2019_METADATA),
             raw(args.isic2019_images, converters.ISIC2019_IMAGES))
    with output_folder(args.out, list(paths) + [args.encodings], getattr(args, "argv", None)) as folder:
        return converters.build_isic2019_records(*paths, folder, args.size or DEFAULT_SIZE, **options)


def convert_isic2024(args: argparse.Namespace) -> int:
    """`records --isic2024 DIR`: the ISIC 2024 layout -> records and the metadata tables (isic2024.py);
    `--test-only [--encodings JSON]`: its test files alone."""
    others = [flag for flag, value in (("--data", args.data), ("--train-csv", args.train_csv),
                                       ("--isic2019", args.isic2019 or args.isic2019_ground_truth),
                                       ("--ham10000", args.ham10000), ("--malignant-only", args.malignant_only),
                                       ("--encodings", args.encodings and not args.test_only),
                                       ("--parts", args.parts is not None and args.test_only)) if value]
    if others:
        raise ConfigError(f"--isic2024 takes no {', '.join(others)}"
                          f"{' with --test-only' if args.test_only else ''}: records converts one source at a time "
                          "(--encodings goes with --test-only, --parts without it)")
    isic2024.find_layout(args.isic2024, args.test_only)  # a missing file is named before anything else is looked at
    base = read_encodings(args.encodings) if args.encodings else None
    with output_folder(args.out, [args.isic2024, args.encodings], getattr(args, "argv", None)) as folder:
        if args.test_only:
            summary = isic2024.build_test_records(args.isic2024, folder, size=args.size, workers=args.workers,
                                                  test_part_count=args.test_parts, base=base)
        else:
            summary = isic2024.build_records(args.isic2024, folder, size=args.size, parts=args.parts,
                                             test_part_count=args.test_parts, seed=args.seed, workers=args.workers)
    print(json.dumps(summary))
    out = args.out.rstrip("/")
    test = (f" data.test_files={out}/test*.tfrec data.sample_submission="
            f"{os.path.join(args.isic2024, isic2024.SAMPLE_SUBMISSION)}") if "test_files" in summary else ""
    if args.test_only:
        print(f"test records written to {out}, with test.csv beside them; predict a trained run's folds with "
              f"`python -m melanoma infer --config RUN/config.yaml --set{test}`")
        return 0
    print(f"records written to {out}, with the metadata tables beside them (train.csv"
          f"{', test.csv' if test else ''}); point a config at them with "
          f"--set data.train_files={out}/train*.tfrec{test}")
    return 0


def convert_isic2017(args: argparse.Namespace) -> int:
    """`records --isic2017 DIR`: the ISIC 2017 Part 3 layout -> train and test records, sample submission and
    test labels (isic2017.py); everything is read and checked before the output folder is touched."""
    others = [flag for flag, value in (("--data", args.data), ("--train-csv", args.train_csv),
                                       ("--isic2019", args.isic2019 or args.isic2019_ground_truth),
                                       ("--ham10000", args.ham10000), ("--malignant-only", args.malignant_only),
                                       ("--encodings", args.encodings), ("--test-only", args.test_only)) if value]
    if others:
        raise ConfigError(f"--isic2017 takes no {', '.join(others)}: records converts one source at a time")
    tables = isic2017.read_tables(args.isic2017)
    with output_folder(args.out, [args.isic2017], getattr(args, "argv", None)) as folder:
        summary = isic2017.build_records(tables, folder, args.size or DEFAULT_SIZE,
                                         parts=args.parts or folds.DEFAULT_PARTS,
                                         test_parts=args.test_parts or DEFAULT_TEST_PARTS, seed=args.seed,
                                         workers=args.workers)
    print(json.dumps(summary))
    for line in isic2017.copies_lines(tables):
        print(line)
    out = args.out.rstrip("/")
    print(f"records written to {out}, with train.csv, test.csv, {isic2017.SAMPLE_SUBMISSION} and "
          f"{isic2017.TEST_LABELS} beside them; train with --set data.train_files={out}/train*.tfrec "
          f"data.test_files={out}/test*.tfrec data.sample_submission={out}/{isic2017.SAMPLE_SUBMISSION}, "
          f"and score a finished recipe's submission once with `python -m melanoma score SUBMISSION --labels "
          f"{out}/{isic2017.TEST_LABELS}`")
    return 0


def read_encodings(path: str) -> dict:
    """The training records' encodings.json (--encodings), checked to be one."""
    if not io_utils.exists(path) or io_utils.isdir(path):
        raise FileNotFoundError(f"--encodings {path}: no such file; give the encodings.json beside the training "
                                "records")
    try:
        encodings = json.loads(io_utils.read_text(path))
    except ValueError:
        raise DataError(f"--encodings {path} is not JSON; give the encodings.json beside the training "
                        "records") from None
    if not isinstance(encodings, dict) or "diagnosis" not in encodings:
        raise DataError(f"--encodings {path} holds no diagnosis codes: is it the encodings.json `records` wrote?")
    return encodings


def command(args: argparse.Namespace) -> int:
    def pick(explicit, *relative):
        if explicit:
            return explicit
        return os.path.join(args.data, *relative) if args.data else None

    if args.size is not None and args.size < 8:
        raise DataError(f"--size must be at least 8, got {args.size}")
    for name in ("parts", "test_parts", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.isic2024 and args.isic2017:
        raise ConfigError("records converts one source at a time: give --isic2024 or --isic2017, not both")
    if args.isic2024:
        return convert_isic2024(args)
    if args.isic2017:
        return convert_isic2017(args)
    if args.test_only:
        raise ConfigError("--test-only goes with --isic2024 (the ISIC 2024 layout's test files alone)")
    if args.isic2019 or args.isic2019_ground_truth or args.ham10000:
        summary = convert_source(args)
        print(json.dumps(summary))
        print(f"records written to {args.out} (list them under data.external_files as training-only "
              "external data, or under data.train_files as a data set of their own)")
        return 0
    if args.data and io_utils.exists(args.data) and not io_utils.isdir(args.data):
        raise DataError(f"--data {args.data} is a file; give the folder that holds train.csv, test.csv and jpeg/ "
                        "(or the files themselves with --train-csv, --train-images, ...)")
    if args.malignant_only or args.encodings:
        raise FileNotFoundError("--malignant-only and --encodings apply to ISIC 2019 (--isic2019) or "
                                "HAM10000 (--ham10000) files")
    train_csv = pick(args.train_csv, "train.csv")
    if not train_csv:
        raise FileNotFoundError("records needs --data DIR, --train-csv CSV, --isic2019 DIR or --ham10000 DIR")
    test_csv = pick(args.test_csv, "test.csv")
    if test_csv and not args.test_csv and not io_utils.exists(test_csv):
        test_csv = None
    images = pick(args.train_images, "jpeg", "train"), pick(args.test_images, "jpeg", "test")
    with output_folder(args.out, [train_csv, test_csv, *images], getattr(args, "argv", None)) as folder:
        summary = build_records(train_csv, test_csv, *images, folder, args.size or DEFAULT_SIZE,
                                parts=args.parts or folds.DEFAULT_PARTS,
                                test_parts=args.test_parts or DEFAULT_TEST_PARTS,
                                seed=args.seed, workers=args.workers)
    print(json.dumps(summary))
    print(f"records written to {args.out}")
    return 0
