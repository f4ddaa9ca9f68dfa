"""A run's OOF gathered once every fold has its own: `<run>/oof.csv`, its `summary.json` (the OOF AUC, each
fold's AUC and whether its network collapsed) and the line `train` prints about it."""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
import pandas as pd

from melanoma.core import io_utils, metrics
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed
from melanoma.data import validation_weights
from melanoma.runs import layout, run_config


def gather_oof(config: Config, trained_as: Callable[[dict], str]) -> str | None:
    """Write outputs/<name>/oof.csv once every fold has its OOF, each trained under this config (its
    state.json says so; `trained_as` words what another config trained); returns its path (None if incomplete,
    and then no oof.csv is left there)."""
    target = os.path.join(layout.run_dir(config), layout.OOF)
    paths = [os.path.join(layout.fold_dir(config, k), layout.OOF) for k in range(config.data.folds)]
    problems = [run_config.fold_config_problem(config, layout.fold_dir(config, k), trained_as)
                for k in range(config.data.folds) if io_utils.exists(paths[k])]
    for problem in filter(None, problems):
        print(f"warning: {problem}: left out of the OOF; train it again with --force")
    if not all(io_utils.exists(p) for p in paths) or any(problems):
        for stale in (target, os.path.join(layout.run_dir(config), layout.RUN_SUMMARY)):
            if io_utils.exists(stale):
                io_utils.remove(stale)
        return None
    oof = pd.concat([io_utils.read_csv(p) for p in paths], ignore_index=True)
    if oof["image_name"].duplicated().any():
        names = oof.loc[oof["image_name"].duplicated(), "image_name"].head(3).tolist()
        raise CheckFailed(f"an image is in the OOF of two folds (e.g. {names}): the folds overlap")
    oof = validation_weights.oof_with_weights(config, oof)  # `weight`, under validation_weights.file only
    io_utils.write_csv_atomic(oof, target)
    return target


def report_oof(config: Config, finished, trained_as: Callable[[dict], str]) -> None:
    """Gather the run's OOF once every fold has one and print its AUC, else the folds still to train
    (`finished(config, fold)` says which folds are done; a tabular run has its own)."""
    gathered = gather_oof(config, trained_as)
    if gathered:
        oof = io_utils.read_csv(gathered)
        auc = metrics.auc(oof["target"], oof["pred"])
        pauc = metrics.partial_auc_above_tpr(oof["target"], oof["pred"])
        weighted = (f"; weighted by test-likeness ({config.validation_weights.weighting}): "
                    f"{metrics.auc(oof['target'], oof['pred'], oof['weight']):.4f}" if "weight" in oof else "")
        summary = write_run_summary(config, oof, auc)
        collapsed = summary["collapsed_folds"]
        for fold in collapsed:
            print(f"warning: fold {fold} COLLAPSED: {summary['folds'][fold]['collapsed']}")
        shown = f"; COLLAPSED fold(s) {', '.join(collapsed)}: not a finished result" if collapsed else ""
        print(f"OOF AUC over {config.data.folds} folds: {auc:.4f} ({len(oof)} images; pauc_tpr80 {pauc:.4f}"
              f"{weighted}{shown}) -> {gathered}")
    else:
        missing = [k for k in range(config.data.folds) if not finished(config, k)]
        print(f"folds still to train: {missing}")


def write_run_summary(config: Config, oof: pd.DataFrame, auc: float) -> dict:
    """The run's summary.json beside its oof.csv: the OOF AUC (`auc`, computed by the caller), and each
    fold's AUC, the spread of its predictions' log-odds and, for a fold whose network collapsed to a
    near-constant output, why."""
    folds = {}
    for fold, rows in oof.groupby("fold", sort=True):
        folds[str(fold)] = {"auc": _number(metrics.auc(rows["target"], rows["pred"])),
                            "logit_std": _number(metrics.logit_spread(rows["pred"])),
                            "collapsed": metrics.collapse_problem(rows["pred"])}
    summary = {"name": config.name, "oof_auc": _number(auc),
               "images": int(len(oof)), "folds": folds,
               "collapsed_folds": [fold for fold, about in folds.items() if about["collapsed"]]}
    io_utils.write_text_atomic(os.path.join(layout.run_dir(config), layout.RUN_SUMMARY),
                               json.dumps(summary, indent=1) + "\n")
    return summary


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)
