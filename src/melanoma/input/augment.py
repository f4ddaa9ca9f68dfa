"""Augmentation of whole batches of uint8 images, on one of three backends (`augment.backend`).

`auto` (the default) picks `tf` on a TPU, whose hosts cannot run Python inside the input pipeline, and
`opencv`, the cheapest per image on a CPU (`melanoma bench`), everywhere else.

- `albumentations`: on the host CPU. One `tf.numpy_function` call per batch (not per image) keeps the
  Python/graph crossing cheap; inside, an albumentations Compose transforms each image.
- `opencv`: the same transforms with the same parameter ranges and uint8 arithmetic as the
  albumentations ones, on the host CPU through one numpy_function per batch, but driven batch-wise:
  every image's parameters drawn in one numpy call, flips and transpose folded into the affine warp's
  matrix (one pass over the pixels instead of two), brightness/contrast as one lookup table and
  hue/saturation as one lookup in HSV. Fewer copies and little Python per image, so it costs less CPU
  than the Compose and leaves the GIL free most of the time (tf.data's parallel calls overlap).
- `tf`: the same kinds of transforms as TensorFlow ops on the whole batch, in the graph: no Python, no
  numpy_function (which TPU hosts cannot run), and only ops that XLA compiles (a gather-based bilinear
  warp instead of ImageProjectiveTransform), so it runs wherever the graph runs.

All take uint8 [B, H, W, 3] in 0..255 and return uint8 [B, H, W, 3] in 0..255; each image draws its own
random parameters. Dermoscopy has no canonical orientation, so flips, transposes and rotations are all
label-preserving.

Each augmenter is called either with the images alone, drawing from a generator of its own (shared by
tf.data's parallel calls, so which image gets which draw depends on thread timing), or with `keys` as
well (int64 [B], one per image: its position in the stream, which the pipeline carries under
train.deterministic): then each image's parameters come from (the augmenter's seed, its key) alone, so
the same seed and key give the same image on any thread, in any order, eagerly or inside tf.data.
"""
from __future__ import annotations

import math
import os
import random
import threading

import numpy as np

from melanoma.core import config as config_lib
from melanoma.core.config import Config

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Columns of the one [B, DRAWS] uniform draw per batch of the opencv and tf backends: one draw (not one
# per parameter), so that a fixed seed never gives two parameters the same sequence.
FLIP_LR, FLIP_UD, TRANSPOSE, AFFINE_ON, ANGLE, SCALE, SHIFT_X, SHIFT_Y = range(8)
CONTRAST_ON, CONTRAST, BRIGHTNESS, HSV_ON, HUE, SATURATION, SCALE_Y = range(8, 15)
DRAWS = 15


def example_seed(seed: int | None, key) -> int:
    """One 32-bit seed from (augmenter seed, image key): SeedSequence mixes the two, so that nearby keys
    (consecutive images) get unrelated streams. A null seed counts as 0."""
    entropy = [int(seed or 0) % 2 ** 63, int(key) % 2 ** 63]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def example_draws(seed: int | None, keys) -> np.ndarray:
    """float64 [B, DRAWS] uniform in [0, 1): each row drawn from its image's own seed (`example_seed`)."""
    keys = np.asarray(keys).reshape(-1)
    draws = np.empty((len(keys), DRAWS))
    for row, key in enumerate(keys):
        draws[row] = np.random.default_rng(example_seed(seed, key)).random(DRAWS)
    return draws


def build_transform(augment_config: Config, seed: int | None = None):
    """The albumentations pipeline that `augment_config` (the config's `augment` section) describes."""
    # albumentations loads (and is checked) only for its backend
    import albumentations as A

    # OpenCV loads only when images are handled here
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
    transform = A.Compose(steps)
    if seed is not None:
        seed_transform(transform, seed)
    return transform


def seed_transform(transform, seed: int) -> None:
    """Seed a Compose with one generator that all its steps draw from in turn. albumentations'
    Compose(seed=...) gives each step a generator of its own from the same seed, so the steps draw
    the same numbers: both flips then always happen together (a half turn, never a mirror)."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


class BatchAugmenter:
    """Callable numpy uint8 [B, H, W, 3] (and optional int64 [B] keys) -> uint8 [B, H, W, 3], each image
    augmented independently."""

    def __init__(self, augment_config: Config, seed: int | None = None):
        self.augment_config = augment_config
        self.seed = seed
        self.transform = build_transform(augment_config, seed)
        # With keys, each thread re-seeds a Compose of its own per image: a shared one, re-seeded by two
        # threads at once, would hand one image the other's stream.
        self._local = threading.local()

    def __call__(self, images: np.ndarray, keys=None) -> np.ndarray:
        out = np.empty_like(images)
        if keys is None:
            for index in range(images.shape[0]):
                out[index] = self.transform(image=images[index])["image"]
            return out
        transform = getattr(self._local, "transform", None)
        if transform is None:
            transform = self._local.transform = build_transform(self.augment_config)
        for index, key in enumerate(np.asarray(keys).reshape(-1)):
            seed_transform(transform, example_seed(self.seed, key))
            out[index] = transform(image=images[index])["image"]
        return out


class OpenCVBatchAugmenter:
    """Callable numpy uint8 [B, H, W, 3] -> uint8 [B, H, W, 3]: `build_transform`'s steps, in its order
    and with its parameter ranges, done with OpenCV directly and driven per batch (module docstring)."""

    def __init__(self, augment_config: Config, seed: int | None = None):
        a = augment_config
        self.flip = bool(a.flip)
        self.transpose = bool(a.transpose)
        self.rotate_limit = float(a.rotate_limit)
        self.scale_limit = float(a.scale_limit)
        self.shift_limit = float(a.shift_limit)
        self.brightness_limit = float(a.brightness_limit)
        self.contrast_limit = float(a.contrast_limit)
        self.hue_shift_limit = float(a.hue_shift_limit)
        self.saturation_shift_limit = float(a.saturation_shift_limit)
        self.probability = float(a.probability)
        self.affine = bool(self.rotate_limit or self.scale_limit or self.shift_limit)
        self.brightness_contrast = bool(self.brightness_limit or self.contrast_limit)
        self.hue_saturation = bool(self.hue_shift_limit or self.saturation_shift_limit)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.levels = np.arange(256, dtype=np.float32)

    def __call__(self, images: np.ndarray, keys=None) -> np.ndarray:
        # OpenCV loads only when images are handled here
        import cv2

        count, height, width = images.shape[:3]
        if self.transpose and height != width:
            raise ValueError(f"augment.transpose needs square images, got {height}x{width}")
        draws = self.rng.random((count, DRAWS)) if keys is None else example_draws(self.seed, keys)
        flips = draws[:, [FLIP_LR, FLIP_UD, TRANSPOSE]] < 0.5
        flips[:, :2] &= self.flip
        flips[:, 2] &= self.transpose
        on = draws[:, [AFFINE_ON, CONTRAST_ON, HSV_ON]] < self.probability
        on &= [self.affine, self.brightness_contrast, self.hue_saturation]
        spread = 2.0 * draws - 1.0  # uniform in [-1, 1]
        out = np.empty_like(images)
        for index in range(count):
            image = images[index]
            if on[index, 0]:
                matrix = self._affine(spread[index], height, width) @ _dihedral_matrix(flips[index], height, width)
                image = cv2.warpAffine(image, matrix[:2], (width, height), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT_101)
            else:
                image = _dihedral(image, flips[index])
            if on[index, 1]:
                alpha = 1.0 + self.contrast_limit * spread[index, CONTRAST]
                beta = 255.0 * self.brightness_limit * spread[index, BRIGHTNESS]
                table = np.clip(np.rint(self.levels * alpha + beta), 0, 255).astype(np.uint8)
                image = cv2.LUT(image, table)
            if on[index, 2]:
                image = self._shift_hsv(image, self.hue_shift_limit * spread[index, HUE],
                                        self.saturation_shift_limit * spread[index, SATURATION])
            out[index] = image
        return out

    def _affine(self, spread: np.ndarray, height: int, width: int) -> np.ndarray:
        """3x3 forward matrix: scale each axis (drawn apart, as albumentations' Affine does without
        keep_ratio), rotate about the centre, then shift."""
        angle = math.radians(self.rotate_limit * spread[ANGLE])
        scale_x = 1.0 + self.scale_limit * spread[SCALE]
        scale_y = 1.0 + self.scale_limit * spread[SCALE_Y]
        cos, sin = math.cos(angle), math.sin(angle)
        linear = np.array([[cos * scale_x, -sin * scale_y], [sin * scale_x, cos * scale_y]])
        centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        shift = np.array([self.shift_limit * spread[SHIFT_X] * width, self.shift_limit * spread[SHIFT_Y] * height])
        matrix = np.eye(3)
        matrix[:2, :2] = linear
        matrix[:2, 2] = centre - linear @ centre + shift
        return matrix

    def _shift_hsv(self, image: np.ndarray, hue: float, saturation: float) -> np.ndarray:
        """albumentations' uint8 hue/saturation shift: OpenCV HSV (hue 0..179), hue turned modulo 180,
        saturation added and clipped, grey (saturation 0) left grey; one 3-channel lookup."""
        # OpenCV loads only when images are handled here
        import cv2

        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        table = np.empty((256, 1, 3), dtype=np.uint8)
        table[:, 0, 0] = np.mod(self.levels + hue, 180.0).astype(np.uint8)
        table[:, 0, 1] = np.clip(self.levels + saturation, 0, 255).astype(np.uint8)
        table[0, 0, 1] = 0
        table[:, 0, 2] = np.arange(256, dtype=np.uint8)
        return cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2RGB)


def _dihedral_matrix(flips, height: int, width: int) -> np.ndarray:
    """3x3 forward matrix of a horizontal flip, then a vertical flip, then a transpose (each if chosen)."""
    matrix = np.eye(3)
    if flips[0]:
        matrix = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ matrix
    if flips[1]:
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height - 1.0], [0.0, 0.0, 1.0]]) @ matrix
    if flips[2]:
        matrix = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ matrix
    return matrix


def _dihedral(image: np.ndarray, flips) -> np.ndarray:
    """The flips and transpose alone, with OpenCV (contiguous results, no slow strided numpy copies)."""
    # OpenCV loads only when images are handled here
    import cv2

    if flips[0] and flips[1]:
        image = cv2.flip(image, -1)
    elif flips[0]:
        image = cv2.flip(image, 1)
    elif flips[1]:
        image = cv2.flip(image, 0)
    if flips[2]:
        image = cv2.transpose(image)
    return image


CHOICES = config_lib.CHOICES["augment.backend"]  # auto, then the backends
BACKENDS = tuple(choice for choice in CHOICES if choice != "auto")


def resolve_backend(backend: str) -> str:
    """The backend `augment.backend` stands for on this machine: `auto` is `tf` on a TPU, else `opencv`."""
    if backend != "auto":
        return backend
    # this module loads TensorFlow: only the work that needs it pays for it
    from melanoma.core import hardware

    return "tf" if hardware.accelerator_name(hardware.get_strategy()) == "tpu" else "opencv"


def make_augmenter(augment_config: Config, seed: int | None = None):
    """The augmenter of the backend that `augment_config.backend` names (see the module docstring)."""
    backend = resolve_backend(getattr(augment_config, "backend", "auto"))
    if backend == "albumentations":
        return BatchAugmenter(augment_config, seed=seed)
    if backend == "opencv":
        return OpenCVBatchAugmenter(augment_config, seed=seed)
    if backend == "tf":
        return TFAugmenter(augment_config, seed=seed)
    raise ValueError(f"unknown augment.backend '{backend}'; choose one of {', '.join(CHOICES)}")


def augment_batch_op(images, augmenter, keys=None):
    """Graph op: apply `augmenter` (of any backend) to a uint8 batch, keeping the static shape. A host
    augmenter runs through one numpy_function per call; a TFAugmenter is plain graph ops.

    With `keys` (int64 [B], see the module docstring) the op is a pure function of its inputs, and says
    so (stateful=False): under TensorFlow's op determinism a stateful function would make tf.data run
    the whole pipeline serially."""
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    if isinstance(augmenter, TFAugmenter):
        return augmenter(images, keys)
    if keys is None:
        out = tf.numpy_function(augmenter, [images], tf.uint8, stateful=True)
    else:
        out = tf.numpy_function(augmenter, [images, tf.cast(keys, tf.int64)], tf.uint8, stateful=False)
    out.set_shape(images.shape)
    return out


def dihedral_views(image):
    """The 8 flips/transposes of one image (H == W), stacked as [8, H, W, C]."""
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    transposed = tf.transpose(image, [1, 0, 2])
    views = []
    for base in (image, transposed):
        views += [base, tf.reverse(base, [0]), tf.reverse(base, [1]), tf.reverse(base, [0, 1])]
    return tf.stack(views)


# ------------------------------------------------------------------------------ tf backend (batched)

class TFAugmenter:
    """Callable tensor uint8 [B, H, W, 3] -> uint8 [B, H, W, 3] made of TensorFlow ops only.

    The same kinds and ranges of transforms as `build_transform`: random horizontal/vertical flips and
    transpose (exact pixel permutations), an affine rotate/scale/shift with reflect-101 borders and
    bilinear sampling, brightness/contrast (`x * alpha + beta * 255`), and hue/saturation shifts in HSV
    (hue in OpenCV's uint8 units, 180 to a turn; saturation out of 255), each of the last three applied
    to an image with `probability`. Square images only (the transpose needs H == W).
    """

    def __init__(self, augment_config: Config, seed: int | None = None):
        self.flip = bool(augment_config.flip)
        self.transpose = bool(augment_config.transpose)
        self.rotate_limit = float(augment_config.rotate_limit)
        self.scale_limit = float(augment_config.scale_limit)
        self.shift_limit = float(augment_config.shift_limit)
        self.brightness_limit = float(augment_config.brightness_limit)
        self.contrast_limit = float(augment_config.contrast_limit)
        self.hue_shift_limit = float(augment_config.hue_shift_limit)
        self.saturation_shift_limit = float(augment_config.saturation_shift_limit)
        self.probability = float(augment_config.probability)
        self.jit_compile = bool(getattr(augment_config, "xla", True))
        self.seed = seed
        self._compiled = None

    @property
    def affine(self) -> bool:
        return bool(self.rotate_limit or self.scale_limit or self.shift_limit) and self.probability > 0

    @property
    def brightness_contrast(self) -> bool:
        return bool(self.brightness_limit or self.contrast_limit) and self.probability > 0

    @property
    def hue_saturation(self) -> bool:
        return bool(self.hue_shift_limit or self.saturation_shift_limit) and self.probability > 0

    def __call__(self, images, keys=None):
        """Augment a uint8 batch; the random draws happen here (from `keys` when given: stateless, one
        stream per image), the transforms in `apply`."""
        # TensorFlow takes seconds to load: only the work that needs it pays for it
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8 or images.shape.rank != 4:
            raise ValueError(f"TFAugmenter takes a uint8 batch [B, H, W, C], got {images.dtype.name} "
                             f"of shape {images.shape}")
        if self.transpose and images.shape[1] is not None and images.shape[1] != images.shape[2]:
            raise ValueError(f"augment.transpose needs square images, got {images.shape[1]}x{images.shape[2]}")
        # Drawn outside the compiled function: XLA would fix the stream of a stateful random op at
        # compile time, and a draw here varies from call to call (and batch to batch in tf.data).
        if keys is None:
            draws = tf.random.uniform([tf.shape(images)[0], DRAWS], seed=self.seed)
        else:
            draws = self.keyed_draws(keys)
        return self.apply(images, draws)

    def keyed_draws(self, keys):
        """float32 [B, DRAWS] uniform in [0, 1): stateless draws, each image's from (seed, its key)."""
        # TensorFlow takes seconds to load: only the work that needs it pays for it
        import tensorflow as tf

        seed = tf.constant(int(self.seed or 0), tf.int64)
        keys = tf.reshape(tf.cast(keys, tf.int64), [-1])
        return tf.map_fn(lambda key: tf.random.stateless_uniform([DRAWS], seed=tf.stack([seed, key])),
                         keys, fn_output_signature=tf.float32)

    def apply(self, images, draws):
        """The transforms for given draws (uniform [B, DRAWS] in [0, 1)): compiled with XLA when
        `jit_compile` (some 3x faster on CPU, where TensorFlow's unfused uint8 selects are slow)."""
        if self._compiled is None:
            # TensorFlow only for the tf backend: `describe` and the other backends never load it here
            import tensorflow as tf

            self._compiled = tf.function(self._transform, jit_compile=self.jit_compile,
                                         reduce_retracing=True)
        return self._compiled(images, draws)

    def _transform(self, images, draws):
        # TensorFlow takes seconds to load: only the work that needs it pays for it
        import tensorflow as tf

        static_shape = images.shape

        def spread(column, limit):  # uniform in [-limit, limit]
            return (2.0 * draws[:, column] - 1.0) * limit

        flips = tf.stack([draws[:, FLIP_LR] < (0.5 if self.flip else 0.0),
                          draws[:, FLIP_UD] < (0.5 if self.flip else 0.0),
                          draws[:, TRANSPOSE] < (0.5 if self.transpose else 0.0)], axis=1)
        if self.affine:
            # One gather pass does the flips and the affine step together (see warp_affine).
            on = draws[:, AFFINE_ON] < self.probability
            size = tf.cast(tf.shape(images)[1:3], tf.float32)
            angle = tf.where(on, spread(ANGLE, self.rotate_limit), 0.0) * (math.pi / 180.0)
            scale = tf.where(on, 1.0 + spread(SCALE, self.scale_limit), 1.0)
            scale_y = tf.where(on, 1.0 + spread(SCALE_Y, self.scale_limit), 1.0)
            shift_x = tf.where(on, spread(SHIFT_X, self.shift_limit), 0.0) * size[1]
            shift_y = tf.where(on, spread(SHIFT_Y, self.shift_limit), 0.0) * size[0]
            out = warp_affine(images, angle, scale, shift_x, shift_y,
                              flips if (self.flip or self.transpose) else None, scale_y=scale_y)
        else:
            if self.flip:
                images = tf.where(flips[:, 0, None, None, None], tf.reverse(images, [2]), images)
                images = tf.where(flips[:, 1, None, None, None], tf.reverse(images, [1]), images)
            if self.transpose:
                images = tf.where(flips[:, 2, None, None, None], tf.transpose(images, [0, 2, 1, 3]), images)
            if not (self.brightness_contrast or self.hue_saturation):
                return images
            out = tf.cast(images, tf.float32)
        if self.brightness_contrast:
            on = draws[:, CONTRAST_ON] < self.probability
            alpha = tf.where(on, 1.0 + spread(CONTRAST, self.contrast_limit), 1.0)[:, None, None, None]
            beta = tf.where(on, 255.0 * spread(BRIGHTNESS, self.brightness_limit), 0.0)[:, None, None, None]
            out = tf.clip_by_value(out * alpha + beta, 0.0, 255.0)
        if self.hue_saturation:
            on = draws[:, HSV_ON] < self.probability
            hue = tf.where(on, spread(HUE, self.hue_shift_limit), 0.0) / 180.0
            saturation = tf.where(on, spread(SATURATION, self.saturation_shift_limit), 0.0) / 255.0
            out = shift_hue_saturation(out, hue, saturation, skip=tf.logical_not(on))
        out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
        return tf.ensure_shape(out, static_shape)


def _reflect101(coordinate, size):
    """Fold a pixel coordinate into [0, size - 1] by mirroring about the edge pixels' centres, as
    OpenCV's BORDER_REFLECT_101 does (… 2 1 | 0 1 2 … n-1 | n-2 …), continuous for bilinear sampling."""
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    period = 2.0 * (size - 1.0)
    folded = tf.math.floormod(coordinate, period)
    return tf.where(folded > size - 1.0, period - folded, folded)


def warp_affine(images, angle, scale, shift_x, shift_y, flips=None, scale_y=None):
    """[B, H, W, C] (any number type) -> float32 [B, H, W, C]: each image flipped/transposed as `flips`
    says (bool [B, 3]: horizontal flip, vertical flip, transpose, in that order; None for none), then
    scaled by `scale` (along x; along y by `scale_y`, or `scale` when None) and rotated by `angle`
    (radians) about its centre, then shifted by (shift_x, shift_y) pixels; bilinear, reflect-101 borders.

    Each output pixel's source is found by the inverse map and read with four gathers, which XLA
    compiles (ImageProjectiveTransform does not). The flips are folded into that map rather than done
    first, so the pixels are read once. Where the map is the identity or a flip (angle 0, scale 1,
    shift 0) the sources are whole pixels and the result is exact.
    """
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    rows = tf.range(h)[None, :, None] - ((h - 1.0) / 2.0 + shift_y[:, None, None])
    cols = tf.range(w)[None, None, :] - ((w - 1.0) / 2.0 + shift_x[:, None, None])
    scale_y = scale if scale_y is None else scale_y
    cos = tf.cos(angle)[:, None, None]
    sin = tf.sin(angle)[:, None, None]
    # Inverse of "scale, rotate by angle, then shift": rotate back by -angle, then divide by the scales.
    source_x = _reflect101((cos * cols + sin * rows) / scale[:, None, None] + (w - 1.0) / 2.0, w)
    source_y = _reflect101((cos * rows - sin * cols) / scale_y[:, None, None] + (h - 1.0) / 2.0, h)
    if flips is not None:
        # Undo the flips in reverse order: the transpose (done last) first, the horizontal flip last.
        transposed = flips[:, 2][:, None, None]
        source_x, source_y = (tf.where(transposed, source_y, source_x),
                              tf.where(transposed, source_x, source_y))
        source_y = tf.where(flips[:, 1][:, None, None], h - 1.0 - source_y, source_y)
        source_x = tf.where(flips[:, 0][:, None, None], w - 1.0 - source_x, source_x)
    x0 = tf.floor(source_x)
    y0 = tf.floor(source_y)
    wx = (source_x - x0)[..., None]
    wy = (source_y - y0)[..., None]
    x0 = tf.cast(x0, tf.int32)
    y0 = tf.cast(y0, tf.int32)
    x1 = tf.minimum(x0 + 1, width - 1)
    y1 = tf.minimum(y0 + 1, height - 1)
    flat = tf.reshape(images, [batch, height * width, channels])

    def gather(y, x):
        pixels = tf.gather(flat, tf.reshape(y * width + x, [batch, -1]), batch_dims=1)
        return tf.cast(tf.reshape(pixels, [batch, height, width, channels]), tf.float32)

    top = gather(y0, x0) * (1.0 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1.0 - wx) + gather(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


def shift_hue_saturation(images, hue, saturation, skip=None):
    """float32 RGB [B, H, W, 3] in 0..255 -> the same with each image's hue turned by `hue` (fraction
    of a turn) and `saturation` added (0..1 scale, clipped); grey pixels (less than half a level of
    chroma, saturation 0 in uint8 HSV) stay grey, as in albumentations. Images where `skip` is true
    come back unchanged (no round-trip error).

    The HSV conversions are written out here rather than taken from tf.image: its hue picks a formula
    by testing `max == r` / `max == g`, which under XLA's fusion can hold for no channel when the
    maximum is recomputed with another rounding, and then returns a wrong hue. Here the formula is
    chosen by comparisons that always choose one, and near ties give near-equal hues.
    """
    # TensorFlow takes seconds to load: only the work that needs it pays for it
    import tensorflow as tf

    r, g, b = tf.unstack(images, axis=-1)
    value = tf.maximum(tf.maximum(r, g), b)
    chroma = value - tf.minimum(tf.minimum(r, g), b)
    coloured = chroma >= 0.5
    inverse_chroma = 1.0 / tf.where(coloured, chroma, 1.0)
    red_max = tf.logical_and(r >= g, r >= b)
    green_max = tf.logical_and(tf.logical_not(red_max), g >= b)
    # hue in sixths of a turn, in [-1, 5), then turned; the wrap into [0, 6) is two selects (a shift
    # is at most half a turn), which is much cheaper than a float modulo on CPU.
    sixths = tf.where(red_max, (g - b) * inverse_chroma,
                      tf.where(green_max, 2.0 + (b - r) * inverse_chroma, 4.0 + (r - g) * inverse_chroma))
    sixths = sixths + 6.0 * hue[:, None, None]
    sixths = tf.where(sixths < 0.0, sixths + 6.0, sixths)
    sixths = tf.where(sixths >= 6.0, sixths - 6.0, sixths)
    sat = chroma / tf.maximum(value, 1e-6)
    sat = tf.where(coloured, tf.clip_by_value(sat + saturation[:, None, None], 0.0, 1.0), 0.0)
    channels = []
    for offset in (5.0, 3.0, 1.0):  # red, green, blue
        k = offset + sixths  # in [1, 11): one select brings it into [0, 6)
        k = tf.where(k >= 6.0, k - 6.0, k)
        channels.append(value * (1.0 - sat * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)))
    out = tf.stack(channels, axis=-1)
    if skip is not None:
        out = tf.where(skip[:, None, None, None], images, out)
    return out
