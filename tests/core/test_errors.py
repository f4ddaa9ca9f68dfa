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
