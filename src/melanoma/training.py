"""Training one fold: schedule, callbacks, best checkpoint, history, then OOF and test predictions.

`python train.py --config C --fold K` (or `--fold all`). Artifacts in outputs/<name>/fold<K>/:
model.keras (the checkpoint chosen by train.checkpoint), history.csv, oof.csv, test.csv; after the last
fold, outputs/<name>/oof.csv gathers every fold. Every file is written atomically.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import pandas as pd

from melanoma import config as config_lib
from melanoma import io_utils
from melanoma.errors import CheckFailed


def fold_dir(config, fold: int) -> str:
    return os.path.join(config_lib.run_dir(config), f"fold{fold}")


def fold_finished(config, fold: int) -> bool:
    folder = fold_dir(config, fold)
    return all(io_utils.exists(os.path.join(folder, name)) for name in ("model.keras", "oof.csv"))


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def compile_model(model, config, global_batch: int):
    import keras

    from melanoma import schedules

    train = config.train
    if train.loss == "bce":
        loss = keras.losses.BinaryCrossentropy(label_smoothing=train.label_smoothing)
    else:
        loss = keras.losses.BinaryFocalCrossentropy(gamma=train.focal_gamma, alpha=train.focal_alpha,
                                                    apply_class_balancing=True,
                                                    label_smoothing=train.label_smoothing)
    optimizer = keras.optimizers.Adam(learning_rate=schedules.learning_rate(0, train, global_batch))
    model.compile(optimizer=optimizer, loss=loss, jit_compile=bool(train.xla),
                  metrics=[keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="precision"),
                           keras.metrics.Recall(name="recall")])
    return model


def binary_log_loss(target: np.ndarray, pred: np.ndarray) -> float:
    pred = np.clip(pred, 1e-7, 1 - 1e-7)
    return float(-np.mean(target * np.log(pred) + (1 - target) * np.log(1 - pred)))


def make_callbacks(config, folder: str, global_batch: int, valid_paths: list[str]):
    """Exact validation AUC, learning rate per epoch, NaN guard, atomic best checkpoint and history.

    Keras' streaming AUC bins predictions into fixed thresholds, which reads 0.5 when a young model's
    outputs all fall in one bin; the validation AUC here is scikit-learn's on every validation image,
    the same number the competition would give. It runs first so later callbacks see it in `logs`.
    """
    import keras
    from sklearn.metrics import roc_auc_score

    from melanoma import prediction, schedules

    class ValidationScore(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None or guard.failure:
                return
            frame = prediction.predict_files(self.model, valid_paths, config, "train", tta=False,
                                             progress=False)
            target = frame["target"].to_numpy(dtype=np.float64)
            logs["val_loss"] = binary_log_loss(target, frame["pred"].to_numpy())
            logs["val_auc"] = (float(roc_auc_score(target, frame["pred"])) if len(np.unique(target)) == 2
                               else float("nan"))

    monitor = {"best_auc": ("val_auc", "max"), "best_loss": ("val_loss", "min"), "last": (None, None)}
    metric, mode = monitor[config.train.checkpoint]

    class NanGuard(keras.callbacks.Callback):
        """Stops at the first non-finite loss, before any checkpoint sees the broken weights."""

        def __init__(self):
            super().__init__()
            self.failure = None

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.failure = f"loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}"
                self.model.stop_training = True

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    guard = NanGuard()

    class Checkpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = None
            self.best_epoch = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if guard.failure:
                return
            value = logs.get(metric) if metric else None
            if metric and (value is None or not math.isfinite(float(value))):
                return
            improved = (metric is None or self.best is None
                        or (value > self.best if mode == "max" else value < self.best))
            if improved:
                self.best, self.best_epoch = value, epoch + 1
                target = os.path.join(folder, "model.keras")
                temporary = io_utils.temporary_name(target)
                self.model.save(temporary)
                io_utils.replace(temporary, target)
                shown = f"{metric} {value:.4f}" if metric else "last epoch"
                print(f"  checkpoint: epoch {epoch + 1} ({shown})")

    checkpoint = Checkpoint()

    class History(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1}
            row.update({k: float(v) for k, v in (logs or {}).items()})
            row["lr"] = float(schedules.learning_rate(epoch, config.train, global_batch))
            self.rows.append(row)
            io_utils.write_csv_atomic(pd.DataFrame(self.rows), os.path.join(folder, "history.csv"))

    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch: schedules.learning_rate(epoch, config.train, global_batch))
    return [schedule, guard, ValidationScore(), checkpoint, History()], guard, checkpoint


def train_fold(config, fold: int) -> dict:
    """Train fold `fold` of `config`; returns a summary with the fold's OOF AUC."""
    import keras
    from sklearn.metrics import roc_auc_score

    from melanoma import augment, hardware, model as model_lib, pipeline, prediction

    folder = fold_dir(config, fold)
    io_utils.makedirs(folder)
    set_seed(config.seed + fold)
    files = pipeline.list_files(config.data.train_files, "data.train_files")
    test_files = pipeline.list_files(config.data.test_files, "data.test_files")
    train_files, valid_files = pipeline.split_folds(files, fold, config.data.folds)

    strategy = hardware.get_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.train.batch_size * replicas
    n_train = pipeline.count_images(train_files)
    n_valid = pipeline.count_images(valid_files)
    steps = config.train.steps_per_epoch or max(1, n_train // global_batch)
    print(f"fold {fold}: {n_train} training images in {len(train_files)} file(s), {n_valid} validation "
          f"images in {len(valid_files)}; {steps} steps of {global_batch} per epoch, "
          f"{config.train.epochs} epochs, {replicas} replica(s)")

    augmenter = augment.make_augmenter(config.augment, seed=config.seed + fold)
    train_ds = pipeline.train_dataset([f.path for f in train_files], config, global_batch,
                                      seed=config.seed + fold, augmenter=augmenter)
    with strategy.scope():
        model = compile_model(model_lib.build_model(config), config, global_batch)
    callbacks, guard, checkpoint = make_callbacks(config, folder, global_batch,
                                                  [f.path for f in valid_files])
    class_weight = {0: 1.0, 1: float(config.train.class_weight)} if config.train.class_weight else None
    started = time.time()
    model.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=steps,
              callbacks=callbacks, class_weight=class_weight, verbose=config.train.verbose)
    seconds = time.time() - started
    if guard.failure:
        kept = (f"the best checkpoint (epoch {checkpoint.best_epoch}) is kept in {folder}"
                if checkpoint.best_epoch else "no checkpoint was written")
        raise CheckFailed(f"fold {fold}: {guard.failure}; training stopped and {kept}. Lower "
                          "train.lr_max, check the data, or turn off train.mixed_precision.")
    if checkpoint.best_epoch is None:
        raise CheckFailed(f"fold {fold}: no epoch gave a finite {config.train.checkpoint} metric")
    model.load_weights(os.path.join(folder, "model.keras"))

    oof = prediction.predict_files(model, [f.path for f in valid_files], config, "train", n_valid,
                                   desc=f"fold {fold} OOF")
    oof["fold"] = fold
    oof = oof[["image_name", "patient_id", "target", "pred", "fold"]]
    io_utils.write_csv_atomic(oof, os.path.join(folder, "oof.csv"))
    test = prediction.predict_files(model, [f.path for f in test_files], config, "test",
                                    pipeline.count_images(test_files), desc=f"fold {fold} test")
    io_utils.write_csv_atomic(test[["image_name", "pred"]], os.path.join(folder, "test.csv"))
    io_utils.write_text_atomic(os.path.join(folder, "test.json"), json.dumps(prediction_settings(config)))
    auc = float(roc_auc_score(oof["target"], oof["pred"])) if oof["target"].nunique() == 2 else float("nan")
    print(f"fold {fold}: best epoch {checkpoint.best_epoch}, OOF AUC {auc:.4f} "
          f"({len(oof)} images, TTA {config.tta.steps}), {seconds:.0f} s training")
    del model
    keras.backend.clear_session()
    return {"fold": fold, "auc": auc, "best_epoch": checkpoint.best_epoch, "seconds": seconds}


def prediction_settings(config) -> dict:
    """What a fold's test predictions depend on besides the checkpoint (so infer can reuse them)."""
    return {"tta": config.tta.to_dict(), "augment": config.augment.to_dict(),
            "image_size": config.data.image_size, "test_files": config.data.test_files, "seed": config.seed}


def gather_oof(config) -> str | None:
    """Write outputs/<name>/oof.csv once every fold has its OOF; returns its path (None if incomplete)."""
    paths = [os.path.join(fold_dir(config, k), "oof.csv") for k in range(config.data.folds)]
    if not all(io_utils.exists(p) for p in paths):
        return None
    oof = pd.concat([io_utils.read_csv(p) for p in paths], ignore_index=True)
    if oof["image_name"].duplicated().any():
        names = oof.loc[oof["image_name"].duplicated(), "image_name"].head(3).tolist()
        raise CheckFailed(f"an image is in the OOF of two folds (e.g. {names}): the folds overlap")
    target = os.path.join(config_lib.run_dir(config), "oof.csv")
    io_utils.write_csv_atomic(oof, target)
    return target


def parse_folds(text: str, folds: int) -> list[int]:
    if text == "all":
        return list(range(folds))
    try:
        chosen = [int(part) for part in text.split(",")]
    except ValueError:
        raise config_lib.ConfigError(f"--fold takes a fold number, a comma list or 'all', got '{text}'") from None
    bad = [k for k in chosen if not 0 <= k < folds]
    if bad:
        raise config_lib.ConfigError(f"--fold {bad[0]} is out of range: data.folds = {folds} (0..{folds - 1})")
    return chosen


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML in configs/")
    parser.add_argument("--fold", default="all", help="fold number, comma list, or 'all' (default)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                        help="override config keys, e.g. --set train.epochs=2 data.image_size=64")
    parser.add_argument("--force", action="store_true", help="retrain folds that are already finished")


def command(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config, args.set)
    folds = parse_folds(args.fold, config.data.folds)
    from melanoma import pipeline  # noqa: F401  (fails early when TensorFlow is broken)

    pipeline.list_files(config.data.train_files, "data.train_files")
    pipeline.list_files(config.data.test_files, "data.test_files")
    config_path = config_lib.save_config(config)
    print(f"run {config.name}: resolved config in {config_path}")
    results = []
    for fold in folds:
        if fold_finished(config, fold) and not args.force:
            print(f"fold {fold}: already finished (use --force to train it again)")
            continue
        results.append(train_fold(config, fold))
    gathered = gather_oof(config)
    if gathered:
        from sklearn.metrics import roc_auc_score

        oof = io_utils.read_csv(gathered)
        auc = roc_auc_score(oof["target"], oof["pred"])
        print(f"OOF AUC over {config.data.folds} folds: {auc:.4f} ({len(oof)} images) -> {gathered}")
    else:
        missing = [k for k in range(config.data.folds) if not fold_finished(config, k)]
        print(f"folds still to train: {missing}")
    return 0
