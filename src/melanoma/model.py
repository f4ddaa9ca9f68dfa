"""Model: EfficientNet backbone (the `efficientnet` package's tf.keras models) + classification head.

Inputs are float32 images in 0..255 under the key `image` (and `metadata` when the config asks);
normalisation happens inside the model, so pipelines stay in uint8 and TTA views are cheap.
"""
from __future__ import annotations

import os

import keras
import tensorflow as tf

BACKBONES = {f"efficientnet-b{i}": f"EfficientNetB{i}" for i in range(8)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_builder(name: str):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of efficientnet-b0..b7")
    import efficientnet.tfkeras as efn

    return getattr(efn, BACKBONES[name])


def resolve_weights(weights: str) -> str | None:
    """`none` -> None; `imagenet` / `noisy-student` as the package names them; else a file path."""
    if weights in (None, "none"):
        return None
    if weights in ("imagenet", "noisy-student"):
        return weights
    if not os.path.exists(weights):
        raise FileNotFoundError(f"model.weights file not found: {weights} (use none, imagenet, "
                                "noisy-student or the path of a weights file)")
    return weights


def build_backbone(name: str, image_size: int, weights: str = "none"):
    """EfficientNet without its top; pretrained weights loaded as `weights` says."""
    resolved = resolve_weights(weights)
    builder = backbone_builder(name)
    from_package = resolved if resolved in ("imagenet", "noisy-student") else None
    backbone = builder(weights=from_package, include_top=False, input_shape=(image_size, image_size, 3))
    if resolved and from_package is None:
        backbone.load_weights(resolved)
    return backbone


def build_model(config) -> keras.Model:
    """Backbone, global average pooling, dropout, one sigmoid output (float32 under mixed precision)."""
    size = config.data.image_size
    image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    inputs = {"image": image}
    normalised = keras.layers.Rescaling(1.0 / 255.0)(image)
    normalised = keras.layers.Normalization(mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD],
                                            name="imagenet_normalisation")(normalised)
    backbone = build_backbone(config.model.backbone, size, config.model.weights)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(normalised))
    if config.model.metadata:
        from melanoma.pipeline import METADATA_SIZE

        metadata = keras.Input(shape=(METADATA_SIZE,), name="metadata", dtype="float32")
        inputs["metadata"] = metadata
        branch = keras.layers.Dense(32, activation="relu", name="metadata_dense")(metadata)
        features = keras.layers.Concatenate(name="join")([features, branch])
    features = keras.layers.Dropout(config.model.dropout, name="head_dropout")(features)
    output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="target")(features)
    return keras.Model(inputs, output, name=config.model.backbone.replace("-", "_"))


def count_parameters(model: keras.Model) -> int:
    return int(sum(tf.size(w).numpy() for w in model.weights))
