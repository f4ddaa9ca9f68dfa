"""Submissions: validation of bad files, safe writes, and submit/leaderboard against a stand-in Kaggle CLI."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melanoma import cli
from melanoma.core.errors import CheckFailed, ExternalToolError
from melanoma.kaggle import kaggle_cli
from melanoma.predict import submission

COMPETITION = "siim-isic-melanoma-classification"
IDS = [f"ISIC_{i:07d}" for i in range(20)]


def write_sample(folder: Path) -> str:
    path = folder / "sample_submission.csv"
    pd.DataFrame({"image_name": IDS, "target": 0}).to_csv(path, index=False)
    return str(path)


def good_frame() -> pd.DataFrame:
    return pd.DataFrame({"image_name": IDS, "target": np.linspace(0, 1, len(IDS))})


def write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def good_text() -> str:
    return good_frame().to_csv(index=False)


# --------------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------------

def test_a_good_submission_validates(tmp_path, capsys):
    sample = write_sample(tmp_path)
    sub = write_text(tmp_path / "sub.csv", good_text())
    assert cli.main(["validate", sub, "--sample", sample]) == 0
    assert "valid submission, 20 rows" in capsys.readouterr().out


def test_the_id_column_is_the_samples(tmp_path, capsys):
    """ISIC 2024's sample is isic_id,target: a submission is checked against that header, and a 2020-style
    one (image_name) is refused for it, as an isic_id file is for the 2020 sample."""
    sample = tmp_path / "sample_isic2024.csv"
    pd.DataFrame({"isic_id": IDS, "target": 0.3}).to_csv(sample, index=False)
    ours = good_frame().rename(columns={"image_name": "isic_id"})
    sub = write_text(tmp_path / "submission.csv", ours.to_csv(index=False))
    assert cli.main(["validate", sub, "--sample", str(sample)]) == 0
    assert cli.main(["validate", write_text(tmp_path / "old.csv", good_text()), "--sample", str(sample)]) == 1
    assert "it must be exactly 'isic_id,target'" in capsys.readouterr().err
    assert cli.main(["validate", sub, "--sample", write_sample(tmp_path)]) == 1
    assert "it must be exactly 'image_name,target'" in capsys.readouterr().err
    written = submission.write_submission(ours, str(tmp_path / "out.csv"), str(sample), id_column="isic_id")
    assert Path(written.path).read_text().splitlines()[0] == "isic_id,target"
    with pytest.raises(CheckFailed, match="must be exactly 'isic_id,target'"):
        submission.write_submission(good_frame(), str(tmp_path / "other.csv"), str(sample), id_column="isic_id")


def _replace_target(rows: dict[int, str]) -> str:
    lines = good_text().splitlines()
    for index, value in rows.items():
        lines[index + 1] = f"{IDS[index]},{value}"
    return "\n".join(lines) + "\n"


BAD_FILES = {
    "wrong header": ("image_name,prediction\n" + "\n".join(f"{i},0.5" for i in IDS) + "\n",
                     ["header is 'image_name,prediction'"]),
    "header in the wrong order": ("target,image_name\n" + "\n".join(f"0.5,{i}" for i in IDS) + "\n",
                                  ["header is 'target,image_name'"]),
    "missing ids": ("image_name,target\n" + "\n".join(f"{i},0.5" for i in IDS[:12]) + "\n",
                    ["8 image(s) of the sample are missing", "ISIC_0000012, ISIC_0000013", "(8 in all)"]),
    "extra ids": (good_text() + "ISIC_9999999,0.5\nISIC_8888888,0.1\n",
                  ["2 image(s) are not in the sample: ISIC_9999999, ISIC_8888888"]),
    "duplicates": (good_text() + f"{IDS[3]},0.5\n{IDS[5]},0.5\n",
                   ["2 image name(s) appear more than once: ISIC_0000003, ISIC_0000005"]),
    "NaN": (_replace_target({2: "nan", 4: ""}), ["2 row(s) have a NaN or empty target: ISIC_0000002, ISIC_0000004"]),
    "infinity": (_replace_target({1: "inf", 6: "-inf"}), ["2 row(s) have an infinite target: ISIC_0000001, "
                                                         "ISIC_0000006"]),
    "out of [0, 1]": (_replace_target({0: "1.5", 9: "-0.01"}),
                      ["2 row(s) have a target outside [0, 1]: ISIC_0000000, ISIC_0000009"]),
    "non-numeric": (_replace_target({7: "high", 8: "0.5.1"}),
                    ["2 row(s) have a non-numeric target: ISIC_0000007, ISIC_0000008"]),
    "ragged row": (good_text() + "ISIC_0000001,0.5,extra\n", ["do not have 2 fields"]),
    "empty file": ("", ["is empty"]),
    "header only": ("image_name,target\n", ["no rows"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_validate_rejects_each_kind_of_bad_file(tmp_path, capsys, kind):
    text, expected = BAD_FILES[kind]
    sample = write_sample(tmp_path)
    sub = write_text(tmp_path / "sub.csv", text)
    with pytest.raises(CheckFailed):
        submission.validate_submission(sub, sample)
    assert cli.main(["validate", sub, "--sample", sample]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for fragment in expected:
        assert fragment in err


def test_validate_names_only_the_first_few_ids(tmp_path, capsys):
    sample = write_sample(tmp_path)
    sub = write_text(tmp_path / "sub.csv", "image_name,target\n" + "\n".join(f"{i},2" for i in IDS) + "\n")
    assert cli.main(["validate", sub, "--sample", sample]) == 1
    err = capsys.readouterr().err
    assert "ISIC_0000004, ... (20 in all)" in err and "ISIC_0000005" not in err


def test_validate_lists_every_problem_at_once(tmp_path):
    sample = write_sample(tmp_path)
    sub = write_text(tmp_path / "sub.csv", _replace_target({1: "nan", 2: "7"}) + "ISIC_X,0.1\n")
    with pytest.raises(CheckFailed) as raised:
        submission.validate_submission(sub, sample)
    message = str(raised.value)
    assert "3 problem(s)" in message and "NaN" in message and "outside" in message and "ISIC_X" in message


def test_validate_of_binary_garbage_is_a_clear_failure(tmp_path, capsys):
    sample = write_sample(tmp_path)
    sub = tmp_path / "sub.csv"
    sub.write_bytes(b"\xff\xfe\x00garbage\x81")
    assert cli.main(["validate", str(sub), "--sample", sample]) == 1
    assert "UTF-8" in capsys.readouterr().err


def test_validate_without_a_sample_file_exits_2(tmp_path, capsys):
    sub = write_text(tmp_path / "sub.csv", good_text())
    assert cli.main(["validate", sub, "--sample", str(tmp_path / "nope.csv")]) == 2
    assert "sample submission not found" in capsys.readouterr().err


def test_validate_takes_the_sample_from_a_config(tmp_path, capsys):
    sample = write_sample(tmp_path)
    config = write_text(tmp_path / "exp.yaml", f"data:\n  sample_submission: {sample}\n")
    sub = write_text(tmp_path / "sub.csv", good_text())
    assert cli.main(["validate", sub, "--config", config]) == 0
    short = write_text(tmp_path / "short.csv", "image_name,target\nISIC_0000000,0.5\n")
    assert cli.main(["validate", short, "--config", config]) == 1
    assert "19 image(s) of the sample are missing" in capsys.readouterr().err


SUBMISSION_CELLS = st.one_of(st.sampled_from(IDS[:4] + ["0", "1", "0.5", "nan", "", "inf", "-1", "2", "x",
                                                       "1e-3", '"', ",", "image_name", "target"]),
                             st.text(max_size=5))


@st.composite
def submission_documents(draw):
    if draw(st.booleans()):
        return draw(st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode)))
    header = draw(st.sampled_from([["image_name", "target"], ["target", "image_name"], ["image_name"],
                                   ["image_name", "target", "extra"], ["id", "target"]]))
    rows = draw(st.lists(st.lists(SUBMISSION_CELLS, min_size=len(header), max_size=len(header)), max_size=8))
    buffer = [",".join(header)] + [",".join(row) for row in rows]  # raw join: quotes and commas stay raw
    return ("\n".join(buffer) + "\n").encode()


@given(submission_documents())
@settings(deadline=None, max_examples=150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_validate_of_arbitrary_csv_passes_only_valid_files_and_fails_clearly(tmp_path, document):
    sample_path = tmp_path / "sample.csv"
    sample_path.write_text("image_name,target\n" + "\n".join(f"{i},0" for i in IDS[:4]) + "\n")
    path = tmp_path / "sub.csv"
    path.write_bytes(document)
    try:
        frame = submission.validate_submission(str(path), str(sample_path))
    except CheckFailed as error:
        assert "problem" in str(error)
        return
    assert list(frame.columns) == ["image_name", "target"]
    assert sorted(frame["image_name"]) == IDS[:4]
    values = frame["target"].astype(float)
    assert values.between(0, 1).all()


# --------------------------------------------------------------------------------------------------
# write_submission
# --------------------------------------------------------------------------------------------------

def test_write_submission_never_silently_overwrites(tmp_path, capsys, monkeypatch):
    sample = write_sample(tmp_path)
    path = str(tmp_path / "subs" / "run.csv")
    first = submission.write_submission(good_frame(), path, sample)
    assert first.backup is None and not first.unchanged
    original = Path(path).read_bytes()

    again = submission.write_submission(good_frame(), path, sample)
    assert again.unchanged and again.backup is None
    assert "unchanged" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "subs")) == ["run.csv"]

    monkeypatch.setattr(submission, "utc_stamp", lambda: "20200817T120000Z")
    changed = good_frame().assign(target=0.25)
    result = submission.write_submission(changed, path, sample)
    assert result.backup == str(tmp_path / "subs" / "run.20200817T120000Z.csv")
    assert Path(result.backup).read_bytes() == original
    assert pd.read_csv(path)["target"].eq(0.25).all()
    assert "run.20200817T120000Z.csv" in capsys.readouterr().err

    third = submission.write_submission(good_frame(), path, sample)  # same second: a distinct backup name
    assert third.backup == str(tmp_path / "subs" / "run.20200817T120000Z-1.csv")

    forced = submission.write_submission(changed, path, sample, force=True)
    assert forced.backup is None and "overwriting" in capsys.readouterr().err
    assert not [name for name in os.listdir(tmp_path / "subs") if ".tmp-" in name]


def test_write_submission_refuses_an_invalid_table(tmp_path):
    sample = write_sample(tmp_path)
    path = tmp_path / "run.csv"
    bad = good_frame()
    bad.loc[3, "target"] = np.nan
    with pytest.raises(CheckFailed, match="ISIC_0000003"):
        submission.write_submission(bad, str(path), sample)
    with pytest.raises(CheckFailed, match="missing"):
        submission.write_submission(good_frame().iloc[:5], str(path), sample)
    assert not path.exists()


# --------------------------------------------------------------------------------------------------
# submit and leaderboard against a stand-in `kaggle`
# --------------------------------------------------------------------------------------------------

STAND_IN = """#!{python}
import json, os, sys
with open({record!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if os.path.exists({output!r}):
    sys.stdout.write(open({output!r}).read())
sys.stderr.write(os.environ.get("STAND_IN_STDERR", ""))
sys.exit(int(os.environ.get("STAND_IN_EXIT", "0")))
"""


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """A stand-in `kaggle` first on PATH, credentials in KAGGLE_CONFIG_DIR, cwd = a fresh project."""
    project = tmp_path / "project"
    (project / "submissions").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.jsonl"
    output = tmp_path / "stand_in_output.txt"
    script = bin_dir / "kaggle"
    script.write_text(STAND_IN.format(python=sys.executable, record=str(record), output=str(output)))
    script.chmod(0o755)
    config_dir = tmp_path / "kaggle_config"
    config_dir.mkdir()
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "someone", "key": "0123abcd"}))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME", "STAND_IN_EXIT",
                 "STAND_IN_STDERR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(project)
    sample = write_sample(project)
    # A finished run whose submission this is: outputs/<name>/oof.csv gives the logged OOF AUC.
    run = project / "outputs" / "effnet-b3"
    run.mkdir(parents=True)
    oof = pd.DataFrame({"image_name": [f"T{i}" for i in range(8)], "patient_id": [f"P{i}" for i in range(8)],
                        "target": [0, 1, 0, 1, 0, 0, 1, 0], "pred": [0.1, 0.9, 0.2, 0.4, 0.5, 0.3, 0.8, 0.1],
                        "fold": [0, 0, 1, 1, 2, 2, 3, 3]})
    oof.to_csv(run / "oof.csv", index=False)
    sub = project / "submissions" / "effnet-b3.csv"
    sub.write_text(good_text())

    class StandIn:
        pass

    stand_in = StandIn()
    stand_in.project, stand_in.record, stand_in.output, stand_in.sample = project, record, output, sample
    stand_in.submission = "submissions/effnet-b3.csv"
    stand_in.config_dir, stand_in.home, stand_in.bin = config_dir, home, bin_dir
    stand_in.oof_auc = 14 / 15  # of the OOF above: 14 of 15 malignant-benign pairs ordered

    def calls():
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    stand_in.calls = calls
    return stand_in


def read_log(path="submissions/log.csv") -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_submit_runs_the_exact_kaggle_command_and_logs_it(kaggle, capsys):
    message = 'b3 at 512, "TTA" x8, folds 0-4'
    assert cli.main(["submit", kaggle.submission, "-m", message, "--sample", kaggle.sample]) == 0
    assert kaggle.calls() == [["competitions", "submit", "-c", COMPETITION, "-f", kaggle.submission,
                               "-m", message]]
    rows = read_log()
    assert len(rows) == 1
    row = rows[0]
    assert list(row) == ["time", "file", "sha256", "config", "oof_auc", "message", "folds"]
    assert row["file"] == kaggle.submission and row["message"] == message
    assert row["sha256"] == hashlib.sha256(Path(kaggle.submission).read_bytes()).hexdigest()
    assert row["config"] == "effnet-b3"
    assert float(row["oof_auc"]) == pytest.approx(kaggle.oof_auc)
    assert row["time"].endswith("Z")

    assert cli.main(["submit", kaggle.submission, "-m", "second", "--sample", kaggle.sample]) == 0
    assert [row["message"] for row in read_log()] == [message, "second"]
    assert Path("submissions/log.csv").read_text().count("time,file,sha256") == 1


def test_submit_takes_the_sample_from_the_run_config(kaggle):
    config = {"name": "effnet-b3", "data": {"sample_submission": kaggle.sample, "folds": 4}}
    (kaggle.project / "outputs" / "effnet-b3" / "config.yaml").write_text(json.dumps(config))
    assert cli.main(["submit", kaggle.submission, "-m", "from run config"]) == 0
    assert len(kaggle.calls()) == 1


def test_submit_uploads_to_the_competition_the_run_names(kaggle):
    """submission.competition of the submission's run (or of --config) names the competition; without it,
    the 2020 competition."""
    config = {"name": "effnet-b3", "data": {"sample_submission": kaggle.sample, "folds": 4},
              "submission": {"competition": "another-competition"}}
    (kaggle.project / "outputs" / "effnet-b3" / "config.yaml").write_text(json.dumps(config))
    assert cli.main(["submit", kaggle.submission, "-m", "elsewhere"]) == 0
    assert kaggle.calls()[-1][:3] == ["competitions", "submit", "-c"] and kaggle.calls()[-1][3] == "another-competition"
    experiment = kaggle.project / "other.yaml"
    experiment.write_text("submission:\n  competition: third-competition\n")
    base = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"
    (kaggle.project / "base.yaml").write_text(base.read_text())
    assert cli.main(["submit", kaggle.submission, "-m", "from --config", "--config", str(experiment),
                     "--sample", kaggle.sample]) == 0
    assert kaggle.calls()[-1][3] == "third-competition"


def test_submit_accepts_environment_credentials(kaggle, monkeypatch):
    (kaggle.config_dir / "kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123abcd")
    assert cli.main(["submit", kaggle.submission, "-m", "env", "--sample", kaggle.sample]) == 0
    assert len(read_log()) == 1


def test_submit_without_credentials_says_what_to_do_and_logs_nothing(kaggle, monkeypatch, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(empty))
    monkeypatch.setenv("KAGGLE_USERNAME", "half-set")
    assert cli.main(["submit", kaggle.submission, "-m", "no creds", "--sample", kaggle.sample]) == 2
    err = capsys.readouterr().err
    assert "no Kaggle credentials" in err and "kaggle.json" in err and "KAGGLE_KEY" in err
    assert "only KAGGLE_USERNAME is set" in err
    assert kaggle.calls() == []
    assert not Path("submissions/log.csv").exists()


def test_a_bad_credentials_file_is_named(kaggle, capsys):
    (kaggle.config_dir / "kaggle.json").write_text("{not json")
    assert cli.main(["submit", kaggle.submission, "-m", "x", "--sample", kaggle.sample]) == 2
    assert "kaggle.json is not readable JSON" in capsys.readouterr().err
    assert kaggle.calls() == []


@pytest.mark.parametrize("exit_status,stdout,stderr", [
    ("1", "", "403 - Forbidden: you must accept this competition's rules\n"),
    ("0", "Could not submit to competition\n", ""),
])
def test_a_failed_upload_exits_1_and_logs_nothing(kaggle, monkeypatch, capsys, exit_status, stdout, stderr):
    Path("submissions/log.csv").write_text("time,file,sha256,config,oof_auc,message\n"
                                           "2020-08-01T00:00:00Z,old.csv,abc,old,0.9,earlier\n")
    before = Path("submissions/log.csv").read_bytes()
    monkeypatch.setenv("STAND_IN_EXIT", exit_status)
    monkeypatch.setenv("STAND_IN_STDERR", stderr)
    kaggle.output.write_text(stdout)
    assert cli.main(["submit", kaggle.submission, "-m", "will fail", "--sample", kaggle.sample]) == 1
    err = capsys.readouterr().err
    assert "failed" in err and (stderr.strip() or stdout.strip()) in err and "rules" in err
    assert len(kaggle.calls()) == 1
    assert Path("submissions/log.csv").read_bytes() == before


def test_missing_kaggle_executable_is_explained(kaggle, monkeypatch, capsys, tmp_path):
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    monkeypatch.setenv("PATH", str(nowhere))
    monkeypatch.setattr(sys, "executable", str(nowhere / "python"))
    assert cli.main(["submit", kaggle.submission, "-m", "x", "--sample", kaggle.sample]) == 2
    assert "pip install kaggle" in capsys.readouterr().err
    assert not Path("submissions/log.csv").exists()


def test_an_invalid_submission_is_never_uploaded(kaggle, capsys):
    Path(kaggle.submission).write_text("image_name,target\nISIC_0000000,0.5\n")
    assert cli.main(["submit", kaggle.submission, "-m", "x", "--sample", kaggle.sample]) == 1
    assert "missing" in capsys.readouterr().err
    assert kaggle.calls() == [] and not Path("submissions/log.csv").exists()


def test_submit_from_the_command_line_in_a_subprocess(kaggle):
    environment = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "melanoma", "submit", kaggle.submission, "-m", "cli", "--sample",
               kaggle.sample]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    assert kaggle.calls() == [["competitions", "submit", "-c", COMPETITION, "-f", kaggle.submission,
                               "-m", "cli"]]
    environment["STAND_IN_EXIT"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(read_log()) == 1


def test_leaderboard_joins_kaggle_scores_to_the_log(kaggle, capsys):
    Path("submissions/log.csv").write_text(
        "time,file,sha256,config,oof_auc,message\n"
        "2020-08-10T10:00:00Z,submissions/effnet-b3.csv,aaa,effnet-b3,0.921,first try\n"
        "2020-08-12T09:00:00Z,submissions/effnet-b3.csv,bbb,effnet-b3,0.925,\"second, with TTA\"\n"
        "2020-08-13T09:00:00Z,submissions/blend-x.csv,ccc,blend-x,0.930,never reached kaggle\n")
    kaggle.output.write_text(
        "Warning: Looks like you're using an outdated API Version\n"
        "fileName,date,description,status,publicScore,privateScore\n"
        "effnet-b3.csv,2020-08-12 09:00:05,\"second, with TTA\",complete,0.9412,0.9301\n"
        "effnet-b3.csv,2020-08-10 10:00:04,first try,complete,0.9350,0.9222\n"
        "manual.csv,2020-08-01 08:00:00,uploaded by hand,complete,0.9000,0.8900\n")
    assert cli.main(["leaderboard"]) == 0
    assert kaggle.calls() == [["competitions", "submissions", "-c", COMPETITION, "--csv"]]
    table = pd.read_csv("submissions/leaderboard.csv", dtype=str, keep_default_na=False)
    first, second, missing, manual = table.to_dict(orient="records")
    assert (first["message"], first["public_score"], first["private_score"]) == ("first try", "0.9350", "0.9222")
    assert (second["oof_auc"], second["public_score"]) == ("0.925", "0.9412")
    assert missing["status"] == "not found on Kaggle" and missing["public_score"] == ""
    assert manual["file"] == "manual.csv" and "not in log" in manual["status"]
    out = capsys.readouterr().out
    assert "0.9412" in out and "first try" in out


def test_leaderboard_without_credentials_fails_clearly(kaggle, monkeypatch, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(empty))
    assert cli.main(["leaderboard"]) == 2
    err = capsys.readouterr().err
    assert "no Kaggle credentials" in err and "No scores were fetched" in err
    assert "Nothing was submitted" not in err  # leaderboard never submits
    assert kaggle.calls() == []


def test_kaggle_credentials_sources(kaggle, monkeypatch, tmp_path):
    assert kaggle_cli.kaggle_credentials().endswith("kaggle.json")
    (kaggle.config_dir / "kaggle.json").write_text(json.dumps({"username": "someone"}))
    with pytest.raises(ExternalToolError, match="lacks 'username' and 'key'"):
        kaggle_cli.kaggle_credentials()
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    assert kaggle_cli.kaggle_credentials() == "KAGGLE_API_TOKEN"
