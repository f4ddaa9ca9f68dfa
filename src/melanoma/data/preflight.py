"""Before any work: every file and glob a command will read exists, and every records folder is complete.

A typo in a path costs seconds, not a training run.
"""
from __future__ import annotations

import difflib
import os
from typing import Any

from melanoma.core import io_utils
from melanoma.core.config import WEIGHT_NAMES, Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import record_format

INPUTS_OF = {
    # command -> keys it reads: (key, kind); a glob must match a file, a file must exist
    "train": (("data.train_files", "glob"), ("data.test_files", "glob"), ("data.external_files", "globs"),
              ("data.duplicates_csv", "file"), ("model.weights", "weights")),
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
        problems.extend(_input_problems(key, kind, config.get_path(key)))
    if problems:
        intro = "the config names input that is not there" if len(problems) == 1 else \
            f"the config names input that is not there ({len(problems)} problems)"
        raise ConfigError(intro + ":\n  " + "\n  ".join(problems))
