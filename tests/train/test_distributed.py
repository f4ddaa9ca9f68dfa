"""Every device count: several replicas (MELANOMA_CPU_DEVICES) and a real multi-worker cluster on
localhost (TF_CONFIG), run as the user runs them, in processes of their own (devices are split, and a
cluster joined, before TensorFlow starts; the test process has started already).

They train a tiny model with a batch-norm layer (reliability_helpers), so what they check is the
distribution, not EfficientNet: rows matched by name, nothing lost or repeated when a batch does not
divide by the replicas, replicas predicting what the checkpoint holds, and only the chief writing.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import reliability_helpers as helpers
from conftest import write_config

from melanoma.data import record_format

# 74 validation images (fold 0 of the tiny data) with 2 dihedral views in host batches of 16 images
# per replica: the last batch holds 10 images, which does not fill the replicas' share.
BODY = """\
    train:
      epochs: 2
      steps_per_epoch: 2
      batch_size: 4
    tta:
      steps: 2
      mode: dihedral
      prediction_batch_size: 16
    """


def environment(**extra) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CONFIG", "MELANOMA_CPU_DEVICES", "TF_USE_LEGACY_KERAS")}
    env.update({"NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run(command, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=timeout)


def validation_paths(config) -> list[str]:
    pass

    files = record_format.list_files(config.data.train_files, "data.train_files")
    return [f.path for f in record_format.split_folds(files, 0, config.data.folds)[1]]


def test_two_replicas_train_predict_and_agree_with_one(tiny_data, tmp_path):
    from melanoma.core import config as config_lib
    from melanoma.core.kerasapi import keras
    from melanoma.model import tta_prediction

    path = write_config(tmp_path, tiny_data, BODY)
    env = environment(MELANOMA_CPU_DEVICES="2")
    trained = run(helpers.entry_command("train.py", ["--config", path, "--fold", "0"]), env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "2 replica(s) (MirroredStrategy)" in trained.stdout
    inferred = run(helpers.entry_command("infer.py", ["--config", path, "--allow-partial"]), env)
    assert inferred.returncode == 0, inferred.stdout + inferred.stderr

    fold = tmp_path / "outputs" / "tiny" / "fold0"
    oof = pd.read_csv(fold / "oof.csv")
    names = helpers.read_table_names(validation_paths(config_lib.load_config(path)))
    assert len(oof) == len(names) == 74 and sorted(oof["image_name"]) == sorted(names)
    history = pd.read_csv(fold / "history.csv")
    assert len(history) == 2 and history["val_auc"].notna().all()

    sample = pd.read_csv(tiny_data["sample_submission"])
    submission = pd.read_csv(tmp_path / "submissions" / "tiny-folds0.csv")  # fold 0 of 2
    assert list(submission["image_name"]) == list(sample["image_name"])
    assert submission["target"].between(0, 1).all()
    test = pd.read_csv(fold / "test.csv")
    assert sorted(test["image_name"]) == sorted(sample["image_name"])

    # The same checkpoint on one replica (this process: the default strategy) predicts the same OOF.
    config = config_lib.load_config(path)
    model = helpers.build_tiny_normalised_model(config)
    model.load_weights(fold / "model.keras")
    single = tta_prediction.predict_files(model, validation_paths(config), config, "train", progress=False)
    merged = oof.merge(single, on="image_name", suffixes=("_two", "_one"))
    assert len(merged) == 74
    np.testing.assert_allclose(merged["pred_two"], merged["pred_one"], atol=1e-5, rtol=0)
    keras.backend.clear_session()


def test_predictor_pads_splits_and_unpads_across_replicas():
    """Rows that do not divide by the replicas come back once each, in order (in-process check of the
    padding arithmetic on the default strategy, which the subprocess tests run on two replicas)."""
    import tensorflow as tf

    from melanoma.core.kerasapi import keras
    from melanoma.model import tta_prediction

    inputs = keras.Input(shape=(3,), name="x")
    model = keras.Model({"x": inputs}, keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(inputs))
    predictor = tta_prediction.Predictor(model, tf.distribute.get_strategy(), rows=8)
    values = np.arange(15, dtype="float32").reshape(5, 3)
    np.testing.assert_allclose(predictor({"x": tf.constant(values)})[:, 0], values.sum(axis=1))
    with pytest.raises(ValueError, match="larger than"):
        predictor({"x": tf.zeros([9, 3])})


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("localhost", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def test_two_worker_cluster_trains_a_fold_and_only_the_chief_writes(tiny_data, tmp_path):
    path = write_config(tmp_path, tiny_data, BODY)
    outputs = tmp_path / "outputs"
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    audit = tmp_path / "worker1-writes.log"
    processes = []
    for index in range(2):
        env = environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = helpers.entry_command("train.py", ["--config", path, "--fold", "0"],
                                        audit_dir=outputs if index == 1 else None, audit_log=audit)
        log = open(tmp_path / f"worker{index}.txt", "w")
        processes.append((subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT), log))
    codes = []
    for process, log in processes:
        try:
            codes.append(process.wait(timeout=600))
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [(tmp_path / f"worker{index}.txt").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(logs)

    # tf_keras trains the cluster, two replicas in sync, each worker on its own half of the records
    for index, text in enumerate(logs):
        assert "2 replica(s) (MultiWorkerMirroredStrategy)" in text and "tf_keras" in text, \
            [line for line in text.splitlines() if "replica" in line]
        assert f"worker {index} of 2 reads every 2th training record" in text, text
    # the run's files are complete, written by the chief
    fold = outputs / "tiny" / "fold0"
    for name in ("model.keras", "last.keras", "history.csv", "oof.csv", "state.json", "data.json"):
        assert (fold / name).is_file(), name
    assert (outputs / "tiny" / "config.yaml").is_file()
    # tf_keras' TensorBoard callback on the chief wrote the fold's curves (the other worker has none:
    # test_tensorboard.py); they hold the epochs history.csv holds
    scalars = helpers.read_scalars(fold / "tensorboard")
    assert sorted(scalars["validation/epoch_auc"]) == [0, 1], sorted(scalars)
    assert not [p for p in fold.iterdir() if p.name.startswith(".")]
    assert len(pd.read_csv(fold / "oof.csv")) == 74
    assert "cluster; the chief writes the run's files" in logs[1]
    # the other worker wrote nothing under output_dir (its audit log names every write there)
    assert not audit.exists() or audit.read_text() == "", audit.read_text()
    # both ended with the same result
    summaries = [[line.rsplit(",", 1)[0] for line in text.splitlines() if line.startswith("fold 0: best epoch")]
                 for text in logs]  # "fold 0: best epoch E, OOF AUC A (N images, TTA V)" without the time
    assert summaries[0] and summaries[0] == summaries[1], summaries

    # the checkpoint a tf_keras cluster wrote is predicted by Keras 3 on one machine alike: the validation
    # images' predictions equal the OOF the cluster wrote
    from melanoma.core import config as config_lib
    from melanoma.core.kerasapi import keras
    from melanoma.model import tta_prediction

    config = config_lib.load_config(path)
    model = helpers.build_tiny_normalised_model(config)
    model.load_weights(fold / "model.keras")
    single = tta_prediction.predict_files(model, validation_paths(config), config, "train", progress=False)
    merged = pd.read_csv(fold / "oof.csv").merge(single, on="image_name", suffixes=("_cluster", "_one"))
    assert len(merged) == 74
    np.testing.assert_allclose(merged["pred_cluster"], merged["pred_one"], atol=1e-5, rtol=0)
    keras.backend.clear_session()


def test_workers_that_do_not_share_the_chiefs_output_dir_stop_before_training(tiny_data, tmp_path):
    """Each worker of a localhost cluster given its own output_dir: none of them trains; every one exits 2,
    the worker naming the folder it sees, the chief saying a worker does not see its own."""
    path = write_config(tmp_path, tiny_data, BODY)
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = helpers.entry_command("train.py", ["--config", path, "--fold", "0", "--set",
                                                     f"output_dir={tmp_path / f'outputs-{index}'}"])
        log = open(tmp_path / f"worker{index}.txt", "w")
        processes.append((subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT), log))
    codes = []
    for process, log in processes:
        try:
            codes.append(process.wait(timeout=300))
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [(tmp_path / f"worker{index}.txt").read_text() for index in range(2)]
    assert codes == [2, 2], "\n\n".join(logs)
    assert f"worker 1 of the cluster does not see the chief's output_dir: {tmp_path / 'outputs-1' / 'tiny'}" in logs[1]
    assert "a worker of the cluster does not see this output_dir" in logs[0]
    assert not any("Traceback" in text for text in logs), logs
    assert not (tmp_path / "outputs-0" / "tiny" / "fold0" / "oof.csv").exists()
    assert not (tmp_path / "outputs-0" / "tiny" / ".lock").exists()  # released on the way out


def test_describe_reports_the_replicas_strategy_keras_and_augmentation_actually_chosen():
    done = run([sys.executable, "-m", "melanoma", "describe", "--config", "configs/demo.yaml"],
               environment(MELANOMA_CPU_DEVICES="2"))
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["replicas"] == 2 and facts["strategy"] == "MirroredStrategy" and facts["workers"] == 1
    assert facts["global_batch_size"] == 2 * facts["batch_size_per_replica"]
    assert facts["augment_backend"] == "opencv"  # auto on a CPU
    assert facts["keras"].startswith("keras 3")
    bad = run([sys.executable, "-m", "melanoma", "describe", "--config", "configs/demo.yaml"],
              environment(MELANOMA_CPU_DEVICES="two"))
    assert bad.returncode == 2 and "MELANOMA_CPU_DEVICES must be a positive number" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_auto_augmentation_is_the_graph_backend_on_a_tpu_and_opencv_elsewhere(monkeypatch):
    from melanoma.core import hardware
    from melanoma.input import augment

    assert augment.resolve_backend("auto") == "opencv"
    assert augment.resolve_backend("albumentations") == "albumentations"
    monkeypatch.setattr(hardware, "accelerator_name", lambda strategy: "tpu")
    assert augment.resolve_backend("auto") == "tf"
    assert isinstance(augment.make_augmenter(augment_config("auto")), augment.TFAugmenter)


def augment_config(backend):
    from melanoma.core import config as config_lib

    return config_lib.load_config(str(helpers.REPO / "configs" / "demo.yaml"), [f"augment.backend={backend}"]).augment


def test_each_worker_reads_its_own_shard_of_every_file(tiny_data):
    """Two workers' record streams are disjoint and together hold every record once."""
    from melanoma.input import pipeline

    paths = sorted(str(p) for p in tiny_data["records"].glob("train*.tfrec"))
    names = []
    for index in range(2):
        dataset = pipeline._read(paths, ordered=False, seed=1, shard=(2, index))
        names.append([helpers.image_name(record.numpy()) for record in dataset])
    everything = helpers.read_table_names(paths)
    assert not set(names[0]) & set(names[1])
    assert sorted(names[0] + names[1]) == sorted(everything)
    assert abs(len(names[0]) - len(names[1])) <= len(paths)


def test_steps_per_execution_reaches_the_compiled_model(tiny_data, tmp_path):
    from melanoma.core import config as config_lib
    from melanoma.train import cnn_training

    config = config_lib.load_config(str(write_config(tmp_path, tiny_data)), ["train.steps_per_execution=4"])
    model = cnn_training.compile_model(helpers.build_tiny_model(config), config, global_batch=8)
    assert int(model.steps_per_execution) == 4
    with pytest.raises(config_lib.ConfigError, match="steps_per_execution"):
        config_lib.load_config(str(write_config(tmp_path, tiny_data)), ["train.steps_per_execution=0"])


def test_every_module_takes_keras_from_kerasapi():
    """One Keras per process: a module importing `keras` itself would hand Keras 3 objects to a
    cluster's tf_keras model (kerasapi chooses)."""
    import re

    offenders = []
    for path in sorted((helpers.REPO / "src" / "melanoma").rglob("*.py")):
        if path.name == "kerasapi.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(import keras\b|from keras\b)", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders
