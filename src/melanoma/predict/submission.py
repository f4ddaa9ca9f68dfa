"""Submission files: validate them, write them safely, upload them with the Kaggle CLI, and keep a log.

`python -m melanoma validate SUB_CSV [--sample SAMPLE_CSV | --config CONFIG]`
`python -m melanoma submit SUB_CSV -m MSG [--sample SAMPLE_CSV] [--config CONFIG]`
`python -m melanoma leaderboard [--log submissions/log.csv]`

A submission is `image_name,target` with every id of the sample submission exactly once and finite
predictions in [0, 1]. Uploading runs `kaggle competitions submit -c siim-isic-melanoma-classification
-f SUB -m MSG` as a subprocess; only a successful upload is appended to `submissions/log.csv`
(time, file, sha256, config, oof_auc, message, folds), so the log never claims a submission that did not
happen. A partial ensemble (infer --allow-partial) is uploaded only with --allow-partial, and logged with
the folds it holds and their OOF AUC. `leaderboard` fetches the scores of past submissions and joins them to the log.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core.config import ConfigError
from melanoma.core.errors import CheckFailed, DataError, ExternalToolError, SetupError
from melanoma.evaluate.scoring import _numbers, first_few, read_string_table

COMPETITION = "siim-isic-melanoma-classification"
SUBMISSION_COLUMNS = ("image_name", "target")
LOG_COLUMNS = ("time", "file", "sha256", "config", "oof_auc", "message", "folds")
OLD_LOG_COLUMNS = LOG_COLUMNS[:6]  # logs written before the folds column; upgraded when appended to
# infer's name for a partial ensemble: <name>-folds0_2.csv
PARTIAL_NAME = re.compile(r"-folds\d+(_\d+)*(\.|$)")  # (a kept older copy adds .<time>)
DEFAULT_SUBMISSION_DIR = "submissions"
DEFAULT_OUTPUT_DIR = "outputs"
DEFAULT_BASE_CONFIG = os.path.join("configs", "base.yaml")
UPLOAD_TIMEOUT_S = 30 * 60
# The Kaggle CLI prints these and may still exit 0.
FAILURE_MARKERS = ("Could not submit to competition", "Could not find competition")
CREDENTIALS_HELP = (
    "create an API token at https://www.kaggle.com/settings (API -> Create New Token) and save it as "
    "~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); "
    "KAGGLE_CONFIG_DIR moves the folder that holds kaggle.json"
)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def read_sample_ids(sample_path: str) -> list[str]:
    """The image ids of a sample submission, in its order."""
    sample = read_string_table(sample_path, where=f"sample submission {sample_path}")
    if "image_name" not in sample.columns:
        raise DataError(f"sample submission {sample_path} has no image_name column "
                        f"(found: {','.join(sample.columns)})")
    ids = _ids(sample["image_name"])
    return list(dict.fromkeys(ids[ids != ""]))


def _ids(series: pd.Series) -> pd.Series:
    """Image ids exactly as written (no stripping: Kaggle matches ids byte for byte)."""
    return series.where(series.notna(), "").astype(str)


def submission_problems(frame: pd.DataFrame, sample_ids: Sequence[str] | None = None) -> list[str]:
    """Every problem of a submission table, each naming the first few offending ids; [] when valid."""
    problems: list[str] = []
    columns = [str(column) for column in frame.columns]
    if columns != list(SUBMISSION_COLUMNS):
        problems.append(f"header is '{','.join(columns)}'; it must be exactly "
                        f"'{','.join(SUBMISSION_COLUMNS)}'")
        if not set(SUBMISSION_COLUMNS) <= set(columns):
            return problems
    if frame.empty:
        problems.append("it has no rows")
        return problems
    names = _ids(frame["image_name"])
    empty = names.str.strip() == ""
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 1).tolist()
        problems.append(f"empty image_name on data row(s) {first_few(rows)}")
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
    values, not_numeric = _numbers(frame["target"])
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


def validate_frame(frame: pd.DataFrame, sample_path: str | None = None, where: str = "submission") -> None:
    """Raise CheckFailed listing every problem of a submission table (checked against the sample if given)."""
    sample_ids = read_sample_ids(sample_path) if sample_path else None
    problems = submission_problems(frame, sample_ids)
    if problems:
        raise _failure(where, problems)


def validate_submission(path: str, sample_path: str | None = None) -> pd.DataFrame:
    """Read and validate a submission file; returns it (strings) or raises CheckFailed."""
    sample_ids = read_sample_ids(sample_path) if sample_path else None
    try:
        frame = read_string_table(path)
    except DataError as error:
        raise _failure(str(path), [str(error)]) from None
    problems = submission_problems(frame, sample_ids)
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


def submission_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.loc[:, list(SUBMISSION_COLUMNS)].to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def write_submission(frame: pd.DataFrame, path: str, sample_path: str | None = None,
                     force: bool = False) -> Written:
    """Validate a submission table and write it atomically to `path`.

    An existing file with the same bytes is left alone. An existing file that differs is first copied to
    `<stem>.<UTC time>.csv` (and that is printed), unless `force`, which overwrites it (also printed).
    Raises CheckFailed (nothing written) when the table is not a valid submission.
    """
    validate_frame(frame, sample_path, where=f"submission for {path}")
    data = submission_text(frame).encode("utf-8")
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
# Kaggle CLI
# --------------------------------------------------------------------------------------------------

def _kaggle_config_dirs() -> list[Path]:
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return [Path(configured).expanduser()]
    home = Path.home() / ".kaggle"
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return [home, xdg]


def kaggle_credentials(nothing_done: str = "Nothing was submitted.") -> str:
    """Where the Kaggle CLI will find credentials; ExternalToolError saying what to do when nowhere."""
    username, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if username and key:
        return "KAGGLE_USERNAME and KAGGLE_KEY"
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    half = ""
    if bool(username) != bool(key):
        half = f" (only {'KAGGLE_USERNAME' if username else 'KAGGLE_KEY'} is set; both are needed)"
    folders = _kaggle_config_dirs()
    for token_file in [folder / "access_token" for folder in folders + [Path.home() / ".kaggle"]]:
        try:
            if token_file.is_file() and token_file.read_text(errors="replace").strip():
                return str(token_file)
        except OSError as error:
            raise SetupError(f"cannot read {token_file} ({error}); {CREDENTIALS_HELP}") from None
    searched = [str(folder / "kaggle.json") for folder in folders]
    for json_file in [folder / "kaggle.json" for folder in folders]:
        if json_file.is_file():
            try:
                data = json.loads(json_file.read_text())
            except (OSError, ValueError) as error:
                raise SetupError(f"{json_file} is not readable JSON ({error}); {CREDENTIALS_HELP}") from None
            if not isinstance(data, dict) or not data.get("username") or not data.get("key"):
                raise SetupError(f"{json_file} lacks 'username' and 'key'; {CREDENTIALS_HELP}")
            return str(json_file)
    raise SetupError(f"no Kaggle credentials found{half} (looked for {', '.join(searched)}); "
                            f"{CREDENTIALS_HELP}. {nothing_done}")


def kaggle_executable(nothing_done: str = "Nothing was submitted.") -> str:
    """The `kaggle` program: first on PATH, else beside this Python (a virtual environment's bin/)."""
    found = shutil.which("kaggle")
    if found:
        return found
    beside = Path(sys.executable).parent / ("kaggle.exe" if os.name == "nt" else "kaggle")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise SetupError("the Kaggle CLI ('kaggle') is not on PATH; install it with "
                            "`pip install kaggle` (it is in this project's dependencies) or activate the "
                            f"virtual environment. {nothing_done}")


def run_kaggle(arguments: list[str], what: str, timeout: float = UPLOAD_TIMEOUT_S,
               nothing_done: str = "Nothing was submitted.") -> str:
    """Run `kaggle ARGS...`; its output on success, ExternalToolError (with the output's end) otherwise."""
    command = [kaggle_executable(nothing_done)] + arguments
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExternalToolError(f"{what}: the Kaggle CLI did not finish in {timeout:.0f} s; check your "
                                f"network and try again") from None
    except OSError as error:
        raise ExternalToolError(f"{what}: could not run {command[0]}: {error}") from None
    output = (completed.stdout or "") + (completed.stderr or "")
    failed_marker = next((marker for marker in FAILURE_MARKERS if marker in output), None)
    if completed.returncode != 0 or failed_marker:
        tail = "\n".join(output.strip().splitlines()[-8:]) or "(no output)"
        raise ExternalToolError(
            f"{what} failed (kaggle exit status {completed.returncode}):\n{tail}\n"
            f"Check that you are online, that your API token is valid, that you accepted the rules at "
            f"https://www.kaggle.com/c/{COMPETITION}/rules and that you have submissions left today.")
    return completed.stdout or ""


# --------------------------------------------------------------------------------------------------
# Log
# --------------------------------------------------------------------------------------------------

def sha256_of(path: str) -> str:
    return hashlib.sha256(io_utils.read_bytes(path)).hexdigest()


def append_log(log_path: str, row: dict) -> None:
    """Append one row to the submission log, rewriting it atomically (header written when new)."""
    existing = io_utils.read_text(log_path) if io_utils.exists(log_path) else ""
    if existing:
        rows = list(csv.reader(io.StringIO(existing)))
        header = rows[0] if rows else []
        if header == list(OLD_LOG_COLUMNS):  # add the folds column, empty for the earlier rows
            upgraded = io.StringIO()
            csv.writer(upgraded, lineterminator="\n").writerows(
                [list(LOG_COLUMNS)] + [row + [""] * (len(LOG_COLUMNS) - len(row)) for row in rows[1:] if row])
            existing, header = upgraded.getvalue(), list(LOG_COLUMNS)
        if header != list(LOG_COLUMNS):
            raise DataError(f"{log_path} has header '{','.join(header)}', expected "
                            f"'{','.join(LOG_COLUMNS)}'; move it aside and submit again")
        if not existing.endswith("\n"):
            existing += "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not existing:
        writer.writerow(LOG_COLUMNS)
    writer.writerow([row.get(column, "") for column in LOG_COLUMNS])
    io_utils.write_text_atomic(log_path, existing + buffer.getvalue())


def read_log(log_path: str) -> pd.DataFrame:
    if not io_utils.exists(log_path):
        return pd.DataFrame(columns=list(LOG_COLUMNS))
    frame = read_string_table(log_path, where=f"submission log {log_path}")
    missing = [column for column in OLD_LOG_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"submission log {log_path} lacks column(s) {', '.join(missing)}")
    if "folds" not in frame.columns:
        frame["folds"] = ""
    return frame


# --------------------------------------------------------------------------------------------------
# Which config a submission belongs to
# --------------------------------------------------------------------------------------------------

class Context(NamedTuple):
    config: str          # the config (run) name recorded in the log
    sample: str | None   # sample submission to validate against
    run: str | None      # the run folder whose OOF AUC is logged
    log: str             # the log file


def submission_context(submission: str, config_path: str | None = None, sample: str | None = None,
                       log: str | None = None, record: dict | None = None) -> Context:
    """The config name, sample, run folder and log for a submission.

    With --config the config says everything. Without it, the record infer wrote beside the submission
    names its run; else `submissions/<name>.csv` belongs to the run `outputs/<name>/` (the naming
    contract of infer and blend). The run's saved config gives the sample, else configs/base.yaml does.
    """
    import yaml

    from melanoma.core.config import load_config, load_run_config, run_dir

    if config_path:
        config = load_config(config_path)
        return Context(config.name, sample or config.data.sample_submission, run_dir(config),
                       log or os.path.join(config.submission_dir, "log.csv"))
    name = Path(submission).stem
    run = os.path.join(DEFAULT_OUTPUT_DIR, name)
    if record:
        name, run = str(record.get("config", name)), str(record.get("run", run))
    if sample is None:
        if io_utils.exists(os.path.join(run, "config.yaml")):
            try:
                sample = load_run_config(run).data.sample_submission
            except (yaml.YAMLError, AttributeError, KeyError, TypeError) as error:
                raise ConfigError(f"{run}/config.yaml does not say which sample submission to use "
                                  f"({error.__class__.__name__}: {error}); pass --sample or --config") from None
        elif os.path.isfile(DEFAULT_BASE_CONFIG):
            sample = load_config(DEFAULT_BASE_CONFIG).data.sample_submission
    return Context(name, sample, run if os.path.isdir(run) else None,
                   log or os.path.join(DEFAULT_SUBMISSION_DIR, "log.csv"))


def submission_record(path: str) -> dict | None:
    """What infer recorded beside a submission (run, folds used), if it describes this very file."""
    from melanoma.predict.inference import record_path

    location = record_path(path)
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


def folds_oof_auc(run: str, folds: list[int]) -> float | None:
    """OOF AUC over the named folds only (their fold<K>/oof.csv), None when one is missing or unreadable."""
    from melanoma.evaluate.scoring import competition_auc, read_oof

    paths = [os.path.join(run, f"fold{fold}", "oof.csv") for fold in folds]
    if not folds or not all(io_utils.exists(path) for path in paths):
        return None
    try:
        frame = pd.concat([read_oof(path) for path in paths], ignore_index=True)
    except DataError as error:
        print(f"warning: OOF AUC not logged: {error}", file=sys.stderr)
        return None
    return competition_auc(frame["target"], frame["pred"])


def run_oof_auc(run: str | None) -> float | None:
    """OOF AUC of a run's oof.csv, or None when there is none (a note is printed when it is unreadable)."""
    if not run or not io_utils.exists(os.path.join(run, "oof.csv")):
        return None
    from melanoma.evaluate.scoring import competition_auc, read_oof

    try:
        frame = read_oof(os.path.join(run, "oof.csv"))
    except DataError as error:
        print(f"warning: OOF AUC not logged: {error}", file=sys.stderr)
        return None
    return competition_auc(frame["target"], frame["pred"])


def check_partial(path: str, record: dict | None, allow: bool) -> None:
    """A partial ensemble (infer --allow-partial) is uploaded only when asked to."""
    partial = record.get("partial") if record else bool(PARTIAL_NAME.search(Path(path).stem))
    if partial and not allow:
        which = (f"folds {', '.join(map(str, record.get('folds', [])))} of {record.get('folds_expected', '?')}"
                 if record else "its name says so")
        raise ConfigError(f"{path} is a partial ensemble ({which}); train the missing folds and run infer "
                          "again, or add --allow-partial to upload it anyway")


def _require_sample(sample: str | None) -> str:
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


def command(args: argparse.Namespace) -> int:
    if not io_utils.exists(args.submission):
        raise FileNotFoundError(f"submission not found: {args.submission}")
    context = submission_context(args.submission, args.config, args.sample)
    sample = _require_sample(context.sample)
    frame = validate_submission(args.submission, sample)
    print(f"{args.submission}: valid submission, {len(frame)} rows matching {sample}")
    return 0


def configure_submit_parser(parser: argparse.ArgumentParser) -> None:
    configure_parser(parser)
    parser.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    parser.add_argument("--log", metavar="CSV", help="submission log (default: submissions/log.csv)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="upload an ensemble of only some folds (infer --allow-partial's <name>-folds<K>.csv)")


def submit_command(args: argparse.Namespace) -> int:
    if not io_utils.exists(args.submission):
        raise FileNotFoundError(f"submission not found: {args.submission}")
    if not args.message.strip():
        raise ConfigError("the submission message (-m) is empty; say what this submission is")
    record = submission_record(args.submission)
    check_partial(args.submission, record, args.allow_partial)
    context = submission_context(args.submission, args.config, args.sample, args.log, record)
    sample = _require_sample(context.sample)
    validate_submission(args.submission, sample)
    digest = sha256_of(args.submission)
    folds = record.get("folds") if record else None
    if folds and record.get("partial"):
        oof_auc = folds_oof_auc(str(record.get("run")), folds)  # the folds in the file, not the whole run
    else:
        oof_auc = run_oof_auc(context.run)
    folds_text = "" if not folds else f"{' '.join(map(str, folds))} of {record.get('folds_expected', '?')}"
    source = kaggle_credentials()
    print(f"uploading {args.submission} (sha256 {digest[:12]}, OOF AUC "
          f"{'-' if oof_auc is None else f'{oof_auc:.4f}'}{', folds ' + folds_text if folds_text else ''}) "
          f"with credentials from {source}", file=sys.stderr)
    output = run_kaggle(["competitions", "submit", "-c", COMPETITION, "-f", args.submission,
                         "-m", args.message], what=f"uploading {args.submission}")
    if output.strip():
        print(output.strip())
    append_log(context.log, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "file": args.submission,
        "sha256": digest,
        "config": context.config,
        "oof_auc": "" if oof_auc is None else f"{oof_auc:.6f}",
        "message": args.message,
        "folds": folds_text,
    })
    print(f"submitted {args.submission}; logged in {context.log}")
    return 0


# --------------------------------------------------------------------------------------------------
# Leaderboard
# --------------------------------------------------------------------------------------------------

def parse_kaggle_submissions(output: str) -> pd.DataFrame:
    """The CSV that `kaggle competitions submissions --csv` prints (any banner lines before it skipped)."""
    lines = output.splitlines()
    start = next((index for index, line in enumerate(lines)
                  if "fileName" in line.split(",") or line.startswith("fileName,")), None)
    columns = ["fileName", "date", "description", "status", "publicScore", "privateScore"]
    if start is None:
        if output.strip() and "No submissions found" not in output:
            raise ExternalToolError("could not read the Kaggle CLI's submission list (no 'fileName' "
                                    f"header in its output):\n{output.strip()[:500]}")
        return pd.DataFrame(columns=columns)
    frame = read_text_table("\n".join(lines[start:]))
    for column in columns:
        if column not in frame.columns:
            frame[column] = ""
    return frame


def read_text_table(text: str) -> pd.DataFrame:
    from melanoma.evaluate.scoring import parse_csv_text

    try:
        return parse_csv_text(text, "the Kaggle CLI's submission list")
    except DataError as error:
        raise ExternalToolError(str(error)) from None


def join_leaderboard(log: pd.DataFrame, kaggle: pd.DataFrame) -> pd.DataFrame:
    """One row per logged submission with its Kaggle scores, then Kaggle submissions not in the log.

    A logged submission matches the Kaggle entry with the same file name and description closest in
    time (same file name alone when the description differs).
    """
    kaggle = kaggle.reset_index(drop=True)
    kaggle_times = pd.to_datetime(kaggle["date"], errors="coerce", utc=True)
    used: set[int] = set()
    rows = []
    for _, entry in log.iterrows():
        logged_at = pd.to_datetime(entry["time"], errors="coerce", utc=True)
        name = os.path.basename(str(entry["file"]))
        same_file = [i for i in kaggle.index[kaggle["fileName"] == name] if i not in used]
        same_message = [i for i in same_file if kaggle.at[i, "description"] == entry["message"]]
        candidates = same_message or same_file

        def distance(i: int) -> float:
            if pd.isna(logged_at) or pd.isna(kaggle_times[i]):
                return float("inf")
            return abs((kaggle_times[i] - logged_at).total_seconds())

        match = min(candidates, key=distance) if candidates else None
        if match is not None:
            used.add(match)
        found = kaggle.loc[match] if match is not None else None
        rows.append({
            "time": entry["time"], "file": entry["file"], "config": entry["config"],
            "oof_auc": entry["oof_auc"],
            "public_score": "" if found is None else found["publicScore"],
            "private_score": "" if found is None else found["privateScore"],
            "status": "not found on Kaggle" if found is None else found["status"],
            "message": entry["message"],
        })
    for i in kaggle.index:
        if i in used:
            continue
        rows.append({"time": kaggle.at[i, "date"], "file": kaggle.at[i, "fileName"], "config": "",
                     "oof_auc": "", "public_score": kaggle.at[i, "publicScore"],
                     "private_score": kaggle.at[i, "privateScore"],
                     "status": f"{kaggle.at[i, 'status']} (not in log)", "message": kaggle.at[i, "description"]})
    columns = ["time", "file", "config", "oof_auc", "public_score", "private_score", "status", "message"]
    return pd.DataFrame(rows, columns=columns)


def configure_leaderboard_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", default=os.path.join(DEFAULT_SUBMISSION_DIR, "log.csv"), metavar="CSV",
                        help="submission log (default: submissions/log.csv)")
    parser.add_argument("--out", metavar="CSV",
                        help="where to write the joined table (default: leaderboard.csv beside the log)")
    parser.add_argument("--json", action="store_true", help="print JSON records instead of a table")


def leaderboard_command(args: argparse.Namespace) -> int:
    log = read_log(args.log)
    nothing_done = "No scores were fetched."
    kaggle_credentials(nothing_done)
    output = run_kaggle(["competitions", "submissions", "-c", COMPETITION, "--csv"],
                        what="fetching your submissions", timeout=300, nothing_done=nothing_done)
    table = join_leaderboard(log, parse_kaggle_submissions(output))
    out = args.out or os.path.join(os.path.dirname(args.log) or ".", "leaderboard.csv")
    io_utils.write_csv_atomic(table, out)
    if args.json:
        print(json.dumps(table.to_dict(orient="records")))
    elif table.empty:
        print("no submissions yet")
    else:
        with pd.option_context("display.width", 200, "display.max_columns", None,
                               "display.max_colwidth", 40):
            print(table.to_string(index=False))
    print(f"wrote {out}", file=sys.stderr)
    return 0
