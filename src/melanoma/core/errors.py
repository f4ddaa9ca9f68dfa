"""Errors that reach the user as one clear line and an exit status, never a traceback.

Exit status 2 means the user's input is wrong: the config, an argument, a file, data that cannot be read,
a tool that is not set up (no Kaggle credentials). Exit status 1 means something failed while working:
a check that did not pass (an invalid submission, a leak between folds, a NaN loss) or an outside tool
that failed (an upload). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys

from melanoma.core import temporary_names


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
PATH_ERRORS = {IsADirectoryError: "a folder where a file is meant",
               NotADirectoryError: "a file where a folder is meant",
               PermissionError: "not allowed here"}


def message(error: BaseException) -> str:
    """One line for the user: the project's own errors say it all; a path error says which path and what to do."""
    for kind, what in PATH_ERRORS.items():
        if isinstance(error, kind):
            where = error.filename or "a path"
            return f"{where}: {what} ({error.strerror or error}); check the path, or choose another"
    return str(error)


# A write that found no room, or a disk that turned read-only: a failure while working (exit status 1), said
# in one line. Every write is atomic, so nothing half-written is left under a final name to be believed.
NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file size limit is reached (ulimit -f)",
           errno.EDQUOT: "the disk quota is used up", errno.EROFS: "the file system is read-only"}
# TensorFlow's own file errors (a record or checkpoint writer) carry no errno: '<file>; File too large'
TENSORFLOW_REASONS = {"No space left on device": errno.ENOSPC, "File too large": errno.EFBIG,
                      "Disk quota exceeded": errno.EDQUOT, "Read-only file system": errno.EROFS}
BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away (`| head`)


def no_room(error: BaseException) -> tuple[int, str | None] | None:
    """(errno, file or None) when `error`, or an error it was raised from, is a write that found no room."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_ROOM:
            return seen.errno, seen.filename
        if type(seen).__module__.startswith("tensorflow"):
            text = str(getattr(seen, "message", seen))
            for reason, code in TENSORFLOW_REASONS.items():
                if reason in text:
                    return code, text.split(";")[0].strip() if ";" in text else None
        seen = seen.__cause__ or seen.__context__
    return None


def no_room_message(code: int, path: str | None) -> str:
    """One line: the file, why it could not be written, the free space where it was going."""
    path = temporary_names.final_name(path) if path else None
    folder = os.path.dirname(os.path.abspath(path)) if path and "://" not in path else os.getcwd()
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)  # a temporary folder may be gone by now
    free = f"; {shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder}" if os.path.isdir(folder) else ""
    where = f"cannot write {path}" if path else "a write failed"
    return (f"{where}: {NO_ROOM[code]}{free}; make room (or write elsewhere) and run again: nothing half-written "
            "was kept")


def run_guarded(function, args) -> int:
    """Run a command; turn the project's own errors into a message and an exit status (see above). Output
    into a closed pipe ends the command quietly; a full disk is one line."""
    try:
        status = function(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
    except BrokenPipeError:
        # the reader (`head -1`) has what it wanted; further output (and the flush at exit) goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except tuple(kind for kind, _ in EXIT_STATUS) as error:
        print(f"error: {message(error)}", file=sys.stderr)
        return next(status for kind, status in EXIT_STATUS if isinstance(error, kind))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 -- re-raised unless it is a write that found no room
        room = no_room(error)
        if room is None:
            raise
        print(f"error: {no_room_message(*room)}", file=sys.stderr)
        return 1
    return int(status or 0)
