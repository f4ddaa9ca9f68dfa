"""Adversarial validation: can a classifier tell two sets of images apart? Will CV track the leaderboard?

`python -m melanoma shift --config C [--between train,test|competition,external] [--set ...] [--json]
[--folds K] [--bootstrap N] [--seed S] [--out DIR]`

The two sets are a config's training and test records (`train,test`, the default), or its competition
training records and its external ones (`competition,external`, `data.external_files`). Every image is
described by the tree family's tabular features (input/features.py): the image statistics (colour
moments and histograms, the lesion mask's shape and colour) and the metadata (age, sex, site, the
patient's image count), without patient context (a difference from the patient's own mean hides exactly
the shift looked for) and without stacked runs. Gradient-boosted trees learn which set an image is from,
in K folds grouped by patient, so a patient's images never sit on both sides of a fold: the classifier
cannot recognise a patient instead of a set. Each image's out-of-fold probability of the second set is its
"likeness" (test-likeness for train,test).

- AUC near 0.5, its interval over 0.5: the sets look alike; a CV score should carry over.
- AUC well above 0.5: they differ; the top features (permutation importance on each fold's held-out
  images: the AUC lost when a feature is shuffled, mean over folds) say how.

The interval resamples patients (1000 by default), as `score`'s does. Written (whole, or not at all) into
`<output_dir>/shift/<name>-<first>-<second>/` (or --out):

    test_likeness.csv (external_likeness.csv)  image_name, patient_id, set, likeness, fold: every image
    importance.csv   each feature's and group's AUC drop, mean and std over folds
    shift.png        the two sets' likeness distributions
    shift.json       auc, auc_ci, top_features (names, best first) and the rest (`--json` prints it)

A config may weight or select its validation images by test-likeness: `validation_weights.file`
(data/validation_weights.py), an option, never a default.
"""
from __future__ import annotations

import argparse
import copy
import json
import os

import numpy as np
import pandas as pd

from melanoma.core import arguments, io_utils, metrics
from melanoma.core import config as config_lib
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import preflight
from melanoma.evaluate import plots, scoring, statistics

BETWEEN = {"train,test": ("train", "test"), "competition,external": ("competition", "external")}
TOP = 10
IMPORTANCE_REPEATS = 3


def feature_config(config: Config) -> Config:
    """The config the features are computed with: no patient context, no stacked runs."""
    trimmed = copy.deepcopy(config)
    trimmed["features"]["patient_context"] = False
    trimmed["features"]["from_runs"] = []
    if not (trimmed.features.image or trimmed.features.metadata):
        raise ConfigError("shift needs features.image or features.metadata on: they are what it compares")
    return trimmed


def check_request(config: Config, between: str, folds: int) -> None:
    """What the command line and the config ask for, checked before any record is read."""
    if between not in BETWEEN:
        raise ConfigError(f"--between takes {' or '.join(BETWEEN)}, got '{between}'")
    if not 2 <= folds <= 20:
        raise ConfigError(f"--folds must be in 2..20, got {folds}")
    if between == "train,test" and not config.data.test_files:
        raise ConfigError("--between train,test needs test records, but data.test_files is null: set it, or "
                          "compare competition,external")
    if between == "competition,external" and not config.data.external_files:
        raise ConfigError("--between competition,external needs data.external_files; the config has none")


def external_files(config: Config) -> list[str]:
    """The external sets' selected files (as training reads them, each once)."""
    # the external sets are read with TensorFlow's record tools: only this comparison pays for it
    from melanoma.data import sources

    return sorted({record.path for external in sources.external_sets(config.data) for record in external.files})


def side_table(config: Config, side: str, progress: bool) -> pd.DataFrame:
    """Features of one set (with image_name and patient_id), cached per records file as the trees' are."""
    # the feature tables read records with TensorFlow: only this command's work pays for it
    from melanoma.input import features

    split = "test" if side == "test" else "train"
    source = config
    if side == "external":
        source = copy.deepcopy(config)
        source["data"]["train_files"] = external_files(config)
    raw = features.split_table(source, split, progress)
    table = features.assemble(raw, pd.DataFrame(index=raw.index), config, int(config.features.histogram_bins))
    return pd.concat([raw[["image_name", "patient_id"]].reset_index(drop=True), table], axis=1)


def both_sides(config: Config, between: str, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The two sets' rows (`set`: 0 first, 1 second; `group`: a patient within its set) and the feature columns."""
    first, second = BETWEEN[between]
    tables = []
    for label, side in enumerate((first, second)):
        table = side_table(config, side, progress).assign(set=label)
        if table.empty:
            raise DataError(f"the {side} records hold no image; shift needs images on both sides")
        tables.append(table)
    rows = pd.concat(tables, ignore_index=True)
    columns = [c for c in rows.columns if c not in ("image_name", "patient_id", "set")]
    unknown = rows["patient_id"] < 0  # an unknown patient is a patient of one image
    rows["group"] = np.where(unknown, "image:" + rows["image_name"].astype(str),
                             rows["set"].astype(str) + ":" + rows["patient_id"].astype(str))
    return rows, columns


def classifier(columns: list[str], seed: int):
    """Gradient-boosted trees that tell the sets apart. The sets keep their own sizes in the loss: the AUC does
    not depend on them, and a probability odds ratio is the sets' density ratio up to one constant factor
    (sample weights would also make scikit-learn's fit some ten times slower)."""
    # scikit-learn loads only when the command works
    from sklearn.ensemble import HistGradientBoostingClassifier

    categorical = [column == "meta_site" for column in columns]
    return HistGradientBoostingClassifier(learning_rate=0.1, max_iter=100, max_leaf_nodes=15, min_samples_leaf=20,
                                          l2_regularization=1.0, early_stopping=False,
                                          categorical_features=categorical if any(categorical) else None,
                                          random_state=seed)


def cross_validated(rows: pd.DataFrame, columns: list[str], folds: int, seed: int,
                    repeats: int = IMPORTANCE_REPEATS) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(each row's out-of-fold probability of the second set, its fold, the permutation importances of
    every fold's held-out rows): patient-grouped folds, stratified by set."""
    # scikit-learn's splitter, and the trees' permutation importance: only the command's work pays for them
    from sklearn.model_selection import StratifiedGroupKFold

    from melanoma.input import features  # (the features' module loads TensorFlow)
    from melanoma.train.families import trees  # (scikit-learn's trees)

    target = rows["set"].to_numpy(dtype=np.int64)
    values = rows[columns].to_numpy(dtype=np.float64)
    groups = rows["group"].to_numpy()
    patients = pd.Series(groups).nunique()
    if min(np.bincount(target, minlength=2)) < folds or patients < folds:
        raise DataError(f"shift needs at least {folds} images and patients on each side for {folds} folds; use "
                        "fewer --folds")
    likeness, fold_of = np.full(len(rows), np.nan), np.full(len(rows), -1)
    importances = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit, held) in enumerate(splitter.split(values, target, groups)):
        model = classifier(columns, seed + fold).fit(values[fit], target[fit])
        likeness[held] = trees.predict(model, values[held])
        fold_of[held] = fold
        if len(np.unique(target[held])) == 2:
            importance = trees.permutation_importance(model, values[held], target[held], columns, repeats,
                                                      seed + fold, features.feature_group)
            importances.append(importance.assign(fold=fold))
    return likeness, fold_of, pd.concat(importances, ignore_index=True)


def mean_importance(importances: pd.DataFrame) -> pd.DataFrame:
    """Each feature's and group's AUC drop, mean and standard deviation over the folds, largest first."""
    table = importances.groupby(["kind", "name", "group"], as_index=False).agg(
        auc_drop=("auc_drop", "mean"), auc_drop_std=("auc_drop", "std"), folds=("fold", "nunique"))
    return table.sort_values(["kind", "auc_drop", "name"], ascending=[False, False, True]).reset_index(drop=True)


def adversarial_validation(config: Config, between: str = "train,test", folds: int = 5, bootstrap: int = 1000,
                           seed: int = 0, progress: bool = True) -> dict:
    """The whole comparison (see the module docstring): {summary, likeness table, importance table}."""
    check_request(config, between, folds)
    features_config = feature_config(config)
    rows, columns = both_sides(features_config, between, progress)
    likeness, fold_of, importances = cross_validated(rows, columns, folds, seed)
    target = rows["set"].to_numpy()
    auc = metrics.auc(target, likeness)
    resampled = statistics.bootstrap_aucs(target, likeness, rows["group"].to_numpy(), bootstrap, seed)
    resampled = resampled[np.isfinite(resampled)]
    interval = [float(v) for v in np.percentile(resampled, [2.5, 97.5])] if len(resampled) else None
    importance = mean_importance(importances)
    ranked = importance[importance["kind"] == "feature"]
    first, second = BETWEEN[between]
    table = rows[["image_name", "patient_id"]].assign(set=np.where(target == 1, second, first), likeness=likeness,
                                                      fold=fold_of)
    summary = {"config": config.name, "between": [first, second], "auc": auc, "auc_ci": interval,
               "bootstrap": int(bootstrap), "folds": folds, "seed": seed,
               "top_features": ranked["name"].head(TOP).tolist(),
               "top_importance": [{"feature": r.name, "group": r.group, "auc_drop": float(r.auc_drop)}
                                  for r in ranked.head(TOP).itertuples()],
               "groups": {r.name: float(r.auc_drop) for r in importance[importance["kind"] == "group"].itertuples()},
               "images": {first: int((target == 0).sum()), second: int((target == 1).sum())},
               "patients": {first: int(rows.loc[target == 0, "group"].nunique()),
                            second: int(rows.loc[target == 1, "group"].nunique())},
               "features": len(columns), "verdict": verdict(auc, interval, first, second)}
    return {"summary": summary, "likeness": table, "importance": importance}


def verdict(auc: float, interval: list | None, first: str, second: str) -> str:
    if interval is None:
        return "no interval: the resamples held one set only"
    if interval[0] <= 0.5 <= interval[1]:
        return (f"the classifier cannot tell {first} from {second} images (the interval holds 0.5): no shift "
                "found in these features")
    return (f"{first} and {second} images differ (AUC {auc:.3f}, the interval excludes 0.5): the top features "
            "say how; a CV score may not carry over to the other set")


def out_folder(config: Config, between: str) -> str:
    first, second = BETWEEN[between]
    return os.path.join(config.output_dir, "shift", f"{config.name}-{first}-{second}")


def likeness_file(between: str) -> str:
    return f"{BETWEEN[between][1]}_likeness.csv"


def draw(table: pd.DataFrame, summary: dict, path: str) -> None:
    """The two sets' likeness distributions, one histogram each (as shares of the set)."""
    plt = plots.pyplot()
    first, second = summary["between"]
    figure, axis = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 41)
    for name, colour in ((first, "tab:blue"), (second, "tab:orange")):
        values = table.loc[table["set"] == name, "likeness"]
        axis.hist(values, bins=bins, weights=np.full(len(values), 1 / max(1, len(values))), alpha=0.6,
                  color=colour, label=f"{name} ({len(values)} images)")
    interval = summary["auc_ci"]
    shown = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
    axis.set_title(f"{summary['config']}: {first} vs {second}, adversarial AUC {summary['auc']:.3f}{shown}",
                   fontsize=10)
    axis.set_xlabel(f"out-of-fold probability of being a {second} image ({second}-likeness)")
    axis.set_ylabel("share of the set's images")
    axis.legend()
    plots.save(figure, path)


def shift_only(names: list[str]) -> bool:
    """A folder `shift` wrote before folders carried their writer's marker: its four files only."""
    own = {"importance.csv", "shift.png", "shift.json"} | {likeness_file(between) for between in BETWEEN}
    return set(names) <= own


def write_outputs(result: dict, folder: str, between: str) -> dict:
    """Every file of the comparison into `folder`, whole or not at all; returns the paths."""
    names = {"likeness": likeness_file(between), "importance": "importance.csv", "figure": "shift.png",
             "summary": "shift.json"}
    with io_utils.folder_written_whole(folder, command="shift", own=shift_only) as temporary:
        io_utils.write_csv_atomic(result["likeness"], os.path.join(temporary, names["likeness"]))
        io_utils.write_csv_atomic(result["importance"], os.path.join(temporary, names["importance"]))
        draw(result["likeness"], result["summary"], os.path.join(temporary, names["figure"]))
        result["summary"]["files"] = {key: os.path.join(folder, name) for key, name in names.items()}
        io_utils.write_text_atomic(os.path.join(temporary, names["summary"]),
                                   json.dumps(result["summary"], indent=2) + "\n")
    return result["summary"]["files"]


def format_shift(summary: dict) -> str:
    first, second = summary["between"]
    interval = summary["auc_ci"]
    shown = (f"95% CI {interval[0]:.4f}-{interval[1]:.4f} ({summary['bootstrap']} patient resamples)" if interval
             else "no CI")
    lines = [f"adversarial validation of {summary['config']}, {first} ({summary['images'][first]} images, "
             f"{summary['patients'][first]} patients) vs {second} ({summary['images'][second]} images, "
             f"{summary['patients'][second]} patients), {summary['features']} features, {summary['folds']} "
             "patient-grouped folds:",
             f"AUC {summary['auc']:.4f}  {shown}", summary["verdict"],
             "top features (AUC lost when shuffled on the held-out images, mean over folds):"]
    lines += [f"  {index:>2}. {row['feature']:<32} {row['auc_drop']:+.4f}  ({row['group']})"
              for index, row in enumerate(summary["top_importance"], start=1)]
    lines.append("feature groups: " + ", ".join(f"{name} {drop:+.4f}" for name, drop in
                                                 sorted(summary["groups"].items(), key=lambda item: -item[1])))
    for key, path in summary.get("files", {}).items():
        lines.append(f"{key}: {path}")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(parser, "experiment YAML: its records and features section",
                                   "override config keys, e.g. --set data.test_files=...")
    # the pairs hold commas: argparse's {a,b,...} would list four names, as if any two paired
    parser.add_argument("--between", default="train,test", choices=tuple(BETWEEN), metavar=" | ".join(BETWEEN),
                        help="the two sets: the training and test records (default), or the competition's training "
                             "records and data.external_files")
    parser.add_argument("--json", action="store_true", help="print shift.json's object instead of a summary")
    parser.add_argument("--folds", type=int, default=5, help="patient-grouped folds of the classifier (default 5)")
    parser.add_argument("--out", help="folder to write (default <output_dir>/shift/<name>-<first>-<second>/)")
    scoring.add_bootstrap_arguments(parser, "the AUC's 95%% interval")


def command(args: argparse.Namespace) -> int:
    scoring.check_bootstrap_arguments(args)
    config = config_lib.load_config(args.config, args.set)
    check_request(config, args.between, args.folds)
    folder = args.out or out_folder(config, args.between)
    preflight.check_inputs(config, "train")  # every records glob the sets come from, before any is read
    parent = os.path.dirname(os.path.abspath(folder))
    preflight.check_writable({"--out" if args.out else "config key 'output_dir'": parent})
    io_utils.check_replaceable(folder, "shift", shift_only)  # before the work, not after it
    result = adversarial_validation(config, args.between, args.folds, args.bootstrap, args.seed,
                                    progress=not args.json)
    write_outputs(result, folder, args.between)
    if args.json:
        print(json.dumps(result["summary"]))
    else:
        print(format_shift(result["summary"]))
    return 0
