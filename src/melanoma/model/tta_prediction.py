"""Predictions with test-time augmentation, shared by training (OOF) and inference (test).

Each batch carries its images' names, so predictions are matched to images by name. With V views per
image, the model sees V x B images and the V predictions of each image are averaged.

Prediction runs on every replica of the strategy the model was built under (`Predictor`): each host
batch is padded to one fixed size that divides by the replicas (static shapes, as TPUs need), split
across the replicas, and the padding is cut off again, so no row is lost, repeated or padded into the
output. On a multi-worker cluster every worker predicts every image (prediction is a small part of
the work, and each worker then holds the same validation score to choose its checkpoint by).
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import pandas as pd
import tensorflow as tf

from melanoma.core import hardware
from melanoma.core import progress as progress_lib
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, DataError
from melanoma.data import integrity, taxonomy
from melanoma.input import augment, pipeline
from melanoma.model import network as model_lib


def tta_augmenter(config: Config, seed: int):
    if config.tta.steps and config.tta.mode == "random":
        return augment.make_augmenter(config.augment, seed=seed)
    return None


def _distributed(variable):
    """The tf.distribute variable behind a Keras variable (Keras 3 wraps it; tf_keras does not)."""
    inner = getattr(variable, "value", None)
    return inner if isinstance(inner, tf.Variable) else variable


def sync_replicas(model, strategy) -> None:
    """Give every replica the non-trainable weights a checkpoint holds (batch-norm moving statistics).

    Trainable weights stay equal on all replicas (gradients are all-reduced), but each replica updates
    its moving statistics from its own part of the batch: Keras 3 keeps them per replica, tf_keras
    averages them only when read. Read outside a replica (what `save` does) they give the values a
    checkpoint holds; writing those back makes every replica predict exactly what the checkpoint will.
    On a cluster every worker must call this at the same point (the read is a collective operation).
    """
    if strategy.num_replicas_in_sync <= 1:
        return
    with strategy.scope():
        for weight in model.non_trainable_weights:
            variable = _distributed(weight)
            variable.assign(variable.read_value())


_PREDICTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Predictor:
    """The model's inference step on every replica of `strategy` for host batches of up to `rows` rows.

    Each call pads the batch to a fixed size (a multiple of this machine's replicas), gives each local
    replica its slice, runs the model on them at once and returns the unpadded rows in order.
    """

    def __init__(self, model, strategy, rows: int):
        self.strategy = strategy
        self.local = hardware.local_replicas(strategy)
        self.per_replica = max(1, math.ceil(rows / self.local))
        self.rows = self.per_replica * self.local

        network = weakref.ref(model)  # the cache below must not keep a finished fold's model alive

        @tf.function
        def step(inputs):
            return strategy.run(lambda values: network()(values, training=False), args=(inputs,))

        self._step = step

    @classmethod
    def cached(cls, model, strategy, rows: int) -> "Predictor":
        """The model's predictor for this strategy and batch size, built (and traced) once: the
        per-epoch validation then reuses the compiled step instead of tracing the model every epoch."""
        per_model = _PREDICTORS.setdefault(model, {})
        key = (id(strategy), rows)
        if key not in per_model:
            per_model[key] = cls(model, strategy, rows)
        return per_model[key]

    def _slices(self, inputs: dict):
        local, size = self.local, self.per_replica

        def value(context):
            start = (context.replica_id_in_sync_group % local) * size
            return {key: tensor[start:start + size] for key, tensor in inputs.items()}

        return self.strategy.experimental_distribute_values_from_function(value)

    def __call__(self, inputs: dict) -> np.ndarray:
        count = int(next(iter(inputs.values())).shape[0])
        if count > self.rows:
            raise ValueError(f"a batch of {count} rows is larger than the predictor's {self.rows}")
        padded = {key: tf.pad(tensor, [[0, self.rows - count]] + [[0, 0]] * (len(tensor.shape) - 1))
                  for key, tensor in inputs.items()}
        outputs = self.strategy.experimental_local_results(self._step(self._slices(padded)))
        return np.concatenate([np.asarray(output) for output in outputs])[:count]


def predict_files(model, paths: list[str], config: Config, split: str, count: int | None = None,
                  desc: str = "predict", seed: int | None = None, tta: bool = True,
                  progress: bool = True, strategy=None) -> pd.DataFrame:
    """image_name, pred (+ patient_id, target, diagnosis code for train records), one row per record, in
    file order. The diagnosis head adds each class's probability as `p_<CLASS>` (pred is p_MEL).

    `strategy` is the one the model was built under (default: this machine's); tta.prediction_batch_size is per
    replica. tta=False predicts the plain images whatever the config's tta section says (per-epoch
    validation). A bad record is a DataError naming its file and image; train records are skipped
    instead under data.skip_corrupt (test records never are). `count`, when given, is checked against
    the rows.
    """
    seed = config.seed if seed is None else seed
    strategy = strategy or hardware.get_strategy()
    steps = config.tta.steps if tta else 0
    skip = bool(config.data.skip_corrupt) and split == "train"
    batch_size = config.tta.prediction_batch_size * hardware.local_replicas(strategy)
    dataset, views = pipeline.prediction_dataset(
        paths, config, split, tta_steps=steps, tta_mode=config.tta.mode,
        batch_size=batch_size, augmenter=tta_augmenter(config, seed) if steps else None,
        skip_corrupt=skip)

    network, classes = model_lib.prediction_head(model)
    predictor = Predictor.cached(network, strategy, max(1, batch_size // views) * views)
    names, preds, extras = [], [], {"target": [], "patient_id": [], "diagnosis": []}
    hint = integrity.HINT_TRAIN if split == "train" else integrity.HINT_PREDICT
    with integrity.named_data_errors(paths, split, config.data.image_size, desc, hint), \
            progress_lib.bar(total=count, desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for batch in dataset:
            output = np.asarray(predictor(batch["inputs"]), dtype=np.float64)
            per_image = output.reshape(-1, views, output.shape[-1]).mean(axis=1)  # [images, columns]
            names.extend(n.decode() for n in batch["image_name"].numpy())
            preds.append(per_image)
            for key in extras:
                if key in batch:
                    extras[key].append(batch[key].numpy())
            bar.update(len(per_image))
    width = len(classes) if classes else 1
    table = np.concatenate(preds) if preds else np.zeros((0, width), dtype=np.float64)
    melanoma = classes.index("MEL") if classes else 0
    frame = pd.DataFrame({"image_name": names, "pred": table[:, melanoma]})
    for index, cls in enumerate(classes or ()):
        frame[f"{taxonomy.CLASS_PREFIX}{cls}"] = table[:, index]
    for key, values in extras.items():
        if values:
            frame[key] = np.concatenate(values)
    if count is not None and len(frame) != count:
        # A file cut at a record boundary reads without an error; only the count shows it.
        scans = integrity.scan_files(paths, split, config.data.image_size)
        integrity.raise_if_bad(scans, desc, hint)
        raise DataError(f"{desc}: {len(frame)} images predicted but the file names promise {count}")
    if not np.all(np.isfinite(frame["pred"])):
        bad = frame.loc[~np.isfinite(frame["pred"]), "image_name"].head(3).tolist()
        raise CheckFailed(f"non-finite predictions for {bad}: the model's weights are broken")
    return frame
