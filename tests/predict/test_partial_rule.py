"""The partial rule, one for every family: with folds missing, infer (and blend) exit 2 naming them;
--allow-partial writes <name>-folds....csv and the record JSON beside it; submit refuses a partial file unless
asked, and logs the folds and the OOF AUC of whatever it uploads."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pandas as pd
import pytest
from conftest import run_folder, tiny_trees, write_config

from melanoma import cli
from melanoma.core.metrics import auc as competition_auc

STAND_IN_KAGGLE = """#!{python}
import json, sys
with open({record!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
print("Successfully submitted")
"""


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """A stand-in `kaggle` CLI on PATH with credentials; returns the file its calls are recorded in. The
    working directory is tmp_path, so submit's log is tmp_path/submissions/log.csv."""
    calls = tmp_path / "kaggle-calls.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kaggle").write_text(STAND_IN_KAGGLE.format(python=sys.executable, record=str(calls)))
    (bin_dir / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123abcd")
    monkeypatch.chdir(tmp_path)
    return calls


def test_a_partial_ensemble_is_named_as_such_and_submitted_only_when_asked(run_copy, tmp_path, capsys, kaggle):
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

    sub = "submissions/tiny-folds0.csv"
    capsys.readouterr()
    assert cli.main(["submit", sub, "-m", "one fold"]) == 2
    assert "partial ensemble (folds 0 of 2)" in capsys.readouterr().err and not kaggle.exists()
    assert cli.main(["submit", sub, "-m", "one fold", "--allow-partial"]) == 0
    [row] = pd.read_csv("submissions/log.csv", dtype=str).to_dict("records")
    assert row["folds"] == "0 of 2" and row["config"] == "tiny"
    fold0 = pd.read_csv(run / "fold0" / "oof.csv")
    assert float(row["oof_auc"]) == pytest.approx(competition_auc(fold0["target"], fold0["pred"]), abs=1e-6)




def test_a_tabular_run_follows_the_same_rule(tiny_data, tmp_path, capsys, kaggle):
    """1 of 2 folds of a tree run trained: infer exits 2 naming the missing fold; --allow-partial writes
    tiny-folds0.csv with its record; submit refuses it unless asked, then logs fold 0 and its OOF AUC."""
    path = write_config(tmp_path, tiny_data, tiny_trees(max_iter=10))
    assert cli.main(["train", "--config", str(path), "--fold", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["infer", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fold(s) 1 of run tiny are not trained" in err and "--allow-partial" in err
    assert not (tmp_path / "submissions").exists()
    assert cli.main(["infer", "--config", str(path), "--allow-partial"]) == 0
    record = json.loads((tmp_path / "submissions" / "tiny-folds0.json").read_text())
    assert record["family"] == "tabular" and record["folds"] == [0] and record["partial"] is True
    assert not (tmp_path / "submissions" / "tiny.csv").exists()
    assert cli.main(["submit", "submissions/tiny-folds0.csv", "-m", "trees, one fold"]) == 2
    assert "partial ensemble" in capsys.readouterr().err and not kaggle.exists()
    assert cli.main(["submit", "submissions/tiny-folds0.csv", "-m", "trees, one fold", "--allow-partial"]) == 0
    [row] = pd.read_csv("submissions/log.csv", dtype=str).to_dict("records")
    fold0 = pd.read_csv(run_folder(tmp_path) / "fold0" / "oof.csv")
    assert row["folds"] == "0 of 2"
    assert float(row["oof_auc"]) == pytest.approx(competition_auc(fold0["target"], fold0["pred"]), abs=1e-6)


def test_a_blend_writes_its_record_and_submit_logs_its_oof_auc(run_copy, tiny_data, tmp_path, capsys, kaggle):
    shutil.copytree(run_folder(tmp_path), tmp_path / "outputs" / "twin")
    twin = write_config(tmp_path, tiny_data, name="twin")
    assert cli.main(["blend", str(run_copy), str(twin), "--method", "rank", "--name", "pair"]) == 0
    record = json.loads((tmp_path / "submissions" / "blend-pair.json").read_text())
    assert record["family"] == "blend" and record["folds"] == [0, 1] and record["partial"] is False
    capsys.readouterr()
    assert cli.main(["submit", "submissions/blend-pair.csv", "-m", "a blend"]) == 0
    assert "OOF AUC -" not in capsys.readouterr().err
    [row] = pd.read_csv("submissions/log.csv", dtype=str).to_dict("records")
    blended = pd.read_csv(tmp_path / "outputs" / "blend-pair" / "oof.csv")
    assert row["config"] == "blend-pair" and row["folds"] == "0 1 of 2"
    assert float(row["oof_auc"]) == pytest.approx(competition_auc(blended["target"], blended["pred"]), abs=1e-6)
