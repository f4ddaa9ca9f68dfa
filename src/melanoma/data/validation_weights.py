"""Validation images weighted or selected by how much they look like the test images (an option, never a
default): `validation_weights.file` names a `melanoma shift --between train,test` test_likeness.csv, whose
`likeness` is each training image's out-of-fold probability of being a test image (evaluate/shift.py).

- `validation_weights.weighting: odds`: an image's weight is its odds of being a test image, p / (1 - p): the
  classifier's estimate of the test images' density over the training images' at that image (up to one
  factor, the sets' sizes), so a weighted validation score estimates the score on images distributed as the
  test images are (importance weighting under covariate shift). Weights are scaled to mean 1 over a fold's
  validation images and capped at CAP times that mean, so a few near-certain images cannot decide a fold.
- `validation_weights.weighting: top`: the `validation_weights.top` share of each fold's validation images with
  the highest likeness count (weight 1), the rest not (weight 0).

Where it counts: a CNN fold's per-epoch val_auc and val_loss (so `train.checkpoint: best_auc` chooses the
epoch on test-like images), and `weight` in the run's oof.csv, from which `score` adds `auc_weighted` beside
the plain OOF AUC (which stays what it was: every validation image counted once).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from melanoma.core.config import Config
from melanoma.core.errors import DataError
from melanoma.core.tables import first_few, numbers, read_string_table

CAP = 10.0        # the most an image weighs, in means of its fold's weights
EDGE = 1e-3       # likeness is kept in [EDGE, 1 - EDGE]: odds stay finite


def read_likeness(path: str) -> pd.Series:
    """image_name -> likeness of the training images in a shift likeness CSV; DataError for a file that is not
    one, or that compares other sets than train and test."""
    table = read_string_table(path)
    missing = [column for column in ("image_name", "set", "likeness") if column not in table.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: validation_weights.file takes the "
                        "test_likeness.csv of `python -m melanoma shift --config ... --between train,test`")
    sets = set(table["set"].astype(str))
    if not sets <= {"train", "test"}:
        raise DataError(f"{path} compares {', '.join(sorted(sets))}, not train and test: give the test_likeness.csv "
                        "of `melanoma shift --between train,test`")
    train = table[table["set"].astype(str) == "train"]
    values, bad = numbers(train["likeness"])
    wrong = bad | ~values.between(0, 1)  # the images named are those out of range too, not only the non-numbers
    if wrong.any():
        raise DataError(f"{path}: likeness must be a number in [0, 1] (images {first_few(train['image_name'][wrong])})")
    return pd.Series(values.to_numpy(dtype=np.float64), index=train["image_name"].astype(str).to_numpy())


def likeness(config: Config) -> pd.Series | None:
    """The config's training images' test-likeness, or None when validation_weights.file is off."""
    path = config.validation_weights.file
    return None if not path else read_likeness(path)


def fold_weights(config: Config, names, known: pd.Series | None = None) -> np.ndarray | None:
    """The weights of one fold's validation images `names` under the config's rule (None when the option
    is off); DataError naming images the CSV does not hold (made for other records)."""
    known = likeness(config) if known is None else known
    if known is None:
        return None
    names = pd.Index(np.asarray(names).astype(str))
    absent = names[~names.isin(known.index)]
    if len(absent):
        raise DataError(f"{config.validation_weights.file} has no test-likeness for {len(absent)} validation image(s) "
                        f"(e.g. {first_few(absent)}): run `python -m melanoma shift --config ...` on this config's "
                        "records again")
    values = np.clip(known.loc[names].to_numpy(dtype=np.float64), EDGE, 1 - EDGE)
    if config.validation_weights.weighting == "top":
        keep = max(1, int(round(config.validation_weights.top * len(values))))
        order = np.argsort(-values, kind="stable")
        weights = np.zeros(len(values))
        weights[order[:keep]] = 1.0
        return weights
    odds = values / (1 - values)
    odds = odds / odds.mean()
    return np.minimum(odds, CAP) / np.minimum(odds, CAP).mean()


def oof_with_weights(config: Config, oof: pd.DataFrame) -> pd.DataFrame:
    """The run's OOF with each row's `weight` (computed within its fold), or as it is with the option off."""
    known = likeness(config)
    if known is None:
        return oof
    weights = pd.Series(np.nan, index=oof.index)
    for _, rows in oof.groupby("fold"):
        weights.loc[rows.index] = fold_weights(config, rows["image_name"], known)
    return oof.assign(weight=weights.to_numpy())
