"""Reliability: config errors before any work, corrupt data named, NaN never saved, folds reproducible.

Training runs here use a one-convolution stand-in model (reliability_helpers), so a fold trains in
seconds; the real EfficientNet path is covered by test_end_to_end.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import reliability_helpers as helpers
import yaml
from conftest import write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.data import integrity, preflight
from melanoma.runs import run_config


def run_dir(tmp_path):
    return tmp_path / "outputs" / "tiny"


# --- config errors: exit 2 before a model is built ---------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything builds a model."""
    from melanoma.model import network as model

    def refuse(config):
        raise AssertionError("a model was built although the config is wrong")

    monkeypatch.setattr(model, "build_model", refuse)


CONFIG_ERRORS = [
    # (command, extra --set values, config body, words the message must hold)
    ("train", [], "train:\n  epoch: 3\n", ["train.epoch", "did you mean 'train.epochs'"]),
    ("train", ["data.image_sise=64"], "", ["data.image_sise", "'data.image_size'"]),
    ("train", ["train.batch_size=big"], "", ["train.batch_size", "must be int", "'big'"]),
    ("train", ["data.train_files=/nowhere/train*.tfrec"], "",
     ["data.train_files", "/nowhere/train*.tfrec", "matched no file", "folder /nowhere does not exist"]),
    ("train", ["data.test_files={records}/tst*.tfrec"], "", ["data.test_files", "tst*.tfrec", "matched no file"]),
    ("train", ["data.external_files=[{records}/train*.tfrec,{records}/isic*.tfrec]"], "",
     ["data.external_files", "isic*.tfrec", "matched no file"]),
    ("train", ["data.external_files={{isic2019-32x32: {records}/isic/train*.tfrec}}"], "",
     ["data.external_files", "isic/train*.tfrec", "folder", "does not exist"]),
    ("train", ["data.duplicates_csv=[{records}/train.csv,{records}/duplicates.csv]"], "",
     ["data.duplicates_csv", "duplicates.csv", "file not found"]),
    ("train", ["data.duplicates_csv={records}/duplicates.csv"], "",
     ["data.duplicates_csv", "duplicates.csv", "file not found"]),
    ("train", ["model.weights={records}/b0.h5"], "", ["model.weights", "b0.h5", "file not found"]),
    ("infer", ["data.sample_submission={data}/sample_submision.csv"], "",
     ["data.sample_submission", "sample_submision.csv", "did you mean", "sample_submission.csv'"]),
    ("infer", ["data.test_files={records}/test*.tfrecord"], "", ["data.test_files", "matched no file"]),
]


@pytest.mark.parametrize("command,sets,body,words", CONFIG_ERRORS,
                         ids=["unknown-key", "unknown-set-key", "wrong-type", "no-train-folder", "empty-test-glob",
                              "empty-external-glob", "empty-external-set", "one-duplicates-csv-missing",
                              "no-duplicates-csv", "no-weights-file", "sample-typo",
                              "test-glob-typo"])
def test_config_errors_exit_2_before_any_work(tiny_data, tmp_path, capsys, no_model, command, sets, body, words):
    path = write_config(tmp_path, tiny_data, body)
    values = {"records": tiny_data["records"], "data": os.path.dirname(tiny_data["sample_submission"])}
    sets = [s.format(**values) for s in sets]
    argv = [command, "--config", str(path)] + (["--set", *sets] if sets else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for word in words:
        assert word.format(**values) in err, (word, err)
    assert "Traceback" not in err
    assert not (tmp_path / "outputs").exists(), "nothing may be written before the config is checked"
    assert not (tmp_path / "submissions").exists()


def test_every_input_problem_is_reported_at_once(tiny_data, tmp_path, capsys, no_model):
    path = write_config(tmp_path, tiny_data)
    assert cli.main(["train", "--config", str(path), "--set", "data.train_files=/nowhere/a*.tfrec",
                     "data.test_files=/nowhere/b*.tfrec"]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "data.train_files" in err and "data.test_files" in err


def test_check_inputs_accepts_a_good_config(tiny_data, tmp_path):
    config = config_lib.load_config(write_config(tmp_path, tiny_data))
    preflight.check_inputs(config, "train")
    preflight.check_inputs(config, "infer")


# --- corrupt data: named, file and image ------------------------------------------------------------


@pytest.fixture
def damaged(tiny_data, tmp_path):
    """Copies of the tiny train records with one garbage JPEG, one record without `target`, and one
    file truncated in the middle of a record; returns what was damaged."""
    folder = tmp_path / "damaged"
    paths = helpers.copy_records(tiny_data["records"], folder)
    helpers.copy_records(tiny_data["records"], folder, "test")
    garbage_file, missing_file, cut_file = paths[1], paths[2], paths[3]
    records = helpers.read_records(garbage_file)
    garbage_name = helpers.image_name(records[4])
    records[4] = helpers.with_feature(records[4], "image", b"\xff\xd8 these bytes are not a JPEG")
    helpers.write_records(garbage_file, records)
    records = helpers.read_records(missing_file)
    missing_name = helpers.image_name(records[2])
    import tensorflow as tf

    example = tf.train.Example.FromString(records[2])
    del example.features.feature["target"]
    records[2] = example.SerializeToString()
    helpers.write_records(missing_file, records)
    helpers.truncate(cut_file, 700)
    return {"folder": folder, "garbage": (garbage_file, garbage_name), "missing": (missing_file, missing_name),
            "cut": cut_file}


def test_scan_names_file_record_and_image(damaged):
    garbage_file, garbage_name = damaged["garbage"]
    scan = integrity.scan_file(str(garbage_file), "train", 32)
    assert not scan.ok and scan.readable == scan.expected
    assert [(b.index, b.image_name) for b in scan.bad] == [(4, garbage_name)]
    assert "cannot be decoded" in scan.bad[0].reason

    missing_file, missing_name = damaged["missing"]
    scan = integrity.scan_file(str(missing_file), "train", 32)
    assert [(b.index, b.image_name) for b in scan.bad] == [(2, missing_name)]
    assert "missing feature 'target'" in scan.bad[0].reason

    scan = integrity.scan_file(str(damaged["cut"]), "train", 32)
    assert scan.read_error and "truncated" in scan.read_error
    assert scan.lost == scan.expected - scan.readable >= 1
    assert "is truncated or corrupt" in scan.describe() and str(damaged["cut"]) in scan.describe()


def test_scan_finds_a_file_cut_at_a_record_boundary(tiny_data, tmp_path):
    """Cut between two records, a file reads without any error; only the count in its name tells."""
    source = sorted(tiny_data["records"].glob("train*.tfrec"))[0]
    records = helpers.read_records(source)
    target = tmp_path / source.name
    helpers.write_records(target, records[:-3])
    scan = integrity.scan_file(str(target), "train", 32)
    assert scan.read_error is None and scan.lost == 3 and not scan.ok
    clean = integrity.scan_file(str(source), "train", 32)
    assert clean.ok and clean.readable == clean.expected == len(records)


def train_argv(path, *extra):
    return ["train", "--config", str(path), "--fold", "0", *extra]


def damaged_config(tmp_path, tiny_data, damaged, *sets):
    path = write_config(tmp_path, tiny_data)
    return path, ["--set", f"data.train_files={damaged['folder']}/train*.tfrec",
                  f"data.test_files={damaged['folder']}/test*.tfrec", *sets]


@pytest.mark.parametrize("damage", ["all", "image-only"])
def test_training_on_corrupt_data_fails_naming_the_images(tiny_data, tmp_path, damaged, capsys, monkeypatch,
                                                          damage):
    """All three kinds of damage are found while the fold's tables are read, before a model is built;
    an undecodable image alone shows up only when the pipeline decodes it, inside model.fit."""
    helpers.install_tiny_model(monkeypatch)
    garbage_file, garbage_name = damaged["garbage"]
    missing_file, missing_name = damaged["missing"]
    if damage == "image-only":
        for source in (missing_file, damaged["cut"]):
            source.write_bytes((tiny_data["records"] / source.name).read_bytes())
    path, sets = damaged_config(tmp_path, tiny_data, damaged)
    assert cli.main(train_argv(path, *sets)) == 2  # data that cannot be read: the user's input
    captured = capsys.readouterr()
    err = captured.err
    words = [str(garbage_file), garbage_name, "cannot be decoded", "data.skip_corrupt"]
    if damage == "all":
        words += [str(missing_file), missing_name, "missing feature 'target'", str(damaged["cut"]), "truncated"]
    else:
        assert "the input pipeline failed" in captured.out
        assert str(missing_file) not in err and str(damaged["cut"]) not in err
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err
    assert not (run_dir(tmp_path) / "fold0" / "model.keras").exists()


def test_training_skips_corrupt_images_only_when_allowed_and_says_which(tiny_data, tmp_path, damaged, capsys,
                                                                       monkeypatch):
    helpers.install_tiny_model(monkeypatch)
    path, sets = damaged_config(tmp_path, tiny_data, damaged, "data.skip_corrupt=true")
    assert cli.main(train_argv(path, *sets)) == 0
    out = capsys.readouterr().out
    fold = run_dir(tmp_path) / "fold0"
    skipped = pd.read_csv(fold / "skipped.csv")
    cut = integrity.scan_file(str(damaged["cut"]), "train", 32)
    count = 2 + cut.lost
    assert f"skipping {count} corrupt training image(s)" in out
    assert damaged["garbage"][1] in out and damaged["missing"][1] in out
    assert set(skipped["image_name"].dropna()) == {damaged["garbage"][1], damaged["missing"][1]}
    assert str(damaged["cut"]) in set(skipped["file"])

    # OOF holds every readable, valid image of the validation parts, and none of the bad ones
    table = pd.read_csv(tiny_data["records"] / "train.csv")
    valid = table[table["part"] % 2 == 0]
    oof = pd.read_csv(fold / "oof.csv")
    assert not {damaged["garbage"][1], damaged["missing"][1]} & set(oof["image_name"])
    lost_in_valid = sum(s.skipped for s in integrity.scan_files(
        [str(p) for p in sorted(damaged["folder"].glob("train*.tfrec")) if int(p.name[5:7]) % 2 == 0],
        "train", 32, progress=False))
    assert len(oof) == len(valid) - lost_in_valid and oof["image_name"].is_unique

    # the run saved its resolved config and the code's commit
    saved = yaml.safe_load((run_dir(tmp_path) / "config.yaml").read_text())
    assert saved.pop("git_commit") == run_config.git_commit() and saved["data"]["skip_corrupt"] is True
    assert run_config.read_saved_config(run_dir(tmp_path)) == config_lib.load_config(path, sets[1:])


def test_inference_never_skips_a_bad_test_image(tiny_data, tmp_path, capsys, monkeypatch):
    """A submission needs every test image: even with data.skip_corrupt, a bad one stops inference."""
    helpers.install_tiny_model(monkeypatch)
    folder = tmp_path / "test-records"
    tests = helpers.copy_records(tiny_data["records"], folder, "test")
    records = helpers.read_records(tests[1])
    bad_name = helpers.image_name(records[3])
    records[3] = helpers.with_feature(records[3], "image", b"GIF89a no image here")
    helpers.write_records(tests[1], records)
    path = write_config(tmp_path, tiny_data)
    config = config_lib.load_config(path)
    fold = run_dir(tmp_path) / "fold0"
    fold.mkdir(parents=True)
    helpers.build_tiny_model(config).save(fold / "model.keras")
    (fold / "oof.csv").write_text("image_name,patient_id,target,pred,fold\n")  # a finished fold
    run_config.save_config(config_lib.load_config(path, ["data.skip_corrupt=true"]))  # as trained
    assert cli.main(["infer", "--config", str(path), "--set", f"data.test_files={folder}/test*.tfrec",
                     "data.skip_corrupt=true", "--allow-partial"]) == 2
    err = capsys.readouterr().err
    assert bad_name in err and str(tests[1]) in err and "record 4" in err and "cannot be decoded" in err
    assert "every image" in err
    assert not (tmp_path / "submissions").exists() or not list((tmp_path / "submissions").iterdir())


# --- bad numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_nan_stops_training_and_keeps_the_best_checkpoint(tiny_data, tmp_path, capsys, monkeypatch, where):
    """NaN weights at the start of epoch 3 (a NaN loss at once), or after its last step (the losses
    of epoch 3 are finite; only the weights show it): either way nothing of epoch 3 is saved."""
    import keras

    helpers.install_tiny_model(monkeypatch)
    fold = run_dir(tmp_path) / "fold0"
    seen = {}

    class Poison(keras.callbacks.Callback):
        def break_weights(self):
            seen["best"] = (fold / "model.keras").read_bytes()
            seen["last"] = (fold / "last.keras").read_bytes()
            kernel = self.model.get_layer("target").kernel
            kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            if epoch == 2 and where == "loss":
                self.break_weights()

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 2 and batch == 1 and where == "weights":
                self.break_weights()

    helpers.add_callback(Poison, monkeypatch)
    # checkpoint: last saves every epoch, so epoch 3 would overwrite model.keras if anything let it
    path = write_config(tmp_path, tiny_data)
    assert cli.main(train_argv(path, "--set", "train.epochs=4", "train.checkpoint=last")) == 1
    err = capsys.readouterr().err
    reason = "loss became nan at epoch 3" if where == "loss" else "weights became non-finite in epoch 3"
    assert reason in err and "best checkpoint (epoch 2) is kept" in err
    assert "Traceback" not in err
    assert (fold / "model.keras").read_bytes() == seen["best"]
    assert (fold / "last.keras").read_bytes() == seen["last"]
    state = json.loads((fold / "state.json").read_text())
    assert state["epoch"] == 2 and state["best_epoch"] == 2
    model = keras.models.load_model(fold / "model.keras", compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert not [p for p in fold.iterdir() if p.name.startswith(".")]


# --- finished, interrupted, forced ---------------------------------------------------------------


def test_finished_folds_are_skipped_unless_forced_and_interrupted_ones_need_a_choice(
        tiny_data, tmp_path, capsys, monkeypatch):
    helpers.install_tiny_model(monkeypatch)
    path = write_config(tmp_path, tiny_data)
    fold = run_dir(tmp_path) / "fold0"
    assert cli.main(train_argv(path)) == 0
    first = (fold / "oof.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(train_argv(path)) == 0
    assert "fold 0: already finished (use --force" in capsys.readouterr().out
    assert (fold / "oof.csv").stat().st_mtime_ns == first

    assert cli.main(train_argv(path, "--force")) == 0
    assert (fold / "oof.csv").stat().st_mtime_ns != first

    # an interrupted fold (state but no OOF) is neither restarted nor resumed silently
    (fold / "oof.csv").unlink()
    capsys.readouterr()
    assert cli.main(train_argv(path)) == 2
    err = capsys.readouterr().err
    assert "fold 0 was interrupted after epoch 1 of 1" in err and "--resume" in err and "--force" in err
    assert cli.main(train_argv(path, "--resume", "--force")) == 2
    # a changed experiment cannot continue an interrupted fold
    assert cli.main(train_argv(path, "--resume", "--set", "train.lr_peak_per_image=1e-3")) == 2
    assert "train.lr_peak_per_image" in capsys.readouterr().err
    # a record saved before a key existed (here model.color_constancy) counts it as base.yaml's default: the
    # same experiment may continue, a changed one may not
    state = json.loads((fold / "state.json").read_text())
    del state["config"]["model.color_constancy"]
    (fold / "state.json").write_text(json.dumps(state))
    assert cli.main(train_argv(path, "--resume", "--set", "model.color_constancy=6")) == 2
    assert "model.color_constancy: None -> 6" in capsys.readouterr().err
    # resuming a fold whose epochs are all done only predicts
    assert cli.main(train_argv(path, "--resume")) == 0
    assert "best epoch 1" in capsys.readouterr().out and (fold / "oof.csv").is_file()


# --- reproducibility ------------------------------------------------------------------------------


def test_same_config_and_seed_give_the_same_folds_byte_for_byte(tiny_data, tmp_path):
    outputs = []
    for attempt in range(2):
        target = tmp_path / f"folds{attempt}.csv"
        assert cli.main(["folds", "--train-csv", tiny_data["train_csv"], "--folds", "3", "--seed", "7",
                         "--out", str(target)]) == 0
        outputs.append(target.read_bytes())
    assert outputs[0] == outputs[1]
