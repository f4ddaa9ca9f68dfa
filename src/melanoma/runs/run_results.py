"""A run's folder read back: what every stage after training asks of a run.

`inspect_run` says what a folder holds (its saved config or blend.json, which folds have OOF),
`load_run_oof` reads its checked OOF, and `Member` adds its test predictions (for blends and stacking).
The run's oof.csv itself is gathered by training (train/oof.py).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core.config import load_config
from melanoma.core.errors import ConfigError, DataError
from melanoma.core.tables import first_few, numbers, prepare_oof, read_oof, read_string_table
from melanoma.runs import layout, run_config


@dataclass
class Run:
    """What a run folder holds, before any OOF is read."""
    name: str
    path: str
    config: Any = None                  # the resolved Config, for a trained run
    blend: dict | None = None           # blend.json, for a blend
    folds_expected: int | None = None   # data.folds (None when nothing says)
    fold_files: list[int] = field(default_factory=list)  # K with fold<K>/oof.csv
    has_oof: bool = False               # <run>/oof.csv exists
    problem: str | None = None          # why the folder cannot be described (bad config.yaml)

    @property
    def kind(self) -> str:
        return "blend" if self.blend is not None else "run"


def is_run_folder(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    if any(os.path.exists(os.path.join(path, name)) for name in (layout.CONFIG_FILE, layout.OOF,
                                                                 layout.BLEND_FILE)):
        return True
    return bool(layout.fold_numbers(path))


def find_runs(directory: str) -> list[str]:
    """Run folders directly under `directory` (sorted by name)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such folder of runs: {directory}")
    return [os.path.join(directory, entry) for entry in sorted(os.listdir(directory))
            if not entry.startswith(".") and is_run_folder(os.path.join(directory, entry))]


def inspect_run(path: str) -> Run:
    """Describe a run folder: its config (or blend description), expected folds and finished folds."""
    path = str(path).rstrip("/")
    run = Run(name=os.path.basename(path), path=path)
    run.has_oof = os.path.isfile(os.path.join(path, layout.OOF))
    run.fold_files = layout.fold_numbers(path)
    blend_path = os.path.join(path, layout.BLEND_FILE)
    if os.path.isfile(os.path.join(path, layout.CONFIG_FILE)):
        try:
            run.config = run_config.read_saved_config(path)
            run.name = run.config.get("name") or run.name
            run.folds_expected = int(run.config["data"]["folds"])
        except (ConfigError, OSError, KeyError, TypeError, ValueError, AttributeError) as error:
            run.problem = f"unreadable config.yaml: {error}"
    elif os.path.isfile(blend_path):
        try:
            run.blend = json.loads(io_utils.read_text(blend_path))
            run.folds_expected = int(run.blend.get("folds_expected") or len(run.blend["folds"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            run.problem = f"unreadable {layout.BLEND_FILE}: {error}"
            run.blend = {}
    return run


def load_run_oof(run: Run) -> tuple[pd.DataFrame, bool, list[int]]:
    """(checked OOF of the competition rows, complete?, folds present).

    Complete when every expected fold is there: `oof.csv` is used when it covers them all, otherwise the
    per-fold files are joined. A run whose folds are not all done gets whichever covers more folds, with
    complete False. Raises DataError when there is no OOF at all or it does not read.
    """
    expected = set(range(run.folds_expected)) if run.folds_expected else None
    whole = read_oof(os.path.join(run.path, layout.OOF)) if run.has_oof else None
    if whole is not None:
        present = sorted(set(whole["fold"]))
        if expected is None or expected <= set(present):
            return whole, True, present
    if run.fold_files:
        parts = [read_string_table(os.path.join(layout.fold_path(run.path, fold), layout.OOF))
                 for fold in run.fold_files]
        joined = prepare_oof(pd.concat(parts, ignore_index=True), where=f"{run.path}/fold*/oof.csv")
        present = sorted(set(joined["fold"]))
        if whole is None or len(present) > len(set(whole["fold"])):
            complete = expected is not None and expected <= set(present)
            return joined, complete, present
    if whole is not None:
        return whole, False, sorted(set(whole["fold"]))
    raise DataError(f"{run.path} has no OOF predictions yet (no oof.csv, no fold<K>/oof.csv)")


class Member:
    """One run in the blend: its name, folder, config (None for a folder without one), OOF, test preds."""

    def __init__(self, spec: str, allow_partial: bool = False):
        spec = str(spec)
        self.spec = spec
        self.config = None
        if os.path.isdir(spec):
            path = spec.rstrip("/")
        else:
            path = layout.run_dir(load_config(spec))
            if not os.path.isdir(path):
                raise FileNotFoundError(f"run folder of {spec} not found: {path} (train it first)")
            self.config = run_config.load_run_config(spec)  # what the run was trained with
        run = inspect_run(path)
        if run.problem:
            raise DataError(f"{path}: {run.problem}")
        self.run = run
        self.name = run.name
        self.path = path
        if self.config is None and run.config is not None:
            # the saved config, with the run found where its folder is now (it may have been moved)
            self.config = run.config
            self.config["output_dir"], self.config["name"] = os.path.split(os.path.abspath(path))
        frame, complete, present = load_run_oof(run)
        if not complete and not allow_partial:
            raise DataError(f"{self.name} is incomplete (folds {','.join(map(str, present))} of "
                            f"{run.folds_expected or '?'} done): train its missing folds, or add --allow-partial "
                            "to blend only the folds every run has")
        self.oof = frame
        self.folds = present

    def submission_path(self) -> str | None:
        if self.run.blend is not None:
            return self.run.blend.get("submission")
        if self.config is not None:
            named = (self.config.get("submission") or {}).get("file_name")  # submission.file_name, if set
            return os.path.join(self.config.submission_dir, named or f"{self.name}.csv")
        return None

    def test_predictions(self, folds: list[int] | None = None) -> tuple[pd.Series | None, str]:
        """(pred by image_name, where it came from): the mean of fold<K>/test.csv over `folds` (default:
        every fold), else the run's submission file when it holds those folds; (None, reason) when
        neither exists."""
        everything = list(range(self.run.folds_expected or 0))
        folds = everything if folds is None else list(folds)
        paths = [os.path.join(layout.fold_path(self.path, fold), layout.TEST) for fold in folds]
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
        if submission and io_utils.exists(submission) and (folds == everything or self.run.blend is not None):
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
    path = os.path.join(os.path.dirname(test_csv), layout.TEST_SETTINGS)
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
    values, not_numeric = numbers(table[column])
    bad = not_numeric | ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{path}: missing or non-numeric {column} for images "
                        f"{first_few(table['image_name'][bad])}")
    names = table["image_name"].astype(str)
    if names.duplicated().any():
        raise DataError(f"{path}: duplicate image names {first_few(names[names.duplicated()].unique())}")
    return pd.Series(values.to_numpy(), index=names.to_numpy(), name=path)
