"""Checks before any work (data/preflight.py): input files and records folders, folds against the parts,
writable folders; each problem named with its key, exit status 2, nothing written."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import reliability_helpers as helpers
from conftest import snapshot, write_config

from melanoma import cli
from melanoma.data import record_format


def test_training_refuses_a_records_folder_that_is_not_complete(tiny_data, tmp_path, capsys, monkeypatch):
    from melanoma.model import network as model

    monkeypatch.setattr(model, "build_model", helpers.build_tiny_model)
    path = write_config(tmp_path, tiny_data)
    # what an earlier version left after a kill: finished parts, one half-written part, no CSV
    partial = tmp_path / "partial"
    partial.mkdir()
    parts = sorted(tiny_data["records"].glob("train*.tfrec"))
    for part in parts[:3]:
        shutil.copy(part, partial / part.name)
    (partial / f".{parts[3].stem}.tmp-0123abcd.tfrec").write_bytes(parts[3].read_bytes()[:500])
    assert cli.main(["train", "--config", str(path), "--set", f"data.train_files={partial}/train*.tfrec"]) == 2
    err = capsys.readouterr().err
    assert f"folder {partial}" in err and "half-written" in err and "records" in err
    # a manifest that lists a part that is not there
    listed = tmp_path / "listed"
    shutil.copytree(tiny_data["records"], listed)
    record_format.write_manifest(str(listed))
    (listed / parts[5].name).unlink()
    assert cli.main(["train", "--config", str(path), "--set", f"data.train_files={listed}/train*.tfrec"]) == 2
    err = capsys.readouterr().err
    assert f"folder {listed}" in err and parts[5].name in err
    assert not (tmp_path / "outputs").exists()


def test_a_missing_sample_submission_stops_training_before_any_work(tiny_data, tmp_path, capsys):
    """infer needs it after training: train checks it first (unless there is no test set)."""
    path = write_config(tmp_path, tiny_data)
    assert cli.main(["train", "--config", str(path), "--set", f"data.sample_submission={tmp_path}/none.csv"]) == 2
    err = capsys.readouterr().err
    assert "data.sample_submission" in err and "none.csv" in err and not (tmp_path / "outputs").exists()


def test_folds_without_a_part_to_validate_on_stop_training_before_any_work(tiny_data, tmp_path, capsys):
    """The tiny records have 6 parts: data.folds=8 leaves folds 6 and 7 nothing to validate on."""
    path = write_config(tmp_path, tiny_data)
    assert cli.main(["train", "--config", str(path), "--set", "data.folds=8"]) == 2
    err = capsys.readouterr().err
    assert "'data.folds' is 8" in err and "6 part(s)" in err and "fold(s) 6, 7" in err and "at most 6" in err
    assert cli.main(["train", "--config", str(path), "--fold", "1,7", "--set", "data.folds=8"]) == 2
    assert "fold(s) 7 would validate on no part" in capsys.readouterr().err  # not fold 1 trained first
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("where", ["file", "system"])
def test_an_output_dir_that_cannot_be_written_is_named_by_its_key(tiny_data, tmp_path, capsys, where):
    """Under a regular file, or in a folder no one may write (as root too): exit 2 naming output_dir."""
    path = write_config(tmp_path, tiny_data)
    (tmp_path / "a-file").write_text("not a folder")
    output_dir = tmp_path / "a-file" / "outputs" if where == "file" else "/sys/melanoma-outputs"
    assert cli.main(["train", "--config", str(path), "--set", f"output_dir={output_dir}"]) == 2
    err = capsys.readouterr().err
    assert "config key 'output_dir'" in err and ("is a file" if where == "file" else "not writable") in err
    assert "Traceback" not in err


def test_infer_names_an_unwritable_submission_dir_before_predicting(run_copy, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    before = snapshot(tmp_path / "outputs")
    assert cli.main(["infer", "--config", str(run_copy), "--set",
                     f"submission_dir={tmp_path / 'a-file' / 'submissions'}", "--recompute"]) == 2
    err = capsys.readouterr().err
    assert "config key 'submission_dir'" in err and "is a file" in err
    assert snapshot(tmp_path / "outputs") == before  # nothing was predicted again


def test_a_config_typo_is_reported_before_tensorflow_loads(tmp_path):
    """train and infer check the config before they import TensorFlow (which takes seconds)."""
    for command in ("train", "infer"):
        probe = ("import sys\n"
                 "from melanoma import cli\n"
                 f"status = cli.main([{command!r}, '--config', 'configs/demo.yaml', '--set', 'train.epochz=2'])\n"
                 "print(status, 'tensorflow' in sys.modules)\n")
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=helpers.REPO,
                              timeout=120)
        assert done.stdout.split()[-2:] == ["2", "False"], done.stdout + done.stderr
        assert "unknown config key 'train.epochz'" in done.stderr and "did you mean 'train.epochs'" in done.stderr


@pytest.mark.parametrize("skip_corrupt", ["false", "true"])
def test_test_records_given_as_training_files_are_said_to_be_test_records_once(tiny_data, tmp_path, capsys,
                                                                                monkeypatch, skip_corrupt):
    """By their names before any work, and by their content (no record has a target) when renamed, with
    data.skip_corrupt on too: one line saying what they are, exit 2, not a line per record."""
    from melanoma.model import network as model

    monkeypatch.setattr(model, "build_model", helpers.build_tiny_model)
    path = write_config(tmp_path, tiny_data)
    test_file = next(tiny_data["records"].glob("test*.tfrec"))
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for part in (0, 1):  # test records under train names, a part for each fold
        shutil.copy(test_file, renamed / f"train{part:02d}-{test_file.name.split('-')[1]}")
    for files in (tiny_data["records"] / "test*.tfrec", renamed / "train*.tfrec"):
        status = cli.main(["train", "--config", str(path), "--fold", "0", "--set", f"data.train_files={files}",
                           f"data.skip_corrupt={skip_corrupt}"])
        err = capsys.readouterr().err
        assert status == 2, err
        assert err.count("\n") == 1 and "these are test records (no target): point data.train_files at the " \
            "train*.tfrec files" in err and "missing feature" not in err, err
    assert not (tmp_path / "outputs" / "tiny" / "fold0" / "model.keras").exists()
