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
from conftest import run_folder

from melanoma import cli


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
