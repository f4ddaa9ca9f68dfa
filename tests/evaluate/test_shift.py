"""`melanoma shift`: adversarial validation between a config's training and test records. Two sets drawn
from one distribution give an interval that holds 0.5; a shift planted in one colour channel is found and
named as the top feature; the files it writes, and the validation weights a config takes from them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import write_config

from melanoma import cli
from melanoma.data import make_records
from melanoma.tools import synth

FAST = ["--folds", "3", "--bootstrap", "300"]


def shift_json(config: Path, capsys, *extra) -> dict:
    capsys.readouterr()
    assert cli.main(["shift", "--config", str(config), "--json", *FAST, *extra]) == 0
    return json.loads(capsys.readouterr().out)


FEATURES = "features:\n  histogram_bins: 4\n  workers: 1\n"


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> dict:
    """Generated data whose training and test images come from one distribution, 40 patients each (tiny_data's
    6 test patients are too few to say anything about a distribution), and its records at 32 px."""
    root = tmp_path_factory.mktemp("two-sets")
    paths = synth.synthesize(str(root / "data"), size=48, patients=40, test_patients=40, seed=5,
                             progress=False)["paths"]
    make_records.build_records(paths["train_csv"], paths["test_csv"], paths["train_images"], paths["test_images"],
                               str(root / "records"), size=32, parts=6, test_parts=3, workers=1)
    return {"root": root, "records": root / "records", **paths}


def test_one_distribution_gives_an_interval_that_holds_one_half(two_sets, tmp_path, capsys):
    tiny_data = two_sets
    config = write_config(tmp_path, tiny_data, FEATURES)
    capsys.readouterr()
    assert cli.main(["shift", "--config", str(config), *FAST]) == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "outputs" / "shift" / "tiny-train-test"
    result = json.loads((folder / "shift.json").read_text())
    assert f"AUC {result['auc']:.4f}" in printed and f"1. {result['top_features'][0]}" in printed
    low, high = result["auc_ci"]
    assert low <= 0.5 <= high, result
    assert "no shift found" in result["verdict"]
    likeness = pd.read_csv(folder / "test_likeness.csv")
    train = pd.read_csv(tiny_data["records"] / "train.csv")
    test = pd.read_csv(tiny_data["records"] / "test.csv")
    assert len(likeness) == len(train) + len(test) and likeness["likeness"].between(0, 1).all()
    assert set(likeness.loc[likeness["set"] == "train", "image_name"]) == set(train["image_name"])
    # patient-grouped folds: a patient's images are held out together
    assert (likeness.groupby(["set", "patient_id"])["fold"].nunique() == 1).all()
    assert (folder / "shift.png").stat().st_size > 0 and (folder / "importance.csv").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny-train-test"]  # nothing half-written beside it


def moved_lab_b(source: Path, target: Path, delta: int) -> None:
    """Copies of the JPEGs in `source` with LAB's b channel (yellow-blue) moved by `delta` in every pixel."""
    shutil.copytree(source, target)
    for path in target.glob("*.jpg"):
        lab = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2LAB).astype(np.int16)
        lab[..., 2] = np.clip(lab[..., 2] + delta, 0, 255)
        cv2.imwrite(str(path), cv2.cvtColor(lab.astype(np.uint8), cv2.COLOR_LAB2BGR))


def test_a_shift_planted_in_one_colour_channel_is_found_and_named(two_sets, tmp_path, capsys):
    tiny_data = two_sets
    moved_lab_b(Path(tiny_data["test_images"]), tmp_path / "moved", 12)
    records = tmp_path / "records"
    make_records.build_records(tiny_data["train_csv"], tiny_data["test_csv"], tiny_data["train_images"],
                               str(tmp_path / "moved"), str(records), size=32, parts=6, test_parts=3, workers=1)
    data = dict(tiny_data, records=records)
    config = write_config(tmp_path, data, FEATURES)
    result = shift_json(config, capsys)
    assert result["auc_ci"][0] > 0.8, result
    assert result["top_features"][0].startswith(("moment_lab_b", "hist_lab_b")), result["top_importance"]
    assert "differ" in result["verdict"]


def test_shift_refuses_what_it_cannot_compare(tiny_data, tmp_path, capsys):
    config = write_config(tmp_path, tiny_data)
    assert cli.main(["shift", "--config", str(config), "--between", "competition,external"]) == 2
    assert "needs data.external_files" in capsys.readouterr().err
    assert cli.main(["shift", "--config", str(config), "--set", "data.test_files=null"]) == 2
    assert "data.test_files is null" in capsys.readouterr().err
    assert cli.main(["shift", "--config", str(config), "--set", "data.test_files=/nowhere/test*.tfrec"]) == 2
    assert "/nowhere/test*.tfrec" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "shift").exists()


# --------------------------------------------------------------------------------------------------
# validation_weights.file: a config weighs or selects its validation images by test-likeness
# --------------------------------------------------------------------------------------------------

def likeness_csv(path: Path, train_names, seed: int = 0, test_names=()) -> pd.Series:
    """A test_likeness.csv as `shift --between train,test` writes it, with random likeness."""
    rng = np.random.default_rng(seed)
    names = list(train_names) + list(test_names)
    table = pd.DataFrame({"image_name": names, "patient_id": 0,
                          "set": ["train"] * len(train_names) + ["test"] * len(test_names),
                          "likeness": rng.uniform(0.01, 0.9, len(names)), "fold": 0})
    table.to_csv(path, index=False)
    return table.set_index("image_name")["likeness"]


def test_weights_are_the_odds_of_test_likeness_or_the_most_test_like_share(tmp_path):
    from melanoma.core import config as config_lib
    from melanoma.core.errors import DataError
    from melanoma.data import validation_weights

    names = [f"ISIC_{i:07d}" for i in range(20)]
    known = likeness_csv(tmp_path / "test_likeness.csv", names, test_names=["ISIC_9000000"])
    config = config_lib.as_config({"validation_weights": {"file": str(tmp_path / "test_likeness.csv"),
                                                          "weighting": "odds", "top": 0.25}})
    weights = validation_weights.fold_weights(config, names[:10])
    odds = known[names[:10]] / (1 - known[names[:10]])
    np.testing.assert_allclose(weights, odds / odds.mean())  # none reaches the cap here
    assert weights.mean() == pytest.approx(1.0)
    config["validation_weights"]["weighting"] = "top"
    kept = validation_weights.fold_weights(config, names[:12])
    assert kept.sum() == 3 and set(np.array(names[:12])[kept == 1]) == set(known[names[:12]].nlargest(3).index)
    with pytest.raises(DataError, match="no test-likeness for 1 validation image"):
        validation_weights.fold_weights(config, names[:3] + ["ISIC_9000000"])  # a test image is no validation image
    pd.read_csv(tmp_path / "test_likeness.csv").assign(set="competition").to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match="not train and test"):
        validation_weights.read_likeness(str(tmp_path / "other.csv"))


def test_a_cnn_fold_chooses_and_scores_on_the_most_test_like_validation_images(tiny_data, tmp_path, monkeypatch,
                                                                                capsys):
    import reliability_helpers as helpers
    from sklearn.metrics import roc_auc_score

    helpers.install_tiny_model(monkeypatch)
    train = pd.read_csv(tiny_data["records"] / "train.csv")
    config = write_config(tmp_path, tiny_data)
    weights = [f"validation_weights.file={tmp_path / 'test_likeness.csv'}", "validation_weights.weighting=top",
               "validation_weights.top=0.5", "train.epochs=2", "train.checkpoint=best_auc"]
    # a CSV made for other records is refused before the run is bound
    likeness_csv(tmp_path / "test_likeness.csv", train["image_name"][5:], seed=3)
    assert cli.main(["train", "--config", str(config), "--set", *weights]) == 2
    assert "has no test-likeness for" in capsys.readouterr().err and not (tmp_path / "outputs" / "tiny").exists()
    likeness_csv(tmp_path / "test_likeness.csv", train["image_name"], seed=3)
    assert cli.main(["train", "--config", str(config), "--set", *weights]) == 0
    assert "weighted by test-likeness (top)" in capsys.readouterr().out
    run = tmp_path / "outputs" / "tiny"
    known = pd.read_csv(tmp_path / "test_likeness.csv").set_index("image_name")["likeness"]
    for fold in (0, 1):
        epochs = pd.read_csv(run / f"fold{fold}" / "val_epochs.csv").merge(train[["image_name", "target"]])
        history = pd.read_csv(run / f"fold{fold}" / "history.csv")
        for epoch, rows in epochs.groupby("epoch"):
            top = rows.assign(likeness=rows["image_name"].map(known)).nlargest(round(len(rows) / 2), "likeness")
            expected = roc_auc_score(top["target"], top["pred"]) if top["target"].nunique() == 2 else np.nan
            assert history.loc[history["epoch"] == epoch, "val_auc"].iloc[0] == pytest.approx(expected, nan_ok=True)
    oof = pd.read_csv(run / "oof.csv")
    assert sorted(oof.groupby("fold")["weight"].sum().tolist()) == [round(n / 2) for n in sorted(
        oof.groupby("fold").size().tolist())]
    capsys.readouterr()
    assert cli.main(["score", str(run / "oof.csv"), "--json", "--bootstrap", "0"]) == 0
    scored = json.loads(capsys.readouterr().out)
    weighted = roc_auc_score(oof["target"], oof["pred"], sample_weight=oof["weight"])
    assert scored["auc_weighted"] == pytest.approx(weighted)
    assert scored["auc"] == pytest.approx(roc_auc_score(oof["target"], oof["pred"]))  # the plain one stays
    # the option binds the run: another rule is another experiment
    assert cli.main(["train", "--config", str(config), "--set", *weights, "validation_weights.weighting=odds"]) == 2
    assert "validation_weights.weighting" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(config), "--set", *weights,
                     f"validation_weights.file={tmp_path / 'none.csv'}", "name=other"]) == 2
    assert "config key 'validation_weights.file'" in capsys.readouterr().err
