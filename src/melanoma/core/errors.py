"""Errors that reach the user as one clear line and an exit status, never a traceback.

Exit status 2 means the user's input is wrong: the config, an argument, a file, data that cannot be read,
a tool that is not set up (no Kaggle credentials). Exit status 1 means something failed while working:
a check that did not pass (an invalid submission, a leak between folds, a NaN loss) or an outside tool
that failed (an upload). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys


class ConfigError(ValueError):
    """A config problem found before any work starts; the CLI exits with status 2."""


class DataError(ValueError):
    """Bad input data: a missing column, an empty CSV, a corrupt record, an undecodable image (names the
    file and the image). The user's input, so exit status 2."""


class CheckFailed(RuntimeError):
    """A check the user asked for did not pass (a submission that does not validate, a leak)."""


class ExternalToolError(RuntimeError):
    """An outside tool (the Kaggle CLI) failed; the message says what to do."""


class SetupError(ExternalToolError):
    """An outside tool is not set up (no credentials, not installed): the user's to fix, exit status 2."""


# exception types -> exit status, first match wins. A path that is a folder where a file is meant (or the
# reverse), or that this user may not write, is the user's to fix too: the commands check their paths
# first with clearer words, and these are the net under those checks.
EXIT_STATUS = ((ConfigError, 2), (FileNotFoundError, 2), (DataError, 2), (SetupError, 2),
               (IsADirectoryError, 2), (NotADirectoryError, 2), (PermissionError, 2),
               (CheckFailed, 1), (ExternalToolError, 1))
PATH_ERRORS = {IsADirectoryError: "a folder where a file is meant", NotADirectoryError: "a file where a folder is meant",
               PermissionError: "not allowed here"}


def message(error: BaseException) -> str:
    """One line for the user: the project's own errors say it all; a path error says which path and what to do."""
    for kind, what in PATH_ERRORS.items():
        if isinstance(error, kind):
            where = error.filename or "a path"
            return f"{where}: {what} ({error.strerror or error}); check the path, or choose another"
    return str(error)


def run_guarded(function, args) -> int:
    """Run a command; turn the project's own errors into a message and an exit status (see above)."""
    try:
        status = function(args)
    except tuple(kind for kind, _ in EXIT_STATUS) as error:
        print(f"error: {message(error)}", file=sys.stderr)
        return next(status for kind, status in EXIT_STATUS if isinstance(error, kind))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
