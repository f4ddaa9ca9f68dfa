"""One writer per run (runs/run_lock.py): a second train (or infer) on a run being trained exits 2 at once,
naming the holder's PID and host, and the first one's files stay whole; a lock left by a process that is
gone is taken over with a line saying so."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import reliability_helpers as helpers
from conftest import write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.runs import run_lock

BODY = "train:\n  epochs: 2\n  batch_size: 8\n  steps_per_epoch: 2\n  verbose: 0\n"


def wait_for(marker, process, log, seconds=300):
    deadline = time.time() + seconds
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before it paused:\n{log.read_text()}")
        if time.time() > deadline:
            pytest.fail(f"training did not reach its pause in time:\n{log.read_text()}")
        time.sleep(0.1)


def test_a_second_train_on_a_run_being_trained_exits_2_and_the_first_finishes_whole(tiny_data, tmp_path):
    path = write_config(tmp_path, tiny_data, BODY)
    run = tmp_path / "outputs" / "tiny"
    marker, release, log = tmp_path / "paused", tmp_path / "go-on", tmp_path / "first.log"
    pause = f"h.add_callback(lambda: h.pause_callback(1, 0, {str(marker)!r}, {str(release)!r}))\n"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with open(log, "w") as output:
        first = subprocess.Popen(helpers.script_command("train.py", ["--config", path, "--fold", "all"], pause),
                                 cwd=helpers.REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(marker, first, log)  # in epoch 2 of fold 0, holding the run's lock
            started = time.monotonic()
            second = subprocess.run(helpers.script_command("train.py", ["--config", path, "--fold", "all"]),
                                    cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=300)
            waited = time.monotonic() - started
            infer = subprocess.run(helpers.script_command("infer.py", ["--config", path, "--allow-partial"]),
                                   cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=300)
        finally:
            release.write_text("go")
            code = first.wait(timeout=600)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"PID {first.pid} on {socket.gethostname()}" in second.stderr and "Traceback" not in second.stderr
    assert "one process writes a run at a time" in second.stderr
    assert waited < 60  # at once: before any model is built (no TensorFlow was loaded to refuse)
    assert infer.returncode == 2 and f"PID {first.pid}" in infer.stderr
    assert code == 0, log.read_text()

    # the first training's files are whole: both folds, every epoch, no leftovers, no lock
    for fold in (0, 1):
        folder = run / f"fold{fold}"
        state = json.loads((folder / "state.json").read_text())
        assert state["epoch"] == 2 and pd.read_csv(folder / "history.csv")["epoch"].tolist() == [1, 2]
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert len(pd.read_csv(run / "oof.csv")) == len(pd.read_csv(tiny_data["train_csv"]))
    assert not (run / ".lock").exists()


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over(tiny_data, tmp_path, capsys, monkeypatch):
    helpers.install_tiny_model(monkeypatch)
    path = write_config(tmp_path, tiny_data, BODY.replace("epochs: 2", "epochs: 1"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / "outputs" / "tiny"
    run.mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "command": "train",
                                           "started": "2026-01-01T00:00:00Z", "token": "abc123"}))
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock {run / '.lock'} left by PID {gone.pid}" in err and "which is gone" in err
    assert not (run / ".lock").exists() and (run / "fold0" / "oof.csv").is_file()


def test_the_lock_refuses_a_live_holder_and_goes_with_its_holder(tiny_data, tmp_path):
    """In one process: a held lock refuses a second acquire (naming this PID), and release removes the
    file and the run folder the lock created."""
    config = config_lib.load_config(write_config(tmp_path, tiny_data))
    with run_lock.hold(config, "train") as lock:
        holder = json.loads(open(lock.path).read())
        assert holder["pid"] == os.getpid() and holder["command"] == "train" and len(holder["token"]) == 12
        with pytest.raises(config_lib.ConfigError, match=f"PID {os.getpid()} on {socket.gethostname()}"):
            run_lock.acquire(config, "infer")
    assert not (tmp_path / "outputs" / "tiny").exists()


def test_temporary_files_a_killed_run_left_are_removed_with_a_line_by_the_next_run(run_copy, tmp_path, capsys):
    """What a kill -9 leaves (hidden .<name>.tmp-<hex> files) never looks complete, and the next train or
    infer of the run removes it from the folders it touches, saying so."""
    run = tmp_path / "outputs" / "tiny"
    left = [run / ".config.tmp-0123abcd.yaml", run / "fold0" / ".test.tmp-0123abcd.csv",
            run / "fold1" / ".last.tmp-89abcdef.keras"]
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    left.append(submissions / ".tiny.tmp-0123abcd.csv")
    other = submissions / ".other-run.tmp-0123abcd.csv"  # another run's: not this run's to remove
    for path in left + [other]:
        path.write_text("half")
    assert cli.main(["infer", "--config", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert not any(path.exists() for path in left) and other.exists()
    assert out.count("temporary file(s) left by an interrupted run") == 4
    (run / ".oof.tmp-0123abcd.csv").write_text("half")
    assert cli.main(["train", "--config", str(run_copy), "--fold", "all"]) == 0  # every fold finished
    assert f"{run}: removed 1 temporary file(s)" in capsys.readouterr().out
    assert not (run / ".oof.tmp-0123abcd.csv").exists()
