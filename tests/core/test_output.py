"""Quiet, readable output: TensorFlow's start-up lines filtered out, other stderr kept; progress as plain
lines when the output is not a terminal."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

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


def test_onednn_notes_are_start_up_noise():
    for line in ("I0000 00:00:1796289902.595292   21682 port.cc:153] oneDNN custom operations are on. You may "
                 "see slightly different numerical results due to floating-point round-off errors.",
                 "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"):
        assert not quiet.keep(line)
    assert quiet.keep("E0000 00:00:1.0 1 some_op.cc:12] a real error\n")


def clean_environment(**extra) -> dict:
    """The user's environment: no TF_CPP_MIN_LOG_LEVEL or TF_ENABLE_ONEDNN_OPTS (the tests' own conftest
    sets them)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "MELANOMA_TF_LOGS", "TF_ENABLE_ONEDNN_OPTS")}
    env.update(extra)
    return env


def test_no_onednn_line_in_a_command_that_runs_tensorflow_pipelines(tmp_path):
    """`bench` decodes and augments uint8 images in tf.data, where TensorFlow logs "oneDNN supports DT_UINT8
    only on platforms with AVX-512" at run time on CPUs where oneDNN is on, and imports TensorFlow, which
    logs its start-up lines: none of it reaches the user by default; MELANOMA_TF_LOGS=1 shows it."""
    argv = [sys.executable, "-m", "melanoma", "bench", "--config", "configs/base.yaml", "--set", "data.image_size=32",
            "train.batch_size=8", "tta.prediction_batch_size=16", "tta.steps=2", "tta.mode=dihedral", "--batches", "2",
            "--min-seconds", "0", "--warmup", "1", "--train-images", "24", "--test-images", "6",
            "--records-images", "6", "--score-rows", "200", "--synthetic", "--no-model", "--json"]
    done = subprocess.run(argv, cwd=REPO, env=clean_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "oneDNN" not in done.stderr and "absl::InitializeLog" not in done.stderr, done.stderr
    shown = subprocess.run([sys.executable, "-c", "import melanoma.cli as c; c.quiet_environment(); "
                            "import tensorflow"], cwd=REPO, env=clean_environment(MELANOMA_TF_LOGS="1"),
                           capture_output=True, text=True, timeout=300)
    # TensorFlow printed start-up lines here (which ones depends on the CPU: "oneDNN custom operations are
    # on" where oneDNN is enabled by default, as on AVX-512 CPUs; always the absl line): the filter hid them
    started = [line for line in shown.stderr.splitlines() if not quiet.keep(line, gpu_present=False)]
    assert any("absl::InitializeLog" in line for line in started), shown.stderr
    if quiet.onednn_by_default():  # every command turns oneDNN on, as it is on CPUs where TensorFlow does
        assert "oneDNN custom operations are on" in shown.stderr, shown.stderr


def test_onednn_is_on_unless_the_user_says_otherwise(monkeypatch):
    """x86-64: TF_ENABLE_ONEDNN_OPTS=1 where unset (TensorFlow's own default leaves it off on AVX2-only
    CPUs, at half the training speed), a user's 0 kept; ARM: left to TensorFlow."""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(quiet.platform, "machine", lambda: "x86_64")
    quiet.environment_defaults()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    quiet.environment_defaults()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(quiet.platform, "machine", lambda: "aarch64")
    quiet.environment_defaults()
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ


def test_the_feature_tables_progress_is_plain_lines_in_a_log(tiny_data, tmp_path, capsys, monkeypatch):
    """The trees' image statistics bar, written to a log, is lines, never a terminal's carriage returns."""
    from melanoma.core.config import load_config
    from melanoma.input import features

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    config = load_config(REPO / "configs" / "base.yaml", [
        f"data.train_files={tiny_data['records']}/train*.tfrec", f"data.test_files={tiny_data['records']}/test*.tfrec",
        "data.image_size=32", "features.workers=1", "features.histogram_bins=4", f"output_dir={tmp_path}"])
    features.split_table(config, "test", progress=True)
    err = capsys.readouterr().err
    assert "test image statistics:" in err and "(done)" in err and "\r" not in err
