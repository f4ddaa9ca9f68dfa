"""The Kaggle CLI as a subprocess: where its credentials are, where it is installed, and running it with a
clear message when it is missing, not set up, or fails. `data` downloads with it, `submit` and
`leaderboard` upload and read scores with it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from melanoma.core.errors import ExternalToolError, SetupError

COMPETITION = "siim-isic-melanoma-classification"


UPLOAD_TIMEOUT_S = 30 * 60


# The Kaggle CLI prints these and may still exit 0.
FAILURE_MARKERS = ("Could not submit to competition", "Could not find competition")


CREDENTIALS_HELP = (
    "create an API token at https://www.kaggle.com/settings (API -> Create New Token) and save it as "
    "~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); "
    "KAGGLE_CONFIG_DIR moves the folder that holds kaggle.json"
)


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
