"""The one ROC AUC every stage uses (per-epoch validation, OOF, blends, importances, scoring), the ISIC 2024
challenge's partial AUC (per-epoch validation and its checkpoint choice, scoring), and the log loss.

The AUC is scikit-learn's `roc_auc_score`, as the competition computes it (ties count one half); where
the rows hold one class only it and the partial AUC are NaN instead of an error, so a fold or an epoch
without a malignant image is reported, not fatal.
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


# A model whose outputs barely move has collapsed to a constant: its logits (log-odds) spread less than
# this (a standard deviation of 0.1 is odds within about 10% of each other for most images). A model that
# learned anything, even weakly, spreads its logits by tenths to whole units; a collapsed one by hundredths.
COLLAPSE_LOGIT_STD = 0.1


def logit_spread(pred) -> float:
    """Standard deviation of the predictions' log-odds (probabilities clipped away from 0 and 1)."""
    pred = np.clip(np.asarray(pred, dtype=float), 1e-7, 1 - 1e-7)
    return float(np.std(np.log(pred / (1 - pred)))) if len(pred) else float("nan")


def collapse_problem(pred) -> str | None:
    """Why predictions are near-constant (a network that collapsed to one output), or None when they spread."""
    spread = logit_spread(pred)
    if len(np.asarray(pred)) < 2 or not spread < COLLAPSE_LOGIT_STD:
        return None
    pred = np.asarray(pred, dtype=float)
    return (f"near-constant predictions ({pred.min():.4g}..{pred.max():.4g}, log-odds std {spread:.3g} < "
            f"{COLLAPSE_LOGIT_STD}): the model collapsed to one output")


def say_if_collapsed(fold: int, pred, advice: str = "") -> None:
    """Print fold `fold`'s COLLAPSED line when its OOF predictions are near-constant (`collapse_problem`), as
    every family's fold ends: the AUC printed above it means nothing, and a reader of the log must not take
    it for a result. `advice` follows, for a family that knows what to change."""
    collapsed = collapse_problem(pred)
    if collapsed:
        print(f"fold {fold}: COLLAPSED: {collapsed}; its AUC means nothing{f' ({advice})' if advice else ''}")


# The ISIC 2024 challenge's metric: the area of the ROC curve above this sensitivity (0 to 1 - it).
PAUC_MIN_TPR = 0.8


def partial_auc_above_tpr(target, pred, min_tpr: float = PAUC_MIN_TPR) -> float:
    """Area under the ROC curve where sensitivity is at least `min_tpr`, unstandardised; NaN when `target`
    holds one class.

    This is how the ISIC 2024 challenge scored (range 0 to 1 - min_tpr, 0.2 for its 80%, `pauc_tpr80`): the
    area between the curve and the line TPR = min_tpr, i.e. the integral of specificity over sensitivity
    from min_tpr to 1. The curve is scikit-learn's (tied predictions make one diagonal step) and the
    segment that crosses min_tpr is cut there by linear interpolation.
    """
    # scikit-learn's metrics take about a second to import: only the commands that score pay for it
    from sklearn.metrics import roc_curve

    target = np.asarray(target)
    if len(np.unique(target)) < 2:
        return float("nan")
    false_rate, true_rate, _ = roc_curve(target, np.asarray(pred, dtype=float), drop_intermediate=False)
    t0, t1 = true_rate[:-1], true_rate[1:]
    f0, f1 = false_rate[:-1], false_rate[1:]
    low, high = np.maximum(t0, min_tpr), np.maximum(t1, min_tpr)
    rising = t1 > t0
    span = np.where(rising, t1 - t0, 1.0)

    def false_rate_at(level):
        return f0 + (f1 - f0) * np.where(rising, (level - t0) / span, 0.0)

    width = high - low
    return float(np.sum(width * (1.0 - 0.5 * (false_rate_at(low) + false_rate_at(high)))))
