"""Data that cannot be scored is refused before training, for every model family.

AUC needs both classes. A fold whose validation part holds only benign images scores `nan`, and a run
that trains on one class learns nothing; both used to train to the end and be marked finished with an
OOF AUC of nan and no word on why. The rule is checked on the targets alone (pure pandas), before any
fold trains: on the competition tables for the CNN (sources.check_splits_apart), and on each fold's
exact rows as a net (sources.prepare_fold, tbp_trees' table), so every family says the same thing.
"""
from __future__ import annotations

import pandas as pd

from melanoma.core.errors import DataError


def _counts(targets: pd.Series) -> str:
    malignant = int((targets == 1).sum())
    return f"{len(targets) - malignant} benign and {malignant} malignant"


def check_training(targets: pd.Series, what: str) -> None:
    """DataError (with the counts) when the images a model learns from are all of one class."""
    if targets.nunique() < 2:
        raise DataError(f"{what} hold {_counts(targets)} images: a model cannot learn to tell the classes apart "
                        "(and AUC needs both); give records with malignant and benign images")


def check_validation(fold: int, targets: pd.Series, folds: int) -> None:
    """DataError (with the counts) when fold `fold`'s validation images are all of one class: its AUC, and
    so the OOF's, would be nan."""
    if targets.nunique() < 2:
        fewer = f"set data.folds to at most {folds - 1}, or " if folds > 2 else ""
        raise DataError(f"fold {fold} cannot be scored: its validation images are {_counts(targets)} (AUC needs "
                        f"both classes); {fewer}build the records with more malignant patients, spread over "
                        "the parts (`records` stratifies them)")


def check_folds(targets: pd.Series, fold_of: pd.Series, folds: int, training_too: bool = True) -> None:
    """The images hold both classes (when `training_too`: no external images add to training) and every
    fold of `folds` (fold_of: each image's fold) validates on both; then each fold also trains on both (the
    other folds' validation images)."""
    targets, fold_of = pd.Series(targets).reset_index(drop=True), pd.Series(fold_of).reset_index(drop=True)
    if training_too:
        check_training(targets, "data.train_files")
    for fold in range(folds):
        check_validation(fold, targets[fold_of == fold], folds)
