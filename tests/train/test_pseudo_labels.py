"""Pseudo-labels (pseudo_labels.source): a finished run's or blend's test predictions become soft labels of the test
images the confidence rule keeps, which join every fold's training set with their weight and never its validation
set; a run is bound to its source and refuses one whose predictions changed; a bad source is named before any
training. The source here is conftest's trained tiny run (2 folds, each with its test.csv)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import snapshot, write_config

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core.errors import CheckFailed
from melanoma.data import pseudo_labels
from melanoma.runs import run_config


def fold_predictions(run: Path, fold: int) -> pd.Series:
    return pd.read_csv(run / f"fold{fold}" / "test.csv", dtype={"image_name": str}).set_index("image_name")["pred"]


def rule_between(source: Path) -> tuple[float, float]:
    """Thresholds that keep part of the source's test images in every fold, not all of them."""
    values = pd.concat([fold_predictions(source, fold) for fold in (0, 1)])
    return float(values.quantile(0.4)), float(values.quantile(0.7))


def pl_args(source: Path, low: float, high: float, *extra: str) -> list[str]:
    return ["--set", "name=pl", f"pseudo_labels.source={source}", f"pseudo_labels.low={low}",
            f"pseudo_labels.high={high}", "pseudo_labels.weight=2.5", *extra]


def oof_names(run: Path) -> set[str]:
    return set(pd.read_csv(run / "oof.csv", dtype={"image_name": str})["image_name"])


def test_pseudo_labelled_test_images_train_with_the_rule_and_weight_and_are_never_validated(run_copy, tmp_path,
                                                                                           tiny_data, capsys):
    source = tmp_path / "outputs" / "tiny"
    low, high = rule_between(source)
    assert cli.main(["train", "--config", str(run_copy), *pl_args(source, low, high)]) == 0
    run = tmp_path / "outputs" / "pl"
    test_names = set(pd.read_csv(tiny_data["records"] / "test.csv", dtype={"image_name": str})["image_name"])
    train_names = set(pd.read_csv(tiny_data["records"] / "train.csv", dtype={"image_name": str})["image_name"])
    assert oof_names(run) == oof_names(source) == train_names  # the OOF: the training images, each once
    for fold in (0, 1):
        used = pd.read_csv(run / f"fold{fold}" / "pseudo_labels.csv", dtype={"image_name": str})
        predicted = fold_predictions(source, fold)  # matched folds: the source's fold-K models labelled fold K
        kept = predicted[(predicted <= low) | (predicted >= high)]
        assert 0 < len(used) < len(predicted)
        assert set(used["image_name"]) == set(kept.index) <= test_names
        np.testing.assert_allclose(used.set_index("image_name")["label"].loc[kept.index], kept)
        assert (used["weight"] == 2.5).all()
        fold_oof = pd.read_csv(run / f"fold{fold}" / "oof.csv", dtype={"image_name": str})
        assert not set(used["image_name"]) & set(fold_oof["image_name"])  # never validated
        summary = json.loads((run / f"fold{fold}" / "data.json").read_text())
        assert summary["pseudo_labels"]["images"] == len(used) and summary["pseudo_labels"]["folds"] == "matched"
        assert summary["training_images_per_epoch"] == summary["training"]["competition"]["images"] + len(used)
    printed = capsys.readouterr().out
    assert "pseudo-labelled test images:" in printed
    history = pd.read_csv(run / "fold0" / "history.csv")  # no training AUC that reads soft labels as malignant
    assert "val_auc" in history and not {"auc", "precision", "recall"} & set(history.columns)
    recorded = yaml.safe_load((run / "config.yaml").read_text())["pseudo_labels_source"]
    assert recorded["path"] == str(source) and recorded["folds"] == "matched" and len(recorded["sha256"]) == 64
    assert recorded["files"] == [str(source / f"fold{fold}" / "test.csv") for fold in (0, 1)]
    # infer takes the run as any other; the source's record stays out of the config it reads back
    assert cli.main(["infer", "--config", str(run_copy), "--set", "name=pl"]) == 0
    assert (tmp_path / "submissions" / "pl.csv").is_file()


def test_the_training_stream_mixes_the_pseudo_labelled_images_in_with_their_label_and_weight(run_copy, tmp_path,
                                                                                              tiny_data):
    import tensorflow as tf

    from melanoma.data import fold_data as fold_data_lib
    from melanoma.input import pipeline
    from melanoma.train import cnn_training

    source = tmp_path / "outputs" / "tiny"
    low, high = rule_between(source)
    config = config_lib.load_config(run_copy, pl_args(source, low, high)[1:] + ["train.class_weight=3"])
    run_config.save_config(config, record=pseudo_labels.record(config))  # the run bound to its source
    fold_data, _ = fold_data_lib.read(config, 0, str(tmp_path / "outputs" / "pl" / "fold0"))
    pseudo = cnn_training.pseudo_labelled(config, fold_data)
    assert pseudo.class_weight == 3 and pseudo.labelled_images == fold_data.train_images - len(pseudo.names)
    stream = pipeline.train_examples([f.path for f in fold_data.train_files], config, seed=1,
                                     keep=fold_data.record_filter(), sources=fold_data.train_sources, pseudo=pseudo)
    seen = {}
    for example in stream.take(12 * fold_data.train_images):  # a pseudo-labelled image is missed with p < e^-10
        seen[example["image_name"].numpy().decode()] = (float(example["target"]), float(example["weight"]))
    labels = dict(zip(pseudo.names, pseudo.labels))
    test_seen = {name: value for name, value in seen.items() if name in labels}
    assert set(test_seen) == set(labels)  # every pseudo-labelled image is drawn, and no other test image
    for name, (target, weight) in test_seen.items():
        assert target == pytest.approx(labels[name]) and weight == 2.5
    labelled = {name: value for name, value in seen.items() if name not in labels}
    assert not set(labelled) & fold_data.valid_names  # validation images never train
    assert {weight for target, weight in labelled.values() if target == 1} == {3.0}  # class weight as sample weight
    assert {weight for target, weight in labelled.values() if target == 0} == {1.0}
    batches = pipeline.train_dataset([f.path for f in fold_data.train_files], config, 4, seed=1,
                                     keep=fold_data.record_filter(), sources=fold_data.train_sources, pseudo=pseudo)
    inputs, target, weight = next(iter(batches))
    assert target.dtype == tf.float32 and weight.shape == (4,)


def test_a_run_refuses_a_source_whose_predictions_changed_since_it_was_bound(run_copy, tmp_path, capsys):
    source = tmp_path / "outputs" / "tiny"
    low, high = rule_between(source)
    args = pl_args(source, low, high)
    assert cli.main(["train", "--config", str(run_copy), "--fold", "0", *args]) == 0
    run = tmp_path / "outputs" / "pl"
    test_csv = source / "fold1" / "test.csv"
    original = test_csv.read_text()
    table = pd.read_csv(test_csv)
    table.loc[0, "pred"] = 1 - table.loc[0, "pred"]  # the source predicted again, differently
    table.to_csv(test_csv, index=False)
    capsys.readouterr()
    before = snapshot(run)
    for command in (["train", "--config", str(run_copy), "--fold", "1", *args],
                    ["train", "--config", str(run_copy), "--fold", "0", "--resume", *args],
                    ["infer", "--config", str(run_copy), "--set", "name=pl", "--allow-partial"]):
        assert cli.main(command) == 2, command
        error = capsys.readouterr().err
        assert "changed since the run was bound" in error and str(source) in error, error
        assert "--force" in error and "restore the source" in error.lower()
    assert snapshot(run) == before, "a refused run must not change a file"
    assert not (tmp_path / "submissions" / "pl-folds0.csv").exists()
    # restored, the run carries on; or, under the new labels, --force retrains it and records them
    test_csv.write_text(original)
    assert cli.main(["train", "--config", str(run_copy), "--fold", "1", *args]) == 0
    table.to_csv(test_csv, index=False)
    assert cli.main(["train", "--config", str(run_copy), "--fold", "all", "--force", *args]) == 0
    assert "pseudo-label source changed" in capsys.readouterr().out
    recorded = yaml.safe_load((run / "config.yaml").read_text())["pseudo_labels_source"]
    assert recorded == pseudo_labels.read_source(config_lib.load_config(run_copy, args[1:])).identity()
    assert list((run / "superseded").iterdir())


def test_a_bad_source_is_named_before_any_training(run_copy, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    source = outputs / "tiny"
    low, high = rule_between(source)

    def refused(folder, *extra, low=low, high=high) -> str:
        capsys.readouterr()
        assert cli.main(["train", "--config", str(run_copy), *pl_args(folder, low, high, *extra)]) == 2
        assert not (outputs / "pl").exists(), "nothing is bound or trained"
        return capsys.readouterr().err

    assert "no such folder" in refused(outputs / "nowhere")
    (outputs / "empty").mkdir()
    assert "holds neither config.yaml (a run) nor blend.json" in refused(outputs / "empty")
    unfinished = outputs / "unfinished"
    shutil.copytree(source, unfinished)
    (unfinished / "oof.csv").unlink()
    (unfinished / "fold1" / "oof.csv").unlink()
    assert "not finished" in refused(unfinished) and "train its missing folds" in refused(unfinished)
    unpredicted = outputs / "unpredicted"
    shutil.copytree(source, unpredicted)
    (unpredicted / "fold1" / "test.csv").unlink()
    error = refused(unpredicted)
    assert "no test predictions of fold 1" in error and "python infer.py" in error
    assert "no test predictions" in refused(unpredicted, "pseudo_labels.folds=all")
    other_images = outputs / "other-images"
    shutil.copytree(source, other_images)
    for fold in (0, 1):
        table = pd.read_csv(other_images / f"fold{fold}" / "test.csv", dtype={"image_name": str})
        table.loc[0, "image_name"] = "ISIC_9999999"
        table.to_csv(other_images / f"fold{fold}" / "test.csv", index=False)
    error = refused(other_images)
    assert "not in data.test_files (e.g. ISIC_9999999)" in error and "predicted on other test records" in error
    assert "no test image passes the pseudo-label rule" in refused(source, low=0.0, high=1.0)
    assert "this run's own folder" in refused(outputs / "pl")
    assert "choose one of matched, all" in refused(source, "pseudo_labels.folds=some")
    assert "a pseudo-label is a melanoma probability" in refused(source, "model.head=diagnosis")
    assert "data.test_files is null" in refused(source, "data.test_files=null")


def test_blends_give_fold_means_or_their_submission_and_a_rank_blend_is_refused(run_copy, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    twin = outputs / "twin"
    shutil.copytree(outputs / "tiny", twin)
    for name, run in (("tiny", outputs / "tiny"), ("twin", twin)):  # the blend's submission lands in tmp_path
        saved = yaml.safe_load((run / "config.yaml").read_text())
        saved.update(name=name, submission_dir=str(tmp_path / "submissions"))
        (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for fold in (0, 1):  # another run's predictions of the same images
        table = pd.read_csv(twin / f"fold{fold}" / "test.csv")
        table.assign(pred=table["pred"] ** 2).to_csv(twin / f"fold{fold}" / "test.csv", index=False)
    assert cli.main(["blend", str(outputs / "tiny"), str(twin), "--method", "mean", "--name", "pair"]) == 0
    assert cli.main(["blend", str(outputs / "tiny"), str(twin), "--method", "rank", "--name", "ranks"]) == 0
    config = config_lib.load_config(run_copy, ["name=pl", f"pseudo_labels.source={outputs / 'blend-pair'}"])
    source = pseudo_labels.read_source(config)
    assert source.kind == "blend" and len(source.files) == 4
    for fold in (0, 1):
        expected = (fold_predictions(outputs / "tiny", fold) + fold_predictions(twin, fold)) / 2
        pd.testing.assert_series_equal(source.fold_predictions(fold).sort_index(), expected.sort_index(),
                                       check_names=False)
    everything = pseudo_labels.read_source(config_lib.load_config(
        run_copy, ["name=pl", f"pseudo_labels.source={outputs / 'blend-pair'}", "pseudo_labels.folds=all"]))
    submitted = pd.read_csv(tmp_path / "submissions" / "blend-pair.csv", dtype={"image_name": str})
    assert everything.files == [str(tmp_path / "submissions" / "blend-pair.csv")]
    np.testing.assert_allclose(everything.fold_predictions(0).loc[submitted["image_name"]], submitted["target"])
    assert everything.fold_predictions(1) is everything.fold_predictions(0)
    capsys.readouterr()
    assert cli.main(["train", "--config", str(run_copy), "--set", "name=pl",
                     f"pseudo_labels.source={outputs / 'blend-ranks'}"]) == 2
    assert "rank blend: its submission holds ranks, not probabilities" in capsys.readouterr().err


def test_a_pseudo_labelled_image_among_a_folds_validation_images_stops_the_fold(tmp_path):
    config = config_lib.as_config({"pseudo_labels": {"low": 0.1, "high": 0.9, "weight": 1.0}})
    predictions = pd.Series([0.05, 0.5, 0.95], index=["ISIC_1", "ISIC_2", "ISIC_3"])
    source = pseudo_labels.Source(path="s", kind="run", folds_mode="all", files=[],
                                  predictions={pseudo_labels.EVERY_FOLD: predictions}, oof=pd.DataFrame())
    rows = pseudo_labels.fold_images(config, source, 0, {"ISIC_7"})
    assert rows["image_name"].tolist() == ["ISIC_1", "ISIC_3"] and rows["label"].tolist() == [0.05, 0.95]
    with pytest.raises(CheckFailed, match="never validated"):
        pseudo_labels.fold_images(config, source, 0, {"ISIC_3", "ISIC_7"})
    config["pseudo_labels"]["low"] = 0.9
    assert len(pseudo_labels.select(config, predictions)) == 3  # low >= high keeps every test image


def test_trees_fit_each_pseudo_labelled_image_as_a_weighted_pair():
    from melanoma.train.families import tree_model

    class Table:
        columns = ["a", "b"]
        test = pd.DataFrame({"image_name": ["ISIC_1", "ISIC_2", "ISIC_3"], "a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})

    rows = pd.DataFrame({"image_name": ["ISIC_3", "ISIC_1"], "label": [0.8, 0.0], "weight": [2.0, 2.0]})
    train_x, train_y = np.zeros((4, 2)), np.array([0, 1, 0, 0])
    fit_x, fit_y, weights = tree_model.with_pseudo_rows(Table, rows, train_x, train_y)
    assert fit_x.shape == (4 + 3, 2)  # ISIC_1 (label 0) needs its benign row only
    np.testing.assert_array_equal(fit_x[4:], [[3.0, 6.0], [3.0, 6.0], [1.0, 4.0]])
    np.testing.assert_array_equal(fit_y, [0, 1, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(weights, [1, 1, 1, 1, 2 * 0.8, 2 * 0.2, 2.0])
    assert tree_model.with_pseudo_rows(Table, None, train_x, train_y)[2] is None


def test_a_tree_run_trains_on_pseudo_labels_never_validating_them(run_copy, tmp_path, tiny_data, capsys):
    from test_tabular import tiny_tabular

    source = tmp_path / "outputs" / "tiny"
    low, high = rule_between(source)
    trees = write_config(tmp_path, tiny_data, tiny_tabular(), name="trees")
    assert cli.main(["train", "--config", str(trees), "--set", f"pseudo_labels.source={source}",
                     f"pseudo_labels.low={low}", f"pseudo_labels.high={high}"]) == 0
    run = tmp_path / "outputs" / "trees"
    for fold in (0, 1):
        used = pd.read_csv(run / f"fold{fold}" / "pseudo_labels.csv", dtype={"image_name": str})
        predicted = fold_predictions(source, fold)
        assert set(used["image_name"]) == set(predicted[(predicted <= low) | (predicted >= high)].index)
        fold_oof = pd.read_csv(run / f"fold{fold}" / "oof.csv", dtype={"image_name": str})
        assert not set(used["image_name"]) & set(fold_oof["image_name"])
    assert "pseudo-labelled test images" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["pseudo_labels_source"]["path"] == str(source)
    assert oof_names(run) == oof_names(source)


def test_a_source_on_other_folds_or_other_test_images_is_named():
    from melanoma.core.errors import DataError

    predictions = pd.Series([0.01, 0.9], index=["ISIC_8", "ISIC_9"])
    oof = pd.DataFrame({"image_name": ["ISIC_1", "ISIC_2", "ISIC_3"], "fold": [0, 1, 0]})
    source = pseudo_labels.Source(path="s", kind="run", folds_mode="matched", files=[], oof=oof,
                                  predictions={0: predictions, 1: predictions})
    here = pd.Series([0, 1, 0, 1], index=["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4"])  # ISIC_4: not in the source
    pseudo_labels.check_images(source, {"ISIC_8", "ISIC_9"}, here)
    moved = here.copy()
    moved["ISIC_3"] = 1  # validated in fold 1 here, but the source's fold 1 trained on it
    with pytest.raises(DataError, match=r"its folds hold other images than this config's \(1 image\(s\) differ, e.g. "
                                        r"ISIC_3\)"):
        pseudo_labels.check_images(source, {"ISIC_8", "ISIC_9"}, moved)
    with pytest.raises(DataError, match="lack 1 test image"):
        pseudo_labels.check_images(source, {"ISIC_7", "ISIC_8", "ISIC_9"}, here)
    source.folds_mode = "all"  # any folds: only the images are checked
    pseudo_labels.check_images(source, {"ISIC_8", "ISIC_9"}, moved)
