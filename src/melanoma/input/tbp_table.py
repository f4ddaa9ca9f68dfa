"""The ISIC 2024 metadata tables as the trees of `model.family: tbp_trees` read them: the `train.csv` and
`test.csv` that `records --isic2024` writes beside its records, found from `data.train_files` and
`data.test_files`, their rows turned into features by `tbp_features` (measurements, clinical columns and
categoricals; the derived group when `features.tbp_derived`; patient context when
`features.patient_context`) plus other runs' predictions (`features.from_runs`, see `stacking`).

The folds are the records' folds: a row's part is the part of the record file that holds its crop, and
fold k validates on the parts with part % data.folds == k. The tables are checked against the records'
file names (each part's row count against its file's image count: the two come from one `records` run) and
patients against parts (a patient in one part only), so the trees and a CNN on the same records score the
same images in the same folds. The categorical codes come from the training table and are saved with each
fold's model, so that test rows are coded alike where the training table is not at hand (a notebook that
predicts the hidden test set).

No TensorFlow here: pandas and NumPy over the tables; the records are only listed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from melanoma.core import fold_rule, io_utils
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError, DataError
from melanoma.data import record_format
from melanoma.input import stacking, tbp_features

TABLES = {"train": "train.csv", "test": "test.csv"}
KEYS = {"train": ("image_name", "patient_id", "patient_id_code", "part", "target"),
        "test": ("image_name", "patient_id", "patient_id_code", "part")}


@dataclass
class TbpTable:
    """Feature rows of one split (`frame`: image_name, patient_id (the records' code), part, target for
    training rows, then `columns` in model order), which of the columns are categorical codes, and the
    categoricals' vocabulary (from the training table)."""

    frame: pd.DataFrame
    columns: list[str]
    categorical: list[str]
    vocabulary: dict


def table_path(config: Config, split: str) -> tuple[str, list]:
    """(path of the split's table beside its records, the record files); ConfigError / DataError saying
    how to make it."""
    key = "data.train_files" if split == "train" else "data.test_files"
    files = record_format.list_files(config.get_path(key), key)
    folders = sorted({os.path.dirname(f.path) for f in files})
    if len(folders) != 1:
        raise ConfigError(f"config key '{key}' matches records in {len(folders)} folders ({', '.join(folders[:3])}); "
                          f"model.family tbp_trees reads the {TABLES[split]} that `records --isic2024` writes beside "
                          "its records: give the records of one folder")
    path = os.path.join(folders[0], TABLES[split])
    if not io_utils.exists(path):
        raise DataError(f"{folders[0]} has no {TABLES[split]}: model.family tbp_trees reads the metadata table that "
                        f"`python -m melanoma records --isic2024 DIR --out {folders[0]}` writes beside the records")
    return path, files


def read_table(config: Config, split: str) -> pd.DataFrame:
    """The split's table, checked against its records: its key columns there, each part's rows as many as
    the part's file holds, no image twice, and (training) each patient in one part and targets 0 or 1."""
    path, files = table_path(config, split)
    table = io_utils.read_csv(path, dtype={"image_name": str, "isic_id": str, "patient_id": str}, low_memory=False)
    missing = [column for column in KEYS[split] if column not in table.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: it is not a table of `records --isic2024`; "
                        "build the records and tables again")
    counts = table["part"].value_counts().to_dict()
    expected = {f.part: f.count for f in files}
    if counts != expected:
        part = next(p for p in sorted(set(counts) | set(expected)) if counts.get(p) != expected.get(p))
        raise DataError(f"{path} and its records disagree: part {part} has {counts.get(part, 0)} rows in the table "
                        f"and {expected.get(part, 0)} images in the records; they come from two `records` runs: "
                        "build them again together")
    if table["image_name"].duplicated().any():
        raise DataError(f"{path} lists image {table.loc[table['image_name'].duplicated(), 'image_name'].iloc[0]} twice")
    if split == "train":
        check_training_rows(table, path)
    return table


def check_training_rows(table: pd.DataFrame, path: str) -> None:
    if not table["target"].isin([0, 1]).all():
        raise DataError(f"{path}: target must be 0 or 1 (found {sorted(set(table['target']) - {0, 1})[:3]})")
    known = table[table["patient_id"].notna()]
    spread = known.groupby("patient_id")["part"].nunique()
    if (spread > 1).any():
        raise CheckFailed(f"{path}: patient {spread[spread > 1].index[0]} has lesions in {int(spread.max())} parts; "
                          "a fold must never split a patient: build the records again with `records --isic2024`")


def features_of(table: pd.DataFrame, config: Config, vocabulary: dict, stacked: pd.DataFrame) -> TbpTable:
    """The feature rows of one split's `table` (patient context within it), `stacked` (run_<name>, aligned
    with the table's rows) taken in as numeric features of their own."""
    rows = table.reset_index(drop=True).copy()
    extra = list(stacked.columns)
    for column in extra:
        rows[column] = stacked[column].to_numpy(dtype=np.float64)
    built = tbp_features.build(rows, vocabulary, derived=bool(config.features.tbp_derived),
                               patient_context=bool(config.features.patient_context), extra=extra)
    keys = rows[[c for c in ("image_name", "patient_id_code", "target", "part") if c in rows.columns]]
    keys = keys.rename(columns={"patient_id_code": "patient_id"})
    frame = pd.concat([keys, built.frame], axis=1)
    return TbpTable(frame=frame, columns=built.columns, categorical=built.categorical, vocabulary=vocabulary)


def fold_of(table: pd.DataFrame, folds: int) -> pd.Series:
    """image_name -> fold (part % folds) of every training row: all of them are scored out of fold."""
    return pd.Series(fold_rule.part_fold(table["part"], folds).to_numpy(dtype=np.int64),
                     index=table["image_name"].to_numpy())


def training_rows(config: Config) -> TbpTable:
    """Every training row's features, other runs' OOF predictions stacked in (their folds checked)."""
    table = read_table(config, "train")
    vocabulary = tbp_features.vocabularies(table)
    stacked, _ = stacking.stacking_features(config, table["image_name"], None, fold_of(table, config.data.folds))
    return features_of(table, config, vocabulary, stacked)


def test_rows(config: Config, vocabulary: dict) -> TbpTable:
    """Every test row's features, coded with the training table's `vocabulary`, other runs' test
    predictions stacked in."""
    table = read_table(config, "test")
    stacked = stacking.stacked_test(config, table["image_name"])
    return features_of(table, config, vocabulary, stacked)
