"""Compare runs: one row per run folder with its OOF AUC, interval, folds and the gap to the best run.

`python -m melanoma compare [DIR] [--json] [--by auc|unselected] [--test patient|image] [--fold K[,K...]]
[--bootstrap N] [--seed S]`

A run folder (`outputs/<name>/`) holds `config.yaml`, `fold<K>/oof.csv` per finished fold and `oof.csv`
over all folds; a blend folder holds `blend.json` instead of `config.yaml`. A run is complete when every
fold 0..data.folds-1 has its OOF; an incomplete run is listed with its partial AUC marked as such and is
never ranked against complete runs. The difference from the best run comes with a p-value on the images
both runs scored: DeLong's test clustered by patient (Obuchowski, 1997) by default, since images of one
patient are correlated, or the per-image DeLong test with `--test image` (for reference: on OOF
predictions it calls too many equal runs different).

`--fold K[,K...]` scores every run on those folds' OOF alone: runs trained on one fold (`train --fold 0`,
`sweep --fold 0`) are then complete, ranked and tested against the best on the same images; a run without one
of those folds is partial.

Beside the OOF AUC each run shows `auc_unselected` (each fold at the epoch chosen on the other folds;
see `selection`) and `pauc_tpr80` (ISIC 2024's partial AUC above 80% sensitivity). `--by unselected`
ranks complete runs by auc_unselected instead, and then compares the runs' unselected predictions.

Under the table, two complete runs whose configs differ in one key only (what binds a run, train.deterministic
aside) get a line when either was not deterministic (`Family.repeatable`: a CNN run without
train.deterministic, or saved before the key existed): its own retraining would not give the same
predictions, so their difference may be noise. Each row's `deterministic` says which runs repeat.

The helpers here (run_results.find_runs, run_results.inspect_run, run_results.load_run_oof) are shared with
`report` and `blend`.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

import pandas as pd

from melanoma.core import progress
from melanoma.core.errors import ConfigError, DataError
from melanoma.evaluate import scoring, seed_groups, selection
from melanoma.evaluate.scoring import ScoreWarning, score_oof
from melanoma.evaluate.statistics import clustered_delong_test, delong_test
from melanoma.runs import fold_state, run_config, run_results
from melanoma.train.families import family as family_lib

RANK_BY = {"auc": "auc", "unselected": "auc_unselected"}
DETERMINISM_KEY = "train.deterministic"
TESTS = ("patient", "image")


def _describe(run: run_results.Run) -> dict:
    """The model, input size, external data and TTA of a run (its family's label), or of a blend."""
    if run.blend is not None:
        members = run.blend.get("members", [])
        return {"backbone": "blend: " + "+".join(str(member.get("name", "?")) for member in members),
                "image_size": None, "external": None, "tta": None}
    if run.config is None:
        return {"backbone": None, "image_size": None, "external": None, "tta": None}
    try:
        label = family_lib.lookup(run.config).label(run.config)
    except (ConfigError, KeyError, TypeError, AttributeError):  # a config saved by other code
        return {"backbone": None, "image_size": None, "external": None, "tta": None}
    return {"backbone": label.model, "image_size": label.image_size, "external": label.external, "tta": label.tta}


def compare_runs(directory: str, bootstrap: int = 1000, seed: int = 0, by: str = "auc",
                 test: str = "patient", seeds: bool = True, folds: list[int] | None = None) -> list[dict]:
    """One dict per run folder, best complete run first (see the module docstring for the fields).

    by: "auc" ranks complete runs by OOF AUC; "unselected" by auc_unselected (complete runs without
    it follow, unranked). test: "patient" (clustered DeLong) or "image" (per-image DeLong). seeds: runs
    that differ only by seed are one row (seed_groups); False lists each. folds: score on these folds alone.
    """
    return compare_paths(run_results.find_runs(directory), bootstrap, seed, by, test, seeds, folds)


def compare_paths(paths: list[str], bootstrap: int = 1000, seed: int = 0, by: str = "auc",
                  test: str = "patient", seeds: bool = True, folds: list[int] | None = None) -> list[dict]:
    """compare_runs over the run folders `paths` alone: a group of runs (a sweep's) compared among
    themselves, whatever else their folder of runs holds. `folds`: the group was trained on these folds
    alone (a sweep's --fold), so each run is scored, complete and ranked on their OOF alone."""
    if by not in RANK_BY:
        raise DataError(f"--by must be one of {', '.join(RANK_BY)}, got '{by}'")
    if test not in TESTS:
        raise DataError(f"--test must be one of {', '.join(TESTS)}, got '{test}'")
    rows: list[dict] = []
    frames: dict[str, pd.DataFrame] = {}
    runs: dict[str, run_results.Run] = {}
    for path in progress.bar(paths, desc="runs", unit="run", disable=len(paths) < 4, leave=False):
        run = runs[path] = run_results.inspect_run(path)
        row = _blank_row(run, test)
        if folds is not None:
            row["folds"] = len(folds)
        rows.append(row)
        if not run.problem:
            _score_run(run, row, frames, bootstrap, seed, by, folds)
    if seeds:  # the runs that differ only by seed, one row each group
        rows = seed_groups.collapse(rows, runs, frames)
    ranked = _ranked(rows, frames, by, test)
    seed_groups.compare_groups(ranked, frames)
    _note_noise(ranked, runs)
    return ranked


def _blank_row(run: run_results.Run, test: str) -> dict[str, Any]:
    """A run's row before scoring: what its folder says, every score empty, status "error"."""
    return {"name": run.name, "path": run.path, "kind": run.kind, **_describe(run),
            "folds_done": len(run.fold_files), "folds": run.folds_expected,
            "status": "error", "auc": None, "auc_partial": None, "auc_unselected": None,
            "selection_gain": None, "pauc_tpr80": None, "ci95": None,
            "fold_mean": None, "fold_std": None, "n": None, "n_positive": None,
            "delta_best": None, "p_best": None, "p_test": test, "n_common": None,
            "deterministic": _repeatable(run), "noise": [], "note": run.problem}


def _repeatable(run: run_results.Run) -> bool | None:
    """Whether the run's training repeats (its family's answer for its config); None for a blend or a
    run without a readable config."""
    if run.blend is not None or run.config is None:
        return None
    try:
        return family_lib.lookup(run.config).repeatable(run.config)
    except (ConfigError, KeyError, TypeError, AttributeError):  # a config saved by other code
        return None


def _note_noise(rows: list[dict], runs: dict[str, run_results.Run]) -> None:
    """A note in both rows' `noise` for each pair of complete runs that differ in one bound key (train.deterministic
    aside) while either was not deterministic (module docstring)."""
    defaults = run_config.binding(run_config.code_defaults())
    single = [row for row in rows if row["kind"] == "run" and row["status"] == "complete"
              and row.get("deterministic") is not None]
    for index, first in enumerate(single):
        for second in single[index + 1:]:
            keys = [key for key, _, _ in fold_state.config_differences(
                run_config.binding(runs[first["path"]].config), run_config.binding(runs[second["path"]].config),
                defaults) if key != DETERMINISM_KEY]
            pair = sorted((first, second), key=lambda row: row["name"])
            noisy = [row["name"] for row in pair if not row["deterministic"]]
            if len(keys) != 1 or not noisy:
                continue
            who = f"{noisy[0]} was not" if len(noisy) == 1 else "neither was"
            note = (f"runs {pair[0]['name']} and {pair[1]['name']} differ only in {keys[0]}, but {who} "
                    "deterministic: the difference may be noise")
            first["noise"].append(note)
            second["noise"].append(note)


def _score_run(run: run_results.Run, row: dict, frames: dict[str, pd.DataFrame], bootstrap: int, seed: int,
               by: str, folds: list[int] | None = None) -> None:
    """Fill `row` with the run's scores (on `folds` alone where given); keep a complete run's compared
    predictions in `frames`. A DataError leaves the row an error with the message as its note."""
    try:
        frame, complete, present = run_results.load_run_oof(run)
        if folds is not None:
            frame = frame[frame["fold"].isin(folds)].reset_index(drop=True)
            present = [fold for fold in present if fold in folds]
            complete = set(folds) <= set(present)
            if not present:
                row.update(status="incomplete", folds_done=0,
                           note=f"partial: none of fold(s) {','.join(map(str, folds))} done")
                return
        chosen = selection.epoch_selection(frame, run.path) if complete else selection.Selection(
            reason="incomplete run")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScoreWarning)
            score = score_oof(frame, bootstrap=bootstrap if complete else 0, seed=seed, selection=chosen)
    except DataError as error:
        row["note"] = str(error)
        return
    row.update(folds_done=len(present), n=score["n"], n_positive=score["n_positive"],
               fold_mean=score["fold_mean"], fold_std=score["fold_std"])
    if complete:
        row.update(status="complete", auc=score["auc"], ci95=score["ci95"], pauc_tpr80=score["pauc_tpr80"],
                   auc_unselected=score["auc_unselected"], selection_gain=score["selection_gain"])
        frames[run.path] = frame if by == "auc" else chosen.frame
    else:
        row.update(status="incomplete", auc_partial=score["auc"],
                   note=f"partial: folds {','.join(map(str, present))} of "
                        f"{run.folds_expected if run.folds_expected else '?'}")
    if score["warnings"]:
        row["note"] = "; ".join(filter(None, [row["note"]] + score["warnings"]))


def _ranked(rows: list[dict], frames: dict[str, pd.DataFrame], by: str, test: str) -> list[dict]:
    """The rows in order (ranked complete runs, unranked complete ones, partial runs, errors), each
    ranked run tested against the best."""
    key = RANK_BY[by]
    ranked = sorted((row for row in rows if row["status"] == "complete" and row[key] is not None),
                    key=lambda r: -r[key])
    unranked = [row for row in rows if row["status"] == "complete" and row[key] is None]
    for row in unranked:
        row["note"] = "; ".join(filter(None, [row["note"], "no auc_unselected: not ranked"]))
    partial_rows = sorted((row for row in rows if row["status"] == "incomplete"),
                          key=lambda r: -(r["auc_partial"] or 0))
    error_rows = [row for row in rows if row["status"] == "error"]
    if ranked:
        best = ranked[0]
        best_frame = frames[best["path"]]  # a seed group's: its runs' frames
        for row in ranked[1:]:
            row["delta_best"] = round(row[key] - best[key], 6)
            if row["kind"] == best["kind"] == "seeds":
                seed_groups.p_against_best(row, best, frames)
            elif "seeds" in (row["kind"], best["kind"]):
                row["note"] = "; ".join(filter(None, [row["note"], "no p: a seed group is tested against seed "
                                                                   "groups only (below)"]))
            else:
                _test_against(row, best_frame, frames[row["path"]], test)
        best["delta_best"] = 0.0
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    for row in unranked + partial_rows + error_rows:
        row["rank"] = None
    return ranked + unranked + partial_rows + error_rows


def _test_against(row: dict, best: pd.DataFrame, other: pd.DataFrame, test: str) -> None:
    """p-value of DeLong's test (clustered by patient, or per image) between the best run and this
    one, on the images both scored."""
    common = best[["image_name", "patient_id", "target", "pred"]].merge(
        other[["image_name", "patient_id", "target", "pred"]], on="image_name", suffixes=("_best", "_run"))
    row["n_common"] = int(len(common))
    if common.empty:
        row["note"] = "no images in common with the best run"
        return
    paired = [("target", "targets", "hold one class")]
    if test != "image":  # the clustered test needs the patients too
        paired.append(("patient_id", "patient ids", "are of one patient"))
    for column, plural, one_value in paired:
        note = _unpaired(common, column, plural, one_value)
        if note:
            row["note"] = f"{note}; no p-value"
            return
    if test == "image":
        _, _, p_value = delong_test(common["target_best"], common["pred_best"], common["pred_run"])
    else:
        _, _, p_value = clustered_delong_test(common["target_best"], common["pred_best"], common["pred_run"],
                                              common["patient_id_best"])
    row["p_best"] = float(f"{p_value:.3g}")


def _unpaired(common: pd.DataFrame, column: str, plural: str, one_value: str) -> str | None:
    """Why the shared images of two runs cannot be compared on `column` (its values differ between the runs,
    or are one value only, where DeLong's test needs two), or None when they can."""
    if (common[f"{column}_best"] != common[f"{column}_run"]).any():
        return f"{plural} differ from the best run's on shared images"
    if common[f"{column}_best"].nunique() < 2:
        return f"shared images with the best run {one_value}"
    return None


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of compare_runs' rows."""
    header = ["#", "name", "backbone", "size", "ext", "folds", "tta", "OOF AUC", "unselected", "pAUC80",
              "95% CI", "fold mean±std", "vs best", "p", "status"]
    lines = []
    for row in rows:
        if row["status"] == "complete":
            auc = _cell(row["auc"])
        elif row["auc_partial"] is not None:
            auc = f"({_cell(row['auc_partial'])})*"
        else:
            auc = "-"
        ci = f"{row['ci95'][0]:.4f}-{row['ci95'][1]:.4f}" if row["ci95"] else "-"
        spread = "-" if row["fold_mean"] is None else (
            f"{row['fold_mean']:.4f}±{row['fold_std']:.4f}" if row["fold_std"] is not None
            else f"{row['fold_mean']:.4f}")
        delta = "-" if row["delta_best"] is None else (
            "best" if row["rank"] == 1 else f"{row['delta_best']:+.4f}")
        p_value = "-" if row["p_best"] is None else f"{row['p_best']:.3g}"
        folds = f"{row['folds_done']}/{row['folds'] if row['folds'] else '?'}"
        status = row["status"] + (f" ({row['note']})" if row["note"] else "")
        lines.append([_cell(row["rank"]), row["name"], _cell(row["backbone"]), _cell(row["image_size"]),
                      _cell(row["external"]), folds, _cell(row["tta"]), auc, _cell(row.get("auc_unselected")),
                      _cell(row.get("pauc_tpr80")), ci, spread, delta, p_value, status])
    widths = [max(len(str(item)) for item in column) for column in zip(header, *lines)]
    text = ["  ".join(str(item).ljust(width) for item, width in zip(line, widths)).rstrip()
            for line in [header] + lines]
    if any(row["status"] == "incomplete" for row in rows):
        text.append("(...)* partial AUC of an incomplete run, over the folds done; not ranked")
    tests = {row.get("p_test") for row in rows if row["p_best"] is not None}
    if tests - {"seeds"}:
        how = ("DeLong's test clustered by patient" if tests - {"seeds"} == {"patient"}
               else "per-image DeLong test (ignores patients: too small for OOF)")
        text.append(f"p: {how}, against the best run on the images both scored")
    if any(row.get("kind") == "seeds" for row in rows):
        text.append("seeds: a seed group's OOF AUC is its seeds' mean; its p (against a best seed group) compares "
                    "seed means, patients and seeds both sampled")
    noise = [note for row in rows for note in row.get("noise") or []]
    text += list(dict.fromkeys(noise))
    return "\n".join(text + seed_groups.format_block(rows))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="outputs", metavar="DIR",
                        help="folder of run folders (default: outputs)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--by", choices=tuple(RANK_BY), default="auc",
                        help="rank by OOF AUC (default) or by auc_unselected (epochs chosen on other folds)")
    parser.add_argument("--test", choices=TESTS, default="patient",
                        help="p-value vs the best run: DeLong clustered by patient (default) or per image")
    scoring.add_bootstrap_arguments(parser, "each run's 95%% interval")
    parser.add_argument("--fold", default="all", metavar="K[,K...]",
                        help="score every run on these folds' OOF alone (a run without one is partial); "
                             "default: all of each run's folds")
    parser.add_argument("--each-seed", action="store_true",
                        help="list every seed run on its own row instead of one row per seed group")


def parse_fold_list(text: str) -> list[int] | None:
    """compare's --fold: None for 'all', else the fold numbers of a comma list (each at least 0)."""
    if text == "all":
        return None
    try:
        folds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--fold takes a fold number, a comma list such as 0,1, or 'all', got '{text}'") from None
    if any(fold < 0 for fold in folds):
        raise ConfigError(f"--fold takes fold numbers from 0 up, got '{text}'")
    return sorted(set(folds))


def command(args: argparse.Namespace) -> int:
    scoring.check_bootstrap_arguments(args)
    folds = parse_fold_list(args.fold)
    rows = compare_runs(args.directory, bootstrap=args.bootstrap, seed=args.seed, by=args.by, test=args.test,
                        seeds=not args.each_seed, folds=folds)
    if folds is not None and rows:
        print(f"scored on fold(s) {','.join(map(str, folds))} alone (--fold): fewer images, a wider interval "
              "than every fold's OOF", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no runs in {args.directory}", file=sys.stderr)
    else:
        print(format_table(rows))
    return 0
