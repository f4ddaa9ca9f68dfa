"""`python -m melanoma describe --config C [--set ...]`: what a config would train, without training.

A dry run to read before spending a TPU session: the strategy and replicas found on this machine (or
the TF_CONFIG cluster), the Keras library and augmentation backend that would run, the precision, the global batch and the learning rates it gives, the backbone, input size and parameter
count (the model is built with random weights; nothing is downloaded), and whether the pretrained
weights file is already cached. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

from melanoma.core import config as config_lib
from melanoma.core.config import Config
from melanoma.data import record_format
from melanoma.input import augment
from melanoma.train import schedules


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


def describe(config: Config) -> dict:
    """The facts `describe` prints, as a dict."""
    # this module loads TensorFlow: only the work that needs it pays for it
    from melanoma.core import hardware, kerasapi
    # Keras (through TensorFlow) loads only when a model is needed
    from melanoma.core.kerasapi import keras
    # this module loads TensorFlow: only the work that needs it pays for it
    from melanoma.model import network as model_lib

    started = time.time()
    workers = max(1, hardware.cluster_workers())
    # A cluster is described without joining it: its workers are alike, so the replicas are this
    # machine's times the workers.
    strategy = hardware.get_strategy(cluster=False)
    replicas = strategy.num_replicas_in_sync * workers
    precision = hardware.set_precision(config, strategy)
    global_batch = config.train.batch_size * replicas
    try:
        model = model_lib.build_model(config, pretrained=False)
        parameters = model_lib.count_parameters(model)
        trainable = model_lib.count_trainable(model)
    finally:
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")
    rates = schedules.learning_rates(config.train, global_batch)
    facts = {
        "name": config.name,
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
        **model_lib.pretrained_status(config.model.backbone, config.model.weights),
        "head": config.model.head,
        "metadata": bool(config.model.metadata),
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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML in configs/")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                        help="override config keys, e.g. --set train.batch_size=64")


def command(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config, args.set)
    print(json.dumps(describe(config), indent=1))
    return 0
