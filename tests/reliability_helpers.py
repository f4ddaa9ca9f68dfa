"""Helpers of the reliability tests: a tiny stand-in model, damaged TFRecords, training hooks.

The reliability logic (checkpoints, resume, NaN guard, corrupt data) does not depend on the backbone,
and tracing EfficientNet's training step takes a minute on a small CPU, so these tests swap in a
one-convolution model with the same inputs and output.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def build_tiny_model(config, pretrained: bool = True):
    from melanoma.core.kerasapi import keras

    size = config.data.image_size
    image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    features = keras.layers.Rescaling(1.0 / 255.0)(image)
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(features)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="target")(features)
    return keras.Model({"image": image}, output, name="tiny")


def build_tiny_normalised_model(config, pretrained: bool = True):
    """The tiny model with a batch-norm layer: replicas keep moving statistics of their own, which
    the distributed tests need to see handled."""
    from melanoma.core.kerasapi import keras

    size = config.data.image_size
    image = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    features = keras.layers.Rescaling(1.0 / 255.0)(image)
    features = keras.layers.Conv2D(4, 3, strides=2, name="conv")(features)
    features = keras.layers.BatchNormalization(momentum=0.5, name="norm")(features)
    features = keras.layers.Activation("relu")(features)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="target")(features)
    return keras.Model({"image": image}, output, name="tiny_norm")


def install_tiny_model(monkeypatch=None) -> None:
    from melanoma.model import network as model

    if monkeypatch is None:
        model.build_model = build_tiny_model
    else:
        monkeypatch.setattr(model, "build_model", build_tiny_model)


def add_callback(make_callback, monkeypatch=None) -> None:
    """Put one more callback first in the fold's callbacks (make_callback() builds it)."""
    from melanoma.train import cnn_training

    original = cnn_training.make_callbacks

    def patched(*args, **kwargs):
        callbacks, guard, checkpoint = original(*args, **kwargs)
        return [make_callback()] + callbacks, guard, checkpoint

    if monkeypatch is None:
        cnn_training.make_callbacks = patched
    else:
        monkeypatch.setattr(cnn_training, "make_callbacks", patched)


def stall_callback(epoch: int, batch: int, marker: str):
    """A callback that, at (0-based) `epoch` and `batch`, writes `marker` and waits to be killed."""
    import keras

    class Stall(keras.callbacks.Callback):
        def on_epoch_begin(self, current, logs=None):
            self.epoch = current

        def on_train_batch_begin(self, current, logs=None):
            if self.epoch == epoch and current == batch:
                Path(marker).write_text(f"{os.getpid()}\n")
                time.sleep(600)

    return Stall()


def pause_callback(epoch: int, batch: int, marker: str, release: str):
    """A callback that, at (0-based) `epoch` and `batch`, writes `marker` and waits until `release` exists."""
    import keras

    class Pause(keras.callbacks.Callback):
        def on_epoch_begin(self, current, logs=None):
            self.epoch = current

        def on_train_batch_begin(self, current, logs=None):
            if self.epoch == epoch and current == batch:
                Path(marker).write_text(f"{os.getpid()}\n")
                deadline = time.time() + 600
                while not Path(release).exists() and time.time() < deadline:
                    time.sleep(0.1)

    return Pause()


def kill_after_state(epoch: int) -> None:
    """kill -9 this process right after state.json has committed `epoch` (before history.csv follows)."""
    import signal

    from melanoma.runs import fold_state

    original = fold_state.write_state

    def write_then_die(folder, state):
        original(folder, state)
        if state["epoch"] == epoch and not state.get("pending_best"):
            os.kill(os.getpid(), signal.SIGKILL)

    fold_state.write_state = write_then_die


def script_command(script: str, args: list, setup: str = "") -> list[str]:
    """`python <script> ARGS` (train.py, infer.py) as the real entry point, with the tiny model and the
    Python statements of `setup` run first (with reliability_helpers imported as `h`)."""
    bootstrap = (
        "import runpy, sys\n"
        f"sys.path[:0] = [{str(REPO / 'src')!r}, {str(TESTS)!r}]\n"
        "import reliability_helpers as h\n"
        "h.install_tiny_model()\n"
        + setup +
        f"sys.argv = [{script!r}] + {[str(a) for a in args]!r}\n"
        f"runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", bootstrap]


def train_script_command(config: Path, fold: int, stall_epoch: int, stall_batch: int, marker: Path) -> list[str]:
    """`python train.py --config C --fold K`, run as the real entry point, with the tiny model and a
    callback that stops in the middle of an epoch until the process is killed."""
    bootstrap = (
        "import runpy, sys\n"
        f"sys.path[:0] = [{str(REPO / 'src')!r}, {str(TESTS)!r}]\n"
        "import reliability_helpers as h\n"
        "h.install_tiny_model()\n"
        f"h.add_callback(lambda: h.stall_callback({stall_epoch}, {stall_batch}, {str(marker)!r}))\n"
        f"sys.argv = ['train.py', '--config', {str(config)!r}, '--fold', '{fold}']\n"
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", bootstrap]


def entry_command(script: str, args: list[str], audit_dir: Path | None = None,
                  audit_log: Path | None = None) -> list[str]:
    """`python train.py ARGS` (or infer.py), run as the real entry point with the tiny batch-norm model.

    With `audit_dir`, every file or folder the process creates, opens for writing, renames or copies
    under that folder is logged to `audit_log` (Python's audit hooks see each such call), which shows
    whether a process wrote there at all."""
    audit = ""
    if audit_dir is not None:
        audit = (
            "import os\n"
            f"watched, log = {str(audit_dir)!r} + os.sep, {str(audit_log)!r}\n"
            "def hook(event, args):\n"
            "    if event not in ('open', 'os.rename', 'os.replace', 'os.mkdir', 'shutil.copyfile', 'os.remove'):\n"
            "        return\n"
            "    if event == 'open' and not (isinstance(args[1], str) and set(args[1]) & set('wax+')) \\\n"
            "            and not (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):\n"
            "        return\n"
            "    named = args[:2] if event in ('os.rename', 'os.replace', 'shutil.copyfile') else args[:1]\n"
            "    paths = [os.fsdecode(a) for a in named if isinstance(a, (str, bytes, os.PathLike))]\n"
            "    for path in paths:\n"
            "        if os.path.abspath(path).startswith(watched):\n"
            "            with open(log, 'a') as handle:\n"
            "                handle.write(f'{event} {path}\\n')\n"
            "sys.addaudithook(hook)\n")
    bootstrap = (
        "import runpy, sys\n"
        f"sys.path[:0] = [{str(REPO / 'src')!r}, {str(TESTS)!r}]\n"
        + audit +
        "import reliability_helpers as h\n"
        "from melanoma.model import network as model\n"
        "model.build_model = h.build_tiny_normalised_model\n"
        f"sys.argv = [{script!r}] + {[str(a) for a in args]!r}\n"
        f"runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", bootstrap]


# --- damaged records ------------------------------------------------------------------------------


def read_records(path) -> list[bytes]:
    import tensorflow as tf

    return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


def read_table_names(paths) -> list[str]:
    """image_name of every record in the files, in order."""
    return [image_name(record) for path in paths for record in read_records(path)]


def write_records(path, serialized: list[bytes]) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)


def image_name(serialized: bytes) -> str:
    import tensorflow as tf

    return tf.train.Example.FromString(serialized).features.feature["image_name"].bytes_list.value[0].decode()


def with_feature(serialized: bytes, key: str, value: bytes | None) -> bytes:
    """The record with bytes feature `key` set to `value`, or removed when `value` is None."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    if value is None:
        del example.features.feature[key]
    else:
        example.features.feature[key].bytes_list.value[:] = [value]
    return example.SerializeToString()


def truncate(path, cut: int) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - cut])


def copy_records(source: Path, target: Path, split: str = "train") -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.glob(f"{split}*.tfrec")):
        shutil.copy(path, target / path.name)
        copied.append(target / path.name)
    return copied


# --- TensorBoard ----------------------------------------------------------------------------------


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the event files under `folder`, as TensorBoard reads them:
    {'<subfolder>/<tag>': {step: value}} (e.g. 'validation/epoch_auc')."""
    import tensorflow as tf

    found: dict[str, dict[int, float]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        where = path.parent.relative_to(folder).as_posix()
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                found.setdefault(f"{where}/{value.tag}", {})[int(event.step)] = number
    return found
