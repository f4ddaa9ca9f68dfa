"""The CNN family's fold: schedule, callbacks, best checkpoint, history, then the OOF predictions.

Artifacts in outputs/<name>/fold<K>/: data.json (images per source and split, duplicates dropped; see
data/sources.py), duplicates.csv, model.keras (the checkpoint chosen by train.checkpoint), history.csv,
val_epochs.csv (plain validation predictions of every epoch, for `selection`), and oof.csv, written last.
Every file is written atomically. After each epoch, last.keras (model + optimizer) and state.json let
`--resume` continue a killed fold (see `fold_state`). `python train.py` (train/command.py) calls
`train_fold` through the family (train/families/cnn.py); infer predicts the test images.
"""
from __future__ import annotations

import os
import sys
import time

from melanoma.core import config as config_lib
from melanoma.core import environment, hardware, io_utils, kerasapi, metrics, progress
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError, DataError
from melanoma.core.kerasapi import keras
from melanoma.data import diagnoses, integrity, record_format, sources, taxonomy
from melanoma.data import fold_data as fold_data_lib
from melanoma.input import augment, pipeline
from melanoma.model import network as model_lib
from melanoma.model import tta_prediction
from melanoma.runs import fold_state, layout
from melanoma.train import callbacks, schedules, tensorboard


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def make_loss(config: Config):
    """The configured loss for the configured head.

    binary: cross-entropy (with label smoothing) or focal loss on the sigmoid. diagnosis: the same two
    over the 9-class softmax (categorical cross-entropy / categorical focal loss, one-hot labels).
    """
    train = config.train
    if config.model.head == "diagnosis":
        if train.loss == "bce":
            return keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing)
        return keras.losses.CategoricalFocalCrossentropy(alpha=train.focal_alpha, gamma=train.focal_gamma,
                                                         label_smoothing=train.label_smoothing)
    if train.loss == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=train.label_smoothing)
    return keras.losses.BinaryFocalCrossentropy(gamma=train.focal_gamma, alpha=train.focal_alpha,
                                                apply_class_balancing=True,
                                                label_smoothing=train.label_smoothing)


def compile_model(model, config: Config, global_batch: int):
    train = config.train
    if environment.cluster_tasks() > 1:
        metrics = []  # tf_keras on a cluster shows streaming training metrics summed over the workers
    elif config.pseudo_labels.source:
        metrics = []  # Keras' AUC, precision and recall read any soft label above 0 as malignant
    elif config.model.head == "diagnosis":
        metrics = [model_lib.MelanomaAUC(name="auc"), keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        metrics = [keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="precision"),
                   keras.metrics.Recall(name="recall")]
    optimizer = keras.optimizers.Adam(learning_rate=schedules.learning_rate(0, train, global_batch))
    # Under mixed_float16 Keras 3 wraps the optimizer in a LossScaleOptimizer itself (auto_scale_loss);
    # tf_keras does the same in compile when the global policy is mixed_float16.
    model.compile(optimizer=optimizer, loss=make_loss(config), jit_compile=bool(train.xla), metrics=metrics,
                  steps_per_execution=int(train.steps_per_execution))
    return model


def class_weights(config: Config) -> dict | None:
    """Keras class_weight for train.class_weight: the malignant class (MEL for the diagnosis head)
    weighted, every other class 1. All classes are listed: Keras looks weights up by class index."""
    if not config.train.class_weight:
        return None
    if config.model.head == "diagnosis":

        weights = {index: 1.0 for index in range(len(taxonomy.DIAGNOSIS_CLASSES))}
        weights[taxonomy.MELANOMA_CLASS] = float(config.train.class_weight)
        return weights
    return {0: 1.0, 1: float(config.train.class_weight)}


def make_callbacks(config: Config, folder: str, global_batch: int, valid_paths: list[str],
                   valid_dropped: frozenset = frozenset(), state: dict | None = None, strategy=None):
    """Exact validation AUC (and each epoch's plain validation predictions in val_epochs.csv), learning
    rate per epoch, NaN guard, atomic best checkpoint and history, and TensorBoard's scalars.

    After each epoch the fold's resumable state is committed (see `fold_state`): val_epochs.csv,
    last.keras (model and optimizer), the best checkpoint, state.json, then history.csv. `state` is a
    resumed fold's state.json: the best metric so far, the history and the per-epoch predictions of its
    completed epochs carry on from it.

    Keras' streaming AUC bins predictions into fixed thresholds, which reads 0.5 when a young model's
    outputs all fall in one bin; the validation AUC here is scikit-learn's on every validation image,
    the same number the competition would give. It runs first so later callbacks see it in `logs`.
    """
    strategy = strategy or hardware.get_strategy()
    guard = callbacks.NanGuard()
    history = callbacks.History(config, folder, global_batch, state)
    checkpoint = callbacks.Checkpoint(config, folder, state, guard, history)
    schedule = callbacks.learning_rate_schedule(config, global_batch)
    score = callbacks.ValidationScore(config, folder, valid_paths, valid_dropped, state, guard, strategy)
    # The score first (its val_auc and val_loss are in the logs the checkpoint reads); the checkpoint
    # commits the epoch: state.json, then history.csv, which never shows an epoch the state lacks.
    # TensorBoard (train.tensorboard, the chief only) writes the logs the score completed.
    board = tensorboard.callback(config, folder)
    return [schedule, guard, score, checkpoint] + ([board] if board else []), guard, checkpoint


def ready_fold_folder(config: Config, fold: int, resume: bool) -> dict | None:
    """The fold folder ready to train: leftovers of a killed process removed; with `resume`, the
    state to continue from (None when there is none); without it, a clean folder."""
    folder = layout.fold_dir(config, fold)
    io_utils.makedirs(folder)
    state = fold_state.read_state(folder) if resume else None
    if state is not None:
        fold_state.check_same_config(state, config, folder)
        fold_state.finish_pending(folder, state)
    io_utils.remove_leftovers(folder)
    if resume and state is None:
        print(f"fold {fold}: nothing to resume (no {layout.STATE}); training it from scratch")
    gathered = os.path.join(layout.run_dir(config), layout.OOF)
    if io_utils.exists(gathered):  # it held this fold's previous OOF; gather_oof writes it again
        io_utils.remove(gathered)
    if state is None:
        fold_state.reset_fold(folder)
    elif not io_utils.exists(os.path.join(folder, layout.LAST_MODEL)):
        raise ConfigError(f"cannot resume {folder}: {layout.LAST_MODEL} is missing; train "
                                     "the fold again with --force")
    return state


def train_fold(config: Config, fold: int, resume: bool = False) -> dict:
    """Train fold `fold` of `config`; returns a summary with the fold's OOF AUC.

    With `resume`, a fold that was interrupted continues after its last completed epoch, with its model,
    optimizer state, best checkpoint and history (see `fold_state`). Under train.deterministic the fold
    runs with TensorFlow's op determinism on and its input pipeline ordered (input/pipeline.py): the
    same config, seed and data then give the same model on the same machine."""
    strategy = hardware.get_strategy()  # first: a multi-worker strategy must precede other TF work
    with hardware.op_determinism(config_lib.is_deterministic(config)):
        return _train_fold(config, fold, resume, strategy)


def _train_fold(config: Config, fold: int, resume: bool, strategy) -> dict:
    precision = hardware.set_precision(config, strategy)
    folder = layout.fold_dir(config, fold)
    state = ready_fold_folder(config, fold, resume)
    initial_epoch = state["epoch"] if state else 0
    set_seed(config.seed + fold)
    fold_data, skipped = fold_data_lib.read(config, fold, folder)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    steps = _epoch_steps(config, fold, fold_data, strategy, global_batch, precision)
    train_ds, lookups = _training_batches(config, fold, fold_data, global_batch, initial_epoch)
    model = _fold_model(config, fold, folder, state, strategy, global_batch)
    callbacks, guard, checkpoint = make_callbacks(config, folder, global_batch,
                                                  [f.path for f in fold_data.valid_files],
                                                  fold_data.valid_dropped, state, strategy=strategy)
    seconds = _fit(model, train_ds, config, fold, fold_data, steps, callbacks, initial_epoch)
    _keep_best(model, config, fold, folder, guard, checkpoint)
    oof = _write_oof(model, config, fold, folder, fold_data, skipped, lookups, strategy)
    auc = metrics.auc(oof["target"], oof["pred"])
    print(f"fold {fold}: best epoch {checkpoint.best_epoch}, OOF AUC {auc:.4f} "
          f"({len(oof)} images, TTA {config.tta.steps}), {seconds:.0f} s training")
    metrics.say_if_collapsed(fold, oof["pred"], "try a lower train.lr_peak_per_image")
    del model
    keras.backend.clear_session()
    return {"fold": fold, "auc": auc, "best_epoch": checkpoint.best_epoch, "seconds": seconds}


def _epoch_steps(config: Config, fold: int, fold_data, strategy, global_batch: int, precision) -> int:
    """Steps per epoch, after saying what the fold trains on; DataError when skipping corrupt records
    left no training or no validation image."""
    train_files, valid_files = fold_data.train_files, fold_data.valid_files
    replicas = strategy.num_replicas_in_sync
    n_train = fold_data.train_images
    n_valid = fold_data.valid_images
    if n_valid < 1 or n_train < 1:
        raise DataError(f"fold {fold}: no {'validation' if n_valid < 1 else 'training'} image is left "
                        "after skipping the corrupt ones")
    steps = config.train.steps_per_epoch or max(1, n_train // global_batch)
    print(f"fold {fold}: {n_train} training images in {len(train_files)} file(s), {n_valid} validation "
          f"images in {len(valid_files)}; {steps} steps of {global_batch} per epoch, "
          f"{config.train.epochs} epochs, {replicas} replica(s) ({hardware.strategy_name(strategy)}), "
          f"{precision}{', XLA' if config.train.xla else ''}, augmentation "
          f"{augment.resolve_backend(config.augment.backend)}, {kerasapi.name()}")
    return steps


def _training_batches(config: Config, fold: int, fold_data, global_batch: int, initial_epoch: int):
    """The fold's augmented training batches (this worker's share on a cluster) and the diagnosis
    lookups of its sources: (dataset, lookups)."""
    train_files = fold_data.train_files
    # A resumed fold draws a new data order rather than replaying its first epochs' order.
    data_seed = config.seed + fold + 1000 * initial_epoch
    shard = environment.input_shard()
    if shard[0] > 1:
        print(f"fold {fold}: worker {shard[1]} of {shard[0]} reads every {shard[0]}th training record")
    augmenter = augment.make_augmenter(config.augment, seed=data_seed + shard[1])
    lookups = diagnoses.source_lookups(config, train_files, fold_data.train_sources)
    train_ds = pipeline.train_dataset([f.path for f in train_files], config, global_batch,
                                      seed=data_seed + shard[1], augmenter=augmenter,
                                      keep=fold_data.record_filter(), diagnosis_lookup=lookups,
                                      sources=fold_data.train_sources, shard=shard,
                                      pseudo=pseudo_labelled(config, fold_data))
    return train_ds, lookups


def pseudo_labelled(config: Config, fold_data) -> pipeline.PseudoLabelled | None:
    """The fold's pseudo-labelled test images for the training pipeline (pseudo_labels.source), or None. The
    loss's class weight then travels as sample weights (Keras takes one or the other)."""
    rows = fold_data.pseudo
    if rows is None:
        return None
    return pipeline.PseudoLabelled(
        paths=[f.path for f in fold_data.pseudo_files], names=rows["image_name"].astype(str).tolist(),
        labels=rows["label"].to_numpy(), weights=rows["weight"].to_numpy(),
        labelled_images=fold_data.train_images - len(rows), class_weight=config.train.class_weight)


def _fold_model(config: Config, fold: int, folder: str, state: dict | None, strategy, global_batch: int):
    """The compiled model, built under the strategy; a resumed fold's holds its last epoch's weights
    and optimizer state."""
    with strategy.scope():
        model = compile_model(model_lib.build_model(config), config, global_batch)
        if state:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(os.path.join(folder, layout.LAST_MODEL))  # weights and optimizer state
            print(f"fold {fold}: resuming after epoch {state['epoch']} of {config.train.epochs} "
                  f"(best epoch so far: {state.get('best_epoch')})")
    return model


def _fit(model, train_ds, config: Config, fold: int, fold_data, steps: int, callbacks: list,
         initial_epoch: int) -> float:
    """model.fit over the fold's remaining epochs, an unreadable record named in the error; returns
    the seconds it took."""
    files = fold_data.train_files + fold_data.valid_files
    # with pseudo-labels the class weight is in the pipeline's sample weights (pseudo_labelled)
    class_weight = class_weights(config) if fold_data.pseudo is None else None
    started = time.time()
    with integrity.named_data_errors(sorted({f.path for f in files}), "train",
                                     config.data.image_size, f"fold {fold} training", integrity.HINT_TRAIN):
        verbose, extra = fit_verbosity(config, steps)
        model.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=steps, shuffle=False,
                  callbacks=callbacks + extra, class_weight=class_weight, verbose=verbose,
                  initial_epoch=initial_epoch)
    return time.time() - started


def _keep_best(model, config: Config, fold: int, folder: str, guard, checkpoint) -> None:
    """The model takes the chosen checkpoint's weights; CheckFailed when training broke down or no
    epoch could be chosen."""
    if guard.failure:
        kept = (f"the best checkpoint (epoch {checkpoint.best_epoch}) is kept in {folder}"
                if checkpoint.best_epoch else "no checkpoint was written")
        raise CheckFailed(f"fold {fold}: {guard.failure}; training stopped and {kept}. Lower "
                          "train.lr_peak_per_image, check the data, or turn off train.mixed_precision.")
    if checkpoint.best_epoch is None:
        raise CheckFailed(f"fold {fold}: no epoch gave a finite {config.train.checkpoint} metric")
    if checkpoint.best_weights is not None:
        # The weights model.keras holds, kept from that epoch: tf_keras cannot load a .keras file into
        # a model under MultiWorkerMirroredStrategy, and this saves reading it back.
        model.set_weights(checkpoint.best_weights)
    else:  # chosen before a resume
        model.load_weights(os.path.join(folder, layout.BEST_MODEL))


def _write_oof(model, config: Config, fold: int, folder: str, fold_data, skipped: dict, lookups, strategy):
    """The fold's out-of-fold predictions, written to oof.csv: competition validation images only,
    duplicates out; returns it."""
    valid_files = fold_data.valid_files
    oof = tta_prediction.predict_files(model, [f.path for f in valid_files], config, "train",
                                   record_format.count_images(valid_files) - sum(skipped.get(f.path, 0)
                                                                            for f in valid_files),
                                   desc=f"fold {fold} OOF", strategy=strategy)
    oof = sources.check_oof(oof, fold_data)  # competition validation images only, duplicates out
    oof["fold"] = fold
    class_columns = taxonomy.class_columns(oof.columns)  # diagnosis head: p_MEL, p_NV, ...
    extra = []
    if class_columns:
        oof["diagnosis"] = diagnoses.true_diagnosis(oof, lookups[sources.COMPETITION])  # validation: competition
        extra = ["diagnosis"] + class_columns
    oof = oof[["image_name", "patient_id", "target", "pred", "fold"] + extra]
    io_utils.write_csv_atomic(oof, os.path.join(folder, layout.OOF))
    return oof


def fit_verbosity(config: Config, steps: int) -> tuple[int, list]:
    """Keras' verbose and extra callbacks for train.verbose: 1 is Keras' bar on a terminal and, in a
    log (stdout not a terminal), plain lines within each epoch and at its end instead of the bar's
    carriage-return fragments; 0 and 2 are Keras' own (silent; one line per epoch)."""
    if config.train.verbose == 1 and not progress.on_terminal(sys.stdout):
        return 0, [progress.training_lines(config.train.epochs, steps)]
    return config.train.verbose, []


