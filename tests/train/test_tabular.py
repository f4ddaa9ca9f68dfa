"""The tabular model: features on generated images, patient context, stacking, and a tiny run that
score, compare, blend, report and infer accept like any other."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import reliability_helpers as helpers
import yaml
from conftest import tiny_trees, write_config
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.core.config import ConfigError, load_config
from melanoma.evaluate import compare
from melanoma.input import features, imagestats, patientcontext, stacking
from melanoma.tools import synth
from melanoma.train.families import trees


def tiny_tabular(from_runs: str = "[]") -> str:
    """Config body of a tabular run small enough for a test, with permutation importances
    (added to conftest's write_config)."""
    return tiny_trees(from_runs=from_runs, importance_repeats=1)

def generated_images(size: int = 48) -> list[np.ndarray]:
    """Synthetic dermoscopy images of both classes, plus the cases a mask can trip on: an even field,
    a black one, a white one, and a lesion under the dermatoscope's black rim."""
    rng = np.random.default_rng(7)
    images = [synth.render_lesion(rng, size, malignant=bool(i % 2)) for i in range(6)]
    images += [np.full((size, size, 3), value, np.uint8) for value in (128, 0, 255)]
    rimmed = np.full((size, size, 3), (200, 160, 140), np.uint8)
    cv2.circle(rimmed, (size // 2, size // 2), size // 5, (90, 60, 40), -1)
    outside = np.hypot(*np.meshgrid(np.arange(size) - size / 2, np.arange(size) - size / 2)) > size * 0.48
    rimmed[outside] = 0
    return images + [rimmed]


@pytest.mark.parametrize("bins", [2, 8])
def test_image_features_are_finite_shaped_as_named_and_repeatable(bins):
    names = imagestats.image_feature_names(bins)
    assert len(names) == len(set(names)) == 9 * 3 + 9 * bins + len(imagestats.LESION_NAMES)
    for image in generated_images():
        values = imagestats.image_features(image, bins)
        assert values.shape == (len(names),) and values.dtype == np.float64
        assert np.all(np.isfinite(values))
        np.testing.assert_array_equal(values, imagestats.image_features(image.copy(), bins))
        named = dict(zip(names, values))
        for channel in imagestats.CHANNELS:  # each channel's histogram holds every pixel once
            assert sum(named[f"hist_{channel}_{index}"] for index in range(bins)) == pytest.approx(1.0)
        assert 0 <= named["lesion_area"] <= 1 and named["lesion_found"] in (0.0, 1.0)


def test_lesion_features_follow_the_drawn_lesion():
    size = 64
    plain = np.full((size, size, 3), (210, 170, 150), np.uint8)
    round_lesion, lobed = plain.copy(), plain.copy()
    cv2.circle(round_lesion, (32, 32), 12, (90, 60, 40), -1)
    cv2.circle(lobed, (28, 32), 12, (90, 60, 40), -1)
    cv2.circle(lobed, (44, 24), 7, (90, 60, 40), -1)
    values = {name: dict(zip(imagestats.LESION_NAMES,
                             imagestats.lesion_features(cv2.cvtColor(image, cv2.COLOR_RGB2LAB))))
              for name, image in (("plain", plain), ("round", round_lesion), ("lobed", lobed))}
    assert values["plain"]["found"] == 0 and values["plain"]["area"] == 0
    assert values["round"]["found"] == 1
    assert values["round"]["area"] == pytest.approx(np.pi * 12 ** 2 / size ** 2, rel=0.15)
    assert values["round"]["asymmetry_minor"] < 0.05 and values["round"]["contrast_l"] < -0.2
    assert values["lobed"]["asymmetry_minor"] > 3 * values["round"]["asymmetry_minor"] + 0.02
    assert values["lobed"]["irregularity"] > values["round"]["irregularity"]
    assert values["lobed"]["solidity"] < values["round"]["solidity"]


def test_records_features_equal_eager_ones_in_workers_and_from_the_cache(tiny_data, tmp_path, monkeypatch):
    """The per-file tables (spawned workers, then the cache) hold exactly what `image_features` gives
    for the same decoded image in this process."""
    config = load_config(write_config(tmp_path, tiny_data, tiny_tabular()), ["features.workers=2"])
    monkeypatch.setattr(features, "CHUNK", 8)  # several tasks per tiny file, so the workers share them
    pools = []
    close = features._Workers.close
    monkeypatch.setattr(features._Workers, "close", lambda self: (pools.append(self.pool), close(self)))
    computed = features.split_table(config, "train", progress=False)
    assert len(pools) == 1 and pools[0] is not None  # a pool of spawned processes did the work
    cached = features.split_table(config, "train", progress=False)
    assert len(pools) == 1  # nothing left to compute
    files = sorted((tiny_data["records"]).glob("train*.tfrec"))
    assert len(list((tmp_path / "outputs" / ".cache" / "features").glob("*.csv"))) == len(files)
    names = imagestats.image_feature_names(4)
    pd.testing.assert_frame_equal(computed, cached)
    import tensorflow as tf

    eager = {}
    for path in files:
        for serialized in tf.data.TFRecordDataset(str(path)):
            example = tf.io.parse_single_example(serialized, {"image": tf.io.FixedLenFeature([], tf.string),
                                                              "image_name": tf.io.FixedLenFeature([], tf.string)})
            image = imagestats.decode_for_statistics(example["image"].numpy(), 32)
            eager[example["image_name"].numpy().decode()] = imagestats.image_features(image, 4)
    assert sorted(eager) == sorted(computed["image_name"])
    for _, row in computed.iterrows():
        np.testing.assert_array_equal(row[names].to_numpy(dtype=np.float64), eager[row["image_name"]])
    assert computed["part"].tolist() == sorted(computed["part"].tolist())


def test_patient_context_of_one_image_patients_is_zero_difference_and_middle_rank():
    frame = pd.DataFrame({"x": [1.0, 3.0, 2.0, 5.0, 7.0, 4.0, np.nan, 6.0],
                          "y": [0.5, 0.5, 0.5, 2.0, 1.0, 1.0, 3.0, 9.0]})
    patients = pd.Series([10, 10, 10, 20, -1, -1, 30, 30])  # 20 has one image; -1 is no patient
    context = patientcontext.patient_context(frame, ["x", "y"], patients, ["x", "y"])
    assert list(context.columns) == ["pdiff_x", "pdiff_y", "prank_x", "prank_y", "patient_distance"]
    np.testing.assert_allclose(context["pdiff_x"][:3], [-1.0, 1.0, 0.0])
    np.testing.assert_allclose(context["prank_x"][:3], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(context["prank_y"][:3], [0.5, 0.5, 0.5])  # ties share the middle rank
    for row in (3, 4, 5):  # one image, or no patient: alone in its group
        assert context.loc[row, "pdiff_x"] == 0 and context.loc[row, "prank_x"] == 0.5
        assert context.loc[row, "patient_distance"] == 0
    # A missing value stays missing and leaves its patient's other image alone in the ranks.
    assert np.isnan(context.loc[6, "pdiff_x"]) and np.isnan(context.loc[6, "prank_x"])
    assert context.loc[7, "pdiff_x"] == 0 and context.loc[7, "prank_x"] == 0.5
    assert context.loc[7, "prank_y"] == 1.0 and context.loc[6, "prank_y"] == 0.0
    assert context["patient_distance"].iloc[:2].gt(0).all()
    assert context.loc[2, "patient_distance"] == 0  # the mean image


def fake_run(output_dir, name: str, oof: pd.DataFrame, test_names, folds: int, seed: int) -> dict:
    """A finished run folder as `train` and `infer` leave it: config, fold OOF and test predictions."""
    run = output_dir / name
    rng = np.random.default_rng(seed)
    settings = {"name": name, "output_dir": str(output_dir), "data": {"folds": folds}}
    (run).mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(settings))
    tests = []
    for fold in range(folds):
        (run / f"fold{fold}").mkdir()
        oof[oof["fold"] == fold].to_csv(run / f"fold{fold}" / "oof.csv", index=False)
        test = pd.DataFrame({"image_name": list(test_names), "pred": rng.random(len(test_names))})
        test.to_csv(run / f"fold{fold}" / "test.csv", index=False)
        # what the fold was predicted with: every fold alike, as infer leaves them
        (run / f"fold{fold}" / "test.json").write_text(json.dumps({"tta": {"steps": 0}, "image_size": 32}))
        tests.append(test.set_index("image_name")["pred"])
    oof.to_csv(run / "oof.csv", index=False)
    return {"oof": oof.set_index("image_name")["pred"], "test": pd.concat(tests, axis=1).mean(axis=1)}


def stacking_inputs(tmp_path, shuffle_folds: bool = False, drop: int = 0):
    rng = np.random.default_rng(1)
    tmp_path.mkdir(parents=True, exist_ok=True)
    names = pd.Series([f"ISIC_{i:07d}" for i in range(40)])
    test_names = pd.Series([f"ISIC_9{i:06d}" for i in range(12)])
    ours = pd.Series(np.arange(40) // 4 % 2, index=names.to_numpy())  # patients of 4 images, 2 folds
    theirs = ours.copy()
    if shuffle_folds:
        theirs.iloc[:4] = 1 - theirs.iloc[:4]  # one patient validated in the other fold
    oof = pd.DataFrame({"image_name": names, "patient_id": np.arange(40) // 4, "target": rng.integers(0, 2, 40),
                        "pred": rng.random(40), "fold": theirs.to_numpy()}).iloc[drop:]
    path = write_config(tmp_path, {"records": tmp_path, "sample_submission": "s.csv"}, tiny_tabular("[cnn]"),
                        name="stack")
    made = fake_run(tmp_path / "outputs", "cnn", oof, test_names, 2, seed=2)
    return path, names, test_names, ours, made


def test_stacked_features_are_the_runs_oof_for_training_rows_and_its_test_mean_for_test_rows(tmp_path):
    path, names, test_names, ours, made = stacking_inputs(tmp_path)
    config = load_config(path)
    train, test = stacking.stacking_features(config, names, test_names, ours)
    # Every training row's value is the run's out-of-fold prediction for it: made by the model of the
    # row's own fold, which never trained on it (the folds agree, or the run is refused below).
    np.testing.assert_array_equal(train["run_cnn"].to_numpy(), made["oof"].loc[names].to_numpy())
    np.testing.assert_allclose(test["run_cnn"].to_numpy(), made["test"].loc[test_names].to_numpy())
    # Rows this run does not score (dropped duplicates) get no value rather than someone else's.
    train, _ = stacking.stacking_features(config, names, test_names, ours.iloc[4:])
    assert train["run_cnn"].iloc[:4].isna().all() and train["run_cnn"].iloc[4:].notna().all()


def test_stacking_refuses_a_run_with_other_folds_or_missing_rows(tmp_path):
    path, names, test_names, ours, _ = stacking_inputs(tmp_path / "a", shuffle_folds=True)
    with pytest.raises(ConfigError, match="folds differ"):
        stacking.stacking_features(load_config(path), names, test_names, ours)
    path, names, test_names, ours, _ = stacking_inputs(tmp_path / "b", drop=3)
    with pytest.raises(ConfigError, match="lacks 3 of this run's training images"):
        stacking.stacking_features(load_config(path), names, test_names, ours)
    for runs, message in (("[never-trained]", "no run folder"), ("[stack]", "this run itself")):
        with pytest.raises(ConfigError, match=message):
            stacking.stacking_features(load_config(path, [f"features.from_runs={runs}"]), names, test_names, ours)


def test_stacking_refuses_in_one_line_a_run_of_the_same_images_split_into_another_number_of_folds(tmp_path):
    """A run trained on the same records with data.folds 3 scored each image out of fold, but its fold 0
    model trained on rows this 2-fold stack validates on: refused, one line, naming the entry and the key."""
    path, names, test_names, ours, _ = stacking_inputs(tmp_path)
    oof = pd.read_csv(tmp_path / "outputs" / "cnn" / "oof.csv")
    oof["fold"] = oof["patient_id"] % 3
    oof.to_csv(tmp_path / "outputs" / "cnn" / "oof.csv", index=False)
    with pytest.raises(ConfigError, match="features.from_runs entry 'cnn': its folds differ") as refused:
        stacking.stacking_features(load_config(path), names, test_names, ours)
    assert "\n" not in str(refused.value) and "data.folds" in str(refused.value)


def test_tiny_tabular_run_trains_every_fold_and_score_compare_blend_report_infer_accept_it(
        tiny_data, tmp_path, capsys):
    path = write_config(tmp_path, tiny_data, tiny_tabular())
    run = tmp_path / "outputs" / "tiny"
    assert cli.main(["train", "--config", str(path), "--fold", "all"]) == 0
    out = capsys.readouterr().out
    train_table = pd.read_csv(tiny_data["records"] / "train.csv")
    for fold in (0, 1):
        folder = run / f"fold{fold}"
        for name in ("model.joblib", "state.json", "oof.csv", "history.csv", "importance.csv", "data.json"):
            assert (folder / name).is_file(), (fold, name)
        assert not (folder / "test.csv").exists()  # infer predicts the test images
        oof = pd.read_csv(folder / "oof.csv")
        assert list(oof.columns) == ["image_name", "patient_id", "target", "pred", "fold"]
        assert set(oof["image_name"]) == set(train_table.loc[train_table["part"] % 2 == fold, "image_name"])
        assert oof["pred"].between(0, 1).all() and (oof["fold"] == fold).all()
        history = pd.read_csv(folder / "history.csv")
        assert history["epoch"].tolist() == list(range(1, 16))
        scalars = helpers.read_scalars(folder / "tensorboard")  # train.tensorboard: the same curves
        for column, tag in (("val_auc", "validation/epoch_auc"), ("loss", "train/epoch_loss")):
            assert scalars[tag] == pytest.approx(dict(zip(history["epoch"] - 1, history[column])), rel=1e-6)
        importance = pd.read_csv(folder / "importance.csv")
        assert {"colour moments", "colour histograms", "lesion", "metadata", "patient context"} <= set(
            importance.loc[importance["kind"] == "group", "name"])
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == len(train_table) and oof["image_name"].is_unique
    reported = float(out.split("OOF AUC over 2 folds: ")[1].split()[0])
    assert reported == round(roc_auc_score(oof["target"], oof["pred"]), 4)
    summary = json.loads((run / "summary.json").read_text())  # the run's summary: every fold learned
    assert summary["collapsed_folds"] == [] and set(summary["folds"]) == {"0", "1"}
    assert summary["oof_auc"] == pytest.approx(roc_auc_score(oof["target"], oof["pred"]), abs=1e-6)
    assert "COLLAPSED" not in out

    assert cli.main(["score", str(run / "oof.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(train_table)
    assert cli.main(["infer", "--config", str(path)]) == 0
    submission = pd.read_csv(tmp_path / "submissions" / "tiny.csv")
    sample = pd.read_csv(tiny_data["sample_submission"])
    assert submission["image_name"].tolist() == sample["image_name"].tolist()
    folds = [pd.read_csv(run / f"fold{k}" / "test.csv").set_index("image_name")["pred"] for k in (0, 1)]
    np.testing.assert_allclose(submission.set_index("image_name")["target"],
                               ((folds[0] + folds[1]) / 2).loc[submission["image_name"]])

    # A second run on the same records reads the cached features, stacks the first, and blends with it.
    capsys.readouterr()
    second = write_config(tmp_path, tiny_data, tiny_tabular("[tiny]"), name="stacked")
    assert cli.main(["train", "--config", str(second)]) == 0
    assert "image statistics" not in capsys.readouterr().err  # no image decoded again
    saved = trees.load_model(str(tmp_path / "outputs" / "stacked" / "fold0" / "model.joblib"))
    assert {"run_tiny", "pdiff_run_tiny", "prank_run_tiny"} <= set(saved["columns"])
    assert cli.main(["infer", "--config", str(second)]) == 0

    rows = {row["name"]: row for row in compare.compare_runs(str(tmp_path / "outputs"), bootstrap=0)}
    assert rows["tiny"]["status"] == rows["stacked"]["status"] == "complete"
    assert rows["tiny"]["backbone"].startswith("tabular")
    assert cli.main(["blend", str(path), str(second), "--method", "rank", "--name", "pair"]) == 0
    assert (tmp_path / "outputs" / "blend-pair" / "oof.csv").is_file()
    assert (tmp_path / "submissions" / "blend-pair.csv").is_file()
    capsys.readouterr()
    assert cli.main(["report", str(path), "--bootstrap", "0"]) == 0
    assert "permutation importance" in capsys.readouterr().out
    assert (run / "report" / "importance.png").is_file() and (run / "report" / "importance.csv").is_file()

    # A run that validated some images in another fold is refused, and the stacked run stays as it was.
    shuffled = pd.read_csv(run / "oof.csv")
    shuffled.loc[shuffled["patient_id"] == shuffled["patient_id"].iloc[0], "fold"] ^= 1
    test_names = pd.read_csv(run / "fold0" / "test.csv")["image_name"]
    fake_run(tmp_path / "outputs", "other-folds", shuffled, test_names, 2, seed=3)
    capsys.readouterr()
    saved = (tmp_path / "outputs" / "stacked" / "config.yaml").read_text()
    assert cli.main(["train", "--config", str(second), "--force", "--set", "features.from_runs=[other-folds]"]) == 2
    assert "folds differ" in capsys.readouterr().err
    assert (tmp_path / "outputs" / "stacked" / "config.yaml").read_text() == saved  # the run is untouched


def test_an_undecodable_image_is_named_with_its_file(tiny_data, tmp_path):
    import tensorflow as tf

    from melanoma.core.errors import DataError
    from melanoma.data import record_format

    folder = tmp_path / "records"
    folder.mkdir()
    good = synthetic_jpeg()
    rows = [{"image_name": name, "patient_id": 1, "sex": 0, "age_approx": 40, "anatom_site_general_challenge": 0}
            for name in ("ISIC_0000001", "ISIC_0000002")]
    with tf.io.TFRecordWriter(str(folder / record_format.record_name("test", 0, 2))) as writer:
        writer.write(record_format.serialize_example(good, rows[0], record_format.TEST_INT_FEATURES))
        writer.write(record_format.serialize_example(b"not a jpeg", rows[1], record_format.TEST_INT_FEATURES))
    config = load_config(write_config(tmp_path, tiny_data, tiny_tabular()),
                         [f"data.test_files={folder}/test*.tfrec"])
    with pytest.raises(DataError, match="ISIC_0000002.*cannot be decoded.*Download or rebuild"):
        features.split_table(config, "test", progress=False)
    assert not list((tmp_path / "outputs" / ".cache" / "features").glob("*.csv"))  # nothing half-made cached


def synthetic_jpeg() -> bytes:
    return synth.encode_jpeg(synth.render_lesion(np.random.default_rng(0), 32, malignant=False))


@pytest.mark.parametrize("setting, message", [
    ("features.histogram_bins=1", "histogram_bins"), ("features.image_size=8", "image_size"),
    ("features.workers=0", "workers"), ("trees.max_features=0", "max_features"),
    ("trees.learning_rate=2", "learning_rate"), ("features.from_runs=[a,a]", "twice"),
    ("model.family=trees", "model.family"),
])
def test_tabular_settings_out_of_range_are_config_errors(tiny_data, tmp_path, setting, message, capsys):
    path = write_config(tmp_path, tiny_data, tiny_tabular())
    assert cli.main(["train", "--config", str(path), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "tiny").exists()


def test_a_run_whose_folds_collapsed_says_so_in_its_log_summary_and_score(tiny_data, tmp_path, capsys):
    """Trees that cannot move off the prior (one boosting step at a vanishing rate) predict a constant: each
    fold is named COLLAPSED in the log, in summary.json and by score, not reported like a finished result."""
    body = tiny_tabular() + "  learning_rate: 1.0e-9\n  importance_repeats: 0\n"
    path = write_config(tmp_path, tiny_data, body.replace("max_iter: 15", "max_iter: 1"))
    assert cli.main(["train", "--config", str(path), "--fold", "all"]) == 0
    out = capsys.readouterr().out
    assert "fold 0: COLLAPSED: near-constant predictions" in out and "fold 1: COLLAPSED" in out
    assert "COLLAPSED fold(s) 0, 1: not a finished result" in out
    run = tmp_path / "outputs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapsed_folds"] == ["0", "1"] and "collapsed" in summary["folds"]["0"]["collapsed"]
    assert cli.main(["score", str(run / "oof.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["collapsed_folds"] == ["0", "1"]
