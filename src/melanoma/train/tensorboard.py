"""TensorBoard beside the CSV histories (`train.tensorboard`, on by default): each fold's scalars in
`<run>/fold<K>/tensorboard/`, as Keras' TensorBoard callback lays them out (`train/` and `validation/`
folders of event files, scalars named `epoch_<metric>`), so `tensorboard --logdir outputs` (`make tensorboard`)
shows every run's folds side by side.

A CNN fold writes through Keras' callback after each epoch: its loss and training metrics, the learning rate,
and the exact validation AUC and loss the fold is judged by. A tree fold writes its history.csv (loss and AUC
after each boosting iteration, as `epoch`). Only the chief of a cluster writes; with the key off nothing is
written at all. A fold trained afresh starts its folder afresh (`fold_state.reset_fold`); a resumed fold adds
to it.

Event files are logs that TensorBoard reads while they grow, so they are not written atomically: a killed
fold's curves simply stop at its last flushed epoch.
"""
from __future__ import annotations

import os

import pandas as pd

from melanoma.core import environment
from melanoma.core.config import Config
from melanoma.core.kerasapi import keras
from melanoma.runs import layout

# the tree family's history columns -> (TensorBoard folder, scalar name), as Keras names a CNN fold's
TREE_SCALARS = {"loss": ("train", "epoch_loss"), "auc": ("train", "epoch_auc"),
                "val_loss": ("validation", "epoch_loss"), "val_auc": ("validation", "epoch_auc")}


def writes(config: Config) -> bool:
    """Whether this process writes TensorBoard files for `config`: the key is on and it is the chief."""
    return bool(config.train.tensorboard) and environment.is_chief()


def log_dir(folder: str) -> str:
    """A fold folder's TensorBoard folder."""
    return os.path.join(folder, layout.TENSORBOARD)


def callback(config: Config, folder: str):
    """Keras' TensorBoard callback for a CNN fold (scalars only: no graph, no histograms, no profile), or
    None when this process writes none. It goes after the validation score in the callbacks, so the
    epoch's val_auc and val_loss are in the logs it writes."""
    if not writes(config):
        return None
    return keras.callbacks.TensorBoard(log_dir=log_dir(folder), histogram_freq=0, write_graph=False,
                                       write_images=False, update_freq="epoch", profile_batch=0)


def write_history(config: Config, folder: str, history: pd.DataFrame) -> None:
    """A tree fold's history (one row per boosting iteration, `epoch` numbering them from 1) as scalars."""
    if not writes(config):
        return
    # tf.summary writes the event files; a tree fold has read its records with TensorFlow already
    import tensorflow as tf

    for split in ("train", "validation"):
        columns = {column: name for column, (where, name) in TREE_SCALARS.items()
                   if where == split and column in history.columns}
        writer = tf.summary.create_file_writer(os.path.join(log_dir(folder), split))
        with writer.as_default():
            for row in history.itertuples(index=False):
                for column, name in columns.items():
                    tf.summary.scalar(name, float(getattr(row, column)), step=int(row.epoch) - 1)
        writer.close()
