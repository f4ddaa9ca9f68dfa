"""`model.family: tabular`: gradient-boosted trees per fold on the features of `features.py`.

`python train.py --config configs/tabular.yaml` trains scikit-learn's HistGradientBoostingClassifier on
each fold's training part of the same records, with the same folds, duplicate drops and leak checks as a
CNN run (`sources.prepare_fold`), and writes the artifacts every other command reads:

    outputs/<name>/fold<K>/model.joblib     the fitted model and its feature columns
    outputs/<name>/fold<K>/oof.csv          OOF predictions of fold K
    outputs/<name>/fold<K>/test.csv         test predictions of fold K (+ test.json: what they depend on)
    outputs/<name>/fold<K>/history.csv      train and validation loss and AUC after each boosting iteration
    outputs/<name>/fold<K>/importance.csv   permutation importance on fold K's validation part
    outputs/<name>/fold<K>/data.json        images, malignant images and patients per split (as for a CNN)
    outputs/<name>/oof.csv                  every fold's OOF
    submissions/<name>.csv                  mean of the folds' test predictions (`python infer.py`)

so `score`, `compare`, `report`, `blend` and `submit` treat it like any run. External records
(`data.external_files`) are not used: their images have no patient context and they may never be in
validation anyway. Training is deterministic for a given `seed`.
"""
from __future__ import annotations

import copy
import io
import json
import os
import time

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from melanoma.core import io_utils, layout, metrics, plots
from melanoma.core import run_config
from melanoma.core import run_results, fold_state
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError
from melanoma.data import sources
from melanoma.input import features

# scikit-learn's OpenMP threads spin while they wait for work by default; on a CPU shared with other
# processes that spinning made fitting 5-10x slower (and prediction 30x) than passive waiting. Read when
# OpenMP starts, so it must be set before scikit-learn's compiled code first runs in the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FOLD_FILES = (layout.TREES_MODEL, layout.OOF, layout.TEST, layout.TEST_SETTINGS, layout.HISTORY, layout.IMPORTANCE)


def family(config: Config) -> str:
    """model.family of a config, `cnn` for a run saved before the key existed."""
    return (config.get("model") or {}).get("family", "cnn")


def fold_finished(config: Config, fold: int) -> bool:
    folder = layout.fold_dir(config, fold)
    return all(io_utils.exists(os.path.join(folder, name)) for name in (layout.TREES_MODEL, layout.OOF))


def check_config(config: Config) -> None:
    """The tabular section's values, checked before any record is read."""
    section = config.tabular
    if not 0 < section.learning_rate <= 1:
        raise ConfigError(f"config key 'tabular.learning_rate' must be in (0, 1], got {section.learning_rate}")
    for key in ("max_iter", "min_samples_leaf"):
        if section[key] < 1:
            raise ConfigError(f"config key 'tabular.{key}' must be at least 1, got {section[key]}")
    if section.max_leaf_nodes < 2:
        raise ConfigError(f"config key 'tabular.max_leaf_nodes' must be at least 2, got {section.max_leaf_nodes}")
    if section.l2_regularization < 0:
        raise ConfigError(f"config key 'tabular.l2_regularization' must be 0 or more, got {section.l2_regularization}")
    if not 0 < section.max_features <= 1:
        raise ConfigError(f"config key 'tabular.max_features' must be in (0, 1], got {section.max_features}")
    if section.class_weight is not None and section.class_weight <= 0:
        raise ConfigError(f"config key 'tabular.class_weight' must be positive, got {section.class_weight}")
    if section.importance_repeats < 0:
        raise ConfigError(f"config key 'tabular.importance_repeats' must be 0 or more, got "
                          f"{section.importance_repeats}")
    features.check_settings(config)


# ---------------------------------------------------------------------------------------------------
# data


def competition_only(config: Config):
    """The config without external records (the tabular model reads the competition's only)."""
    if not config.data.external_files:
        return config
    print("note: the tabular model uses the competition records only; data.external_files is ignored")
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


def build_model(config: Config, table: features.FeatureTable, fold: int):
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


def save_model(model, columns: list[str], path: str) -> None:
    buffer = io.BytesIO()
    joblib.dump({"model": model, "columns": columns}, buffer)
    io_utils.write_bytes_atomic(path, buffer.getvalue())


def load_model(path: str) -> dict:
    return joblib.load(io.BytesIO(io_utils.read_bytes(path)))


def prediction_settings(config: Config) -> dict:
    """What a fold's test predictions depend on besides its model (so infer can reuse them)."""
    return {"family": "tabular", "features": config.features.to_dict(), "test_files": config.data.test_files,
            "seed": config.seed}


def train_fold(config: Config, fold: int, table: features.FeatureTable, fold_data) -> dict:
    """Fit fold `fold`; write its model, OOF, test predictions, history and importances."""


    folder = layout.fold_dir(config, fold)
    io_utils.makedirs(folder)
    for name in FOLD_FILES:  # a retrained fold never keeps an older run's files beside its new ones
        path = os.path.join(folder, name)
        if io_utils.exists(path):
            fold_state.remove(path)
    sources.write_summary(fold_data, folder)
    training, validation = fold_rows(table, fold_data)
    train_y = training["target"].to_numpy(dtype=np.int64)
    valid_y = validation["target"].to_numpy(dtype=np.int64)
    if len(np.unique(train_y)) < 2:
        raise CheckFailed(f"fold {fold}: the training part holds one class only; the model cannot learn")
    columns = table.columns
    train_x, valid_x = matrix(training, columns), matrix(validation, columns)
    print(f"fold {fold}: {len(training)} training images, {len(validation)} validation images, "
          f"{len(columns)} features")
    started = time.time()
    model = build_model(config, table, fold).fit(train_x, train_y)
    seconds = time.time() - started

    oof = validation[["image_name", "patient_id", "target"]].assign(pred=predict(model, valid_x), fold=fold)
    oof = sources.check_oof(oof, fold_data)[["image_name", "patient_id", "target", "pred", "fold"]]
    test = table.test[["image_name"]].assign(pred=predict(model, matrix(table.test, columns)))
    save_model(model, columns, os.path.join(folder, layout.TREES_MODEL))
    io_utils.write_csv_atomic(history(model, train_x, train_y, valid_x, valid_y),
                              os.path.join(folder, layout.HISTORY))
    repeats = int(config.tabular.importance_repeats)
    both = len(np.unique(valid_y)) == 2
    if repeats and both:
        importance = permutation_importance(model, valid_x, valid_y, columns, repeats, int(config.seed) + fold)
        io_utils.write_csv_atomic(importance, os.path.join(folder, layout.IMPORTANCE))
    io_utils.write_csv_atomic(test, os.path.join(folder, layout.TEST))
    io_utils.write_text_atomic(os.path.join(folder, layout.TEST_SETTINGS), json.dumps(prediction_settings(config)))
    io_utils.write_csv_atomic(oof, os.path.join(folder, layout.OOF))  # last: it marks the fold finished
    auc = metrics.auc(oof["target"], oof["pred"])
    print(f"fold {fold}: OOF AUC {auc:.4f} ({len(oof)} images), {seconds:.1f} s fitting "
          f"{config.tabular.max_iter} trees")
    return {"fold": fold, "auc": auc, "seconds": seconds}


def train(config: Config, folds: list[int], force: bool = False, resume: bool = False, config_file: str | None = None) -> int:
    """`train.py` for model.family tabular: every fold of `folds` not finished yet (all with force).

    The run is bound to its config as a CNN run is (`run_config.bind_run`): a changed config is refused, and
    --force moves the old run aside."""
    check_config(config)
    if resume:
        print("note: a tabular fold trains in one go; --resume trains the folds not finished yet")
    todo = [fold for fold in folds if force or not fold_finished(config, fold)]
    # The features (and the stacking checks) come first: a refused config leaves the run as it was.
    table, fold_data = prepare(config) if todo else (None, None)
    config_path = (run_config.bind_run(config, config_file, force=force) if config_file
                   else run_config.save_config(config))
    print(f"run {config.name}: resolved config in {config_path}")
    for fold in sorted(set(folds) - set(todo)):
        print(f"fold {fold}: already finished (use --force to train it again)")
    for fold in todo:
        train_fold(config, fold, table, fold_data[fold])
    run_results.report_oof(config, fold_finished)
    return 0


# ---------------------------------------------------------------------------------------------------
# inference


def fold_test_predictions(config: Config, fold: int, recompute: bool, cache: dict) -> pd.DataFrame:
    """The fold's test.csv when it was made with the same settings, else its model predicts again."""
    folder = layout.fold_dir(config, fold)
    path, settings_path = os.path.join(folder, layout.TEST), os.path.join(folder, layout.TEST_SETTINGS)
    wanted = prediction_settings(config)
    if not recompute and io_utils.exists(path) and io_utils.exists(settings_path):
        if json.loads(io_utils.read_text(settings_path)) == wanted:
            print(f"fold {fold}: reusing {path}")
            return io_utils.read_csv(path, dtype={"image_name": str})
    if "table" not in cache:
        cache["table"] = prepare(config)[0]
    table = cache["table"]
    saved = load_model(os.path.join(folder, layout.TREES_MODEL))
    if saved["columns"] != table.columns:
        raise ConfigError(f"fold {fold}'s model was trained on other features than the config's features "
                          f"section gives now; train the run again (`python train.py --config ... --force`)")
    frame = table.test[["image_name"]].assign(pred=predict(saved["model"], matrix(table.test, saved["columns"])))
    io_utils.write_csv_atomic(frame, path)
    io_utils.write_text_atomic(settings_path, json.dumps(wanted))
    return frame


# ---------------------------------------------------------------------------------------------------
# report


def importance_report(run_path: str, folder: str, top: int = 25) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """(importances averaged over folds, files written, notes) for `report`: importance.csv over folds
    (mean and std across folds of each fold's mean AUC drop) and importance.png (the `top` features
    and every group)."""

    frames = []
    for entry in sorted(os.listdir(run_path)):
        path = os.path.join(run_path, entry, layout.IMPORTANCE)
        if entry.startswith("fold") and os.path.isfile(path):
            frames.append(io_utils.read_csv(path).assign(fold=int(entry[4:])))
    if not frames:
        return None, [], ["no fold<K>/importance.csv (tabular.importance_repeats: 0?); importances left out"]
    every = pd.concat(frames, ignore_index=True)
    table = (every.groupby(["kind", "name", "group"], sort=False)["auc_drop"]
             .agg(auc_drop="mean", auc_drop_fold_std="std", folds="count").reset_index())
    table["auc_drop_fold_std"] = table["auc_drop_fold_std"].fillna(0.0)
    table = table.sort_values(["kind", "auc_drop"], ascending=[True, False], ignore_index=True)
    files = []
    path = os.path.join(folder, layout.IMPORTANCE)
    io_utils.write_csv_atomic(table, path)
    files.append(path)

    plt = plots.pyplot()
    shown = [table[table["kind"] == "feature"].head(top), table[table["kind"] == "group"]]
    figure, axes_list = plt.subplots(1, 2, figsize=(13, max(4, 0.28 * len(shown[0]) + 1)),
                                     gridspec_kw={"width_ratios": [3, 2]})
    for axes, part, title in zip(axes_list, shown, (f"top {len(shown[0])} features", "feature groups")):
        part = part.iloc[::-1]
        axes.barh(part["name"], part["auc_drop"], xerr=part["auc_drop_fold_std"], color="tab:blue", alpha=0.8)
        axes.axvline(0, color="grey", lw=1)
        axes.set(xlabel="OOF AUC lost when permuted (mean over folds)", title=title)
        axes.tick_params(axis="y", labelsize=7)
        axes.grid(alpha=0.3, axis="x")
    figure.suptitle(f"permutation importance on each fold's validation part ({len(frames)} folds)")
    path = os.path.join(folder, "importance.png")
    plots.save(figure, path)
    files.append(path)
    return table, files, []


def format_importance(table: pd.DataFrame, top: int = 10) -> str:
    """The groups and the `top` features, as text."""
    lines = ["permutation importance (AUC lost when permuted, mean over folds):"]
    for kind, limit in (("group", None), ("feature", top)):
        part = table[table["kind"] == kind]
        part = part.head(limit) if limit else part
        lines.append(f"  {'group' if kind == 'group' else 'feature':<44}{'AUC drop':>10}{'fold std':>10}")
        lines += [f"  {row['name']:<44}{row['auc_drop']:>10.4f}{row['auc_drop_fold_std']:>10.4f}"
                  for _, row in part.iterrows()]
    return "\n".join(lines)
