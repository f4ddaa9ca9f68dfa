"""The mean of a config's seed runs (`python infer.py --config C --seeds N`): one submission from N seeds.

Every seed run is a whole run (every fold trained and predicted, runs/seeds.py), and the seed runs share
their folds (a fold is a set of parts, whatever the seed). The ensemble is the plain mean: of the runs'
submissions for the test images, and of their OOF predictions image by image, so its OOF AUC is as honest
as each seed's (nothing is fitted). It is written as a blend is, so `score`, `compare`, `report`, `blend`,
`submit` and `pseudo_labels.source` take it as they take a blend:

    <output_dir>/<name>-seeds/oof.csv     image_name,patient_id,target,pred,fold: the seeds' mean
    <output_dir>/<name>-seeds/blend.json  method mean, kind seeds, the runs and their seeds, written last
    <submission_dir>/<name>-seeds.csv     the runs' submissions averaged, with its record (.json) beside it
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from melanoma.core import io_utils, metrics
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError
from melanoma.predict import submission
from melanoma.runs import layout, run_results, seeds


def write(base: Config, configs: list[Config], submissions: list[str], force: bool = False,
          mixed: list[str] | None = None) -> str:
    """Write the seeds' mean of `configs` (the seed runs of `base`, each with its full `submissions` file);
    returns the ensemble's submission path. `mixed`: how the runs differ (--allow-mixed), said in the
    name (<name>-seeds-mixed) and the record."""
    name = seeds.ensemble_name(base.name, mixed=bool(mixed))
    folder = os.path.join(base.output_dir, name)
    if io_utils.exists(os.path.join(folder, layout.CONFIG_FILE)):
        raise ConfigError(f"{folder} is a trained run, not the seeds' mean of {base.name}: rename that run, or "
                          f"give this config another name")
    members = [run_results.Member(layout.run_dir(config)) for config in configs]
    oof = mean_oof(members)
    test = mean_submission(submissions)
    path = os.path.join(base.submission_dir, f"{name}.csv")
    sample = base.data.sample_submission
    submission.write_submission(test, path, sample_path=sample, force=force)
    folds = sorted(set(oof["fold"].tolist()))
    submission.write_record(path, {"config": name, "run": folder, "family": "seeds", "method": "mean",
                                   "mixed": list(mixed or []),
                                   "members": [member.name for member in members], "folds": folds,
                                   "folds_expected": base.data.folds, "sample_submission": sample})
    io_utils.write_csv_atomic(oof, os.path.join(folder, layout.OOF))
    auc = metrics.auc(oof["target"], oof["pred"])
    record = {"name": name, "method": "mean", "kind": "seeds", "config": base.name,
              "members": [{"name": member.name, "path": member.path, "seed": int(config.seed),
                           "auc": metrics.auc(member.oof["target"], member.oof["pred"])}
                          for member, config in zip(members, configs)],
              "weights": {member.name: 1 / len(members) for member in members},
              "folds": folds, "folds_expected": base.data.folds, "auc": auc, "submission": path,
              "mixed": list(mixed or [])}
    # blend.json last: it says what the folder holds
    io_utils.write_text_atomic(os.path.join(folder, layout.BLEND_FILE), json.dumps(record, indent=2) + "\n")
    shown = ", ".join(f"{member['name']} {member['auc']:.4f}" for member in record["members"])
    print(f"seeds' mean {name}: OOF AUC {auc:.4f} (seeds: {shown}) -> {path}, {folder}/")
    return path


def mean_oof(members: list[run_results.Member]) -> pd.DataFrame:
    """The members' OOF predictions averaged image by image; CheckFailed when they scored other images or
    put an image in another fold (runs of one config never do)."""
    first = members[0].oof[["image_name", "patient_id", "target", "fold"]].sort_values("image_name")
    first = first.reset_index(drop=True)
    preds = []
    for member in members:
        frame = member.oof.set_index("image_name")
        if set(frame.index) != set(first["image_name"]):
            raise CheckFailed(f"{member.name} scored other images than {members[0].name}: they are not seeds of one "
                              "config; train them again with --seeds")
        aligned = frame.loc[first["image_name"]]
        if (aligned["fold"].to_numpy() != first["fold"].to_numpy()).any():
            raise CheckFailed(f"{member.name} puts images in other folds than {members[0].name}")
        preds.append(aligned["pred"].to_numpy(dtype=np.float64))
    return first.assign(pred=np.mean(preds, axis=0))[["image_name", "patient_id", "target", "pred", "fold"]]


def mean_submission(paths: list[str]) -> pd.DataFrame:
    """The submissions' predictions averaged by image_name, in the first file's order."""
    frames = [io_utils.read_csv(path, dtype={"image_name": str}) for path in paths]
    order = frames[0]["image_name"]
    columns = []
    for path, frame in zip(paths, frames):
        indexed = frame.set_index("image_name")["target"]
        if set(indexed.index) != set(order):
            raise CheckFailed(f"{path} predicts other images than {paths[0]}")
        columns.append(indexed.loc[order].to_numpy(dtype=np.float64))
    return pd.DataFrame({"image_name": order.to_numpy(), "target": np.mean(columns, axis=0)})
