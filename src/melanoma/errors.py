"""Errors that reach the user as one clear line and an exit status, never a traceback."""
from __future__ import annotations

import sys

from melanoma.config import ConfigError


class DataError(ValueError):
    """Bad input data: a missing column, a corrupt record, an undecodable image (names file and image)."""


class CheckFailed(RuntimeError):
    """A check the user asked for did not pass (a submission that does not validate, a leak)."""


class ExternalToolError(RuntimeError):
    """An outside tool (the Kaggle CLI) failed or is not set up; the message says what to do."""


def run_guarded(function, args) -> int:
    """Run a command; turn the project's own errors into a message and an exit status.

    2: bad input found before any work (config, missing file); 1: a failed check or operation.
    Anything else is a bug and keeps its traceback.
    """
    try:
        status = function(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataError, CheckFailed, ExternalToolError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
