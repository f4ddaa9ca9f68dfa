"""A full disk, a file size limit, a read-only disk or a closed pipe: one line naming the file (and the free
space), exit status 1 (a closed pipe: quiet, as `head` expects), never a traceback, nothing half-written kept."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

from conftest import REPO, records_argv

from melanoma.core import errors, io_utils

ENVIRONMENT = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_a_write_that_finds_no_room_is_one_line_naming_the_file_and_the_free_space(tmp_path, capsys, monkeypatch):
    target = tmp_path / "run" / "oof.csv"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert errors.run_guarded(lambda args: io_utils.write_text_atomic(str(target), "a,b\n"), None) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {target}: no space left on the device;") and "MiB free in" in err
    assert err.count("\n") == 1 and not os.listdir(target.parent)  # the temporary is gone too


def test_tensorflows_own_file_errors_are_read_and_the_temporary_name_is_the_final_one(tmp_path, capsys):
    class OutOfRangeError(Exception):  # as tensorflow.python.framework.errors_impl words it
        __module__ = "tensorflow.python.framework.errors_impl"

    def writer(args):
        raise OutOfRangeError(f"{tmp_path}/.rec.tmp-0123abcd/.train00-18.tmp-89abcdef.tfrec; File too large")

    assert errors.run_guarded(writer, None) == 1
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path}/rec/train00-18.tfrec: the file size limit is reached (ulimit -f)" in err
    assert errors.run_guarded(lambda args: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only", "x.csv")),
                              None) == 1
    assert "cannot write x.csv: the file system is read-only" in capsys.readouterr().err


def test_records_under_a_file_size_limit_exits_1_in_one_line_and_leaves_nothing(jpeg_data, tmp_path):
    out = tmp_path / "records"
    argv = " ".join(records_argv(jpeg_data, out))
    done = subprocess.run(["bash", "-c", f"ulimit -f 20; {sys.executable} -m melanoma {argv}"], env=ENVIRONMENT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and f"cannot write {out}/train" in done.stderr, done.stderr
    assert "the file size limit is reached" in done.stderr
    assert not out.exists() and not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_score_into_a_closed_pipe_ends_quietly(tmp_path):
    path = tmp_path / "oof.csv"
    path.write_text("image_name,patient_id,target,pred,fold\na,1,0,0.1,0\nb,2,1,0.8,0\nc,3,0,0.3,1\nd,4,1,0.6,1\n")
    process = subprocess.Popen([sys.executable, "-m", "melanoma", "score", str(path), "--bootstrap", "0"],
                               env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before anything is written: `| head -0`
    err = process.stderr.read()
    assert process.wait(timeout=120) == errors.BROKEN_PIPE and "Traceback" not in err and "Broken" not in err, err
