"""Grad-CAM: where in the image the model's P(melanoma) comes from.

The feature map is the backbone's last convolutional block: the input of the model's `pool` layer (global
average pooling, see `model.build_model`). Each channel is weighted by the mean gradient of P(melanoma)
over its positions; the positive part of the weighted sum is the map (Selvaraju et al., 2017). The map has
the feature map's resolution (the input size / 32 for EfficientNet: 2 x 2 at 64 px, 12 x 12 at 384 px) and
is stretched to the image's size for the overlay.
"""
from __future__ import annotations

import io

import keras
import numpy as np
import tensorflow as tf

from melanoma import model as model_lib

FEATURE_LAYER = "pool"  # its input is the backbone's last block, in the outer model's graph


def _network(model: keras.Model) -> keras.Model:
    """The functional model holding the layers (the diagnosis head wraps one)."""
    return model.network if isinstance(model, model_lib.DiagnosisModel) else model


def melanoma_column(model: keras.Model) -> int:
    """Column of P(melanoma) in the network's output: the sigmoid's, or MEL of the diagnosis softmax."""
    return model.melanoma_index if isinstance(model, model_lib.DiagnosisModel) else 0


def cam_model(model: keras.Model) -> keras.Model:
    """inputs -> (backbone feature map [B, h, w, C], network output); shares every weight with `model`."""
    network = _network(model)
    return keras.Model(network.inputs, [network.get_layer(FEATURE_LAYER).input, network.output])


def explainer(model: keras.Model):
    """A compiled function inputs -> (network output [B, ...], Grad-CAM of the first image [h, w]).

    One forward pass gives both: in inference the images of a batch do not interact, so the gradient of
    the first image's P(melanoma) reaches only the first image's feature map.
    """
    cam = cam_model(model)
    column = melanoma_column(model)

    @tf.function(reduce_retracing=True)
    def explain(inputs):
        with tf.GradientTape() as tape:
            features, output = cam(inputs, training=False)
            score = output[0, column]
        gradients = tape.gradient(score, features)[0]
        weights = tf.reduce_mean(gradients, axis=(0, 1))
        return output, tf.nn.relu(tf.reduce_sum(features[0] * weights, axis=-1))

    return explain


def normalise(heat) -> np.ndarray:
    """A map scaled so that its maximum is 1 (all zeros where no position raises P(melanoma))."""
    heat = np.asarray(heat, dtype=np.float32)
    peak = float(heat.max()) if heat.size else 0.0
    return heat / peak if peak > 0 else np.zeros_like(heat)


def overlay(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map stretched to the image's size, coloured (jet: blue low, red high) and blended over it."""
    import cv2
    from matplotlib import colormaps

    height, width = image_rgb.shape[:2]
    stretched = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    coloured = colormaps["jet"](np.clip(stretched, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * coloured
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def png_bytes(image_rgb: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_rgb)).save(buffer, format="PNG")
    return buffer.getvalue()
