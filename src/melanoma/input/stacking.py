"""Other runs' predictions as features (`features.from_runs`), for every tree family: a run's OOF prediction
for a training row, its test prediction (the mean over its folds) for a test row. A run whose folds differ
from this config's is refused, so no row's feature comes from a model that trained on that row. Light (no
TensorFlow): the runs' CSVs are read through runs/run_results.py.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from melanoma.core.config import Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.runs import run_results


def stacked_member(path: str, where: str):
    """(the run at `path` as a run_results.Member, its test predictions or None, where they come from);
    ConfigError naming the features.from_runs entry when it cannot be read."""
    if not os.path.isdir(path):
        name = os.path.basename(path)
        raise ConfigError(f"{where}: no run folder {path}; train and infer that run first "
                          f"(`python train.py --config configs/{name}.yaml`)")
    try:
        member = run_results.Member(path)
        test, source = member.test_predictions()
    except DataError as error:
        raise ConfigError(f"{where}: {error}") from None
    return member, test, source


def test_column(name: str, test, source: str, test_names: pd.Series) -> np.ndarray:
    """Run `name`'s test prediction of each of `test_names`; ConfigError when it has none for some."""
    where = f"features.from_runs entry '{name}'"
    if test is None:
        raise ConfigError(f"{where}: no test predictions ({source}); run "
                          f"`python infer.py --config configs/{name}.yaml` first")
    absent = test_names[~test_names.isin(test.index)]
    if len(absent):
        raise ConfigError(f"{where}: its test predictions ({source}) lack {len(absent)} test images "
                          f"(e.g. {', '.join(absent.head(3))}); predict the same test files")
    return test_names.map(test).to_numpy(dtype=np.float64)


def stacked_test(config: Config, test_names: pd.Series) -> pd.DataFrame:
    """run_<name> of the test rows alone, for each run of features.from_runs (prediction needs no
    training row: the folds were checked when the run trained)."""
    columns = {}
    for name in map(str, config.features.from_runs):
        _, test, source = stacked_member(os.path.join(config.output_dir, name), f"features.from_runs entry '{name}'")
        columns[f"run_{name}"] = test_column(name, test, source, test_names)
    return pd.DataFrame(columns, index=test_names.index)


def stacking_features(config: Config, train_names: pd.Series, test_names: pd.Series | None,
                      folds: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """run_<name> for each run of features.from_runs: its OOF prediction for training rows, its test
    prediction for test rows (None without `test_names`: a family that predicts its test rows at infer
    only, with `stacked_test`).

    `folds` (image_name -> fold) holds every training row this config scores, with this config's fold;
    each run must have scored each of them out of fold with the same fold number, so the value of a row
    never comes from a model that trained on it. Rows outside `folds` (dropped duplicates) get NaN.
    """
    train_columns, test_columns = {}, {}
    for name in config.features.from_runs:
        name = str(name)
        where = f"features.from_runs entry '{name}'"
        if name == config.name:
            raise ConfigError(f"{where} is this run itself; stack other runs")
        member, test, source = stacked_member(os.path.join(config.output_dir, name), where)
        oof = member.oof.drop_duplicates("image_name").set_index("image_name")
        absent = folds.index[~folds.index.isin(oof.index)]
        if len(absent):
            raise ConfigError(f"{where}: its OOF lacks {len(absent)} of this run's training images (e.g. "
                              f"{', '.join(map(str, absent[:3]))}); stack only runs trained on the same "
                              "data.train_files (and data.duplicates_csv)")
        theirs = oof.loc[folds.index, "fold"].astype(np.int64)
        differ = theirs.to_numpy() != folds.to_numpy(dtype=np.int64)
        if differ.any():
            image = folds.index[np.argmax(differ)]
            raise ConfigError(
                f"{where}: its folds differ from this config's ({int(differ.sum())} images, e.g. {image} in its "
                f"fold {int(theirs[image])}, here fold {int(folds[image])}): its OOF prediction of a training "
                "row could come from a model that trained on rows this run validates on. Stack only runs "
                "with the same data.train_files and data.folds")
        column = f"run_{name}"
        known = pd.Series(oof["pred"].to_numpy(dtype=np.float64), index=oof.index)
        train_columns[column] = train_names.map(known.where(known.index.isin(folds.index))).to_numpy()
        if test_names is not None:
            test_columns[column] = test_column(name, test, source, test_names)
    return (pd.DataFrame(train_columns, index=train_names.index),
            None if test_names is None else pd.DataFrame(test_columns, index=test_names.index))
