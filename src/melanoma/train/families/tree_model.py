"""The tree family's model (train/families/tabular.py): scikit-learn's HistGradientBoostingClassifier per
fold on the features of input/features.py, with the same folds, duplicate drops and leak checks as a CNN
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
import io
import os
import time
import warnings

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from melanoma.core import fold_state, io_utils, layout, metrics
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError
from melanoma.data import fold_data as fold_data_lib
from melanoma.data import sources
from melanoma.input import features
from melanoma.train import tensorboard

# scikit-learn's OpenMP threads spin while they wait for work by default; on a CPU shared with other
# processes that spinning made fitting 5-10x slower (and prediction 30x) than passive waiting. Read when
# OpenMP starts, so it must be set before scikit-learn's compiled code first runs in the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FOLD_FILES = (layout.TREES_MODEL, layout.STATE, layout.OOF, layout.TEST, layout.TEST_SETTINGS, layout.HISTORY,
              layout.IMPORTANCE, layout.PSEUDO_LABELS)


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
# the model


def new_trees(config: Config, table: features.FeatureTable, fold: int):
    section = config.tabular
    categorical = [column in table.categorical for column in table.columns]
    weight = section.class_weight
    return HistGradientBoostingClassifier(
        learning_rate=section.learning_rate, max_iter=int(section.max_iter),
        max_leaf_nodes=int(section.max_leaf_nodes), min_samples_leaf=int(section.min_samples_leaf),
        l2_regularization=section.l2_regularization, max_features=section.max_features,
        categorical_features=categorical if any(categorical) else None, early_stopping=False,
        class_weight={0: 1.0, 1: float(weight)} if weight else None, random_state=int(config.seed) + fold)


def matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return frame[columns].to_numpy(dtype=np.float64)


def predict(model, values: np.ndarray) -> np.ndarray:
    return model.predict_proba(values)[:, 1]


def history(model, train_x, train_y, valid_x, valid_y) -> pd.DataFrame:
    """Loss and AUC on the training and validation rows after each boosting iteration (as `epoch`, so
    `report` draws them as training curves)."""

    def curves(values, target):
        for probabilities in model.staged_predict_proba(values):
            pred = probabilities[:, 1]
            yield metrics.binary_log_loss(target, pred), metrics.auc(target, pred)

    rows = [{"epoch": index + 1, "loss": loss, "auc": auc, "val_loss": val_loss, "val_auc": val_auc}
            for index, ((loss, auc), (val_loss, val_auc))
            in enumerate(zip(curves(train_x, train_y), curves(valid_x, valid_y)))]
    return pd.DataFrame(rows)


def base_feature(column: str) -> str:
    """The statistic a column measures: `pdiff_x` and `prank_x` are patient-context versions of `x`."""
    for prefix in ("pdiff_", "prank_"):
        if column.startswith(prefix):
            return column[len(prefix):]
    return column


def importance_sets(columns: list[str]) -> list[tuple[str, str, str, list[int]]]:
    """(kind, name, group, column indices) of what `permutation_importance` shuffles: each statistic
    with its patient-context versions (kind `feature`), and each feature group (kind `group`)."""
    families: dict[str, list[int]] = {}
    groups: dict[str, list[int]] = {}
    for index, column in enumerate(columns):
        families.setdefault(base_feature(column), []).append(index)
        groups.setdefault(features.feature_group(column), []).append(index)
    sets = [("feature", name, features.feature_group(name), indices) for name, indices in families.items()]
    return sets + [("group", group, group, indices) for group, indices in groups.items()]


def permutation_importance(model, values: np.ndarray, target: np.ndarray, columns: list[str],
                           repeats: int, seed: int, batch_rows: int = 50_000) -> pd.DataFrame:
    """AUC lost when the rows' values of a set of columns (see `importance_sets`) are permuted among
    them, mean and std over `repeats` permutations.

    The permuted copies are predicted many at a time: one call on a tall matrix costs far less than
    as many calls on the validation rows alone (scikit-learn's per-call overhead dominates those)."""

    base = metrics.auc(target, predict(model, values))
    rng = np.random.default_rng(seed)
    sets = importance_sets(columns)
    jobs = [(position, rng.permutation(len(values))) for position in range(len(sets)) for _ in range(repeats)]
    per_batch = max(1, batch_rows // max(1, len(values)))
    drops: dict[int, list[float]] = {position: [] for position in range(len(sets))}
    for start in range(0, len(jobs), per_batch):
        batch = jobs[start:start + per_batch]
        stacked = np.tile(values, (len(batch), 1))
        for slot, (position, order) in enumerate(batch):
            indices = sets[position][3]
            rows = slice(slot * len(values), (slot + 1) * len(values))
            stacked[rows, indices] = values[order][:, indices]
        preds = predict(model, stacked).reshape(len(batch), len(values))
        for (position, _), pred in zip(batch, preds):
            drops[position].append(base - metrics.auc(target, pred))
    rows = [{"kind": kind, "name": name, "group": group, "columns": len(indices),
             "auc_drop": float(np.mean(drops[position])), "auc_drop_std": float(np.std(drops[position])),
             "repeats": repeats, "base_auc": base}
            for position, (kind, name, group, indices) in enumerate(sets)]
    return pd.DataFrame(rows)


def save_model(model, columns: list[str], reference: np.ndarray, path: str) -> None:
    """The model, its feature columns (in its order) and each column's median over the fold's training
    rows (the reference of `contributions`)."""
    buffer = io.BytesIO()
    joblib.dump({"model": model, "columns": columns, "reference": reference}, buffer)
    io_utils.write_bytes_atomic(path, buffer.getvalue())


def load_model(path: str) -> dict:
    return joblib.load(io.BytesIO(io_utils.read_bytes(path)))


# ---------------------------------------------------------------------------------------------------
# a fold


def fit_fold(config: Config, fold: int, table: features.FeatureTable, fold_data) -> dict:
    """Fit fold `fold`; write its model, state, history, importances and, last, its OOF."""
    folder = layout.fold_dir(config, fold)
    _fresh_folder(folder)
    fold_data = fold_data_lib.with_pseudo_labels(config, fold_data, folder)  # data.pseudo_labels only
    sources.write_summary(fold_data, folder)
    training, validation = fold_rows(table, fold_data)
    train_y = training["target"].to_numpy(dtype=np.int64)
    valid_y = validation["target"].to_numpy(dtype=np.int64)
    if len(np.unique(train_y)) < 2:
        raise CheckFailed(f"fold {fold}: the training part holds one class only; the model cannot learn")
    columns = table.columns
    train_x, valid_x = matrix(training, columns), matrix(validation, columns)
    fit_x, fit_y, weights = with_pseudo_rows(table, fold_data.pseudo, train_x, train_y)
    pseudo = "" if fold_data.pseudo is None else f" (+ {len(fold_data.pseudo)} pseudo-labelled test images)"
    print(f"fold {fold}: {len(training)} training images{pseudo}, {len(validation)} validation images, "
          f"{len(columns)} features")
    started = time.time()
    model = new_trees(config, table, fold).fit(fit_x, fit_y, sample_weight=weights)
    seconds = time.time() - started

    oof = validation[["image_name", "patient_id", "target"]].assign(pred=predict(model, valid_x), fold=fold)
    oof = sources.check_oof(oof, fold_data)[["image_name", "patient_id", "target", "pred", "fold"]]
    save_model(model, columns, training_medians(train_x), os.path.join(folder, layout.TREES_MODEL))
    fold_state.write_state(folder, {"epoch": 1, "epochs": 1, "config": fold_state.fingerprint(config)})
    curves = history(model, train_x, train_y, valid_x, valid_y)
    io_utils.write_csv_atomic(curves, os.path.join(folder, layout.HISTORY))
    tensorboard.write_history(config, folder, curves)  # train.tensorboard
    repeats = int(config.tabular.importance_repeats)
    if repeats and len(np.unique(valid_y)) == 2:
        importance = permutation_importance(model, valid_x, valid_y, columns, repeats, int(config.seed) + fold)
        io_utils.write_csv_atomic(importance, os.path.join(folder, layout.IMPORTANCE))
    io_utils.write_csv_atomic(oof, os.path.join(folder, layout.OOF))  # last: it marks the fold finished
    auc = metrics.auc(oof["target"], oof["pred"])
    print(f"fold {fold}: OOF AUC {auc:.4f} ({len(oof)} images), {seconds:.1f} s fitting "
          f"{config.tabular.max_iter} trees")
    return {"fold": fold, "auc": auc, "seconds": seconds}


def with_pseudo_rows(table: features.FeatureTable, rows: pd.DataFrame | None, train_x: np.ndarray,
                     train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(rows, targets, sample weights) the trees are fitted on: the training images, then (data.pseudo_labels)
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
    values = matrix(test.loc[rows["image_name"]], table.columns)
    label = rows["label"].to_numpy(dtype=np.float64)
    weight = rows["weight"].to_numpy(dtype=np.float64)
    fit_x = np.vstack([train_x, values, values])
    fit_y = np.concatenate([train_y, np.ones(len(rows), np.int64), np.zeros(len(rows), np.int64)])
    weights = np.concatenate([np.ones(len(train_y)), weight * label, weight * (1 - label)])
    keep = weights > 0  # a label of exactly 0 or 1 needs one of its two rows only
    return fit_x[keep], fit_y[keep], weights[keep]


def training_medians(values: np.ndarray) -> np.ndarray:
    """Each column's median over the training rows, NaN for a column with no value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column's median is NaN, as meant
        return np.nanmedian(values, axis=0) if len(values) else np.full(values.shape[1], np.nan)


def _fresh_folder(folder: str) -> None:
    """The fold folder without an older training's files (a retrained fold never keeps them beside its
    new ones), nor the temporary files a killed process left."""
    io_utils.makedirs(folder)
    io_utils.remove_leftovers(folder)
    for name in FOLD_FILES + ("data.json", "duplicates.csv"):
        path = os.path.join(folder, name)
        if io_utils.exists(path):
            io_utils.remove(path)
    io_utils.remove_tree(tensorboard.log_dir(folder))


def test_predictions(config: Config, fold: int, table: features.FeatureTable) -> pd.DataFrame:
    """image_name, pred of every test row, from fold `fold`'s saved model."""
    saved = load_model(os.path.join(layout.fold_dir(config, fold), layout.TREES_MODEL))
    if saved["columns"] != table.columns:
        raise ConfigError(f"fold {fold}'s model was trained on other features than the config's features "
                          "section gives now; train the run again (`python train.py --config ... --force`)")
    return table.test[["image_name"]].assign(pred=predict(saved["model"], matrix(table.test, saved["columns"])))


def log_odds_effects(saved: dict, values: np.ndarray) -> np.ndarray:
    """How far each feature moves this row's log-odds: the log-odds with the row as it is, minus those
    with that one feature set to its training median (`reference`; missing for a model saved without
    one). A positive effect raises P(melanoma)."""
    model, columns = saved["model"], saved["columns"]
    reference = saved.get("reference")
    if reference is None:
        reference = np.full(len(columns), np.nan)
    row = np.asarray(values, dtype=np.float64).reshape(1, -1)
    changed = np.repeat(row, len(columns), axis=0)
    changed[np.arange(len(columns)), np.arange(len(columns))] = reference
    probabilities = np.clip(predict(model, np.vstack([row, changed])), 1e-12, 1 - 1e-12)
    log_odds = np.log(probabilities / (1 - probabilities))
    return log_odds[0] - log_odds[1:]
