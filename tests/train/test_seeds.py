"""Seeds as an axis: `train.py --seeds N` trains the config's runs <name>-s0.. (each bound to its config, with
seed + k), `infer.py --seeds N` predicts each and writes their mean as a blend-like run, `compare` shows them
as one row and `blend --seeds` takes a config's seeds as members."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import reliability_helpers as helpers
import yaml
from conftest import write_config
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.evaluate import compare


@pytest.fixture
def tiny_model(monkeypatch):
    helpers.install_tiny_model(monkeypatch)


def test_seeds_train_infer_compare_and_blend(tiny_data, tmp_path, tiny_model, capsys):
    path = str(write_config(tmp_path, tiny_data))
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    assert cli.main(["train", "--config", path, "--seeds", "2"]) == 0
    for index in (0, 1):
        saved = yaml.safe_load((outputs / f"tiny-s{index}" / "config.yaml").read_text())
        assert saved["name"] == f"tiny-s{index}" and saved["seed"] == 42 + index  # base.yaml's seed + k
        assert (outputs / f"tiny-s{index}" / "oof.csv").is_file()
    assert not (outputs / "tiny").exists()
    printed = capsys.readouterr().out
    assert "seeds of tiny: OOF AUC tiny-s0" in printed and "over 2 of 2 runs" in printed

    # more seeds later: the finished ones are left as they are
    assert cli.main(["train", "--config", path, "--seeds", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already finished") == 4 and "over 3 of 3 runs" in printed
    aucs = {}
    for index in range(3):
        oof = pd.read_csv(outputs / f"tiny-s{index}" / "oof.csv")
        aucs[f"tiny-s{index}"] = roc_auc_score(oof["target"], oof["pred"])
    assert len({round(auc, 6) for auc in aucs.values()}) > 1  # the seeds give other models

    assert cli.main(["infer", "--config", path, "--seeds", "3"]) == 0
    runs = [pd.read_csv(submissions / f"tiny-s{index}.csv").set_index("image_name")["target"] for index in range(3)]
    mean = pd.read_csv(submissions / "tiny-seeds.csv").set_index("image_name")["target"]
    np.testing.assert_allclose(mean, pd.concat(runs, axis=1).mean(axis=1).loc[mean.index])
    record = json.loads((submissions / "tiny-seeds.json").read_text())
    assert record["family"] == "seeds" and record["members"] == ["tiny-s0", "tiny-s1", "tiny-s2"]
    ensemble = pd.read_csv(outputs / "tiny-seeds" / "oof.csv").set_index("image_name")
    oofs = [pd.read_csv(outputs / f"tiny-s{index}" / "oof.csv").set_index("image_name")["pred"] for index in range(3)]
    np.testing.assert_allclose(ensemble["pred"], pd.concat(oofs, axis=1).mean(axis=1).loc[ensemble.index])
    blend_json = json.loads((outputs / "tiny-seeds" / "blend.json").read_text())
    assert blend_json["kind"] == "seeds" and [m["seed"] for m in blend_json["members"]] == [42, 43, 44]

    # compare: the three seeds are one row (the mean of their AUCs), the seeds' mean a blend row beside it
    rows = {row["name"]: row for row in compare.compare_runs(str(outputs), bootstrap=0)}
    assert set(rows) == {"tiny", "tiny-seeds"}
    group = rows["tiny"]
    assert group["kind"] == "seeds" and group["runs"] == ["tiny-s0", "tiny-s1", "tiny-s2"]
    assert group["auc"] == pytest.approx(np.mean(list(aucs.values())))
    assert {seed["name"]: seed["auc"] for seed in group["seeds"]} == pytest.approx(aucs)
    assert group["seed_std"] == pytest.approx(np.std(list(aucs.values()), ddof=1))
    assert group["ci95"][0] < group["auc"] < group["ci95"][1]
    assert rows["tiny-seeds"]["kind"] == "blend"
    assert cli.main(["compare", str(outputs), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert "seed groups" in table and "tiny: 3 seeds, mean" in table
    assert cli.main(["compare", str(outputs), "--bootstrap", "0", "--each-seed", "--json"]) == 0
    assert {row["name"] for row in json.loads(capsys.readouterr().out)} == {"tiny-s0", "tiny-s1", "tiny-s2",
                                                                            "tiny-seeds"}

    # blend takes a config's seeds as members
    assert cli.main(["blend", path, "--seeds", "3", "--method", "rank", "--name", "tiny-seeds-rank"]) == 0
    summary = json.loads((outputs / "blend-tiny-seeds-rank" / "blend.json").read_text())
    assert [member["name"] for member in summary["members"]] == ["tiny-s0", "tiny-s1", "tiny-s2"]


def test_seeds_refuse_what_they_cannot_do(tiny_data, tmp_path, tiny_model, capsys):
    path = str(write_config(tmp_path, tiny_data))
    assert cli.main(["train", "--config", path, "--seeds", "0"]) == 2
    assert "--seeds takes the number of seeds" in capsys.readouterr().err
    assert cli.main(["train", "--config", path, "--seeds", "2", "--set", "seed=7"]) == 2
    assert "drop --set seed=" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").iterdir())
    # infer --seeds before every seed trained: refused before any prediction, naming the missing run
    assert cli.main(["train", "--config", path, "--seeds", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["infer", "--config", path, "--seeds", "2"]) == 2
    assert "tiny-s1/config.yaml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "submissions").exists() or not list((tmp_path / "submissions").iterdir())
    assert cli.main(["blend", path, "--seeds", "2"]) == 2
    assert "seed run" in capsys.readouterr().err
