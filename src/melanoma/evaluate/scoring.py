"""The competition's metric on out-of-fold predictions, with per-fold scores and an honest interval.

`python -m melanoma score OOF_CSV [--json] [--bootstrap N] [--seed S]`
`python -m melanoma score SUBMISSION --labels LABELS_CSV [--json] [--bootstrap N] [--seed S]`: a submission
(image_name,target) against test labels that are public (a benchmark such as ISIC 2017, whose `records
--isic2017` writes `test_labels.csv`): the same AUC, bootstrap interval (over `patient_id` where the labels
have it, else over images) and high-sensitivity metrics. Read once per finished recipe, never to choose one.

The score is ROC AUC of `pred` against `target` over all competition rows at once, exactly as
`sklearn.metrics.roc_auc_score` computes it (ties count one half). The 95% interval comes from a
bootstrap that resamples *patients*, not images: images of one patient are correlated, so resampling
images would give an interval that is too narrow. For the same reason two runs scored on the same images
are compared with DeLong's test clustered by patient (Obuchowski, 1997); the per-image test is kept for
reference. Beside the AUC: `pauc_tpr80`, the ISIC 2024 challenge's partial AUC above 80% sensitivity
(0 to 0.2; defined in core/metrics.py, which training's checkpoint choice also reads), the sensitivity at
90% specificity and the specificity at 95% sensitivity, and, when the OOF file sits in its run folder,
`auc_unselected` (see `selection`).

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

from melanoma.core import io_utils, metrics, tables
from melanoma.core.errors import DataError
from melanoma.evaluate import selection as selection_lib
from melanoma.evaluate import statistics


class ScoreWarning(UserWarning):
    """Something about the scored data the user should know (a fold with one class)."""


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


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
    seed, collapsed_folds (folds whose predictions are near-constant: metrics.collapse_problem) and
    warnings (also issued as ScoreWarning).
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
    folds, folds_pauc, collapsed = _fold_scores(frame, notes)
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
    weighted = _weighted_auc(frame)
    return {
        "auc": _json_number(auc),
        **({"auc_weighted": weighted} if "weight" in frame.columns else {}),
        **selection.to_json(),
        "pauc_tpr80": _json_number(metrics.partial_auc_above_tpr(target, pred)),
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
        "collapsed_folds": collapsed,
        "warnings": notes,
    }


def _weighted_auc(frame: pd.DataFrame) -> float | None:
    """The AUC with each row counting its `weight` (validation_weights.file: test-likeness), when the OOF
    has that column; DataError for a weight that is not a number of 0 or more."""
    if "weight" not in frame.columns:
        return None
    weight, bad = tables.numbers(frame["weight"])
    if (bad | ~np.isfinite(weight) | (weight < 0)).any() or not weight.sum() > 0:
        raise DataError("the OOF's weight column must hold numbers of 0 or more, not all 0 (validation_weights.file)")
    return _json_number(metrics.auc(frame["target"], frame["pred"], weight.to_numpy()))


def _fold_scores(frame: pd.DataFrame, notes: list[str]
                 ) -> tuple[dict[str, float | None], dict[str, float | None], list[str]]:
    """str(fold) -> AUC and str(fold) -> pauc_tpr80, None for a fold with one class (with a note), and the
    folds whose predictions collapsed to a near-constant output (with a note each)."""
    folds: dict[str, float | None] = {}
    folds_pauc: dict[str, float | None] = {}
    collapsed_folds: list[str] = []
    for fold, rows in frame.groupby("fold", sort=True):
        if rows["target"].nunique() < 2:
            folds[str(fold)] = folds_pauc[str(fold)] = None
            only = "malignant" if rows["target"].iloc[0] == 1 else "benign"
            notes.append(f"fold {fold} has only {only} images ({len(rows)}); its AUC and pauc_tpr80 are "
                         "undefined")
        else:
            folds[str(fold)] = metrics.auc(rows["target"], rows["pred"])
            folds_pauc[str(fold)] = metrics.partial_auc_above_tpr(rows["target"], rows["pred"])
        collapsed = metrics.collapse_problem(rows["pred"])
        if collapsed:
            notes.append(f"fold {fold} COLLAPSED: {collapsed}")
            collapsed_folds.append(str(fold))
    return folds, folds_pauc, collapsed_folds


def _bootstrap_interval(target, pred, patient_id, bootstrap: int, seed: int, progress: bool | None,
                        notes: list[str]) -> list | None:
    """The 95% percentile interval of the patient bootstrap; None when no resample has both classes.
    Resamples of one class are left out, with a note."""
    aucs = statistics.bootstrap_aucs(target, pred, patient_id, bootstrap, seed, progress)
    valid = aucs[np.isfinite(aucs)]
    if len(valid) < len(aucs):
        notes.append(f"{len(aucs) - len(valid)} of {len(aucs)} bootstrap resamples drew patients of "
                     f"one class only and were left out of the interval")
    if not len(valid):
        return None
    low, high = np.percentile(valid, [2.5, 97.5])
    return [_json_number(low), _json_number(high)]


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
    if "auc_weighted" in result:
        lines.append(f"auc_weighted {_fmt(result['auc_weighted'])}  "
                     "(validation images weighted by their test-likeness: validation_weights.file)")
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


# --------------------------------------------------------------------------------------------------
# A submission against public test labels (a benchmark)
# --------------------------------------------------------------------------------------------------


def read_labels(path: str) -> pd.DataFrame:
    """image_name, target (0/1) and patient_id (the image where the file has none) of a test-labels CSV."""
    frame, names = _named_rows(path, f"--labels {path}", "give the test labels, image_name,target (the "
                               "test_labels.csv that `records --isic2017` writes)")
    target, not_numeric = tables.numbers(frame["target"])
    bad = not_numeric | ~target.isin([0.0, 1.0])
    if bad.any():
        raise DataError(f"--labels {path}: target must be 0 or 1; not so for images {tables.first_few(names[bad])}")
    patients = tables.text_cells(frame["patient_id"]) if "patient_id" in frame.columns else names
    patients = patients.where(patients != "", names)
    return pd.DataFrame({"image_name": names, "target": target.astype(int), "patient_id": patients})


def read_predictions(path: str) -> pd.DataFrame:
    """image_name and pred (the submission's `target`) of a submission CSV, each a number in [0, 1]."""
    frame, names = _named_rows(path, path, "a submission has image_name,target")
    pred, not_numeric = tables.numbers(frame["target"])
    for bad, what in ((not_numeric, "non-numeric"), (pred.isna() & ~not_numeric, "NaN (missing)"),
                      (pred.notna() & ((pred < 0) | (pred > 1)), "outside [0, 1]")):
        if bad.any():
            raise DataError(f"{path}: {what} predictions for images {tables.first_few(names[bad])}; a "
                            "submission holds probabilities in [0, 1]")
    return pd.DataFrame({"image_name": names, "pred": pred.astype(float)})


def _named_rows(path: str, where: str, expected: str) -> tuple[pd.DataFrame, pd.Series]:
    """(the table, its image names) of a CSV that must hold image_name and target, each image once; `where` names
    the file in messages and `expected` says what it should hold. Labels and submissions are read alike, so a
    benchmark's two files are refused in the same words."""
    frame = tables.read_string_table(path)
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in ("image_name", "target") if column not in frame.columns]
    if missing:
        raise DataError(f"{where} lacks column(s) {', '.join(missing)}; {expected} "
                        f"(found: {','.join(frame.columns) or 'none'})")
    names = tables.text_cells(frame["image_name"])
    if (names == "").any():
        raise DataError(f"{path}: empty image_name in data row(s) "
                        f"{tables.first_few((np.flatnonzero((names == '').to_numpy()) + 1).tolist())}")
    twice = names[names.duplicated()].unique()
    if len(twice):
        raise DataError(f"{path}: image names {tables.first_few(twice)} appear more than once")
    return frame, names


def match_labels(predictions: pd.DataFrame, labels: pd.DataFrame, submission: str, labels_path: str) -> pd.DataFrame:
    """One row per labelled image with its prediction; DataError naming the ids that either side lacks."""
    predicted, labelled = set(predictions["image_name"]), set(labels["image_name"])
    unpredicted, unlabelled = sorted(labelled - predicted), sorted(predicted - labelled)
    problems = []
    if unpredicted:
        problems.append(f"{submission} lacks {len(unpredicted)} of the {len(labels)} labelled images "
                        f"({tables.first_few(unpredicted)})")
    if unlabelled:
        problems.append(f"{labels_path} has no label for {len(unlabelled)} of the {len(predictions)} predicted "
                        f"images ({tables.first_few(unlabelled)})")
    if problems:
        raise DataError("; ".join(problems) + ": score a submission for the test images of these labels")
    frame = labels.merge(predictions, on="image_name", how="left", validate="one_to_one")
    if frame["target"].nunique() < 2:
        raise DataError(f"{labels_path}: every image has target {int(frame['target'].iloc[0])}; AUC needs both classes")
    return frame


def score_labelled(frame: pd.DataFrame, bootstrap: int = 1000, seed: int = 0, progress: bool | None = None) -> dict:
    """AUC of matched predictions (`match_labels`), its bootstrap interval (resampling patient_id), pauc_tpr80
    and the operating points: the keys `score_oof` gives them, as JSON-ready values."""
    target, pred = frame["target"].to_numpy(), frame["pred"].to_numpy()
    notes: list[str] = []
    ci95 = (_bootstrap_interval(target, pred, frame["patient_id"].to_numpy(), bootstrap, seed, progress, notes)
            if bootstrap else None)
    return {"auc": _json_number(metrics.auc(target, pred)), "ci95": ci95,
            "pauc_tpr80": _json_number(metrics.partial_auc_above_tpr(target, pred)), **operating_points(target, pred),
            "n": int(len(frame)), "n_positive": int(target.sum()), "n_patients": int(frame["patient_id"].nunique()),
            "bootstrap": int(bootstrap), "seed": int(seed), "warnings": notes}


def format_labelled(result: dict, labels_path: str) -> str:
    """A short human summary of a `score_labelled` result."""
    interval = ""
    if result.get("ci95"):
        low, high = result["ci95"]
        unit = "image" if result["n_patients"] == result["n"] else "patient"
        interval = f"  95% CI {_fmt(low)}-{_fmt(high)} ({result['bootstrap']} {unit} resamples)"
    return "\n".join([f"test AUC {_fmt(result['auc'])}{interval}  (labels: {labels_path})",
                      f"pauc_tpr80 {_fmt(result['pauc_tpr80'])} (of 0.2)  sens_at_spec90 "
                      f"{_fmt(result['sens_at_spec90'])}  spec_at_sens95 {_fmt(result['spec_at_sens95'])}",
                      f"images {result['n']}  malignant {result['n_positive']}"])


def labels_command(args: argparse.Namespace) -> int:
    """`score SUBMISSION --labels LABELS_CSV`."""
    frame = match_labels(read_predictions(args.oof_csv), read_labels(args.labels), args.oof_csv, args.labels)
    result = score_labelled(frame, bootstrap=args.bootstrap, seed=args.seed)
    for note in result["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps({**result, "labels": args.labels}) if args.json else format_labelled(result, args.labels))
    return 0


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("oof_csv", metavar="OOF_CSV", help="OOF file: image_name,patient_id,target,pred,fold "
                        "(with --labels: a submission, image_name,target)")
    parser.add_argument("--labels", metavar="LABELS_CSV", help="score a submission against public test labels "
                        "(image_name,target[,patient_id]; e.g. the test_labels.csv of `records --isic2017`)")
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
    if args.labels:
        return labels_command(args)
    frame = tables.read_oof(args.oof_csv)
    tables.check_probabilities(frame, args.oof_csv)
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
