"""A seeds' mean or a blend of seeds is made of runs of one experiment, or says so in its name and record
(`--allow-mixed`); `blend --seeds 0` is refused as train's is; blend's hint never suggests the method it used."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import reliability_helpers as helpers
from conftest import write_config

from melanoma import cli
from melanoma.evaluate import blend


def test_seed_runs_of_two_experiments_are_refused_or_named_mixed(tiny_data, tmp_path, capsys, monkeypatch):
    helpers.install_tiny_model(monkeypatch)
    path = str(write_config(tmp_path, tiny_data))
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    assert cli.main(["train", "--config", path, "--seeds", "2"]) == 0
    # one seed trained again under other settings
    assert cli.main(["train", "--config", path, "--set", "name=tiny-s1", "seed=43", "model.dropout=0.5",
                     "--force"]) == 0
    capsys.readouterr()
    assert cli.main(["blend", path, "--seeds", "0"]) == 2
    assert "--seeds takes the number of seeds" in capsys.readouterr().err
    assert cli.main(["infer", "--config", path, "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "not one experiment" in err and "tiny-s1 (model.dropout: 0.2 -> 0.5)" in err and "--allow-mixed" in err
    assert not submissions.exists() or not list(submissions.glob("tiny-seeds*"))
    assert cli.main(["blend", path, "--seeds", "2"]) == 2
    assert "not one experiment" in capsys.readouterr().err

    assert cli.main(["infer", "--config", path, "--seeds", "2", "--allow-mixed"]) == 0
    record = json.loads((submissions / "tiny-seeds-mixed.json").read_text())
    assert record["mixed"] and "model.dropout" in record["mixed"][0]
    assert json.loads((outputs / "tiny-seeds-mixed" / "blend.json").read_text())["mixed"] == record["mixed"]
    assert not (submissions / "tiny-seeds.csv").exists()
    assert cli.main(["blend", path, "--seeds", "2", "--allow-mixed", "--name", "s"]) == 0
    summary = json.loads((outputs / "blend-s-mixed" / "blend.json").read_text())
    assert summary["mixed"] and summary["name"] == "blend-s-mixed"


def test_the_below_best_hint_suggests_rank_only_when_the_method_is_not_rank():
    members = [SimpleNamespace(name=name, path=f"outputs/{name}") for name in ("a", "b")]
    target = np.array([0, 1, 0, 1, 0, 1])
    matrix = np.array([[0.1, 0.9], [0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.3, 0.7], [0.7, 0.3]])
    folds = np.array([0, 0, 0, 1, 1, 1])
    for method, hinted in (("rank", False), ("mean", True)):
        summary, _, _ = blend._blend_oof(method, members, matrix, target, folds, 10)
        assert summary["below_best_member"] and ("--method rank" in summary["warning"]) == hinted, summary
