"""Epoch selection without peeking: the OOF AUC when no fold's epoch is chosen on its own images.

Training keeps, for every fold, the plain (no TTA) prediction of every validation image after every epoch
in `fold<K>/val_epochs.csv` (image_name, epoch, pred). With `train.checkpoint: best_auc` each fold keeps
the epoch whose AUC on its validation images is best and then reports OOF on those same images, so the
OOF AUC is flattered by the choice, more so with more epochs and noisier folds. Here each fold instead
takes its predictions at the epoch that maximises the mean validation AUC of the *other* folds:

  auc_unselected  OOF AUC (all folds pooled, as the competition scores) of those predictions
  auc_own_best    OOF AUC of each fold's predictions at its own best epoch (plain, no TTA)
  selection_gain  auc_own_best - auc_unselected: what choosing on the scored images added

Both use the plain per-epoch predictions, so TTA is not part of the gain. Ties between epochs go to the
earliest. No TensorFlow here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from melanoma.core import io_utils, metrics
from melanoma.core.errors import DataError
from melanoma.runs import layout

VAL_EPOCH_COLUMNS = ("image_name", "epoch", "pred")


@dataclass
class Selection:
    """What the per-epoch predictions of a run say about its epoch choice (see the module docstring)."""
    auc_unselected: float | None = None
    auc_own_best: float | None = None
    selection_gain: float | None = None
    # fold -> {"epoch_unselected": E chosen by the other folds, "epoch_own_best": E best on itself}
    folds: dict = field(default_factory=dict)
    fold_aucs: pd.DataFrame | None = None    # validation AUC, epochs (rows) x folds (columns)
    frame: pd.DataFrame | None = None        # the OOF rows with the unselected predictions
    reason: str | None = None                # why auc_unselected is missing, when it is
    notes: list = field(default_factory=list)  # warnings for the user

    def to_json(self) -> dict:
        def number(value):
            return None if value is None or not np.isfinite(value) else float(value)

        return {"auc_unselected": number(self.auc_unselected), "auc_own_best": number(self.auc_own_best),
                "selection_gain": number(self.selection_gain),
                "epoch_selection": {str(fold): value for fold, value in self.folds.items()},
                "unselected_reason": self.reason}


def val_epochs_path(run_dir: str, fold: int) -> str:
    return os.path.join(layout.fold_path(run_dir, fold), layout.VAL_EPOCHS)


def read_val_epochs(path: str) -> pd.DataFrame:
    """A fold's val_epochs.csv, checked: the three columns, whole epochs, finite predictions, no
    image twice in one epoch. A DataError names the problem."""
    try:
        frame = io_utils.read_csv(path, dtype={"image_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV ({error.__class__.__name__}); train the fold "
                        "again with --force") from None
    missing = [column for column in VAL_EPOCH_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; expected {','.join(VAL_EPOCH_COLUMNS)}")
    epoch = pd.to_numeric(frame["epoch"], errors="coerce")
    pred = pd.to_numeric(frame["pred"], errors="coerce")
    if epoch.isna().any() or (epoch != np.round(epoch)).any() or (epoch < 1).any():
        raise DataError(f"{path}: epoch must be a whole number from 1")
    if not np.isfinite(pred).all():
        raise DataError(f"{path}: missing or non-finite predictions")
    frame = pd.DataFrame({"image_name": frame["image_name"].astype(str), "epoch": epoch.astype(int),
                          "pred": pred.astype(float)})
    if frame.duplicated(["image_name", "epoch"]).any():
        raise DataError(f"{path}: an image appears twice in one epoch")
    return frame


def _first_best(values: pd.Series) -> int | None:
    """The epoch of the highest value (the earliest on ties); None when every value is NaN."""
    finite = values.dropna()
    return int(finite.idxmax()) if len(finite) else None


def epoch_selection(oof: pd.DataFrame, run_dir: str | None) -> Selection:
    """Evaluate the epoch choice of the run in `run_dir` against its checked OOF table `oof`.

    `oof` gives each image's fold, target and patient; `run_dir/fold<K>/val_epochs.csv` the per-epoch
    predictions. When the files are absent (a blend, a run trained before they existed, an OOF file
    outside its run folder) the result carries only a `reason`.
    """
    result = Selection()
    folds = sorted(int(fold) for fold in oof["fold"].unique())
    found = _val_epoch_files(folds, run_dir, result)
    if found is None:
        return result
    tables = _read_fold_tables(oof, found, result)
    if tables is None:
        return result
    common = _common_epochs(tables, result)
    if common is None:
        return result
    joined, result.fold_aucs = _fold_aucs(oof, tables, common)
    chosen, own = _choose_epochs(result.fold_aucs, folds, result)
    if chosen is None:
        return result
    result.auc_unselected, result.frame = _pooled(joined, folds, chosen)
    one_class = [fold for fold in folds if own[fold] is None]
    if one_class:
        result.notes.append(f"selection_gain left out: fold(s) {', '.join(map(str, one_class))} hold one "
                            "class, so they have no best epoch of their own")
    else:
        result.auc_own_best, _ = _pooled(joined, folds, own)
        result.selection_gain = result.auc_own_best - result.auc_unselected
    return result


def _val_epoch_files(folds: list, run_dir: str | None, result: Selection) -> dict | None:
    """fold -> its val_epochs.csv when every fold has one and there are two folds or more; otherwise
    None, with the reason (and any note) set on `result`."""
    paths = {fold: val_epochs_path(run_dir, fold) for fold in folds} if run_dir else {}
    found = {fold: path for fold, path in paths.items() if io_utils.exists(path)}
    if not found:
        result.reason = ("no fold<K>/val_epochs.csv beside the OOF (a blend, a run older than them, or an "
                         "OOF file outside its run folder)")
        return None
    if len(found) < len(folds):
        absent = [fold for fold in folds if fold not in found]
        result.reason = f"fold(s) {', '.join(map(str, absent))} have no val_epochs.csv"
        result.notes.append(f"auc_unselected left out: {result.reason} ({paths[absent[0]]} and so on)")
        return None
    if len(folds) < 2:
        result.reason = "one fold only: no other fold to choose its epoch"
        return None
    return found


def _read_fold_tables(oof: pd.DataFrame, found: dict, result: Selection) -> dict | None:
    """fold -> its checked per-epoch predictions, each epoch holding exactly the fold's OOF images;
    None at the first fold that fails, with the reason and a note set on `result`."""
    tables = {}
    for fold, path in found.items():
        try:
            epochs = read_val_epochs(path)
        except DataError as error:  # the OOF still scores; only this number is lost
            result.reason = f"fold {fold}'s val_epochs.csv does not read"
            result.notes.append(f"auc_unselected left out: {error}")
            return None
        expected = set(oof.loc[oof["fold"] == fold, "image_name"])
        bad_epochs = [int(epoch) for epoch, rows in epochs.groupby("epoch") if set(rows["image_name"]) != expected]
        if bad_epochs:
            result.reason = f"fold {fold}'s val_epochs.csv does not hold the fold's OOF images at every epoch"
            result.notes.append(f"auc_unselected left out: {path} does not list exactly the fold's "
                                f"{len(expected)} OOF images at epoch(s) {', '.join(map(str, bad_epochs[:5]))}")
            return None
        tables[fold] = epochs
    return tables


def _common_epochs(tables: dict, result: Selection) -> list | None:
    """The sorted epochs every fold has; None (reason set) when there are none."""
    epoch_sets = {fold: set(table["epoch"]) for fold, table in tables.items()}
    common = sorted(set.intersection(*epoch_sets.values()))
    if not common:
        result.reason = "the folds' val_epochs.csv share no epoch"
        result.notes.append(f"auc_unselected left out: {result.reason}")
        return None
    if any(epochs != set(common) for epochs in epoch_sets.values()):
        result.notes.append(f"the folds' val_epochs.csv hold different epochs; epochs "
                            f"{common[0]}..{common[-1]} that every fold has are compared")
    return common


def _fold_aucs(oof: pd.DataFrame, tables: dict, common: list) -> tuple[dict, pd.DataFrame]:
    """fold -> its OOF truth joined to its predictions at the common epochs, and the validation AUC
    table (epochs x folds)."""
    truth = oof[["image_name", "patient_id", "target", "fold"]]
    joined = {fold: truth.merge(table[table["epoch"].isin(common)], on="image_name")
              for fold, table in tables.items()}
    aucs = pd.DataFrame({fold: {epoch: metrics.auc(rows["target"].to_numpy(), rows["pred"].to_numpy())
                                for epoch, rows in frame.groupby("epoch")}
                         for fold, frame in joined.items()}).reindex(common)
    aucs.index.name = "epoch"
    return joined, aucs


def _choose_epochs(aucs: pd.DataFrame, folds: list, result: Selection) -> tuple[dict | None, dict | None]:
    """fold -> the epoch its other folds choose, and fold -> its own best epoch, recorded in
    `result.folds`; (None, None) with the reason set when some fold's others have no AUC."""
    chosen, own = {}, {}
    for fold in folds:
        others = aucs.drop(columns=fold)
        chosen[fold] = _first_best(others.mean(axis=1, skipna=True))  # NaN where no other fold has an AUC
        own[fold] = _first_best(aucs[fold])
        result.folds[fold] = {"epoch_unselected": chosen[fold], "epoch_own_best": own[fold]}
    undefined = [fold for fold in folds if chosen[fold] is None]
    if undefined:
        result.reason = (f"the other folds of fold(s) {', '.join(map(str, undefined))} have no validation "
                         "AUC (one class only)")
        result.notes.append(f"auc_unselected left out: {result.reason}")
        return None, None
    return chosen, own


def _pooled(joined: dict, folds: list, epochs: dict) -> tuple[float, pd.DataFrame]:
    """The pooled OOF AUC and rows when each fold takes its predictions at `epochs[fold]`."""
    rows = pd.concat([joined[fold][joined[fold]["epoch"] == epochs[fold]] for fold in folds],
                     ignore_index=True)
    rows = rows[["image_name", "patient_id", "target", "pred", "fold"]]
    return metrics.auc(rows["target"].to_numpy(), rows["pred"].to_numpy()), rows
