"""The trees every tree family fits (train/families/tabular.py, tbp_trees.py): scikit-learn's
HistGradientBoostingClassifier as the `trees` section sets it, its per-iteration history, permutation
importance, the saved model and each feature's effect on one row. Only NumPy, pandas, scikit-learn and
joblib: fitting trees on a metadata table loads TensorFlow only to write TensorBoard's event files
(`train.tensorboard`).
"""
from __future__ import annotations

import io
import os
import time
import warnings
from typing import Callable

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from melanoma.core import io_utils, metrics
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed
from melanoma.runs import fold_state, layout
from melanoma.train import tensorboard

# scikit-learn's OpenMP threads spin while they wait for work by default; on a CPU shared with other
# processes that spinning made fitting 5-10x slower (and prediction 30x) than passive waiting. Read when
# OpenMP starts, so it must be set before scikit-learn's compiled code first runs in the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def new_trees(config: Config, columns: list[str], categorical: list[str], fold: int):
    """The configured trees (trees section) for feature `columns` in model order, of which `categorical`
    hold category codes."""
    section = config.trees
    categorical = [column in categorical for column in columns]
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


def importance_sets(columns: list[str], group_of: Callable[[str], str],
                    by: str = "feature") -> list[tuple[str, str, str, list[int]]]:
    """(kind, name, group, column indices) of what `permutation_importance` shuffles: each statistic
    with its patient-context versions (kind `feature`; left out when `by` is "group"), and each feature
    group (kind `group`, named by `group_of`)."""
    families: dict[str, list[int]] = {}
    groups: dict[str, list[int]] = {}
    for index, column in enumerate(columns):
        families.setdefault(base_feature(column), []).append(index)
        groups.setdefault(group_of(column), []).append(index)
    sets = [("feature", name, group_of(name), indices) for name, indices in families.items()] if by == "feature" else []
    return sets + [("group", group, group, indices) for group, indices in groups.items()]


def importance_rows(target: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the validation rows permutation importance is measured on (trees.importance_rows):
    every row when `limit` is null or not exceeded; else every malignant row and a seeded draw of the
    others up to `limit` rows in all. Drawing benign rows alone leaves the AUC's expectation as it is."""
    rows = np.arange(len(target))
    if limit is None or len(rows) <= limit:
        return rows
    malignant, benign = rows[target == 1], rows[target != 1]
    take = max(0, int(limit) - len(malignant))
    drawn = np.random.default_rng(seed).choice(benign, size=min(take, len(benign)), replace=False)
    return np.sort(np.concatenate([malignant, drawn]))


def permutation_importance(model, values: np.ndarray, target: np.ndarray, columns: list[str],
                           repeats: int, seed: int, group_of: Callable[[str], str], by: str = "feature",
                           batch_rows: int = 50_000) -> pd.DataFrame:
    """AUC lost when the rows' values of a set of columns (see `importance_sets`: by feature and group, or
    by `group` only) are permuted among them, mean and std over `repeats` permutations.

    The permuted copies are predicted many at a time: one call on a tall matrix costs far less than
    as many calls on the validation rows alone (scikit-learn's per-call overhead dominates those)."""

    base = metrics.auc(target, predict(model, values))
    rng = np.random.default_rng(seed)
    sets = importance_sets(columns, group_of, by)
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


def save_model(model, columns: list[str], reference: np.ndarray, path: str, **extra) -> None:
    """The model, its feature columns (in its order), each column's median over the fold's training rows
    (the reference of `contributions`) and what else its family needs to predict (`extra`)."""
    buffer = io.BytesIO()
    joblib.dump({"model": model, "columns": columns, "reference": reference, **extra}, buffer)
    io_utils.write_bytes_atomic(path, buffer.getvalue())


def load_model(path: str) -> dict:
    return joblib.load(io.BytesIO(io_utils.read_bytes(path)))


def training_medians(values: np.ndarray) -> np.ndarray:
    """Each column's median over the training rows, NaN for a column with no value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column's median is NaN, as meant
        return np.nanmedian(values, axis=0) if len(values) else np.full(values.shape[1], np.nan)


def fresh_folder(folder: str, names) -> None:
    """The fold folder without an older training's files `names` (a retrained fold never keeps them
    beside its new ones), nor the temporary files a killed process left."""
    io_utils.makedirs(folder)
    io_utils.remove_leftovers(folder)
    for name in names:
        path = os.path.join(folder, name)
        if io_utils.exists(path):
            io_utils.remove(path)
    io_utils.remove_tree(tensorboard.log_dir(folder))


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


def fit_and_write(config: Config, fold: int, folder: str, columns: list[str], categorical: list[str],
                  training: pd.DataFrame, validation: pd.DataFrame, group_of: Callable[[str], str],
                  check_oof: Callable[[pd.DataFrame], pd.DataFrame] = lambda oof: oof,
                  fit_rows: Callable | None = None, **extra) -> dict:
    """Fit fold `fold`'s trees on the `training` rows and predict the `validation` rows (both with
    image_name, patient_id, target and the `columns`); write into `folder` the model (with `extra`), its
    state, history and importances, and last its OOF (after `check_oof`), which marks the fold finished.
    `fit_rows(train_x, train_y) -> (x, y, sample weights or None)`: what the fit itself sees, when it is more
    than the training rows (pseudo-labelled test images); history and medians keep to the training rows."""
    train_y = training["target"].to_numpy(dtype=np.int64)
    valid_y = validation["target"].to_numpy(dtype=np.int64)
    if len(np.unique(train_y)) < 2:
        raise CheckFailed(f"fold {fold}: the training part holds one class only; the model cannot learn")
    train_x, valid_x = matrix(training, columns), matrix(validation, columns)
    print(f"fold {fold}: {len(training)} training images, {len(validation)} validation images, "
          f"{len(columns)} features")
    started = time.time()
    fit_x, fit_y, weights = (train_x, train_y, None) if fit_rows is None else fit_rows(train_x, train_y)
    model = new_trees(config, columns, categorical, fold).fit(fit_x, fit_y, sample_weight=weights)
    seconds = time.time() - started
    oof = validation[["image_name", "patient_id", "target"]].assign(pred=predict(model, valid_x), fold=fold)
    oof = check_oof(oof)[["image_name", "patient_id", "target", "pred", "fold"]]
    save_model(model, columns, training_medians(train_x), os.path.join(folder, layout.TREES_MODEL), **extra)
    fold_state.write_state(folder, {"epoch": 1, "epochs": 1, "config": fold_state.fingerprint(config)})
    curves = history(model, train_x, train_y, valid_x, valid_y)
    io_utils.write_csv_atomic(curves, os.path.join(folder, layout.HISTORY))
    tensorboard.write_history(config, folder, curves)  # train.tensorboard
    section = config.trees
    if section.importance_repeats and len(np.unique(valid_y)) == 2:
        rows = importance_rows(valid_y, section.importance_rows, int(config.seed) + fold)
        importance = permutation_importance(model, valid_x[rows], valid_y[rows], columns,
                                            int(section.importance_repeats), int(config.seed) + fold, group_of,
                                            section.importance_by)
        io_utils.write_csv_atomic(importance.assign(rows=len(rows)), os.path.join(folder, layout.IMPORTANCE))
    io_utils.write_csv_atomic(oof, os.path.join(folder, layout.OOF))  # last: it marks the fold finished
    auc = metrics.auc(oof["target"], oof["pred"])
    print(f"fold {fold}: OOF AUC {auc:.4f}, pauc_tpr80 {metrics.partial_auc_above_tpr(oof['target'], oof['pred']):.4f} "
          f"({len(oof)} images), {seconds:.1f} s fitting {section.max_iter} trees")
    metrics.say_if_collapsed(fold, oof["pred"])
    return {"fold": fold, "auc": auc, "seconds": seconds}
