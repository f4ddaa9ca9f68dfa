"""File I/O that works on local paths and on `gs://` (through tf.io.gfile), with atomic writes.

TensorFlow is imported only for remote paths, so local-only commands (score, validate) start fast.
Every write goes to a temporary name in the same folder and is then renamed over the target, so an
interrupted process never leaves a half-written file under the final name.
"""
from __future__ import annotations

import glob as local_glob
import io
import os
import shutil
import uuid
from typing import Iterable


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _gfile():
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


def read_bytes(path: str) -> bytes:
    path = str(path)
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


def replace(source: str, target: str) -> None:
    if is_remote(target):
        _gfile().rename(source, target, overwrite=True)
    else:
        os.replace(source, target)


def copy(source: str, target: str) -> None:
    """Copy a file (local or gs://), replacing `target`."""
    if is_remote(source) or is_remote(target):
        _gfile().copy(source, target, overwrite=True)
    else:
        shutil.copyfile(source, target)


def write_bytes_atomic(path: str, data: bytes) -> None:
    path = str(path)
    folder = os.path.dirname(path)
    if folder:
        makedirs(folder)
    temporary = temporary_name(path)
    if is_remote(path):
        with _gfile().GFile(temporary, "wb") as handle:
            handle.write(data)
    else:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    replace(temporary, path)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(frame, path: str) -> None:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    write_text_atomic(path, buffer.getvalue())


def read_csv(path: str, **kwargs):
    import pandas as pd

    path = str(path)
    if not exists(path):
        raise FileNotFoundError(f"file not found: {path}")
    if is_remote(path):
        return pd.read_csv(io.BytesIO(read_bytes(path)), **kwargs)
    return pd.read_csv(path, **kwargs)
