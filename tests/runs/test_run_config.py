"""A run is bound to its config (runs/run_config.py): training a run again under another config is refused
or moves the old run aside, the OOF gathers only folds trained under the run's config, and infer, report and
blend use what training used.

Training uses the one-convolution stand-in model of reliability_helpers; one tiny run (2 folds), trained
and inferred once per test process (conftest.trained_run), is copied into each test that needs it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from conftest import run_folder, snapshot

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core import progress
from melanoma.train import oof
from melanoma.train.families import family as family_lib

# --- 1. a run is bound to its config -----------------------------------------------------------------


def test_training_a_run_again_under_another_config_is_refused(run_copy, tmp_path, tiny_data, capsys, monkeypatch):
    run = run_folder(tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["train", "--config", str(run_copy), "--set", "data.image_size=48",
                     "model.backbone=efficientnet-b2"]) == 2
    err = capsys.readouterr().err
    assert "data.image_size: 32 -> 48" in err and "model.backbone: 'efficientnet-b0' -> 'efficientnet-b2'" in err
    assert "--force" in err and "--set name=" in err and "Traceback" not in err
    assert snapshot(run) == before, "a refused run must not change a file"
    from melanoma.runs import run_config

    changed = config_lib.load_config(run_copy, ["data.image_size=48"])
    run_config.bind_run(changed, run_copy, force=True, write=False)  # a cluster's other workers: no writes
    assert snapshot(run) == before

    # the same data in another folder (a Kaggle session's new gs:// path) is the same run
    moved = tmp_path / "moved-records"
    shutil.copytree(tiny_data["records"], moved)
    assert cli.main(["train", "--config", str(run_copy), "--set", f"data.train_files={moved}/train*.tfrec"]) == 0
    assert "fold 0: already finished" in capsys.readouterr().out
    assert snapshot(run) == before

    # --force retrains under the new config; the old run is moved aside whole, never mixed in
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    assert cli.main(["train", "--config", str(run_copy), "--fold", "0", "--force",
                     "--set", "data.image_size=48", "train.verbose=1"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"] == 48
    [old] = list((run / "superseded").iterdir())
    assert yaml.safe_load((old / "config.yaml").read_text())["data"]["image_size"] == 32
    assert {p.name for p in old.iterdir()} >= {"config.yaml", "fold0", "fold1", "oof.csv"}
    assert (run / "fold0" / "oof.csv").is_file() and not (run / "fold1").exists()
    assert not (run / "oof.csv").exists() and "folds still to train: [1]" in out
    # 8: progress within the epoch at the default verbosity, as plain lines (stdout is not a terminal)
    assert "epoch 1/1: step 1/2" in out and "epoch 1/1: loss" in out and "\r" not in out


def test_oof_is_gathered_only_from_folds_trained_under_the_run_config(run_copy, tmp_path, capsys):
    """A run whose config.yaml an earlier version overwrote: fold 1's state.json still says what it was."""
    run = run_folder(tmp_path)
    state = json.loads((run / "fold1" / "state.json").read_text())
    state["config"]["model.backbone"] = "efficientnet-b2"
    (run / "fold1" / "state.json").write_text(json.dumps(state))
    config = config_lib.load_config(run_copy)
    assert oof.gather_oof(config, family_lib.trained_as) is None
    assert "fold1 was trained as efficientnet-b2 at 32 px" in capsys.readouterr().out
    assert not (run / "oof.csv").exists()
    assert cli.main(["infer", "--config", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "fold1 was trained as efficientnet-b2" in err and "--force" in err and len(err.splitlines()) == 1


# --- 2. inference uses what training used ---------------------------------------------------------


def fold_files(run: Path) -> dict:
    return {name: (run / f"fold{k}" / name).read_bytes() for k in (0, 1) for name in ("test.csv", "test.json")}


def test_infer_refuses_overrides_that_contradict_the_run(run_copy, tmp_path, capsys):
    run = run_folder(tmp_path)
    before = fold_files(run)
    assert cli.main(["infer", "--config", str(run_copy), "--set", "data.image_size=64"]) == 2
    err = capsys.readouterr().err
    assert "--set data.image_size=64 but the run was trained with data.image_size=32" in err
    assert fold_files(run) == before and not (tmp_path / "submissions").exists()

    # a forgotten training --set (the config file says 64 px): the run's own 32 px is used, and said
    text = run_copy.read_text().replace("image_size: 32", "image_size: 64")
    run_copy.write_text(text)
    assert cli.main(["infer", "--config", str(run_copy)]) == 0
    captured = capsys.readouterr()
    assert "data.image_size=32" in captured.err and "64" in captured.err
    assert "fold 0: reusing" in captured.out and fold_files(run) == before
    assert (tmp_path / "submissions" / "tiny.csv").is_file()
    record = json.loads((tmp_path / "submissions" / "tiny.json").read_text())
    assert record["folds"] == [0, 1] and record["partial"] is False

    # other TTA settings: every fold is predicted again, never averaged with the old ones
    assert cli.main(["infer", "--config", str(run_copy), "--set", "tta.steps=2", "tta.mode=dihedral"]) == 0
    assert "predicting again" in capsys.readouterr().out
    for k in (0, 1):
        made = json.loads((run / f"fold{k}" / "test.json").read_text())
        assert made["tta"]["steps"] == 2 and made["image_size"] == 32


def test_a_checkpoint_that_does_not_fit_is_one_line(run_copy, tmp_path, capsys, monkeypatch):
    run = run_folder(tmp_path)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["model"]["backbone"] = "efficientnet-b2"  # what an earlier version's overwrite left
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert cli.main(["infer", "--config", str(run_copy)]) == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "was trained as efficientnet-b0 at 32 px" in error

    # without state.json to tell, the weights themselves do not load: still one line, no Keras dump
    for k in (0, 1):
        (run / f"fold{k}" / "state.json").unlink()

    def wider(config, pretrained=True):
        import keras

        image = keras.Input(shape=(32, 32, 3), name="image")
        features = keras.layers.Conv2D(8, 3, strides=2, name="conv")(image)
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
        return keras.Model({"image": image}, keras.layers.Dense(1, activation="sigmoid", name="target")(features))

    from melanoma.model import network as model

    monkeypatch.setattr(model, "build_model", wider)
    assert cli.main(["infer", "--config", str(run_copy), "--recompute"]) == 2
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "model.keras does not fit a efficientnet-b2 at 32 px" in error and len(error) < 600
    assert "Traceback" not in err


def test_blend_refuses_folds_predicted_under_different_settings(run_copy, tmp_path, capsys):
    run = run_folder(tmp_path)
    shutil.copytree(run, tmp_path / "outputs" / "other")
    made = json.loads((run / "fold1" / "test.json").read_text())
    made["tta"]["steps"] = 8
    (run / "fold1" / "test.json").write_text(json.dumps(made))
    assert cli.main(["blend", str(run), str(tmp_path / "outputs" / "other")]) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "tta" in err
    assert not list((tmp_path / "outputs").glob("blend-*"))
