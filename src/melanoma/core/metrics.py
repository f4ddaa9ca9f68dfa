"""The one ROC AUC every stage uses (per-epoch validation, OOF, blends, importances, scoring), and the log loss.

The AUC is scikit-learn's `roc_auc_score`, as the competition computes it (ties count one half); where
the rows hold one class only it is NaN instead of an error, so a fold or an epoch without a malignant
image is reported, not fatal.
"""
from __future__ import annotations

import numpy as np


def auc(target, pred, weight=None) -> float:
    """ROC AUC of `pred` against 0/1 `target` (each row counting `weight` when given); NaN when `target`
    holds one class (among the rows that weigh anything)."""
    # scikit-learn's metrics take about a second to import: only the commands that score pay for it
    from sklearn.metrics import roc_auc_score

    target = np.asarray(target)
    counted = target if weight is None else target[np.asarray(weight, dtype=float) > 0]
    if len(np.unique(counted)) < 2:
        return float("nan")
    return float(roc_auc_score(target, np.asarray(pred, dtype=float), sample_weight=weight))


def binary_log_loss(target, pred, weight=None) -> float:
    """Mean binary cross-entropy of probabilities `pred` (clipped away from 0 and 1), weighted by `weight`
    when given."""
    pred = np.clip(np.asarray(pred, dtype=float), 1e-7, 1 - 1e-7)
    target = np.asarray(target)
    return float(-np.average(target * np.log(pred) + (1 - target) * np.log(1 - pred), weights=weight))
