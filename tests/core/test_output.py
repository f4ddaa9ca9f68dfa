"""Quiet, readable output: TensorFlow's start-up lines filtered out, other stderr kept; progress as plain
lines when the output is not a terminal."""
from __future__ import annotations

import os

from melanoma.core import progress, quiet


def test_startup_lines_are_filtered_and_other_stderr_kept(capfd):
    with quiet.stderr_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.2 12 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
        os.write(2, b"a real problem during the import\n")
    err = capfd.readouterr().err
    assert err == "a real problem during the import\n"


def test_progress_is_plain_lines_when_not_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    bar = progress.bar(total=3, desc="fold 0 test", unit="img")
    assert isinstance(bar, progress.LogLines)
    with bar:
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "fold 0 test: 1/3 img (33%)" in err and "3/3 img (100%)" in err and "(done)" in err
    assert "\r" not in err
