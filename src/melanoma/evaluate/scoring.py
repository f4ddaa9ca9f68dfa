"""The competition's metric on out-of-fold predictions, with per-fold scores and an honest interval.

`python -m melanoma score OOF_CSV [--json] [--bootstrap N] [--seed S]`

The score is ROC AUC of `pred` against `target` over all competition rows at once, exactly as
`sklearn.metrics.roc_auc_score` computes it (ties count one half). The 95% interval comes from a
bootstrap that resamples *patients*, not images: images of one patient are correlated, so resampling
images would give an interval that is too narrow. For the same reason two runs scored on the same images
are compared with DeLong's test clustered by patient (Obuchowski, 1997); the per-image test is kept for
reference. Beside the AUC: `pauc_tpr80`, the ISIC 2024 challenge's partial AUC above 80% sensitivity
(0 to 0.2), the sensitivity at 90% specificity and the specificity at 95% sensitivity, and, when the
OOF file sits in its run folder, `auc_unselected` (see `selection`).

No TensorFlow here: scoring must start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from melanoma.core import io_utils, metrics, tables
from melanoma.core.errors import DataError
from melanoma.evaluate import selection as selection_lib

# Resamples evaluated together: memory is about CHUNK x rows x 8 bytes per array. Fixed, so that the
# random stream (and therefore the interval) depends only on the seed, the patients and N.
BOOTSTRAP_CHUNK = 50


class ScoreWarning(UserWarning):
    """Something about the scored data the user should know (a fold with one class)."""


# --------------------------------------------------------------------------------------------------
# Reading CSV text without surprises
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# OOF files
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


# The ISIC 2024 challenge's metric: the area of the ROC curve above this sensitivity (0 to 1 - it).
PAUC_MIN_TPR = 0.8


def partial_auc_above_tpr(target, pred, min_tpr: float = PAUC_MIN_TPR) -> float:
    """Area under the ROC curve where sensitivity is at least `min_tpr`, unstandardised.

    This is how the ISIC 2024 challenge scored (range 0 to 1 - min_tpr, 0.2 for its 80%): the area
    between the curve and the line TPR = min_tpr, i.e. the integral of specificity over sensitivity from
    min_tpr to 1. The curve is scikit-learn's (tied predictions make one diagonal step) and the segment
    that crosses min_tpr is cut there by linear interpolation.
    """
    # scikit-learn takes about a second to load: only when this runs
    from sklearn.metrics import roc_curve

    false_rate, true_rate, _ = roc_curve(np.asarray(target), np.asarray(pred, dtype=float),
                                         drop_intermediate=False)
    t0, t1 = true_rate[:-1], true_rate[1:]
    f0, f1 = false_rate[:-1], false_rate[1:]
    low, high = np.maximum(t0, min_tpr), np.maximum(t1, min_tpr)
    rising = t1 > t0
    span = np.where(rising, t1 - t0, 1.0)

    def false_rate_at(level):
        return f0 + (f1 - f0) * np.where(rising, (level - t0) / span, 0.0)

    width = high - low
    return float(np.sum(width * (1.0 - 0.5 * (false_rate_at(low) + false_rate_at(high)))))


def operating_points(target, pred) -> dict:
    """Sensitivity at 90% specificity and specificity at 95% sensitivity, at reachable cutoffs.

    A cutoff calls images with pred >= cutoff malignant (as `report` does). `sens_at_spec90` is the
    highest sensitivity of a cutoff whose specificity is at least 0.90; `spec_at_sens95` the highest
    specificity of a cutoff whose sensitivity is at least 0.95. No interpolation between cutoffs: the
    numbers are ones a user can actually get.
    """
    # scikit-learn takes about a second to load: only when this runs
    from sklearn.metrics import roc_curve

    false_rate, true_rate, _ = roc_curve(np.asarray(target), np.asarray(pred, dtype=float),
                                         drop_intermediate=False)
    return {"sens_at_spec90": float(true_rate[false_rate <= 0.10 + 1e-12].max()),
            "spec_at_sens95": float((1.0 - false_rate[true_rate >= 0.95 - 1e-12]).max())}


def _weighted_auc_rows(weights: np.ndarray, target_sorted: np.ndarray, group_starts: np.ndarray | None
                       ) -> np.ndarray:
    """AUC for each row of `weights` (resamples x images, images sorted by prediction).

    A resample that draws a patient c times counts each of its images c times, so AUC is a weighted
    Mann-Whitney statistic: sum over positives of weight x (negative weight strictly below + half the
    negative weight tied). Tied predictions are merged into one group first.
    """
    positive = weights * target_sorted
    negative = weights - positive
    if group_starts is not None:
        positive = np.add.reduceat(positive, group_starts, axis=1)
        negative = np.add.reduceat(negative, group_starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative
    numerator = (positive * (below + 0.5 * negative)).sum(axis=1)
    denominator = positive.sum(axis=1) * negative.sum(axis=1)
    return _ratio(numerator, denominator)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where a resample holds one class only (denominator 0)."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, np.nan)


def _image_evaluator(target: np.ndarray, pred: np.ndarray, patient_index: np.ndarray):
    """Resample AUCs from per-image weights: O(resamples x images); works for any data."""
    order = np.argsort(pred, kind="mergesort")
    sorted_pred = pred[order]
    starts = np.flatnonzero(np.r_[True, sorted_pred[1:] != sorted_pred[:-1]])
    group_starts = starts if len(starts) < len(pred) else None
    target_sorted = target[order]
    index_sorted = patient_index[order]

    def evaluate(counts: np.ndarray) -> np.ndarray:
        return _weighted_auc_rows(counts[:, index_sorted].astype(float), target_sorted, group_starts)

    return evaluate


def _patient_evaluator(target: np.ndarray, pred: np.ndarray, patient_index: np.ndarray, patients: int):
    """Resample AUCs as matrix products over patients: fast when patients x minority class is small.

    With the minority class as "positives" (AUC(y, s) = AUC(1 - y, -s) lets us swap), let
    credit[p, k] = negatives of patient p scored below positive k + half those tied with it. A resample
    with patient counts c then has numerator sum_k c[pat(k)] * (c @ credit)[k], and the denominator is
    (c @ positives per patient) x (c @ negatives per patient).
    """
    if target.sum() > len(target) - target.sum():
        target, pred = 1 - target, -pred
    positive = target == 1
    order = np.argsort(pred[positive], kind="mergesort")
    positive_scores = pred[positive][order]
    positive_patients = patient_index[positive][order]
    negative_scores = pred[~positive]
    negative_patients = patient_index[~positive]
    above_from = np.searchsorted(positive_scores, negative_scores, side="right")
    tied_from = np.searchsorted(positive_scores, negative_scores, side="left")
    steps = np.zeros((patients, len(positive_scores) + 1))
    np.add.at(steps, (negative_patients, above_from), 0.5)
    np.add.at(steps, (negative_patients, tied_from), 0.5)
    # float32 keeps the product fast and exact: entries are half-integers far below 2**23.
    credit = np.cumsum(steps, axis=1)[:, :-1].astype(np.float32)
    positives_per_patient = np.bincount(patient_index[positive], minlength=patients).astype(float)
    negatives_per_patient = np.bincount(patient_index[~positive], minlength=patients).astype(float)

    def evaluate(counts: np.ndarray) -> np.ndarray:
        below = (counts.astype(np.float32) @ credit).astype(float)
        counts = counts.astype(float)
        numerator = (below * counts[:, positive_patients]).sum(axis=1)
        denominator = (counts @ positives_per_patient) * (counts @ negatives_per_patient)
        return _ratio(numerator, denominator)

    return evaluate


def bootstrap_aucs(target, pred, patient_id, resamples: int = 1000, seed: int = 0,
                   progress: bool | None = None, method: str = "auto") -> np.ndarray:
    """AUC of each of `resamples` patient-level bootstrap resamples (NaN where one class is missing).

    Each resample draws as many patients as there are, with replacement, and keeps all images of each
    drawn patient. Vectorised: resamples are evaluated BOOTSTRAP_CHUNK at a time, either as per-image
    weight matrices ("images") or as products of patient-count matrices ("patients", chosen by "auto"
    when patients x minority-class images is small). Both give the same numbers for the same seed.
    """
    target = np.asarray(target, dtype=float)
    pred = np.asarray(pred, dtype=float)
    _, patient_index = np.unique(np.asarray(patient_id).astype(str), return_inverse=True)
    patient_index = patient_index.ravel()
    patients = int(patient_index.max()) + 1 if len(patient_index) else 0
    minority = min(target.sum(), len(target) - target.sum())
    if method == "auto":
        method = "patients" if patients * minority <= 64 * len(target) else "images"
    if method == "patients":
        evaluate = _patient_evaluator(target, pred, patient_index, patients)
    elif method == "images":
        evaluate = _image_evaluator(target, pred, patient_index)
    else:
        raise ValueError(f"unknown bootstrap method '{method}'; choose auto, patients or images")

    rng = np.random.default_rng(seed)
    results = np.empty(resamples, dtype=float)
    if progress is None:
        progress = resamples * len(pred) >= 100_000_000 and sys.stderr.isatty()
    for start in tqdm(range(0, resamples, BOOTSTRAP_CHUNK), desc="bootstrap", unit="chunk",
                      disable=not progress, leave=False):
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        draws = rng.integers(0, patients, size=(size, patients))
        offsets = np.arange(size)[:, None] * patients
        counts = np.bincount((draws + offsets).ravel(), minlength=size * patients).reshape(size, patients)
        results[start:start + size] = evaluate(counts)
    return results


def _json_number(value: float | None) -> float | None:
    """A plain float for JSON (full precision, so `auc` equals roc_auc_score exactly); None for NaN."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def score_oof(frame: pd.DataFrame, bootstrap: int = 1000, seed: int = 0,
              progress: bool | None = None, run_dir: str | None = None, selection=None) -> dict:
    """Score an OOF table: overall AUC, per-fold AUC, their mean and spread, a patient bootstrap CI,
    the high-sensitivity metrics and, from the run's per-epoch predictions, the unselected AUC.

    Returns a JSON-ready dict: auc, folds (str(fold) -> AUC, null for a fold with one class),
    fold_mean, fold_std (sample standard deviation over scored folds; null with fewer than two),
    ci95 ([low, high] percentile interval, null when bootstrap is 0), pauc_tpr80 (ISIC 2024's partial
    AUC above 80% sensitivity, 0..0.2), sens_at_spec90, spec_at_sens95, folds_pauc_tpr80 (null for a
    fold with one class), auc_unselected, auc_own_best, selection_gain, epoch_selection and
    unselected_reason (see `selection`; from `run_dir`'s fold<K>/val_epochs.csv, or a `selection`
    already computed), n, n_positive, n_patients, excluded (non-competition rows dropped), bootstrap,
    seed and warnings (also issued as ScoreWarning).
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be 0 or more, got {bootstrap}")
    excluded_before = int(frame.attrs.get("excluded", 0)) if isinstance(frame, pd.DataFrame) else 0
    frame = tables.prepare_oof(frame)
    excluded = excluded_before + int(frame.attrs.get("excluded", 0))
    target = frame["target"].to_numpy()
    pred = frame["pred"].to_numpy()
    auc = metrics.auc(target, pred)

    notes: list[str] = []
    folds, folds_pauc = _fold_scores(frame, notes)
    scored = [value for value in folds.values() if value is not None]
    fold_mean = float(np.mean(scored)) if scored else None
    fold_std = float(np.std(scored, ddof=1)) if len(scored) >= 2 else None
    ci95 = None
    if bootstrap:
        ci95 = _bootstrap_interval(target, pred, frame["patient_id"].to_numpy(), bootstrap, seed, progress, notes)
    if selection is None:
        selection = selection_lib.epoch_selection(frame, run_dir)
    notes.extend(selection.notes)
    for note in notes:
        warnings.warn(note, ScoreWarning, stacklevel=2)
    return {
        "auc": _json_number(auc),
        **selection.to_json(),
        "pauc_tpr80": _json_number(partial_auc_above_tpr(target, pred)),
        **operating_points(target, pred),
        "folds": {key: _json_number(value) for key, value in folds.items()},
        "folds_pauc_tpr80": {key: _json_number(value) for key, value in folds_pauc.items()},
        "fold_mean": _json_number(fold_mean),
        "fold_std": _json_number(fold_std),
        "ci95": ci95,
        "n": int(len(frame)),
        "n_positive": int(target.sum()),
        "n_patients": int(frame["patient_id"].nunique()),
        "excluded": excluded,
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "warnings": notes,
    }


def _fold_scores(frame: pd.DataFrame, notes: list[str]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """str(fold) -> AUC and str(fold) -> pauc_tpr80, None for a fold with one class (with a note)."""
    folds: dict[str, float | None] = {}
    folds_pauc: dict[str, float | None] = {}
    for fold, rows in frame.groupby("fold", sort=True):
        if rows["target"].nunique() < 2:
            folds[str(fold)] = folds_pauc[str(fold)] = None
            only = "malignant" if rows["target"].iloc[0] == 1 else "benign"
            notes.append(f"fold {fold} has only {only} images ({len(rows)}); its AUC and pauc_tpr80 are "
                         "undefined")
        else:
            folds[str(fold)] = metrics.auc(rows["target"], rows["pred"])
            folds_pauc[str(fold)] = partial_auc_above_tpr(rows["target"], rows["pred"])
    return folds, folds_pauc


def _bootstrap_interval(target, pred, patient_id, bootstrap: int, seed: int, progress: bool | None,
                        notes: list[str]) -> list | None:
    """The 95% percentile interval of the patient bootstrap; None when no resample has both classes.
    Resamples of one class are left out, with a note."""
    aucs = bootstrap_aucs(target, pred, patient_id, bootstrap, seed, progress)
    valid = aucs[np.isfinite(aucs)]
    if len(valid) < len(aucs):
        notes.append(f"{len(aucs) - len(valid)} of {len(aucs)} bootstrap resamples drew patients of "
                     f"one class only and were left out of the interval")
    if not len(valid):
        return None
    low, high = np.percentile(valid, [2.5, 97.5])
    return [_json_number(low), _json_number(high)]


def _structural_components(target: np.ndarray, scores: np.ndarray):
    """DeLong's structural components of each row of `scores` (rows x images) against `target`.

    Returns (AUC per row, v_pos [rows, malignant], v_neg [rows, benign]): per malignant image, the share
    of benign images it outscores; per benign image, the share of malignant images that outscore it;
    ties count one half. Midrank form (Sun & Xu, 2014), O(n log n) per row.
    """
    # scipy loads only when this runs
    from scipy.stats import rankdata

    positive = target == 1
    m = int(positive.sum())
    n = len(target) - m
    pos, neg = scores[:, positive], scores[:, ~positive]
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.hstack([pos, neg]), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m
    return aucs, v_pos, v_neg


def _checked_pairs(target, preds_a, preds_b, caller: str):
    """target (images,) and two prediction arrays (pairs x images), checked; a DataError names the fault."""
    target = np.asarray(target).ravel()
    preds_a = np.atleast_2d(np.asarray(preds_a, dtype=float))
    preds_b = np.atleast_2d(np.asarray(preds_b, dtype=float))
    if not preds_a.shape == preds_b.shape or preds_a.shape[1] != len(target):
        raise DataError(f"{caller}: {len(target)} targets but predictions for {preds_a.shape[-1]} and "
                        f"{preds_b.shape[-1]} images")
    if not np.isin(target, [0, 1]).all():
        raise DataError(f"{caller}: target must be 0 or 1")
    if not (np.isfinite(preds_a).all() and np.isfinite(preds_b).all()):
        raise DataError(f"{caller}: predictions must be finite")
    m = int((target == 1).sum())
    if m == 0 or m == len(target):
        raise DataError(f"{caller}: needs both benign (0) and malignant (1) images")
    return target, preds_a, preds_b


def _sums_by(index: np.ndarray, groups: int, values: np.ndarray) -> np.ndarray:
    """Row-wise sums of `values` (rows x items) per group of items: (rows x groups)."""
    rows = values.shape[0]
    flat = (index[None, :] + groups * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=rows * groups).reshape(rows, groups)


def delong_pvalues(target, preds_a, preds_b, cluster=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's test of AUC_a = AUC_b for many pairs of predictions on the same images at once.

    preds_a, preds_b: (pairs x images). Returns (AUC_a, AUC_b, two-sided p), one value per pair.
    `cluster` None: images independent (DeLong, 1988). `cluster` given (a patient id per image): the
    clustered extension of Obuchowski (1997). Images of one patient share skin, camera and habits, so
    two runs' errors are correlated within a patient and the per-image test is too sure of itself. With
    I patients holding m_i malignant and n_i benign images (M and N in all) and V10_i, V01_i a patient's
    sums of structural components, S10 = I/(I-1) sum_i (V10_i - m_i AUC)(V10_i - m_i AUC)' / M, S01
    likewise with n_i and N, S11 = I/(I-1) sum_i (V10_i - m_i AUC)(V01_i - n_i AUC)', and
    Cov(AUC) = S10/M + S01/N + (S11 + S11')/(MN). With one image per patient it is DeLong's test up to
    small-sample factors. A zero variance of the difference (the same ranking) gives p = 1.
    """
    # scipy loads only when this runs
    from scipy.stats import norm

    caller = "delong_test" if cluster is None else "clustered_delong_test"
    target, preds_a, preds_b = _checked_pairs(target, preds_a, preds_b, caller)
    pairs = len(preds_a)
    aucs, v_pos, v_neg = _structural_components(target, np.vstack([preds_a, preds_b]))
    positive = target == 1
    m, n = v_pos.shape[1], v_neg.shape[1]
    if cluster is None:
        dev_pos = v_pos - v_pos.mean(axis=1, keepdims=True)
        dev_neg = v_neg - v_neg.mean(axis=1, keepdims=True)
        pos_scale = 1.0 / (m * (m - 1)) if m > 1 else 0.0
        neg_scale = 1.0 / (n * (n - 1)) if n > 1 else 0.0
        cross_scale = 0.0
    else:
        cluster = np.asarray(cluster).ravel()
        if len(cluster) != len(target):
            raise DataError(f"{caller}: {len(target)} targets but {len(cluster)} patient ids")
        index = pd.factorize(pd.Series(cluster).astype(str))[0]
        groups = int(index.max()) + 1
        if groups < 2:
            raise DataError(f"{caller}: needs images of at least two patients")
        per_patient_pos = np.bincount(index[positive], minlength=groups)
        per_patient_neg = np.bincount(index[~positive], minlength=groups)
        dev_pos = _sums_by(index[positive], groups, v_pos) - aucs[:, None] * per_patient_pos
        dev_neg = _sums_by(index[~positive], groups, v_neg) - aucs[:, None] * per_patient_neg
        factor = groups / (groups - 1)
        pos_scale, neg_scale, cross_scale = factor / m**2, factor / n**2, factor / (m * n)

    def covariance(first: slice, second: slice) -> np.ndarray:
        """Cov(AUC of rows `first`, AUC of rows `second`), pair by pair."""
        within = (pos_scale * (dev_pos[first] * dev_pos[second]).sum(axis=1)
                  + neg_scale * (dev_neg[first] * dev_neg[second]).sum(axis=1))
        if not cross_scale:
            return within
        # a patient's malignant and benign images move together: S11 pairs their sums
        return within + cross_scale * ((dev_pos[first] * dev_neg[second]).sum(axis=1)
                                       + (dev_pos[second] * dev_neg[first]).sum(axis=1))

    a, b = slice(0, pairs), slice(pairs, 2 * pairs)
    variance = covariance(a, a) + covariance(b, b) - 2 * covariance(a, b)
    difference = aucs[a] - aucs[b]
    safe = np.sqrt(np.where(variance > 1e-15, variance, 1.0))
    p_values = np.where(variance > 1e-15, 2 * norm.sf(np.abs(difference) / safe),
                        np.where(np.abs(difference) < 1e-12, 1.0, 0.0))
    return aucs[a], aucs[b], np.minimum(1.0, p_values)


def delong_test(target, pred_a, pred_b) -> tuple[float, float, float]:
    """DeLong's test for two correlated ROC curves on the same images: (auc_a, auc_b, two-sided p).

    Treats images as independent, which images of one patient are not: `clustered_delong_test` is the
    honest one for OOF predictions; this one is kept for reference (`compare --test image`).
    """
    auc_a, auc_b, p_value = delong_pvalues(target, np.ravel(pred_a)[None], np.ravel(pred_b)[None])
    return float(auc_a[0]), float(auc_b[0]), float(p_value[0])


def clustered_delong_test(target, pred_a, pred_b, cluster) -> tuple[float, float, float]:
    """DeLong's test with images clustered by patient (Obuchowski, 1997): (auc_a, auc_b, two-sided p).
    See `delong_pvalues`."""
    auc_a, auc_b, p_value = delong_pvalues(target, np.ravel(pred_a)[None], np.ravel(pred_b)[None], cluster)
    return float(auc_a[0]), float(auc_b[0]), float(p_value[0])


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def format_score(result: dict, frame: pd.DataFrame | None = None, title: str = "OOF AUC") -> str:
    """A short human table of a score_oof result (per-fold counts when the frame is given)."""
    lines = []
    interval = ""
    if result.get("ci95"):
        low, high = result["ci95"]
        interval = f"  95% CI {_fmt(low)}-{_fmt(high)} ({result['bootstrap']} patient resamples)"
    lines.append(f"{title} {_fmt(result['auc'])}{interval}")
    if "auc_unselected" in result:
        if result["auc_unselected"] is None:
            lines.append(f"auc_unselected -  ({result.get('unselected_reason') or 'not available'})")
        else:
            lines.append(f"auc_unselected {_fmt(result['auc_unselected'])}  selection_gain "
                         f"{_signed(result.get('selection_gain'))}  (each fold at the epoch best on the "
                         "other folds, vs. at its own best; plain predictions, no TTA)")
    if "pauc_tpr80" in result:
        lines.append(f"pauc_tpr80 {_fmt(result['pauc_tpr80'])} (of 0.2)  sens_at_spec90 "
                     f"{_fmt(result.get('sens_at_spec90'))}  spec_at_sens95 {_fmt(result.get('spec_at_sens95'))}")
    excluded = f", {result['excluded']} non-competition rows excluded" if result.get("excluded") else ""
    lines.append(f"images {result['n']}  malignant {result['n_positive']}  "
                 f"patients {result.get('n_patients', '-')}{excluded}")
    counts = {}
    if frame is not None:
        for fold, rows in frame.groupby("fold"):
            counts[str(fold)] = (len(rows), int(rows["target"].sum()))
    paucs = result.get("folds_pauc_tpr80") or {}
    epochs = result.get("epoch_selection") or {}
    header = f"{'fold':>6} {'images':>8} {'malignant':>10} {'AUC':>8} {'pAUC80':>8}"
    if epochs:
        header += f" {'best epoch: own / others':>25}"
    lines.append(header)
    for fold, value in result["folds"].items():
        images, positives = counts.get(fold, ("", ""))
        line = f"{fold:>6} {images!s:>8} {positives!s:>10} {_fmt(value):>8} {_fmt(paucs.get(fold)):>8}"
        if fold in epochs:
            chosen = epochs[fold]
            shown = f"{chosen['epoch_own_best'] or '-'} / {chosen['epoch_unselected'] or '-'}"
            line += f" {shown:>25}"
        lines.append(line)
    spread = f" ± {_fmt(result['fold_std'])}" if result.get("fold_std") is not None else ""
    lines.append(f"{'mean':>6} {'':>8} {'':>10} {_fmt(result['fold_mean']):>8}{spread}")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("oof_csv", metavar="OOF_CSV", help="OOF file: image_name,patient_id,target,pred,fold")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_bootstrap_arguments(parser, "the 95%% interval")


def add_bootstrap_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--bootstrap N and --seed S, shared by score, compare and report."""
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help=f"patient resamples for {what} (0 = none; default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")


def check_bootstrap_arguments(args: argparse.Namespace) -> None:
    if args.bootstrap < 0:
        raise DataError(f"--bootstrap must be 0 or more, got {args.bootstrap}")


def command(args: argparse.Namespace) -> int:
    check_bootstrap_arguments(args)
    frame = tables.read_oof(args.oof_csv)
    # outputs/<name>/oof.csv: the folds' per-epoch predictions are in the sibling fold<K>/ folders
    run_dir = os.path.dirname(os.path.abspath(args.oof_csv)) if not io_utils.is_remote(args.oof_csv) \
        else os.path.dirname(args.oof_csv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)  # printed below, once
        result = score_oof(frame, bootstrap=args.bootstrap, seed=args.seed, run_dir=run_dir)
    for note in result["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_score(result, frame))
    return 0
