"""A training process killed (SIGKILL) in the middle of an epoch resumes with --resume after its last
completed epoch: history continuous with no epoch repeated, the learning rate where the schedule has
it, the optimizer state carried over, and no file that looks complete but is not."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import reliability_helpers as helpers
from conftest import write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core import io_utils
from melanoma.train import schedules

EPOCHS = 4
STEPS = 2
KILLED_IN_EPOCH = 3  # 1-based: epochs 1 and 2 are complete when the process dies


def wait_for(marker, process, log, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if marker.exists():
            return
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before it was killed:\n{log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"training did not reach the middle of epoch {KILLED_IN_EPOCH} in time:\n{log.read_text()}")


def test_killed_fold_resumes_from_its_last_completed_epoch(tiny_data, tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path, tiny_data, f"""\
        train:
          epochs: {EPOCHS}
          batch_size: 8
          steps_per_epoch: {STEPS}
          verbose: 0
          schedule: cosine
          lr_ramp_epochs: 1
          lr_start: 1.0e-4
          lr_peak_per_image: 1.0e-3
          lr_min: 1.0e-5
          checkpoint: best_loss
        """)
    config = config_lib.load_config(path)
    fold = tmp_path / "outputs" / "tiny" / "fold0"
    marker = tmp_path / "in-epoch-3"
    environment = dict(os.environ, PYTHONPATH=str(helpers.REPO / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    log = tmp_path / "train.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            helpers.train_script_command(path, 0, stall_epoch=KILLED_IN_EPOCH - 1, stall_batch=1, marker=marker),
            cwd=helpers.REPO, env=environment, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(marker, process, log)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL

    state = json.loads((fold / "state.json").read_text())
    assert state["epoch"] == KILLED_IN_EPOCH - 1
    assert pd.read_csv(fold / "history.csv")["epoch"].tolist() == [1, 2]
    val_epochs_before = pd.read_csv(fold / "val_epochs.csv")
    assert sorted(val_epochs_before["epoch"].unique()) == [1, 2]
    assert not (fold / "oof.csv").exists()
    best_before = (fold / "model.keras").read_bytes()
    # what a kill during a save leaves behind: a temporary file, which never looks complete
    leftover = fold / ".oof.tmp-0123abcd.csv"
    leftover.write_text("image_name,patient_id,target,pred,fold\nISIC_0,1,0,0.5,0\n")
    assert io_utils.leftovers(str(fold)) == [str(leftover)]

    # inference leaves the half-trained fold out of an ensemble
    from melanoma.predict import inference
    from melanoma.train.families import family as family_lib

    assert inference.trained_folds(config, family_lib.lookup(config)) == []
    # without --resume the interrupted fold is neither restarted nor continued
    helpers.install_tiny_model(monkeypatch)
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 2
    assert "interrupted after epoch 2 of 4" in capsys.readouterr().err

    # python train.py --config C --fold 0 --resume (in this process: the same entry point)
    steps_seen = []
    import keras

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps_seen.append((epoch + 1, int(self.model.optimizer.iterations.numpy())))

    helpers.add_callback(Count, monkeypatch)
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 2 of 4" in out and "removed 1 temporary file(s)" in out

    # epochs 3 and 4 ran once each, starting with the optimizer's step count of epochs 1-2
    assert steps_seen == [(3, 2 * STEPS), (4, 3 * STEPS)]
    history = pd.read_csv(fold / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    global_batch = config.train.batch_size
    expected_lr = [schedules.learning_rate(e, config.train, global_batch) for e in range(EPOCHS)]
    np.testing.assert_allclose(history["lr"], expected_lr, rtol=1e-6)
    np.testing.assert_allclose(history["learning_rate"], expected_lr, rtol=1e-5)  # what the optimizer used
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["val_loss"]).all()

    # val_epochs.csv continues: epochs 1-2 as written before the kill, then 3 and 4, every image once each
    val_epochs = pd.read_csv(fold / "val_epochs.csv")
    names = sorted(val_epochs_before.loc[val_epochs_before["epoch"] == 1, "image_name"])
    assert sorted(val_epochs["epoch"].unique()) == list(range(1, EPOCHS + 1))
    for epoch in range(1, EPOCHS + 1):
        assert sorted(val_epochs.loc[val_epochs["epoch"] == epoch, "image_name"]) == names
    pd.testing.assert_frame_equal(val_epochs[val_epochs["epoch"] <= 2].reset_index(drop=True), val_epochs_before)

    state = json.loads((fold / "state.json").read_text())
    assert state["epoch"] == EPOCHS and state["pending_best"] is None
    best = int(history["val_loss"].idxmin()) + 1
    assert state["best_epoch"] == best and state["best"] == pytest.approx(history["val_loss"].min())
    if best <= 2:
        assert (fold / "model.keras").read_bytes() == best_before
    for name in ("model.keras", "last.keras", "history.csv", "oof.csv"):
        assert (fold / name).is_file(), name
    assert not leftover.exists() and not io_utils.leftovers(str(fold))
    oof = io_utils.read_csv(str(fold / "oof.csv"))
    assert oof["image_name"].is_unique and np.isfinite(oof["pred"]).all()

    last = keras.models.load_model(fold / "last.keras", compile=True)
    assert int(last.optimizer.iterations.numpy()) == EPOCHS * STEPS

    # a finished fold is skipped by --fold 0 / all, even with --resume
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--resume"]) == 0
    assert "fold 0: already finished" in capsys.readouterr().out


def test_a_committed_best_checkpoint_is_completed_on_resume(tiny_data, tmp_path, capsys, monkeypatch):
    """Killed after state.json named a new best but before its rename: resume renames it into place."""
    helpers.install_tiny_model(monkeypatch)
    path = write_config(tmp_path, tiny_data, "train:\n  epochs: 1\n  batch_size: 8\n  steps_per_epoch: 1\n"
                                              "  verbose: 0\n  checkpoint: last\n")
    fold = tmp_path / "outputs" / "tiny" / "fold0"
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 0
    # rebuild the moment between the two steps of epoch 1's commit
    pending = fold / ".model.tmp-feedbeef.keras"
    (fold / "model.keras").rename(pending)
    (fold / "model.keras").write_bytes(b"an older checkpoint")
    (fold / "oof.csv").unlink()
    state = json.loads((fold / "state.json").read_text())
    state["pending_best"] = pending.name
    (fold / "state.json").write_text(json.dumps(state))
    expected = pending.read_bytes()
    capsys.readouterr()
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--resume"]) == 0
    assert "completed the interrupted save of the best checkpoint" in capsys.readouterr().out
    assert (fold / "model.keras").read_bytes() == expected and not pending.exists()


def test_resume_with_nothing_to_resume_is_refused(tiny_data, tmp_path, capsys):
    path = write_config(tmp_path, tiny_data)
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "without --resume" in err
    assert not (tmp_path / "outputs").exists()


def test_a_kill_between_the_state_and_the_history_resumes_after_the_state(tiny_data, tmp_path, capsys, monkeypatch):
    """kill -9 right after state.json committed epoch 2 and before history.csv followed: the history shows
    epoch 1 and the state epoch 2 (never the reverse); --resume continues after epoch 2, the history catches
    up from the state, and the dead process's lock is taken over with a line."""
    path = write_config(tmp_path, tiny_data, "train:\n  epochs: 3\n  batch_size: 8\n  steps_per_epoch: 2\n"
                                              "  verbose: 0\n  checkpoint: last\n")
    fold = tmp_path / "outputs" / "tiny" / "fold0"
    done = subprocess.run(helpers.script_command("train.py", ["--config", path, "--fold", "0"],
                                                 "h.kill_after_state(2)\n"),
                          cwd=helpers.REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert json.loads((fold / "state.json").read_text())["epoch"] == 2
    assert pd.read_csv(fold / "history.csv")["epoch"].tolist() == [1]
    assert (tmp_path / "outputs" / "tiny" / ".lock").exists()  # the dead process's

    helpers.install_tiny_model(monkeypatch)
    epochs_run = []
    import keras

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch + 1)

    helpers.add_callback(Count, monkeypatch)
    capsys.readouterr()
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resuming after epoch 2 of 3" in captured.out and epochs_run == [3]
    assert "took over the lock" in captured.err and "which is gone" in captured.err
    history = pd.read_csv(fold / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and np.isfinite(history["loss"]).all()
    state = json.loads((fold / "state.json").read_text())
    assert state["epoch"] == 3 and [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert not (tmp_path / "outputs" / "tiny" / ".lock").exists()
