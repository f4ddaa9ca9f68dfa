"""A fold's Keras callbacks: exact validation score, NaN guard, and the commit of each epoch (best
checkpoint, resumable state, then the history that describes it)."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from melanoma.core import io_utils, metrics
from melanoma.core.config import Config
from melanoma.core.kerasapi import keras
from melanoma.data import validation_weights
from melanoma.model import tta_prediction
from melanoma.runs import fold_state, layout
from melanoma.train import schedules

# train.checkpoint -> (the logs key it follows, "max" or "min"); None: no metric decides
MONITOR = {"best_auc": ("val_auc", "max"), "best_loss": ("val_loss", "min"), "last": (None, None),
           "epoch": (None, None), "best_pauc_tpr80": ("val_pauc_tpr80", "max")}


class NanGuard(keras.callbacks.Callback):
    """Stops at the end of an epoch whose loss or weights are not finite, before any checkpoint
    or validation sees the broken weights.

    It looks once per epoch, not after every batch: reading the loss after each batch would make
    the accelerator wait for the host at every step (and defeat train.steps_per_execution). The
    epoch's loss is the mean over its batches, so one non-finite batch shows in it.
    """

    def __init__(self):
        super().__init__()
        self.failure = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failure = f"loss became {float(loss)} at epoch {epoch + 1}"
        # Weights can turn non-finite in an epoch's last step, after the last loss was taken.
        elif not all(np.all(np.isfinite(np.asarray(w))) for w in self.model.trainable_weights):
            self.failure = f"the weights became non-finite in epoch {epoch + 1}"
        if self.failure:
            self.model.stop_training = True


class ValidationScore(keras.callbacks.Callback):
    """Scores each epoch (val_loss, val_auc, val_pauc_tpr80) and keeps its plain predictions in val_epochs.csv
    (see `selection`). Under validation_weights.file the loss and AUC weigh each image by its test-likeness
    (data/validation_weights.py)."""

    def __init__(self, config: Config, folder: str, valid_paths: list[str], valid_dropped: frozenset,
                 state: dict | None, guard: NanGuard, strategy):
        super().__init__()
        self.config, self.folder, self.guard, self.strategy = config, folder, guard, strategy
        self.valid_paths, self.valid_dropped = valid_paths, valid_dropped
        self.epochs = [fold_state.val_epoch_rows(folder, state["epoch"])] if state else []
        self.likeness = validation_weights.likeness(config)  # validation_weights.file, None when off

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.guard.failure:
            return
        tta_prediction.sync_replicas(self.model, self.strategy)  # predict what the checkpoint will hold
        frame = tta_prediction.predict_files(self.model, self.valid_paths, self.config, "train", tta=False,
                                         progress=False, strategy=self.strategy)
        frame = frame[~frame["image_name"].isin(self.valid_dropped)]  # duplicates (sources.py)
        target = frame["target"].to_numpy(dtype=np.float64)
        weight = validation_weights.fold_weights(self.config, frame["image_name"], self.likeness)  # None: off
        logs["val_loss"] = metrics.binary_log_loss(target, frame["pred"].to_numpy(), weight)
        logs["val_auc"] = metrics.auc(target, frame["pred"], weight)
        logs["val_pauc_tpr80"] = metrics.partial_auc_above_tpr(target, frame["pred"])  # ISIC 2024's metric
        self.epochs.append(pd.DataFrame({"image_name": frame["image_name"].to_numpy(), "epoch": epoch + 1,
                                         "pred": frame["pred"].to_numpy()}))
        io_utils.write_csv_atomic(pd.concat(self.epochs, ignore_index=True),
                                  os.path.join(self.folder, layout.VAL_EPOCHS))


class Checkpoint(keras.callbacks.Callback):
    """Best checkpoint, the resumable state and the history, committed in the order `fold_state` relies on:
    last.keras and the best checkpoint (under a temporary name), state.json with the epoch's history rows,
    the best checkpoint renamed into place, then history.csv, which describes what state.json committed."""

    def __init__(self, config: Config, folder: str, state: dict | None, guard: NanGuard, history: "History"):
        super().__init__()
        self.config, self.folder, self.guard, self.history = config, folder, guard, history
        self.metric, self.mode = MONITOR[config.train.checkpoint]
        self.fixed_epoch = config.train.checkpoint_epoch if config.train.checkpoint == "epoch" else None
        self.best = state.get("best") if state else None
        self.best_epoch = state.get("best_epoch") if state else None
        self.best_weights = None  # the best epoch's weights when this process trained it

    def improved(self, epoch: int, value) -> bool:
        """Whether this epoch's checkpoint becomes the best one."""
        metric = self.metric
        if self.fixed_epoch is not None:  # train.checkpoint: epoch, chosen before any fold was seen
            return epoch + 1 == self.fixed_epoch
        finite = not metric or (value is not None and math.isfinite(float(value)))
        return finite and (metric is None or self.best is None
                           or (value > self.best if self.mode == "max" else value < self.best))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.guard.failure:  # broken weights are never saved, neither as best nor as last
            return
        metric, folder = self.metric, self.folder
        value = logs.get(metric) if metric else None
        improved = self.improved(epoch, value)
        target = os.path.join(folder, layout.BEST_MODEL)
        last = os.path.join(folder, layout.LAST_MODEL)
        temporary = io_utils.temporary_name(last)
        # One save per epoch, whatever the metric did: on a cluster saving is a collective step
        # that every worker takes together. The best checkpoint is a copy of that file.
        self.model.save(temporary)
        pending = None
        if improved:
            pending = io_utils.temporary_name(target)
            io_utils.copy(temporary, pending)
            self.best, self.best_epoch = (float(value) if metric else None), epoch + 1
            self.best_weights = self.model.get_weights()
        io_utils.replace(temporary, last)
        rows = self.history.rows + [self.history.row(epoch, logs)]
        committed = {"epoch": epoch + 1, "epochs": self.config.train.epochs, "monitor": metric,
                     "best": self.best, "best_epoch": self.best_epoch,
                     "pending_best": os.path.basename(pending) if pending else None,
                     "config": fold_state.fingerprint(self.config), "history": rows}
        fold_state.write_state(folder, committed)
        if pending:
            io_utils.replace(pending, target)
            fold_state.write_state(folder, dict(committed, pending_best=None))
            shown = (f"{metric} {value:.4f}" if metric else
                     "train.checkpoint_epoch" if self.fixed_epoch is not None else "last epoch")
            print(f"  checkpoint: epoch {epoch + 1} ({shown})")
        self.history.commit(rows)  # after the state that it describes


class History:
    """Each epoch's logs and learning rate; history.csv is rewritten by `Checkpoint` once state.json holds
    the epoch (its rows travel in the state, so a resumed fold's history follows its state)."""

    def __init__(self, config: Config, folder: str, global_batch: int, state: dict | None):
        self.config, self.folder, self.global_batch = config, folder, global_batch
        self.rows = fold_state.history_rows(folder, state) if state else []
        if state:
            self.commit(self.rows)  # a history behind its state (killed between the two) catches up

    def row(self, epoch: int, logs: dict) -> dict:
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["lr"] = float(schedules.learning_rate(epoch, self.config.train, self.global_batch))
        return row

    def commit(self, rows: list[dict]) -> None:
        self.rows = list(rows)
        io_utils.write_csv_atomic(pd.DataFrame(self.rows), os.path.join(self.folder, layout.HISTORY))


def learning_rate_schedule(config: Config, global_batch: int):
    """Keras' scheduler for the configured learning rate of each epoch (see `schedules`)."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch: schedules.learning_rate(epoch, config.train, global_batch))
