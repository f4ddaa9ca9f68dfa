"""Augmentation: albumentations on the host CPU, applied to whole batches of uint8 images.

One `tf.numpy_function` call per batch (not per image) keeps the Python/graph crossing cheap; inside,
albumentations transforms each image. Dermoscopy has no canonical orientation, so flips, transposes
and rotations are all label-preserving.
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def build_transform(augment_config, seed: int | None = None):
    """The albumentations pipeline that `augment_config` (the config's `augment` section) describes."""
    import albumentations as A
    import cv2

    steps = []
    if augment_config.flip:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if augment_config.transpose:
        steps.append(A.Transpose(p=0.5))
    if augment_config.rotate_limit or augment_config.scale_limit or augment_config.shift_limit:
        steps.append(A.Affine(
            translate_percent=(-augment_config.shift_limit, augment_config.shift_limit),
            scale=(1 - augment_config.scale_limit, 1 + augment_config.scale_limit),
            rotate=(-augment_config.rotate_limit, augment_config.rotate_limit),
            border_mode=cv2.BORDER_REFLECT_101, p=augment_config.probability))
    if augment_config.brightness_limit or augment_config.contrast_limit:
        steps.append(A.RandomBrightnessContrast(brightness_limit=augment_config.brightness_limit,
                                                contrast_limit=augment_config.contrast_limit,
                                                p=augment_config.probability))
    if augment_config.hue_shift_limit or augment_config.saturation_shift_limit:
        steps.append(A.HueSaturationValue(hue_shift_limit=augment_config.hue_shift_limit,
                                          sat_shift_limit=augment_config.saturation_shift_limit,
                                          val_shift_limit=0, p=augment_config.probability))
    return A.Compose(steps, seed=seed)


class BatchAugmenter:
    """Callable numpy uint8 [B, H, W, 3] -> uint8 [B, H, W, 3], each image augmented independently."""

    def __init__(self, augment_config, seed: int | None = None):
        self.transform = build_transform(augment_config, seed)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        for index in range(images.shape[0]):
            out[index] = self.transform(image=images[index])["image"]
        return out


def augment_batch_op(images, augmenter: BatchAugmenter):
    """Graph op: apply `augmenter` to a uint8 batch, keeping the static shape."""
    import tensorflow as tf

    out = tf.numpy_function(augmenter, [images], tf.uint8, stateful=True)
    out.set_shape(images.shape)
    return out


def dihedral_views(image):
    """The 8 flips/transposes of one image (H == W), stacked as [8, H, W, C]."""
    import tensorflow as tf

    transposed = tf.transpose(image, [1, 0, 2])
    views = []
    for base in (image, transposed):
        views += [base, tf.reverse(base, [0]), tf.reverse(base, [1]), tf.reverse(base, [0, 1])]
    return tf.stack(views)
