"""One meaning per exit status (2: the user's input; 1: a failed check or tool), one line, no traceback."""
from __future__ import annotations

import pandas as pd
from conftest import records_argv

from melanoma import cli


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


def _no_traceback(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_a_folder_where_a_file_is_meant_is_one_line(jpeg_data, tmp_path, capsys):
    """`score outputs/<run>`, `validate submissions`, `records --train-csv <folder>`, `folds --out <folder>`:
    exit status 2 and a line that names the folder (and the file it may have meant), not IsADirectoryError."""
    run = tmp_path / "outputs" / "run"
    run.mkdir(parents=True)
    (run / "oof.csv").write_text("image_name,patient_id,target,pred,fold\n")
    assert cli.main(["score", str(run)]) == 2
    err = _no_traceback(capsys)
    assert f"{run} is a folder, not a file" in err and f"give {run / 'oof.csv'}" in err
    assert cli.main(["validate", str(tmp_path / "outputs"), "--sample", str(jpeg_data / "sample_submission.csv")]) == 2
    assert "is a folder, not a file" in _no_traceback(capsys)
    assert cli.main(["records", "--train-csv", str(tmp_path / "outputs"), "--out", str(tmp_path / "r"),
                     "--size", "32"]) == 2
    assert "is a folder, not a file" in _no_traceback(capsys)
    assert cli.main(["folds", "--train-csv", str(jpeg_data / "train.csv"), "--folds", "2", "--parts", "4",
                     "--out", str(tmp_path / "outputs")]) == 2
    assert "is a folder; give the path of a file" in _no_traceback(capsys)


def test_a_file_where_a_folder_is_meant_is_one_line(jpeg_data, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for argv, said in ((["compare", str(a_file)], "no such folder of runs"),
                       (["synth", str(a_file), "--size", "16", "--patients", "3"], "is a file"),
                       (["synth", str(a_file / "demo"), "--size", "16", "--patients", "3"], "is a file, not a folder"),
                       (["records", "--data", str(a_file), "--out", str(tmp_path / "r"), "--size", "32"], "is a file"),
                       (records_argv(jpeg_data, a_file / "records"), "--out")):
        assert cli.main(argv) == 2, argv
        assert said in _no_traceback(capsys), argv


def test_numbers_out_of_range_are_refused_naming_the_argument(jpeg_data, tmp_path, capsys):
    import pytest

    for argv, said in ((records_argv(jpeg_data, tmp_path / "r", "--workers", "0"), "--workers must be at least 1"),
                       (records_argv(jpeg_data, tmp_path / "r", "--test-parts", "0"),
                        "--test-parts must be at least 1"),
                       (["folds", "--train-csv", str(jpeg_data / "train.csv"), "--folds", "1", "--out",
                         str(tmp_path / "f.csv")], "--folds must be at least 2")):
        assert cli.main(argv) == 2, argv
        assert said in _no_traceback(capsys)
    for port in ("99999", "0", "http"):  # argparse: exit status 2 and a usage line, before anything loads
        with pytest.raises(SystemExit) as stopped:
            cli.main(["serve", "--config", "configs/demo.yaml", "--port", port])
        assert stopped.value.code == 2
        assert "argument --port" in capsys.readouterr().err


def test_a_label_that_is_not_0_or_1_is_one_line(jpeg_data, tmp_path, capsys):
    """A target column holding `yes`: records, folds and score name the image and the value."""
    table = pd.read_csv(jpeg_data / "train.csv")
    table["target"] = table["target"].astype(object)
    table.loc[3, "target"] = "yes"
    table.to_csv(jpeg_data / "train.csv", index=False)
    assert cli.main(records_argv(jpeg_data, tmp_path / "records")) == 2
    err = _no_traceback(capsys)
    assert "target must be 0 or 1" in err and table.loc[3, "image_name"] in err and "'yes'" in err
    assert not (tmp_path / "records").exists()
    assert cli.main(["folds", "--train-csv", str(jpeg_data / "train.csv"), "--folds", "2", "--out",
                     str(tmp_path / "f.csv")]) == 2
    assert "target must be 0 or 1" in _no_traceback(capsys)
    oof = table[["image_name", "patient_id", "target"]].assign(pred=0.5, fold=0)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    assert cli.main(["score", str(tmp_path / "oof.csv")]) == 2
    assert "target must be 0 or 1" in _no_traceback(capsys)


def test_an_image_in_both_train_and_test_is_refused_by_records_and_by_training(jpeg_data, tiny_data, tmp_path,
                                                                                 capsys, monkeypatch):
    """An image name in train.csv and test.csv: `records` exits 2 naming it; records that hold one anyway
    (built elsewhere) stop training before any fold, instead of "duplicates dropped: none"."""
    import shutil

    import reliability_helpers as helpers
    from conftest import write_config

    train = pd.read_csv(jpeg_data / "train.csv")
    test = pd.read_csv(jpeg_data / "test.csv")
    shared = train["image_name"].iloc[0]
    test.loc[0, "image_name"] = shared
    test.to_csv(jpeg_data / "test.csv", index=False)
    shutil.copy(jpeg_data / "jpeg" / "train" / f"{shared}.jpg", jpeg_data / "jpeg" / "test" / f"{shared}.jpg")
    assert cli.main(records_argv(jpeg_data, tmp_path / "records")) == 2
    err = _no_traceback(capsys)
    assert "in both" in err and shared in err and not (tmp_path / "records").exists()

    # records with a train image among the test records: training refuses before any fold trains
    helpers.install_tiny_model(monkeypatch)
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_data["records"], mixed)
    first = sorted(mixed.glob("train*.tfrec"))[0]
    tests = sorted(mixed.glob("test*.tfrec"))
    records = helpers.read_records(tests[0]) + helpers.read_records(first)[:1]
    tests[0].unlink()
    helpers.write_records(mixed / tests[0].name.replace(tests[0].name.split("-")[1], f"{len(records)}.tfrec"),
                          records)
    name = helpers.image_name(helpers.read_records(first)[0])
    path = write_config(tmp_path, tiny_data)
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--set", f"data.train_files={mixed}/train*.tfrec",
                     f"data.test_files={mixed}/test*.tfrec"]) == 2
    err = _no_traceback(capsys)
    assert "in both data.train_files and data.test_files" in err and name in err
    assert not (tmp_path / "outputs" / "tiny" / "config.yaml").exists()  # found before the run was bound
