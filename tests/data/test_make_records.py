"""`records`: a records folder is complete or absent (a bad JPEG, a kill -9 midway and a rerun leave --out
as it was or whole), and an empty or incomplete CSV is one line with exit status 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import reliability_helpers as helpers
from conftest import records_argv, snapshot, write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.data import preflight, record_format

STARTUP_LINES = ("All log messages before absl::InitializeLog()", "Could not find cuda drivers")


def test_records_with_a_bad_jpeg_leaves_the_folder_as_it_was(jpeg_data, tmp_path, capsys):
    out = tmp_path / "records"
    assert cli.main(records_argv(jpeg_data, out)) == 0
    assert sorted(p.name for p in out.glob("train*.tfrec")) and (out / record_format.MANIFEST).is_file()
    before = snapshot(out)
    names = pd.read_csv(jpeg_data / "train.csv")["image_name"]
    bad = names.iloc[len(names) // 2]
    (jpeg_data / "jpeg" / "train" / f"{bad}.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    capsys.readouterr()
    assert cli.main(records_argv(jpeg_data, out)) == 2
    err = capsys.readouterr().err
    assert bad in err and "cannot decode" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # a good rerun replaces the folder whole: no part of the earlier run stays beside the new ones
    (jpeg_data / "jpeg" / "train" / f"{bad}.jpg").write_bytes(
        (Path(jpeg_data) / "jpeg" / "train" / f"{names.iloc[0]}.jpg").read_bytes())
    assert cli.main(records_argv(jpeg_data, out, "--parts", "4")) == 0
    assert len(list(out.glob("train*.tfrec"))) == 4
    assert record_format.folder_problem(str(out)) is None


def stalled_records_command(argv: list[str], marker: Path, after: int) -> list[str]:
    """`python -m melanoma records ...` that stops after writing `after` images until it is killed."""
    bootstrap = (
        "import sys, time, os\n"
        f"sys.path[:0] = [{str(helpers.REPO / 'src')!r}]\n"
        "from melanoma import cli\n"
        "from melanoma.data import record_format\n"
        "serialize, written = record_format.serialize_example, []\n"
        "def stalling(*args):\n"
        f"    if len(written) == {after}:\n"
        f"        open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(600)\n"
        "    written.append(1)\n"
        "    return serialize(*args)\n"
        "record_format.serialize_example = stalling\n"
        f"sys.exit(cli.main({argv!r}))\n"
    )
    return [sys.executable, "-c", bootstrap]


def kill_midway(argv: list[str], tmp_path: Path, after: int = 60) -> str:
    """Run records in a subprocess, kill -9 it midway; returns its stderr."""
    marker = tmp_path / "stalled"
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    log = tmp_path / "records.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(stalled_records_command(argv, marker, after), cwd=helpers.REPO,
                                   env=environment, stdout=subprocess.DEVNULL, stderr=handle)
        try:
            deadline = time.time() + 240
            while not marker.exists():
                assert process.poll() is None, f"records ended before it was killed:\n{log.read_text()}"
                assert time.time() < deadline, f"records never reached image {after}:\n{log.read_text()}"
                time.sleep(0.1)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    marker.unlink()
    return log.read_text()


def test_records_killed_midway_leaves_nothing_that_training_would_take(jpeg_data, tmp_path, tiny_data, capsys,
                                                                       monkeypatch):
    out = tmp_path / "records"
    stderr = kill_midway(records_argv(jpeg_data, out), tmp_path)
    # 8: TensorFlow was imported in that process, and none of its start-up lines reached the user
    assert not any(line in stderr for line in STARTUP_LINES), stderr
    assert not out.exists(), "a killed records must not leave a folder under its final name"
    assert [p.name for p in tmp_path.glob(".records.tmp-*")], "the half-written folder is hidden aside"

    from melanoma.model import network as model

    monkeypatch.setattr(model, "build_model", helpers.build_tiny_model)
    path = write_config(tmp_path, tiny_data)
    argv = ["train", "--config", str(path), "--fold", "0", "--set", f"data.train_files={out}/train*.tfrec",
            f"data.test_files={out}/test*.tfrec"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "does not exist" in err and not (tmp_path / "outputs").exists()

    # a complete folder, then a rerun killed midway: the complete folder is untouched
    assert cli.main(records_argv(jpeg_data, out)) == 0
    assert not list(tmp_path.glob(".records.tmp-*")), "an abandoned folder is removed by the next run"
    before = snapshot(out)
    kill_midway(records_argv(jpeg_data, out, "--parts", "4"), tmp_path)
    assert snapshot(out) == before
    preflight.check_inputs(config_lib.load_config(path, argv[-2:]), "train")  # complete: accepted


def test_records_of_an_empty_or_incomplete_csv_is_one_line(jpeg_data, tmp_path, capsys):
    out = tmp_path / "records"
    (jpeg_data / "train.csv").write_text("")
    assert cli.main(records_argv(jpeg_data, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.csv is empty" in err and "Traceback" not in err
    assert not out.exists()
    pd.DataFrame({"image_name": ["a"], "patient_id": ["p"]}).to_csv(jpeg_data / "train.csv", index=False)
    assert cli.main(records_argv(jpeg_data, out)) == 2
    assert "lacks column(s) sex, age_approx" in capsys.readouterr().err


def test_fewer_parts_than_asked_is_a_plain_note_not_a_python_warning(jpeg_data, tmp_path, capsys):
    """The tiny data's 30 patients cannot fill 20 parts: `records` says so in a `note:` line, never in Python's
    warning format (a source file, a line number and the line of code)."""
    import warnings

    from melanoma.data import folds

    with warnings.catch_warnings():
        warnings.simplefilter("error", folds.FewPatientsWarning)  # one that escaped would fail the command
        assert cli.main(records_argv(jpeg_data, tmp_path / "records", "--parts", "20")) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "cannot fill 20 parts" in err and err.count("\n") == 1, err
    assert ".py:" not in err and "Warning" not in err
