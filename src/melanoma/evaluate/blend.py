"""Blend several runs: plain mean, rank mean, or weights fitted on OOF and judged by cross-validation.

`python -m melanoma blend CONFIG1 CONFIG2 ... [--method mean|rank|weights] [--name NAME] [--allow-partial] [--seeds N]`

`weights` fits non-negative weights by greedy hill climbing on OOF AUC (forward selection with
replacement, so weights are multiples of 1/iterations), on each run's ranks (its predictions' ranks over
the rows, scaled to (0, 1]): runs whose probabilities live on different scales (a class-weighted CNN, trees
trained on the plain prior) are blended on one scale, so a weighted mean of two runs cannot rank a fold's
rows against another fold's on a scale of their own. Fitting on the same rows it is scored on would flatter
the blend, so the reported AUC is cross-validated: for each fold, weights are fitted on the other folds'
OOF and applied to this fold. The blended OOF written is that cross-validated one, so `score` and `compare`
show an honest number; the submission uses weights fitted on all folds. A blend whose OOF AUC falls below
its best member's says so (and blend.json records it).

The partial rule is infer's: a run with folds missing stops the blend (exit status 2), unless
--allow-partial, which blends the folds every run has into `blend-...-folds0_2`. Writes
`<output_dir>/<blend>/oof.csv` and `blend.json` (so compare and report treat it as a run),
`<submission_dir>/<blend>.csv` and the record `<blend>.json` beside it (read by `submit`). Each argument
is a config file or a run folder; with --seeds N each config stands for its N seed runs (`train.py --seeds N`),
so `blend C --seeds 3` blends a config's seeds and `blend A B --seeds 3 --method rank` six runs.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from typing import Callable

import numpy as np
import pandas as pd

from melanoma.core import config as config_lib
from melanoma.core import io_utils, metrics, progress
from melanoma.core.errors import ConfigError, DataError
from melanoma.core.tables import first_few
from melanoma.predict import submission as submission_lib
from melanoma.runs import layout, run_config, run_results, seeds

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


def cross_validated_blend(preds: np.ndarray, target: np.ndarray, folds: np.ndarray,
                          fit: Callable[[np.ndarray, np.ndarray], np.ndarray] = fit_weights,
                          show_progress: bool = True) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """For each fold: weights fitted on the other folds' rows only, applied to this fold's rows.

    Returns (blended OOF predictions, {fold: weights used for it}).
    """
    blended = np.full(len(target), np.nan)
    weights: dict[int, np.ndarray] = {}
    for fold in progress.bar(sorted(set(folds.tolist())), desc="blend CV", unit="fold", disable=not show_progress):
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


def align_members(members: list[run_results.Member], folds: list[int] | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """(base OOF table from the first member, OOF matrix images x members aligned by image_name, notes),
    over the rows of `folds` (default: every row)."""
    base = members[0].oof[["image_name", "patient_id", "target", "fold"]]
    if folds is not None:
        base = base[base["fold"].isin(folds)]
        members = [_only_folds(member, folds) for member in members]
    base = base.reset_index(drop=True)
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


def _only_folds(member: run_results.Member, folds: list[int]) -> run_results.Member:
    """The member with the OOF rows of `folds` only (the first member's folds name the rows)."""
    trimmed = copy.copy(member)
    trimmed.oof = member.oof[member.oof["fold"].isin(folds)]
    return trimmed


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
          iterations: int = DEFAULT_ITERATIONS, force: bool = False, allow_partial: bool = False,
          seeds_per_config: int | None = None, allow_mixed: bool = False) -> dict:
    """Blend the runs of `specs` (configs or run folders; with `seeds_per_config` N, each config's N seed
    runs); writes the outputs and returns a summary."""
    if name is not None:  # a name inside output_dir, checked before any work
        config_lib.check_name(name if name.startswith("blend-") else f"blend-{name}", "--name")
    mixed: list[str] = []
    members = _check_members(seed_members(specs, seeds_per_config, allow_mixed, mixed), method, allow_partial)
    folds_used, expected = shared_folds(members)
    first = members[0].config
    output_dir = first.output_dir if first is not None else os.path.dirname(members[0].path)
    submission_dir = first.submission_dir if first is not None else "submissions"
    name = name or default_name(method, members)
    if not name.startswith("blend-"):
        name = f"blend-{name}"
    if mixed and not name.endswith(seeds.MIXED_SUFFIX):  # seed runs of other settings: said in the name
        name += seeds.MIXED_SUFFIX
    config_lib.check_name(name, "--name")
    stem = os.path.splitext(layout.submission_name(name, folds_used, expected))[0]  # + -folds... when partial
    submission_lib.partial_rule(f"blend {name}", folds_used, expected,
                                os.path.join(submission_dir, f"{stem}.csv"), allow_partial,
                                "train every run's folds {missing}")
    folder = os.path.join(output_dir, stem)
    try:  # before any work
        io_utils.check_replaceable(folder, "blend", earlier_blend, flag="the blend's folder")
    except ConfigError as error:
        raise ConfigError(f"{error}; choose another --name") from None

    base, matrix, notes = align_members(members, folds_used)
    target = base["target"].to_numpy()
    summary, blended, weights = _blend_oof(method, members, matrix, target, base["fold"].to_numpy(), iterations)
    summary.update(name=stem, folds_expected=expected, mixed=mixed)
    oof = base.assign(pred=blended)[["image_name", "patient_id", "target", "pred", "fold"]]

    test, sources = _member_test_predictions(members, folds_used, notes)
    summary["submission"] = None
    submission = sample = None
    if test is not None:
        submission, sample = _blend_submission(members, test, method, weights, stem, notes)
        summary["submission"] = os.path.join(submission_dir, f"{stem}.csv")
        summary["test_sources"] = sources
    summary["notes"] = notes
    # written whole: a blend's folder replaces only a blend's (a run's or the user's folder is refused)
    with io_utils.folder_written_whole(folder, command="blend", own=earlier_blend) as written:
        io_utils.write_csv_atomic(oof, os.path.join(written, layout.OOF))
        io_utils.write_text_atomic(os.path.join(written, layout.BLEND_FILE), json.dumps(summary, indent=2) + "\n")
    if submission is not None:
        submission_lib.write_submission(submission, summary["submission"], sample_path=sample, force=force,
                                        id_column=str(submission.columns[0]))
        submission_lib.write_record(summary["submission"], {
            "config": stem, "run": folder, "family": "blend", "method": method,
            "members": [member.name for member in members], "folds": folds_used, "folds_expected": expected,
            "sample_submission": sample})
    summary["folder"] = folder
    return summary


def earlier_blend(names: list[str]) -> bool:
    """A blend's folder from before folders carried their writer's marker: blend.json and oof.csv (and the
    report of it), never a run's config.yaml or anything of the user's."""
    return layout.BLEND_FILE in names and set(names) <= {layout.BLEND_FILE, layout.OOF, layout.REPORT}


def shared_folds(members: list[run_results.Member]) -> tuple[list[int], int]:
    """(the folds every member has, the folds the members expect); DataError when the members expect
    different fold counts or share no fold."""
    expected = {member.run.folds_expected for member in members}
    if len(expected) != 1 or None in expected:
        raise DataError(f"the runs split their data into different numbers of folds "
                        f"({', '.join(f'{m.name}: {m.run.folds_expected}' for m in members)}); blend runs on the "
                        "same folds")
    shared = sorted(set.intersection(*(set(member.folds) for member in members)))
    if not shared:
        raise DataError("the runs have no trained fold in common; train the same folds of each")
    return shared, expected.pop()


def seed_members(specs: list[str], count: int | None, allow_mixed: bool = False,
                 mixed: list[str] | None = None) -> list[str]:
    """--seeds N: each config among `specs` stands for its N seed runs' folders (runs/seeds.py); a run
    folder stays itself. A config's seed runs must be one experiment (as trained), unless `allow_mixed`:
    then how they differ is added to `mixed`."""
    mixed = [] if mixed is None else mixed
    if count is None:  # (0 is refused below, as train and infer refuse it)
        return list(specs)
    seeds.check_count(count)
    expanded = []
    for spec in specs:
        if os.path.isdir(spec):
            expanded.append(spec)
            continue
        config = config_lib.load_config(spec)
        trained = []
        for given in seeds.seed_runs(config, count, []):
            folder = layout.run_dir(config_lib.load_config(spec, given))
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"seed run {folder} of {spec} not found: train it first (python train.py "
                                        f"--config {spec} --seeds {count})")
            expanded.append(folder)
            trained.append(run_config.load_run_config(spec, given, quiet=True))
        mixed.extend(seeds.check_one_experiment(trained, allow_mixed, f"the seed runs of {spec}"))
    return expanded


def _check_members(specs: list[str], method: str, allow_partial: bool) -> list[run_results.Member]:
    """The runs of `specs`, once a known method, two runs or more and no run twice are confirmed."""
    if method not in METHODS:
        raise DataError(f"unknown blend method '{method}'; choose one of {', '.join(METHODS)}")
    if len(specs) < 2:
        raise DataError("a blend needs at least two runs")
    members = [run_results.Member(spec, allow_partial=allow_partial) for spec in specs]
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
        ranked = rank_scale(matrix)  # one scale for every run (see the module docstring)
        fit = lambda preds, labels: fit_weights(preds, labels, iterations)  # noqa: E731
        blended, fold_weights = cross_validated_blend(ranked, target, folds, fit)
        weights = fit(ranked, target)
        summary["auc_in_sample"] = metrics.auc(target, ranked @ weights)
        summary["fold_weights"] = {str(fold): _named(members, w) for fold, w in fold_weights.items()}
        summary["fitted_on"] = "ranks"
    summary["auc"] = metrics.auc(target, blended)
    summary["weights"] = _named(members, weights)
    summary["members"] = [{"name": member.name, "path": member.path,
                           "auc": metrics.auc(target, matrix[:, index])}
                          for index, member in enumerate(members)]
    summary["folds"] = sorted(set(folds.tolist()))
    best = max(summary["members"], key=lambda member: member["auc"])
    summary["below_best_member"] = summary["auc"] < best["auc"]
    if summary["below_best_member"]:
        summary["warning"] = (f"the blend's OOF AUC {summary['auc']:.4f} is below its best member's, {best['name']} "
                              f"({best['auc']:.4f}): it adds nothing; submit that run alone"
                              + (", or try --method rank" if method != "rank" else ""))
    return summary, blended, weights


def _member_test_predictions(members: list[run_results.Member], folds: list[int],
                             notes: list) -> tuple[list | None, list]:
    """Every member's test predictions over `folds` and their sources; None (with a note) at the first
    member without them."""
    test, sources = [], []
    for member in members:
        predictions, source = member.test_predictions(folds)
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
    if method in ("rank", "weights"):  # weights are fitted on ranks
        test_matrix = rank_scale(test_matrix)
    id_column = first.submission.id_column if first is not None else "image_name"  # the first run's sample's
    submission = pd.DataFrame({id_column: index, "target": test_matrix @ weights})
    sample = first.data.sample_submission if first is not None else None
    if sample and not io_utils.exists(sample):
        notes.append(f"sample submission {sample} not found; the blended submission was checked for "
                     f"format only, not against the test ids")
        sample = None
    # before writing anything
    submission_lib.validate_frame(submission, sample, where=f"blended submission {name}", id_column=id_column)
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
    parser.add_argument("--allow-partial", action="store_true",
                        help="with folds missing in a run, blend the folds every run has into <blend>-folds<K>_<K>")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="each CONFIG stands for its N seed runs <name>-s0 .. <name>-s<N-1> (train.py --seeds N)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="with --seeds: blend seed runs trained with other settings too (the name ends -mixed)")


def command(args: argparse.Namespace) -> int:
    if args.iterations < 1:
        raise DataError(f"--iterations must be at least 1, got {args.iterations}")
    summary = blend(args.configs, args.method, args.name, args.iterations, args.force, args.allow_partial,
                    args.seeds, args.allow_mixed)
    for note in summary["notes"] + ([summary["warning"]] if summary.get("warning") else []):
        print(f"warning: {note}", file=sys.stderr)
    for member in summary["members"]:
        print(f"  {member['name']:<40} OOF AUC {member['auc']:.4f}  weight {summary['weights'][member['name']]:.3f}")
    if args.method == "weights":
        print(f"blend {summary['name']}: cross-validated OOF AUC {summary['auc']:.4f} "
              f"(weights fitted on the other folds' ranks; in-sample {summary['auc_in_sample']:.4f} is optimistic)")
    else:
        print(f"blend {summary['name']}: OOF AUC {summary['auc']:.4f}")
    print(f"wrote {os.path.join(summary['folder'], layout.OOF)}")
    if summary["submission"]:
        print(f"wrote {summary['submission']}")
    return 0
