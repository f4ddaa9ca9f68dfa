"""The one fold rule: fold k validates on the parts with `part % folds == k`.

A part never splits a patient (data/folds.py makes the parts), so a fold never does. The records, the
ISIC 2024 tables, the trees, the checks before a run and the `folds` command all ask this module, so that a
change of rule (or a reader looking for it) has one place.
"""
from __future__ import annotations


def part_fold(part, folds: int):
    """The fold that validates on `part` (an int, a numpy array or a pandas Series of part indices)."""
    return part % folds


def validates(part, folds: int, fold: int):
    """Whether fold `fold` validates on `part` (element-wise for an array or a Series)."""
    return part_fold(part, folds) == fold
