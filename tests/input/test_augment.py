"""Augmentation ops of every backend (melanoma.input.augment), eagerly and inside tf.data, and TTA decoding."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from melanoma.core import config as config_lib
from melanoma.data import examples, record_format
from melanoma.input import augment, pipeline

BASE = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"
OFF = {"flip": False, "transpose": False, "rotate_limit": 0, "scale_limit": 0.0, "shift_limit": 0.0,
       "brightness_limit": 0.0, "contrast_limit": 0.0, "hue_shift_limit": 0, "saturation_shift_limit": 0}
ALONE = {  # each transform on its own, every other one off
    "flip": {"flip": True},
    "transpose": {"transpose": True},
    "affine": {"rotate_limit": 30, "scale_limit": 0.1, "shift_limit": 0.1},
    "brightness_contrast": {"brightness_limit": 0.2, "contrast_limit": 0.2},
    "hue_saturation": {"hue_shift_limit": 10, "saturation_shift_limit": 20},
}
BACKENDS = augment.BACKENDS


def load(overrides: dict | None = None, **augment_keys):
    values = dict(overrides or {})
    values.update(augment_keys)
    return config_lib.load_config(BASE, [f"augment.{key}={value}" for key, value in values.items()])


def transform_config(name: str, backend: str, **extra):
    if name == "all":
        return load({"backend": backend, **extra})
    return load({**OFF, **ALONE[name], "backend": backend, **extra})


def random_images(count: int = 6, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def distinct_images(count: int = 8, size: int = 16) -> np.ndarray:
    """Images whose pixels are all different, so a permutation of pixels can be recognised."""
    ids = np.arange(size * size, dtype=np.int64).reshape(size, size)
    image = np.stack([ids % 256, ids // 256, np.full_like(ids, 7)], axis=-1).astype(np.uint8)
    return np.repeat(image[None], count, axis=0)


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [view.numpy() for view in augment.dihedral_views(tf.constant(image))]


def in_dataset(augmenter, images: np.ndarray) -> np.ndarray:
    dataset = tf.data.Dataset.from_tensors(images).map(
        lambda batch: augment.augment_batch_op(batch, augmenter), num_parallel_calls=tf.data.AUTOTUNE)
    assert dataset.element_spec.shape == images.shape
    assert dataset.element_spec.dtype == tf.uint8
    return next(iter(dataset)).numpy()


def eager(augmenter, images: np.ndarray) -> np.ndarray:
    return np.asarray(augment.augment_batch_op(tf.constant(images), augmenter))


RUNNERS = {"eager": eager, "dataset": in_dataset}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", list(ALONE) + ["all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_keeps_shape_dtype_and_range(backend, name, runner):
    images = random_images()
    config = transform_config(name, backend, probability=1.0)
    out = RUNNERS[runner](augment.make_augmenter(config.augment, seed=1), images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert 0 <= out.min() and out.max() <= 255


@pytest.mark.parametrize("backend", BACKENDS)
def test_make_augmenter_follows_the_config(backend):
    augmenter = augment.make_augmenter(load(backend=backend).augment)
    expected = {"albumentations": augment.BatchAugmenter, "opencv": augment.OpenCVBatchAugmenter,
                "tf": augment.TFAugmenter}[backend]
    assert isinstance(augmenter, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_colour_changes_clip_instead_of_wrapping(backend):
    # 250 * contrast (0.8..1.2) + brightness (-51..51) stays in [149, 255] after clipping; a uint8
    # overflow would wrap to small values.
    images = np.full((8, 16, 16, 3), 250, dtype=np.uint8)
    config = transform_config("brightness_contrast", backend, probability=1.0)
    out = eager(augment.make_augmenter(config.augment, seed=3), images)
    assert out.min() >= 148


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_probability_zero_is_identity(backend, runner):
    images = random_images()
    config = load({"backend": backend, "flip": False, "transpose": False, "probability": 0.0})
    out = RUNNERS[runner](augment.make_augmenter(config.augment, seed=1), images)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_limits_are_identity(backend, runner):
    images = random_images()
    config = load({**OFF, "backend": backend, "probability": 1.0})
    out = RUNNERS[runner](augment.make_augmenter(config.augment, seed=1), images)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", ["flip", "transpose"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_flips_and_transposes_are_exact_permutations(backend, name, runner):
    images = distinct_images(count=32)
    config = transform_config(name, backend)
    out = RUNNERS[runner](augment.make_augmenter(config.augment, seed=5), images)
    views = dihedral(images[0])
    chosen = []
    for image in out:
        matches = [index for index, view in enumerate(views) if np.array_equal(image, view)]
        assert len(matches) == 1, "the output is not a flip/transpose of the input"
        chosen.append(matches[0])
    assert len(set(chosen)) > 1, "every image got the same flip: the draws are not per image"


@pytest.mark.parametrize("flips", [(h, v, t) for h in (0, 1) for v in (0, 1) for t in (0, 1)])
def test_opencv_dihedral_matrix_warps_like_the_flips(flips):
    import cv2

    image = random_images(count=1, size=12)[0]
    matrix = augment._dihedral_matrix(np.array(flips, bool), 12, 12)
    warped = cv2.warpAffine(image, matrix[:2], (12, 12), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(warped, augment._dihedral(image, np.array(flips, bool)))
    expected = image[:, ::-1] if flips[0] else image
    expected = expected[::-1] if flips[1] else expected
    expected = expected.transpose(1, 0, 2) if flips[2] else expected
    np.testing.assert_array_equal(warped, expected)


def test_opencv_and_tf_warps_agree():
    """Same angle, scale and shift through OpenCV's matrix and the tf gather warp: the same picture
    (up to OpenCV's 5-bit interpolation weights), so both backends turn and shift the same way."""
    import cv2

    rng = np.random.default_rng(4)
    image = cv2.GaussianBlur(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (0, 0), 2.0)
    augmenter = augment.OpenCVBatchAugmenter(load(rotate_limit=30, scale_limit=0.1, shift_limit=0.1).augment)
    spread = np.zeros(augment.DRAWS)
    spread[[augment.ANGLE, augment.SCALE, augment.SCALE_Y, augment.SHIFT_X, augment.SHIFT_Y]] = [
        0.7, -0.5, 0.8, 0.4, -0.3]
    matrix = augmenter._affine(spread, 32, 32)
    by_opencv = cv2.warpAffine(image, matrix[:2], (32, 32), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101).astype(float)
    by_tf = augment.warp_affine(tf.constant(image[None], tf.float32), tf.constant([math.radians(21.0)]),
                                tf.constant([0.95]), tf.constant([0.04 * 32]), tf.constant([-0.03 * 32]),
                                scale_y=tf.constant([1.08]))
    assert np.abs(by_opencv - by_tf.numpy()[0]).mean() < 1.0


def test_tf_flips_follow_the_draws():
    images = random_images(count=2, size=8)
    augmenter = augment.TFAugmenter(load({**OFF, "flip": True, "transpose": True}).augment)
    draws = np.full((2, augment.DRAWS), 0.9, dtype=np.float32)
    draws[0, [augment.FLIP_LR, augment.FLIP_UD, augment.TRANSPOSE]] = 0.0
    out = augmenter.apply(tf.constant(images), tf.constant(draws)).numpy()
    np.testing.assert_array_equal(out[0], images[0][::-1, ::-1].transpose(1, 0, 2))
    np.testing.assert_array_equal(out[1], images[1])


def test_tf_flips_folded_into_the_warp_are_exact_when_the_affine_step_is_off():
    images = distinct_images(count=8)
    augmenter = augment.TFAugmenter(load(probability=0.5, brightness_limit=0, contrast_limit=0,
                                         hue_shift_limit=0, saturation_shift_limit=0).augment)
    draws = np.full((8, augment.DRAWS), 0.9, dtype=np.float32)  # affine step off for every image
    for index in range(8):  # the 8 combinations of the three flips
        draws[index, [augment.FLIP_LR, augment.FLIP_UD, augment.TRANSPOSE]] = [
            0.1 if index & bit else 0.9 for bit in (1, 2, 4)]
    out = augmenter.apply(tf.constant(images), tf.constant(draws)).numpy()
    for index in range(8):
        expected = images[index]
        expected = expected[:, ::-1] if index & 1 else expected
        expected = expected[::-1] if index & 2 else expected
        expected = expected.transpose(1, 0, 2) if index & 4 else expected
        np.testing.assert_array_equal(out[index], expected)


def test_tf_flips_folded_into_the_warp_come_before_the_affine_step():
    images = random_images(count=8, size=16)
    flips = np.array([[index & 1, index & 2, index & 4] for index in range(8)], dtype=bool)
    angle, scale = tf.fill([8], 0.4), tf.fill([8], 1.1)
    shift_x, shift_y = tf.fill([8], 2.0), tf.fill([8], -1.0)
    folded = augment.warp_affine(tf.constant(images), angle, scale, shift_x, shift_y, tf.constant(flips))
    flipped = []
    for image, (lr, ud, transpose) in zip(images, flips):
        image = image[:, ::-1] if lr else image
        image = image[::-1] if ud else image
        flipped.append(image.transpose(1, 0, 2) if transpose else image)
    separate = augment.warp_affine(tf.constant(np.stack(flipped)), angle, scale, shift_x, shift_y)
    np.testing.assert_allclose(folded.numpy(), separate.numpy(), atol=1e-3)


def test_tf_draws_differ_per_call_and_per_batch_in_a_dataset():
    images = random_images(count=4)
    augmenter = augment.TFAugmenter(load(probability=1.0).augment, seed=11)
    assert not np.array_equal(eager(augmenter, images), eager(augmenter, images))
    dataset = tf.data.Dataset.from_tensors(images).repeat(2).map(augmenter)
    first, second = (batch.numpy() for batch in dataset)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("xla", [True, False])
def test_tf_backend_gives_the_same_with_and_without_xla(xla):
    images = random_images(count=4)
    draws = tf.random.stateless_uniform([4, augment.DRAWS], seed=[1, 2])
    reference = augment.TFAugmenter(load(xla=False, probability=0.7).augment).apply(images, draws)
    out = augment.TFAugmenter(load(xla=xla, probability=0.7).augment).apply(images, draws)
    # XLA may round a float differently here and there; never by more than one level.
    assert np.abs(out.numpy().astype(int) - reference.numpy().astype(int)).max() <= 1


def test_warp_affine_identity_is_exact():
    images = tf.constant(random_images(), tf.float32)
    zeros = tf.zeros([images.shape[0]])
    out = augment.warp_affine(images, zeros, zeros + 1.0, zeros, zeros)
    np.testing.assert_array_equal(out.numpy(), images.numpy())


def test_warp_affine_shift_moves_pixels_and_reflects_the_border():
    images = tf.constant(random_images(count=1, size=12), tf.float32)
    zero, one = tf.zeros([1]), tf.ones([1])
    out = augment.warp_affine(images, zero, one, zero + 3.0, zero).numpy()
    np.testing.assert_array_equal(out[:, :, 3:], images.numpy()[:, :, :-3])
    # reflect-101: columns -1, -2, -3 read columns 1, 2, 3
    np.testing.assert_array_equal(out[:, :, :3], images.numpy()[:, :, [3, 2, 1]])


def test_warp_affine_quarter_turn_is_a_rotation():
    image = random_images(count=1, size=10)[0]
    turned = augment.warp_affine(tf.constant(image[None], tf.float32), tf.constant([math.pi / 2]),
                                 tf.ones([1]), tf.zeros([1]), tf.zeros([1])).numpy()[0]
    # angle is measured in the image's x-right, y-down frame: +90 degrees turns clockwise on screen.
    np.testing.assert_allclose(turned, np.rot90(image, k=-1), atol=1e-3)


def test_hue_saturation_zero_shift_keeps_integers():
    images = tf.constant(random_images(), tf.float32)
    zeros = tf.zeros([images.shape[0]])
    out = augment.shift_hue_saturation(images, zeros, zeros)
    np.testing.assert_array_equal(np.round(out.numpy()), images.numpy())


def test_tf_backend_rejects_wrong_inputs():
    augmenter = augment.TFAugmenter(load().augment)
    with pytest.raises(ValueError, match="uint8"):
        augmenter(tf.zeros([2, 8, 8, 3], tf.float32))
    with pytest.raises(ValueError, match="square"):
        augmenter(tf.zeros([2, 8, 6, 3], tf.uint8))


def test_unknown_backend_is_an_error():
    config = load().augment
    config["backend"] = "torch"
    with pytest.raises(ValueError, match="augment.backend"):
        augment.make_augmenter(config)


# ------------------------------------------------------------------------------ TTA decodes once


def write_test_records(folder: Path, files: int = 2, per_file: int = 3, size: int = 16) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for part in range(files):
        path = folder / record_format.record_name("test", part, per_file)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for index in range(per_file):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                row = {"image_name": f"IMG_{part}_{index}", "patient_id": part, "sex": 0,
                       "age_approx": 50, "anatom_site_general_challenge": 1}
                data = tf.io.encode_jpeg(tf.constant(image), quality=95).numpy()
                writer.write(record_format.serialize_example(data, row, record_format.TEST_INT_FEATURES))
        paths.append(str(path))
    return paths


@pytest.fixture()
def decode_counter(monkeypatch):
    """Counts examples.decode_image calls made by the graph (a variable incremented in the graph)."""
    counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    original = examples.decode_image

    def counting(data, image_size):
        with tf.control_dependencies([counter.assign_add(1)]):
            return tf.identity(original(data, image_size))

    monkeypatch.setattr(examples, "decode_image", counting)
    return counter


@pytest.mark.parametrize("mode,backend", [("dihedral", "albumentations")]
                         + [("random", backend) for backend in augment.BACKENDS])
def test_tta_decodes_each_image_once_per_pass(tmp_path, decode_counter, mode, backend):
    paths = write_test_records(tmp_path)
    config = config_lib.load_config(BASE, ["data.image_size=16", f"augment.backend={backend}"])
    augmenter = augment.make_augmenter(config.augment, seed=0) if mode == "random" else None
    dataset, views = pipeline.prediction_dataset(paths, config, "test", tta_steps=8, tta_mode=mode,
                                                 batch_size=16, augmenter=augmenter)
    assert views == 8
    names = []
    for batch in dataset:
        count = len(batch["image_name"])
        assert batch["inputs"]["image"].shape == (count * views, 16, 16, 3)
        names.extend(name.decode() for name in batch["image_name"].numpy())
        if mode == "dihedral":
            stacks = batch["inputs"]["image"].numpy().reshape(count, views, 16, 16, 3)
            for stack in stacks:
                expected = np.stack(dihedral(stack[0].astype(np.uint8)))
                np.testing.assert_array_equal(stack, expected)
    assert names == [f"IMG_{part}_{index}" for part in range(2) for index in range(3)]
    assert int(decode_counter.numpy()) == 6
    for _ in dataset:  # a second pass decodes each image once more, no more
        pass
    assert int(decode_counter.numpy()) == 12
