"""Backbones, pretrained weights, heads, precision and strategy detection (melanoma.model.network, .hardware)."""
from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from melanoma.core import config as config_lib
from melanoma.core import hardware
from melanoma.core.config import ConfigError
from melanoma.data import taxonomy
from melanoma.model import network as model_lib

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
# Parameters of each backbone without its top (convolutional trunk, batch norms included), as
# published for EfficientNet-B0..B7 (Tan & Le 2019 trunks; the efficientnet package's and
# keras.applications' no-top models).
PUBLISHED_PARAMETERS = {
    "efficientnet-b0": 4_049_564, "efficientnet-b1": 6_575_232, "efficientnet-b2": 7_768_562,
    "efficientnet-b3": 10_783_528, "efficientnet-b4": 17_673_816, "efficientnet-b5": 28_513_520,
    "efficientnet-b6": 40_960_136, "efficientnet-b7": 64_097_680,
}


def demo_config(*overrides):
    """The demo's config with the B0 these tests are about (the demo itself runs a pretrained Lite0)."""
    b0 = ["model.backbone=efficientnet-b0", "model.weights=none", "model.freeze_batch_norm=false"]
    return config_lib.load_config(REPO / "configs" / "demo.yaml", [f"data.image_size={SIZE}", *b0, *overrides])


def same_weights(first: keras.Model, second: keras.Model) -> bool:
    a, b = first.get_weights(), second.get_weights()
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def save_legacy_h5(backbone: keras.Model, path) -> None:
    """Weights in the legacy Keras .h5 layout, the one the efficientnet package's files use."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)


# ---------------------------------------------------------------------------------------------------
# backbones


def check_parameters(name: str) -> None:
    backbone = model_lib.build_backbone(name, SIZE)
    assert backbone.count_params() == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b3"])
def test_backbone_parameters_fast(name):
    check_parameters(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_backbone_parameters_all(name):
    check_parameters(name)


@pytest.mark.slow  # 16 s of building EfficientNetV2, which no fast test trains
def test_efficientnet_v2_backbone_builds():
    backbone = model_lib.build_backbone("efficientnetv2-b0", SIZE)
    assert backbone.count_params() == 5_919_312  # keras.applications' EfficientNetV2-B0 without top
    model = model_lib.build_model(demo_config("model.backbone=efficientnetv2-b0", "model.drop_connect=null"))
    assert "imagenet_normalisation" not in [layer.name for layer in model.layers]  # V2 scales its input


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="efficientnet-b9"):
        model_lib.build_backbone("efficientnet-b9", SIZE)
    with pytest.raises(ConfigError, match="model.backbone"):
        demo_config("model.backbone=efficientnet-b9")


# ---------------------------------------------------------------------------------------------------
# weights


@pytest.mark.parametrize("file_name", ["backbone.weights.h5", "backbone_notop.h5"])
def test_weights_from_a_path(tmp_path, file_name):
    source = model_lib.build_backbone("efficientnet-b0", SIZE)
    path = tmp_path / file_name
    if file_name.endswith(".weights.h5"):
        source.save_weights(path)
    else:
        save_legacy_h5(source, path)
    fresh = model_lib.build_backbone("efficientnet-b0", SIZE)
    assert not same_weights(source, fresh)  # random initialisation differs
    loaded = model_lib.build_backbone("efficientnet-b0", SIZE, str(path))
    assert same_weights(source, loaded)
    model = model_lib.build_model(demo_config(f"model.weights={path}"))
    inner = next(layer for layer in model.layers if layer.name == source.name)
    assert same_weights(source, inner)


def test_missing_weights_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        model_lib.build_backbone("efficientnet-b0", SIZE, str(tmp_path / "nowhere.h5"))


def test_weights_of_another_backbone_are_refused(tmp_path):
    path = tmp_path / "b1.weights.h5"
    model_lib.build_backbone("efficientnet-b1", SIZE).save_weights(path)
    with pytest.raises(ValueError, match="b1.weights.h5"):
        model_lib.build_backbone("efficientnet-b0", SIZE, str(path))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache and no network: every download fails the way Keras reports it."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    return tmp_path / "keras" / "models"


@pytest.mark.parametrize("weights, file_name", [
    ("imagenet", "efficientnet-b0_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"),
    ("noisy-student", "efficientnet-b0_noisy-student_notop.h5"),
])
def test_offline_without_cache_names_file_and_folder(offline, weights, file_name):
    with pytest.raises(FileNotFoundError) as raised:
        model_lib.build_backbone("efficientnet-b0", SIZE, weights)
    message = str(raised.value)
    assert file_name in message and str(offline) in message
    status = model_lib.pretrained_status("efficientnet-b0", weights)
    assert status["weights_cached"] is False and status["weights_file"] == str(offline / file_name)


def test_offline_error_for_v2_names_keras_file(offline):
    with pytest.raises(FileNotFoundError, match="efficientnetv2-b0_notop.h5"):
        model_lib.build_backbone("efficientnetv2-b0", SIZE, "imagenet")
    with pytest.raises(ValueError, match="ImageNet weights only"):
        model_lib.build_backbone("efficientnetv2-b0", SIZE, "noisy-student")


def test_cached_pretrained_file_is_used_offline(offline):
    source = model_lib.build_backbone("efficientnet-b0", SIZE)
    offline.mkdir(parents=True)
    save_legacy_h5(source, offline / "efficientnet-b0_noisy-student_notop.h5")
    loaded = model_lib.build_backbone("efficientnet-b0", SIZE, "noisy-student")
    assert same_weights(source, loaded)
    assert model_lib.pretrained_status("efficientnet-b0", "noisy-student")["weights_cached"] is True
    # pretrained=False (describe, inference before loading a checkpoint) never touches the file
    assert not same_weights(source, model_lib.build_backbone("efficientnet-b0", SIZE, "noisy-student",
                                                             pretrained=False))


# ---------------------------------------------------------------------------------------------------
# heads


def inputs(batch: int = 3, metadata: bool = False, seed: int = 0):
    from melanoma.input.pipeline import METADATA_SIZE

    rng = np.random.default_rng(seed)
    values = {"image": rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32")}
    if metadata:
        values["metadata"] = rng.uniform(0, 1, (batch, METADATA_SIZE)).astype("float32")
    return values


def test_binary_head_with_metadata():
    model = model_lib.build_model(demo_config("model.metadata_input=true", "model.dropout=0.3"))
    assert sorted(model.input) == ["image", "metadata"]
    output = model.predict_on_batch(inputs(metadata=True))
    assert output.shape == (3, 1) and ((output > 0) & (output < 1)).all()
    assert model.get_layer("head_dropout").rate == 0.3
    assert model.get_layer("metadata_dense").input.shape[-1] == 13


def test_diagnosis_head_predicts_melanoma_probability(tmp_path):
    model = model_lib.build_model(demo_config("model.head=diagnosis"))
    batch = inputs()
    probabilities = np.asarray(model(batch, training=True))  # dropout on, so compare shapes only
    assert probabilities.shape == (3, 9)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    full = np.asarray(model.network(batch, training=False))
    melanoma = model.predict_on_batch(batch)
    assert melanoma.shape == (3, 1)
    np.testing.assert_allclose(melanoma[:, 0], full[:, taxonomy.MELANOMA_CLASS], rtol=1e-5)
    path = tmp_path / "model.keras"
    model.save(path)
    again = model_lib.build_model(demo_config("model.head=diagnosis"))
    again.load_weights(path)
    np.testing.assert_allclose(again.predict_on_batch(batch), melanoma, rtol=1e-5)


def test_diagnosis_names_map_to_isic_classes():
    competition = ["atypical melanocytic proliferation", "cafe-au-lait macule", "lentigo NOS",
                   "lichenoid keratosis", "melanoma", "nevus", "seborrheic keratosis", "solar lentigo",
                   "unknown"]
    classes = [taxonomy.DIAGNOSIS_CLASSES[i] for i in taxonomy.diagnosis_lookup(competition)]
    assert classes == ["UNK", "UNK", "BKL", "BKL", "MEL", "NV", "BKL", "BKL", "UNK"]
    assert taxonomy.diagnosis_lookup(["MEL", "scc", "basal cell carcinoma"]) == [0, 7, 2]
    with pytest.raises(ValueError, match="wart"):
        taxonomy.diagnosis_class("wart")


def test_mixed_precision_keeps_output_layers_float32():
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        binary = model_lib.build_model(demo_config())
        assert binary.get_layer("target").dtype_policy.compute_dtype == "float32"
        assert binary.get_layer("pool").compute_dtype == "bfloat16"
        diagnosis = model_lib.build_model(demo_config("model.head=diagnosis"))
        assert diagnosis.network.get_layer("diagnosis").dtype_policy.compute_dtype == "float32"
        assert diagnosis.predict_on_batch(inputs()).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------------------------------------------
# hardware


@pytest.mark.parametrize("accelerator, mixed, expected", [
    ("tpu", True, "mixed_bfloat16"), ("gpu", True, "mixed_float16"), ("cpu", True, "float32"),
    ("tpu", False, "float32"), ("gpu", False, "float32"), ("cpu", False, "float32"),
])
def test_precision_policy(capsys, accelerator, mixed, expected):
    assert hardware.precision_policy(accelerator, mixed) == expected
    warned = "warning" in capsys.readouterr().err
    assert warned == (accelerator == "cpu" and mixed)


def test_set_precision_always_sets_the_policy():
    strategy = hardware.get_strategy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        assert hardware.set_precision(demo_config("train.mixed_precision=false"), strategy) == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_strategy_on_this_machine():
    strategy = hardware.get_strategy()
    assert strategy is hardware.get_strategy()  # created once per process
    assert strategy.num_replicas_in_sync == 1
    assert hardware.accelerator_name(strategy) == "cpu"
    assert hardware.strategy_name(strategy) == "DefaultStrategy"


def test_tpu_detection(monkeypatch):
    for name in hardware.TPU_NAME_VARIABLES + ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(name, raising=False)
    if not hardware.os.path.exists("/dev/accel0"):
        assert hardware.tpu_resolver() is None
    monkeypatch.setenv("TPU_NAME", "local")
    resolver = hardware.tpu_resolver()  # a TPU VM's resolver; nothing is connected until get_strategy
    assert isinstance(resolver, hardware.tf.distribute.cluster_resolver.TPUClusterResolver)


# ---------------------------------------------------------------------------------------------------
# colour constancy (model.color_constancy)


def test_shades_of_gray_removes_a_tint_and_keeps_a_grey_image():
    """A channel tint (the light of another dermoscope) is removed: the image and its tinted copy come out
    alike up to one brightness factor, the mean of the channel gains. A grey-lit image passes unchanged;
    bright pixels never leave 0..255; p = 1 is grey world (channel means made equal)."""
    rng = np.random.default_rng(3)
    image = rng.uniform(10, 200, (2, 16, 16, 3)).astype("float32")
    image[..., :] = image.mean(axis=-1, keepdims=True)  # grey-lit: every channel's p-norm mean the same
    gains = np.array([1.25, 0.9, 0.6], "float32")
    layer = model_lib.ShadesOfGray(6)
    np.testing.assert_allclose(layer(image).numpy(), image, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(layer(image * gains).numpy(), image * gains.mean(), rtol=1e-4, atol=1e-2)
    bright = np.full((1, 8, 8, 3), 255.0, "float32")
    bright[..., 2] = 40.0
    out = layer(bright).numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert np.ptp(out.reshape(-1, 3).mean(axis=0)) < 1.0  # grey: the three channels alike
    coloured = rng.uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    means = model_lib.ShadesOfGray(1)(coloured).numpy().mean(axis=(0, 1, 2))
    assert np.ptp(means) < 0.5, means  # grey world, where nothing clips (the scale is at most 1.0x)


def test_colour_constancy_is_the_models_first_step():
    """With model.color_constancy the model predicts from the white-balanced image: its output equals the
    same weights' output without the step on the balanced image; a tint then moves the prediction only as
    much as the brightness it also carries."""
    model = model_lib.build_model(demo_config("model.color_constancy=6"))
    plain = model_lib.build_model(demo_config(), pretrained=False)
    assert model.get_layer("shades_of_gray").power == 6.0
    with pytest.raises(ValueError):
        plain.get_layer("shades_of_gray")
    plain.set_weights(model.get_weights())
    batch = inputs()
    balanced = model.get_layer("shades_of_gray")(batch["image"]).numpy()
    np.testing.assert_allclose(model.predict_on_batch(batch), plain.predict_on_batch({"image": balanced}),
                               rtol=1e-5, atol=1e-6)


def test_count_parameters_matches_keras():
    model = model_lib.build_model(demo_config("model.head=diagnosis", "model.metadata_input=true"))
    assert model_lib.count_parameters(model) == model.count_params()
    assert model_lib.count_trainable(model) < model_lib.count_parameters(model)


@pytest.mark.parametrize("overrides", [[], ["model.metadata_input=true"], ["model.color_constancy=6"]],
                         ids=["binary", "metadata", "colour-constancy"])
def test_checkpoint_reloads_into_a_fresh_model_with_equal_predictions(tmp_path, overrides):
    """Training saves model.keras and reloads it with load_weights into a freshly built model (OOF,
    inference): every weight must come back, or predictions would silently come from random layers."""
    model = model_lib.build_model(demo_config(*overrides))
    batch = inputs(metadata="model.metadata_input=true" in overrides)
    expected = model.predict_on_batch(batch)
    path = tmp_path / "model.keras"
    model.save(path)
    again = model_lib.build_model(demo_config(*overrides), pretrained=False)
    assert not same_weights(model, again)
    again.load_weights(path)
    assert same_weights(model, again)
    np.testing.assert_allclose(again.predict_on_batch(batch), expected, rtol=1e-5, atol=1e-7)
