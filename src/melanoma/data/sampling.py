"""Negative downsampling of a fold's training part (`data.negatives_per_positive`), for every model family.

With about one malignant lesion in a thousand (ISIC 2024), a fold's training part is almost all benign:
most of an epoch (or most of the trees' rows) teaches what a benign lesion looks like, again and again.
Keeping `ratio` benign images per malignant one, drawn once per fold with the run's seed and the fold's
number, trains on every malignant image and a fair sample of the others. Only the training part is
sampled: validation, and so the OOF predictions and every score, keep every image. Pure NumPy and pandas,
so that the CNN's fold data (`sources.prepare_fold`) and the trees' tables share the one rule. The
ratio's value is checked with the config (core/config.py).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def negatives_dropped(training: pd.DataFrame, ratio, seed: int) -> np.ndarray:
    """The image names of `training` (columns image_name, target) that negative downsampling leaves out:
    of its benign rows, all but ceil(ratio x malignant rows), drawn with `seed`; none when `ratio` is
    null, when there are no more benign rows than that, or when there is no malignant row (the fold then
    trains on what it has). The draw depends on the names, not on the rows' order."""
    if ratio is None or training.empty:
        return np.array([], dtype=object)
    target = training["target"].to_numpy()
    positives = int((target == 1).sum())
    negatives = np.sort(training.loc[target == 0, "image_name"].astype(str).to_numpy())
    keep = math.ceil(ratio * positives)
    if not positives or keep >= len(negatives):
        return np.array([], dtype=object)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(negatives), dtype=bool)
    chosen[rng.choice(len(negatives), size=keep, replace=False)] = True
    return negatives[~chosen]


def summary(training: pd.DataFrame, dropped: np.ndarray, ratio) -> dict:
    """What data.json records about the draw: the ratio, the benign images kept and left out."""
    benign = int((training["target"] == 0).sum()) if not training.empty else 0
    return {"negatives_per_positive": ratio, "benign_kept": benign - len(dropped), "benign_left_out": len(dropped)}
