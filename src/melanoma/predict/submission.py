"""Submission files: check them against the sample submission, and write them safely.

`python -m melanoma validate SUB_CSV [--sample SAMPLE_CSV | --config CONFIG]`

A submission is `<id>,target` with every id of the sample submission exactly once and finite predictions
in [0, 1]. The id column is the sample's: `image_name` for the 2020 competition, `isic_id` for ISIC 2024
(a run names it in `submission.id_column`; `validate` reads it from the sample's header). Uploading them is
kaggle/submit.py's job.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import yaml

from melanoma.core import io_utils
from melanoma.core.config import load_config
from melanoma.core.errors import CheckFailed, ConfigError, DataError
from melanoma.core.tables import first_few, numbers, read_string_table
from melanoma.runs import layout, run_config

SUBMISSION_COLUMNS = ("image_name", "target")  # the 2020 competition's; submission.id_column names another id
DEFAULT_SUBMISSION_DIR = "submissions"
DEFAULT_OUTPUT_DIR = "outputs"
DEFAULT_BASE_CONFIG = os.path.join("configs", "base.yaml")


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def sample_id_column(columns, sample_path: str, id_column: str | None = None) -> str:
    """The id column of a sample submission with these columns: `id_column` when given, else image_name,
    else the one column beside `target` (isic_id, say); DataError naming what it found otherwise."""
    columns = [str(column) for column in columns]
    if id_column is None:
        others = [column for column in columns if column != "target"]
        id_column = "image_name" if "image_name" in columns or len(others) != 1 else others[0]
    if id_column not in columns:
        raise DataError(f"sample submission {sample_path} has no {id_column} column (found: {','.join(columns)})"
                        + ("; set submission.id_column to its id column" if "target" in columns else ""))
    return id_column


def read_sample(sample_path: str, id_column: str | None = None) -> tuple[str, list[str]]:
    """(the id column, the ids of a sample submission in its order); see `sample_id_column`."""
    sample = read_string_table(sample_path, where=f"sample submission {sample_path}")
    id_column = sample_id_column(sample.columns, sample_path, id_column)
    ids = _ids(sample[id_column])
    return id_column, list(dict.fromkeys(ids[ids != ""]))


def read_sample_ids(sample_path: str, id_column: str | None = None) -> list[str]:
    """The image ids of a sample submission, in its order."""
    return read_sample(sample_path, id_column)[1]


def _ids(series: pd.Series) -> pd.Series:
    """Image ids exactly as written (no stripping: Kaggle matches ids byte for byte)."""
    return series.where(series.notna(), "").astype(str)


def submission_problems(frame: pd.DataFrame, sample_ids: Sequence[str] | None = None,
                        id_column: str = "image_name") -> list[str]:
    """Every problem of a submission table (`id_column`,target), each naming the first few offending ids;
    [] when valid."""
    problems: list[str] = []
    columns = [str(column) for column in frame.columns]
    expected = [id_column, "target"]
    if columns != expected:
        problems.append(f"header is '{','.join(columns)}'; it must be exactly '{','.join(expected)}'")
        if not set(expected) <= set(columns):
            return problems
    if frame.empty:
        problems.append("it has no rows")
        return problems
    names = _ids(frame[id_column])
    empty = names.str.strip() == ""
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 1).tolist()
        problems.append(f"empty {id_column} on data row(s) {first_few(rows)}")
    duplicated = names[names.duplicated() & ~empty].unique()
    if len(duplicated):
        problems.append(f"{len(duplicated)} image name(s) appear more than once: {first_few(duplicated)}")
    if sample_ids is not None:
        present = set(names)
        expected = set(sample_ids)
        missing = [name for name in sample_ids if name not in present]
        extra = list(dict.fromkeys(name for name in names if name and name not in expected))
        if missing:
            problems.append(f"{len(missing)} image(s) of the sample are missing: {first_few(missing)}")
        if extra:
            problems.append(f"{len(extra)} image(s) are not in the sample: {first_few(extra)}")
    values, not_numeric = numbers(frame["target"])
    missing_value = values.isna() & ~not_numeric
    infinite = values.isin([np.inf, -np.inf])
    outside = np.isfinite(values) & ((values < 0) | (values > 1))
    for mask, what in [(not_numeric, "a non-numeric target"), (missing_value, "a NaN or empty target"),
                       (infinite, "an infinite target"), (outside, "a target outside [0, 1]")]:
        if mask.any():
            problems.append(f"{int(mask.sum())} row(s) have {what}: {first_few(names[mask])}")
    return problems


def _failure(where: str, problems: list[str]) -> CheckFailed:
    listing = "\n".join(f"  - {problem}" for problem in problems)
    return CheckFailed(f"{where} is not a valid submission ({len(problems)} problem(s)):\n{listing}")


def validate_frame(frame: pd.DataFrame, sample_path: str | None = None, where: str = "submission",
                   id_column: str = "image_name") -> None:
    """Raise CheckFailed listing every problem of a submission table (checked against the sample if given)."""
    sample_ids = read_sample_ids(sample_path, id_column) if sample_path else None
    problems = submission_problems(frame, sample_ids, id_column)
    if problems:
        raise _failure(where, problems)


def validate_submission(path: str, sample_path: str | None = None) -> pd.DataFrame:
    """Read and validate a submission file against the sample's id column (image_name without a sample);
    returns it (strings) or raises CheckFailed."""
    id_column, sample_ids = read_sample(sample_path) if sample_path else ("image_name", None)
    try:
        frame = read_string_table(path)
    except DataError as error:
        raise _failure(str(path), [str(error)]) from None
    problems = submission_problems(frame, sample_ids, id_column)
    if problems:
        raise _failure(str(path), problems)
    return frame


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

class Written(NamedTuple):
    path: str
    backup: str | None  # where the previous, different file was moved; None if there was none
    unchanged: bool     # the file already held exactly this content


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def backup_name(path: str) -> str:
    """`<stem>.<UTC time>.csv` beside `path`, with a counter if that name is taken."""
    stem, extension = os.path.splitext(str(path))
    stamp = utc_stamp()
    candidate = f"{stem}.{stamp}{extension or '.csv'}"
    counter = 1
    while io_utils.exists(candidate):
        candidate = f"{stem}.{stamp}-{counter}{extension or '.csv'}"
        counter += 1
    return candidate


def submission_text(frame: pd.DataFrame, id_column: str = "image_name") -> str:
    buffer = io.StringIO()
    frame.loc[:, [id_column, "target"]].to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def write_submission(frame: pd.DataFrame, path: str, sample_path: str | None = None,
                     force: bool = False, id_column: str = "image_name") -> Written:
    """Validate a submission table (`id_column`,target) and write it atomically to `path`.

    An existing file with the same bytes is left alone. An existing file that differs is first copied to
    `<stem>.<UTC time>.csv` (and that is printed), unless `force`, which overwrites it (also printed).
    Raises CheckFailed (nothing written) when the table is not a valid submission.
    """
    validate_frame(frame, sample_path, where=f"submission for {path}", id_column=id_column)
    data = submission_text(frame, id_column).encode("utf-8")
    path = str(path)
    backup = None
    if io_utils.exists(path):
        old = io_utils.read_bytes(path)
        if old == data:
            print(f"{path} already holds this submission; left unchanged", file=sys.stderr)
            return Written(path, None, True)
        if force:
            print(f"overwriting {path} (force: the previous file is not kept)", file=sys.stderr)
        else:
            backup = backup_name(path)
            io_utils.write_bytes_atomic(backup, old)
            print(f"{path} existed with different content; moved the old one to {backup}", file=sys.stderr)
    io_utils.write_bytes_atomic(path, data)
    return Written(path, backup, False)


# --------------------------------------------------------------------------------------------------
# Which config a submission belongs to
# --------------------------------------------------------------------------------------------------

class Context(NamedTuple):
    config: str          # the config (run) name recorded in the log
    sample: str | None   # sample submission to validate against
    run: str | None      # the run folder whose OOF AUC is logged
    log: str             # the log file
    competition: str | None = None  # the run's submission.competition (None: nothing says; submit's default)


def submission_context(submission: str, config_path: str | None = None, sample: str | None = None,
                       log: str | None = None, record: dict | None = None) -> Context:
    """The config name, sample, run folder and log for a submission.

    With --config the config says everything. Without it, the record infer or blend wrote beside the
    submission names its run and the sample it was checked against; else `submissions/<name>.csv` belongs to
    the run `outputs/<name>/` (the naming contract of infer and blend). The run's saved config gives the
    sample, else configs/base.yaml does.
    """
    if config_path:
        config = load_config(config_path)
        return Context(config.name, sample or config.data.sample_submission, layout.run_dir(config),
                       log or os.path.join(config.submission_dir, "log.csv"), config.submission.competition)
    name = Path(submission).stem
    run = os.path.join(DEFAULT_OUTPUT_DIR, name)
    if record:
        name, run = str(record.get("config", name)), str(record.get("run", run))
        sample = sample or record.get("sample_submission")  # what infer or blend checked the file against
    saved = None
    if io_utils.exists(os.path.join(run, layout.CONFIG_FILE)):
        try:
            saved = run_config.read_saved_config(run)
            sample = sample or saved.data.sample_submission
        except (yaml.YAMLError, AttributeError, KeyError, TypeError) as error:
            if sample is None:
                raise ConfigError(f"{run}/config.yaml does not say which sample submission to use "
                                  f"({error.__class__.__name__}: {error}); pass --sample or --config") from None
    elif sample is None and os.path.isfile(DEFAULT_BASE_CONFIG):
        sample = load_config(DEFAULT_BASE_CONFIG).data.sample_submission
    competition = (saved.get("submission") or {}).get("competition") if saved is not None else None
    return Context(name, sample, run if os.path.isdir(run) else None,
                   log or os.path.join(DEFAULT_SUBMISSION_DIR, "log.csv"), competition)


# --------------------------------------------------------------------------------------------------
# Fold ensembles: the partial rule and the record beside each file (every family, blends too)
# --------------------------------------------------------------------------------------------------

def partial_rule(what: str, folds: list[int], expected: int, path: str, allow: bool, train_hint: str) -> None:
    """With folds missing, ConfigError (exit 2) naming them, unless `allow` (--allow-partial): then a
    warning, and the file (`path`) carries the folds in its name. `train_hint` says how to train the
    missing ones; `{missing}` in it becomes their comma list."""
    missing = sorted(set(range(expected)) - set(folds))
    if not missing:
        return
    listed = ",".join(map(str, missing))
    if not allow:
        raise ConfigError(
            f"fold(s) {', '.join(map(str, missing))} of {what} are not trained ({len(folds)} of {expected} are): "
            f"train them ({train_hint.format(missing=listed)}), or add --allow-partial to write {path} from "
            f"folds {', '.join(map(str, folds))}")
    print(f"warning: a partial ensemble: folds {missing} of {what} are not trained; averaging folds {folds} "
          f"into {path}", file=sys.stderr)


def write_record(path: str, record: dict) -> str:
    """`<submission>.json` beside a submission just written: who made it and from which folds (read by
    `submit`), with `partial` and the file's sha256 added. Returns its path."""
    record = dict(record)
    record["partial"] = len(record["folds"]) < int(record["folds_expected"])
    record["sha256"] = sha256_of(path)
    location = layout.record_path(path)
    io_utils.write_text_atomic(location, json.dumps(record, indent=1) + "\n")
    return location


def submission_record(path: str) -> dict | None:
    """What infer (or blend) recorded beside a submission (run, folds used), if it describes this very file."""

    location = layout.record_path(path)
    if not io_utils.exists(location):
        return None
    try:
        record = json.loads(io_utils.read_text(location))
    except ValueError:
        print(f"warning: {location} is not readable JSON; ignored", file=sys.stderr)
        return None
    if not isinstance(record, dict) or record.get("sha256") != sha256_of(path):
        print(f"warning: {location} describes another version of {path}; ignored", file=sys.stderr)
        return None
    return record


def require_sample(sample: str | None) -> str:
    if not sample:
        raise FileNotFoundError("no sample submission to validate against; pass --sample SAMPLE_CSV "
                                "or --config CONFIG")
    if not io_utils.exists(sample):
        raise FileNotFoundError(f"sample submission not found: {sample}; pass --sample SAMPLE_CSV")
    return sample


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", metavar="SUB_CSV", help="submission file: image_name,target")
    parser.add_argument("--sample", metavar="SAMPLE_CSV",
                        help="sample submission (default: the one in --config's data)")
    parser.add_argument("--config", metavar="CONFIG",
                        help="config whose data.sample_submission to use (default: the run of the "
                             "submission's name, else configs/base.yaml)")


def require_submission_file(path: str) -> None:
    """The submission to check is there and is a file (FileNotFoundError / DataError, exit status 2)."""
    if not io_utils.exists(path):
        raise FileNotFoundError(f"submission not found: {path}")
    if io_utils.isdir(path):
        raise io_utils.folder_given_for_file(path)


def command(args: argparse.Namespace) -> int:
    require_submission_file(args.submission)
    context = submission_context(args.submission, args.config, args.sample)
    sample = require_sample(context.sample)
    frame = validate_submission(args.submission, sample)
    print(f"{args.submission}: valid submission, {len(frame)} rows matching {sample}")
    return 0


# --------------------------------------------------------------------------------------------------
# Leaderboard
# --------------------------------------------------------------------------------------------------


def sha256_of(path: str) -> str:
    return hashlib.sha256(io_utils.read_bytes(path)).hexdigest()
