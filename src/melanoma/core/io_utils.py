"""File I/O that works on local paths and on `gs://` (through tf.io.gfile), with atomic writes.

TensorFlow is imported only for remote paths, so local-only commands (score, validate) start fast.
Every write goes to a temporary name in the same folder and is then renamed over the target, so an
interrupted process never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import glob as local_glob
import io
import os
import shutil
import uuid
from typing import Callable, Iterable

import pandas as pd

from melanoma.core.errors import ConfigError, DataError
from melanoma.core.temporary_names import TEMPORARY


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _gfile():
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    return tf.io.gfile


def exists(path: str) -> bool:
    path = str(path)
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    path = str(path)
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    path = str(path)
    return sorted(_gfile().listdir(path) if is_remote(path) else os.listdir(path))


def makedirs(path: str) -> None:
    path = str(path)
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def glob(patterns: str | Iterable[str]) -> list[str]:
    """Sorted, de-duplicated matches of one glob or a list of globs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    found: set[str] = set()
    for pattern in patterns:
        pattern = str(pattern)
        found.update(_gfile().glob(pattern) if is_remote(pattern) else local_glob.glob(pattern))
    return sorted(found)


def folder_given_for_file(path: str) -> DataError:
    """The error for a folder where a file is expected, naming the files in it that might be meant."""
    try:
        inside = [name for name in listdir(path) if not name.startswith(".")]
    except OSError:
        inside = []
    # a run folder holds config.yaml and oof.csv: the predictions are what a file argument most often means
    meant = sorted((name for name in inside if name.endswith((".csv", ".json", ".yaml"))),
                   key=lambda name: (not name.endswith(".csv"), name))[:3]
    hint = f" (it holds {', '.join(meant)}: give {os.path.join(path, meant[0])}?)" if meant else ""
    return DataError(f"{path} is a folder, not a file: give the file itself{hint}")


def read_bytes(path: str) -> bytes:
    path = str(path)
    if isdir(path):
        raise folder_given_for_file(path)
    if is_remote(path):
        with _gfile().GFile(path, "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def temporary_name(path: str) -> str:
    """A sibling of `path` that keeps its extension (Keras insists on `.keras`)."""
    folder, name = os.path.split(str(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:8]}{ext}")


def leftovers(folder: str, stem: Callable[[str], bool] | None = None) -> list[str]:
    """The temporary files and folders in `folder` that a killed process left (only those whose stem,
    the target's name without its extension, passes `stem`, when given)."""
    if not isdir(folder):
        return []
    found = []
    for name in listdir(folder):
        match = TEMPORARY.match(name.rstrip("/"))
        if match and (stem is None or stem(match["stem"])):
            found.append(os.path.join(folder, name.rstrip("/")))
    return found


def remove_leftovers(folder: str, stem: Callable[[str], bool] | None = None) -> list[str]:
    """Remove `leftovers(folder, stem)`, saying so in one line; returns what was removed. Call it only
    where no other process may be writing the same names (a run's folders under its lock)."""
    removed = leftovers(folder, stem)
    for path in removed:
        remove_tree(path)
    if removed:
        names = ", ".join(os.path.basename(path) for path in removed[:3])
        more = f" and {len(removed) - 3} more" if len(removed) > 3 else ""
        print(f"{folder}: removed {len(removed)} temporary file(s) left by an interrupted run ({names}{more})")
    return removed


def replace(source: str, target: str) -> None:
    if is_remote(target):
        _gfile().rename(source, target, overwrite=True)
    else:
        os.replace(source, target)


def remove(path: str) -> None:
    """Remove a file (local or gs://)."""
    path = str(path)
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def copy(source: str, target: str) -> None:
    """Copy a file (local or gs://), replacing `target`."""
    if is_remote(source) or is_remote(target):
        _gfile().copy(source, target, overwrite=True)
    else:
        shutil.copyfile(source, target)


def write_bytes_atomic(path: str, data: bytes) -> None:
    path = str(path)
    if isdir(path):
        raise DataError(f"{path} is a folder; give the path of a file to write")
    folder = os.path.dirname(path)
    if folder:
        makedirs(folder)
    temporary = temporary_name(path)
    try:
        if is_remote(path):
            with _gfile().GFile(temporary, "wb") as handle:
                handle.write(data)
        else:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:  # a full disk: no half-written temporary left, and the message names the file
        with contextlib.suppress(OSError):
            remove(temporary)
        if error.filename is None:
            error.filename = path
        raise
    replace(temporary, path)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(frame, path: str) -> None:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    write_text_atomic(path, buffer.getvalue())


def read_csv(path: str, **kwargs):
    """pandas.read_csv; a missing file is FileNotFoundError, an empty or unparsable one a DataError naming it."""
    path = str(path)
    if not exists(path):
        raise FileNotFoundError(f"file not found: {path}")
    if isdir(path):
        raise folder_given_for_file(path)
    try:
        if is_remote(path):
            return pd.read_csv(io.BytesIO(read_bytes(path)), **kwargs)
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty (no header, no rows): give the CSV file itself") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a readable CSV file ({first})") from None


# --- folders that are complete or absent ------------------------------------------------------------

INCOMPLETE_MARKER = ".incomplete"  # in a remote folder while its files are moved into place


def remove_tree(path: str) -> None:
    path = str(path)
    if is_remote(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def move(source: str, target: str) -> None:
    """Move a file or a folder (on a cloud bucket, file by file)."""
    source, target = str(source).rstrip("/"), str(target).rstrip("/")
    if not is_remote(source):
        os.rename(source, target)
        return
    gfile = _gfile()
    if not gfile.isdir(source):
        gfile.rename(source, target, overwrite=True)
        return
    for folder, _, files in gfile.walk(source):
        relative = os.path.relpath(folder.rstrip("/"), source)
        destination = target if relative == "." else os.path.join(target, relative)
        gfile.makedirs(destination)
        for name in files:
            gfile.rename(os.path.join(folder, name), os.path.join(destination, name), overwrite=True)
    gfile.rmtree(source)


def temporary_folder_name(path: str) -> str:
    """A hidden sibling of folder `path`: `.<name>.tmp-<hex>`; no glob of the folder's files matches it."""
    parent, name = os.path.split(str(path).rstrip("/"))
    return os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


# In every folder written whole: names the command that wrote it, so that a later run may replace it (and
# nothing else: a file or a folder of the user's own is never deleted to make room).
WRITTEN_BY = ".written-by"


def writer_of(path: str) -> str | None:
    """The command named by `path`'s marker, or None (no marker, or not a folder)."""
    marker = os.path.join(str(path), WRITTEN_BY)
    if not exists(marker):
        return None
    return read_text(marker).strip().removeprefix("melanoma ").strip() or None


def check_replaceable(path: str, command: str, own: Callable[[list[str]], bool] | None = None,
                      flag: str = "--out") -> None:
    """Refuse (ConfigError, exit 2) to replace `path` unless it is absent, an empty folder, or a folder
    `command` wrote whole (its marker names `command`; `own(names)` vouches for folders written before
    the marker existed). A file or a foreign folder is named and left untouched."""
    path = str(path).rstrip("/") or "/"
    if not exists(path):
        return
    if not isdir(path):
        raise ConfigError(f"{flag} {path} is a file, and `{command}` writes a whole folder there: give a new "
                          "folder (the file is left as it is)")
    names = [name.rstrip("/") for name in listdir(path)]
    writer = writer_of(path) if WRITTEN_BY in names else None
    if not names or writer == command or (writer is None and own is not None and own(names)):
        return
    if writer is not None:
        raise ConfigError(f"{flag} {path} was written by `{writer}`, not `{command}`; `{command}` replaces its "
                          "folder whole: give a folder of its own")
    shown = ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise ConfigError(f"{flag} {path} is a folder that `{command}` did not write (it holds {shown}); "
                      f"`{command}` replaces its folder whole: give a new or empty folder (nothing was removed)")


@contextlib.contextmanager
def folder_written_whole(path: str, last: str | None = None, command: str | None = None,
                         own: Callable[[list[str]], bool] | None = None):
    """Fill a temporary folder (yielded), then put it in place of `path` whole.

    `command` names the writer: an existing `path` is replaced only if that command wrote it
    (check_replaceable; `own` vouches for folders from before the marker), and the new folder carries
    the marker. Commands call check_replaceable themselves before long work; this check is the net.

    Locally the temporary folder is renamed over `path` (an old folder is first renamed aside, then
    removed): a process killed at any point leaves `path` as it was or complete, never partly written,
    and never old and new files side by side. If the body raises, the temporary folder is removed.
    A cloud bucket has no folder rename: there the old files are removed, `path/.incomplete` is written,
    the files are moved one by one (`last` moved last), and the marker removed; readers refuse a folder
    with the marker (see record_format.folder_problem).
    """
    path = str(path).rstrip("/")
    if command is None:
        raise TypeError("folder_written_whole needs the command that writes the folder (command=...)")
    check_replaceable(path, command, own)
    temporary = temporary_folder_name(path)
    makedirs(temporary)
    try:
        write_text_atomic(os.path.join(temporary, WRITTEN_BY), f"melanoma {command}\n")
        yield temporary
    except BaseException:
        remove_tree(temporary)
        raise
    if not is_remote(path):
        old = None
        if os.path.exists(path):
            old = temporary_folder_name(path).replace(".tmp-", ".old-")
            os.rename(path, old)
        os.rename(temporary, path)
        if old:
            remove_tree(old)
        return
    gfile = _gfile()
    remove_tree(path)
    gfile.makedirs(path)
    marker = os.path.join(path, INCOMPLETE_MARKER)
    write_text_atomic(marker, "files are being moved into this folder\n")
    names = sorted(name.rstrip("/") for name in gfile.listdir(temporary))
    if last in names:
        names = [name for name in names if name != last] + [last]
    for name in names:
        gfile.rename(os.path.join(temporary, name), os.path.join(path, name), overwrite=True)
    gfile.remove(marker)
    remove_tree(temporary)
