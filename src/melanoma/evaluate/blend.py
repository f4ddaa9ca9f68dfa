"""Blend several runs: plain mean, rank mean, or weights fitted on OOF and judged by cross-validation.

`python -m melanoma blend CONFIG1 CONFIG2 ... [--method mean|rank|weights] [--name NAME]`

`weights` fits non-negative weights by greedy hill climbing on OOF AUC (forward selection with
replacement, so weights are multiples of 1/iterations). Fitting on the same rows it is scored on would
flatter the blend, so the reported AUC is cross-validated: for each fold, weights are fitted on the other
folds' OOF and applied to this fold. The blended OOF written is that cross-validated one, so `score` and
`compare` show an honest number; the submission uses weights fitted on all folds.

Writes `<output_dir>/blend-*/oof.csv` and `blend.json` (so compare and report treat it as a run) and
`<submission_dir>/blend-*.csv`. Each argument is a config file or a run folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from melanoma.core import io_utils, layout, metrics, run_results
from melanoma.core.errors import DataError
from melanoma.core.tables import first_few
from melanoma.predict.submission import validate_frame, write_submission

METHODS = ("mean", "rank", "weights")
DEFAULT_ITERATIONS = 25


# --------------------------------------------------------------------------------------------------
# Blending arithmetic
# --------------------------------------------------------------------------------------------------


def rank_scale(preds: np.ndarray) -> np.ndarray:
    """Each column's ranks divided by the row count: values in (0, 1], order kept, scale removed."""
    # scipy loads only when this runs
    from scipy.stats import rankdata

    return rankdata(preds, axis=0) / len(preds)


def fit_weights(preds: np.ndarray, target: np.ndarray, iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """Greedy hill climbing on AUC: start from the best single model, then repeatedly add (with
    replacement) the model whose addition raises AUC most; stop after `iterations` picks or when no
    addition helps. Returns weights that sum to 1."""
    models = preds.shape[1]
    single = [metrics.auc(target, preds[:, j]) for j in range(models)]
    counts = np.zeros(models)
    first = int(np.nanargmax(single))
    counts[first] = 1
    total = preds[:, first].copy()
    current = single[first]
    for _ in range(iterations - 1):
        picks = counts.sum()
        scores = [metrics.auc(target, (total + preds[:, j]) / (picks + 1)) for j in range(models)]
        best = int(np.nanargmax(scores))
        if not scores[best] > current + 1e-12:
            break
        counts[best] += 1
        total += preds[:, best]
        current = scores[best]
    return counts / counts.sum()


def _show_progress(progress: bool | None) -> bool:
    """None: show a bar only when a person is watching (stderr is a terminal)."""
    return sys.stderr.isatty() if progress is None else progress


def cross_validated_blend(preds: np.ndarray, target: np.ndarray, folds: np.ndarray,
                          fit: Callable[[np.ndarray, np.ndarray], np.ndarray] = fit_weights,
                          progress: bool | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """For each fold: weights fitted on the other folds' rows only, applied to this fold's rows.

    Returns (blended OOF predictions, {fold: weights used for it}).
    """
    blended = np.full(len(target), np.nan)
    weights: dict[int, np.ndarray] = {}
    for fold in tqdm(sorted(set(folds.tolist())), desc="blend CV", unit="fold", disable=not _show_progress(progress)):
        held_out = folds == fold
        train_target = target[~held_out]
        if len(set(train_target.tolist())) < 2:
            raise DataError(f"cannot fit blend weights without fold {fold}: the other folds hold one class")
        weights[fold] = np.asarray(fit(preds[~held_out], train_target), dtype=float)
        blended[held_out] = preds[held_out] @ weights[fold]
    return blended, weights


# --------------------------------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------------------------------


def align_members(members: list[run_results.Member]) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """(base OOF table from the first member, OOF matrix images x members aligned by image_name, notes)."""
    base = members[0].oof[["image_name", "patient_id", "target", "fold"]].reset_index(drop=True)
    names = base["image_name"]
    matrix = np.empty((len(base), len(members)))
    notes = []
    for index, member in enumerate(members):
        oof = member.oof.set_index("image_name")
        missing = names[~names.isin(oof.index)]
        extra = oof.index[~oof.index.isin(names)]
        if len(missing) or len(extra):
            raise DataError(f"{member.name} and {members[0].name} scored different images "
                            f"({len(missing)} only in {members[0].name}: {first_few(missing)}; "
                            f"{len(extra)} only in {member.name}: {first_few(extra)}); blend runs on the same data")
        aligned = oof.loc[names]
        if (aligned["target"].to_numpy() != base["target"].to_numpy()).any():
            raise DataError(f"{member.name} has other targets than {members[0].name} for the same images")
        if (aligned["fold"].to_numpy() != base["fold"].to_numpy()).any():
            notes.append(f"{member.name} assigns folds differently from {members[0].name}; the blend's "
                         f"cross-validation uses {members[0].name}'s folds")
        matrix[:, index] = aligned["pred"].to_numpy()
    return base, matrix, notes


def default_name(method: str, members: list[run_results.Member]) -> str:
    name = f"blend-{method}-" + "-".join(member.name for member in members)
    if len(name) > 80:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name[:70].rstrip("-") + "-" + digest
    return name


# --------------------------------------------------------------------------------------------------
# The blend
# --------------------------------------------------------------------------------------------------

def blend(specs: list[str], method: str = "mean", name: str | None = None,
          iterations: int = DEFAULT_ITERATIONS, force: bool = False) -> dict:
    """Blend the runs of `specs` (configs or run folders); writes the outputs and returns a summary."""
    members = _check_members(specs, method)
    base, matrix, notes = align_members(members)
    target = base["target"].to_numpy()
    folds = base["fold"].to_numpy()
    summary, blended, weights = _blend_oof(method, members, matrix, target, folds, iterations)

    first = members[0].config
    output_dir = first.output_dir if first is not None else os.path.dirname(members[0].path)
    submission_dir = first.submission_dir if first is not None else "submissions"
    name = name or default_name(method, members)
    if not name.startswith("blend-"):
        name = f"blend-{name}"
    summary["name"] = name
    folder = os.path.join(output_dir, name)
    oof = base.assign(pred=blended)[["image_name", "patient_id", "target", "pred", "fold"]]

    test, sources = _member_test_predictions(members, notes)
    summary["submission"] = None
    submission = sample = None
    if test is not None:
        submission, sample = _blend_submission(members, test, method, weights, name, notes)
        summary["submission"] = os.path.join(submission_dir, f"{name}.csv")
        summary["test_sources"] = sources
    summary["notes"] = notes
    io_utils.write_csv_atomic(oof, os.path.join(folder, layout.OOF))
    io_utils.write_text_atomic(os.path.join(folder, layout.BLEND_FILE), json.dumps(summary, indent=2) + "\n")
    if submission is not None:
        write_submission(submission, summary["submission"], sample_path=sample, force=force)
    summary["folder"] = folder
    return summary


def _check_members(specs: list[str], method: str) -> list[run_results.Member]:
    """The runs of `specs`, once a known method, two runs or more and no run twice are confirmed."""
    if method not in METHODS:
        raise DataError(f"unknown blend method '{method}'; choose one of {', '.join(METHODS)}")
    if len(specs) < 2:
        raise DataError("a blend needs at least two runs")
    members = [run_results.Member(spec) for spec in specs]
    seen = [member.path for member in members]
    if len(set(map(os.path.abspath, seen))) < len(seen):
        raise DataError(f"the same run is named twice: {', '.join(seen)}")
    return members


def _blend_oof(method: str, members: list[run_results.Member], matrix: np.ndarray, target: np.ndarray,
               folds: np.ndarray, iterations: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(summary so far, blended OOF predictions, weights for the test predictions)."""
    summary: dict = {"method": method, "iterations": iterations if method == "weights" else None}
    if method == "mean":
        weights = np.full(len(members), 1 / len(members))
        blended = matrix @ weights
    elif method == "rank":
        weights = np.full(len(members), 1 / len(members))
        blended = rank_scale(matrix) @ weights
    else:
        fit = lambda preds, labels: fit_weights(preds, labels, iterations)  # noqa: E731
        blended, fold_weights = cross_validated_blend(matrix, target, folds, fit)
        weights = fit(matrix, target)
        summary["auc_in_sample"] = metrics.auc(target, matrix @ weights)
        summary["fold_weights"] = {str(fold): _named(members, w) for fold, w in fold_weights.items()}
    summary["auc"] = metrics.auc(target, blended)
    summary["weights"] = _named(members, weights)
    summary["members"] = [{"name": member.name, "path": member.path,
                           "auc": metrics.auc(target, matrix[:, index])}
                          for index, member in enumerate(members)]
    summary["folds"] = sorted(set(folds.tolist()))
    return summary, blended, weights


def _member_test_predictions(members: list[run_results.Member], notes: list) -> tuple[list | None, list]:
    """Every member's test predictions and their sources; None (with a note) at the first member
    without them."""
    test, sources = [], []
    for member in members:
        predictions, source = member.test_predictions()
        if predictions is None:
            notes.append(f"no submission written: {member.name} has {source}")
            return None, sources
        test.append(predictions)
        sources.append(source)
    return test, sources


def _blend_submission(members: list[run_results.Member], test: list, method: str, weights: np.ndarray,
                      name: str, notes: list) -> tuple[pd.DataFrame, str | None]:
    """The checked blended submission and the sample submission to check it against (None when
    there is none to find)."""
    first = members[0].config
    index = test[0].index
    for member, predictions in zip(members[1:], test[1:]):
        if set(predictions.index) != set(index):
            raise DataError(f"{member.name}'s test predictions cover other images than "
                            f"{members[0].name}'s; re-run inference")
    test_matrix = np.column_stack([predictions.loc[index].to_numpy() for predictions in test])
    if method == "rank":
        test_matrix = rank_scale(test_matrix)
    submission = pd.DataFrame({"image_name": index, "target": test_matrix @ weights})
    sample = first.data.sample_submission if first is not None else None
    if sample and not io_utils.exists(sample):
        notes.append(f"sample submission {sample} not found; the blended submission was checked for "
                     f"format only, not against the test ids")
        sample = None
    validate_frame(submission, sample, where=f"blended submission {name}")  # before writing anything
    return submission, sample


def _named(members: list[run_results.Member], weights: np.ndarray) -> dict[str, float]:
    return {member.name: round(float(weight), 6) for member, weight in zip(members, weights)}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="configs (or run folders) to blend")
    parser.add_argument("--method", choices=METHODS, default="mean",
                        help="mean of predictions, mean of ranks, or weights fitted on OOF (default mean)")
    parser.add_argument("--name", help="blend name (default blend-<method>-<runs>); 'blend-' is prepended")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, metavar="N",
                        help=f"hill-climbing picks for --method weights (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a different existing blend submission without a backup")


def command(args: argparse.Namespace) -> int:
    if args.iterations < 1:
        raise DataError(f"--iterations must be at least 1, got {args.iterations}")
    summary = blend(args.configs, args.method, args.name, args.iterations, args.force)
    for note in summary["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    for member in summary["members"]:
        print(f"  {member['name']:<40} OOF AUC {member['auc']:.4f}  weight {summary['weights'][member['name']]:.3f}")
    if args.method == "weights":
        print(f"blend {summary['name']}: cross-validated OOF AUC {summary['auc']:.4f} "
              f"(weights fitted on the other folds; in-sample {summary['auc_in_sample']:.4f} is optimistic)")
    else:
        print(f"blend {summary['name']}: OOF AUC {summary['auc']:.4f}")
    print(f"wrote {os.path.join(summary['folder'], 'oof.csv')}")
    if summary["submission"]:
        print(f"wrote {summary['submission']}")
    return 0
