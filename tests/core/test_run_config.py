"""Runs that cannot lie (issue 11): each numbered state that used to carry on and mislead is reproduced
here and now stops with a message and exit status 2, or says what it did, and leaves files as they were.

Training uses the one-convolution stand-in model of reliability_helpers; one tiny run (2 folds) is
trained once for the module and copied into each test that needs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import reliability_helpers as helpers
import yaml
from conftest import write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core import progress, quiet, run_results
from melanoma.data import preflight, record_format

STARTUP_LINES = ("All log messages before absl::InitializeLog()", "Could not find cuda drivers")


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (relative path -> sha256), to show that nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """outputs/ of a tiny run with both folds trained and their test images predicted by infer
    (data.image_size 32, the stand-in model)."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        helpers.install_tiny_model(patch)
        assert cli.main(["train", "--config", str(write_config(root, tiny_data)), "--fold", "all"]) == 0
        assert cli.main(["infer", "--config", str(write_config(root, tiny_data))]) == 0
    shutil.rmtree(root / "submissions")
    return root / "outputs"


@pytest.fixture
def run_copy(trained, tiny_data, tmp_path, monkeypatch):
    """A copy of the trained run in tmp_path and its config (the stand-in model installed)."""
    helpers.install_tiny_model(monkeypatch)
    shutil.copytree(trained, tmp_path / "outputs")
    return write_config(tmp_path, tiny_data)


def run_folder(tmp_path) -> Path:
    return tmp_path / "outputs" / "tiny"


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
    from melanoma.core import run_config

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
    assert run_results.gather_oof(config) is None
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


# --- 3. a records folder is complete or absent ------------------------------------------------------


@pytest.fixture
def jpeg_data(tiny_data, tmp_path):
    """A copy of the tiny data's CSVs and JPEGs (to damage) and the records arguments for it."""
    source = Path(tiny_data["train_csv"]).parent
    data = tmp_path / "data"
    shutil.copytree(source, data)
    return data


def records_argv(data: Path, out: Path, *extra) -> list[str]:
    return ["records", "--data", str(data), "--out", str(out), "--size", "32", "--parts", "6",
            "--test-parts", "3", "--workers", "1", *extra]


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


# --- 4. synth into a folder that is not empty --------------------------------------------------------


def test_synth_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["synth", str(out), "--size", "16", "--patients", "3", "--test-patients", "1", "--no-progress"]
    assert cli.main(argv) == 0
    stray = out / "jpeg" / "train" / "ISIC_9999999.jpg"
    stray.write_bytes((next((out / "jpeg" / "train").glob("*.jpg"))).read_bytes())
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    capsys.readouterr()
    assert cli.main(argv + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err
    assert snapshot(out) == before
    assert cli.main(argv + ["--seed", "1", "--force"]) == 0
    assert not stray.exists(), "images of the earlier dataset must not mix with the new one"
    assert (out / "notes.txt").read_text() == "mine" and "kept notes.txt" in capsys.readouterr().err
    names = set(pd.read_csv(out / "train.csv")["image_name"])
    assert {p.stem for p in (out / "jpeg" / "train").glob("*.jpg")} == names


# --- 5. an empty CSV given to records ---------------------------------------------------------------


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


# --- 6. partial ensembles are never silent ----------------------------------------------------------


STAND_IN_KAGGLE = """#!{python}
import json, sys
with open({record!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
print("Successfully submitted")
"""


def test_a_partial_ensemble_is_named_as_such_and_submitted_only_when_asked(run_copy, tmp_path, capsys,
                                                                           monkeypatch):
    run = run_folder(tmp_path)
    shutil.rmtree(run / "fold1")
    assert cli.main(["infer", "--config", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "fold(s) 1 of run tiny are not trained" in err and "--allow-partial" in err and "tiny-folds0.csv" in err
    assert not (tmp_path / "submissions").exists()

    assert cli.main(["infer", "--config", str(run_copy), "--allow-partial"]) == 0
    submissions = tmp_path / "submissions"
    assert sorted(p.name for p in submissions.iterdir()) == ["tiny-folds0.csv", "tiny-folds0.json"]
    record = json.loads((submissions / "tiny-folds0.json").read_text())
    assert record["folds"] == [0] and record["folds_expected"] == 2 and record["partial"] is True

    calls = tmp_path / "kaggle-calls.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kaggle").write_text(STAND_IN_KAGGLE.format(python=sys.executable, record=str(calls)))
    (bin_dir / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123abcd")
    monkeypatch.chdir(tmp_path)
    sub = "submissions/tiny-folds0.csv"
    capsys.readouterr()
    assert cli.main(["submit", sub, "-m", "one fold"]) == 2
    assert "partial ensemble (folds 0 of 2)" in capsys.readouterr().err and not calls.exists()
    assert cli.main(["submit", sub, "-m", "one fold", "--allow-partial"]) == 0
    [row] = pd.read_csv("submissions/log.csv", dtype=str).to_dict("records")
    assert row["folds"] == "0 of 2" and row["config"] == "tiny"
    from melanoma.core.metrics import auc as competition_auc

    fold0 = pd.read_csv(run / "fold0" / "oof.csv")
    assert float(row["oof_auc"]) == pytest.approx(competition_auc(fold0["target"], fold0["pred"]), abs=1e-6)


# --- 7. one meaning per exit status, and messages that are true ---------------------------------------


def test_resume_with_nothing_to_resume_is_refused(tiny_data, tmp_path, capsys):
    path = write_config(tmp_path, tiny_data)
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "without --resume" in err
    assert not (tmp_path / "outputs").exists()


def test_the_same_kind_of_mistake_gets_the_same_exit_status(jpeg_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["leaderboard", "--log", str(tmp_path / "log.csv")]) == 2
    err = capsys.readouterr().err
    assert "no Kaggle credentials" in err and "Nothing was submitted" not in err

    out = tmp_path / "records"
    table = pd.read_csv(jpeg_data / "train.csv")
    table.drop(columns="sex").to_csv(jpeg_data / "train.csv", index=False)
    assert cli.main(records_argv(jpeg_data, out)) == 2  # a missing column
    table.to_csv(jpeg_data / "train.csv", index=False)
    (jpeg_data / "jpeg" / "train" / f"{table['image_name'].iloc[3]}.jpg").unlink()
    assert cli.main(records_argv(jpeg_data, out)) == 2  # a missing image
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert cli.main(["score", str(empty)]) == 2
    assert cli.main(["score", str(tmp_path / "absent.csv")]) == 2
    assert "Traceback" not in capsys.readouterr().err


# --- 8. quiet, readable output -------------------------------------------------------------------------


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
