"""The tree family's folds (train/families/tabular.py): the trees of train/families/trees.py per fold on
the features of input/features.py, with the same folds, duplicate drops and leak checks as a CNN
run (`sources.prepare_fold`). A fold writes into outputs/<name>/fold<K>/:

    model.joblib     the fitted model, its feature columns and each column's training median
    state.json       the config it was trained under (as a CNN fold's; one "epoch")
    history.csv      train and validation loss and AUC after each boosting iteration
    tensorboard/     the same curves for TensorBoard (train.tensorboard)
    importance.csv   permutation importance on the fold's validation part
    data.json        images, malignant images and patients per split (as for a CNN)
    oof.csv          OOF predictions, written last: it marks the fold finished

External records (`data.external_files`) are not used: their images have no patient context and they may
never be in validation anyway. Training is deterministic for a given `seed`.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd

from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError
from melanoma.data import fold_data as fold_data_lib
from melanoma.data import sources
from melanoma.input import features
from melanoma.runs import layout
from melanoma.train.families import trees

# ---------------------------------------------------------------------------------------------------
# data


def competition_only(config: Config):
    """The config without external records (the tabular model reads the competition's only)."""
    if not config.data.external_files:
        return config
    trimmed = copy.deepcopy(config)
    trimmed["data"]["external_files"] = []
    return trimmed


def prepare(config: Config, progress: bool = True):
    """(feature table, {fold: sources.FoldData}) for every fold of the config."""
    data_config = competition_only(config)
    fold_data = {fold: sources.prepare_fold(data_config, fold, progress) for fold in range(config.data.folds)}
    scored = pd.Series({name: fold for fold, data in fold_data.items() for name in data.valid_names},
                       dtype=np.int64)
    table = features.build_table(config, scored.sort_index(), progress)
    return table, fold_data


def fold_rows(table: features.FeatureTable, fold_data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of a fold: its parts, duplicates dropped."""
    dropped = {name for _, name in fold_data.excluded}
    frame = table.train
    train_parts = {f.part for f in fold_data.train_files}  # competition files only (competition_only)
    training = frame[frame["part"].isin(train_parts) & ~frame["image_name"].isin(dropped)]
    validation = frame[frame["image_name"].isin(fold_data.valid_names)]
    return training.reset_index(drop=True), validation.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# a fold


def fit_fold(config: Config, fold: int, table: features.FeatureTable, fold_data, folder: str) -> dict:
    """Fit fold `fold` into its `folder` (cleared of an older training's files: TreeFamily.fresh_fold); write
    its data summary, model, state, history, importances and, last, its OOF."""
    fold_data = fold_data_lib.with_pseudo_labels(config, fold_data, folder)  # pseudo_labels.source only
    sources.write_summary(fold_data, folder)
    training, validation = fold_rows(table, fold_data)
    if fold_data.pseudo is not None:
        print(f"fold {fold}: + {len(fold_data.pseudo)} pseudo-labelled test images in training")
    return trees.fit_and_write(config, fold, folder, table.columns, table.categorical, training, validation,
                               features.feature_group, lambda oof: sources.check_oof(oof, fold_data),
                               fit_rows=lambda train_x, train_y: with_pseudo_rows(table, fold_data.pseudo, train_x,
                                                                                  train_y))


def with_pseudo_rows(table: features.FeatureTable, rows: pd.DataFrame | None, train_x: np.ndarray,
                     train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(rows, targets, sample weights) the trees are fitted on: the training images, then (pseudo_labels.source)
    each pseudo-labelled test image twice, as malignant weighing w·p and as benign weighing w·(1 − p), where p
    is its soft label and w its weight. The log-loss of the pair is then w times the cross-entropy against p,
    which is what a soft label means to a CNN's loss; no threshold turns it into a hard label. (None: no
    weights.)"""
    if rows is None or rows.empty:
        return train_x, train_y, None
    test = table.test.assign(image_name=table.test["image_name"].astype(str)).set_index("image_name")
    missing = sorted(set(rows["image_name"]) - set(test.index))
    if missing:
        raise CheckFailed(f"pseudo-labelled test image(s) {', '.join(missing[:3])} have no test features; "
                          "the test records and the source disagree")
    values = trees.matrix(test.loc[rows["image_name"]], table.columns)
    label = rows["label"].to_numpy(dtype=np.float64)
    weight = rows["weight"].to_numpy(dtype=np.float64)
    fit_x = np.vstack([train_x, values, values])
    fit_y = np.concatenate([train_y, np.ones(len(rows), np.int64), np.zeros(len(rows), np.int64)])
    weights = np.concatenate([np.ones(len(train_y)), weight * label, weight * (1 - label)])
    keep = weights > 0  # a label of exactly 0 or 1 needs one of its two rows only
    return fit_x[keep], fit_y[keep], weights[keep]


def test_predictions(config: Config, fold: int, table: features.FeatureTable) -> pd.DataFrame:
    """image_name, pred of every test row, from fold `fold`'s saved model."""
    saved = trees.load_model(os.path.join(layout.fold_dir(config, fold), layout.TREES_MODEL))
    if saved["columns"] != table.columns:
        raise ConfigError(f"fold {fold}'s model was trained on other features than the config's features "
                          "section gives now; train the run again (`python train.py --config ... --force`)")
    pred = trees.predict(saved["model"], trees.matrix(table.test, saved["columns"]))
    return table.test[["image_name"]].assign(pred=pred)
