"""One writer per run: `<output_dir>/<name>/.lock`, held while `train` or `infer` writes the run's files.

The lock is an exclusive `flock` on that file, which the kernel releases when the process ends (`kill -9`
included); the file itself says who holds it: PID, host, command, start time, and a token. A second
process finds the lock taken and stops at once with exit status 2, naming the holder. A lock file whose
flock nobody holds was left by a process that is gone: it is taken over, with a line saying so. Where
`flock` does not work (cloud storage, some network disks) the file alone is the lock: one left on this
host by a PID that no longer runs is taken over; one from another host is refused, and the message says
which file to remove once that process is known to be gone. The lock file is removed on release (and the
run folder with it when the command created the folder and left nothing else there).

On a multi-worker cluster the chief holds the lock. Every worker then proves, before any training, that
it sees the chief's output_dir: the chief's token travels to every worker through the cluster's own
collective operations, and each worker reads the lock file back from its own output_dir
(`check_cluster_token`). A worker that sees another folder (or none) stops the whole cluster with exit
status 2 naming the folder.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass

from melanoma.core import environment, io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.runs import layout

try:
    import fcntl
except ImportError:  # not on Windows: the file alone is the lock there
    fcntl = None


@dataclass
class Lock:
    path: str
    token: str
    handle: object | None  # the open file that holds the flock (None: the file alone is the lock)
    created: list[str]     # the folders acquire made (the run folder, output_dir), deepest first


def holder_of(path: str) -> dict:
    """What a lock file says about its holder ({} when it is empty or unreadable)."""
    try:
        value = json.loads(io_utils.read_text(path) or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _holder_text(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
            f"since {holder.get('started', '?')})")


def _busy(config: Config, path: str, holder: dict, removable: bool = False) -> ConfigError:
    extra = (f"; if that process is gone (it ran on another machine, which this one cannot ask), remove {path}"
             if removable else "")
    return ConfigError(f"run '{config.name}' is being written by {_holder_text(holder)} (lock {path}): one process "
                       f"writes a run at a time. Wait for it to end or stop it, or give this one another "
                       f"name (--set name=...){extra}")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or nothing to check: assume it runs
    return True


def _content(command: str, token: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": token}) + "\n"


def _took_over(config: Config, path: str, holder: dict) -> None:
    if holder.get("pid"):
        print(f"run {config.name}: took over the lock {path} left by {_holder_text(holder)}, which is gone",
              file=sys.stderr)


def _flock(config: Config, path: str):
    """The open, flocked lock file; ConfigError when another process holds it; None where flock does not work."""
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_of(path)
            handle.close()
            raise _busy(config, path, holder) from None
        except OSError as error:
            handle.close()
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        # The holder removes the file when it ends: make sure the file flocked is still the one at `path`.
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()


def acquire(config: Config, command: str) -> Lock:
    """Hold the run's lock for `command` ('train', 'infer'); ConfigError (exit 2) when another process holds it."""
    folder = layout.run_dir(config)
    path = os.path.join(folder, layout.RUN_LOCK)
    created = _missing_folders(folder)
    io_utils.makedirs(folder)
    token = secrets.token_hex(6)
    handle = _flock(config, path) if fcntl is not None and not io_utils.is_remote(path) else None
    holder = holder_of(path) if io_utils.exists(path) else {}
    if handle is None and holder:  # the file alone is the lock
        here = holder.get("host") == socket.gethostname()
        if not here or _pid_alive(holder.get("pid")):
            raise _busy(config, path, holder, removable=not here)
    _took_over(config, path, holder)
    if handle is not None:
        handle.seek(0)
        handle.truncate()
        handle.write(_content(command, token))
        handle.flush()
        os.fsync(handle.fileno())
    else:
        io_utils.write_text_atomic(path, _content(command, token))
    return Lock(path=path, token=token, handle=handle, created=created)


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those of its parents that do not exist yet, deepest first (none on cloud storage)."""
    if io_utils.is_remote(folder):
        return []
    missing = []
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def release(lock: Lock) -> None:
    """Remove the lock file, then let go of it; the folders acquire made go too when nothing else is in them."""
    with contextlib.suppress(FileNotFoundError):
        if io_utils.is_remote(lock.path):
            io_utils.remove(lock.path)
        else:
            os.remove(lock.path)
    if lock.handle is not None:
        lock.handle.close()
    for folder in lock.created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty


@contextlib.contextmanager
def hold(config: Config, command: str, chief: bool = True):
    """The run's lock for the block (the chief's; other workers of a cluster hold none and get None)."""
    if not chief:
        yield None
        return
    lock = acquire(config, command)
    try:
        yield lock
    finally:
        release(lock)


def check_cluster_token(config: Config, lock: Lock | None) -> None:
    """On a multi-worker cluster: every worker reads the chief's token back from its own output_dir.
    ConfigError (exit 2) on every worker when one of them does not see it, naming that worker's folder."""
    # the token travels through the cluster's collective operations, which need TensorFlow
    from melanoma.core import hardware

    path = os.path.join(layout.run_dir(config), layout.RUN_LOCK)
    chief_token = hardware.from_chief(int(lock.token, 16) if lock is not None else 0)
    seen = holder_of(path).get("token") if io_utils.exists(path) else None
    mine = seen is not None and int(str(seen), 16) == chief_token
    if hardware.all_agree(mine):
        return
    kind, index = environment.worker_task()
    where = os.path.abspath(layout.run_dir(config)) if not io_utils.is_remote(path) else path
    if not mine:
        raise ConfigError(f"{kind} {index} of the cluster does not see the chief's output_dir: {where} holds "
                          f"{'another run lock' if seen else 'no lock of the chief'}. Every worker must write "
                          "into the same output_dir (a shared disk or gs://): give them all the same one")
    raise ConfigError(f"a worker of the cluster does not see this output_dir ({where}), so the cluster stops "
                      "before training; give every worker the same output_dir (a shared disk or gs://)")
