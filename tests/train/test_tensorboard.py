"""TensorBoard beside the CSV histories (train.tensorboard): a fold's scalars are the numbers its history.csv
holds, nothing is written with the key off, only the chief of a cluster writes (the cluster itself:
test_distributed.py), and `make tensorboard` serves them."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import reliability_helpers as helpers
from conftest import write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core import environment
from melanoma.train import tensorboard

TWO_EPOCHS = """\
    train:
      epochs: 2
    """


def test_a_cnn_folds_scalars_are_its_history(tiny_data, tmp_path, monkeypatch):
    helpers.install_tiny_model(monkeypatch)
    path = write_config(tmp_path, tiny_data, TWO_EPOCHS)
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 0
    fold = tmp_path / "outputs" / "tiny" / "fold0"
    history = pd.read_csv(fold / "history.csv")
    scalars = helpers.read_scalars(fold / "tensorboard")
    for column, tag in (("val_auc", "validation/epoch_auc"), ("val_loss", "validation/epoch_loss"),
                        ("loss", "train/epoch_loss"), ("lr", "train/epoch_learning_rate")):
        assert tag in scalars, sorted(scalars)
        assert scalars[tag] == pytest.approx({epoch - 1: value for epoch, value in zip(history["epoch"],
                                                                                  history[column])}, rel=1e-6)
    # a fold trained afresh starts its curves afresh: one event file per folder, two epochs each
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--force"]) == 0
    assert [len(list((fold / "tensorboard" / split).glob("events.*"))) for split in ("train", "validation")] == [1, 1]
    assert sorted(helpers.read_scalars(fold / "tensorboard")["validation/epoch_auc"]) == [0, 1]


def test_nothing_is_written_with_tensorboard_off(tiny_data, tmp_path, monkeypatch):
    helpers.install_tiny_model(monkeypatch)
    path = write_config(tmp_path, tiny_data, "train:\n  tensorboard: false\n")
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 0
    outputs = tmp_path / "outputs"
    assert (outputs / "tiny" / "fold0" / "oof.csv").is_file()
    assert not [p for p in outputs.rglob("*") if p.name == "tensorboard" or "tfevents" in p.name]
    # the key does not bind the run: turning it on trains the next fold of the same run
    assert cli.main(["train", "--config", str(path), "--fold", "1", "--set", "train.tensorboard=true"]) == 0
    assert list((outputs / "tiny" / "fold1" / "tensorboard").rglob("events.*"))
    assert not (outputs / "tiny" / "fold0" / "tensorboard").exists()


def test_only_the_chief_writes(tiny_data, tmp_path, monkeypatch):
    config = config_lib.load_config(write_config(tmp_path, tiny_data))
    assert tensorboard.callback(config, str(tmp_path)) is not None
    monkeypatch.setattr(environment, "is_chief", lambda: False)
    assert tensorboard.callback(config, str(tmp_path)) is None
    tensorboard.write_history(config, str(tmp_path), pd.DataFrame({"epoch": [1], "loss": [0.5]}))
    assert not (tmp_path / "tensorboard").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_tensorboard_serves_the_folds_scalars(tmp_path):
    fold = tmp_path / "outputs" / "run" / "fold0"
    config = config_lib.as_config({"train": {"tensorboard": True}})
    tensorboard.write_history(config, str(fold), pd.DataFrame({"epoch": [1, 2], "loss": [0.7, 0.6],
                                                               "val_auc": [0.6, 0.7]}))
    port = free_port()
    # the test's own Python stands in for .venv's (INSTALLED: nothing to install)
    command = ["make", "-s", "tensorboard", f"LOGDIR={tmp_path / 'outputs'}", f"TENSORBOARD_PORT={port}",
               f"PY={sys.executable}", f"INSTALLED={Path(__file__)}", "CI="]
    process = subprocess.Popen(command, cwd=helpers.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        tags = None
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as answer:
                    tags = answer.read().decode()
                if "run/fold0/tensorboard/validation" in tags:
                    break
            except OSError:
                time.sleep(1)
        assert tags and "run/fold0/tensorboard/validation" in tags and "epoch_auc" in tags, \
            (tags, process.stdout.read().decode() if process.poll() is not None else "")
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
