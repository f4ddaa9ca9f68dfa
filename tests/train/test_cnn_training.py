"""The CNN's fold training: a tiny fold trained with each head, loss, schedule and checkpoint rule (a small
stand-in backbone; the real EfficientNet runs in `make test-full`), mixed precision's loss scaling, the
checkpoint rules and the class weights."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from tiny_records import REPO, tiny_config, tiny_overrides, write_tiny_records

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.data import record_format
from melanoma.model import network as model_lib
from melanoma.runs import layout
from melanoma.train import cnn_training, schedules
from melanoma.train.families import cnn


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("tiny") / "records")


def small_backbone(name, image_size, weights="none", pretrained=True, drop_connect=None, bn_momentum=None):
    """A two-convolution stand-in for EfficientNet: the heads, losses, schedules and pipeline are what
    these runs check, and tracing a real EfficientNet's training step costs ~30 s of CPU per run."""
    image = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="swish")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="swish")(x)
    return keras.Model(image, x, name="small_backbone")


@pytest.fixture
def small_model(monkeypatch):
    monkeypatch.setattr(model_lib, "build_backbone", small_backbone)


RUNS = {
    "binary-bce-rampup": ["model.head=binary", "train.loss=bce", "train.schedule=rampup",
                          "train.checkpoint=best_auc", "train.upsample_malignant=2"],
    "metadata-focal-cosine-xla": ["model.head=binary", "model.metadata_input=true", "train.loss=focal",
                                  "train.schedule=cosine", "train.checkpoint=best_loss", "train.class_weight=5",
                                  "train.xla=true"],
    "diagnosis-bce-last": ["model.head=diagnosis", "train.loss=bce", "train.schedule=rampup",
                           "train.checkpoint=last", "train.class_weight=3"],
    "diagnosis-metadata-focal-cosine": ["model.head=diagnosis", "model.metadata_input=true", "train.loss=focal",
                                        "train.schedule=cosine", "train.upsample_malignant=3"],
}


def check_fold(config, summary):
    """The fold's files, and its checkpoint predicting the test records through the family (as infer does)."""
    folder = Path(layout.fold_dir(config, 0))
    oof = pd.read_csv(folder / "oof.csv")
    test = cnn.FAMILY.prediction(config).predict_fold(
        config, 0, record_format.list_files(config.data.test_files, "data.test_files"))
    history = pd.read_csv(folder / "history.csv")
    assert (folder / "model.keras").exists()
    assert len(oof) == 16 and set(oof["fold"]) == {0} and oof["pred"].between(0, 1).all()
    assert len(test) == 6 and test["pred"].between(0, 1).all()
    if config.model.head == "diagnosis":  # each class's probability, as infer writes them
        assert [c for c in test.columns if c.startswith("p_")] == [c for c in oof.columns if c.startswith("p_")]
    assert np.isfinite(summary["auc"])
    assert history["lr"].iloc[0] == pytest.approx(config.train.lr_start)
    assert summary["best_epoch"] == 1
    assert keras.mixed_precision.global_policy().name == "float32"


# The metadata variants retrace the step with a second input; they run in `make test-full`.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if "metadata" in name else name
                                  for name in RUNS])
def test_tiny_fold_trains(tiny, tmp_path, small_model, name):
    config = tiny_config(tiny, tmp_path, *RUNS[name])
    check_fold(config, cnn_training.train_fold(config, 0))


@pytest.mark.slow
def test_tiny_fold_trains_efficientnet(tiny, tmp_path):
    """The real EfficientNet-B0, once, with the diagnosis head and the metadata branch (~30 s of CPU
    for tracing its training step, so it runs with the slow tests)."""
    config = tiny_config(tiny, tmp_path, "model.head=diagnosis", "model.metadata_input=true")
    check_fold(config, cnn_training.train_fold(config, 0))


@pytest.mark.parametrize("head", ["binary", "diagnosis"])
def test_float16_compiles_with_loss_scaling(tiny, tmp_path, small_model, head):
    """On a GPU, mixed_float16 gets Keras' loss scaling, and the schedule still reaches the rate."""
    config = tiny_config(tiny, tmp_path, f"model.head={head}")
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = cnn_training.compile_model(model_lib.build_model(config), config, 32)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        callbacks, _, _ = cnn_training.make_callbacks(config, str(tmp_path), 32, [])
        callbacks[0].set_model(model)
        callbacks[0].on_epoch_begin(3)
        assert float(model.optimizer.learning_rate) == pytest.approx(
            schedules.learning_rate(3, config.train, 32), rel=1e-6)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_two_folds_gather_oof(tiny, tmp_path, small_model):
    overrides = tiny_overrides(tiny, tmp_path, "model.head=diagnosis", "model.metadata_input=true")
    status = cli.main(["train", "--config", str(REPO / "configs" / "b0_256.yaml"), "--fold", "all",
                       "--set", *overrides])
    assert status == 0
    oof = pd.read_csv(tmp_path / "outputs" / "tiny" / "oof.csv")
    assert len(oof) == 32 and sorted(set(oof["fold"])) == [0, 1]
    assert not oof["image_name"].duplicated().any()


# ---------------------------------------------------------------------------------------------------
# checkpoint rules, on a stream of made-up epoch logs


@pytest.mark.parametrize("rule, expected_epoch", [("best_auc", 2), ("best_loss", 3), ("best_pauc_tpr80", 1),
                                                   ("last", 4)])
def test_checkpoint_rules(tmp_path, rule, expected_epoch):
    config = config_lib.load_config(REPO / "configs" / "demo.yaml", [f"train.checkpoint={rule}"])
    _, guard, checkpoint = cnn_training.make_callbacks(config, str(tmp_path), 32, [])
    inputs = keras.Input((2,))
    checkpoint.set_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))
    logs = [{"val_auc": 0.6, "val_loss": 0.5, "val_pauc_tpr80": 0.09},
            {"val_auc": 0.8, "val_loss": 0.4, "val_pauc_tpr80": 0.07},
            {"val_auc": 0.7, "val_loss": 0.3, "val_pauc_tpr80": 0.08},
            {"val_auc": float("nan"), "val_loss": 0.35, "val_pauc_tpr80": float("nan")}]
    for epoch, values in enumerate(logs):
        checkpoint.on_epoch_end(epoch, dict(values))
    assert checkpoint.best_epoch == expected_epoch
    assert (tmp_path / "model.keras").exists()


def test_class_weights_cover_every_class(tiny, tmp_path):
    assert cnn_training.class_weights(tiny_config(tiny, tmp_path)) is None
    assert cnn_training.class_weights(tiny_config(tiny, tmp_path, "train.class_weight=4")) == {0: 1.0, 1: 4.0}
    weights = cnn_training.class_weights(tiny_config(tiny, tmp_path, "train.class_weight=4", "model.head=diagnosis"))
    assert len(weights) == 9 and weights[0] == 4.0 and set(list(weights.values())[1:]) == {1.0}
