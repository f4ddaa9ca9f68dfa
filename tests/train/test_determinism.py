"""train.deterministic: the same config, seed and data give the same model on the same machine.

Each augmentation backend draws an image's parameters from (seed, key) alone, eagerly and inside tf.data's
parallel calls; a tiny CNN fold trained twice gives bit-identical OOF, history, checkpoint choice and test
predictions (np.array_equal: the promise on a CPU is to the last bit), and another seed gives other ones; the
trees repeat as well; a run records the setting and one saved before it still binds and loads; `compare` says
when two runs that differ in one key were not both deterministic."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from conftest import tiny_trees, write_config
from tensorflow.python.framework import config as framework_config
from tiny_records import REPO, tiny_overrides, write_tiny_records

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.data import record_format
from melanoma.evaluate import compare
from melanoma.input import augment
from melanoma.model import network as model_lib
from melanoma.runs import layout, run_config
from melanoma.train.families import cnn

# --------------------------------------------------------------------------------------------------
# augmentation: one image's draws come from (seed, key)


def augment_section(backend: str):
    config = config_lib.load_config(REPO / "configs" / "base.yaml", [f"augment.backend={backend}",
                                                                     "augment.probability=1.0"])
    return config.augment


def batch(count: int = 6, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def eager(augmenter, images, keys) -> np.ndarray:
    return np.asarray(augmenter(images, np.asarray(keys, np.int64)))


def through_tf_data(augmenter, images, keys) -> dict[int, np.ndarray]:
    """key -> augmented image, batches of 2 augmented by parallel calls whose order is free."""
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(keys, np.int64))).batch(2)
    dataset = dataset.map(lambda image, key: (augment.augment_batch_op(image, augmenter, key), key),
                          num_parallel_calls=4, deterministic=False)
    return {int(key): image for out, key_batch in dataset for image, key in zip(out.numpy(), key_batch.numpy())}


@pytest.mark.parametrize("backend", augment.BACKENDS)
def test_each_backend_draws_an_image_from_its_seed_and_key_alone(backend):
    images, keys = batch(), [10, 11, 12, 13, 14, 15]
    first = eager(augment.make_augmenter(augment_section(backend), seed=5), images, keys)
    again = augment.make_augmenter(augment_section(backend), seed=5)
    np.testing.assert_array_equal(eager(again, images, keys), first)
    # the same (seed, key) gives the same image in another batch, order and thread
    order = [3, 0, 5, 1]
    np.testing.assert_array_equal(eager(again, images[order], [keys[i] for i in order]), first[order])
    parallel = through_tf_data(again, images, keys)
    for index, key in enumerate(keys):
        np.testing.assert_array_equal(parallel[key], first[index])
    assert not np.array_equal(first, images)
    other_seed = eager(augment.make_augmenter(augment_section(backend), seed=6), images, keys)
    other_keys = eager(again, images, [key + 100 for key in keys])
    assert not np.array_equal(other_seed, first) and not np.array_equal(other_keys, first)


def test_a_seeded_albumentations_pipeline_flips_each_axis_on_its_own():
    """albumentations' Compose(seed=) gives its steps one seed each, so both flips came together; here
    they share one generator."""
    config = config_lib.load_config(REPO / "configs" / "base.yaml", [
        "augment.transpose=false", "augment.rotate_limit=0", "augment.scale_limit=0", "augment.shift_limit=0",
        "augment.brightness_limit=0", "augment.contrast_limit=0", "augment.hue_shift_limit=0",
        "augment.saturation_shift_limit=0"])
    transform = augment.build_transform(config.augment, seed=3)
    image = batch(1)[0]
    outputs = [transform(image=image)["image"] for _ in range(40)]
    assert any(np.array_equal(out, image[:, ::-1]) for out in outputs)  # a mirror alone
    assert any(np.array_equal(out, image[::-1]) for out in outputs)


# --------------------------------------------------------------------------------------------------
# a CNN fold, three times


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("tiny-det") / "records")


def small_backbone(name, image_size, weights="none", pretrained=True, drop_connect=None, bn_momentum=None):
    image = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="swish")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="swish")(x)
    return keras.Model(image, x, name="small_backbone")


def train_once(tiny, folder: Path, *more: str) -> dict:
    """Fold 0 of a tiny deterministic run (2 epochs, dropout, random TTA, best-AUC checkpoint) trained by
    `train.py`, and its test predictions through the family; the files that must repeat."""
    overrides = tiny_overrides(tiny, folder, "train.deterministic=true", "train.epochs=2",
                               "train.checkpoint=best_auc", "model.dropout=0.3", "augment.rotate_limit=20",
                               "tta.steps=2", "tta.mode=random", *more)
    assert cli.main(["train", "--config", str(REPO / "configs" / "b0_256.yaml"), "--fold", "0",
                     "--set", *overrides]) == 0
    config = run_config.load_run_config(REPO / "configs" / "b0_256.yaml", overrides)
    fold = Path(layout.fold_dir(config, 0))
    test = cnn.FAMILY.prediction(config).predict_fold(
        config, 0, record_format.list_files(config.data.test_files, "data.test_files"))
    return {"oof": pd.read_csv(fold / "oof.csv"), "history": pd.read_csv(fold / "history.csv"),
            "state": yaml.safe_load((fold / "state.json").read_text()), "test": test,
            "saved": yaml.safe_load((fold.parent / "config.yaml").read_text())}


def test_a_deterministic_cnn_fold_repeats_to_the_last_bit_and_another_seed_differs(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(model_lib, "build_backbone", small_backbone)
    first = train_once(tiny, tmp_path / "a")
    second = train_once(tiny, tmp_path / "b")
    assert first["saved"]["train"]["deterministic"] is True  # the run records it
    assert np.array_equal(first["oof"]["pred"].to_numpy(), second["oof"]["pred"].to_numpy())
    pd.testing.assert_frame_equal(first["oof"], second["oof"], check_exact=True)
    pd.testing.assert_frame_equal(first["history"], second["history"], check_exact=True)
    assert first["state"]["best_epoch"] == second["state"]["best_epoch"]
    assert np.array_equal(first["test"]["pred"].to_numpy(), second["test"]["pred"].to_numpy())
    other = train_once(tiny, tmp_path / "c", "seed=7")
    assert not np.array_equal(first["oof"]["pred"].to_numpy(), other["oof"]["pred"].to_numpy())
    assert not np.array_equal(first["test"]["pred"].to_numpy(), other["test"]["pred"].to_numpy())
    assert not framework_config.is_op_determinism_enabled()  # restored after the fold


# --------------------------------------------------------------------------------------------------
# the trees


def tree_oof(tiny_data, folder: Path, seed: int) -> pd.DataFrame:
    folder.mkdir()
    path = write_config(folder, tiny_data, tiny_trees(extra="  max_features: 0.5\n"))
    assert cli.main(["train", "--config", str(path), "--fold", "0", "--set", f"seed={seed}"]) == 0
    return pd.read_csv(folder / "outputs" / "tiny" / "fold0" / "oof.csv")


def test_trees_repeat_and_their_seed_draws_the_features_each_split_may_use(tiny_data, tmp_path):
    """HistGradientBoosting's random_state (seed + fold) drives max_features' draw of the features each
    split may choose from (trees.max_features < 1): the same seed repeats, another gives other trees."""
    first = tree_oof(tiny_data, tmp_path / "a", 42)
    pd.testing.assert_frame_equal(first, tree_oof(tiny_data, tmp_path / "b", 42), check_exact=True)
    assert not np.array_equal(first["pred"].to_numpy(), tree_oof(tiny_data, tmp_path / "c", 7)["pred"].to_numpy())


# --------------------------------------------------------------------------------------------------
# a run saved before the key; compare's note


def test_a_run_saved_before_the_key_still_binds_and_loads(tmp_path):
    config_path = REPO / "configs" / "demo.yaml"
    overrides = [f"output_dir={tmp_path / 'outputs'}", "name=old"]
    config = config_lib.load_config(config_path, overrides)
    run = Path(layout.run_dir(config))
    saved = config.to_dict()
    del saved["train"]["deterministic"]
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    (run / "fold0").mkdir()
    (run / "fold0" / "oof.csv").write_text("image_name,patient_id,target,pred,fold\n")
    default = config_lib.load_config(REPO / "configs" / "base.yaml").train.deterministic
    run_config.bind_run(config_lib.load_config(config_path, overrides + [f"train.deterministic={default}"]),
                        config_path)  # the default stands for a missing key: more folds may train
    loaded = run_config.load_run_config(config_path, overrides)
    assert loaded.train.deterministic == default
    assert not config_lib.is_deterministic(run_config.read_saved_config(run))  # it was not
    with pytest.raises(config_lib.ConfigError, match="train.deterministic"):
        run_config.bind_run(config_lib.load_config(config_path, overrides + [f"train.deterministic={not default}"]),
                            config_path)


def fake_run(outputs: Path, name: str, seed: int, *overrides: str) -> None:
    """A complete two-fold run folder as training writes it (config.yaml, each fold's oof.csv)."""
    config = config_lib.load_config(REPO / "configs" / "demo.yaml", [f"name={name}", "data.folds=2", *overrides])
    run = outputs / name
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    target = np.tile([0, 0, 0, 1], 10)
    oof = pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(40)], "patient_id": np.arange(40) // 2,
                        "target": target, "pred": np.clip(0.3 * target + rng.random(40) * 0.7, 0, 1),
                        "fold": np.arange(40) // 2 % 2})
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    for fold in (0, 1):
        (run / f"fold{fold}").mkdir()
        oof[oof["fold"] == fold].to_csv(run / f"fold{fold}" / "oof.csv", index=False)
    oof.to_csv(run / "oof.csv", index=False)


def test_compare_says_when_runs_one_key_apart_were_not_both_deterministic(tmp_path, capsys):
    outputs = tmp_path / "outputs"
    fake_run(outputs, "steady", 1, "train.deterministic=true")
    fake_run(outputs, "steady-lr", 2, "train.deterministic=true", "train.lr_peak_per_image=1.0e-5")
    fake_run(outputs, "shaky-epochs", 3, "train.deterministic=false", "train.epochs=9")
    fake_run(outputs, "trees", 4, "train.deterministic=false", "model.family=tabular")
    rows = {row["name"]: row for row in compare.compare_runs(str(outputs), bootstrap=0)}
    assert rows["steady"]["deterministic"] and rows["trees"]["deterministic"]  # trees always repeat
    assert rows["shaky-epochs"]["deterministic"] is False
    assert rows["steady-lr"]["noise"] == []  # both deterministic; two keys from the shaky run
    note = ("runs shaky-epochs and steady differ only in train.epochs, but shaky-epochs was not deterministic: "
            "the difference may be noise")
    assert rows["steady"]["noise"] == [note] and rows["shaky-epochs"]["noise"] == [note]
    assert cli.main(["compare", str(outputs), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert note in table and table.count("may be noise") == 1
