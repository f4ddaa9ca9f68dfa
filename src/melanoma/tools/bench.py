"""Throughput of every stage, in images per second: input pipelines, model steps, whole passes, records.

`python -m melanoma bench --config C [--set ...] [--json] [--batches N]`. Every figure is taken after a
warm-up, on the config's data files, or on a small generated dataset when those do not exist (or with
`--synthetic`), so that it runs on a fresh clone. Figures:

- train_pipeline: read, decode, augment, batch, without the model, for each augmentation backend
  (albumentations and opencv: one numpy_function per batch; tf: batched graph ops) and a plain
  per-image tf.image pipeline doing the same kinds of transforms, side by side, each with its CPU cost
  per image (steadier than images/s when other processes share the machine);
- eval_pipeline and tta_pipeline: ordered prediction pipelines without the model;
- model: the training step alone and prediction alone, on a batch already in memory;
- epoch and tta_prediction: a training run of N steps and a whole TTA prediction pass, each with the
  pipeline and model figures it could reach and which of the two limits it;
- records: JPEG resize and TFRecord writing on all cores (one worker process each), per core, and on
  one core;
- scoring: `score`'s OOF AUC with its patient-bootstrap interval on a generated OOF of the competition's
  size (33,126 images of 2,056 patients, 1.76% malignant), 1000 resamples.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf

from melanoma.core import arguments, hardware, io_utils
from melanoma.core import config as config_lib
from melanoma.core.config import Config
from melanoma.core.kerasapi import keras
from melanoma.data import diagnoses, examples, record_format
from melanoma.input import augment, pipeline
from melanoma.model import network as model_lib
from melanoma.model import tta_prediction
from melanoma.tools import synth
from melanoma.train import cnn_training

TRAIN_PARTS = 4
TEST_PARTS = 2


# ---------------------------------------------------------------------------------- synthetic data


def simple_lesion(rng: np.random.Generator, size: int) -> np.ndarray:
    """A lesion-like RGB uint8 image: a dark irregular blob on skin with sensor noise (JPEGs of it
    compress and decode about like dermoscopy photos of the same size)."""
    axis = np.arange(size, dtype=np.float32) / size
    x, y = np.meshgrid(axis, axis)
    skin = np.array([200, 160, 140], np.float32) * np.float32(rng.uniform(0.8, 1.1))
    cx, cy = rng.uniform(0.35, 0.65, 2)
    rx, ry = rng.uniform(0.12, 0.3, 2)
    distance = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    field = cv2.resize(rng.standard_normal((8, 8), dtype=np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    mask = np.clip((1.0 + 0.25 * field - distance) * 4.0, 0.0, 1.0)[..., None]
    lesion = np.array([90, 55, 40], np.float32) * (1.0 + 0.2 * field[..., None])
    image = skin * (1.0 - mask) + lesion * mask
    image += 6.0 * rng.standard_normal(image.shape, dtype=np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _synth_renderer():
    """melanoma.tools.synth's lesion renderer when the package has that module, else None."""
    return getattr(synth, "render_lesion", None)


def _render(task: tuple[int, int, str, bool]) -> None:
    """Write one generated JPEG (seed, size, path, realistic): melanoma.tools.synth's renderer when asked
    for and present, else `simple_lesion` (cheaper, enough for timing decodes and resizes)."""
    seed, size, path, realistic = task
    rng = np.random.default_rng(seed)
    render = _synth_renderer() if realistic else None
    if render is not None:
        image = render(rng, size, bool(rng.random() < 0.1))
    else:
        image = simple_lesion(rng, size)
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    with open(path, "wb") as handle:
        handle.write(data.tobytes())


def write_jpegs(folder: str, count: int, size: int, seed: int, prefix: str,
                realistic: bool = False) -> list[str]:
    """`count` generated JPEGs of size x size in `folder` (in parallel on all cores); their names."""
    os.makedirs(folder, exist_ok=True)
    names = [f"{prefix}_{index:06d}" for index in range(count)]
    tasks = [(seed * 1_000_003 + index, size, os.path.join(folder, f"{name}.jpg"), realistic)
             for index, name in enumerate(names)]
    workers = min(os.cpu_count() or 1, max(1, count // 16))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_render, tasks, chunksize=8)
    else:
        for task in tasks:
            _render(task)
    return names


def _table(names: list[str], parts: int, split: str, seed: int):
    rng = np.random.default_rng(seed)
    count = len(names)
    table = pd.DataFrame({
        "image_name": names,
        "patient_id": np.arange(count) // 8,
        "sex": rng.integers(0, 2, count),
        "age_approx": rng.integers(2, 18, count) * 5,
        "anatom_site_general_challenge": rng.integers(-1, 6, count),
        "part": np.arange(count) * parts // count,
    })
    if split == "train":
        table["target"] = (rng.random(count) < 0.1).astype(np.int64)
        table["diagnosis"] = np.where(table["target"] == 1, 0, 1)  # codes of SYNTHETIC_ENCODINGS
    return table


# What `records` writes beside the files (encodings.json): the diagnosis head reads the names of the codes.
SYNTHETIC_ENCODINGS = {"diagnosis": {"melanoma": 0, "nevus": 1}}


def synthetic_dataset(folder: str, size: int, train_images: int, test_images: int,
                      seed: int = 0) -> tuple[str, str]:
    """Public-schema train and test TFRecords of generated lesions at `size`; (train glob, test glob)."""
    out = os.path.join(folder, "records")
    for split, count, parts in (("train", train_images, TRAIN_PARTS), ("test", test_images, TEST_PARTS)):
        image_dir = os.path.join(folder, "jpeg", split)
        names = write_jpegs(image_dir, count, size, seed + (split == "test"), f"SYN_{split}", realistic=True)
        record_format.write_split(_table(names, min(parts, count), split, seed), image_dir, out, split, size,
                            progress=False)
    io_utils.write_text_atomic(os.path.join(out, "encodings.json"), json.dumps(SYNTHETIC_ENCODINGS))
    return os.path.join(out, "train*.tfrec"), os.path.join(out, "test*.tfrec")


# ------------------------------------------------------------------------------------ measurements


def _batch_images(batch) -> int:
    """Images in a batch of a train pipeline ((inputs, target)) or a prediction pipeline (dict)."""
    if isinstance(batch, dict):
        return int(batch["image_name"].shape[0])
    return int(batch[0]["image"].shape[0])


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


MIN_SECONDS = 2.0


def measure_dataset(dataset, batches: int, warmup: int, min_seconds: float = MIN_SECONDS) -> dict:
    """Images per second over at least `batches` batches and `min_seconds` (whichever ends later),
    after `warmup` batches (the dataset is repeated, so a small dataset never runs out), and the CPU
    milliseconds spent per image meanwhile: on a machine that others share, the wall-clock figure
    moves with their load, the CPU cost much less."""
    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        next(iterator)
    images = count = 0
    cpu_started, started = cpu_seconds(), time.perf_counter()
    while count < batches or time.perf_counter() - started < min_seconds:
        images += _batch_images(next(iterator))
        count += 1
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    return {"images_per_second": images / seconds, "cpu_ms_per_image": 1000.0 * cpu / images,
            "cores_busy": cpu / seconds, "images": images, "batches": count, "seconds": seconds}


def per_image_augmenter(augment_config: Config):
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: the same kinds of transforms as the backends, written the
    plain per-image way with tf.image and ImageProjectiveTransform (as keras' random layers do), mapped
    over images before batching. Only a reference for the benchmark (unseeded: tf.image ops that share
    an op seed would share their draws)."""
    a = augment_config
    probability = float(a.probability)
    affine = bool(a.rotate_limit or a.scale_limit or a.shift_limit)

    def maybe(function, image):
        return tf.cond(tf.random.uniform([]) < probability, lambda: function(image), lambda: image)

    def warp(image):
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        angle = tf.random.uniform([], -a.rotate_limit, a.rotate_limit) * (math.pi / 180.0)
        scale = tf.random.uniform([2], 1.0 - a.scale_limit, 1.0 + a.scale_limit)
        shift = tf.random.uniform([2], -a.shift_limit, a.shift_limit) * size[::-1]
        cos, sin = tf.cos(angle), tf.sin(angle)
        centre_x, centre_y = (size[1] - 1.0) / 2.0, (size[0] - 1.0) / 2.0
        # output (x, y) -> input: remove the shift, rotate back and unscale about the centre
        moved_x, moved_y = centre_x + shift[0], centre_y + shift[1]
        transform = tf.stack([
            cos / scale[0], sin / scale[0], centre_x - (cos * moved_x + sin * moved_y) / scale[0],
            -sin / scale[1], cos / scale[1], centre_y - (cos * moved_y - sin * moved_x) / scale[1],
            0.0, 0.0])[None]
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]

    def colour(image):
        image = tf.image.random_brightness(image, a.brightness_limit)
        return tf.image.random_contrast(image, 1.0 - a.contrast_limit, 1.0 + a.contrast_limit)

    def hue_saturation(image):
        image = tf.image.random_hue(image, a.hue_shift_limit / 180.0)
        return tf.image.random_saturation(image, 1.0 - a.saturation_shift_limit / 255.0,
                                          1.0 + a.saturation_shift_limit / 255.0)

    def augment_image(image):
        if a.flip:
            image = tf.image.random_flip_left_right(image)
            image = tf.image.random_flip_up_down(image)
        if a.transpose:
            image = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.transpose(image, [1, 0, 2]),
                            lambda: image)
        image = tf.cast(image, tf.float32) / 255.0
        if affine and probability:
            image = maybe(warp, image)
        if (a.brightness_limit or a.contrast_limit) and probability:
            image = maybe(colour, image)
        if (a.hue_shift_limit or a.saturation_shift_limit) and probability:
            image = maybe(hue_saturation, image)
        return tf.cast(tf.clip_by_value(tf.round(image * 255.0), 0.0, 255.0), tf.uint8)

    return augment_image


def with_backend(config: Config, backend: str):
    variant = copy.deepcopy(config)
    variant["augment"]["backend"] = backend
    return variant


def pipeline_figures(config: Config, train_paths, test_paths, batches: int, warmup: int,
                     min_seconds: float = MIN_SECONDS) -> dict:
    batch_size = config.train.batch_size
    seed = config.seed
    lookup = diagnoses.source_lookups(config, record_format.list_files(train_paths))
    figures: dict = {"train_pipeline": {}}
    for backend in augment.BACKENDS:
        variant = with_backend(config, backend)
        dataset = pipeline.train_dataset(train_paths, variant, batch_size, seed=seed,
                                         augmenter=augment.make_augmenter(variant.augment, seed=seed),
                                         diagnosis_lookup=lookup)
        figures["train_pipeline"][backend] = measure_dataset(dataset, batches, warmup, min_seconds)
        _progress(f"train pipeline, {backend}", figures["train_pipeline"][backend])
    dataset = pipeline.per_image_train_dataset(train_paths, config, batch_size,
                                               per_image_augmenter(config.augment), seed=seed)
    figures["train_pipeline"]["tf_per_image"] = measure_dataset(dataset, batches, warmup, min_seconds)
    _progress("train pipeline, per-image tf.image", figures["train_pipeline"]["tf_per_image"])
    plain = figures["train_pipeline"]["tf_per_image"]
    for backend in augment.BACKENDS:
        figures["train_pipeline"][backend]["speedup_over_tf_per_image"] = (
            figures["train_pipeline"][backend]["images_per_second"] / plain["images_per_second"])
        figures["train_pipeline"][backend]["cpu_ratio_to_tf_per_image"] = (
            figures["train_pipeline"][backend]["cpu_ms_per_image"] / plain["cpu_ms_per_image"])

    dataset, _ = pipeline.prediction_dataset(train_paths, config, "train", tta_steps=0,
                                             batch_size=config.tta.prediction_batch_size)
    figures["eval_pipeline"] = measure_dataset(dataset, batches, warmup, min_seconds)
    _progress("eval pipeline", figures["eval_pipeline"])
    steps, mode = tta_settings(config)
    augmenter = augment.make_augmenter(config.augment, seed=seed) if mode == "random" else None
    dataset, views = pipeline.prediction_dataset(test_paths, config, "test", tta_steps=steps, tta_mode=mode,
                                                 batch_size=config.tta.prediction_batch_size, augmenter=augmenter)
    tta = measure_dataset(dataset, batches, warmup, min_seconds)
    tta.update(views=views, mode=mode, views_per_second=tta["images_per_second"] * views)
    figures["tta_pipeline"] = tta
    _progress(f"TTA pipeline ({views} {mode} views)", tta)
    return figures


def tta_settings(config: Config) -> tuple[int, str]:
    """The config's TTA, or the 8 dihedral views when it asks for none (so TTA is always measured)."""
    if config.tta.steps:
        return config.tta.steps, config.tta.mode
    return 8, "dihedral"


class _StepTimes:
    """Keras callback: wall time at the end of each training batch."""

    def __new__(cls):
        class StepTimes(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter())

        return StepTimes()


def model_figures(config: Config, strategy, train_paths, test_paths, pipelines: dict, model_batches: int,
                  epoch_steps: int) -> dict:
    """Model figures under the dtype policy already set (hardware.set_precision); the weights are
    random (pretrained=False): speed does not depend on them, and nothing is downloaded."""
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    model = _training_model(config, strategy, global_batch)
    train_ds, in_memory = _train_datasets(config, train_paths, global_batch)

    # The same compiled step as the epoch below (same batch signature), on one batch held in memory.
    train_step = {"images_per_second": _fit_rate(model, global_batch, in_memory, model_batches),
                  "batch_size": global_batch}
    _progress("model train step", train_step)

    predict, steps, mode, views = _prediction_figure(model, config, strategy, test_paths, model_batches)

    # Training as model.fit runs it: the pipeline feeding the same step.
    epoch = {"images_per_second": _fit_rate(model, global_batch, train_ds, epoch_steps), "steps": epoch_steps}
    epoch.update(_limits(pipelines["train_pipeline"][augment.resolve_backend(config.augment.backend)]
                         ["images_per_second"],
                         train_step["images_per_second"], epoch["images_per_second"]))
    _progress("training epoch", epoch)

    whole = _whole_prediction_figure(model, config, strategy, test_paths, steps, mode, views)
    whole.update(_limits(pipelines["tta_pipeline"]["images_per_second"], predict["images_per_second"],
                         whole["images_per_second"]))
    _progress("TTA prediction", whole)
    del model
    keras.backend.clear_session()
    return {"model": {"train_step": train_step, "predict": predict}, "epoch": epoch, "tta_prediction": whole}


def _training_model(config: Config, strategy, global_batch: int):
    """The config's model with random weights, compiled for training on `strategy`."""
    cnn_training.set_seed(config.seed)
    with strategy.scope():
        return cnn_training.compile_model(model_lib.build_model(config, pretrained=False), config, global_batch)


def _train_datasets(config: Config, train_paths, global_batch: int):
    """(the training pipeline, one of its batches repeated from memory)."""
    augmenter = augment.make_augmenter(config.augment, seed=config.seed)
    lookup = diagnoses.source_lookups(config, record_format.list_files(train_paths))
    train_ds = pipeline.train_dataset(train_paths, config, global_batch, seed=config.seed, augmenter=augmenter,
                                      diagnosis_lookup=lookup)
    return train_ds, tf.data.Dataset.from_tensors(next(iter(train_ds))).repeat()


def _fit_rate(model, global_batch: int, dataset, steps: int) -> float:
    """Images per second of `steps` training steps after one warm-up step (which traces and
    compiles on the first call, and fills the pipeline's buffers)."""
    clock = _StepTimes()
    model.fit(dataset, epochs=1, steps_per_epoch=1 + steps, callbacks=[clock], verbose=0, shuffle=False)
    return global_batch * steps / (clock.times[-1] - clock.times[0])


def _prediction_figure(model, config: Config, strategy, test_paths, model_batches: int) -> tuple[dict, int, str, int]:
    """(prediction alone on one batch of TTA views held in memory, TTA steps, TTA mode, views per image)."""
    steps, mode = tta_settings(config)
    tta_augmenter = augment.make_augmenter(config.augment, seed=config.seed) if mode == "random" else None
    predict_ds, views = pipeline.prediction_dataset(
        test_paths, config, "test", tta_steps=steps, tta_mode=mode,
        batch_size=config.tta.prediction_batch_size * hardware.local_replicas(strategy), augmenter=tta_augmenter)
    predict_inputs = next(iter(predict_ds))["inputs"]
    predict_batch = int(predict_inputs["image"].shape[0])
    predictor = tta_prediction.Predictor(model, strategy, predict_batch)  # on every replica, as predict_files
    predictor(predict_inputs)  # traces and compiles
    started = time.perf_counter()
    for _ in range(model_batches):
        predictor(predict_inputs)
    seconds = time.perf_counter() - started
    predict = {"views_per_second": predict_batch * model_batches / seconds, "batch_size": predict_batch}
    predict["images_per_second"] = predict["views_per_second"] / views
    _progress("model prediction", predict)
    return predict, steps, mode, views


def _whole_prediction_figure(model, config: Config, strategy, test_paths, steps: int, mode: str, views: int) -> dict:
    """One pass as a user runs it: pipeline start-up and a retrace for a short last batch included
    (the full batches' prediction function is already compiled by `_prediction_figure`)."""
    test_count = record_format.count_images(record_format.list_files(test_paths))
    config_tta = copy.deepcopy(config)
    config_tta["tta"]["steps"], config_tta["tta"]["mode"] = steps, mode
    started = time.perf_counter()
    tta_prediction.predict_files(model, test_paths, config_tta, "test", progress=False, strategy=strategy)
    seconds = time.perf_counter() - started
    return {"images_per_second": test_count / seconds, "images": test_count, "views": views}


def _limits(pipeline_rate: float, model_rate: float, whole_rate: float) -> dict:
    """Which stage limits a whole run: the slower of pipeline and model (each measured alone)."""
    bound = min(pipeline_rate, model_rate)
    return {"pipeline_images_per_second": pipeline_rate, "model_images_per_second": model_rate,
            "limited_by": "pipeline" if pipeline_rate < model_rate else "model",
            "fraction_of_bound": whole_rate / bound}


def records_figures(folder: str, size: int, images: int, seed: int = 0) -> dict:
    """`records` building (read JPEG, resize to `size`, encode, write) on all cores and on one; the
    source JPEGs are generated at twice the size, so every image is really resized."""
    source = 2 * size
    image_dir = os.path.join(folder, "records_source")
    # A few distinct images, copied under more names: enough work to time, little time to render.
    distinct = write_jpegs(image_dir, min(images, 64), source, seed + 7, "SRC")
    names = [f"SRC_COPY_{index:06d}" for index in range(images)]
    for index, name in enumerate(names):
        shutil.copyfile(os.path.join(image_dir, f"{distinct[index % len(distinct)]}.jpg"),
                        os.path.join(image_dir, f"{name}.jpg"))
    table = _table(names, 1, "train", seed)
    cores = os.cpu_count() or 1
    figures = {"size": size, "source_size": source, "images": images, "workers": cores}
    started = time.perf_counter()
    record_format.write_split(table, image_dir, os.path.join(folder, "records_all"), "train", size,
                        workers=cores, progress=False)
    figures["images_per_second"] = images / (time.perf_counter() - started)
    figures["images_per_second_per_core"] = figures["images_per_second"] / cores
    # One core: no worker pool, and OpenCV's own threads held to one for the while.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        started = time.perf_counter()
        record_format.write_split(table, image_dir, os.path.join(folder, "records_one"), "train", size,
                            workers=1, progress=False)
        figures["one_core_images_per_second"] = images / (time.perf_counter() - started)
    finally:
        cv2.setNumThreads(threads)
    figures["scaling_over_one_core"] = figures["images_per_second"] / figures["one_core_images_per_second"]
    _progress("records", figures)
    return figures


# ------------------------------------------------------------------------------------- the command


def scoring_figures(rows: int = 33126, patients: int = 2056, resamples: int = 1000, seed: int = 0) -> dict:
    """Seconds `score` takes for the OOF AUC and its patient-bootstrap interval on a generated OOF of the
    competition's size (predictions with ties, patients spread over 5 folds)."""
    # scoring loads scikit-learn's metrics: only the figure that measures it pays for them here
    from melanoma.evaluate import scoring

    rng = np.random.default_rng(seed)
    patient = rng.integers(0, patients, rows)
    target = (rng.random(rows) < 0.0176).astype(int)
    frame = pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(rows)],
                          "patient_id": [f"IP_{p:05d}" for p in patient], "target": target,
                          "pred": np.round(np.clip(rng.normal(0.3 + 0.25 * target, 0.2), 0, 1), 4),
                          "fold": patient % 5})
    started = time.perf_counter()
    with warnings.catch_warnings():  # a small --score-rows leaves folds without a melanoma: timed all the same
        warnings.simplefilter("ignore", scoring.ScoreWarning)
        result = scoring.score_oof(frame, bootstrap=resamples, seed=0)
    seconds = time.perf_counter() - started
    _progress("scoring", {"seconds": seconds})
    return {"rows": rows, "patients": patients, "resamples": resamples, "seconds": seconds,
            "auc": result["auc"], "ci95": result["ci95"]}


def machine(config: Config, strategy, precision: str) -> dict:
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "accelerator": hardware.accelerator_name(strategy), "accelerator_names": names,
            "replicas": strategy.num_replicas_in_sync, "precision": precision,
            "mixed_precision_config": bool(config.train.mixed_precision),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default")}


def _progress(label: str, figures: dict) -> None:
    rate = figures.get("images_per_second")
    shown = f"{rate:,.1f} images/s" if rate is not None else ""
    print(f"bench: {label}: {shown} [{time.strftime('%H:%M:%S')}]", file=sys.stderr, flush=True)


def run_bench(config: Config, batches: int = 20, warmup: int = 5, model_batches: int = 2, epoch_steps: int = 2,
              synthetic: bool = False, train_images: int = 512, test_images: int = 32,
              records_images: int = 256, with_model: bool = True, min_seconds: float = MIN_SECONDS,
              score_rows: int = 33126) -> dict:
    """Every figure as one dict (see the module docstring)."""
    started = time.perf_counter()
    strategy = hardware.get_strategy(cluster=False)  # this machine's devices
    precision = hardware.set_precision(config, strategy)
    size = config.data.image_size
    with tempfile.TemporaryDirectory(prefix="melanoma-bench-") as folder:
        have_data = (io_utils.glob(config.data.train_files) and io_utils.glob(config.data.test_files or []))
        if synthetic or not have_data:
            config = copy.deepcopy(config)
            train_glob, test_glob = synthetic_dataset(folder, size, train_images, test_images, seed=config.seed)
            config["data"]["train_files"], config["data"]["test_files"] = train_glob, test_glob
            source = "synthetic"
        else:
            source = "config"
        train_files = record_format.list_files(config.data.train_files, "data.train_files")
        test_files = record_format.list_files(config.data.test_files, "data.test_files")
        train_paths = [f.path for f in train_files]
        test_paths = [f.path for f in test_files]
        result = {
            "machine": machine(config, strategy, precision),
            "settings": {
                "config": config.name, "image_size": size, "record_size": record_size(train_paths[0]),
                "data": source, "train_images": record_format.count_images(train_files),
                "test_images": record_format.count_images(test_files), "batch_size": config.train.batch_size,
                "tta_batch_size": config.tta.prediction_batch_size, "backbone": config.model.backbone,
                "augment_backend": augment.resolve_backend(config.augment.backend),
                "augment_xla": bool(config.augment.xla),
                "cache": bool(config.data.cache), "batches": batches, "min_seconds": min_seconds,
                "warmup_batches": warmup,
                "model_batches": model_batches, "epoch_steps": epoch_steps,
            },
        }
        # records first: its worker processes are forked before the pipelines start TensorFlow's threads
        result["records"] = records_figures(folder, size, records_images, seed=config.seed)
        result["scoring"] = scoring_figures(rows=score_rows)
        result.update(pipeline_figures(config, train_paths, test_paths, batches, warmup, min_seconds))
        if with_model:
            result.update(model_figures(config, strategy, train_paths, test_paths, result, model_batches,
                                        epoch_steps))
    result["seconds"] = time.perf_counter() - started
    return result


def record_size(path: str) -> list[int]:
    """Height and width of the first image of a record file (the records may hold another size than
    data.image_size, and then every image is resized on decoding)."""

    split = "train" if os.path.basename(path).startswith("train") else "test"
    serialized = next(iter(tf.data.TFRecordDataset([path])))
    example = examples.parse_examples(serialized, split)
    return [int(v) for v in tf.io.extract_jpeg_shape(example["image"])[:2]]


def format_figures(result: dict) -> str:
    """The figures as aligned lines, for people."""
    lines = []
    m, s = result["machine"], result["settings"]
    lines.append(f"machine: {m['cpu_count']} CPU(s), {m['accelerator']} {' '.join(m['accelerator_names'])}, "
                 f"precision {m['precision']}, TensorFlow {m['tensorflow']}, "
                 f"TF_ENABLE_ONEDNN_OPTS={m['onednn']}")
    lines.append(f"settings: {s['image_size']} px ({s['data']} data, records {s['record_size'][0]} px), "
                 f"batch {s['batch_size']}, {s['backbone']}, cache {s['cache']}")

    def row(label, rate, note="", unit="images/s"):
        lines.append(f"  {label:<44s} {rate:>10,.1f} {unit:<8s}  {note}".rstrip())

    def cpu(figures):
        return f"{figures['cpu_ms_per_image']:.2f} CPU ms/image"

    train = result["train_pipeline"]
    lines.append("train input pipeline (read, decode, augment, batch; no model):")
    for key, label in (("albumentations", "albumentations, numpy_function per batch"),
                       ("opencv", "opencv, numpy_function per batch"),
                       ("tf", "tf backend, batched graph ops"),
                       ("tf_per_image", "plain per-image tf.image")):
        note = cpu(train[key])
        if "speedup_over_tf_per_image" in train[key]:
            note += (f"; vs per-image tf.image: {train[key]['speedup_over_tf_per_image']:.2f}x the "
                     f"images/s at {train[key]['cpu_ratio_to_tf_per_image']:.2f}x the CPU")
        row(label, train[key]["images_per_second"], note)
    row("eval pipeline", result["eval_pipeline"]["images_per_second"], cpu(result["eval_pipeline"]))
    tta = result["tta_pipeline"]
    row(f"TTA pipeline ({tta['views']} {tta['mode']} views)", tta["images_per_second"],
        f"{cpu(tta)}, {tta['views_per_second']:,.1f} views/s")
    if "model" in result:
        row("model train step (in memory)", result["model"]["train_step"]["images_per_second"])
        predict = result["model"]["predict"]
        row("model prediction (in memory)", predict["views_per_second"],
            f"{predict['images_per_second']:,.1f} images/s at {tta['views']} views", unit="views/s")
        for key, label in (("epoch", f"training ({result['epoch']['steps']} steps)"),
                           ("tta_prediction", "whole TTA prediction")):
            whole = result[key]
            row(label, whole["images_per_second"],
                f"limited by {whole['limited_by']} ({whole['fraction_of_bound']:.0%} of the slower stage)")
    rec = result["records"]
    row(f"records ({rec['source_size']} -> {rec['size']} px, {rec['workers']} workers)",
        rec["images_per_second"], f"{rec['images_per_second_per_core']:,.1f} per core; "
        f"{rec['one_core_images_per_second']:,.1f} on one core ({rec['scaling_over_one_core']:.2f}x)")
    score = result["scoring"]
    lines.append(f"  {'score with ' + str(score['resamples']) + ' patient resamples':<44}"
                 f"{score['seconds']:>10.2f} s  ({score['rows']:,} OOF rows, {score['patients']:,} patients)")
    lines.append(f"({result['seconds']:.0f} s)")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(parser, set_help="override config keys, e.g. --set data.image_size=256")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline figure, at least (20)")
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS,
                        help=f"each pipeline figure runs at least this long ({MIN_SECONDS:g})")
    parser.add_argument("--warmup", type=int, default=5, help="batches run before timing (5)")
    parser.add_argument("--model-batches", type=int, default=2,
                        help="timed batches for the model figures and training steps (2)")
    parser.add_argument("--no-model", action="store_true", help="pipelines and records only")
    parser.add_argument("--synthetic", action="store_true",
                        help="generate a temporary dataset even when the config's data files exist")
    parser.add_argument("--train-images", type=int, default=512, help="generated train images (512)")
    parser.add_argument("--test-images", type=int, default=32, help="generated test images (32)")
    parser.add_argument("--records-images", type=int, default=256, help="JPEGs for the records figure (256)")
    parser.add_argument("--score-rows", type=int, default=33126,
                        help="rows of the generated OOF that `score` bootstraps (33126, the competition's)")


def command(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config, args.set)
    for name in ("batches", "model_batches", "train_images", "test_images", "records_images", "score_rows"):
        if getattr(args, name) < 1:
            raise config_lib.ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.min_seconds < 0:
        raise config_lib.ConfigError("--warmup and --min-seconds must be 0 or more")
    result = run_bench(config, batches=args.batches, warmup=args.warmup, model_batches=args.model_batches,
                       epoch_steps=args.model_batches, synthetic=args.synthetic,
                       train_images=args.train_images, test_images=args.test_images,
                       records_images=args.records_images, with_model=not args.no_model,
                       min_seconds=args.min_seconds, score_rows=args.score_rows)
    text = json.dumps(result, indent=1)
    if args.out:
        io_utils.write_text_atomic(args.out, text + "\n")
    print(text if args.json else format_figures(result))
    return 0
