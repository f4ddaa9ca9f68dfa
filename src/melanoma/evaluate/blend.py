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

from melanoma.core import io_utils
from melanoma.core.errors import DataError
from melanoma.evaluate.scoring import _numbers, competition_auc, first_few, read_string_table

METHODS = ("mean", "rank", "weights")
DEFAULT_ITERATIONS = 25


# --------------------------------------------------------------------------------------------------
# Blending arithmetic
# --------------------------------------------------------------------------------------------------

def fast_auc(target: np.ndarray, pred: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (same value as roc_auc_score, ties counted one half)."""
    from scipy.stats import rankdata

    positive = np.asarray(target) == 1
    m = int(positive.sum())
    n = len(positive) - m
    if m == 0 or n == 0:
        return float("nan")
    ranks = rankdata(pred)
    return float((ranks[positive].sum() - m * (m + 1) / 2) / (m * n))


def rank_scale(preds: np.ndarray) -> np.ndarray:
    """Each column's ranks divided by the row count: values in (0, 1], order kept, scale removed."""
    from scipy.stats import rankdata

    return rankdata(preds, axis=0) / len(preds)


def fit_weights(preds: np.ndarray, target: np.ndarray, iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """Greedy hill climbing on AUC: start from the best single model, then repeatedly add (with
    replacement) the model whose addition raises AUC most; stop after `iterations` picks or when no
    addition helps. Returns weights that sum to 1."""
    models = preds.shape[1]
    single = [fast_auc(target, preds[:, j]) for j in range(models)]
    counts = np.zeros(models)
    first = int(np.nanargmax(single))
    counts[first] = 1
    total = preds[:, first].copy()
    current = single[first]
    for _ in range(iterations - 1):
        picks = counts.sum()
        scores = [fast_auc(target, (total + preds[:, j]) / (picks + 1)) for j in range(models)]
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
    from tqdm.auto import tqdm

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

class Member:
    """One run in the blend: its name, folder, config (None for a folder without one), OOF, test preds."""

    def __init__(self, spec: str):
        from melanoma.evaluate.compare import inspect_run, load_run_oof

        spec = str(spec)
        self.spec = spec
        self.config = None
        if os.path.isdir(spec):
            path = spec.rstrip("/")
        else:
            from melanoma.core import run as run_lib
            from melanoma.core.config import load_config, run_dir

            path = run_dir(load_config(spec))
            if not os.path.isdir(path):
                raise FileNotFoundError(f"run folder of {spec} not found: {path} (train it first)")
            self.config = run_lib.load_run_config(spec)  # what the run was trained with
        run = inspect_run(path)
        if run.problem:
            raise DataError(f"{path}: {run.problem}")
        self.run = run
        self.name = run.name
        self.path = path
        if self.config is None:
            self.config = run.config
        frame, complete, present = load_run_oof(run)
        if not complete:
            raise DataError(f"{self.name} is incomplete (folds {','.join(map(str, present))} of "
                            f"{run.folds_expected or '?'} done); blend only finished runs")
        self.oof = frame

    def submission_path(self) -> str | None:
        if self.run.blend is not None:
            return self.run.blend.get("submission")
        if self.config is not None:
            return os.path.join(self.config.submission_dir, f"{self.name}.csv")
        return None

    def test_predictions(self) -> tuple[pd.Series | None, str]:
        """(pred by image_name, where it came from): the mean of fold<K>/test.csv over all folds, else
        the run's submission file; (None, reason) when neither exists."""
        folds = self.run.folds_expected
        paths = [os.path.join(self.path, f"fold{fold}", "test.csv") for fold in range(folds or 0)]
        if paths and all(os.path.isfile(path) for path in paths):
            self.check_same_settings(paths)
            columns = [_prediction_column(path, "pred") for path in paths]
            reference = set(columns[0].index)
            for path, column in zip(paths[1:], columns[1:]):
                if set(column.index) != reference:
                    raise DataError(f"{path} predicts other images than {paths[0]}; re-run inference")
            table = pd.concat(columns, axis=1)
            return table.mean(axis=1), f"mean of {len(paths)} fold test.csv"
        submission = self.submission_path()
        if submission and io_utils.exists(submission):
            return _prediction_column(submission, "target"), submission
        return None, f"no fold<K>/test.csv and no {submission or 'submission'}"

    def check_same_settings(self, paths: list[str]) -> None:
        """Every fold's test predictions made under the same settings (test.json: TTA, size, test files):
        averaging folds predicted differently is refused, never done silently."""
        settings = [_fold_settings(path) for path in paths]
        unknown = [path for path, made in zip(paths, settings) if made is None]
        if unknown:
            raise DataError(f"{unknown[0]} has no readable test.json beside it, so what it was predicted with "
                            f"is unknown; predict the run again (python infer.py --config ... --recompute)")
        for path, made in zip(paths[1:], settings[1:]):
            if made != settings[0]:
                keys = sorted(key for key in set(made) | set(settings[0]) if made.get(key) != settings[0].get(key))
                shown = ", ".join(f"{key}: {settings[0].get(key)!r} vs {made.get(key)!r}" for key in keys)
                raise DataError(f"{self.name}: {paths[0]} and {path} were predicted under different settings "
                                f"({shown}); predict every fold alike (python infer.py --config ...)")


def _fold_settings(test_csv: str) -> dict | None:
    path = os.path.join(os.path.dirname(test_csv), "test.json")
    if not os.path.isfile(path):
        return None
    try:
        return json.loads(io_utils.read_text(path))
    except ValueError:
        return None


def _prediction_column(path: str, column: str) -> pd.Series:
    table = read_string_table(path)
    for needed in ("image_name", column):
        if needed not in table.columns:
            raise DataError(f"{path} lacks column {needed} (found: {','.join(table.columns)})")
    values, not_numeric = _numbers(table[column])
    bad = not_numeric | ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{path}: missing or non-numeric {column} for images "
                        f"{first_few(table['image_name'][bad])}")
    names = table["image_name"].astype(str)
    if names.duplicated().any():
        raise DataError(f"{path}: duplicate image names {first_few(names[names.duplicated()].unique())}")
    return pd.Series(values.to_numpy(), index=names.to_numpy(), name=path)


def align_members(members: list[Member]) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
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


def default_name(method: str, members: list[Member]) -> str:
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
    from melanoma.predict.submission import validate_frame, write_submission

    if method not in METHODS:
        raise DataError(f"unknown blend method '{method}'; choose one of {', '.join(METHODS)}")
    if len(specs) < 2:
        raise DataError("a blend needs at least two runs")
    members = [Member(spec) for spec in specs]
    seen = [member.path for member in members]
    if len(set(map(os.path.abspath, seen))) < len(seen):
        raise DataError(f"the same run is named twice: {', '.join(seen)}")
    base, matrix, notes = align_members(members)
    target = base["target"].to_numpy()
    folds = base["fold"].to_numpy()

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
        summary["auc_in_sample"] = competition_auc(target, matrix @ weights)
        summary["fold_weights"] = {str(fold): _named(members, w) for fold, w in fold_weights.items()}
    summary["auc"] = competition_auc(target, blended)
    summary["weights"] = _named(members, weights)
    summary["members"] = [{"name": member.name, "path": member.path,
                           "auc": competition_auc(target, matrix[:, index])}
                          for index, member in enumerate(members)]
    summary["folds"] = sorted(set(folds.tolist()))

    first = members[0].config
    output_dir = first.output_dir if first is not None else os.path.dirname(members[0].path)
    submission_dir = first.submission_dir if first is not None else "submissions"
    name = name or default_name(method, members)
    if not name.startswith("blend-"):
        name = f"blend-{name}"
    summary["name"] = name
    folder = os.path.join(output_dir, name)
    oof = base.assign(pred=blended)[["image_name", "patient_id", "target", "pred", "fold"]]

    test, sources = [], []
    for member in members:
        predictions, source = member.test_predictions()
        if predictions is None:
            notes.append(f"no submission written: {member.name} has {source}")
            test = None
            break
        test.append(predictions)
        sources.append(source)
    summary["submission"] = None
    submission = sample = None
    if test is not None:
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
        summary["submission"] = os.path.join(submission_dir, f"{name}.csv")
        summary["test_sources"] = sources
    summary["notes"] = notes
    io_utils.write_csv_atomic(oof, os.path.join(folder, "oof.csv"))
    io_utils.write_text_atomic(os.path.join(folder, "blend.json"), json.dumps(summary, indent=2) + "\n")
    if submission is not None:
        write_submission(submission, summary["submission"], sample_path=sample, force=force)
    summary["folder"] = folder
    return summary


def _named(members: list[Member], weights: np.ndarray) -> dict[str, float]:
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
