"""Upload a submission with the Kaggle CLI, keep a log of what was uploaded, and join the leaderboard's
scores to it.

`python -m melanoma submit SUB_CSV -m MSG [--sample SAMPLE_CSV] [--config CONFIG] [--allow-partial]`
`python -m melanoma leaderboard [--log submissions/log.csv]`

Uploading runs `kaggle competitions submit -c siim-isic-melanoma-classification -f SUB -m MSG` (another
competition when the submission's run, or --config, says so in `submission.competition`); only a
successful upload is appended to `submissions/log.csv` (time, file, sha256, config, oof_auc, message,
folds), so the log never claims a submission that did not happen. A partial ensemble (infer or
blend --allow-partial) is uploaded only with --allow-partial, and logged with the folds it holds and their
OOF AUC; the record beside the file (infer's and blend's) names the run whose OOF AUC is logged.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from melanoma.core import io_utils, metrics
from melanoma.core.errors import ConfigError, DataError, ExternalToolError
from melanoma.core.tables import parse_csv_text, read_oof, read_string_table
from melanoma.kaggle.kaggle_cli import COMPETITION, kaggle_credentials, run_kaggle
from melanoma.predict.submission import (
    DEFAULT_SUBMISSION_DIR,
    configure_parser,
    require_sample,
    require_submission_file,
    sha256_of,
    submission_context,
    submission_record,
    validate_submission,
)
from melanoma.runs import layout

LOG_COLUMNS = ("time", "file", "sha256", "config", "oof_auc", "message", "folds")


OLD_LOG_COLUMNS = LOG_COLUMNS[:6]  # logs written before the folds column; upgraded when appended to




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


def folds_oof_auc(run: str, folds: list[int]) -> float | None:
    """OOF AUC over the named folds only: the run's oof.csv rows of those folds (a blend's), else their
    fold<K>/oof.csv; None when they are missing or unreadable."""
    whole = os.path.join(run, layout.OOF)
    paths = [os.path.join(layout.fold_path(run, fold), layout.OOF) for fold in folds]
    try:
        if folds and all(io_utils.exists(path) for path in paths):
            frame = pd.concat([read_oof(path) for path in paths], ignore_index=True)
        elif folds and io_utils.exists(whole):
            frame = read_oof(whole)
            frame = frame[frame["fold"].isin(folds)]
        else:
            return None
    except DataError as error:
        print(f"warning: OOF AUC not logged: {error}", file=sys.stderr)
        return None
    if sorted(set(frame["fold"])) != sorted(folds):
        return None
    return metrics.auc(frame["target"], frame["pred"])


def run_oof_auc(run: str | None) -> float | None:
    """OOF AUC of a run's oof.csv, or None when there is none (a note is printed when it is unreadable)."""
    if not run or not io_utils.exists(os.path.join(run, layout.OOF)):
        return None
    try:
        frame = read_oof(os.path.join(run, layout.OOF))
    except DataError as error:
        print(f"warning: OOF AUC not logged: {error}", file=sys.stderr)
        return None
    return metrics.auc(frame["target"], frame["pred"])


def check_partial(path: str, record: dict | None, allow: bool) -> None:
    """A partial ensemble (infer --allow-partial) is uploaded only when asked to."""
    partial = record.get("partial") if record else bool(layout.PARTIAL_NAME.search(Path(path).stem))
    if partial and not allow:
        which = (f"folds {', '.join(map(str, record.get('folds', [])))} of {record.get('folds_expected', '?')}"
                 if record else "its name says so")
        raise ConfigError(f"{path} is a partial ensemble ({which}); train the missing folds and run infer "
                          "again, or add --allow-partial to upload it anyway")


def configure_submit_parser(parser: argparse.ArgumentParser) -> None:
    configure_parser(parser)
    parser.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    parser.add_argument("--log", metavar="CSV", help="submission log (default: submissions/log.csv)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="upload an ensemble of only some folds (infer --allow-partial's <name>-folds<K>.csv)")


def submit_command(args: argparse.Namespace) -> int:
    require_submission_file(args.submission)
    if not args.message.strip():
        raise ConfigError("the submission message (-m) is empty; say what this submission is")
    record = submission_record(args.submission)
    check_partial(args.submission, record, args.allow_partial)
    context = submission_context(args.submission, args.config, args.sample, args.log, record)
    sample = require_sample(context.sample)
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
    competition = context.competition or COMPETITION  # the run's submission.competition
    output = run_kaggle(["competitions", "submit", "-c", competition, "-f", args.submission,
                         "-m", args.message], what=f"uploading {args.submission} to {competition}")
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

        def distance(i: int, logged_at=logged_at) -> float:
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
