"""Grad-CAM: where in the image the model's P(melanoma) comes from.

The feature map is the backbone's last convolutional block: the input of the model's `pool` layer (global
average pooling, see `model.build_model`). Each channel is weighted by the mean gradient of the melanoma
score over its positions, the score being the output layer's logit for melanoma (before the sigmoid or the
softmax, as Grad-CAM takes it, so that a saturated probability still has a gradient); the weighted sum
over channels is the map (Selvaraju et al., 2017). With this model's head (pooling, then one linear layer)
the map at a position is that position's share of the logit.

Grad-CAM's last step keeps the positive part only. A model that finds little melanoma in an image gives
every position a negative share, and that map is blank; so each fold's map is instead scaled from its
lowest position (0) to its highest (1): red marks what raises P(melanoma) most relative to the rest of the
image, whatever the probability. The map has the feature map's resolution (the input size / 32 for
EfficientNet: 2 x 2 at 64 px, 12 x 12 at 384 px) and is stretched to the image's size for the overlay.
"""
from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf
from matplotlib import colormaps

from melanoma.core.kerasapi import keras
from melanoma.model import network as model_lib

FEATURE_LAYER = "pool"                   # its input is the backbone's last block, in the outer graph
OUTPUT_LAYERS = ("target", "diagnosis")  # the output Dense of the binary and of the diagnosis head


def _network(model: keras.Model) -> keras.Model:
    """The functional model holding the layers (the diagnosis head wraps one)."""
    return model.network if isinstance(model, model_lib.DiagnosisModel) else model


def melanoma_column(model: keras.Model) -> int:
    """Column of P(melanoma) in the network's output: the sigmoid's, or MEL of the diagnosis softmax."""
    return model.melanoma_index if isinstance(model, model_lib.DiagnosisModel) else 0


def _output_layer(network: keras.Model):
    names = {layer.name for layer in network.layers}
    found = [name for name in OUTPUT_LAYERS if name in names]
    if not found:
        raise ValueError(f"Grad-CAM needs the output layer {' or '.join(OUTPUT_LAYERS)}; {network.name} has none")
    return network.get_layer(found[0])


def explainer(model: keras.Model):
    """A compiled function inputs -> (network output [B, ...], Grad-CAM of the first image [h, w], signed).

    One forward pass gives both: in inference the images of a batch do not interact, so the gradient of
    the first image's score reaches only the first image's feature map.
    """
    network = _network(model)
    head = _output_layer(network)
    cam = keras.Model(network.inputs, [network.get_layer(FEATURE_LAYER).input, head.input, network.output])
    column = melanoma_column(model)

    @tf.function(reduce_retracing=True)
    def explain(inputs):
        with tf.GradientTape() as tape:
            features, head_input, output = cam(inputs, training=False)
            logits = tf.matmul(head_input, head.kernel) + head.bias
            score = logits[0, column]
        gradients = tape.gradient(score, features)[0]
        weights = tf.reduce_mean(gradients, axis=(0, 1))
        return output, tf.reduce_sum(features[0] * weights, axis=-1)

    return explain


def normalise(heat) -> np.ndarray:
    """A map scaled from its lowest position (0) to its highest (1); all zeros when it is flat."""
    heat = np.asarray(heat, dtype=np.float32)
    if not heat.size:
        return heat
    low, high = float(heat.min()), float(heat.max())
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


def overlay(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map stretched to the image's size, coloured (jet: blue low, red high) and blended over it."""
    height, width = image_rgb.shape[:2]
    stretched = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    coloured = colormaps["jet"](np.clip(stretched, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * coloured
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
