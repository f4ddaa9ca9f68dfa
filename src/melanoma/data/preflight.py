"""Before any work, and before TensorFlow loads: every file and glob a command will read exists, every
records folder is complete, the folds asked for have parts to train and validate on, and every folder a
command will write into can be written, each problem named with its config key (or argument).

A typo in a path costs seconds, not a training run.
"""
from __future__ import annotations

import difflib
import errno
import os
import tempfile
from typing import Any

from melanoma.core import fold_rule, io_utils
from melanoma.core.config import WEIGHT_NAMES, Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import record_format

INPUTS_OF = {
    # command -> keys it reads: (key, kind); a glob must match a file, a file must exist. Training needs
    # the sample submission too (when there are test files): infer, after training, reads it.
    "train": (("data.train_files", "glob"), ("data.test_files", "glob"), ("data.external_files", "globs"),
              ("data.duplicates_csv", "file"), ("model.weights", "weights"), ("data.sample_submission", "file"),
              ("validation_weights.file", "file")),
    # infer builds its models from the folds' checkpoints, so it needs no pretrained weights file
    "infer": (("data.test_files", "glob"), ("data.sample_submission", "file")),
}


def _near_names(path: str) -> str:
    """' (did you mean ...?)' with the closest entries of the path's folder, or where the folder is missing."""
    folder, name = os.path.split(path.rstrip("/"))
    folder = folder or "."
    if any(ch in folder for ch in "*?["):
        return ""
    if not io_utils.exists(folder):
        return f" (folder {folder} does not exist)"
    try:
        entries = io_utils.listdir(folder)
    except OSError:
        return ""
    close = difflib.get_close_matches(name, entries, n=1, cutoff=0.6)
    return f" (did you mean '{os.path.join(folder, close[0])}'?)" if close else ""


def _globs(value: Any) -> list:
    """The glob strings of a value that is a glob, a list of globs, or (data.external_files) mappings
    {set name: glob} or a list mixing both."""
    items = value if isinstance(value, list) else [value]
    patterns = []
    for item in items:
        patterns.extend(item.values() if isinstance(item, dict) else [item])
    return patterns


def _input_problems(key: str, kind: str, value: Any) -> list[str]:
    if value is None or (kind == "weights" and value in WEIGHT_NAMES):
        return []
    if kind == "file" or kind == "weights":
        problems = []
        for path in (value if isinstance(value, list) else [value]):
            if isinstance(path, str) and path and io_utils.exists(path) and not io_utils.isdir(path):
                continue
            if not isinstance(path, str) or not path:
                problems.append(f"config key '{key}' holds {path!r}; give a file path")
                continue
            what = "is a folder, not a file" if io_utils.exists(path) else "file not found"
            extra = f" (use {', '.join(WEIGHT_NAMES)} or a weights file)" if kind == "weights" else ""
            problems.append(f"config key '{key}' = {path!r}: {what}{_near_names(path)}{extra}")
        return problems
    patterns = _globs(value)
    problems = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            problems.append(f"config key '{key}' holds {pattern!r}; give glob strings")
            continue
        if not io_utils.glob(pattern):
            hint = _near_names(pattern) if not any(c in os.path.basename(pattern) for c in "*?[") else ""
            if not hint:
                folder = os.path.dirname(pattern) or "."
                if not any(c in folder for c in "*?[") and not io_utils.exists(folder):
                    hint = f" (folder {folder} does not exist)"
            problems.append(f"config key '{key}' = {pattern!r} matched no file{hint}")
    if kind == "glob" and not problems:
        for path in io_utils.glob(patterns):
            try:
                record_format.parse_file_name(path)
            except DataError as error:
                problems.append(f"config key '{key}' = {value!r}: {error}")
                break
    if not problems:  # a records folder that is not complete (see record_format.folder_problem)
        for folder in sorted({os.path.dirname(path) for path in io_utils.glob(patterns)}):
            problem = record_format.folder_problem(folder)
            if problem:
                problems.append(f"config key '{key}': folder {folder} {problem}; it is not complete: build it "
                                "again with `python -m melanoma records ...` (or copy it whole)")
    return problems


def check_inputs(config: Config, for_command: str) -> None:
    """Every file and glob that `for_command` ("train" or "infer") will read exists and matches.

    Called before a model is built or anything is written, so a typo in a path costs seconds, not a
    training run. All problems are reported at once, each with its key and value.
    """
    if for_command not in INPUTS_OF:
        raise ValueError(f"unknown command '{for_command}'; choose one of {', '.join(INPUTS_OF)}")
    problems: list[str] = []
    for key, kind in INPUTS_OF[for_command]:
        if key == "data.sample_submission" and not config.data.test_files:
            continue  # no test set, no submission
        problems.extend(_input_problems(key, kind, config.get_path(key)))
    if problems:
        intro = "the config names input that is not there" if len(problems) == 1 else \
            f"the config names input that is not there ({len(problems)} problems)"
        raise ConfigError(intro + ":\n  " + "\n  ".join(problems))


def check_train_split(config: Config) -> None:
    """data.train_files names train records. Test records have no target, so training on them would fail
    on every record with 'missing feature target'; their file names say what they are before any is read."""
    files = record_format.list_files(config.data.train_files, "data.train_files")
    test = [os.path.basename(f.path) for f in files if f.split == "test"]
    if test:
        shown = ", ".join(test[:2]) + (f" and {len(test) - 2} more" if len(test) > 2 else "")
        raise ConfigError(f"config key 'data.train_files' = {config.data.train_files!r} matches {shown}: "
                          f"{record_format.TEST_RECORDS_GIVEN}")


# --------------------------------------------------------------------------------------------------
# folds against parts
# --------------------------------------------------------------------------------------------------

def check_folds(config: Config, folds: list[int]) -> None:
    """Every fold of data.folds validates on at least one part, from the parts in the train files' names
    (fold k validates on the parts with part % data.folds == k; with data.folds >= 2 every fold then
    trains on the others' parts)."""
    files = record_format.list_files(config.data.train_files, "data.train_files")
    parts = sorted({f.part for f in files})
    count = config.data.folds
    empty = [fold for fold in range(count) if not any(fold_rule.validates(part, count, fold) for part in parts)]
    shown = f"{len(parts)} part(s) ({', '.join(map(str, parts[:16]))}{', ...' if len(parts) > 16 else ''})"
    if empty:
        chosen = sorted(set(empty) & set(folds))
        which = f"fold(s) {', '.join(map(str, chosen or empty))}"
        # data.folds is at least 2: with fewer parts than that, fewer folds is no answer
        fewer = f"set data.folds to at most {len(parts)}, or " if len(parts) >= 2 else ""
        raise ConfigError(f"config key 'data.folds' is {count}, but data.train_files holds {shown}: {which} would "
                          f"validate on no part (a fold validates on the parts with part % data.folds == fold); "
                          f"{fewer}build records with more parts (records --parts)")


# --------------------------------------------------------------------------------------------------
# folders to write into
# --------------------------------------------------------------------------------------------------

def writable_problem(path: str) -> str | None:
    """Why files cannot be written into folder `path` (created if need be), or None. A cloud path is not
    probed here (the first write says)."""
    if io_utils.is_remote(path):
        return None
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder" if existing != path else "it is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".melanoma-write-test-", dir=existing)
    except OSError as error:
        reason = "read-only" if error.errno == errno.EROFS else "not writable"
        return f"{existing} is {reason} ({error.strerror or error})"
    os.close(handle)
    os.remove(probe)
    return None


def check_writable(folders: dict[str, str]) -> None:
    """{key or argument: folder}: each one can be written into; one ConfigError names every one that cannot."""
    problems = [f"{key} = {str(path)!r}: {problem}" for key, path in folders.items()
                if (problem := writable_problem(str(path)))]
    if problems:
        raise ConfigError("cannot write where asked (" + "; ".join(problems) + "); choose a folder that can be "
                          "written, or make this one writable")


def check_training(config: Config, folds: list[int], writes: bool = True) -> None:
    """What `train` checks before any work: the input files, the folds against the parts, and (for the
    process that `writes` the run's files: not the other workers of a cluster) output_dir."""
    check_inputs(config, "train")
    check_train_split(config)
    check_folds(config, folds)
    if writes:
        check_writable({"config key 'output_dir'": config.output_dir})


def check_sample_columns(config: Config) -> None:
    """The sample submission has the id column the submission will have (`submission.id_column`)."""
    sample, wanted = config.data.sample_submission, config.submission.id_column
    columns = [str(column) for column in io_utils.read_csv(sample, nrows=0).columns]
    if wanted not in columns:
        found = [column for column in columns if column != "target"]
        hint = f"set submission.id_column={found[0]}" if len(found) == 1 else "check data.sample_submission"
        raise ConfigError(f"config key 'submission.id_column' is '{wanted}', but the sample submission {sample} has "
                          f"the columns {','.join(columns)}: {hint}")


def check_inference(config: Config) -> None:
    """What `infer` checks before any work: the test files and sample (with the submission's id column),
    output_dir and submission_dir."""
    check_inputs(config, "infer")
    check_sample_columns(config)
    check_writable({"config key 'output_dir'": config.output_dir,
                    "config key 'submission_dir'": config.submission_dir})
