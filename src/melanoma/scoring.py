"""The competition's metric on out-of-fold predictions, with per-fold scores and an honest interval.

`python -m melanoma score OOF_CSV [--json] [--bootstrap N] [--seed S]`

The score is ROC AUC of `pred` against `target` over all competition rows at once, exactly as
`sklearn.metrics.roc_auc_score` computes it (ties count one half). The 95% interval comes from a
bootstrap that resamples *patients*, not images: images of one patient are correlated, so resampling
images would give an interval that is too narrow. DeLong's test compares two correlated ROC curves
(two runs scored on the same images).

No TensorFlow here: scoring must start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from melanoma import io_utils
from melanoma.errors import DataError

OOF_COLUMNS = ("image_name", "patient_id", "target", "pred", "fold")
COMPETITION_SOURCE = "competition"
# Text that reads as "no value" in a CSV cell.
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none"})
# Resamples evaluated together: memory is about CHUNK x rows x 8 bytes per array. Fixed, so that the
# random stream (and therefore the interval) depends only on the seed, the patients and N.
BOOTSTRAP_CHUNK = 50
SHOW_FIRST = 5


class ScoreWarning(UserWarning):
    """Something about the scored data the user should know (a fold with one class)."""


# --------------------------------------------------------------------------------------------------
# Reading CSV text without surprises
# --------------------------------------------------------------------------------------------------

def first_few(values: Sequence[Any] | pd.Series | pd.Index, limit: int = SHOW_FIRST) -> str:
    """'a, b, c' or 'a, b, c, ... (12 in all)': the offending ids a message names."""
    values = [str(value) for value in list(values)]
    shown = ", ".join(repr(value) if value == "" else value for value in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def parse_csv_text(text: str, where: str = "CSV") -> pd.DataFrame:
    """Parse CSV text into a DataFrame of strings, failing with a DataError that names the problem.

    Pandas would quietly drop surplus fields, fill short rows and turn the first column into an index
    when every row is one field longer than the header; here each of those is an error with its line.
    Blank lines are ignored; every cell stays text so callers decide what "numeric" means.
    """
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as error:
        raise DataError(f"{where} is not valid CSV: {error}") from None
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if row]
    if not numbered:
        raise DataError(f"{where} is empty: expected a header line and rows")
    (_, header), body = numbered[0], numbered[1:]
    bad = [number for number, row in body if len(row) != len(header)]
    if bad:
        raise DataError(f"{where}: line(s) {first_few(bad)} do not have {len(header)} fields like the "
                        f"header ({','.join(header)})")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{where}: column(s) {first_few(duplicated)} appear more than once in the header")
    return pd.DataFrame([row for _, row in body], columns=header, dtype=object)


def read_string_table(path: str, where: str | None = None) -> pd.DataFrame:
    """Read a CSV file (local or gs://) as strings; a clear DataError for anything unreadable."""
    where = where or str(path)
    data = io_utils.read_bytes(str(path)) if io_utils.exists(str(path)) else None
    if data is None:
        raise FileNotFoundError(f"file not found: {path}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{where} is not UTF-8 text (byte {error.start}): is it really a CSV?") from None
    return parse_csv_text(text, where)


def _text(series: pd.Series) -> pd.Series:
    """Cells as stripped strings, missing cells as ''."""
    return series.where(series.notna(), "").astype(str).str.strip()


def _numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as float, mask of cells that are text but not a number)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype(float)
        return values, pd.Series(False, index=series.index)
    text = _text(series)
    values = pd.to_numeric(text, errors="coerce").astype(float)
    not_numeric = values.isna() & ~text.str.lower().isin(MISSING_TEXT)
    return values, not_numeric


# --------------------------------------------------------------------------------------------------
# OOF files
# --------------------------------------------------------------------------------------------------

def prepare_oof(frame: pd.DataFrame, where: str = "OOF predictions") -> pd.DataFrame:
    """Check an OOF table and return its competition rows with typed columns.

    Raises DataError for missing columns (named), empty ids, targets other than 0/1, missing,
    non-numeric or infinite predictions, bad fold numbers, duplicate image names, and a single class.
    Rows whose `source` (when the column exists) is not 'competition' are dropped; their count is in
    `result.attrs["excluded"]`.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{where}: expected a table, got {type(frame).__name__}")
    frame = frame.copy()
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in OOF_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{where} lacks column(s) {', '.join(missing)}; an OOF file has "
                        f"{','.join(OOF_COLUMNS)} (found: {','.join(map(str, frame.columns)) or 'none'})")
    excluded = 0
    if "source" in frame.columns:
        keep = _text(frame["source"]).str.lower() == COMPETITION_SOURCE
        excluded = int((~keep).sum())
        frame = frame[keep.to_numpy()]
    if frame.empty:
        extra = f" ({excluded} non-competition rows excluded)" if excluded else ""
        raise DataError(f"{where} has no rows to score{extra}")
    frame = frame.reset_index(drop=True)

    names = _text(frame["image_name"])
    if (names == "").any():
        rows = (np.flatnonzero((names == "").to_numpy()) + 1).tolist()
        raise DataError(f"{where}: empty image_name in data row(s) {first_few(rows)}")
    duplicated = names[names.duplicated(keep="first")].unique()
    if len(duplicated):
        raise DataError(f"{where}: duplicate image names {first_few(duplicated)}; each image must be "
                        f"predicted once (did two folds validate the same image?)")
    patients = _text(frame["patient_id"])
    if (patients == "").any():
        raise DataError(f"{where}: empty patient_id for images {first_few(names[patients == ''])}")

    target, not_numeric = _numbers(frame["target"])
    bad = not_numeric | ~target.isin([0.0, 1.0])
    if bad.any():
        raise DataError(f"{where}: target must be 0 or 1; not so for images {first_few(names[bad])}")

    pred, not_numeric = _numbers(frame["pred"])
    if not_numeric.any():
        raise DataError(f"{where}: non-numeric predictions for images {first_few(names[not_numeric])}")
    if pred.isna().any():
        raise DataError(f"{where}: NaN (missing) predictions for images {first_few(names[pred.isna()])}")
    infinite = ~np.isfinite(pred)
    if infinite.any():
        raise DataError(f"{where}: infinite predictions for images {first_few(names[infinite])}")

    fold, not_numeric = _numbers(frame["fold"])
    integral = np.isfinite(fold) & (fold == np.round(fold)) & (fold.abs() < 2**31)
    bad = not_numeric | ~integral
    if bad.any():
        raise DataError(f"{where}: fold must be a whole number; not so for images {first_few(names[bad])}")

    if target.nunique() < 2:
        only = int(target.iloc[0])
        raise DataError(f"{where}: all {len(frame)} scored images have target {only}; AUC needs both "
                        f"benign (0) and malignant (1) images")

    frame["image_name"] = names
    frame["patient_id"] = patients
    frame["target"] = target.astype(int)
    frame["pred"] = pred.astype(float)
    frame["fold"] = fold.astype(int)
    frame.attrs["excluded"] = excluded
    return frame


def read_oof(path: str) -> pd.DataFrame:
    """Read and check an OOF CSV (`image_name,patient_id,target,pred,fold`); competition rows only."""
    return prepare_oof(read_string_table(path, where=str(path)), where=str(path))


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def competition_auc(target, pred) -> float:
    """The competition's metric: ROC AUC over all rows at once (scikit-learn's tie handling)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(target), np.asarray(pred, dtype=float)))


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
    from tqdm.auto import tqdm

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
              progress: bool | None = None) -> dict:
    """Score an OOF table: overall AUC, per-fold AUC, their mean and spread, a patient bootstrap CI.

    Returns a JSON-ready dict: auc, folds (str(fold) -> AUC, null for a fold with one class),
    fold_mean, fold_std (sample standard deviation over scored folds; null with fewer than two),
    ci95 ([low, high] percentile interval, null when bootstrap is 0), n, n_positive, n_patients,
    excluded (non-competition rows dropped), bootstrap, seed and warnings (also issued as
    ScoreWarning).
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be 0 or more, got {bootstrap}")
    excluded_before = int(frame.attrs.get("excluded", 0)) if isinstance(frame, pd.DataFrame) else 0
    frame = prepare_oof(frame)
    excluded = excluded_before + int(frame.attrs.get("excluded", 0))
    target = frame["target"].to_numpy()
    pred = frame["pred"].to_numpy()
    auc = competition_auc(target, pred)

    notes: list[str] = []
    folds: dict[str, float | None] = {}
    for fold, rows in frame.groupby("fold", sort=True):
        if rows["target"].nunique() < 2:
            folds[str(fold)] = None
            only = "malignant" if rows["target"].iloc[0] == 1 else "benign"
            notes.append(f"fold {fold} has only {only} images ({len(rows)}); its AUC is undefined")
        else:
            folds[str(fold)] = competition_auc(rows["target"], rows["pred"])
    scored = [value for value in folds.values() if value is not None]
    fold_mean = float(np.mean(scored)) if scored else None
    fold_std = float(np.std(scored, ddof=1)) if len(scored) >= 2 else None

    ci95 = None
    if bootstrap:
        aucs = bootstrap_aucs(target, pred, frame["patient_id"].to_numpy(), bootstrap, seed, progress)
        valid = aucs[np.isfinite(aucs)]
        if len(valid) < len(aucs):
            notes.append(f"{len(aucs) - len(valid)} of {len(aucs)} bootstrap resamples drew patients of "
                         f"one class only and were left out of the interval")
        if len(valid):
            low, high = np.percentile(valid, [2.5, 97.5])
            ci95 = [_json_number(low), _json_number(high)]
    for note in notes:
        warnings.warn(note, ScoreWarning, stacklevel=2)
    return {
        "auc": _json_number(auc),
        "folds": {key: _json_number(value) for key, value in folds.items()},
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


def delong_test(target, pred_a, pred_b) -> tuple[float, float, float]:
    """DeLong's test for two correlated ROC curves on the same images: (auc_a, auc_b, two-sided p).

    Uses the midrank form of the structural components (Sun & Xu, 2014), O(n log n). When the two
    predictions give identical structural components (e.g. the same ranking) the variance of the
    difference is zero and p is 1.
    """
    from scipy.stats import norm, rankdata

    target = np.asarray(target).ravel()
    pred_a = np.asarray(pred_a, dtype=float).ravel()
    pred_b = np.asarray(pred_b, dtype=float).ravel()
    if not len(pred_a) == len(pred_b) == len(target):
        raise DataError(f"delong_test: {len(target)} targets but {len(pred_a)} and {len(pred_b)} predictions")
    scores = np.vstack([pred_a, pred_b])
    if not np.isin(target, [0, 1]).all():
        raise DataError("delong_test: target must be 0 or 1")
    if not np.isfinite(scores).all():
        raise DataError("delong_test: predictions must be finite")
    positive = target == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise DataError("delong_test: needs both benign (0) and malignant (1) images")
    pos, neg = scores[:, positive], scores[:, ~positive]
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.hstack([pos, neg]), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # Per positive: share of negatives it beats; per negative: share of positives that beat it.
    v_pos = (rank_all[:, :m] - rank_pos) / n
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m
    cov_pos = np.atleast_2d(np.cov(v_pos)) if m > 1 else np.zeros((2, 2))
    cov_neg = np.atleast_2d(np.cov(v_neg)) if n > 1 else np.zeros((2, 2))
    covariance = cov_pos / m + cov_neg / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = aucs[0] - aucs[1]
    if not variance > 1e-15:
        p_value = 1.0 if abs(difference) < 1e-12 else 0.0
    else:
        p_value = float(2 * norm.sf(abs(difference) / math.sqrt(variance)))
    return float(aucs[0]), float(aucs[1]), min(1.0, p_value)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_score(result: dict, frame: pd.DataFrame | None = None, title: str = "OOF AUC") -> str:
    """A short human table of a score_oof result (per-fold counts when the frame is given)."""
    lines = []
    interval = ""
    if result.get("ci95"):
        low, high = result["ci95"]
        interval = f"  95% CI {_fmt(low)}-{_fmt(high)} ({result['bootstrap']} patient resamples)"
    lines.append(f"{title} {_fmt(result['auc'])}{interval}")
    excluded = f", {result['excluded']} non-competition rows excluded" if result.get("excluded") else ""
    lines.append(f"images {result['n']}  malignant {result['n_positive']}  "
                 f"patients {result.get('n_patients', '-')}{excluded}")
    counts = {}
    if frame is not None:
        for fold, rows in frame.groupby("fold"):
            counts[str(fold)] = (len(rows), int(rows["target"].sum()))
    lines.append(f"{'fold':>6} {'images':>8} {'malignant':>10} {'AUC':>8}")
    for fold, value in result["folds"].items():
        images, positives = counts.get(fold, ("", ""))
        lines.append(f"{fold:>6} {images!s:>8} {positives!s:>10} {_fmt(value):>8}")
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
    frame = read_oof(args.oof_csv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)  # printed below, once
        result = score_oof(frame, bootstrap=args.bootstrap, seed=args.seed)
    for note in result["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_score(result, frame))
    return 0
