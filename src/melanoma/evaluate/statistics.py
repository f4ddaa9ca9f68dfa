"""The statistics behind `score` and `compare`: a bootstrap of the AUC that resamples patients, DeLong's
test of two AUCs on the same images, per image or clustered by patient (Obuchowski, 1997), and the test of
two configs' seed means (`seed_means_test`: the patients and the seeds both sampled).

Images of one patient are correlated, so both resample or cluster by patient: per image, the interval
would be too narrow and the test would reject too often.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from melanoma.core import progress as progress_lib
from melanoma.core.errors import DataError

# Resamples evaluated together: memory is about CHUNK x rows x 8 bytes per array. Fixed, so that the
# random stream (and therefore the interval) depends only on the seed, the patients and N.
BOOTSTRAP_CHUNK = 50


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
        progress = resamples * len(pred) >= 100_000_000
    for start in progress_lib.bar(range(0, resamples, BOOTSTRAP_CHUNK), desc="bootstrap", unit="chunk",
                                  disable=not progress, leave=False):
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        draws = rng.integers(0, patients, size=(size, patients))
        offsets = np.arange(size)[:, None] * patients
        counts = np.bincount((draws + offsets).ravel(), minlength=size * patients).reshape(size, patients)
        results[start:start + size] = evaluate(counts)
    return results


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


def _deviations(target: np.ndarray, scores: np.ndarray, cluster, caller: str):
    """(AUC per row of `scores`, the rows' deviations over malignant and over benign units, and the three
    scales of their products): what the covariance of the rows' AUCs is made of (see `delong_pvalues`).
    A unit is an image, or with `cluster` a patient."""
    aucs, v_pos, v_neg = _structural_components(target, scores)
    positive = target == 1
    m, n = v_pos.shape[1], v_neg.shape[1]
    if cluster is None:
        dev_pos = v_pos - v_pos.mean(axis=1, keepdims=True)
        dev_neg = v_neg - v_neg.mean(axis=1, keepdims=True)
        pos_scale = 1.0 / (m * (m - 1)) if m > 1 else 0.0
        neg_scale = 1.0 / (n * (n - 1)) if n > 1 else 0.0
        return aucs, dev_pos, dev_neg, (pos_scale, neg_scale, 0.0)
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
    return aucs, dev_pos, dev_neg, (factor / m**2, factor / n**2, factor / (m * n))


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
    aucs, dev_pos, dev_neg, (pos_scale, neg_scale, cross_scale) = _deviations(
        target, np.vstack([preds_a, preds_b]), cluster, caller)

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


def clustered_auc_covariance(target, scores, cluster) -> tuple[np.ndarray, np.ndarray]:
    """(AUC of each row of `scores` (rows x images), their covariance matrix), clustered by patient as in
    `delong_pvalues`: the data's share of the AUCs' uncertainty, the predictions held fixed."""
    target = np.asarray(target).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    dummy = scores[:1]
    target, _, _ = _checked_pairs(target, dummy, dummy, "clustered_auc_covariance")
    if not np.isfinite(scores).all():
        raise DataError("clustered_auc_covariance: predictions must be finite")
    aucs, dev_pos, dev_neg, (pos_scale, neg_scale, cross_scale) = _deviations(
        target, scores, cluster, "clustered_auc_covariance")
    cross = dev_pos @ dev_neg.T
    covariance = pos_scale * dev_pos @ dev_pos.T + neg_scale * dev_neg @ dev_neg.T + cross_scale * (cross + cross.T)
    return aucs, covariance


def seed_variance(aucs: np.ndarray, covariance: np.ndarray) -> float:
    """How much a config's AUC moves with its seed beyond what the images' sampling moves it: the seed runs'
    AUCs on the same images spread by their sample variance s^2, whose expectation is t^2 plus the mean
    sampling variance of the runs' deviations from their mean, (tr S - 1'S1/k)/(k-1) for their DeLong
    covariance S. So t^2 = max(0, s^2 - that) (a moment estimate, as for random effects in a
    meta-analysis); counting s^2 whole would count the images' share twice."""
    k = len(aucs)
    sampling = (float(np.trace(covariance)) - float(covariance.sum()) / k) / (k - 1)
    return max(0.0, float(np.var(aucs, ddof=1)) - sampling)


def seed_mean_interval(target, preds, cluster) -> dict:
    """A config's mean OOF AUC over its seed runs (seeds x images, two or more) with its 95% interval,
    patients and seeds both sampled as in `seed_means_test`: {mean, std (of the seed AUCs), seed_std,
    se, ci95, df}."""
    # scipy loads only when this runs
    from scipy.stats import t as student

    preds = np.atleast_2d(np.asarray(preds, dtype=float))
    k = len(preds)
    if k < 2:
        raise DataError(f"seed_mean_interval: needs two seed runs or more, got {k}")
    aucs, covariance = clustered_auc_covariance(target, preds, cluster)
    seeds = seed_variance(aucs, covariance)
    variance = max(0.0, float(covariance.sum()) / k ** 2) + seeds / k
    freedom = variance ** 2 / ((seeds / k) ** 2 / (k - 1)) if seeds > 0 else float("inf")
    se = math.sqrt(variance)
    half = float(student.ppf(0.975, freedom)) * se
    mean = float(aucs.mean())
    return {"mean": mean, "std": float(np.std(aucs, ddof=1)), "seed_std": math.sqrt(seeds), "se": se,
            "ci95": [mean - half, mean + half], "df": freedom}


def seed_means_test(target, preds_a, preds_b, cluster) -> dict:
    """Whether two configs' mean OOF AUCs over their seeds differ: each config's seed runs' predictions on
    the same images (seeds x images; two seeds or more each), clustered by patient.

    The difference of the seed means, d = mean(AUC_a) - mean(AUC_b), is uncertain twice over: the images
    are a sample of patients (the clustered DeLong covariance S of the seed runs' AUCs,
    `clustered_auc_covariance`, gives that share, c' S c with c the contrast +1/k_a, -1/k_b), and the
    seeds are a sample of seeds: a seed may train a better or a worse model than the config does on
    average, by a seed variance t^2 (`seed_variance`), which adds t_a^2/k_a + t_b^2/k_b. With few seeds
    that share is itself uncertain, so d / se is read against Student's t with the Welch-Satterthwaite
    degrees of freedom (the first share counted as known; with no seed variance found, the normal).
    Returns the means, each config's spread of seed AUCs and its seed standard deviation t, d, se and its
    two shares, the 95% interval of d, p (two-sided) and the degrees of freedom.
    """
    # scipy loads only when this runs
    from scipy.stats import t as student

    preds_a = np.atleast_2d(np.asarray(preds_a, dtype=float))
    preds_b = np.atleast_2d(np.asarray(preds_b, dtype=float))
    k_a, k_b = len(preds_a), len(preds_b)
    if min(k_a, k_b) < 2:
        raise DataError(f"seed_means_test: each config needs two seed runs or more, got {k_a} and {k_b}")
    aucs, covariance = clustered_auc_covariance(target, np.vstack([preds_a, preds_b]), cluster)
    contrast = np.r_[np.full(k_a, 1 / k_a), np.full(k_b, -1 / k_b)]
    data_share = max(0.0, float(contrast @ covariance @ contrast))
    runs_a, runs_b = slice(0, k_a), slice(k_a, k_a + k_b)
    spread_a, spread_b = float(np.var(aucs[runs_a], ddof=1)), float(np.var(aucs[runs_b], ddof=1))
    seeds_a, seeds_b = seed_variance(aucs[runs_a], covariance[runs_a, runs_a]), seed_variance(
        aucs[runs_b], covariance[runs_b, runs_b])
    seed_share = seeds_a / k_a + seeds_b / k_b
    difference = float(aucs[runs_a].mean() - aucs[runs_b].mean())
    variance = data_share + seed_share
    seed_terms = (seeds_a / k_a) ** 2 / (k_a - 1) + (seeds_b / k_b) ** 2 / (k_b - 1)
    freedom = variance ** 2 / seed_terms if seed_terms > 0 else float("inf")
    se = math.sqrt(variance)
    if se > 1e-12:
        p_value = float(2 * student.sf(abs(difference) / se, freedom))
        half = float(student.ppf(0.975, freedom)) * se
    else:
        p_value, half = (1.0 if abs(difference) < 1e-12 else 0.0), 0.0
    return {"mean_a": float(aucs[runs_a].mean()), "mean_b": float(aucs[runs_b].mean()),
            "std_a": math.sqrt(spread_a), "std_b": math.sqrt(spread_b), "seed_std_a": math.sqrt(seeds_a),
            "seed_std_b": math.sqrt(seeds_b), "difference": difference, "se": se,
            "se_data": math.sqrt(data_share), "se_seeds": math.sqrt(seed_share),
            "ci95": [difference - half, difference + half], "p": min(1.0, p_value), "df": freedom}


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
